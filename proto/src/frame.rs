//! Frames: one protobuf message per binary WebSocket message, decoded into validated domain
//! types and encoded back. Decoding is a pure, total function over bytes: size first, then
//! protobuf, then version, request id and body, field by field. It never panics; every
//! refusal is a [`FrameError`] with a wire [`ErrorCode`] and a message that names the field
//! but never echoes its contents.

use prost::bytes::Buf;
use prost::Message;

use crate::field::{FieldError, FieldPath, FieldProblem, Within};
use crate::limits::{MAX_FRAME_BYTES, PROTOCOL_VERSION};
use crate::pb::{client_frame, server_frame};
use crate::{
    pb, AckRequest, AuthOk, AuthProof, Bytes, Challenge, Conversation, ConversationId,
    ConversationList, Delivery, EnrollRequest, ErrorCode, FetchPrekeys, Identity, InviteCreated,
    InviteSpec, ListConversations, OpenConversation, PrekeyBundle, SendAccepted, SendRequest,
    UploadPrekeys, WireError,
};

/// A frame from a client: a request the server answers with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    /// Chosen by the client, never 0, echoed in the answer.
    pub request_id: u64,
    /// What the client asks.
    pub request: ClientRequest,
}

/// What a client asks, one variant per `ClientFrame` body, every field validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// Enrol a new device with an invite code (`enroll`). Boxed: it carries a device's keys.
    Enroll(Box<EnrollRequest>),
    /// Authenticate as an enrolled device (`auth`).
    Auth(AuthProof),
    /// Add one-time prekeys, rotate the signed or PQ prekey (`upload_prekeys`).
    UploadPrekeys(UploadPrekeys),
    /// Fetch other devices' prekey bundles (`fetch_prekeys`).
    FetchPrekeys(FetchPrekeys),
    /// Send a message (`send`).
    Send(SendRequest),
    /// Acknowledge delivered messages (`ack`).
    Ack(AckRequest),
    /// Create an invite (`create_invite`).
    CreateInvite(InviteSpec),
    /// Open a conversation by handles (`open_conversation`).
    OpenConversation(OpenConversation),
    /// Read one conversation (`get_conversation`).
    GetConversation {
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// List the caller's conversations (`list_conversations`).
    ListConversations(ListConversations),
    /// Ask who this connection is (`whoami`).
    WhoAmI,
    /// Keep the connection alive (`ping`); allowed at any time.
    Ping,
}

