//! The async client (feature `transport`): TLS 1.3 WebSockets to a medrelay server, speaking
//! the protocol of `proto/README.md`, with the end-to-end work of the crypto core on top.
//!
//! | module | what |
//! |---|---|
//! | [`url`] | `wss://HOST:PORT`, parsed |
//! | [`tls`] | TCP + rustls (CA PEM, TLS 1.3, ALPN, SNI) + WebSocket upgrade, the TLS exporter |
//! | `connection` | the handshake and the actor task that owns the socket |
//! | [`plan`] | the decisions as pure functions: fan-out, fetches, mismatch retries, backoff |
//! | [`profile`] | what the client remembers (in the key store's profile blob) |
//! | [`convert`] | crypto-core key types to wire types and back |
//! | [`client`] | [`Client`]: enrol, connect, send, receive, ack, invites, safety numbers; staff login, consent, users, devices, teams, care, policy, break-glass |
//!
//! Authentication binds the device's signature to this TLS session: both ends derive 32 bytes
//! of exporter keying material (label `EXPORTER-medrelay-auth-v1`), and the client signs
//! `auth_transcript(nonce, TlsExporter(value), device_id)`.
//!
//! Delivery is at least once: a message is recorded as processed (durably, with the session
//! step that decrypted it) before [`Client::recv`] returns it, and stays pending in the
//! profile until [`Client::ack`], so a crash in between shows it again rather than losing it.
//! A delivery that cannot be decrypted is acked and reported without content
//! ([`Incoming::Undecryptable`]), so it never blocks the queue.
//!
//! Never logged: keys, message texts, invite codes, handles.

pub mod client;
mod connection;
/// Key conversions, shared with the browser engine (always built).
pub use crate::convert;
mod error;
pub mod plan;
pub mod profile;
pub mod tls;
pub mod url;

pub use client::{
    Client, ClientOptions, DeviceSafetyNumber, Incoming, LoginSession, SendReceipt, ServerConfig,
    UndecryptableMessage,
};
pub use error::TransportError;
pub use plan::Backoff;
pub use profile::{Profile, ReceivedMessage, SeenClientMessages};
pub use url::ServerUrl;
