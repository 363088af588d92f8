//! One WebSocket connection, from challenge to close.
//!
//! Two phases, two types: an [`Unauthenticated`] connection may only enrol, authenticate or
//! ping; [`Authenticated`] holds the [`AuthedDevice`] that every later request is checked
//! against. A connection handles its requests in order; a send is written to the store at
//! once, and its acknowledgement waits (without blocking later requests) until the group
//! commit has made it durable. Deliveries are read from the device's mailbox, in order, with
//! a bounded number in flight.

use sha2::Digest as _;
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
    ClientFrame, ClientRequest, ConsentState, Conversation, ConversationList, CredentialsSetup,
    Delivery, DeviceInfo, ErrorCode, FrameError, Identity, InviteCreated, Member, Permission,
    Policy, PrekeyBundle, Role, RoleAllowList, SecretText, SendAccepted, ServerFrame,
    ServerMessage, Team, UserInfo, WireError,
};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::access::{session_expiry, LoginState, LogoffReason};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::http::PeerInfo;
use crate::hub::{CloseReason, Registration};
use crate::limits;
use crate::permissions;
use crate::relay::{AuthedDevice, ConversationView};
use crate::server::Context;
use crate::store::TeamRecord;

/// Malformed frames tolerated on one connection before it is closed.
const MAX_BAD_FRAMES: u32 = 16;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;
type PendingReply = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// How a decided request is answered.
enum Reply {
    /// At once.
    Now(Result<ServerMessage, WireError>),
    /// Once everything written so far is durable; then these devices are woken.
    AfterSync(
        Result<ServerMessage, WireError>,
        Vec<medrelay_proto::DeviceId>,
    ),
    /// Work that runs after the request was logged (a sweep), answered once durable.
    Later(
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<ServerMessage, WireError>> + Send>,
        >,
    ),
}

fn rate_limited(wait_ms: u64) -> WireError {
    WireError::new(
        ErrorCode::RateLimited,
        "too many requests; slow down and try again shortly",
    )
    .with_retry_after(wait_ms)
}

fn team_frame(team: TeamRecord) -> Team {
    Team {
        team_id: team.id,
        name: team.name,
        staff_user_ids: team.members,
    }
}

fn team_message(team: TeamRecord) -> ServerMessage {
    ServerMessage::Team(team_frame(team))
}

/// The ids a request is about, for the access log (never content, keys or handles).
fn sweep_running() -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        "a retention sweep is running; try again in a moment",
    )
}

/// The access log failed: the request is refused and nothing else happens.
fn audit_unavailable(error: crate::audit::AuditError) -> WireError {
    tracing::error!(%error, "access log unavailable");
    WireError::new(
        ErrorCode::Internal,
        "the access log cannot record this request, so it was not carried out; tell your \
         clinic's administrator",
    )
}

/// Whether an allowed request of this kind changes records outside the mail log, in the
/// database at once: its access-log entry is then written at once too
/// ([`AuditSink::record_now`]), not left for the next flush, which could make the change
/// durable without it. Sends and acknowledgements change only the mail log, whose writes
/// wait for the same flush as their entries; an authentication changes only when the device
/// was last seen.
fn changes_records(request: &ClientRequest) -> bool {
    match request {
        ClientRequest::Enroll(_)
        | ClientRequest::UploadPrekeys(_)
        | ClientRequest::FetchPrekeys(_)
        | ClientRequest::CreateInvite(_)
        | ClientRequest::OpenConversation(_)
        | ClientRequest::SetupCredentials { .. }
        | ClientRequest::Login { .. }
        | ClientRequest::Logout
        | ClientRequest::ChangePassword { .. }
        | ClientRequest::RevokeDevice { .. }
        | ClientRequest::DeactivateUser { .. }
        | ClientRequest::SetPermissions { .. }
        | ClientRequest::CreateTeam { .. }
        | ClientRequest::SetTeamMembers { .. }
        | ClientRequest::AssignCare { .. }
        | ClientRequest::SetSessionPolicy { .. }
        | ClientRequest::SetAllowList(_)
        | ClientRequest::SetConsentText { .. }
        | ClientRequest::AcceptConsent { .. }
        | ClientRequest::WithdrawConsent
        | ClientRequest::GrantBreakGlass { .. }
        | ClientRequest::SetRetention { .. }
        | ClientRequest::SetHold { .. }
        | ClientRequest::SetArchiveKey { .. }
        | ClientRequest::RunSweep => true,
        ClientRequest::Auth(_)
        | ClientRequest::Send(_)
        | ClientRequest::Ack(_)
        | ClientRequest::GetConversation { .. }
        | ClientRequest::ListConversations(_)
        | ClientRequest::WhoAmI
        | ClientRequest::Ping
        | ClientRequest::ListUsers
        | ClientRequest::ListDevices { .. }
        | ClientRequest::ListTeams
        | ClientRequest::GetPolicy
        | ClientRequest::GetRetention
        | ClientRequest::ExportArchive { .. }
        | ClientRequest::VerifyAccessLog
        | ClientRequest::ExportAccessLog(_) => false,
    }
}

