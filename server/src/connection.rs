//! One WebSocket connection, from challenge to close.
//!
//! Two phases, two types: an [`Unauthenticated`] connection may only enrol, authenticate or
//! ping; [`Authenticated`] holds the [`AuthedDevice`] that every later request is checked
//! against. A connection handles its requests in order; a send is written to the store at
//! once, and its acknowledgement waits (without blocking later requests) until the group
//! commit has made it durable. Deliveries are read from the device's mailbox, in order, with
//! a bounded number in flight.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use medrelay_proto::ids::MessageId;
use medrelay_proto::{
    decode_client_frame_bytes, encode_server_frame, AuthOk, Binding, Challenge, ChannelBinding,
    ClientFrame, ClientRequest, Conversation, ConversationList, Delivery, ErrorCode, FrameError,
    Identity, InviteCreated, Member, PrekeyBundle, SendAccepted, ServerFrame, ServerMessage,
    WireError,
};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::http::PeerInfo;
use crate::hub::{CloseReason, Registration};
use crate::limits;
use crate::relay::{AuthedDevice, ConversationView};
use crate::server::Context;

/// Malformed frames tolerated on one connection before it is closed.
const MAX_BAD_FRAMES: u32 = 16;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;
type PendingReply = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Counts a live connection for graceful shutdown.
struct LiveGuard(Arc<Context>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// We close with this code and reason (after sending an error frame if there is one).
    Close(CloseCode, &'static str),
}

/// The writing half with its batch of frames waiting to go out.
struct Writer<S> {
    sink: Sink<S>,
    queued: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Queues a frame without flushing.
    async fn feed(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let bytes = encode_server_frame(frame);
        match tokio::time::timeout(
            limits::WRITE_TIMEOUT,
            self.sink.feed(Message::binary(bytes)),
        )
        .await
        {
            Ok(Ok(())) => {
                self.queued += 1;
                Ok(())
            }
            _ => Err(End::Gone),
        }
    }

    /// Sends everything queued in one flush.
    async fn flush(&mut self) -> Result<(), End> {
        if self.queued == 0 {
            return Ok(());
        }
        self.queued = 0;
        match tokio::time::timeout(limits::WRITE_TIMEOUT, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Sends a close frame, then lingers: reads and discards what the peer still sends, for a
    /// bounded time and amount, so that closing with unread data (the rest of an oversize
    /// frame, say) does not reset the connection before the peer has read our error.
    async fn close(mut self, stream: Stream<S>, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if tokio::time::timeout(
            limits::WRITE_TIMEOUT,
            self.sink.send(Message::Close(Some(frame))),
        )
        .await
        .is_err()
        {
            return;
        }
        let Ok(mut ws) = self.sink.reunite(stream) else {
            return;
        };
        let socket = ws.get_mut();
        let mut discard = [0u8; 4096];
        let mut drained = 0usize;
        let deadline = tokio::time::Instant::now() + limits::LINGER_ON_CLOSE;
        while drained < limits::LINGER_MAX_BYTES {
            match tokio::time::timeout_at(deadline, socket.read(&mut discard)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        let _ = socket.shutdown().await;
    }
}

fn error_frame(request_id: u64, error: WireError) -> ServerFrame {
    ServerFrame::reply(request_id, ServerMessage::Error(error))
}

fn frame_error(error: &FrameError) -> ServerFrame {
    error_frame(
        error.request_id(),
        WireError::new(error.code(), error.message()),
    )
}

fn now_ms(context: &Context) -> u64 {
    context.clock.now_ms()
}

/// What reading one WebSocket message gave.
enum Incoming {
    Frame(ClientFrame),
    /// A frame that could not be decoded; answer with this error and go on.
    Bad(ServerFrame),
    /// Control frames and the like: nothing to do.
    Nothing,
}

/// Reads the next message; `Err` ends the connection.
async fn read_frame<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut Stream<S>,
) -> Result<Incoming, (End, Option<ServerFrame>)> {
    match stream.next().await {
        None => Err((End::Gone, None)),
        Some(Ok(Message::Binary(bytes))) => Ok(match decode_client_frame_bytes(bytes) {
            Ok(frame) => Incoming::Frame(frame),
            Err(error) => Incoming::Bad(frame_error(&error)),
        }),
        Some(Ok(Message::Text(_))) => Ok(Incoming::Bad(error_frame(
            0,
            WireError::new(
                ErrorCode::Malformed,
                "text frames are not part of the protocol: send binary protobuf ClientFrames",
            ),
        ))),
        Some(Ok(Message::Close(_))) => Err((End::Gone, None)),
        Some(Ok(_)) => Ok(Incoming::Nothing),
        Some(Err(WsError::Capacity(_))) => Err((
            End::Close(CloseCode::Size, "frame too large"),
            Some(error_frame(
                0,
                WireError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "a frame may be at most {} bytes; the connection is closed",
                        medrelay_proto::limits::MAX_FRAME_BYTES
                    ),
                ),
            )),
        )),
        Some(Err(WsError::Protocol(_))) => Err((
            End::Close(CloseCode::Protocol, "WebSocket protocol violation"),
            None,
        )),
        Some(Err(_)) => Err((End::Gone, None)),
    }
}

/// Runs one upgraded WebSocket connection to its end.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    context: Arc<Context>,
    peer: PeerInfo,
    origin_header: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    context.live_connections.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(context.clone());
    let (sink, mut stream) = ws.split();
    let mut writer = Writer { sink, queued: 0 };
    let connection = Unauthenticated {
        context: context.clone(),
        peer,
        origin_header,
        nonce: {
            let mut nonce = [0u8; medrelay_proto::limits::NONCE_LEN];
            rand::rngs::OsRng.fill_bytes(&mut nonce);
            nonce
        },
        bad_frames: 0,
    };
    let end = match tokio::time::timeout(
        limits::AUTH_TIMEOUT,
        connection.authenticate(&mut stream, &mut writer),
    )
    .await
    {
        Ok(Ok(authenticated)) => authenticated.serve(&mut stream, &mut writer).await,
        Ok(Err(end)) => end,
        Err(_) => {
            let _ = writer
                .send(&error_frame(
                    0,
                    WireError::new(
                        ErrorCode::Unauthenticated,
                        "authentication timed out; reconnect and answer the challenge",
                    ),
                ))
                .await;
            End::Close(CloseCode::Policy, "authentication timed out")
        }
    };
    if let End::Close(code, reason) = end {
        writer.close(stream, code, reason).await;
    }
}

/// A connection that has not proven which device it is.
struct Unauthenticated {
    context: Arc<Context>,
    peer: PeerInfo,
    origin_header: Option<String>,
    nonce: [u8; medrelay_proto::limits::NONCE_LEN],
    bad_frames: u32,
}

impl Unauthenticated {
    /// The binding the proof must cover, or an error if the claimed one is not acceptable.
    fn binding(&self, claimed: &ChannelBinding) -> Result<Binding, WireError> {
        match claimed {
            ChannelBinding::TlsExporter => Ok(Binding::TlsExporter(self.peer.tls_exporter)),
            ChannelBinding::Origin(origin) => {
                let known = self.context.origins.iter().any(|o| o == origin.as_str());
                // A browser always sends Origin; it must be the one the proof names.
                let consistent = self
                    .origin_header
                    .as_deref()
                    .is_none_or(|header| header == origin.as_str());
                if known && consistent {
                    Ok(Binding::Origin(origin.clone()))
                } else {
                    Err(WireError::new(
                        ErrorCode::AuthFailed,
                        "the proof is bound to an origin this server does not serve",
                    ))
                }
            }
        }
    }

    /// Sends the challenge and waits for a valid enrolment or proof.
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        mut self,
        stream: &mut Stream<S>,
        writer: &mut Writer<S>,
    ) -> Result<Authenticated, End> {
        let challenge = ServerFrame::push(ServerMessage::Challenge(Challenge {
            nonce: self.nonce,
            server_time_ms: now_ms(&self.context),
        }));
        writer.send(&challenge).await?;
        loop {
            let frame = match read_frame(stream).await {
                Ok(Incoming::Frame(frame)) => frame,
                Ok(Incoming::Bad(error)) => {
                    self.bad_frames += 1;
                    writer.send(&error).await?;
                    if self.bad_frames >= MAX_BAD_FRAMES {
                        return Err(End::Close(CloseCode::Policy, "too many malformed frames"));
                    }
                    continue;
                }
                Ok(Incoming::Nothing) => continue,
                Err((end, error)) => {
                    if let Some(error) = error {
                        let _ = writer.send(&error).await;
                    }
                    return Err(end);
                }
            };
            let request_id = frame.request_id;
            let result = match &frame.request {
                ClientRequest::Ping => {
                    writer
                        .send(&ServerFrame::reply(
                            request_id,
                            ServerMessage::Pong {
                                server_time_ms: now_ms(&self.context),
                            },
                        ))
                        .await?;
                    continue;
                }
                ClientRequest::Auth(proof) => self.binding(&proof.binding).and_then(|binding| {
                    self.context.relay.authenticate(
                        &self.nonce,
                        &binding,
                        &proof.device_id,
                        &proof.signature,
                    )
                }),
                ClientRequest::Enroll(request) => self
                    .binding(&request.binding)
                    .and_then(|binding| self.context.relay.enroll(&self.nonce, &binding, request)),
                other => {
                    writer
                        .send(&error_frame(
                            request_id,
                            WireError::new(
                                ErrorCode::Unauthenticated,
                                format!(
                                    "{} needs an authenticated connection; send auth or enroll first",
                                    other.name()
                                ),
                            ),
                        ))
                        .await?;
                    continue;
                }
            };
            match result {
                Ok(who) => {
                    // Enrolment keys must be durable before the device is told it exists.
                    if let ClientRequest::Enroll(_) = frame.request {
                        if let Err(error) = self.context.relay.store().sync().await {
                            tracing::error!(%error, "could not make an enrolment durable");
                            writer
                                .send(&error_frame(
                                    request_id,
                                    WireError::new(
                                        ErrorCode::Internal,
                                        "the server could not store the enrolment; try again",
                                    ),
                                ))
                                .await?;
                            return Err(End::Close(CloseCode::Error, "storage failure"));
                        }
                    }
                    let remaining = self
                        .context
                        .relay
                        .one_time_prekeys_remaining(&who)
                        .unwrap_or(0);
                    tracing::info!(
                        org = %who.org, user = %who.user, device = %who.device,
                        role = who.role.as_str(), "authenticated"
                    );
                    writer
                        .send(&ServerFrame::reply(
                            request_id,
                            ServerMessage::AuthOk(AuthOk {
                                org_id: who.org,
                                user_id: who.user,
                                device_id: who.device,
                                role: who.role,
                                handle: who.handle.clone(),
                                one_time_prekeys_remaining: remaining,
                                archive_public_key: None,
                            }),
                        ))
                        .await?;
                    let registration = self.context.hub.register(who.device);
                    // Whatever waits in the mailbox goes out first.
                    registration.signals.wake.notify_one();
                    return Ok(Authenticated {
                        context: self.context,
                        who,
                        registration,
                        pending: FuturesOrdered::new(),
                        cursor: None,
                        in_flight: HashSet::new(),
                        bad_frames: self.bad_frames,
                    });
                }
                Err(error) => {
                    tracing::info!(code = error.code.as_str(), "authentication refused");
                    writer.send(&error_frame(request_id, error)).await?;
                    // The challenge is spent: one proof per connection.
                    return Err(End::Close(CloseCode::Policy, "authentication failed"));
                }
            }
        }
    }
}

