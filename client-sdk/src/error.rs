//! Error types, one enum per module boundary.
//!
//! Errors are split the way rustls splits them: the peer misbehaved (bad signature, bad key),
//! the input is malformed, or something local failed. Every authentication failure of a message
//! collapses into one opaque variant ([`SessionError::DecryptionFailed`]) so that a sender learns
//! nothing from which check failed. No variant carries key material or plaintext.

use thiserror::Error;

/// Failures of the primitive layer ([`crate::primitives`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PrimitiveError {
    /// An X25519 result was all zeros: the peer's public key has small order (non-contributory).
    #[error("X25519 result is non-contributory (low-order public key)")]
    NonContributory,
    /// AEAD authentication failed: wrong key, or tampered ciphertext, nonce or associated data.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A key or ciphertext had the wrong length or did not decode.
    #[error("invalid key or ciphertext encoding")]
    InvalidEncoding,
    /// A KDF, MAC or AEAD was asked for an output or input length it does not support.
    #[error("unsupported length for a primitive")]
    InvalidLength,
}

/// Failures around device identities, prekeys and bundles ([`crate::identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The Ed25519 identity signing key does not decode to a valid, non-weak point.
    #[error("invalid identity signing key")]
    InvalidSigningKey,
    /// The signature binding the identity DH key to the signing key does not verify.
    #[error("identity DH key signature does not verify")]
    BadIdentitySignature,
    /// The signature over the signed X25519 prekey does not verify.
    #[error("signed prekey signature does not verify")]
    BadSignedPrekeySignature,
    /// The signature over the ML-KEM-768 prekey does not verify.
    #[error("post-quantum prekey signature does not verify")]
    BadPqPrekeySignature,
    /// The ML-KEM-768 prekey does not decode as an encapsulation key.
    #[error("invalid post-quantum prekey")]
    InvalidPqPrekey,
    /// A transcript to sign is not an authentication or enrolment transcript (it must start
    /// with `medrelay_proto::AUTH_TRANSCRIPT_LABEL` or `ENROLL_TRANSCRIPT_LABEL`).
    #[error("refusing to sign a message outside the authentication signature domains")]
    ReservedDomain,
    /// The 32-bit prekey id space is used up (never expected in practice).
    #[error("prekey ids exhausted")]
    PrekeyIdsExhausted,
}

/// Failures of PQXDH session setup ([`crate::pqxdh`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PqxdhError {
    /// A key or signature in the bundle or prekey message did not verify.
    #[error("bad identity or prekey: {0}")]
    Identity(#[from] IdentityError),
    /// A Diffie-Hellman output was non-contributory (a low-order key was supplied).
    #[error("non-contributory key agreement (low-order key)")]
    NonContributory,
    /// The prekey message names a signed prekey this device does not hold (unknown or expired).
    #[error("unknown signed prekey id {0}")]
    UnknownSignedPrekey(u32),
    /// The prekey message names a post-quantum prekey this device does not hold.
    #[error("unknown post-quantum prekey id {0}")]
    UnknownPqPrekey(u32),
    /// The prekey message names a one-time prekey that is unknown or already used.
    #[error("unknown or already used one-time prekey id {0}")]
    UnknownOneTimePrekey(u32),
    /// A key or the ML-KEM ciphertext had the wrong length.
    #[error("malformed key or ciphertext in session setup")]
    Malformed,
}

/// Failures of the Double Ratchet ([`crate::ratchet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RatchetError {
    /// The message could not be authenticated: tampered, replayed, for another session, or its
    /// key was already used or evicted. Deliberately says nothing more.
    #[error("message could not be decrypted")]
    DecryptionFailed,
    /// The message is more than [`crate::limits::MAX_SKIP`] messages ahead of the receiving
    /// chain. The session is unchanged and keeps working.
    #[error("message is too far ahead of the receiving chain (more than {max} skipped)", max = crate::limits::MAX_SKIP)]
    TooFarAhead,
    /// The header carried a low-order ratchet public key.
    #[error("peer sent a low-order ratchet key")]
    InvalidRatchetKey,
    /// This side cannot send yet (a responder before its first received message).
    #[error("no sending chain yet")]
    NoSendingChain,
    /// A chain counter would overflow (2^32 messages on one chain).
    #[error("message counter exhausted")]
    CounterExhausted,
    /// A primitive failed in a way that indicates a bug rather than bad input.
    #[error("internal crypto error")]
    Internal,
}