impl ClientRequest {
    /// The body's field name in `relay.proto`, e.g. `send`: for logs, metrics and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Enroll(_) => "enroll",
            Self::Auth(_) => "auth",
            Self::UploadPrekeys(_) => "upload_prekeys",
            Self::FetchPrekeys(_) => "fetch_prekeys",
            Self::Send(_) => "send",
            Self::Ack(_) => "ack",
            Self::CreateInvite(_) => "create_invite",
            Self::OpenConversation(_) => "open_conversation",
            Self::GetConversation { .. } => "get_conversation",
            Self::ListConversations(_) => "list_conversations",
            Self::WhoAmI => "whoami",
            Self::Ping => "ping",
        }
    }

    /// Whether the request is valid on a connection that has not authenticated yet: `enroll`,
    /// `auth` and `ping`. Anything else before authentication is `UNAUTHENTICATED`.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(self, Self::Enroll(_) | Self::Auth(_) | Self::Ping)
    }

    fn to_pb(&self) -> client_frame::Body {
        use client_frame::Body;
        match self {
            Self::Enroll(r) => Body::Enroll(r.to_pb()),
            Self::Auth(r) => Body::Auth(r.to_pb()),
            Self::UploadPrekeys(r) => Body::UploadPrekeys(r.to_pb()),
            Self::FetchPrekeys(r) => Body::FetchPrekeys(r.to_pb()),
            Self::Send(r) => Body::Send(r.to_pb()),
            Self::Ack(r) => Body::Ack(r.to_pb()),
            Self::CreateInvite(r) => Body::CreateInvite(r.to_pb()),
            Self::OpenConversation(r) => Body::OpenConversation(r.to_pb()),
            Self::GetConversation { conversation_id } => {
                Body::GetConversation(pb::GetConversation {
                    conversation_id: Bytes::copy_from_slice(conversation_id.as_bytes()),
                })
            }
            Self::ListConversations(r) => Body::ListConversations(r.to_pb()),
            Self::WhoAmI => Body::Whoami(pb::WhoAmI {}),
            Self::Ping => Body::Ping(pb::Ping {}),
        }
    }

    fn from_pb(body: client_frame::Body) -> Result<Self, FieldError> {
        use client_frame::Body;
        Ok(match body {
            Body::Enroll(r) => Self::Enroll(Box::new(EnrollRequest::from_pb(r).within("enroll")?)),
            Body::Auth(r) => Self::Auth(AuthProof::from_pb(r).within("auth")?),
            Body::UploadPrekeys(r) => {
                Self::UploadPrekeys(UploadPrekeys::from_pb(r).within("upload_prekeys")?)
            }
            Body::FetchPrekeys(r) => {
                Self::FetchPrekeys(FetchPrekeys::from_pb(r).within("fetch_prekeys")?)
            }
            Body::Send(r) => Self::Send(SendRequest::from_pb(r).within("send")?),
            Body::Ack(r) => Self::Ack(AckRequest::from_pb(r).within("ack")?),
            Body::CreateInvite(r) => {
                Self::CreateInvite(InviteSpec::from_pb(r).within("create_invite")?)
            }
            Body::OpenConversation(r) => {
                Self::OpenConversation(OpenConversation::from_pb(r).within("open_conversation")?)
            }
            Body::GetConversation(r) => Self::GetConversation {
                conversation_id: crate::field::required(
                    "conversation_id",
                    &r.conversation_id,
                    ConversationId::from_bytes,
                )
                .within("get_conversation")?,
            },
            Body::ListConversations(r) => {
                Self::ListConversations(ListConversations::from_pb(r).within("list_conversations")?)
            }
            Body::Whoami(pb::WhoAmI {}) => Self::WhoAmI,
            Body::Ping(pb::Ping {}) => Self::Ping,
        })
    }
}

/// A frame from the server: an answer to the request with `request_id`, or a push (0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// The request answered, or 0 for a frame the server pushes on its own.
    pub request_id: u64,
    /// What the server says.
    pub message: ServerMessage,
}

impl ServerFrame {
    /// An answer to request `request_id`.
    pub fn reply(request_id: u64, message: ServerMessage) -> Self {
        Self {
            request_id,
            message,
        }
    }

    /// A frame the server sends on its own (challenge, delivery, prekeys low, logoff).
    pub fn push(message: ServerMessage) -> Self {
        Self {
            request_id: 0,
            message,
        }
    }
}

/// What the server says, one variant per `ServerFrame` body, every field validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// A refusal, answering a request or pushed (e.g. `LOGGED_OFF`) (`error`).
    Error(WireError),
    /// The first frame of every connection; push only (`challenge`).
    Challenge(Challenge),
    /// `auth` or `enroll` succeeded (`auth_ok`).
    AuthOk(AuthOk),
    /// `upload_prekeys` succeeded (`prekeys_uploaded`).
    PrekeysUploaded {
        /// One-time prekeys the server now holds for this device.
        one_time_prekeys_remaining: u32,
    },
    /// The answer to `fetch_prekeys` (`prekey_bundles`).
    PrekeyBundles(Vec<PrekeyBundle>),
    /// `send` is durable (`send_accepted`).
    SendAccepted(SendAccepted),
    /// `ack` done (`acked`).
    Acked {
        /// Stored copies deleted (unknown or already acked ids are not counted).
        count: u32,
    },
    /// `create_invite` succeeded (`invite_created`).
    InviteCreated(InviteCreated),
    /// The answer to `open_conversation` and `get_conversation` (`conversation`).
    Conversation(Conversation),
    /// The answer to `list_conversations` (`conversation_list`).
    ConversationList(ConversationList),
    /// The answer to `whoami` (`identity`).
    Identity(Identity),
    /// The answer to `ping` (`pong`).
    Pong {
        /// Server time, ms since the Unix epoch.
        server_time_ms: u64,
    },
    /// A stored envelope for this device; push only (`delivery`).
    Delivery(Delivery),
    /// This device's one-time prekeys run low; push only (`prekeys_low`).
    PrekeysLow {
        /// One-time prekeys the server still holds for this device.
        one_time_prekeys_remaining: u32,
    },
}

