//! medrelay server: a TLS WebSocket relay that stores and forwards end-to-end encrypted
//! messages for clinics, and can never read them.
//!
//! Layout (see ARCHITECTURE.md): [`relay`] holds the request logic over the [`store::Store`]
//! seam; [`connection`] is the per-connection state machine; [`server`] and [`http`] are the
//! thin tokio/rustls/hyper/tungstenite adapters; [`group_commit`] shares storage flushes.

pub mod access;
pub mod access_log;
pub mod admin_socket;
pub mod archive;
pub mod audit;
pub mod clock;
pub mod connection;
pub mod credentials;
pub mod datadir;
pub mod group_commit;
pub mod http;
pub mod hub;
pub mod keyring;
pub mod limits;
pub mod metrics;
pub mod permissions;
pub mod rate_limit;
pub mod relay;
pub mod retention;
pub mod server;
pub mod store;
pub mod tls;
pub mod web_assets;
