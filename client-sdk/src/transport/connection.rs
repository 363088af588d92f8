//! One authenticated connection: the handshake (challenge, then `auth` or `enroll`) and the
//! actor task that owns the socket afterwards.
//!
//! The actor numbers requests (non-zero ids), writes them in batches (`feed` each ready request,
//! then one `flush`), routes answers to their waiting callers through oneshot channels, and
//! passes pushes (deliveries, `prekeys_low`, errors with request id 0) to a bounded queue.
//! Every queue is bounded: callers wait for room in the command queue; the actor stops taking
//! commands while [`MAX_IN_FLIGHT`] requests await answers; and the push queue is larger than
//! the server's cap on unacknowledged deliveries, so a well-behaved server cannot fill it (if
//! one does, the connection is dropped: nothing is lost, unacked deliveries come again).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use medrelay_proto::{
    decode_server_frame_bytes, encode_client_frame, AuthOk, ClientFrame, ClientRequest, Delivery,
    ErrorCode, ServerFrame, ServerMessage, WireError, TLS_EXPORTER_LEN,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::tls::WsStream;
use super::TransportError;

/// Requests queued for the actor.
pub const COMMAND_QUEUE: usize = 64;
/// Requests awaiting an answer on one connection.
pub const MAX_IN_FLIGHT: usize = 256;
/// Pushes queued for the client; above the server's 512 unacknowledged deliveries.
pub const PUSH_QUEUE: usize = 1024;
/// An idle connection sends a ping this often (the server closes idle ones after 5 minutes).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A write the server does not take within this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Something the server sent on its own.
#[derive(Debug)]
pub(crate) enum Push {
    /// A stored envelope.
    Delivery(Delivery),
    /// One-time prekeys run low.
    PrekeysLow(u32),
    /// An error not caused by a request (e.g. `LOGGED_OFF`).
    Error(WireError),
    /// The connection ended (the reason, for logs).
    Closed(String),
}

type Reply = Result<ServerMessage, TransportError>;

struct Command {
    request: ClientRequest,
    reply: oneshot::Sender<Reply>,
}

/// The caller's side of a running connection.
#[derive(Debug)]
pub(crate) struct Connection {
    commands: mpsc::Sender<Command>,
    pushes: mpsc::Receiver<Push>,
    request_timeout: Duration,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.request.name())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_frame(ws: &mut WsStream, frame: &ClientFrame) -> Result<(), TransportError> {
    tokio::time::timeout(
        WRITE_TIMEOUT,
        ws.send(Message::binary(encode_client_frame(frame))),
    )
    .await
    .map_err(|_| TransportError::Disconnected("the server did not take our write".into()))?
    .map_err(|e| TransportError::Disconnected(format!("write failed: {e}")))
}

async fn read_frame(ws: &mut WsStream) -> Result<ServerFrame, TransportError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                return decode_server_frame_bytes(bytes)
                    .map_err(|e| TransportError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(TransportError::Disconnected(match frame {
                    Some(f) => format!("the server closed the connection: {}", f.reason),
                    None => "the server closed the connection".into(),
                }))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(TransportError::Disconnected(format!("read failed: {e}"))),
            None => return Err(TransportError::Disconnected("the connection closed".into())),
        }
    }
}

