//! Every limit of the crypto core, named and documented in one place.
//!
//! Changing a value here changes behaviour on the wire or on disk only where noted.

/// How many message keys one receiving chain may skip in a single step (Double Ratchet rev 4,
/// section 3.5, `MAX_SKIP`). A message further ahead than this is rejected with
/// [`crate::RatchetError::TooFarAhead`] and the session is left untouched.
pub const MAX_SKIP: u32 = 1000;

/// The most skipped message keys a session stores across all chains. When full, the oldest key is
/// evicted (its message can then no longer be decrypted). Bounds memory and the lifetime of keys
/// for messages that never arrive.
pub const MAX_SKIPPED_MESSAGE_KEYS: usize = 2000;

/// How many one-time prekeys a device generates in one batch.
pub const ONE_TIME_PREKEY_BATCH_SIZE: usize = 100;

/// Below this many unused one-time prekeys a device should upload a new batch.
pub const ONE_TIME_PREKEY_REPLENISH_THRESHOLD: usize = 20;

/// The most one-time prekey secrets a device keeps. Generating a batch that would exceed it
/// first deletes the oldest unused ones (lowest ids: handed out by the server long ago and never
/// used), so replenishment never stops.
pub const MAX_ONE_TIME_PREKEYS: usize = 1000;

/// The most accepted prekey messages a device remembers (SHA-256 digests, 36 bytes each) to
/// refuse replays of a `PrekeyMessage`. Entries are dropped when the signed prekey they name is
/// pruned; beyond this bound the oldest go first (only a flood of fresh sessions within one
/// signed-prekey lifetime reaches it).
pub const MAX_ACCEPTED_PREKEY_MESSAGES: usize = 10_000;

/// How often the signed X25519 prekey and the ML-KEM-768 last-resort prekey should be rotated.
pub const SIGNED_PREKEY_ROTATION_INTERVAL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// How long a rotated-out prekey is kept so that prekey messages already in flight (sent to the
/// old bundle) still decrypt.
pub const RETIRED_PREKEY_GRACE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Plaintext `Content` is padded so its encoded length is a multiple of this many bytes.
pub const CONTENT_PADDING_BUCKET: usize = 64;

/// SHA-512 iterations of a safety-number half (Signal's `NumericFingerprintGenerator`).
pub const FINGERPRINT_ITERATIONS: u32 = 5200;

/// The largest encrypted key-store file [`crate::keystore::FileKeyStore`] will read.
pub const MAX_KEYSTORE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The largest Argon2id memory cost (KiB) accepted from a key-store file header, so a tampered
/// header cannot make the client allocate without bound.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;

/// The largest Argon2id time cost accepted from a key-store file header.
pub const MAX_ARGON2_ITERATIONS: u32 = 64;

/// The largest Argon2id parallelism accepted from a key-store file header.
pub const MAX_ARGON2_PARALLELISM: u32 = 16;

/// Earlier sessions kept per peer device for messages still in flight under them.
pub const MAX_ARCHIVED_SESSIONS: usize = 4;
