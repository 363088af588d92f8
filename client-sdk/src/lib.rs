//! medrelay client SDK: the sans-IO end-to-end encryption core.
//!
//! Signal's protocols on the primitives of DESIGN.md: PQXDH (revision 3) with X25519 and
//! ML-KEM-768 to start a session, the Double Ratchet (revision 4) with ChaCha20-Poly1305 and
//! HKDF/HMAC-SHA256 for messages, sealed boxes for the org archive, and Signal-style numeric
//! safety numbers. Nothing here does I/O except [`keystore::FileKeyStore`]'s file writes; no
//! clock is read (callers pass `now_ms`), and every random value comes from the caller's
//! `rand_core` 0.6 `RngCore + CryptoRng`.
//!
//! | module | what it is |
//! |---|---|
//! | [`identity`] | device identity keys, signed/PQ/one-time prekeys, public bundles |
//! | [`pqxdh`] | PQXDH key agreement |
//! | [`ratchet`] | the Double Ratchet state machine |
//! | [`session`] | [`Session`]: both of the above over the `medrelay.e2e.v1` wire format |
//! | [`content`] | padded message plaintexts |
//! | [`sealed_box`] | sealing to the org archive key |
//! | [`archive`] | the org archive: key fingerprints, sealing a sent message's record, export files |
//! | [`delivery`] | opening a delivery: session choice, simultaneous initiation, sessions set aside |
//! | [`fingerprint`] | safety numbers |
//! | [`keystore`] | [`KeyStore`], memory and encrypted-file stores |
//! | [`primitives`] | the audited primitive wrappers the known-answer tests exercise |
//! | [`limits`] | every bound, named |
//! | `transport` | (feature `transport`) the async TLS WebSocket client: `transport::Client` |
//!
//! Secret types are zeroized on drop and print as `<redacted>` in `Debug`.

#![warn(missing_docs)]

pub mod archive;
pub mod content;
pub mod convert;
pub mod delivery;
pub mod error;
pub mod fingerprint;
pub mod identity;
pub mod keystore;
pub mod limits;
pub mod pqxdh;
pub mod primitives;
pub mod ratchet;
pub mod sealed_box;
pub(crate) mod secret;
pub mod session;
#[cfg(feature = "transport")]
pub mod transport;

pub use error::{
    ContentError, IdentityError, KeyStoreError, PqxdhError, PrimitiveError, RatchetError,
    SealedBoxError, SessionError,
};
pub use fingerprint::{safety_number, SafetyNumber};
pub use identity::{
    DeviceIdentity, OneTimePrekeyPublic, PqPrekeyPublic, PrekeyBundle, PublicDeviceKeys,
    PublicIdentity, SignedPrekeyPublic,
};
pub use keystore::{
    DeviceId, FileKeyStore, KdfParams, KeyStore, MemoryKeyStore, SealedKeyStore, StoreUpdate,
};
pub use sealed_box::ArchiveKeyPair;
pub use secret::SecretBytes;
pub use session::{IncomingKind, PeerAddress, Role, Session};
