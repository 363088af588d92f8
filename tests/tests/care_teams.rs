//! Proves: a staff member sees and answers only the patients assigned to them or their team;
//! reassignment changes the conversation's members, so future messages go to the new staff's
//! devices and no longer to the removed one's; break-glass access works, then expires by
//! itself (on the injected clock).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use medrelay_proto::{
    ClientMessageId, ClientRequest, Conversation, DeviceId, ErrorCode, FetchPrekeys, Handle,
    OpenConversation, Reason, Role, SendRequest, ServerMessage, TeamName,
};
use medrelay_tests::{RawClient, RawClinic, Server};

async fn open(conn: &mut RawClient, handles: &[&str]) -> ServerMessage {
    conn.request(ClientRequest::OpenConversation(OpenConversation {
        handles: handles.iter().map(|h| Handle::new(*h).unwrap()).collect(),
    }))
    .await
    .unwrap()
}

fn devices(conversation: &Conversation, skip: DeviceId) -> Vec<DeviceId> {
    conversation
        .members
        .iter()
        .flat_map(|m| m.devices.iter().copied())
        .filter(|d| *d != skip)
        .collect()
}

async fn send_to(
    conn: &mut RawClient,
    conversation: &Conversation,
    me: DeviceId,
    n: u8,
) -> ServerMessage {
    conn.request(ClientRequest::Send(SendRequest {
        conversation_id: conversation.id,
        client_message_id: ClientMessageId::from_array([n; 16]),
        envelopes: devices(conversation, me)
            .into_iter()
            .map(|d| medrelay_proto::Envelope {
                recipient_device: d,
                ciphertext: medrelay_proto::Bytes::from(vec![n; 8]),
            })
            .collect(),
        archive_item: None,
    }))
    .await
    .unwrap()
}

fn conversation(message: ServerMessage) -> Conversation {
    match message {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    }
}