/// Failures of [`crate::Session`] operations: what the transport layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Opaque: tampered, replayed, or undecryptable message. The session is unchanged.
    #[error("message could not be decrypted")]
    DecryptionFailed,
    /// The message is beyond the skip window ([`crate::limits::MAX_SKIP`]). The session is
    /// unchanged and keeps working.
    #[error("message is too far ahead of the receiving chain (more than {max} skipped)", max = crate::limits::MAX_SKIP)]
    TooFarAhead,
    /// The bytes are not a well-formed `E2eMessage` (bad protobuf, missing or wrong-length field).
    #[error("malformed end-to-end message: {0}")]
    Malformed(&'static str),
    /// Session setup failed (bad bundle or prekey message); see the inner error.
    #[error("session setup failed: {0}")]
    Setup(#[from] PqxdhError),
    /// A `PrekeyMessage` that starts a different session than this one (the peer re-initiated):
    /// pass it to [`crate::Session::accept`] instead.
    #[error("prekey message for a new session")]
    NewSessionRequired,
    /// [`crate::Session::accept`] was given a message that is not a `PrekeyMessage`.
    #[error("not a prekey message")]
    NotAPrekeyMessage,
    /// [`crate::Session::accept`] was given a `PrekeyMessage` this device already accepted
    /// (a replay: its digest is in the identity's replay cache). Treat it as undecryptable.
    #[error("prekey message was already accepted (replay)")]
    Replayed,
    /// The session is bound to another peer (user, device) than the one a message or send
    /// names ([`crate::Session::bind_peer`]).
    #[error("the session belongs to another peer")]
    PeerMismatch,
    /// The peer's ratchet key has small order.
    #[error("peer sent a low-order ratchet key")]
    InvalidRatchetKey,
    /// A local failure: no sending chain, counter exhausted, or an internal error.
    #[error("local ratchet failure: {0}")]
    Local(RatchetError),
}

impl From<RatchetError> for SessionError {
    fn from(e: RatchetError) -> Self {
        match e {
            RatchetError::DecryptionFailed => SessionError::DecryptionFailed,
            RatchetError::TooFarAhead => SessionError::TooFarAhead,
            RatchetError::InvalidRatchetKey => SessionError::InvalidRatchetKey,
            other => SessionError::Local(other),
        }
    }
}

/// Failures of [`crate::sealed_box`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealedBoxError {
    /// The recipient (or ephemeral) public key has small order.
    #[error("non-contributory key agreement (low-order key)")]
    NonContributory,
    /// The bytes are not a well-formed `SealedBox`.
    #[error("malformed sealed box")]
    Malformed,
    /// Opaque: wrong key or tampered box.
    #[error("sealed box could not be opened")]
    OpenFailed,
    /// A primitive failed in a way that indicates a bug.
    #[error("internal crypto error")]
    Internal,
}

/// Failures of [`crate::content`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The decrypted bytes are not a well-formed `Content`.
    #[error("malformed content")]
    Malformed,
}

/// Failures of a [`crate::keystore::KeyStore`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The key-store file does not exist.
    #[error("key store file not found")]
    NotFound,
    /// A key-store file already exists where a new one was to be created.
    #[error("key store file already exists")]
    AlreadyExists,
    /// The passphrase is wrong, or the file was modified or corrupted (the two cannot be told
    /// apart: the authentication tag covers both).
    #[error("wrong passphrase, or the key store is corrupt or was tampered with")]
    WrongPassphraseOrCorrupt,
    /// The file is not a medrelay key store (bad magic, truncated header, too large).
    #[error("not a medrelay key store file")]
    NotAKeyStore,
    /// The file's format version is not supported by this build.
    #[error("unsupported key store version {0}")]
    UnsupportedVersion(u8),
    /// The Argon2id parameters are invalid or outside the accepted bounds.
    #[error("invalid key-derivation parameters")]
    InvalidKdfParams,
    /// The decrypted state did not deserialise (written by an incompatible build).
    #[error("key store state does not decode")]
    StateDecode,
    /// The state could not be serialised (a bug).
    #[error("key store state does not encode")]
    StateEncode,
    /// Another process (or another `FileKeyStore` in this one) holds the key store's lock.
    #[error("another medrelay-client is using this profile; wait for it to finish")]
    InUse,
    /// The file on disk is not the one this store last read or wrote (another writer, or a
    /// restored copy): nothing was written. Reopen the store.
    #[error("the key store file was changed by someone else since it was loaded (generation {on_disk} on disk, {loaded} loaded); nothing was written: reopen it")]
    ChangedOnDisk {
        /// The generation in the file's header now.
        on_disk: u64,
        /// The generation this store last read or wrote.
        loaded: u64,
    },
    /// A filesystem operation failed.
    #[error("key store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A primitive failed in a way that indicates a bug.
    #[error("internal crypto error")]
    Internal,
}
