//! The wire side of the load: the same `Send` frames (protobuf `ClientFrame`s from
//! medrelay-proto, one 1 KiB envelope per recipient device) go to the relay, which
//! authenticates, authorises, stores durably and delivers them, and to the forwarder, which
//! passes them on as they are. Receivers read deliveries (the relay's `Delivery` pushes,
//! acknowledged in batches as a client does; the forwarder's raw frames) and report them.

use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use medrelay_proto::{
    decode_client_frame, decode_server_frame, encode_client_frame, AckRequest, ClientFrame,
    ClientMessageId, ClientRequest, ConversationId, DeviceId, Envelope, MessageId, SendRequest,
    ServerMessage,
};
use rand::RngCore;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Ws;
use crate::load::{stamp, FrameSink, Phase, Tracker};

/// Builds the `Send` frames of one flow.
#[derive(Debug)]
pub struct SendFrames {
    conversation: ConversationId,
    recipients: Vec<DeviceId>,
    template: Arc<Vec<u8>>,
    next_request_id: u64,
    client_prefix: [u8; 8],
    next_client_id: u64,
}

impl SendFrames {
    /// Frames for `conversation`, one envelope per device in `recipients`.
    pub fn new(
        conversation: ConversationId,
        recipients: Vec<DeviceId>,
        template: Arc<Vec<u8>>,
        first_request_id: u64,
    ) -> SendFrames {
        let mut client_prefix = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut client_prefix);
        SendFrames {
            conversation,
            recipients,
            template,
            next_request_id: first_request_id,
            client_prefix,
            next_client_id: 0,
        }
    }

    /// The next frame, its payload stamped.
    pub fn next(&mut self, flow: u32, seq: u32, sent_ns: u64) -> Vec<u8> {
        let mut payload = self.template.as_ref().clone();
        stamp(&mut payload, flow, seq, sent_ns);
        let ciphertext = medrelay_proto::Bytes::from(payload);
        let mut client_id = [0u8; 16];
        client_id[..8].copy_from_slice(&self.client_prefix);
        client_id[8..].copy_from_slice(&self.next_client_id.to_be_bytes());
        self.next_client_id += 1;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        encode_client_frame(&ClientFrame {
            request_id,
            request: ClientRequest::Send(SendRequest {
                conversation_id: self.conversation,
                client_message_id: ClientMessageId::from_array(client_id),
                envelopes: self
                    .recipients
                    .iter()
                    .map(|device| Envelope {
                        recipient_device: *device,
                        ciphertext: ciphertext.clone(),
                    })
                    .collect(),
                archive_item: None,
            }),
        })
    }
}

/// A sender on a WebSocket: to the relay or to the forwarder.
#[derive(Debug)]
pub struct WsSink {
    /// The writing half.
    pub sink: SplitSink<Ws, Message>,
    /// The frames it sends.
    pub frames: SendFrames,
}

impl FrameSink for WsSink {
    async fn feed(&mut self, flow: u32, seq: u32, sent_ns: u64) -> anyhow::Result<()> {
        let bytes = self.frames.next(flow, seq, sent_ns);
        self.sink.feed(Message::binary(bytes)).await?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.sink.flush().await?;
        Ok(())
    }
}

async fn until_done(phases: &mut watch::Receiver<Phase>) {
    loop {
        if *phases.borrow_and_update() == Phase::Done {
            return;
        }
        if phases.changed().await.is_err() {
            return;
        }
    }
}

/// Reads the relay's answers to a sender's sends until the run is done; reports errors.
pub async fn relay_sender_replies(
    mut stream: SplitStream<Ws>,
    tracker: Arc<Tracker>,
    mut phases: watch::Receiver<Phase>,
) -> SplitStream<Ws> {
    loop {
        tokio::select! {
            () = until_done(&mut phases) => return stream,
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match decode_server_frame(&bytes) {
                    Ok(frame) => {
                        if let ServerMessage::Error(error) = frame.message {
                            tracker.error(&format!("send refused: {} ({})", error.code.as_str(), error.message));
                        }
                    }
                    Err(error) => tracker.error(&format!("undecodable answer: {error}")),
                },
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracker.error(&format!("sender connection failed: {error}"));
                    return stream;
                }
                None => {
                    tracker.error("sender connection closed by the server");
                    return stream;
                }
            }
        }
    }
}

/// A relay receiver: reports each delivery and acknowledges them in batches (as a client
/// does, so the server deletes its copy: a reading half passes message ids to a writing half,
/// which acknowledges whatever has gathered since its last write), until the run is done.
pub async fn relay_receiver(ws: Ws, tracker: Arc<Tracker>, mut phases: watch::Receiver<Phase>) {
    let (mut sink, mut stream) = ws.split();
    let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
    let ack_tracker = tracker.clone();
    let acker = tokio::spawn(async move {
        let mut request_id: u64 = 1 << 40;
        while let Some(first) = ids.recv().await {
            let mut batch = vec![first];
            while batch.len() < medrelay_proto::limits::MAX_ACK_IDS {
                match ids.try_recv() {
                    Ok(id) => batch.push(id),
                    Err(_) => break,
                }
            }
            request_id += 1;
            let frame = encode_client_frame(&ClientFrame {
                request_id,
                request: ClientRequest::Ack(AckRequest { message_ids: batch }),
            });
            if let Err(error) = sink.send(Message::binary(frame)).await {
                ack_tracker.error(&format!("ack failed: {error}"));
                return;
            }
        }
    });
    loop {
        let message = tokio::select! {
            () = until_done(&mut phases) => break,
            message = stream.next() => message,
        };
        match message {
            Some(Ok(Message::Binary(bytes))) => match decode_server_frame(&bytes) {
                Ok(frame) => match frame.message {
                    ServerMessage::Delivery(delivery) => {
                        tracker.delivered(&delivery.ciphertext);
                        let _ = ids_tx.send(delivery.message_id);
                    }
                    ServerMessage::Error(error) => tracker.error(&format!(
                        "receiver got an error: {} ({})",
                        error.code.as_str(),
                        error.message
                    )),
                    _ => {}
                },
                Err(error) => tracker.error(&format!("undecodable push: {error}")),
            },
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracker.error(&format!("receiver connection failed: {error}"));
                break;
            }
            None => {
                tracker.error("receiver connection closed by the server");
                break;
            }
        }
    }
    drop(ids_tx);
    let _ = acker.await;
}

/// A forwarder receiver: decodes the forwarded `Send` frame and reports its envelope.
pub async fn forwarder_receiver(
    mut ws: Ws,
    tracker: Arc<Tracker>,
    mut phases: watch::Receiver<Phase>,
) -> Ws {
    loop {
        let message = tokio::select! {
            () = until_done(&mut phases) => return ws,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Binary(bytes))) => match decode_client_frame(&bytes) {
                Ok(ClientFrame {
                    request: ClientRequest::Send(send),
                    ..
                }) => {
                    for envelope in &send.envelopes {
                        tracker.delivered(&envelope.ciphertext);
                    }
                }
                Ok(_) => tracker.error("the forwarder passed on something else"),
                Err(error) => tracker.error(&format!("undecodable forwarded frame: {error}")),
            },
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracker.error(&format!("forwarder receiver failed: {error}"));
                return ws;
            }
            None => {
                tracker.error("forwarder closed a receiver");
                return ws;
            }
        }
    }
}