impl ServerMessage {
    /// The body's field name in `relay.proto`, e.g. `send_accepted`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Error(_) => "error",
            Self::Challenge(_) => "challenge",
            Self::AuthOk(_) => "auth_ok",
            Self::PrekeysUploaded { .. } => "prekeys_uploaded",
            Self::PrekeyBundles(_) => "prekey_bundles",
            Self::SendAccepted(_) => "send_accepted",
            Self::Acked { .. } => "acked",
            Self::InviteCreated(_) => "invite_created",
            Self::Conversation(_) => "conversation",
            Self::ConversationList(_) => "conversation_list",
            Self::Identity(_) => "identity",
            Self::Pong { .. } => "pong",
            Self::Delivery(_) => "delivery",
            Self::PrekeysLow { .. } => "prekeys_low",
        }
    }

    /// Whether this message is only ever pushed (request id 0): challenge, delivery and
    /// prekeys low. `Error` may be either; everything else answers a request.
    pub fn is_push_only(&self) -> bool {
        matches!(
            self,
            Self::Challenge(_) | Self::Delivery(_) | Self::PrekeysLow { .. }
        )
    }

    fn to_pb(&self) -> server_frame::Body {
        use server_frame::Body;
        match self {
            Self::Error(e) => Body::Error(e.to_pb()),
            Self::Challenge(c) => Body::Challenge(c.to_pb()),
            Self::AuthOk(a) => Body::AuthOk(a.to_pb()),
            Self::PrekeysUploaded {
                one_time_prekeys_remaining,
            } => Body::PrekeysUploaded(pb::PrekeysUploaded {
                one_time_prekeys_remaining: *one_time_prekeys_remaining,
            }),
            Self::PrekeyBundles(bundles) => Body::PrekeyBundles(pb::PrekeyBundles {
                bundles: bundles.iter().map(PrekeyBundle::to_pb).collect(),
            }),
            Self::SendAccepted(s) => Body::SendAccepted(s.to_pb()),
            Self::Acked { count } => Body::Acked(pb::Acked { count: *count }),
            Self::InviteCreated(i) => Body::InviteCreated(i.to_pb()),
            Self::Conversation(c) => Body::Conversation(c.to_pb()),
            Self::ConversationList(l) => Body::ConversationList(l.to_pb()),
            Self::Identity(i) => Body::Identity(i.to_pb()),
            Self::Pong { server_time_ms } => Body::Pong(pb::Pong {
                server_time_ms: *server_time_ms,
            }),
            Self::Delivery(d) => Body::Delivery(d.to_pb()),
            Self::PrekeysLow {
                one_time_prekeys_remaining,
            } => Body::PrekeysLow(pb::PrekeysLow {
                one_time_prekeys_remaining: *one_time_prekeys_remaining,
            }),
        }
    }

    fn from_pb(body: server_frame::Body) -> Result<Self, FieldError> {
        use server_frame::Body;
        Ok(match body {
            Body::Error(e) => Self::Error(WireError::from_pb(e).within("error")?),
            Body::Challenge(c) => Self::Challenge(Challenge::from_pb(c).within("challenge")?),
            Body::AuthOk(a) => Self::AuthOk(AuthOk::from_pb(a).within("auth_ok")?),
            Body::PrekeysUploaded(p) => Self::PrekeysUploaded {
                one_time_prekeys_remaining: p.one_time_prekeys_remaining,
            },
            Body::PrekeyBundles(p) => Self::PrekeyBundles(
                p.bundles
                    .into_iter()
                    .map(|b| PrekeyBundle::from_pb(b).within("bundles"))
                    .collect::<Result<_, _>>()
                    .within("prekey_bundles")?,
            ),
            Body::SendAccepted(s) => {
                Self::SendAccepted(SendAccepted::from_pb(s).within("send_accepted")?)
            }
            Body::Acked(a) => Self::Acked { count: a.count },
            Body::InviteCreated(i) => {
                Self::InviteCreated(InviteCreated::from_pb(i).within("invite_created")?)
            }
            Body::Conversation(c) => {
                Self::Conversation(Conversation::from_pb(c).within("conversation")?)
            }
            Body::ConversationList(l) => {
                Self::ConversationList(ConversationList::from_pb(l).within("conversation_list")?)
            }
            Body::Identity(i) => Self::Identity(Identity::from_pb(i).within("identity")?),
            Body::Pong(p) => Self::Pong {
                server_time_ms: p.server_time_ms,
            },
            Body::Delivery(d) => Self::Delivery(Delivery::from_pb(d).within("delivery")?),
            Body::PrekeysLow(p) => Self::PrekeysLow {
                one_time_prekeys_remaining: p.one_time_prekeys_remaining,
            },
        })
    }
}