/// A connection proven to be `who`.
struct Authenticated {
    context: Arc<Context>,
    who: AuthedDevice,
    registration: Registration,
    /// Replies waiting for durability, in request order.
    pending: FuturesOrdered<PendingReply>,
    /// The last mailbox position pushed on this connection.
    cursor: Option<u64>,
    /// Deliveries pushed and not yet acknowledged.
    in_flight: HashSet<MessageId>,
    bad_frames: u32,
}

fn conversation_frame(view: ConversationView) -> Conversation {
    Conversation {
        id: view.id,
        members: view
            .members
            .into_iter()
            .map(|m| Member {
                user_id: m.user,
                handle: m.handle,
                role: m.role,
                devices: m.devices,
            })
            .collect(),
    }
}

impl Authenticated {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        mut self,
        stream: &mut Stream<S>,
        writer: &mut Writer<S>,
    ) -> End {
        let end = self.serve_loop(stream, writer).await;
        // Drain replies already promised, so an acknowledged send is never left unsaid.
        while let Some(reply) = self.pending.next().await {
            if writer.feed(&reply).await.is_err() {
                break;
            }
        }
        let _ = writer.flush().await;
        self.context
            .hub
            .unregister(&self.who.device, self.registration.connection);
        end
    }

    async fn serve_loop<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        stream: &mut Stream<S>,
        writer: &mut Writer<S>,
    ) -> End {
        let signals = self.registration.signals.clone();
        let idle = tokio::time::sleep(limits::IDLE_CONNECTION_TIMEOUT);
        tokio::pin!(idle);
        loop {
            let can_read = self.pending.len() < limits::MAX_PENDING_ACKS_PER_CONNECTION;
            let can_deliver = self.in_flight.len() < limits::MAX_UNACKED_DELIVERIES;
            tokio::select! {
                biased;
                () = signals.close.notified() => {
                    let (code, reason, message) = match signals.close_reason() {
                        Some(CloseReason::Revoked) => (
                            CloseCode::Policy,
                            "device revoked",
                            "this device was revoked; enrol again with a new invite",
                        ),
                        Some(CloseReason::Replaced) => (
                            CloseCode::Policy,
                            "replaced by a newer connection",
                            "this device connected again elsewhere; this connection is closed",
                        ),
                        _ => (
                            CloseCode::Away,
                            "server shutting down",
                            "the server is shutting down; reconnect shortly",
                        ),
                    };
                    let _ = writer
                        .feed(&error_frame(0, WireError::new(ErrorCode::LoggedOff, message)))
                        .await;
                    return End::Close(code, reason);
                }
                Some(reply) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(end) = writer.feed(&reply).await {
                        return end;
                    }
                    // Take every other reply that is ready too, then flush once.
                    while let Some(Some(reply)) = futures_util::FutureExt::now_or_never(self.pending.next()) {
                        if let Err(end) = writer.feed(&reply).await {
                            return end;
                        }
                    }
                }
                read = read_frame(stream), if can_read => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits::IDLE_CONNECTION_TIMEOUT);
                    match read {
                        Ok(Incoming::Frame(frame)) => {
                            if let Err(end) = self.handle(frame, writer).await {
                                return end;
                            }
                        }
                        Ok(Incoming::Bad(error)) => {
                            self.bad_frames += 1;
                            if let Err(end) = writer.feed(&error).await {
                                return end;
                            }
                            if self.bad_frames >= MAX_BAD_FRAMES {
                                let _ = writer.flush().await;
                                return End::Close(CloseCode::Policy, "too many malformed frames");
                            }
                        }
                        Ok(Incoming::Nothing) => {}
                        Err((end, error)) => {
                            if let Some(error) = error {
                                let _ = writer.feed(&error).await;
                            }
                            return end;
                        }
                    }
                }
                () = signals.wake.notified(), if can_deliver => {
                    if let Err(end) = self.deliver(writer).await {
                        return end;
                    }
                }
                () = &mut idle => {
                    let _ = writer
                        .feed(&error_frame(
                            0,
                            WireError::new(
                                ErrorCode::LoggedOff,
                                "the connection was idle too long; reconnect",
                            ),
                        ))
                        .await;
                    return End::Close(CloseCode::Away, "idle timeout");
                }
            }
            if let Err(end) = writer.flush().await {
                return end;
            }
        }
    }

    /// Pushes the next envelopes of the mailbox, up to the in-flight bound.
    async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        writer: &mut Writer<S>,
    ) -> Result<(), End> {
        if self
            .registration
            .signals
            .prekeys_low
            .swap(false, Ordering::Relaxed)
        {
            if let Ok(remaining) = self.context.relay.one_time_prekeys_remaining(&self.who) {
                writer
                    .feed(&ServerFrame::push(ServerMessage::PrekeysLow {
                        one_time_prekeys_remaining: remaining,
                    }))
                    .await?;
            }
        }
        let room = limits::MAX_UNACKED_DELIVERIES.saturating_sub(self.in_flight.len());
        let limit = room.min(limits::MAILBOX_READ_BATCH);
        if limit == 0 {
            return Ok(());
        }
        let items = match self.context.relay.mailbox(&self.who, self.cursor, limit) {
            Ok(items) => items,
            Err(error) => {
                tracing::error!(code = error.code.as_str(), "mailbox read failed");
                return Ok(());
            }
        };
        let full_batch = items.len() == limit;
        for item in items {
            self.cursor = Some(item.seq);
            if !self.in_flight.insert(item.envelope.message_id) {
                continue;
            }
            let envelope = item.envelope;
            writer
                .feed(&ServerFrame::push(ServerMessage::Delivery(Delivery {
                    message_id: envelope.message_id,
                    conversation_id: envelope.conversation,
                    sender_user_id: envelope.sender_user,
                    sender_device_id: envelope.sender_device,
                    server_time_ms: envelope.server_time_ms,
                    ciphertext: envelope.ciphertext.into(),
                })))
                .await?;
        }
        if full_batch {
            // More may be waiting: come back after this batch is written.
            self.registration.signals.wake.notify_one();
        }
        Ok(())
    }

    /// Handles one request: answers at once, or queues a reply that waits for durability.
    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        frame: ClientFrame,
        writer: &mut Writer<S>,
    ) -> Result<(), End> {
        let request_id = frame.request_id;
        let relay = &self.context.relay;
        let who = &self.who;
        let reply = |message| ServerFrame::reply(request_id, message);
        let answer: Result<ServerMessage, WireError> = match frame.request {
            ClientRequest::Ping => Ok(ServerMessage::Pong {
                server_time_ms: now_ms(&self.context),
            }),
            ClientRequest::Auth(_) | ClientRequest::Enroll(_) => Err(WireError::new(
                ErrorCode::UnexpectedFrame,
                "this connection is already authenticated",
            )),
            ClientRequest::WhoAmI => relay.org(who).map(|org| {
                ServerMessage::Identity(Identity {
                    org_id: who.org,
                    user_id: who.user,
                    device_id: who.device,
                    role: who.role,
                    handle: who.handle.clone(),
                    org_name: org.name,
                })
            }),
            ClientRequest::CreateInvite(spec) => {
                match relay.create_invite(who, &spec) {
                    Ok(invite) => {
                        let created = medrelay_proto::InviteCode::new(invite.code)
                            .map(|code| {
                                ServerMessage::InviteCreated(InviteCreated {
                                    code,
                                    expires_at_ms: invite.expires_ms,
                                })
                            })
                            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()));
                        // The invite must survive a crash before its code is shown.
                        self.pending_after_sync(request_id, created, Vec::new());
                        return Ok(());
                    }
                    Err(error) => Err(error),
                }
            }
            ClientRequest::UploadPrekeys(upload) => {
                let uploaded = relay.upload_prekeys(who, &upload).map(|remaining| {
                    ServerMessage::PrekeysUploaded {
                        one_time_prekeys_remaining: remaining,
                    }
                });
                self.pending_after_sync(request_id, uploaded, Vec::new());
                return Ok(());
            }
            ClientRequest::FetchPrekeys(fetch) => {
                match relay.fetch_prekeys(who, &fetch.user_ids, &fetch.devices) {
                    Ok(outcome) => {
                        for device in &outcome.running_low {
                            self.context.hub.prekeys_low(device);
                        }
                        let bundles = outcome
                            .bundles
                            .into_iter()
                            .map(|b| PrekeyBundle {
                                user_id: b.user,
                                device_id: b.device.id,
                                identity: b.device.identity,
                                signed_prekey: b.device.signed_prekey,
                                pq_prekey: b.device.pq_prekey,
                                one_time_prekey: b.one_time_prekey,
                            })
                            .collect();
                        // A handed-out one-time prekey must stay handed out after a crash.
                        self.pending_after_sync(
                            request_id,
                            Ok(ServerMessage::PrekeyBundles(bundles)),
                            Vec::new(),
                        );
                        return Ok(());
                    }
                    Err(error) => Err(error),
                }
            }
            ClientRequest::OpenConversation(open) => {
                match relay.open_conversation(who, &open.handles) {
                    Ok(view) => {
                        self.pending_after_sync(
                            request_id,
                            Ok(ServerMessage::Conversation(conversation_frame(view))),
                            Vec::new(),
                        );
                        return Ok(());
                    }
                    Err(error) => Err(error),
                }
            }
            ClientRequest::GetConversation { conversation_id } => relay
                .get_conversation(who, &conversation_id)
                .map(|view| ServerMessage::Conversation(conversation_frame(view))),
            ClientRequest::ListConversations(list) => relay
                .list_conversations(who, list.after)
                .map(|(views, more)| {
                    ServerMessage::ConversationList(ConversationList {
                        conversations: views.into_iter().map(conversation_frame).collect(),
                        more,
                    })
                }),
            ClientRequest::Send(send) => match relay.send(who, &send) {
                Ok(outcome) => {
                    let accepted = ServerMessage::SendAccepted(SendAccepted {
                        message_id: outcome.record.message_id,
                        server_time_ms: outcome.record.server_time_ms,
                        duplicate: outcome.duplicate,
                    });
                    self.pending_after_sync(request_id, Ok(accepted), outcome.recipients);
                    return Ok(());
                }
                Err(error) => Err(error),
            },
            ClientRequest::Ack(ack) => {
                for id in &ack.message_ids {
                    self.in_flight.remove(id);
                }
                let acked = relay
                    .ack(who, &ack.message_ids)
                    .map(|count| ServerMessage::Acked { count });
                // Room for more deliveries.
                self.registration.signals.wake.notify_one();
                acked
            }
        };
        let frame = match answer {
            Ok(message) => reply(message),
            Err(error) => error_frame(request_id, error),
        };
        writer.feed(&frame).await
    }

    /// Queues a reply that is sent once everything written so far is durable; then wakes
    /// `recipients`.
    fn pending_after_sync(
        &mut self,
        request_id: u64,
        answer: Result<ServerMessage, WireError>,
        recipients: Vec<medrelay_proto::DeviceId>,
    ) {
        let store = self.context.relay.store().clone();
        let hub = self.context.hub.clone();
        self.pending.push_back(Box::pin(async move {
            let message = match answer {
                Err(error) => ServerMessage::Error(error),
                Ok(message) => match store.sync().await {
                    Ok(()) => {
                        hub.wake(&recipients);
                        message
                    }
                    Err(error) => {
                        tracing::error!(%error, "write not durable; not acknowledged");
                        ServerMessage::Error(WireError::new(
                            ErrorCode::Internal,
                            "the server could not make the write durable; it was not \
                             acknowledged, send it again",
                        ))
                    }
                },
            };
            ServerFrame::reply(request_id, message)
        }));
    }
}