fn audit_objects(request: &ClientRequest) -> Vec<String> {
    match request {
        ClientRequest::SetRetention {
            mail_days,
            archive_days,
        } => vec![
            format!("mail_days={mail_days}"),
            format!("archive_days={archive_days}"),
        ],
        ClientRequest::SetHold {
            conversation_id,
            held,
        } => vec![
            conversation_id.map_or_else(|| "org".to_owned(), |c| c.to_string()),
            format!("held={held}"),
        ],
        ClientRequest::SetArchiveKey { public_key } => match public_key {
            // The key's fingerprint, so a swapped key shows in the log.
            Some(key) => vec![format!(
                "archive_key_sha256={}",
                hex::encode(
                    sha2::Sha256::digest(key.as_bytes())
                        .get(..16)
                        .unwrap_or_default()
                )
            )],
            None => vec!["archive_disabled".to_owned()],
        },
        ClientRequest::ExportArchive { since_ms, .. } => vec![format!("since_ms={since_ms}")],
        ClientRequest::ExportAccessLog(filter) => vec![format!("after_seq={}", filter.after_seq)],
        ClientRequest::Send(send) => vec![send.conversation_id.to_string()],
        ClientRequest::GetConversation { conversation_id } => vec![conversation_id.to_string()],
        ClientRequest::FetchPrekeys(fetch) => {
            fetch.user_ids.iter().map(ToString::to_string).collect()
        }
        ClientRequest::Ack(ack) => ack.message_ids.iter().map(ToString::to_string).collect(),
        ClientRequest::ListDevices { user_id } => user_id.iter().map(ToString::to_string).collect(),
        ClientRequest::RevokeDevice { device_id } => vec![device_id.to_string()],
        ClientRequest::DeactivateUser { user_id }
        | ClientRequest::SetPermissions { user_id, .. } => {
            vec![user_id.to_string()]
        }
        ClientRequest::SetTeamMembers { team_id, .. } => vec![team_id.to_string()],
        ClientRequest::AssignCare {
            patient_user_id, ..
        } => vec![patient_user_id.to_string()],
        ClientRequest::GrantBreakGlass {
            staff_user_id,
            patient_user_id,
            ..
        } => vec![staff_user_id.to_string(), patient_user_id.to_string()],
        _ => Vec::new(),
    }
}

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

/// What a queued frame is, for the two budgets of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// An answer to a request (or an error or notice): the peer asked for it.
    Reply,
    /// A delivery the server pushes on its own.
    Delivery,
}

/// The writing half and the frames waiting for it.
///
/// Frames are queued, never awaited where they are made: the connection's loop drives the
/// queue out as one branch of its `select!`, so a peer that stops reading does not stop the
/// server from reading it (the first cut wrote inside the loop and read nothing while a write
/// waited: a client that sent acknowledgements before reading its deliveries waited for the
/// write timeout). Replies and deliveries have budgets of their own: deliveries stop at
/// theirs; reading stops only when replies the peer has not read reach theirs.
struct Writer<S> {
    sink: Sink<S>,
    queue: std::collections::VecDeque<(Message, Outgoing, usize)>,
    reply_bytes: usize,
    delivery_bytes: usize,
    /// Frames given to the socket and not yet flushed.
    unflushed: bool,
    /// When the queue last moved (for the write timeout).
    progress: tokio::time::Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    fn new(sink: Sink<S>) -> Writer<S> {
        Writer {
            sink,
            queue: std::collections::VecDeque::new(),
            reply_bytes: 0,
            delivery_bytes: 0,
            unflushed: false,
            progress: tokio::time::Instant::now(),
        }
    }

    /// Queues a reply or notice; it goes out with the next drain.
    async fn feed(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.enqueue(frame, Outgoing::Reply);
        Ok(())
    }

    /// Queues a frame.
    fn enqueue(&mut self, frame: &ServerFrame, kind: Outgoing) {
        let bytes = encode_server_frame(frame);
        let len = bytes.len();
        match kind {
            Outgoing::Reply => self.reply_bytes += len,
            Outgoing::Delivery => self.delivery_bytes += len,
        }
        if self.queue.is_empty() && !self.unflushed {
            self.progress = tokio::time::Instant::now();
        }
        self.queue.push_back((Message::binary(bytes), kind, len));
    }

    /// Whether anything waits to be written or flushed.
    fn busy(&self) -> bool {
        !self.queue.is_empty() || self.unflushed
    }

    /// Whether more deliveries may be queued.
    fn room_for_deliveries(&self) -> bool {
        self.delivery_bytes < limits::MAX_QUEUED_DELIVERY_BYTES
    }

    /// Whether the peer keeps up reading replies (else requests are not read for now).
    fn room_for_replies(&self) -> bool {
        self.reply_bytes < limits::MAX_QUEUED_REPLY_BYTES
    }

