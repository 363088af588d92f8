//! The engine's errors: what the page shows, with a stable code. None carries a key, a
//! message text or an invite code.

use medrelay_proto::{ErrorCode, WireError};
use medrelay_sdk::{KeyStoreError, SessionError};

/// Why an engine call or an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The server refused (its code and plain-English message).
    #[error("{}: {}", .0.code.as_str(), .0.message)]
    Server(WireError),
    /// The local key store: a wrong password, a corrupt store, an encoding failure.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// The end-to-end layer refused a session or a message (opaque by design).
    #[error("end-to-end encryption: {0}")]
    Crypto(#[from] SessionError),
    /// Input from the page that breaks a protocol rule (a short password, a bad handle...).
    #[error("{0}")]
    Invalid(String),
    /// The server sent something this client did not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection ended before the answer came.
    #[error("the connection to the server was lost")]
    Disconnected,
    /// The server announces another org archive key than the one this device pinned: nothing
    /// is sent until the staff member compares the new key's fingerprint with the privacy
    /// officer's and accepts it.
    #[error("the clinic's archive key changed (new fingerprint {fingerprint}); nothing was sent. Compare the fingerprint with your privacy officer's, then accept the new key")]
    ArchiveKeyChanged {
        /// The new key's fingerprint.
        fingerprint: String,
    },
    /// A local failure (a bug or an impossible state).
    #[error("{0}")]
    Local(&'static str),
}

impl EngineError {
    /// A stable code for the page: the server's code, or one of the client's own.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Server(e) => e.code.as_str(),
            Self::KeyStore(KeyStoreError::WrongPassphraseOrCorrupt) => "WRONG_PASSWORD",
            Self::KeyStore(_) => "KEY_STORE",
            Self::Crypto(_) => "CRYPTO",
            Self::Invalid(_) => "INVALID_INPUT",
            Self::Protocol(_) => "PROTOCOL",
            Self::Disconnected => "DISCONNECTED",
            Self::ArchiveKeyChanged { .. } => "ARCHIVE_KEY_CHANGED",
            Self::Local(_) => "LOCAL",
        }
    }

    /// Whether the server said the login session ended.
    pub fn is_logged_off(&self) -> bool {
        matches!(self, Self::Server(e) if e.code == ErrorCode::LoggedOff)
    }
}

impl From<medrelay_proto::ProtoError> for EngineError {
    fn from(e: medrelay_proto::ProtoError) -> Self {
        Self::Invalid(e.to_string())
    }
}