/// Why a frame was refused. Peer misbehaviour only: decoding has no local failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is larger than [`MAX_FRAME_BYTES`]; nothing was decoded.
    #[error("the frame is {len} bytes, over the limit of {MAX_FRAME_BYTES}")]
    TooLarge {
        /// The frame's length.
        len: usize,
    },
    /// The bytes are not a protobuf frame.
    #[error("the frame is not a valid protobuf frame")]
    Undecodable,
    /// The frame speaks a protocol version other than [`PROTOCOL_VERSION`].
    #[error("protocol version {version} is not supported; only version {PROTOCOL_VERSION} is")]
    UnsupportedVersion {
        /// The version the frame claimed.
        version: u32,
        /// The frame's request id.
        request_id: u64,
    },
    /// A client frame with request id 0, which only server pushes may use.
    #[error("request_id must not be 0")]
    ZeroRequestId,
    /// The frame has no body, or one this protocol version does not know.
    #[error("the frame has no body, or one this protocol version does not know")]
    MissingBody {
        /// The frame's request id.
        request_id: u64,
    },
    /// A field is missing or breaks a rule.
    #[error("{field} {problem}")]
    InvalidField {
        /// The frame's request id.
        request_id: u64,
        /// Where, e.g. `send.envelopes.ciphertext`.
        field: FieldPath,
        /// What.
        problem: FieldProblem,
    },
    /// A server frame that must be pushed (request id 0) answered a request.
    #[error("{body} is only ever pushed, with request_id 0")]
    PushWithRequestId {
        /// The frame's request id.
        request_id: u64,
        /// The body's name.
        body: &'static str,
    },
    /// A server frame that must answer a request came with request id 0.
    #[error("{body} must answer a request, with its non-zero request_id")]
    ResponseWithoutRequestId {
        /// The body's name.
        body: &'static str,
    },
}

impl FrameError {
    /// The wire error code to refuse the frame with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::InvalidField { problem, .. } => problem.code(),
            Self::Undecodable
            | Self::ZeroRequestId
            | Self::MissingBody { .. }
            | Self::PushWithRequestId { .. }
            | Self::ResponseWithoutRequestId { .. } => ErrorCode::Malformed,
        }
    }

    /// A plain-English message naming the problem and the field, never its contents.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The refused frame's request id, if decoding got that far; 0 otherwise. The server
    /// answers the error with it, so the client can fail just that request.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::UnsupportedVersion { request_id, .. }
            | Self::MissingBody { request_id }
            | Self::InvalidField { request_id, .. }
            | Self::PushWithRequestId { request_id, .. } => *request_id,
            Self::TooLarge { .. }
            | Self::Undecodable
            | Self::ZeroRequestId
            | Self::ResponseWithoutRequestId { .. } => 0,
        }
    }

    /// The [`WireError`] to send back.
    pub fn to_wire_error(&self) -> WireError {
        WireError::from(self)
    }

    fn invalid_field(request_id: u64, error: FieldError) -> Self {
        Self::InvalidField {
            request_id,
            field: error.path,
            problem: error.problem,
        }
    }
}

