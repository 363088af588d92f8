//! Proves: a device that sends faster than the server's per-device send rate is refused with
//! a clear, retryable error, and a refused send stores and delivers nothing, while the sends
//! within the rate go through. The rate is `medrelay serve --sends-per-second`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use medrelay_proto::{
    ClientMessageId, ClientRequest, Envelope, ErrorCode, SendRequest, ServerMessage,
};
use medrelay_tests::{now_ms, RawClient, RawClinic, Server};

/// Which sends reached `conn` since it last looked, by the byte each ciphertext is filled with.
async fn delivered(conn: &mut RawClient) -> Vec<u8> {
    conn.drain_deliveries(Duration::from_millis(500))
        .await
        .unwrap()
        .iter()
        .map(|d| d.ciphertext.first().copied().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_device_rate_are_refused_and_store_nothing() {
    // One send a second, bursts of two.
    let server = Server::start_with(&["--sends-per-second", "1"]).unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let conversation = clinic.care_conversation().await.unwrap();
    let staff_device = clinic.staff.device.device_id.unwrap();
    let send = |n: u8| {
        ClientRequest::Send(SendRequest {
            conversation_id: conversation.id,
            client_message_id: ClientMessageId::from_array([n; 16]),
            envelopes: vec![Envelope {
                recipient_device: staff_device,
                ciphertext: medrelay_proto::Bytes::from(vec![n; 64]),
            }],
            archive_item: None,
        })
    };
    // Four sends at once: the server checks each as it reads it, within milliseconds, far
    // less than the second it takes to refill one send.
    let patient = &mut clinic.patient.conn;
    let mut ids = Vec::new();
    for n in 1..=4u8 {
        ids.push((patient.send(send(n)).await.unwrap(), n));
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut retry_after_ms = 0;
    while accepted.len() + refused.len() < ids.len() {
        let frame = patient.next_frame().await.unwrap();
        let Some(&(_, n)) = ids.iter().find(|(id, _)| *id == frame.request_id) else {
            continue;
        };
        match frame.message {
            ServerMessage::SendAccepted(_) => accepted.push(n),
            ServerMessage::Error(error) => {
                assert_eq!(error.code, ErrorCode::RateLimited, "{error:?}");
                assert!(error.message.contains("slow down"), "{error:?}");
                assert!(error.retry_after_ms > 0, "{error:?}");
                retry_after_ms = retry_after_ms.max(error.retry_after_ms);
                refused.push(n);
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    accepted.sort_unstable();
    refused.sort_unstable();
    // The burst of two passes.
    assert_eq!(accepted, vec![1, 2], "refused: {refused:?}");
    assert_eq!(refused, vec![3, 4]);

    // Only the accepted sends reach the recipient.
    assert_eq!(delivered(&mut clinic.staff.conn).await, vec![1, 2]);

    // Once the rate allows it again, as the error said, the refused send goes through as a
    // new message (a refused send left no idempotency record behind) and is delivered.
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 50)).await;
    match clinic.patient.conn.request(send(3)).await.unwrap() {
        ServerMessage::SendAccepted(accepted) => {
            assert!(
                !accepted.duplicate,
                "the refused send had been stored: {accepted:?}"
            );
        }
        other => panic!("the retried send was not accepted: {other:?}"),
    }
    assert_eq!(delivered(&mut clinic.staff.conn).await, vec![3]);
}
