//! Proves: nothing acknowledged is lost. A send is acknowledged only once durable, so killing
//! the server with SIGKILL at any moment, then restarting it, loses no acknowledged message and
//! leaves the database readable. A repeated (sender device, client message id) is stored and
//! delivered once, and answered as the same message even once its devices no longer match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::time::Duration;

use medrelay_proto::{
    AckRequest, ClientMessageId, ClientRequest, Conversation, DeviceId, Envelope, MessageId,
    SendRequest, ServerMessage,
};
use medrelay_tests::{now_ms, RawClient, RawClinic, RawDevice, Server};

struct Pair {
    patient: RawDevice,
    staff: RawDevice,
    conversation: Conversation,
    staff_device: DeviceId,
}

async fn setup(server: &Server) -> Pair {
    let mut clinic = RawClinic::new(server, now_ms()).await.unwrap();
    let conversation = clinic.care_conversation().await.unwrap();
    let staff_device = clinic.staff.device.device_id.unwrap();
    Pair {
        patient: clinic.patient.device,
        staff: clinic.staff.device,
        conversation,
        staff_device,
    }
}

fn send_request(pair: &Pair, n: u32, round: u8) -> ClientRequest {
    let mut id = [0u8; 16];
    id[0] = round;
    id[12..].copy_from_slice(&n.to_be_bytes());
    ClientRequest::Send(SendRequest {
        conversation_id: pair.conversation.id,
        client_message_id: ClientMessageId::from_array(id),
        envelopes: vec![Envelope {
            recipient_device: pair.staff_device,
            ciphertext: medrelay_proto::Bytes::from(format!("ciphertext {round}/{n}")),
        }],
        archive_item: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_send() {
    let mut server = Server::start().unwrap();
    let pair = setup(&server).await;
    let mut acknowledged: BTreeSet<MessageId> = BTreeSet::new();

    for round in 1..=4u8 {
        let mut patient = pair.patient.connect(&server).await.unwrap();
        // Pipeline many sends, then kill the server part-way through their acknowledgements.
        for n in 0..60 {
            patient.send(send_request(&pair, n, round)).await.unwrap();
        }
        let kill_after = 10 + usize::from(round) * 7;
        let mut acks_this_round = 0;
        while acks_this_round < kill_after {
            let frame = patient.next_frame().await.unwrap();
            if let ServerMessage::SendAccepted(accepted) = frame.message {
                acknowledged.insert(accepted.message_id);
                acks_this_round += 1;
            }
        }
        server.kill9();
        server.restart().unwrap();
    }

    // Every acknowledged message is in the staff mailbox after the last restart.
    let mut staff = pair.staff.connect(&server).await.unwrap();
    let deliveries = staff
        .drain_deliveries(Duration::from_millis(1500))
        .await
        .unwrap();
    let delivered: BTreeSet<MessageId> = deliveries.iter().map(|d| d.message_id).collect();
    let lost: Vec<_> = acknowledged.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost after SIGKILL",
        lost.len(),
        acknowledged.len()
    );
    assert_eq!(
        deliveries.len(),
        delivered.len(),
        "a message was delivered twice on one connection"
    );

    // Acking removes them for good, also across a crash.
    let ids: Vec<MessageId> = delivered.iter().copied().collect();
    for chunk in ids.chunks(medrelay_proto::limits::MAX_ACK_IDS) {
        let answer = staff
            .request(ClientRequest::Ack(AckRequest {
                message_ids: chunk.to_vec(),
            }))
            .await
            .unwrap();
        assert!(matches!(answer, ServerMessage::Acked { .. }), "{answer:?}");
    }
    drop(staff);
    server.restart_gracefully().unwrap();
    let mut staff = pair.staff.connect(&server).await.unwrap();
    let leftover = staff
        .drain_deliveries(Duration::from_millis(800))
        .await
        .unwrap();
    // Acks are not synced before answering (a lost ack only means a redelivery, which clients
    // recognise by message id), so after a SIGKILL some may come back; a graceful shutdown
    // (SIGTERM) flushes them, so after one none may.
    assert!(
        leftover.is_empty(),
        "{} acked messages came back",
        leftover.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_client_message_id_is_stored_and_delivered_once() {
    let server = Server::start().unwrap();
    let pair = setup(&server).await;
    let mut patient = pair.patient.connect(&server).await.unwrap();
    let first = match patient.request(send_request(&pair, 1, 1)).await.unwrap() {
        ServerMessage::SendAccepted(a) => a,
        other => panic!("{other:?}"),
    };
    assert!(!first.duplicate);
    // The same send again, on the same and on a new connection.
    let again = match patient.request(send_request(&pair, 1, 1)).await.unwrap() {
        ServerMessage::SendAccepted(a) => a,
        other => panic!("{other:?}"),
    };
    drop(patient);
    let mut patient = pair.patient.connect(&server).await.unwrap();
    let third = match patient.request(send_request(&pair, 1, 1)).await.unwrap() {
        ServerMessage::SendAccepted(a) => a,
        other => panic!("{other:?}"),
    };
    // A repeat whose envelopes no longer match the recipients' devices (as when one was
    // enrolled since) is still the same message: answered as such, not refused.
    let with_devices = |request: ClientRequest| match request {
        ClientRequest::Send(mut send) => {
            send.envelopes.push(Envelope {
                recipient_device: DeviceId::from_array([7; 16]),
                ciphertext: medrelay_proto::Bytes::from_static(b"x"),
            });
            ClientRequest::Send(send)
        }
        other => other,
    };
    let fourth = match patient
        .request(with_devices(send_request(&pair, 1, 1)))
        .await
        .unwrap()
    {
        ServerMessage::SendAccepted(a) => a,
        other => panic!("{other:?}"),
    };
    for repeat in [&again, &third, &fourth] {
        assert!(repeat.duplicate);
        assert_eq!(repeat.message_id, first.message_id);
        assert_eq!(repeat.server_time_ms, first.server_time_ms);
    }
    // The same envelopes under a new id are refused.
    match patient
        .request(with_devices(send_request(&pair, 2, 1)))
        .await
        .unwrap()
    {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, medrelay_proto::ErrorCode::DevicesMismatch)
        }
        other => panic!("{other:?}"),
    }
    let mut staff = pair.staff.connect(&server).await.unwrap();
    let deliveries = staff
        .drain_deliveries(Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].message_id, first.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_receives_in_order_on_reconnect() {
    let server = Server::start().unwrap();
    let pair = setup(&server).await;
    let mut patient = pair.patient.connect(&server).await.unwrap();
    let mut sent = Vec::new();
    for n in 0..300 {
        match patient.request(send_request(&pair, n, 9)).await.unwrap() {
            ServerMessage::SendAccepted(a) => sent.push(a.message_id),
            other => panic!("{other:?}"),
        }
    }
    let mut staff: RawClient = pair.staff.connect(&server).await.unwrap();
    let deliveries = staff
        .drain_deliveries(Duration::from_millis(800))
        .await
        .unwrap();
    let order: Vec<MessageId> = deliveries.iter().map(|d| d.message_id).collect();
    // More than the in-flight bound arrive once acked: here all 300 fit the bound.
    assert_eq!(order, sent);
    for (n, d) in deliveries.iter().enumerate() {
        assert_eq!(d.ciphertext, format!("ciphertext 9/{n}").as_bytes());
        assert_eq!(d.conversation_id, pair.conversation.id);
    }
}
