//! Proves: a patient must accept the clinic's consent text (shown at enrolment) before
//! messaging; acceptance is bound to the text; withdrawal stops messaging both ways and is
//! shown to staff.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{
    ClientMessageId, ClientRequest, ConsentState, ConsentText, ErrorCode, Handle, OpenConversation,
    Role, SendRequest, ServerMessage,
};
use medrelay_tests::{now_ms, RawClient, RawClinic, RawDevice, Server};

async fn try_send(conn: &mut RawClient, who: &str, to: &str, n: u8) -> ServerMessage {
    let conversation = match conn
        .request(ClientRequest::OpenConversation(OpenConversation {
            handles: vec![Handle::new(to).unwrap()],
        }))
        .await
        .unwrap()
    {
        ServerMessage::Conversation(c) => c,
        other => panic!("{who}: {other:?}"),
    };
    let me = match conn.request(ClientRequest::WhoAmI).await.unwrap() {
        ServerMessage::Identity(i) => i.device_id,
        other => panic!("{other:?}"),
    };
    conn.request(ClientRequest::Send(SendRequest {
        conversation_id: conversation.id,
        client_message_id: ClientMessageId::from_array([n; 16]),
        envelopes: conversation
            .members
            .iter()
            .flat_map(|m| m.devices.iter().copied())
            .filter(|d| *d != me)
            .map(|d| medrelay_proto::Envelope {
                recipient_device: d,
                ciphertext: medrelay_proto::Bytes::from_static(b"opaque"),
            })
            .collect(),
        archive_item: None,
    }))
    .await
    .unwrap()
}

fn forbidden_saying(message: &ServerMessage, words: &str) {
    match message {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert!(e.message.contains(words), "{}", e.message);
        }
        other => panic!("expected FORBIDDEN, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_comes_before_messaging_and_withdrawal_stops_it() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    // The clinic sets its own consent text.
    let text = ConsentText::new(
        "Lakeside Aesthetics may message you about your treatment. Reply STOP by withdrawing.",
    )
    .unwrap();
    assert!(matches!(
        clinic
            .admin
            .conn
            .request(ClientRequest::SetConsentText { text: text.clone() })
            .await
            .unwrap(),
        ServerMessage::Done
    ));

    // A new patient sees it at enrolment and cannot message before accepting.
    let code = clinic
        .staff
        .conn
        .invite(Role::Patient, "bob")
        .await
        .unwrap();
    let mut bob = RawDevice::new();
    let mut conn = bob.enroll(&server, &code).await.unwrap();
    let ok = conn.auth_ok.clone().unwrap();
    assert!(ok.consent_required);
    assert_eq!(ok.consent_text.as_ref(), Some(&text));
    forbidden_saying(&try_send(&mut conn, "bob", "dr.lee", 1).await, "consent");
    forbidden_saying(
        &try_send(&mut clinic.staff.conn, "staff", "bob", 2).await,
        "consent",
    );
    // Accepting another text (say, an old one) is refused.
    let answer = conn
        .request(ClientRequest::AcceptConsent {
            text_sha256: [0u8; 32],
        })
        .await
        .unwrap();
    forbidden_saying(&answer, "changed");
    conn.accept_consent().await.unwrap();
    assert!(matches!(
        try_send(&mut conn, "bob", "dr.lee", 3).await,
        ServerMessage::SendAccepted(_)
    ));

    // Withdrawal: messaging stops both ways, and staff see it.
    assert!(matches!(
        conn.request(ClientRequest::WithdrawConsent).await.unwrap(),
        ServerMessage::Done
    ));
    forbidden_saying(&try_send(&mut conn, "bob", "dr.lee", 4).await, "withdrawn");
    forbidden_saying(
        &try_send(&mut clinic.staff.conn, "staff", "bob", 5).await,
        "withdrawn",
    );
    let view = match clinic
        .staff
        .conn
        .request(ClientRequest::OpenConversation(OpenConversation {
            handles: vec![Handle::new("bob").unwrap()],
        }))
        .await
        .unwrap()
    {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    let bob_member = view
        .members
        .iter()
        .find(|m| m.handle.as_str() == "bob")
        .unwrap();
    assert_eq!(bob_member.consent, ConsentState::Withdrawn);
    // A reconnect says consent is required again.
    let mut again = bob.connect(&server).await.unwrap();
    assert!(again.auth_ok.clone().unwrap().consent_required);
    again.accept_consent().await.unwrap();
    assert!(matches!(
        try_send(&mut again, "bob", "dr.lee", 6).await,
        ServerMessage::SendAccepted(_)
    ));

    // When the clinic changes its consent text, patients are asked again.
    let revised = ConsentText::new("Revised terms: messages are kept for six years.").unwrap();
    clinic
        .admin
        .conn
        .request(ClientRequest::SetConsentText {
            text: revised.clone(),
        })
        .await
        .unwrap();
    forbidden_saying(&try_send(&mut again, "bob", "dr.lee", 7).await, "consent");
    let mut fresh = bob.connect(&server).await.unwrap();
    let ok = fresh.auth_ok.clone().unwrap();
    assert!(ok.consent_required);
    assert_eq!(ok.consent_text, Some(revised));
    fresh.accept_consent().await.unwrap();
    assert!(matches!(
        try_send(&mut fresh, "bob", "dr.lee", 8).await,
        ServerMessage::SendAccepted(_)
    ));
}
