//! [`TransportError`]: everything the async client can fail with.
//!
//! Split as the crypto core splits its errors: the server refused (a [`WireError`] with its
//! stable code), the network or TLS failed (a plain message), or something local failed (key
//! store, crypto, a bad argument). No variant carries a key, a message text or an invite code.

use medrelay_proto::{ErrorCode, WireError};
use thiserror::Error;

use crate::error::{IdentityError, KeyStoreError, SessionError};

/// Failures of the transport and of [`Client`](super::Client).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server URL is not `wss://HOST:PORT` (or `wss://HOST`, port 443).
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// The CA certificate PEM could not be used. A CA PEM is required: this client does not
    /// consult the platform's trust store yet.
    #[error("unusable CA certificate: {0}")]
    InvalidCa(String),
    /// TCP connect, the TLS handshake or the WebSocket upgrade failed; the message says which.
    #[error("could not connect to the server: {0}")]
    Connect(String),
    /// The server refused a request: its stable code and plain-English message.
    #[error("the server refused the request: {} ({})", .0.code, .0.message)]
    Server(WireError),
    /// The server ended this device's session or connection (`LOGGED_OFF`, pushed): idle
    /// timeout, session lifetime, revocation, deactivation. The reconnection logic does not
    /// retry past it when the new connection needs a login: log in again (a revoked device
    /// must enrol again).
    #[error("logged off by the server: {}", .0.message)]
    LoggedOff(WireError),
    /// This staff or admin device has no live login session (as `auth_ok` said, or after
    /// [`Client::logout`](super::Client::logout)): the request was not sent. The server would
    /// have answered `UNAUTHENTICATED`, which [`TransportError::code`] reports.
    #[error("{}", if *.credentials_required {
        "set up your password and authenticator first (setup_credentials), then log in"
    } else {
        "log in with your password and a second factor first"
    })]
    LoginRequired {
        /// No password and TOTP are set up yet: `setup_credentials` comes first.
        credentials_required: bool,
    },
    /// The server did not answer in time.
    #[error("the server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection closed (or failed) and could not be re-established.
    #[error("disconnected from the server: {0}")]
    Disconnected(String),
    /// The server broke the protocol (an undecodable frame, an unexpected answer).
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// The local key store failed.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// The key store has no enrolled device (or its profile is missing or unreadable).
    #[error("this key store holds no enrolled device: {0}")]
    NotEnrolled(&'static str),
    /// A cryptographic operation failed locally (session setup, encryption, a bad bundle).
    #[error("crypto: {0}")]
    Crypto(String),
    /// A caller-supplied argument was invalid (e.g. an unknown conversation, a handle).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The org's archive key is not the one this device pinned: nothing is sent until the
    /// user has checked the new key with the clinic's privacy officer and accepted it.
    #[error(
        "the clinic's archive key changed (new key fingerprint {fingerprint}); nothing was sent. \
         Check the fingerprint with your clinic's privacy officer, then accept it"
    )]
    ArchiveKeyChanged {
        /// SHA-256 of the new key, first 16 bytes, hex.
        fingerprint: String,
    },
}

impl TransportError {
    /// The server's error code, when the server refused or logged off (or, for
    /// [`TransportError::LoginRequired`], would have: `UNAUTHENTICATED`).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) | Self::LoggedOff(e) => Some(e.code),
            Self::LoginRequired { .. } => Some(ErrorCode::Unauthenticated),
            _ => None,
        }
    }

    /// The server's error, when it refused a request or logged this device off.
    pub fn wire_error(&self) -> Option<&WireError> {
        match self {
            Self::Server(e) | Self::LoggedOff(e) => Some(e),
            _ => None,
        }
    }

    /// Whether retrying the same operation later may succeed (network trouble, timeouts,
    /// transient server codes).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) | Self::Disconnected(_) => true,
            Self::Server(e) => e.code.is_transient(),
            _ => false,
        }
    }
}

impl From<medrelay_proto::ProtoError> for TransportError {
    /// Only the key conversions return it: our own keys failed their wire checks.
    fn from(e: medrelay_proto::ProtoError) -> Self {
        TransportError::Crypto(format!("a key failed its wire check: {e}"))
    }
}

impl From<SessionError> for TransportError {
    fn from(e: SessionError) -> Self {
        Self::Crypto(e.to_string())
    }
}

impl From<IdentityError> for TransportError {
    fn from(e: IdentityError) -> Self {
        Self::Crypto(e.to_string())
    }
}