/// Checks the size, then protobuf-decodes a frame.
fn decode_raw<M: Message + Default>(mut buf: impl Buf) -> Result<M, FrameError> {
    let len = buf.remaining();
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    M::decode(&mut buf).map_err(|_| FrameError::Undecodable)
}

/// Checks the protocol version.
fn check_version(version: u32, request_id: u64) -> Result<(), FrameError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(FrameError::UnsupportedVersion {
            version,
            request_id,
        })
    }
}

fn decode_client(buf: impl Buf) -> Result<ClientFrame, FrameError> {
    let raw: pb::ClientFrame = decode_raw(buf)?;
    check_version(raw.version, raw.request_id)?;
    let request_id = raw.request_id;
    if request_id == 0 {
        return Err(FrameError::ZeroRequestId);
    }
    let body = raw.body.ok_or(FrameError::MissingBody { request_id })?;
    let request =
        ClientRequest::from_pb(body).map_err(|e| FrameError::invalid_field(request_id, e))?;
    Ok(ClientFrame {
        request_id,
        request,
    })
}

fn decode_server(buf: impl Buf) -> Result<ServerFrame, FrameError> {
    let raw: pb::ServerFrame = decode_raw(buf)?;
    check_version(raw.version, raw.request_id)?;
    let request_id = raw.request_id;
    let body = raw.body.ok_or(FrameError::MissingBody { request_id })?;
    let message =
        ServerMessage::from_pb(body).map_err(|e| FrameError::invalid_field(request_id, e))?;
    let is_error = matches!(message, ServerMessage::Error(_));
    if message.is_push_only() && request_id != 0 {
        return Err(FrameError::PushWithRequestId {
            request_id,
            body: message.name(),
        });
    }
    if !message.is_push_only() && !is_error && request_id == 0 {
        return Err(FrameError::ResponseWithoutRequestId {
            body: message.name(),
        });
    }
    Ok(ServerFrame {
        request_id,
        message,
    })
}

/// Decodes and validates a client frame (server side). Total: never panics.
pub fn decode_client_frame(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    decode_client(bytes)
}

/// [`decode_client_frame`] from a `Bytes`, sharing its buffer: ciphertexts are not copied.
pub fn decode_client_frame_bytes(bytes: Bytes) -> Result<ClientFrame, FrameError> {
    decode_client(bytes)
}

/// Decodes and validates a server frame (SDK side), including that push-only messages carry
/// request id 0 and answers a non-zero one. Total: never panics.
pub fn decode_server_frame(bytes: &[u8]) -> Result<ServerFrame, FrameError> {
    decode_server(bytes)
}

/// [`decode_server_frame`] from a `Bytes`, sharing its buffer: ciphertexts are not copied.
pub fn decode_server_frame_bytes(bytes: Bytes) -> Result<ServerFrame, FrameError> {
    decode_server(bytes)
}

/// Encodes a client frame (SDK side) at [`PROTOCOL_VERSION`]. The frame is not re-checked
/// against the limits: a frame that breaks one is refused by the server.
pub fn encode_client_frame(frame: &ClientFrame) -> Vec<u8> {
    pb::ClientFrame {
        version: PROTOCOL_VERSION,
        request_id: frame.request_id,
        body: Some(frame.request.to_pb()),
    }
    .encode_to_vec()
}

/// Encodes a server frame (server side) at [`PROTOCOL_VERSION`].
pub fn encode_server_frame(frame: &ServerFrame) -> Vec<u8> {
    pb::ServerFrame {
        version: PROTOCOL_VERSION,
        request_id: frame.request_id,
        body: Some(frame.message.to_pb()),
    }
    .encode_to_vec()
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
