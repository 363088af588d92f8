//! Proves: a patient can message staff but never another patient, and nobody reaches anyone or
//! anything of another org; non-members cannot read or send into a conversation, nor learn
//! that it exists.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{
    ClientMessageId, ClientRequest, ConversationId, ErrorCode, FetchPrekeys, Handle, InviteSpec,
    OpenConversation, Role, SendRequest, ServerMessage, UserId,
};
use medrelay_tests::{RawClient, RawDevice, Server};

async fn invite(admin: &mut RawClient, role: Role, handle: &str) -> String {
    match admin
        .request(ClientRequest::CreateInvite(InviteSpec::NewUser {
            role,
            handle: Handle::new(handle).unwrap(),
        }))
        .await
        .unwrap()
    {
        ServerMessage::InviteCreated(created) => created.code.expose().to_owned(),
        other => panic!("{other:?}"),
    }
}

async fn member(server: &Server, admin: &mut RawClient, role: Role, handle: &str) -> RawClient {
    let code = invite(admin, role, handle).await;
    RawDevice::new().enroll(server, &code).await.unwrap()
}

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

async fn user_id(client: &mut RawClient) -> UserId {
    match client.request(ClientRequest::WhoAmI).await.unwrap() {
        ServerMessage::Identity(identity) => identity.user_id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_reach_staff_only_and_orgs_are_isolated() {
    let server = Server::start().unwrap();
    let mut admin_a = RawDevice::new()
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .await
        .unwrap();
    let mut staff = member(&server, &mut admin_a, Role::Staff, "dr.lee").await;
    let mut alice = member(&server, &mut admin_a, Role::Patient, "alice").await;
    let mut bob = member(&server, &mut admin_a, Role::Patient, "bob").await;

    // A second org on the same server, with a patient of its own.
    let code_b = server.add_org("Harbor Dermatology").unwrap();
    let mut admin_b = RawDevice::new().enroll(&server, &code_b).await.unwrap();
    let mut carol = member(&server, &mut admin_b, Role::Patient, "carol").await;

    // Patient to staff: allowed.
    let conversation = match open(&mut alice, &["dr.lee"]).await {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(conversation.members.len(), 2);
    // Patient to patient: refused, also inside a group with staff.
    assert_eq!(
        code(&open(&mut alice, &["bob"]).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(&open(&mut staff, &["alice", "bob"]).await),
        ErrorCode::Forbidden
    );
    // Another org's handle does not resolve, not even one that exists there.
    assert_eq!(
        code(&open(&mut alice, &["carol"]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&open(&mut carol, &["dr.lee"]).await),
        ErrorCode::NotFound
    );

    // Non-members, in the org or outside it, cannot see or send into the conversation, and
    // get the same answer as for a conversation that does not exist.
    let missing = ConversationId::from_array([0xab; 16]);
    for outsider in [&mut bob, &mut carol, &mut admin_b] {
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
    let alice_id = user_id(&mut alice).await;
    let fetch = |user| {
        ClientRequest::FetchPrekeys(FetchPrekeys {
            user_ids: vec![user],
            devices: Vec::new(),
        })
    };
    assert_eq!(
        code(&carol.request(fetch(alice_id)).await.unwrap()),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&bob.request(fetch(alice_id)).await.unwrap()),
        ErrorCode::NotFound
    );
    // The member may fetch them.
    assert!(matches!(
        staff.request(fetch(alice_id)).await.unwrap(),
        ServerMessage::PrekeyBundles(bundles) if bundles.len() == 1
    ));

    // Each org lists only its own conversations.
    match carol
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
    let mut admin = RawDevice::new()
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .await
        .unwrap();
    let mut staff = member(&server, &mut admin, Role::Staff, "dr.lee").await;
    let mut alice = member(&server, &mut admin, Role::Patient, "alice").await;
    let conversation = match open(&mut alice, &["dr.lee"]).await {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    let staff_device = conversation
        .members
        .iter()
        .find(|m| m.role == Role::Staff)
        .unwrap()
        .devices[0];

    // Leaving the staff member's device out: refused, naming it as missing.
    let answer = alice.request(send(conversation.id)).await.unwrap();
    match answer {
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
    let first = staff.next_frame().await.unwrap();
    match first.message {
        ServerMessage::Delivery(delivery) => {
            assert_eq!(delivery.message_id, accepted.message_id);
            assert_eq!(&delivery.ciphertext[..], b"the valid one");
        }
        other => panic!("{other:?}"),
    }
    // The next frame is the answer to a ping, not another delivery.
    assert!(matches!(
        staff.request(ClientRequest::Ping).await.unwrap(),
        ServerMessage::Pong { .. }
    ));
    assert!(staff.pushed.is_empty(), "{:?}", staff.pushed);
}
