//! Every server-side limit in one place, named and documented.
//!
//! Protocol limits (frame size, envelopes per send, key sizes) live in
//! `medrelay_proto::limits` because clients must respect them too.

use std::time::Duration;

use crate::rate_limit::Rate;

/// Most connections the server holds at once; further ones are refused at accept.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Most connections from one IP address at once.
pub const MAX_CONNECTIONS_PER_IP: usize = 12_000;
/// Time a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its HTTP request head (and WebSocket upgrade).
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a new WebSocket connection has to authenticate or enrol.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// An authenticated connection that sends nothing (not even a ping) for this long is closed.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// A connection whose peer does not take our writes for this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for one connection's writer before the connection is considered too slow.
pub const CONNECTION_SEND_QUEUE: usize = 1024;
/// Requests one connection may have waiting for durability at once.
pub const MAX_PENDING_ACKS_PER_CONNECTION: usize = 256;
/// Bytes of deliveries queued on one connection and not yet taken by its socket; more wait in
/// the mailbox until the peer reads.
pub const MAX_QUEUED_DELIVERY_BYTES: usize = 1024 * 1024;
/// Bytes of replies queued on one connection and not yet taken by its socket; past it, the
/// connection reads no more requests until the peer reads its answers.
pub const MAX_QUEUED_REPLY_BYTES: usize = 512 * 1024;
/// Deliveries pushed to one device and not yet acknowledged; more wait for acks.
pub const MAX_UNACKED_DELIVERIES: usize = 512;
/// Envelopes read from a mailbox in one go.
pub const MAILBOX_READ_BATCH: usize = 128;
/// WebSocket read buffer per connection (tungstenite allocates it per connection).
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// WebSocket write buffer per connection before a write goes to the socket.
pub const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most bytes a slow peer may leave buffered for writing before the connection fails.
pub const WS_MAX_WRITE_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// How long an invite code stays valid.
pub const INVITE_LIFETIME_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// One-time prekeys at or below which the server tells a device to upload more.
pub const ONE_TIME_PREKEY_LOW_WATER: u32 = 20;
/// Most one-time prekeys the server holds for one device.
pub const MAX_ONE_TIME_PREKEYS_STORED: u32 = 500;
/// Most devices per user (the protocol's limit, so every device fits one send).
pub const MAX_DEVICES_PER_USER: usize = medrelay_proto::limits::MAX_DEVICES_PER_USER;
/// How long a closing connection keeps reading (and discarding) what the peer still sends, so
/// the peer can read our last error instead of a connection reset.
pub const LINGER_ON_CLOSE: Duration = Duration::from_secs(2);
/// Most bytes read and discarded while lingering on close.
pub const LINGER_MAX_BYTES: usize = 2 * 1024 * 1024;
/// How often a connection checks its login session against the org's timeouts.
pub const LOGOFF_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Authentication and enrolment attempts per IP address.
pub const AUTH_RATE: Rate = Rate {
    burst: 100.0,
    per_second: 5.0,
};
/// Sends per device per second, by default (generous: a care-team device sends in bursts).
/// `medrelay serve --sends-per-second` changes it.
pub const DEFAULT_SENDS_PER_SECOND: u32 = 1000;

/// The send rate of a device: `per_second` on average, bursts of twice that.
pub fn send_rate(per_second: u32) -> Rate {
    Rate {
        burst: 2.0 * f64::from(per_second),
        per_second: f64::from(per_second),
    }
}
/// Prekey fetches per device.
pub const FETCH_RATE: Rate = Rate {
    burst: 200.0,
    per_second: 50.0,
};
/// Time a graceful shutdown waits for connections to drain.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
