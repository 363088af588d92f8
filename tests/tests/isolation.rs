//! Proves: a patient can message their care team but never another patient, and nobody
//! reaches anyone or anything of another org; non-members cannot read or send into a
//! conversation, nor learn that it exists; a send must cover exactly the current devices.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{
    ClientMessageId, ClientRequest, ConversationId, ErrorCode, FetchPrekeys, Handle,
    OpenConversation, Role, SendRequest, ServerMessage,
};
use medrelay_tests::{now_ms, RawClient, RawClinic, Server};

async fn open(client: &mut RawClient, handles: &[&str]) -> ServerMessage {
    client
        .request(ClientRequest::OpenConversation(OpenConversation {
            handles: handles.iter().map(|h| Handle::new(*h).unwrap()).collect(),
        }))
        .await
        .unwrap()
}

fn code(message: &ServerMessage) -> ErrorCode {
    match message {
        ServerMessage::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn send(conversation_id: ConversationId) -> ClientRequest {
    ClientRequest::Send(SendRequest {
        conversation_id,
        client_message_id: ClientMessageId::from_array([7; 16]),
        envelopes: Vec::new(),
        archive_item: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_reach_their_care_team_only_and_orgs_are_isolated() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let code_bob = clinic
        .admin
        .conn
        .invite(Role::Patient, "bob")
        .await
        .unwrap();
    let mut bob = RawClinic::patient(&server, &code_bob).await.unwrap();

    // A second org on the same server, with a patient of its own.
    let code_b = server.add_org("Harbor Dermatology").unwrap();
    let mut admin_b = RawClinic::staff_member(&server, &code_b, now_ms())
        .await
        .unwrap();
    let code_carol = admin_b.conn.invite(Role::Patient, "carol").await.unwrap();
    let mut carol = RawClinic::patient(&server, &code_carol).await.unwrap();

    // Patient to their care team: allowed.
    let conversation = match open(&mut clinic.patient.conn, &["dr.lee"]).await {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(conversation.members.len(), 2);
    // Patient to patient: refused, also inside a group with staff.
    assert_eq!(
        code(&open(&mut clinic.patient.conn, &["bob"]).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(&open(&mut clinic.staff.conn, &["alice", "bob"]).await),
        ErrorCode::Forbidden
    );
    // A patient without a care team reaches no staff member.
    assert_eq!(
        code(&open(&mut bob.conn, &["dr.lee"]).await),
        ErrorCode::Forbidden
    );
    // Another org's handle does not resolve, not even one that exists there.
    assert_eq!(
        code(&open(&mut clinic.patient.conn, &["carol"]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&open(&mut carol.conn, &["dr.lee"]).await),
        ErrorCode::NotFound
    );

    // Non-members, in the org or outside it, cannot see or send into the conversation, and
    // get the same answer as for a conversation that does not exist.
    let missing = ConversationId::from_array([0xab; 16]);
    for outsider in [
        &mut bob.conn,
        &mut carol.conn,
        &mut admin_b.conn,
        &mut clinic.admin.conn,
    ] {
        let get = outsider
            .request(ClientRequest::GetConversation {
                conversation_id: conversation.id,
            })
            .await
            .unwrap();
        assert_eq!(code(&get), ErrorCode::NotFound);
        let sent = outsider.request(send(conversation.id)).await.unwrap();
        assert_eq!(code(&sent), ErrorCode::NotFound);
        let absent = outsider.request(send(missing)).await.unwrap();
        match (&sent, &absent) {
            (ServerMessage::Error(a), ServerMessage::Error(b)) => assert_eq!(a.message, b.message),
            other => panic!("{other:?}"),
        }
    }

    // Prekeys of a user in another org, or of a stranger in one's own org, are not handed out.
    let fetch = |user| {
        ClientRequest::FetchPrekeys(FetchPrekeys {
            user_ids: vec![user],
            devices: Vec::new(),
        })
    };
    let alice = clinic.patient.user_id;
    assert_eq!(
        code(&carol.conn.request(fetch(alice)).await.unwrap()),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&bob.conn.request(fetch(alice)).await.unwrap()),
        ErrorCode::NotFound
    );
    // The care team may fetch them.
    assert!(matches!(
        clinic.staff.conn.request(fetch(alice)).await.unwrap(),
        ServerMessage::PrekeyBundles(bundles) if bundles.len() == 1
    ));

    // Each org lists only its own conversations.
    match carol
        .conn
        .request(ClientRequest::ListConversations(
            medrelay_proto::ListConversations { after: None },
        ))
        .await
        .unwrap()
    {
        ServerMessage::ConversationList(list) => assert!(list.conversations.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_must_cover_exactly_the_current_devices() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let conversation = match open(&mut clinic.patient.conn, &["dr.lee"]).await {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    let staff_device = conversation
        .members
        .iter()
        .find(|m| m.role == Role::Staff)
        .unwrap()
        .devices[0];
    let alice = &mut clinic.patient.conn;

    // Leaving the staff member's device out: refused, naming it as missing.
    match alice.request(send(conversation.id)).await.unwrap() {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::DevicesMismatch);
            assert_eq!(e.missing_devices, vec![staff_device]);
            assert!(e.stale_devices.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Naming a device that is not a recipient: refused as stale.
    let stranger = medrelay_proto::DeviceId::from_array([3; 16]);
    let request = ClientRequest::Send(SendRequest {
        conversation_id: conversation.id,
        client_message_id: ClientMessageId::from_array([8; 16]),
        envelopes: vec![
            medrelay_proto::Envelope {
                recipient_device: staff_device,
                ciphertext: medrelay_proto::Bytes::from_static(b"opaque"),
            },
            medrelay_proto::Envelope {
                recipient_device: stranger,
                ciphertext: medrelay_proto::Bytes::from_static(b"opaque"),
            },
        ],
        archive_item: None,
    });
    match alice.request(request).await.unwrap() {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::DevicesMismatch);
            assert_eq!(e.stale_devices, vec![stranger]);
        }
        other => panic!("{other:?}"),
    }
    // Nothing was stored by the refused sends: after a valid send, the staff device receives
    // exactly that one message and nothing else.
    let valid = ClientRequest::Send(SendRequest {
        conversation_id: conversation.id,
        client_message_id: ClientMessageId::from_array([9; 16]),
        envelopes: vec![medrelay_proto::Envelope {
            recipient_device: staff_device,
            ciphertext: medrelay_proto::Bytes::from_static(b"the valid one"),
        }],
        archive_item: None,
    });
    let accepted = match alice.request(valid).await.unwrap() {
        ServerMessage::SendAccepted(accepted) => accepted,
        other => panic!("{other:?}"),
    };
    let staff = &mut clinic.staff.conn;
    let delivery = staff
        .drain_deliveries(std::time::Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(delivery.len(), 1, "{delivery:?}");
    assert_eq!(delivery[0].message_id, accepted.message_id);
    assert_eq!(&delivery[0].ciphertext[..], b"the valid one");
}
