//! Proves: the server logs staff and admin sessions off by itself after the org's idle timeout
//! and at the absolute session lifetime, closing the connection with a clear reason, and the
//! next login needs the second factor again. Runs on the injected clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use medrelay_proto::{ClientRequest, ErrorCode, ServerMessage};
use medrelay_tests::{RawClient, RawClinic, Server};

/// Waits (in real time, briefly) for the LOGGED_OFF push and the close.
async fn expect_logoff(conn: &mut RawClient) -> String {
    let started = Instant::now();
    let frames = conn.closed_by_server().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "logoff took too long"
    );
    frames
        .iter()
        .find_map(|f| match &f.message {
            ServerMessage::Error(e) if e.code == ErrorCode::LoggedOff => Some(e.message.clone()),
            _ => None,
        })
        .expect("a LOGGED_OFF notice before the close")
}

async fn set_policy(clinic: &mut RawClinic, idle_ms: u64, lifetime_ms: u64) {
    let answer = clinic
        .admin
        .conn
        .request(ClientRequest::SetSessionPolicy {
            idle_timeout_ms: idle_ms,
            session_lifetime_ms: lifetime_ms,
        })
        .await
        .unwrap();
    assert!(matches!(answer, ServerMessage::Done), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_logged_off_and_needs_the_second_factor_again() {
    let server = Server::start_with_test_clock().unwrap();
    let clock = server.advance_clock(0).unwrap();
    let mut clinic = RawClinic::new(&server, clock).await.unwrap();
    set_policy(&mut clinic, 60_000, 3_600_000).await;

    // Activity keeps the session alive.
    server.advance_clock(45_000).unwrap();
    assert!(matches!(
        clinic
            .staff
            .conn
            .request(ClientRequest::WhoAmI)
            .await
            .unwrap(),
        ServerMessage::Identity(_)
    ));
    server.advance_clock(45_000).unwrap();
    assert!(matches!(
        clinic
            .staff
            .conn
            .request(ClientRequest::ListTeams)
            .await
            .unwrap(),
        ServerMessage::TeamList(_)
    ));
    // Then a minute without activity: logged off, with the reason.
    let clock = server.advance_clock(61_000).unwrap();
    let notice = expect_logoff(&mut clinic.staff.conn).await;
    assert!(notice.contains("without activity"), "{notice}");

    // The device still authenticates, but must log in again, with a fresh code.
    let mut conn = clinic.staff.device.connect(&server).await.unwrap();
    assert!(conn.auth_ok.as_ref().unwrap().login_required);
    let answer = conn.request(ClientRequest::ListTeams).await.unwrap();
    assert!(
        matches!(&answer, ServerMessage::Error(e) if e.code == ErrorCode::Unauthenticated),
        "{answer:?}"
    );
    // A message for the staff member waits, undelivered, until they log in again.
    let conversation = match clinic
        .patient
        .conn
        .request(ClientRequest::OpenConversation(
            medrelay_proto::OpenConversation {
                handles: vec![medrelay_proto::Handle::new("dr.lee").unwrap()],
            },
        ))
        .await
        .unwrap()
    {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    let sent = clinic
        .patient
        .conn
        .request(ClientRequest::Send(medrelay_proto::SendRequest {
            conversation_id: conversation.id,
            client_message_id: medrelay_proto::ClientMessageId::from_array([6; 16]),
            envelopes: vec![medrelay_proto::Envelope {
                recipient_device: clinic.staff.device.device_id.unwrap(),
                ciphertext: medrelay_proto::Bytes::from_static(b"opaque"),
            }],
            archive_item: None,
        }))
        .await
        .unwrap();
    assert!(matches!(sent, ServerMessage::SendAccepted(_)), "{sent:?}");
    assert!(conn
        .drain_deliveries(Duration::from_millis(700))
        .await
        .unwrap()
        .is_empty());
    conn.login(clinic.staff.totp_secret.as_deref().unwrap(), clock)
        .await
        .unwrap();
    assert_eq!(
        conn.drain_deliveries(Duration::from_millis(700))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        conn.request(ClientRequest::ListTeams).await.unwrap(),
        ServerMessage::TeamList(_)
    ));
    // Patients have no login session to lose.
    assert!(matches!(
        clinic
            .patient
            .conn
            .request(ClientRequest::WhoAmI)
            .await
            .unwrap(),
        ServerMessage::Identity(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_still_ends_at_its_lifetime() {
    let server = Server::start_with_test_clock().unwrap();
    let clock = server.advance_clock(0).unwrap();
    let mut clinic = RawClinic::new(&server, clock).await.unwrap();
    set_policy(&mut clinic, 60_000, 120_000).await;
    // The staff member logged in at setup; stay active every 40 s.
    for _ in 0..2 {
        server.advance_clock(40_000).unwrap();
        assert!(matches!(
            clinic
                .staff
                .conn
                .request(ClientRequest::WhoAmI)
                .await
                .unwrap(),
            ServerMessage::Identity(_)
        ));
    }
    server.advance_clock(41_000).unwrap();
    let notice = expect_logoff(&mut clinic.staff.conn).await;
    assert!(notice.contains("maximum length"), "{notice}");
}
