//! Proves: a connection goes on reading its peer's requests while the peer is slow to read
//! what the server writes: a device that comes back to a full mailbox and sends messages of
//! its own before it reads its deliveries is served in full, well within the write timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use medrelay_proto::{ClientMessageId, ClientRequest, Envelope, SendRequest, ServerMessage};
use medrelay_tests::{now_ms, RawClinic, Server};

/// Ciphertext bytes per message: near the limit, so a few hundred fill the sockets.
const BIG: usize = 60 * 1024;
/// Messages waiting for the staff device: far more than the sockets between server and
/// client hold (a few megabytes on loopback).
const WAITING: u32 = 240;
/// Messages the device sends before it reads anything: more bytes than the sockets hold the
/// other way.
const SENDS: u32 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_before_it_reads_is_not_stalled() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let conversation = clinic.care_conversation().await.unwrap();
    let staff_device = clinic.staff.device.device_id.unwrap();
    let patient_device = clinic.patient.device.device_id.unwrap();
    drop(clinic.staff.conn);

    let ciphertext = medrelay_proto::Bytes::from(vec![0x5a; BIG]);
    let send = |n: u32, to| {
        let mut id = [0u8; 16];
        id[12..].copy_from_slice(&n.to_be_bytes());
        ClientRequest::Send(SendRequest {
            conversation_id: conversation.id,
            client_message_id: ClientMessageId::from_array(id),
            envelopes: vec![Envelope {
                recipient_device: to,
                ciphertext: ciphertext.clone(),
            }],
            archive_item: None,
        })
    };
    let patient = &mut clinic.patient.conn;
    for batch in 0..(WAITING / 40) {
        for n in 0..40u32 {
            patient
                .send(send(batch * 40 + n, staff_device))
                .await
                .unwrap();
        }
        let mut accepted = 0;
        while accepted < 40 {
            match patient.next_frame().await.unwrap().message {
                ServerMessage::SendAccepted(_) => accepted += 1,
                ServerMessage::Error(error) => panic!("send refused: {error:?}"),
                _ => {}
            }
        }
    }

    // The staff device comes back and writes before it reads.
    let mut staff = clinic.staff.device.connect(&server).await.unwrap();
    let started = Instant::now();
    let written = tokio::time::timeout(Duration::from_secs(20), async {
        for n in 0..SENDS {
            staff.send(send(n, patient_device)).await.unwrap();
        }
    })
    .await;
    assert!(
        written.is_ok(),
        "the server stopped reading while its own writes waited for the client"
    );

    // Then it reads: every delivery and every answer arrive.
    let (mut deliveries, mut answers) = (0u32, 0u32);
    while deliveries < WAITING || answers < SENDS {
        match staff.next_frame().await.unwrap().message {
            ServerMessage::Delivery(d) => {
                assert_eq!(d.ciphertext.len(), BIG);
                deliveries += 1;
            }
            ServerMessage::SendAccepted(_) => answers += 1,
            ServerMessage::Error(error) => panic!("{error:?}"),
            _ => {}
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}: the write timeout is 30 s",
        started.elapsed()
    );
}