    /// When the write timeout runs out if the queue does not move.
    fn deadline(&self) -> tokio::time::Instant {
        self.progress + limits::WRITE_TIMEOUT
    }

    /// Writes out what is queued and flushes. Cancel-safe: a frame leaves the queue only
    /// once the socket took it.
    fn poll_drain(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), End>> {
        use std::task::Poll;
        while !self.queue.is_empty() {
            match self.sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                Poll::Pending => return Poll::Pending,
            }
            let Some((message, kind, len)) = self.queue.pop_front() else {
                break;
            };
            match kind {
                Outgoing::Reply => self.reply_bytes -= len,
                Outgoing::Delivery => self.delivery_bytes -= len,
            }
            if self.sink.start_send_unpin(message).is_err() {
                return Poll::Ready(Err(End::Gone));
            }
            self.unflushed = true;
            self.progress = tokio::time::Instant::now();
        }
        if self.unflushed {
            match self.sink.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    self.progress = tokio::time::Instant::now();
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Drives the queue out (a branch of the connection's loop).
    async fn drain(&mut self) -> Result<(), End> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// Sends everything queued, waiting at most the write timeout.
    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(limits::WRITE_TIMEOUT, self.drain()).await {
            Ok(result) => result,
            Err(_) => Err(End::Gone),
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
        // What is queued (an error saying why) goes first.
        if self.flush().await.is_err() {
            return;
        }
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
    let mut writer = Writer::new(sink);
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
            if matches!(
                frame.request,
                ClientRequest::Auth(_) | ClientRequest::Enroll(_)
            ) {
                let limit = self
                    .context
                    .limits
                    .auth
                    .check(&self.peer.addr.ip(), now_ms(&self.context));
                if let Err(wait) = limit {
                    writer
                        .send(&error_frame(request_id, rate_limited(wait)))
                        .await?;
                    return Err(End::Close(CloseCode::Policy, "rate limited"));
                }
            }
            if !matches!(frame.request, ClientRequest::Ping) {
                if let Err(error) = self.context.audit.ready() {
                    writer
                        .send(&error_frame(request_id, audit_unavailable(error)))
                        .await?;
                    return Err(End::Close(CloseCode::Error, "access log unavailable"));
                }
            }
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
                        self.peer.addr.ip(),
                    )
                }),
                ClientRequest::Enroll(request) => {
                    self.binding(&request.binding).and_then(|binding| {
                        self.context.relay.enroll(
                            &self.nonce,
                            &binding,
                            request,
                            self.peer.addr.ip(),
                        )
                    })
                }
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
            let outcome = match &result {
                Ok(_) => Outcome::Allowed,
                Err(e) => Outcome::Denied(e.code),
            };
            // A refused proof is attributed to the device it claims, if that exists, so the
            // device's org sees failed attempts on its accounts.
            let claimed = match (&result, &frame.request) {
                (Err(_), ClientRequest::Auth(proof)) => {
                    self.context.relay.claimed_actor(&proof.device_id)
                }
                _ => None,
            };
            let event = AuditEvent {
                at_ms: now_ms(&self.context),
                actor: result
                    .as_ref()
                    .ok()
                    .map(|who| Actor {
                        org: who.org,
                        user: who.user,
                        device: who.device,
                        role: who.role,
                    })
                    .or(claimed),
                action: frame.request.name(),
                objects: match &frame.request {
                    ClientRequest::Auth(proof) => vec![proof.device_id.to_string()],
                    _ => Vec::new(),
                },
                outcome,
                source: self.peer.addr.ip(),
            };
            // An enrolment created the account's records: its entry goes in at once.
            let recorded = if result.is_ok() && changes_records(&frame.request) {
                self.context.audit.record_now(&event)
            } else {
                self.context.audit.record(&event)
            };
            if let Err(error) = recorded {
                writer
                    .send(&error_frame(request_id, audit_unavailable(error)))
                    .await?;
                return Err(End::Close(CloseCode::Error, "access log unavailable"));
            }
            // The access-log entry (and enrolment keys) must be durable before the answer.
            if let Err(error) = self.context.relay.store().sync().await {
                tracing::error!(%error, "could not make an authentication durable");
                writer
                    .send(&error_frame(
                        request_id,
                        WireError::new(
                            ErrorCode::Internal,
                            "the server could not store the request; try again",
                        ),
                    ))
                    .await?;
                return Err(End::Close(CloseCode::Error, "storage failure"));
            }
            match result {
                Ok(who) => {
                    let remaining = self
                        .context
                        .relay
                        .one_time_prekeys_remaining(&who)
                        .unwrap_or(0);
                    let login = match self.context.relay.login_state(&who) {
                        Ok(login) => login,
                        Err(error) => {
                            writer.send(&error_frame(request_id, error)).await?;
                            return Err(End::Close(CloseCode::Error, "could not read the account"));
                        }
                    };
                    let consent_state = if who.role == Role::Patient {
                        match self
                            .context
                            .relay
                            .caller(&who)
                            .and_then(|user| self.context.relay.effective_consent(&user))
                        {
                            Ok(state) => state,
                            Err(error) => {
                                writer.send(&error_frame(request_id, error)).await?;
                                return Err(End::Close(
                                    CloseCode::Error,
                                    "could not read the account",
                                ));
                            }
                        }
                    } else {
                        ConsentState::NotApplicable
                    };
                    let consent_required =
                        who.role == Role::Patient && consent_state != ConsentState::Accepted;
                    let consent_text = if who.role == Role::Patient {
                        match self.context.relay.consent_text(&who.org) {
                            Ok(text) => Some(text),
                            Err(error) => {
                                writer.send(&error_frame(request_id, error)).await?;
                                return Err(End::Close(
                                    CloseCode::Error,
                                    "could not read the consent text",
                                ));
                            }
                        }
                    } else {
                        None
                    };
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
                                archive_public_key: self
                                    .context
                                    .relay
                                    .archive_key(&who.org)
                                    .ok()
                                    .flatten(),
                                credentials_required: login == LoginState::NeedsCredentials,
                                login_required: login == LoginState::NeedsLogin,
                                consent_required,
                                consent_text,
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
                        login,
                        peer_ip: self.peer.addr.ip(),
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
    /// Staff and admins: where the login stands.
    login: LoginState,
    /// Where the connection comes from.
    peer_ip: std::net::IpAddr,
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
                consent: m.consent,
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
        if let LoginState::LoggedIn(session) = self.login {
            if let Err(error) = self.context.relay.record_activity(&self.who, session) {
                tracing::debug!(
                    code = error.code.as_str(),
                    "could not record session activity"
                );
            }
        }
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
        let mut logoff_check = tokio::time::interval(limits::LOGOFF_CHECK_INTERVAL);
        logoff_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let can_read = self.pending.len() < limits::MAX_PENDING_ACKS_PER_CONNECTION
                && writer.room_for_replies();
            // Staff and admins receive nothing until they have logged in on this device.
            let can_deliver = self.in_flight.len() < limits::MAX_UNACKED_DELIVERIES
                && writer.room_for_deliveries()
                && matches!(self.login, LoginState::NotNeeded | LoginState::LoggedIn(_));
            let writing = writer.busy();
            let write_deadline = writer.deadline();
            tokio::select! {
                biased;
                () = signals.close.notified() => {
                    let (code, reason, error, message) = match signals.close_reason() {
                        Some(CloseReason::Revoked) => (
                            CloseCode::Policy,
                            "device revoked",
                            ErrorCode::LoggedOff,
                            "this device was revoked; enrol again with a new invite",
                        ),
                        Some(CloseReason::Deactivated) => (
                            CloseCode::Policy,
                            "account deactivated",
                            ErrorCode::LoggedOff,
                            "this account was deactivated; ask your clinic's admin",
                        ),
                        Some(CloseReason::Replaced) => (
                            CloseCode::Policy,
                            "replaced by a newer connection",
                            ErrorCode::Unavailable,
                            "this device connected again elsewhere; this connection is closed",
                        ),
                        _ => (
                            CloseCode::Away,
                            "server shutting down",
                            ErrorCode::Unavailable,
                            "the server is shutting down; reconnect shortly",
                        ),
                    };
                    let _ = writer
                        .feed(&error_frame(0, WireError::new(error, message)))
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
                // Deliveries are queued before the queue is written: answers and deliveries made
                // ready by the same flush go out in one write.
                () = signals.wake.notified(), if can_deliver => {
                    if let Err(end) = self.deliver(writer).await {
                        return end;
                    }
                }
                // Before reading more: what is queued goes out first.
                written = writer.drain(), if writing => {
                    if let Err(end) = written {
                        return end;
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
                () = tokio::time::sleep_until(write_deadline), if writing => {
                    // The peer has read nothing for the write timeout.
                    return End::Gone;
                }
                _ = logoff_check.tick() => {
                    if let Err((error, end)) = self.session_check() {
                        let _ = writer.feed(&error_frame(0, error)).await;
                        return end;
                    }
                }
                () = &mut idle => {
                    let _ = writer
                        .feed(&error_frame(
                            0,
                            WireError::new(
                                ErrorCode::Unavailable,
                                "the connection was idle too long; reconnect",
                            ),
                        ))
                        .await;
                    return End::Close(CloseCode::Away, "idle timeout");
                }
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
        let mut fresh = Vec::with_capacity(items.len());
        for item in items {
            if self.in_flight.contains(&item.message_id) {
                self.cursor = Some(item.seq);
            } else {
                fresh.push(item);
            }
        }
        // Each delivery is logged before it leaves, one entry per conversation in the batch
        // (the conversation, then its messages, within the objects an entry may name); the
        // entries are durable at the latest when the recipient's ack is answered. If the log
        // cannot record, nothing of the batch is delivered.
        let per_entry = medrelay_proto::limits::MAX_AUDIT_OBJECTS - 1;
        let mut start = 0;
        while start < fresh.len() {
            let conversation = fresh.get(start).map(|i| i.conversation);
            let run = fresh
                .iter()
                .skip(start)
                .take(per_entry)
                .take_while(|i| Some(i.conversation) == conversation)
                .count()
                .max(1);
            let mut objects = Vec::with_capacity(run + 1);
            objects.extend(conversation.map(|c| c.to_string()));
            objects.extend(
                fresh
                    .iter()
                    .skip(start)
                    .take(run)
                    .map(|i| i.message_id.to_string()),
            );
            let recorded = self.context.audit.record(&AuditEvent {
                at_ms: now_ms(&self.context),
                actor: Some(self.actor()),
                action: "delivery",
                objects,
                outcome: Outcome::Allowed,
                source: self.peer_ip,
            });
            if let Err(error) = recorded {
                tracing::error!(%error, "delivery not logged; withheld");
                return Ok(());
            }
            start += run;
        }
        for item in fresh {
            self.cursor = Some(item.seq);
            self.in_flight.insert(item.message_id);
            writer.enqueue(
                &ServerFrame::push(ServerMessage::Delivery(Delivery {
                    message_id: item.message_id,
                    conversation_id: item.conversation,
                    sender_user_id: item.sender_user,
                    sender_device_id: item.sender_device,
                    server_time_ms: item.server_time_ms,
                    ciphertext: item.ciphertext,
                })),
                Outgoing::Delivery,
            );
        }
        if full_batch {
            // More may be waiting: come back after this batch is written.
            self.registration.signals.wake.notify_one();
        }
        Ok(())
    }

    /// Handles one request: decides it, emits the audit event, then answers at once or after
    /// the write is durable.
    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        frame: ClientFrame,
        writer: &mut Writer<S>,
    ) -> Result<(), End> {
        let request_id = frame.request_id;
        let action = frame.request.name();
        let objects = audit_objects(&frame.request);
        // Fail closed: when the access log cannot record, nothing is decided or changed.
        if let Err(error) = self.context.audit.ready() {
            writer
                .feed(&error_frame(request_id, audit_unavailable(error)))
                .await?;
            return Ok(());
        }
        // A change to the mail log and its access-log entry go into the same flush.
        let store = self.context.relay.store().clone();
        let hold = matches!(
            frame.request,
            ClientRequest::Send(_)
                | ClientRequest::Ack(_)
                | ClientRequest::RevokeDevice { .. }
                | ClientRequest::DeactivateUser { .. }
        )
        .then(|| store.hold_flush());
        let changes_records = changes_records(&frame.request);
        let (reply, end) = self.decide(frame.request);
        let outcome = match &reply {
            Reply::Now(Ok(_)) | Reply::AfterSync(Ok(_), _) | Reply::Later(_) => Outcome::Allowed,
            Reply::Now(Err(e)) | Reply::AfterSync(Err(e), _) => Outcome::Denied(e.code),
        };
        let event = AuditEvent {
            at_ms: now_ms(&self.context),
            actor: Some(self.actor()),
            action,
            objects,
            outcome,
            source: self.peer_ip,
        };
        let recorded = if changes_records && outcome == Outcome::Allowed {
            self.context.audit.record_now(&event)
        } else {
            self.context.audit.record(&event)
        };
        drop(hold);
        if let Err(error) = recorded {
            writer
                .feed(&error_frame(request_id, audit_unavailable(error)))
                .await?;
            return Err(End::Close(CloseCode::Error, "access log unavailable"));
        }
        // Every answer waits until its access-log entry is durable.
        match reply {
            Reply::Now(answer) => self.pending_after_sync(request_id, answer, Vec::new()),
            Reply::AfterSync(answer, recipients) => {
                self.pending_after_sync(request_id, answer, recipients);
            }
            Reply::Later(work) => {
                let store = self.context.relay.store().clone();
                self.pending.push_back(Box::pin(async move {
                    let answer = work.await;
                    let message = match (answer, store.sync().await) {
                        (Ok(message), Ok(())) => message,
                        (Err(error), _) => ServerMessage::Error(error),
                        (Ok(_), Err(error)) => {
                            tracing::error!(%error, "could not make the work durable");
                            ServerMessage::Error(WireError::new(
                                ErrorCode::Internal,
                                "the server could not make the result durable; try again",
                            ))
                        }
                    };
                    ServerFrame::reply(request_id, message)
                }));
            }
        }
        match end {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            org: self.who.org,
            user: self.who.user,
            device: self.who.device,
            role: self.who.role,
        }
    }

    /// Logs the session off: forgets it on the device and tells the user why.
    fn logoff(&mut self, reason: LogoffReason) -> (WireError, End) {
        if let Err(error) = self.context.relay.logout(&self.who) {
            tracing::error!(code = error.code.as_str(), "could not record a logoff");
        }
        self.login = LoginState::NeedsLogin;
        tracing::info!(device = %self.who.device, reason = ?reason, "automatic logoff");
        (
            WireError::new(ErrorCode::LoggedOff, reason.message()),
            End::Close(CloseCode::Policy, "logged off"),
        )
    }

    /// Checks the login session against the org's timeouts now.
    fn session_check(&mut self) -> Result<(), (WireError, End)> {
        let LoginState::LoggedIn(session) = self.login else {
            return Ok(());
        };
        let policy = match self.context.relay.policy(&self.who.org) {
            Ok(policy) => policy,
            Err(_) => return Ok(()),
        };
        match session_expiry(&session, &policy, now_ms(&self.context)) {
            Ok(()) => Ok(()),
            Err(reason) => Err(self.logoff(reason)),
        }
    }

    /// Decides one request. Returns the reply and, if the connection must end, how.
    fn decide(&mut self, request: ClientRequest) -> (Reply, Option<End>) {
        let context = self.context.clone();
        let relay = &context.relay;
        let now = now_ms(&context);

        // Staff and admins must have logged in (password + second factor) on this device.
        let logged_in = matches!(self.login, LoginState::NotNeeded | LoginState::LoggedIn(_));
        let before_login = matches!(
            request,
            ClientRequest::Ping
                | ClientRequest::Auth(_)
                | ClientRequest::Enroll(_)
                | ClientRequest::WhoAmI
                | ClientRequest::Logout
                | ClientRequest::SetupCredentials { .. }
                | ClientRequest::Login { .. }
        );
        if !logged_in && !before_login {
            let message = if self.login == LoginState::NeedsCredentials {
                "set up your password and authenticator (setup-credentials), then log in"
            } else {
                "log in with your password and authenticator code first"
            };
            return (
                Reply::Now(Err(WireError::new(ErrorCode::Unauthenticated, message))),
                None,
            );
        }
        if !matches!(request, ClientRequest::Ping) {
            if let Err((error, end)) = self.session_check() {
                return (Reply::Now(Err(error)), Some(end));
            }
            if let LoginState::LoggedIn(session) = &mut self.login {
                session.last_activity_ms = now;
            }
        }
        let who = self.who.clone();
        let durable =
            |answer: Result<ServerMessage, WireError>| Reply::AfterSync(answer, Vec::new());
        let done = |result: Result<(), WireError>| durable(result.map(|()| ServerMessage::Done));
        let reply = match request {
            ClientRequest::Ping => Reply::Now(Ok(ServerMessage::Pong {
                server_time_ms: now,
            })),
            ClientRequest::Auth(_) | ClientRequest::Enroll(_) => Reply::Now(Err(WireError::new(
                ErrorCode::UnexpectedFrame,
                "this connection is already authenticated",
            ))),
            ClientRequest::WhoAmI => Reply::Now(relay.org(&who).map(|org| {
                ServerMessage::Identity(Identity {
                    org_id: who.org,
                    user_id: who.user,
                    device_id: who.device,
                    role: who.role,
                    handle: who.handle.clone(),
                    org_name: org.name,
                })
            })),
            ClientRequest::CreateInvite(spec) => {
                durable(relay.create_invite(&who, &spec).and_then(|invite| {
                    medrelay_proto::InviteCode::new(invite.code)
                        .map(|code| {
                            ServerMessage::InviteCreated(InviteCreated {
                                code,
                                expires_at_ms: invite.expires_ms,
                            })
                        })
                        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
                }))
            }
            ClientRequest::UploadPrekeys(upload) => {
                durable(relay.upload_prekeys(&who, &upload).map(|remaining| {
                    ServerMessage::PrekeysUploaded {
                        one_time_prekeys_remaining: remaining,
                    }
                }))
            }
            ClientRequest::FetchPrekeys(fetch) => {
                if let Err(wait) = context.limits.fetches.check(&who.device, now) {
                    return (Reply::Now(Err(rate_limited(wait))), None);
                }
                // A handed-out one-time prekey must stay handed out after a crash.
                durable(
                    relay
                        .fetch_prekeys(&who, &fetch.user_ids, &fetch.devices)
                        .map(|outcome| {
                            for device in &outcome.running_low {
                                context.hub.prekeys_low(device);
                            }
                            ServerMessage::PrekeyBundles(
                                outcome
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
                                    .collect(),
                            )
                        }),
                )
            }
            ClientRequest::OpenConversation(open) => durable(
                relay
                    .open_conversation(&who, &open.handles)
                    .map(|view| ServerMessage::Conversation(conversation_frame(view))),
            ),
            ClientRequest::GetConversation { conversation_id } => Reply::Now(
                relay
                    .get_conversation(&who, &conversation_id)
                    .map(|view| ServerMessage::Conversation(conversation_frame(view))),
            ),
            ClientRequest::ListConversations(list) => Reply::Now(
                relay
                    .list_conversations(&who, list.after)
                    .map(|(views, more)| {
                        ServerMessage::ConversationList(ConversationList {
                            conversations: views.into_iter().map(conversation_frame).collect(),
                            more,
                        })
                    }),
            ),
            ClientRequest::Send(send) => {
                if let Err(wait) = context.limits.sends.check(&who.device, now) {
                    return (Reply::Now(Err(rate_limited(wait))), None);
                }
                match relay.send(&who, &send) {
                    Ok(outcome) => Reply::AfterSync(
                        Ok(ServerMessage::SendAccepted(SendAccepted {
                            message_id: outcome.record.message_id,
                            server_time_ms: outcome.record.server_time_ms,
                            duplicate: outcome.duplicate,
                        })),
                        outcome.recipients,
                    ),
                    Err(error) => Reply::Now(Err(error)),
                }
            }
            ClientRequest::Ack(ack) => {
                for id in &ack.message_ids {
                    self.in_flight.remove(id);
                }
                // Room for more deliveries.
                self.registration.signals.wake.notify_one();
                Reply::Now(
                    relay
                        .ack(&who, &ack.message_ids)
                        .map(|count| ServerMessage::Acked { count }),
                )
            }
            ClientRequest::SetupCredentials { password } => {
                durable(relay.setup_credentials(&who, &password).and_then(|new| {
                    let secret = |s: &str| {
                        SecretText::new(s.to_owned())
                            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
                    };
                    Ok(ServerMessage::CredentialsSetup(CredentialsSetup {
                        totp_secret: secret(&new.totp_secret_base32)?,
                        otpauth_uri: secret(&new.otpauth_uri)?,
                        recovery_codes: new
                            .recovery_codes
                            .iter()
                            .map(|c| secret(c))
                            .collect::<Result<_, _>>()?,
                    }))
                }))
            }
            ClientRequest::Login {
                password,
                second_factor,
            } => match relay.login(&who, &password, &second_factor) {
                Ok(session) => {
                    self.login = LoginState::LoggedIn(session);
                    // Whatever waited in the mailbox can go out now.
                    self.registration.signals.wake.notify_one();
                    let policy = relay.policy(&who.org);
                    durable(policy.map(|policy| {
                        ServerMessage::LoginOk {
                            idle_timeout_ms: policy.idle_timeout_ms,
                            session_expires_at_ms: session
                                .started_ms
                                .saturating_add(policy.session_lifetime_ms),
                        }
                    }))
                }
                // A failed login changed the lockout record: durable before answering.
                Err(error) => durable(Err(error)),
            },
            ClientRequest::Logout => {
                if who.role != medrelay_proto::Role::Patient {
                    self.login = LoginState::NeedsLogin;
                }
                done(relay.logout(&who))
            }
            ClientRequest::ChangePassword { current, new } => {
                done(relay.change_password(&who, &current, &new))
            }
            ClientRequest::ListUsers => Reply::Now(relay.list_users(&who).map(|users| {
                ServerMessage::UserList(
                    users
                        .into_iter()
                        .map(|u| UserInfo {
                            user_id: u.id,
                            permissions: permissions::effective(&u).into_iter().collect(),
                            handle: u.handle,
                            role: u.role,
                            active: u.active,
                            consent: u.consent.state,
                        })
                        .collect(),
                )
            })),
            ClientRequest::ListDevices { user_id } => {
                Reply::Now(relay.list_devices(&who, user_id).map(|devices| {
                    ServerMessage::DeviceList(
                        devices
                            .into_iter()
                            .map(|d| DeviceInfo {
                                device_id: d.id,
                                label: d.label,
                                created_ms: d.created_ms,
                                last_seen_ms: d.last_seen_ms,
                                revoked: d.revoked,
                            })
                            .collect(),
                    )
                }))
            }
            ClientRequest::RevokeDevice { device_id } => {
                let result = relay.revoke_device(&who, &device_id);
                if result.is_ok() {
                    context.hub.close(&device_id, CloseReason::Revoked);
                }
                done(result)
            }
            ClientRequest::DeactivateUser { user_id } => {
                let result = relay.deactivate_user(&who, &user_id);
                if let Ok(devices) = &result {
                    for device in devices {
                        context.hub.close(device, CloseReason::Deactivated);
                    }
                }
                done(result.map(|_| ()))
            }
            ClientRequest::SetPermissions { user_id, grants } => {
                done(relay.set_permissions(&who, &user_id, &grants))
            }
            ClientRequest::CreateTeam { name } => {
                durable(relay.create_team(&who, &name).map(team_message))
            }
            ClientRequest::SetTeamMembers {
                team_id,
                staff_user_ids,
            } => durable(
                relay
                    .set_team_members(&who, &team_id, &staff_user_ids)
                    .map(team_message),
            ),
            ClientRequest::ListTeams => {
                Reply::Now(relay.list_teams(&who).map(|teams| {
                    ServerMessage::TeamList(teams.into_iter().map(team_frame).collect())
                }))
            }
            ClientRequest::AssignCare {
                patient_user_id,
                staff_user_ids,
                team_ids,
            } => done(
                relay
                    .assign_care(&who, &patient_user_id, &staff_user_ids, &team_ids)
                    .map(|_| ()),
            ),
            ClientRequest::GetPolicy => Reply::Now(relay.get_policy(&who).map(|policy| {
                ServerMessage::Policy(Policy {
                    idle_timeout_ms: policy.idle_timeout_ms,
                    session_lifetime_ms: policy.session_lifetime_ms,
                    allow_lists: policy
                        .allow_lists
                        .into_iter()
                        .map(|(role, cidrs)| RoleAllowList { role, cidrs })
                        .collect(),
                    consent_text: policy.consent_text,
                })
            })),
            ClientRequest::SetSessionPolicy {
                idle_timeout_ms,
                session_lifetime_ms,
            } => done(relay.set_session_policy(&who, idle_timeout_ms, session_lifetime_ms)),
            ClientRequest::SetAllowList(list) => {
                done(relay.set_allow_list(&who, &list, self.peer_ip))
            }
            ClientRequest::SetConsentText { text } => done(relay.set_consent_text(&who, &text)),
            ClientRequest::AcceptConsent { text_sha256 } => {
                done(relay.accept_consent(&who, &text_sha256))
            }
            ClientRequest::WithdrawConsent => done(relay.withdraw_consent(&who)),
            ClientRequest::GrantBreakGlass {
                staff_user_id,
                patient_user_id,
                reason,
                duration_ms,
            } => durable(
                relay
                    .grant_break_glass(&who, &staff_user_id, &patient_user_id, &reason, duration_ms)
                    .map(|expires_at_ms| ServerMessage::BreakGlassGranted { expires_at_ms }),
            ),
            ClientRequest::GetRetention => durable(
                relay
                    .get_retention(&who, context.audit_days)
                    .map(ServerMessage::Retention),
            ),
            ClientRequest::SetRetention {
                mail_days,
                archive_days,
            } => match context.sweeping.try_lock() {
                // Not while a sweep runs: it would act on the settings it read before.
                Ok(_no_sweep) => done(relay.set_retention(&who, mail_days, archive_days)),
                Err(_) => Reply::Now(Err(sweep_running())),
            },
            ClientRequest::SetHold {
                conversation_id,
                held,
            } => match context.sweeping.try_lock() {
                Ok(_no_sweep) => done(relay.set_hold(&who, conversation_id.as_ref(), held)),
                Err(_) => Reply::Now(Err(sweep_running())),
            },
            ClientRequest::SetArchiveKey { public_key } => {
                done(relay.set_archive_key(&who, public_key))
            }
            ClientRequest::ExportArchive {
                since_ms,
                after_seq,
                limit,
            } => durable(
                relay
                    .export_archive(&who, since_ms, after_seq, limit)
                    .map(ServerMessage::ArchivePage),
            ),
            ClientRequest::RunSweep => {
                if let Err(error) = relay.require(&who, Permission::ChangePolicy) {
                    return (Reply::Now(Err(error)), None);
                }
                let context = context.clone();
                let org = who.org;
                return (
                    Reply::Later(Box::pin(async move {
                        let now = now_ms(&context);
                        match context.sweep(now).await {
                            Ok(outcome) => Ok(ServerMessage::SweepReport(outcome.report_for(&org))),
                            Err(error) => Err(WireError::new(
                                ErrorCode::Internal,
                                format!("the retention sweep failed: {error}"),
                            )),
                        }
                    })),
                    None,
                );
            }
            ClientRequest::VerifyAccessLog => {
                if let Err(error) = relay.require(&who, Permission::ReadAuditLog) {
                    return (Reply::Now(Err(error)), None);
                }
                let context = context.clone();
                return (
                    Reply::Later(Box::pin(async move {
                        context
                            .verify_access_log()
                            .await
                            .map(ServerMessage::AccessLogStatus)
                            .map_err(audit_unavailable)
                    })),
                    None,
                );
            }
            ClientRequest::ExportAccessLog(filter) => durable(
                relay
                    .require(&who, Permission::ExportAuditLog)
                    .and_then(|_| {
                        context
                            .audit
                            .export(&who.org, &filter)
                            .map_err(audit_unavailable)
                    })
                    .map(ServerMessage::AccessLogPage),
            ),
        };
        (reply, None)
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
            // Also for a refusal: its access-log entry is durable before the answer. The
            // recipients are woken by the flush itself, before anyone waiting on it runs: a
            // recipient whose acknowledgement waits on the same flush then writes its answer
            // and the new deliveries together.
            let synced = if recipients.is_empty() {
                store.sync().await
            } else {
                store
                    .sync_then(Box::new(move || hub.wake(&recipients)))
                    .await
            };
            let message = match answer {
                Err(error) => ServerMessage::Error(error),
                Ok(message) => match synced {
                    Ok(()) => message,
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
