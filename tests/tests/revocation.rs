//! Proves: revoking a device takes effect at once (its live connection is closed within a
//! second, it cannot reconnect, and senders must stop encrypting to it); deactivating a user
//! revokes all their devices; only the owner or an admin may revoke.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use medrelay_proto::{
    ClientMessageId, ClientRequest, ErrorCode, InviteSpec, SendRequest, ServerMessage,
};
use medrelay_tests::{now_ms, RawClinic, RawDevice, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_at_once_and_for_good() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    // The staff member's second device, logged in and connected.
    let code = match clinic
        .staff
        .conn
        .request(ClientRequest::CreateInvite(InviteSpec::NewDevice))
        .await
        .unwrap()
    {
        ServerMessage::InviteCreated(c) => c.code.expose().to_owned(),
        other => panic!("{other:?}"),
    };
    let mut tablet = RawDevice::new();
    let mut tablet_conn = tablet.enroll(&server, &code).await.unwrap();
    tablet_conn
        .login(
            clinic.staff.totp_secret.as_deref().unwrap(),
            now_ms() + 30_000,
        )
        .await
        .unwrap();
    let tablet_id = tablet.device_id.unwrap();

    // A patient may not revoke it; nor may another staff member.
    let revoke = ClientRequest::RevokeDevice {
        device_id: tablet_id,
    };
    let answer = clinic.patient.conn.request(revoke.clone()).await.unwrap();
    assert!(matches!(answer, ServerMessage::Error(e) if e.code == ErrorCode::Forbidden));

    // The owner revokes it from the other device: its connection closes within a second.
    let started = Instant::now();
    let answer = clinic.staff.conn.request(revoke).await.unwrap();
    assert!(matches!(answer, ServerMessage::Done), "{answer:?}");
    let frames = tablet_conn.closed_by_server().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(frames.iter().any(|f| matches!(
        &f.message,
        ServerMessage::Error(e) if e.code == ErrorCode::LoggedOff && e.message.contains("revoked")
    )));
    // It cannot come back.
    let error = tablet.connect(&server).await.unwrap_err();
    assert!(error.to_string().contains("AuthFailed"), "{error}");

    // Senders see it gone: the conversation lists one staff device, and naming the revoked
    // one is refused as stale.
    let conversation = clinic.care_conversation().await.unwrap();
    let staff = conversation
        .members
        .iter()
        .find(|m| m.user_id == clinic.staff.user_id)
        .unwrap();
    assert_eq!(staff.devices, vec![clinic.staff.device.device_id.unwrap()]);
    let answer = clinic
        .patient
        .conn
        .request(ClientRequest::Send(SendRequest {
            conversation_id: conversation.id,
            client_message_id: ClientMessageId::from_array([1; 16]),
            envelopes: [staff.devices[0], tablet_id]
                .into_iter()
                .map(|d| medrelay_proto::Envelope {
                    recipient_device: d,
                    ciphertext: medrelay_proto::Bytes::from_static(b"x"),
                })
                .collect(),
            archive_item: None,
        }))
        .await
        .unwrap();
    match answer {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::DevicesMismatch);
            assert_eq!(e.stale_devices, vec![tablet_id]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_a_user_revokes_every_device() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let staff_id = clinic.staff.user_id;
    // Staff may not deactivate anyone.
    let answer = clinic
        .staff
        .conn
        .request(ClientRequest::DeactivateUser {
            user_id: clinic.patient.user_id,
        })
        .await
        .unwrap();
    assert!(matches!(answer, ServerMessage::Error(e) if e.code == ErrorCode::Forbidden));

    let started = Instant::now();
    let answer = clinic
        .admin
        .conn
        .request(ClientRequest::DeactivateUser { user_id: staff_id })
        .await
        .unwrap();
    assert!(matches!(answer, ServerMessage::Done), "{answer:?}");
    clinic.staff.conn.closed_by_server().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(clinic.staff.device.connect(&server).await.is_err());
    match clinic
        .admin
        .conn
        .request(ClientRequest::ListDevices {
            user_id: Some(staff_id),
        })
        .await
        .unwrap()
    {
        ServerMessage::DeviceList(devices) => assert!(devices.iter().all(|d| d.revoked)),
        other => panic!("{other:?}"),
    }
}