/// Runs the handshake on a fresh WebSocket: waits for the challenge, sends the proof built by
/// `proof` (from the nonce and the exporter value) as request 1, and returns `auth_ok`. Any refusal is [`TransportError::Server`].
pub(crate) async fn authenticate(
    ws: &mut WsStream,
    exporter: [u8; TLS_EXPORTER_LEN],
    proof: impl FnOnce(&[u8; 32], [u8; TLS_EXPORTER_LEN]) -> Result<ClientRequest, TransportError>,
    timeout: Duration,
) -> Result<AuthOk, TransportError> {
    let work = async {
        let challenge = match read_frame(ws).await?.message {
            ServerMessage::Challenge(c) => c,
            ServerMessage::Error(e) => return Err(TransportError::Server(e)),
            other => {
                return Err(TransportError::Protocol(format!(
                    "expected a challenge first, got {}",
                    other.name()
                )))
            }
        };
        let request = proof(&challenge.nonce, exporter)?;
        write_frame(
            ws,
            &ClientFrame {
                request_id: 1,
                request,
            },
        )
        .await?;
        loop {
            let frame = read_frame(ws).await?;
            match frame.message {
                ServerMessage::AuthOk(ok) if frame.request_id == 1 => return Ok(ok),
                ServerMessage::Error(e) => return Err(TransportError::Server(e)),
                ServerMessage::Delivery(_) | ServerMessage::PrekeysLow { .. } => continue,
                other => {
                    return Err(TransportError::Protocol(format!(
                        "expected auth_ok, got {}",
                        other.name()
                    )))
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
}

impl Connection {
    /// Starts the actor on an authenticated WebSocket. Request ids continue after the
    /// handshake's.
    pub(crate) fn spawn(ws: WsStream, request_timeout: Duration) -> Self {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (push_tx, pushes) = mpsc::channel(PUSH_QUEUE);
        let task = tokio::spawn(run(ws, command_rx, push_tx));
        Self {
            commands,
            pushes,
            request_timeout,
            task,
        }
    }

    /// Whether the actor has stopped (the connection is gone).
    pub(crate) fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Sends a request and waits for its answer; a server `error` becomes
    /// [`TransportError::Server`].
    pub(crate) async fn request(
        &self,
        request: ClientRequest,
    ) -> Result<ServerMessage, TransportError> {
        let (reply, answer) = oneshot::channel();
        let name = request.name();
        let work = async {
            self.commands
                .send(Command { request, reply })
                .await
                .map_err(|_| TransportError::Disconnected("the connection is closed".into()))?;
            answer.await.map_err(|_| {
                TransportError::Disconnected(format!(
                    "the connection closed before {name} was answered"
                ))
            })?
        };
        match tokio::time::timeout(self.request_timeout, work).await {
            Err(_) => Err(TransportError::Timeout(self.request_timeout)),
            Ok(Ok(ServerMessage::Error(e))) => Err(TransportError::Server(e)),
            Ok(other) => other,
        }
    }

    /// The next push, or `None` if none came by `deadline`.
    pub(crate) async fn next_push(&mut self, deadline: tokio::time::Instant) -> Option<Push> {
        match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
            Ok(Some(push)) => Some(push),
            Ok(None) => Some(Push::Closed("the connection closed".into())),
            Err(_) => None,
        }
    }
}

/// Why the actor stopped.
enum Stop {
    Reason(String),
}

async fn run(ws: WsStream, mut commands: mpsc::Receiver<Command>, pushes: mpsc::Sender<Push>) {
    let (mut sink, mut stream) = ws.split();
    // `None`: an answer nobody waits for (our keepalive pings).
    let mut pending: HashMap<u64, Option<oneshot::Sender<Reply>>> = HashMap::new();
    let mut next_id: u64 = 2;
    // A pushed LOGGED_OFF: the server closes next, and requests it leaves unanswered fail
    // with it rather than as a dropped connection (which the client would retry).
    let mut logged_off: Option<WireError> = None;
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
        KEEPALIVE_INTERVAL,
    );
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let Stop::Reason(reason) = loop {
        tokio::select! {
            command = commands.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let Some(mut command) = command else {
                    break Stop::Reason("the client closed the connection".into());
                };
                let mut failed = None;
                loop {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1).max(2);
                    let bytes = encode_client_frame(&ClientFrame { request_id: id, request: command.request });
                    pending.insert(id, Some(command.reply));
                    match tokio::time::timeout(WRITE_TIMEOUT, sink.feed(Message::binary(bytes))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => { failed = Some(format!("write failed: {e}")); break; }
                        Err(_) => { failed = Some("the server did not take our write".into()); break; }
                    }
                    if pending.len() >= MAX_IN_FLIGHT {
                        break;
                    }
                    match commands.try_recv() {
                        Ok(next) => command = next,
                        Err(_) => break,
                    }
                }
                if let Some(reason) = failed {
                    break Stop::Reason(reason);
                }
                match tokio::time::timeout(WRITE_TIMEOUT, sink.flush()).await {
                    Ok(Ok(())) => keepalive.reset(),
                    Ok(Err(e)) => break Stop::Reason(format!("write failed: {e}")),
                    Err(_) => break Stop::Reason("the server did not take our write".into()),
                }
            }
            incoming = stream.next() => {
                let bytes = match incoming {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(frame))) => break Stop::Reason(match frame {
                        Some(f) => format!("the server closed the connection: {}", f.reason),
                        None => "the server closed the connection".into(),
                    }),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Stop::Reason(format!("read failed: {e}")),
                    None => break Stop::Reason("the connection closed".into()),
                };
                let frame = match decode_server_frame_bytes(bytes) {
                    Ok(frame) => frame,
                    Err(error) => {
                        tracing::warn!(code = error.code().as_str(), "undecodable frame from the server");
                        if let Some(Some(reply)) = pending.remove(&error.request_id()) {
                            let _ = reply.send(Err(TransportError::Protocol(error.to_string())));
                        }
                        continue;
                    }
                };
                if frame.request_id != 0 {
                    match pending.remove(&frame.request_id) {
                        Some(Some(reply)) => { let _ = reply.send(Ok(frame.message)); }
                        Some(None) => {}
                        None => tracing::debug!(request_id = frame.request_id, "answer to no pending request"),
                    }
                    continue;
                }
                let push = match frame.message {
                    ServerMessage::Delivery(d) => Push::Delivery(d),
                    ServerMessage::PrekeysLow { one_time_prekeys_remaining } => Push::PrekeysLow(one_time_prekeys_remaining),
                    ServerMessage::Error(e) => {
                        if e.code == ErrorCode::LoggedOff {
                            logged_off = Some(e.clone());
                        }
                        Push::Error(e)
                    }
                    other => {
                        tracing::debug!(body = other.name(), "unexpected push ignored");
                        continue;
                    }
                };
                if pushes.try_send(push).is_err() {
                    break Stop::Reason("the client is not taking deliveries fast enough".into());
                }
            }
            _ = keepalive.tick() => {
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(2);
                pending.insert(id, None);
                let bytes = encode_client_frame(&ClientFrame { request_id: id, request: ClientRequest::Ping });
                match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::binary(bytes))).await {
                    Ok(Ok(())) => {}
                    _ => break Stop::Reason("keepalive ping failed".into()),
                }
            }
        }
    };
    tracing::debug!(%reason, "connection ended");
    for (_, reply) in pending.drain() {
        if let Some(reply) = reply {
            let _ = reply.send(Err(match &logged_off {
                Some(error) => TransportError::LoggedOff(error.clone()),
                None => TransportError::Disconnected(reason.clone()),
            }));
        }
    }
    commands.close();
    let _ = pushes.try_send(Push::Closed(reason));
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