fn is_error(message: &ServerMessage, code: ErrorCode) -> bool {
    matches!(message, ServerMessage::Error(e) if e.code == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_assigned_staff_reach_a_patient_and_reassignment_moves_future_messages() {
    let server = Server::start().unwrap();
    let now = medrelay_tests::now_ms();
    let mut clinic = RawClinic::new(&server, now).await.unwrap();
    let code = clinic
        .admin
        .conn
        .invite(Role::Staff, "dr.kim")
        .await
        .unwrap();
    let mut kim = RawClinic::staff_member(&server, &code, now).await.unwrap();
    let alice = clinic.patient.user_id;
    let alice_device = clinic.patient.device.device_id.unwrap();

    // dr.kim is not assigned: no conversation, no prekeys, no listing.
    assert!(is_error(
        &open(&mut kim.conn, &["alice"]).await,
        ErrorCode::Forbidden
    ));
    let fetch = ClientRequest::FetchPrekeys(FetchPrekeys {
        user_ids: vec![alice],
        devices: Vec::new(),
    });
    assert!(is_error(
        &kim.conn.request(fetch.clone()).await.unwrap(),
        ErrorCode::NotFound
    ));
    let before = conversation(open(&mut clinic.patient.conn, &["dr.lee"]).await);
    let get = ClientRequest::GetConversation {
        conversation_id: before.id,
    };
    assert!(is_error(
        &kim.conn.request(get.clone()).await.unwrap(),
        ErrorCode::NotFound
    ));
    // Staff cannot reassign; admins can.
    let assign_kim = ClientRequest::AssignCare {
        patient_user_id: alice,
        staff_user_ids: vec![kim.user_id],
        team_ids: Vec::new(),
    };
    assert!(is_error(
        &clinic.staff.conn.request(assign_kim.clone()).await.unwrap(),
        ErrorCode::Forbidden
    ));
    assert!(matches!(
        clinic.admin.conn.request(assign_kim).await.unwrap(),
        ServerMessage::Done
    ));

    // The same conversation now has alice and dr.kim, not dr.lee.
    let after = conversation(kim.conn.request(get.clone()).await.unwrap());
    assert_eq!(after.id, before.id);
    let mut members: Vec<_> = after.members.iter().map(|m| m.handle.as_str()).collect();
    members.sort();
    assert_eq!(members, ["alice", "dr.kim"]);
    assert!(is_error(
        &clinic.staff.conn.request(get).await.unwrap(),
        ErrorCode::NotFound
    ));
    // A send to the old members is refused, naming who is missing and who is stale.
    match send_to(&mut clinic.patient.conn, &before, alice_device, 1).await {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::DevicesMismatch);
            assert_eq!(e.missing_devices, vec![kim.device.device_id.unwrap()]);
            assert_eq!(
                e.stale_devices,
                vec![clinic.staff.device.device_id.unwrap()]
            );
        }
        other => panic!("{other:?}"),
    }
    // To the new members: delivered to dr.kim, and dr.lee gets nothing.
    assert!(matches!(
        send_to(&mut clinic.patient.conn, &after, alice_device, 2).await,
        ServerMessage::SendAccepted(_)
    ));
    let got = kim
        .conn
        .drain_deliveries(Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(clinic
        .staff
        .conn
        .drain_deliveries(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());

    // A team: assigning the team brings its members in.
    let team = match clinic
        .admin
        .conn
        .request(ClientRequest::CreateTeam {
            name: TeamName::new("Dermatology").unwrap(),
        })
        .await
        .unwrap()
    {
        ServerMessage::Team(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        clinic
            .admin
            .conn
            .request(ClientRequest::SetTeamMembers {
                team_id: team.team_id,
                staff_user_ids: vec![clinic.staff.user_id, kim.user_id],
            })
            .await
            .unwrap(),
        ServerMessage::Team(_)
    ));
    assert!(matches!(
        clinic
            .admin
            .conn
            .request(ClientRequest::AssignCare {
                patient_user_id: alice,
                staff_user_ids: Vec::new(),
                team_ids: vec![team.team_id],
            })
            .await
            .unwrap(),
        ServerMessage::Done
    ));
    let team_view = conversation(open(&mut clinic.staff.conn, &["alice"]).await);
    assert_eq!(team_view.members.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_access_works_then_expires_by_itself() {
    let server = Server::start_with_test_clock().unwrap();
    let clock = server.advance_clock(0).unwrap();
    let mut clinic = RawClinic::new(&server, clock).await.unwrap();
    let code = clinic
        .admin
        .conn
        .invite(Role::Staff, "dr.kim")
        .await
        .unwrap();
    let mut kim = RawClinic::staff_member(&server, &code, clock)
        .await
        .unwrap();
    let alice = clinic.patient.user_id;
    assert!(is_error(
        &open(&mut kim.conn, &["alice"]).await,
        ErrorCode::Forbidden
    ));

    let grant = |staff, reason: &str| ClientRequest::GrantBreakGlass {
        staff_user_id: staff,
        patient_user_id: alice,
        reason: Reason::new(reason).unwrap(),
        duration_ms: 10 * 60 * 1000,
    };
    // Staff cannot grant it, and it is for staff only.
    assert!(is_error(
        &clinic
            .staff
            .conn
            .request(grant(kim.user_id, "covering"))
            .await
            .unwrap(),
        ErrorCode::Forbidden
    ));
    assert!(is_error(
        &clinic
            .admin
            .conn
            .request(grant(clinic.admin.user_id, "curious"))
            .await
            .unwrap(),
        ErrorCode::Forbidden
    ));
    let expires = match clinic
        .admin
        .conn
        .request(grant(kim.user_id, "on call while dr.lee is away"))
        .await
        .unwrap()
    {
        ServerMessage::BreakGlassGranted { expires_at_ms } => expires_at_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(expires, clock + 10 * 60 * 1000);

    // dr.kim is in, and receives what alice sends.
    let view = conversation(open(&mut kim.conn, &["alice"]).await);
    assert_eq!(view.members.len(), 3);
    let alice_device = clinic.patient.device.device_id.unwrap();
    assert!(matches!(
        send_to(&mut clinic.patient.conn, &view, alice_device, 3).await,
        ServerMessage::SendAccepted(_)
    ));
    assert_eq!(
        kim.conn
            .drain_deliveries(Duration::from_millis(800))
            .await
            .unwrap()
            .len(),
        1
    );

    // Ten minutes later, with nobody doing anything: out again.
    server.advance_clock(10 * 60 * 1000).unwrap();
    // (Ten minutes is within the fifteen-minute idle timeout: dr.kim is still logged in.)
    let answer = open(&mut kim.conn, &["alice"]).await;
    assert!(is_error(&answer, ErrorCode::Forbidden), "{answer:?}");
    let back = conversation(open(&mut clinic.patient.conn, &["dr.lee"]).await);
    assert_eq!(back.members.len(), 2);
}
