//! The access log: every decision, append-only, hash-chained and sealed by signed checkpoints.
//!
//! Each entry carries its sequence number and the SHA-256 of the entry before it; its own hash
//! covers both and its body (`medrelay-access-log-v1\0 || postcard(body)`), so changing,
//! deleting or reordering any entry breaks the chain at that entry. Once
//! [`CHECKPOINT_EVERY`] entries are unsealed (or [`CHECKPOINT_INTERVAL_MS`] has passed), at the
//! end of the flush that writes them, when a new day begins, and at shutdown, an Ed25519
//! checkpoint signs (sequence, hash,
//! time) with the log's own key (`DIR/access-log.key`, 0600; its public half beside it), so a
//! log cut short before a checkpoint is caught too. [`verify`] runs offline on the database
//! files. Entries hold pseudonymous ids, actions and outcomes: never content, keys or handles.
//!
//! At rest every entry is sealed like any other record, under the key of the day it was
//! written (the source address identifies people too). Retention removes whole sealed
//! segments from the front: it first appends an `access_log_trim` entry naming the last entry
//! it removes (a checkpoint), then deletes up to there and keeps that checkpoint as the anchor
//! the remaining chain starts from; the days' keys are then shredded. A prefix removed any
//! other way has no trim entry in the chain and fails verification.
//!
//! Fail closed: a write that fails marks the log broken, and a broken log refuses every
//! further request ([`AuditSink::ready`]) until the server is restarted.
//!
//! Entries are chained as they are recorded and written with the next flush of the store
//! (a [`FlushHook`]), every answer waiting for that flush: the entries of one flush share a
//! row (`GROUP_TAG || count || (length || sealed entry)*`, keyed by the first entry's
//! number), each entry still sealed on its own and bound to its own number, so a changed,
//! moved or missing entry is named exactly. Rows of earlier releases hold one entry each and
//! are read alike. Checkpoints fall at the end of a row, so retention trims whole rows.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use medrelay_proto::{
    AccessLogEntry, AccessLogFilter, AccessLogPage, AccessLogStatus, DeviceId, OrgId, Role, UserId,
};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditError, AuditEvent, AuditSink, Outcome};
use crate::keyring::{day_of, KeyId, Scope};
use crate::store::codec::{key_id_of, Codec};
use crate::store::sled_store::SledStore;
use crate::store::{FlushHook, PendingFlush, StoreError};

/// Unsealed entries that make the next flush end with a checkpoint (a flush that writes more
/// ends with one checkpoint over them all).
pub const CHECKPOINT_EVERY: u64 = 64;
/// Longest time an entry stays unsealed while the log is written to (ms).
pub const CHECKPOINT_INTERVAL_MS: u64 = 60_000;
/// Domain label of entry hashes.
const ENTRY_LABEL: &[u8] = b"medrelay-access-log-v1\0";
/// Domain label of checkpoint signatures.
const CHECKPOINT_LABEL: &[u8] = b"medrelay-access-checkpoint-v1\0";
/// The tree of entries, keyed by big-endian sequence number.
const ENTRIES: &str = "access_log";
/// The tree of checkpoints, keyed by the sequence number they seal.
const CHECKPOINTS: &str = "access_log_checkpoints";
/// The log's own small facts: its storage format, and where retention trimmed it.
const META: &str = "access_log_meta";
/// Meta key: the last entry removed by retention (its checkpoint anchors the chain).
const META_TRIMMED: &[u8] = b"trimmed-through";
/// Meta key: the storage format (absent for the unencrypted format of earlier releases).
const META_FORMAT: &[u8] = b"format";
/// Most bytes of entries in one export page, well inside a frame.
const EXPORT_PAGE_BYTES: usize = medrelay_proto::limits::MAX_FRAME_BYTES / 2;
/// Most entries one export request reads.
const EXPORT_SCAN_ROWS: usize = 20_000;
/// The first byte of a row holding several entries.
pub const GROUP_TAG: u8 = b'G';
/// Most entries in one row.
const ENTRIES_PER_ROW: usize = 64;
/// Most bytes of entries in one row, roughly: sled stores a leaf over 128 KiB (16 rows) as a
/// blob file of its own (see the mail log's rows).
const ROW_BYTES: usize = 7 * 1024;

/// Roughly how many bytes an entry takes sealed.
fn entry_size(body: &EntryBodyRef<'_>) -> usize {
    150 + body.action.len()
        + body.outcome.len()
        + body.source.len()
        + body.objects.iter().map(|o| o.len() + 2).sum::<usize>()
}
/// Entries written by the server itself, not on anyone's request; every org's export shows
/// them.
pub const SYSTEM_ACTIONS: [&str; 2] = ["retention_sweep", "access_log_trim"];

/// The part of an entry its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: [u8; 32],
    /// Server time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Actor's org, user, device (hex) and role, if authenticated.
    pub actor: Option<(String, String, String, String)>,
    /// The request kind.
    pub action: String,
    /// Object ids (hex).
    pub objects: Vec<String>,
    /// `allowed` or the error code.
    pub outcome: String,
    /// Source address.
    pub source: String,
}

/// [`EntryBody`] borrowed from the event being recorded: postcard writes a `&str` as it
/// writes a `String` and a slice as it writes a `Vec`, so the bytes (and the hash) are the
/// same, without copying the event's strings or allocating the actor's ids as text.
#[derive(Debug, Serialize)]
struct EntryBodyRef<'a> {
    seq: u64,
    prev_hash: [u8; 32],
    at_ms: u64,
    actor: Option<(&'a str, &'a str, &'a str, &'a str)>,
    action: &'a str,
    objects: &'a [String],
    outcome: &'a str,
    source: &'a str,
}

/// An id as lowercase hex, in place.
fn hex_of<'b>(bytes: &[u8; 16], buffer: &'b mut [u8; 32]) -> Result<&'b str, AuditError> {
    hex::encode_to_slice(bytes, buffer).map_err(|e| AuditError(e.to_string()))?;
    std::str::from_utf8(buffer).map_err(|e| AuditError(e.to_string()))
}

/// A stored entry: its body and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What the hash covers.
    pub body: EntryBody,
    /// SHA-256 of the label and the body.
    pub hash: [u8; 32],
}

/// A signed seal over the log up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last entry sealed.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// When.
    pub at_ms: u64,
    /// Ed25519 over label || seq || hash || at_ms.
    pub signature: Vec<u8>,
}

fn entry_hash(body: &EntryBody) -> Result<[u8; 32], String> {
    let bytes = postcard::to_allocvec(body).map_err(|e| e.to_string())?;
    Ok(hash_of(&bytes))
}

fn hash_of(body_bytes: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(ENTRY_LABEL);
    hash.update(body_bytes);
    hash.finalize().into()
}

/// An entry's encoding, as stored (sealed) and hashed: the body's bytes, then its hash. The
/// same bytes as encoding an [`Entry`], made with one encoding of the body instead of two.
fn encode_entry<B: Serialize>(body: &B, size: usize) -> Result<([u8; 32], Vec<u8>), String> {
    let mut bytes = Vec::with_capacity(size + 32);
    bytes = postcard::to_extend(body, bytes).map_err(|e| e.to_string())?;
    let hash = hash_of(&bytes);
    bytes.extend_from_slice(&hash);
    Ok((hash, bytes))
}

fn checkpoint_message(seq: u64, hash: &[u8; 32], at_ms: u64) -> Vec<u8> {
    [
        CHECKPOINT_LABEL,
        &seq.to_be_bytes(),
        hash.as_slice(),
        &at_ms.to_be_bytes(),
    ]
    .concat()
}

/// Where the chain stands.
#[derive(Debug)]
struct Head {
    seq: u64,
    hash: [u8; 32],
    /// The last entry a checkpoint seals.
    sealed: u64,
    /// When that checkpoint was written.
    sealed_at_ms: u64,
    /// Time of the last entry.
    last_at_ms: u64,
    /// Entries recorded and not yet written, in rows.
    pending: Vec<PendingRow>,
    /// The last entry written: (seq, hash, time).
    written: (u64, [u8; 32], u64),
    /// The next write ends with a checkpoint (a quiet log, or shutdown).
    want_checkpoint: bool,
    /// The latest checkpoint written to the database (durable or not yet).
    latest_checkpoint: Option<Checkpoint>,
}

/// An entry recorded and sealed, waiting for its row to be written.
#[derive(Debug)]
struct SealedEntry {
    seq: u64,
    hash: [u8; 32],
    at_ms: u64,
    sealed: Vec<u8>,
}

/// Entries that will share a row.
#[derive(Debug, Default)]
struct PendingRow {
    entries: Vec<SealedEntry>,
    /// Roughly, their size sealed.
    bytes: usize,
    /// A new day begins after this row: it ends with a checkpoint.
    day_ends: bool,
}

/// The append-only access log in the server's database.
#[derive(Debug)]
pub struct AccessLog {
    entries: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
    codec: Codec,
    key: SigningKey,
    head: Mutex<Head>,
    broken: AtomicBool,
    /// Where the latest checkpoint is also kept, outside the database (`DIR/access-log.head`).
    head_file: Option<std::path::PathBuf>,
    /// The checkpoint last written to `head_file`.
    head_written: Mutex<u64>,
    /// The latest checkpoint a completed flush made durable: the one `head_file` may name.
    durable_checkpoint: Mutex<Option<Checkpoint>>,
    /// Held while rows are written, by a flush or by [`AccessLog::write_pending`], so rows
    /// reach the database in the order of their entries.
    writing: Mutex<()>,
}

/// The access log's part of one flush: it writes every row recorded until its write (not
/// only those recorded before the flush began: an entry may be durable before the change it
/// records, never after), then learns which checkpoint the flush made durable.
#[derive(Debug)]
struct LogFlush {
    log: std::sync::Arc<AccessLog>,
    /// The latest checkpoint in the database when the rows were written.
    checkpoint: Option<Checkpoint>,
}

/// The access log as a flush hook of the store.
#[derive(Debug)]
struct LogHook(std::sync::Arc<AccessLog>);

impl FlushHook for LogHook {
    fn take(&self) -> Box<dyn PendingFlush> {
        Box::new(LogFlush {
            log: self.0.clone(),
            checkpoint: None,
        })
    }
}

impl PendingFlush for LogFlush {
    fn name(&self) -> &'static str {
        "access log"
    }

    fn write(&mut self) -> Result<(), StoreError> {
        self.checkpoint = self
            .log
            .write_pending()
            .map_err(|e| StoreError::Database(e.0))?;
        Ok(())
    }

    fn durable(self: Box<Self>) {
        let Some(checkpoint) = self.checkpoint else {
            return;
        };
        let mut durable = self
            .log
            .durable_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if durable.as_ref().is_none_or(|d| d.seq < checkpoint.seq) {
            *durable = Some(checkpoint);
        }
    }
}

/// One stored row's entries: (number, sealed entry). A row of an earlier release holds one.
pub fn decode_row(key: &[u8], value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        kind: "access_log",
        reason: reason.to_owned(),
    };
    let first = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("malformed key"))?;
    let Some((&GROUP_TAG, rest)) = value.split_first() else {
        return Ok(vec![(first, value.to_vec())]);
    };
    let (count, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("truncated row"))?;
    let count = u32::from_be_bytes(*count);
    // The count comes from disk: never reserve more than the row's bytes could hold.
    let mut out = Vec::with_capacity((count as usize).min(rest.len() / 4));
    for i in 0..u64::from(count) {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated row"))?;
        let (sealed, after) = after
            .split_at_checked(u32::from_be_bytes(*len) as usize)
            .ok_or_else(|| corrupt("truncated row"))?;
        let seq = first
            .checked_add(i)
            .ok_or_else(|| corrupt("entry numbers past the end"))?;
        out.push((seq, sealed.to_vec()));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes after the last entry"));
    }
    Ok(out)
}

/// A row of these sealed entries, in order.
pub fn encode_row<E: AsRef<[u8]>>(sealed: &[E]) -> Vec<u8> {
    let mut row =
        Vec::with_capacity(5 + sealed.iter().map(|s| s.as_ref().len() + 4).sum::<usize>());
    row.push(GROUP_TAG);
    row.extend_from_slice(
        &u32::try_from(sealed.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for entry in sealed {
        let entry = entry.as_ref();
        row.extend_from_slice(&u32::try_from(entry.len()).unwrap_or(u32::MAX).to_be_bytes());
        row.extend_from_slice(entry);
    }
    row
}

/// The latest checkpoint, kept outside the database too: a log cut back to before it (trees
/// deleted or truncated together with their checkpoints) no longer reaches it, and verify says
/// so. Written atomically, at most once per [`CHECKPOINT_INTERVAL_MS`] and at shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// The checkpoint's entry.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// When it was signed.
    pub at_ms: u64,
    /// The checkpoint's signature (hex).
    pub signature: String,
}

/// The head file's name in the data directory.
pub const HEAD_FILE: &str = "access-log.head";

/// Reads the head record, if there is one.
pub fn read_head(dir: &Path) -> Result<Option<Checkpoint>, String> {
    let path = dir.join(HEAD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let record: HeadRecord =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let hash = hex::decode(&record.hash)
        .ok()
        .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .ok_or_else(|| format!("{}: malformed hash", path.display()))?;
    let signature =
        hex::decode(&record.signature).map_err(|_| format!("{}: malformed", path.display()))?;
    Ok(Some(Checkpoint {
        seq: record.seq,
        hash,
        at_ms: record.at_ms,
        signature,
    }))
}

/// Why the log could not be opened or its key read.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The database failed.
    #[error("access log database error: {0}")]
    Database(String),
    /// The key file is missing or unreadable.
    #[error("access log key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Reads the signing key, creating it (0600) and its public half if there is none yet.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, AccessLogError> {
    let path = dir.join("access-log.key");
    let key_error = |reason: String| AccessLogError::Key {
        path: path.display().to_string(),
        reason,
    };
    if path.exists() {
        let hex = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path).map_err(|e| key_error(e.to_string()))?,
        );
        let bytes =
            zeroize::Zeroizing::new(hex::decode(hex.trim()).map_err(|e| key_error(e.to_string()))?);
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| key_error("not a 32-byte key".to_owned()))?;
        let key = SigningKey::from_bytes(&seed);
        // The public half is derived, so a crash between the two writes heals here.
        let public = dir.join("access-log.pub");
        if !public.exists() {
            crate::keyring::write_atomically(
                &public,
                hex::encode(key.verifying_key().to_bytes()).as_bytes(),
            )
            .map_err(|e| key_error(e.to_string()))?;
        }
        return Ok(key);
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(|e| key_error(e.to_string()))?;
    std::io::Write::write_all(
        &mut file,
        zeroize::Zeroizing::new(hex::encode(key.to_bytes())).as_bytes(),
    )
    .map_err(|e| key_error(e.to_string()))?;
    file.sync_all().map_err(|e| key_error(e.to_string()))?;
    crate::keyring::write_atomically(
        &dir.join("access-log.pub"),
        hex::encode(key.verifying_key().to_bytes()).as_bytes(),
    )
    .map_err(|e| key_error(e.to_string()))?;
    Ok(key)
}

/// Reads the public key that verifies checkpoints.
pub fn load_public_key(dir: &Path) -> Result<VerifyingKey, AccessLogError> {
    let path = dir.join("access-log.pub");
    let key_error = |reason: String| AccessLogError::Key {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| key_error(e.to_string()))?;
    let bytes = hex::decode(text.trim()).map_err(|e| key_error(e.to_string()))?;
    let array: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| key_error("not a 32-byte key".to_owned()))?;
    VerifyingKey::from_bytes(&array).map_err(|e| key_error(e.to_string()))
}

fn db_error(error: impl std::fmt::Display) -> AccessLogError {
    AccessLogError::Database(error.to_string())
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sealed trees of one database: what both the live log and the offline tools read.
struct Trees<'a> {
    entries: &'a sled::Tree,
    checkpoints: &'a sled::Tree,
    meta: &'a sled::Tree,
    codec: &'a Codec,
}

impl Trees<'_> {
    fn entry(&self, key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
        self.codec.open("access_log", key, value)
    }

    fn entry_at(&self, seq: u64) -> Result<Option<Entry>, StoreError> {
        let Some((key, value)) = self
            .entries
            .range(..=seq_key(seq))
            .next_back()
            .transpose()
            .map_err(|e| StoreError::Database(e.to_string()))?
        else {
            return Ok(None);
        };
        match decode_row(&key, &value)?
            .into_iter()
            .find(|(s, _)| *s == seq)
        {
            Some((_, sealed)) => self.entry(&seq_key(seq), &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// The stored entries from `start` on, in order, as (number, sealed entry), row by row.
    fn stored_from(
        &self,
        start: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        let first_row = self
            .entries
            .range(..=seq_key(start))
            .next_back()
            .and_then(|r| r.ok())
            .map_or(start, |(k, _)| {
                <[u8; 8]>::try_from(k.as_ref()).map_or(start, u64::from_be_bytes)
            });
        self.entries
            .range(seq_key(first_row)..)
            .flat_map(move |item| {
                let rows = item
                    .map_err(|e| StoreError::Database(e.to_string()))
                    .and_then(|(key, value)| decode_row(&key, &value));
                match rows {
                    Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(error) => vec![Err(error)],
                }
            })
            .filter(move |item| item.as_ref().map_or(true, |(s, _)| *s >= start))
    }

    /// The last stored entry.
    fn last(&self) -> Result<Option<Entry>, StoreError> {
        let Some((key, value)) = self
            .entries
            .last()
            .map_err(|e| StoreError::Database(e.to_string()))?
        else {
            return Ok(None);
        };
        match decode_row(&key, &value)?.pop() {
            Some((seq, sealed)) => self.entry(&seq_key(seq), &sealed).map(Some),
            None => Ok(None),
        }
    }

    fn checkpoint(&self, key: &[u8], value: &[u8]) -> Result<Checkpoint, StoreError> {
        self.codec.open("access_checkpoint", key, value)
    }

    fn trimmed_through(&self) -> Result<u64, StoreError> {
        match self
            .meta
            .get(META_TRIMMED)
            .map_err(|e| StoreError::Database(e.to_string()))?
        {
            Some(value) => self.codec.open("access_trim", META_TRIMMED, &value),
            None => Ok(0),
        }
    }
}

impl AccessLog {
    /// Opens the log in `db`, continuing its chain. Entries of the unencrypted format of
    /// earlier releases are sealed once, in place (their hashes cover the body, not the
    /// storage, so the chain is unchanged).
    /// Its entries are written with the store's flushes.
    pub fn open(
        store: &SledStore,
        key: SigningKey,
        head_file: Option<std::path::PathBuf>,
        now_ms: u64,
    ) -> Result<std::sync::Arc<AccessLog>, AccessLogError> {
        let db = store.database();
        let codec = store.codec().clone();
        let entries = db.open_tree(ENTRIES).map_err(db_error)?;
        let checkpoints = db.open_tree(CHECKPOINTS).map_err(db_error)?;
        let meta = db.open_tree(META).map_err(db_error)?;
        migrate(&entries, &checkpoints, &meta, &codec)?;
        let trees = Trees {
            entries: &entries,
            checkpoints: &checkpoints,
            meta: &meta,
            codec: &codec,
        };
        let latest_checkpoint = match checkpoints.last().map_err(db_error)? {
            Some((k, v)) => Some(trees.checkpoint(&k, &v).map_err(db_error)?),
            None => None,
        };
        let (sealed, sealed_at_ms) = latest_checkpoint
            .as_ref()
            .map_or((0, 0), |c| (c.seq, c.at_ms));
        let head = match trees.last().map_err(db_error)? {
            Some(entry) => Head {
                seq: entry.body.seq,
                hash: entry.hash,
                sealed,
                sealed_at_ms,
                last_at_ms: entry.body.at_ms,
                pending: Vec::new(),
                written: (entry.body.seq, entry.hash, entry.body.at_ms),
                want_checkpoint: false,
                latest_checkpoint: latest_checkpoint.clone(),
            },
            None => {
                // Empty, or trimmed to nothing: continue from the anchor checkpoint.
                let trimmed = trees.trimmed_through().map_err(db_error)?;
                let hash = match checkpoints.get(seq_key(trimmed)).map_err(db_error)? {
                    Some(v) => {
                        trees
                            .checkpoint(&seq_key(trimmed), &v)
                            .map_err(db_error)?
                            .hash
                    }
                    None => [0; 32],
                };
                Head {
                    seq: trimmed,
                    hash,
                    sealed,
                    sealed_at_ms,
                    last_at_ms: sealed_at_ms,
                    pending: Vec::new(),
                    written: (trimmed, hash, sealed_at_ms),
                    want_checkpoint: false,
                    latest_checkpoint: latest_checkpoint.clone(),
                }
            }
        };
        let log = std::sync::Arc::new(AccessLog {
            entries,
            checkpoints,
            meta,
            codec,
            key,
            head: Mutex::new(head),
            broken: AtomicBool::new(false),
            head_file,
            head_written: Mutex::new(0),
            durable_checkpoint: Mutex::new(latest_checkpoint),
            writing: Mutex::new(()),
        });
        store.add_flush_hook(std::sync::Arc::new(LogHook(log.clone())));
        // A log always begins with this entry: an empty log is a deleted one.
        let empty = log.head.lock().map(|h| h.seq == 0).unwrap_or(false);
        if empty {
            log.record(&AuditEvent {
                at_ms: now_ms,
                actor: None,
                action: "access_log_start",
                objects: Vec::new(),
                outcome: Outcome::Allowed,
                source: std::net::IpAddr::from([127, 0, 0, 1]),
            })
            .map_err(|e| AccessLogError::Database(e.to_string()))?;
        }
        Ok(log)
    }

    /// Writes the latest checkpoint to the head file when it moved (atomically).
    fn write_head(&self) -> Result<(), AuditError> {
        let Some(path) = &self.head_file else {
            return Ok(());
        };
        // Only a checkpoint a flush has made durable: a head naming one that a crash then
        // loses would make `verify` report the log cut back.
        let Some(checkpoint) = self
            .durable_checkpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let mut written = self.head_written.lock().unwrap_or_else(|e| e.into_inner());
        if *written == checkpoint.seq {
            return Ok(());
        }
        let record = HeadRecord {
            seq: checkpoint.seq,
            hash: hex::encode(checkpoint.hash),
            at_ms: checkpoint.at_ms,
            signature: hex::encode(&checkpoint.signature),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| AuditError(e.to_string()))?;
        crate::keyring::write_atomically(path, &bytes).map_err(|e| AuditError(e.to_string()))?;
        *written = checkpoint.seq;
        Ok(())
    }

    fn trees(&self) -> Trees<'_> {
        Trees {
            entries: &self.entries,
            checkpoints: &self.checkpoints,
            meta: &self.meta,
            codec: &self.codec,
        }
    }

    /// Signs and stores a checkpoint over the last entry written.
    fn write_checkpoint(&self, head: &mut Head, at_ms: u64) -> Result<(), AuditError> {
        let (seq, hash, _) = head.written;
        if seq == head.sealed {
            return Ok(());
        }
        let signature = self.key.sign(&checkpoint_message(seq, &hash, at_ms));
        let checkpoint = Checkpoint {
            seq,
            hash,
            at_ms,
            signature: signature.to_bytes().to_vec(),
        };
        let key = seq_key(seq);
        let bytes = self
            .codec
            .seal("access_checkpoint", Scope::Standing, &key, &checkpoint)
            .map_err(|e| AuditError(e.to_string()))?;
        self.checkpoints
            .insert(key, bytes)
            .map_err(|e| AuditError(e.to_string()))?;
        head.sealed = seq;
        head.sealed_at_ms = at_ms;
        head.latest_checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Asks for a checkpoint at the end of the next flush's write (at shutdown: flush the
    /// store, then [`AccessLog::write_head`]).
    pub fn request_checkpoint(&self) {
        self.head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .want_checkpoint = true;
    }

    /// Tests only: makes every write fail (or succeed again), as a full disk would.
    pub fn set_failing(&self, failing: bool) {
        self.broken.store(failing, Ordering::SeqCst);
    }

    fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if self.broken.load(Ordering::SeqCst) {
            return Err(AuditError("the access log is not writable".to_owned()));
        }
        // Time in the log never runs backwards (events are timed before they queue here).
        let at_ms = event.at_ms.max(head.last_at_ms);
        let (mut org, mut user, mut device) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        let actor = match &event.actor {
            Some(a) => Some((
                hex_of(a.org.as_bytes(), &mut org)?,
                hex_of(a.user.as_bytes(), &mut user)?,
                hex_of(a.device.as_bytes(), &mut device)?,
                a.role.as_str(),
            )),
            None => None,
        };
        let mut source = std::io::Cursor::new([0u8; 64]);
        std::io::Write::write_fmt(&mut source, format_args!("{}", event.source))
            .map_err(|e| AuditError(e.to_string()))?;
        let source_len = usize::try_from(source.position()).unwrap_or(0);
        let source = source
            .get_ref()
            .get(..source_len)
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or_else(|| AuditError("unprintable source address".to_owned()))?;
        let body = EntryBodyRef {
            seq: head.seq + 1,
            prev_hash: head.hash,
            at_ms,
            actor,
            action: event.action,
            objects: &event.objects,
            outcome: match event.outcome {
                Outcome::Allowed => "allowed",
                Outcome::Denied(code) => code.as_str(),
            },
            source,
        };
        let size = entry_size(&body);
        let (hash, encoded) = encode_entry(&body, size).map_err(AuditError)?;
        let seq = body.seq;
        // A new day starts in a new row, behind a checkpoint: retention trims whole days.
        let new_day = seq > 1 && day_of(at_ms) != day_of(head.last_at_ms);
        let new_row = match head.pending.last_mut() {
            Some(row) if new_day => {
                row.day_ends = true;
                true
            }
            Some(row) => row.entries.len() >= ENTRIES_PER_ROW || row.bytes + size > ROW_BYTES,
            None => true,
        };
        if new_row {
            head.pending.push(PendingRow::default());
            if new_day && head.pending.len() == 1 {
                // The day's last entries are written already: seal them first.
                head.want_checkpoint = true;
            }
        }
        // Sealed now, on the request's thread: the flush only writes rows.
        let scope = Scope::Audit { day: day_of(at_ms) };
        let sealed = self
            .codec
            .seal_raw("access_log", scope, &seq_key(seq), &encoded)
            .map_err(|e| AuditError(e.to_string()))?;
        if let Some(row) = head.pending.last_mut() {
            row.bytes += size;
            row.entries.push(SealedEntry {
                seq,
                hash,
                at_ms,
                sealed,
            });
        }
        head.seq = seq;
        head.hash = hash;
        head.last_at_ms = at_ms;
        Ok(())
    }

    /// Writes every row recorded so far to the database, in order, with the checkpoints due,
    /// and returns the latest checkpoint written. Called by each flush, and at once for a
    /// request that changed records outside the mail log (so its entry is in the database
    /// before a flush can make the change durable). A failure breaks the log.
    fn write_pending(&self) -> Result<Option<Checkpoint>, AuditError> {
        let _in_order = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let rows = std::mem::take(&mut self.head.lock().unwrap_or_else(|e| e.into_inner()).pending);
        if let Err(error) = self.write_rows(rows) {
            self.broken.store(true, Ordering::SeqCst);
            return Err(error);
        }
        Ok(self
            .head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latest_checkpoint
            .clone())
    }

    /// Writes rows of recorded entries and the checkpoints due.
    fn write_rows(&self, rows: Vec<PendingRow>) -> Result<(), AuditError> {
        let error = |e: &dyn std::fmt::Display| AuditError(e.to_string());
        if self.broken.load(Ordering::SeqCst) && !rows.is_empty() {
            return Err(AuditError("the access log is not writable".to_owned()));
        }
        {
            // A checkpoint asked for before these rows (a day ended with the rows written
            // before) seals what was written already.
            let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
            let day_sealed_first = head.want_checkpoint
                && rows
                    .first()
                    .and_then(|r| r.entries.first())
                    .is_some_and(|e| day_of(e.at_ms) != day_of(head.written.2));
            if day_sealed_first {
                let at = head.written.2;
                self.write_checkpoint(&mut head, at)?;
            }
        }
        for row in rows {
            let Some(first) = row.entries.first().map(|e| e.seq) else {
                continue;
            };
            let sealed: Vec<&[u8]> = row.entries.iter().map(|e| e.sealed.as_slice()).collect();
            self.entries
                .insert(seq_key(first), encode_row(&sealed))
                .map_err(|e| error(&e))?;
            let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = row.entries.last() {
                head.written = (last.seq, last.hash, last.at_ms);
            }
            if row.day_ends {
                let at = head.written.2;
                self.write_checkpoint(&mut head, at)?;
            }
        }
        // The count and the interval are checked once, after the last row: every row of this
        // write becomes durable with the same flush, so a checkpoint between them would seal
        // nothing sooner than one at the end, which seals them all for one signature.
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let (seq, _, at) = head.written;
        if seq.saturating_sub(head.sealed) >= CHECKPOINT_EVERY
            || at.saturating_sub(head.sealed_at_ms) >= CHECKPOINT_INTERVAL_MS
        {
            self.write_checkpoint(&mut head, at)?;
        }
        if head.want_checkpoint {
            head.want_checkpoint = false;
            let at = head.written.2.max(head.last_at_ms);
            self.write_checkpoint(&mut head, at)?;
        }
        Ok(())
    }

    /// Records the latest checkpoint outside the database, if it moved (call after a flush
    /// made it durable: the sweeper does every second, shutdown once).
    pub fn write_head_file(&self) -> Result<(), AuditError> {
        self.write_head()
    }

    /// Verifies the live log now.
    pub fn verify_now(&self) -> Result<Verified, Broken> {
        let head = match self.head_file.as_deref().and_then(Path::parent) {
            Some(dir) => read_head(dir).map_err(|reason| Broken { seq: 0, reason })?,
            None => None,
        };
        verify_trees(&self.trees(), &self.key.verifying_key(), head.as_ref())
    }
}

/// Seals entries and checkpoints written unencrypted by an earlier release. A value is taken
/// as legacy only if it does not open as a sealed record, parses as exactly one legacy record
/// with nothing left over, and (entries) its hash is right: so running again after a crash
/// never touches what was sealed already.
fn migrate(
    entries: &sled::Tree,
    checkpoints: &sled::Tree,
    meta: &sled::Tree,
    codec: &Codec,
) -> Result<(), AccessLogError> {
    if meta.get(META_FORMAT).map_err(db_error)?.is_some() {
        return Ok(());
    }
    fn legacy<T: serde::de::DeserializeOwned>(value: &[u8]) -> Option<T> {
        match postcard::take_from_bytes::<T>(value) {
            Ok((record, [])) => Some(record),
            _ => None,
        }
    }
    for item in entries.iter() {
        let (key, value) = item.map_err(db_error)?;
        // (No grouped row exists before this migration: a legacy entry whose first byte
        // happens to be the group tag, number 71, is an entry like any other.)
        if codec.open::<Entry>("access_log", &key, &value).is_ok() {
            continue;
        }
        let Some(entry) = legacy::<Entry>(&value) else {
            continue;
        };
        if entry_hash(&entry.body).ok() != Some(entry.hash) {
            continue;
        }
        let scope = Scope::Audit {
            day: day_of(entry.body.at_ms),
        };
        let sealed = codec
            .seal("access_log", scope, &key, &entry)
            .map_err(db_error)?;
        entries.insert(key, sealed).map_err(db_error)?;
    }
    for item in checkpoints.iter() {
        let (key, value) = item.map_err(db_error)?;
        if codec
            .open::<Checkpoint>("access_checkpoint", &key, &value)
            .is_ok()
        {
            continue;
        }
        let Some(checkpoint) = legacy::<Checkpoint>(&value) else {
            continue;
        };
        if checkpoint.signature.len() != 64 {
            continue;
        }
        let sealed = codec
            .seal("access_checkpoint", Scope::Standing, &key, &checkpoint)
            .map_err(db_error)?;
        checkpoints.insert(key, sealed).map_err(db_error)?;
    }
    meta.insert(META_FORMAT, &[2u8][..]).map_err(db_error)?;
    Ok(())
}

impl AuditSink for AccessLog {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        // An entry names at most as many objects as an export shows: a request naming more
        // (an acknowledgement of 256 messages) becomes several entries, none of them clipped.
        let result = if event.objects.len() <= medrelay_proto::limits::MAX_AUDIT_OBJECTS {
            self.append(event)
        } else {
            event
                .objects
                .chunks(medrelay_proto::limits::MAX_AUDIT_OBJECTS)
                .try_for_each(|objects| {
                    self.append(&AuditEvent {
                        objects: objects.to_vec(),
                        ..event.clone()
                    })
                })
        };
        if result.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        result
    }

    fn record_now(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.record(event)?;
        self.write_pending().map(|_| ())
    }

    fn ready(&self) -> Result<(), AuditError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(AuditError(
                "the access log cannot be written, so nothing is served until it can (see the \
                 server's log, then restart it)"
                    .to_owned(),
            ))
        } else {
            Ok(())
        }
    }

    fn seal_idle(&self, now_ms: u64) -> Result<(), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if head.seq > head.sealed
            && now_ms.saturating_sub(head.last_at_ms) >= CHECKPOINT_INTERVAL_MS / 60
        {
            head.want_checkpoint = true;
        }
        Ok(())
    }

    fn record_head(&self) -> Result<(), AuditError> {
        self.write_head()
    }

    fn verify(&self) -> Result<AccessLogStatus, AuditError> {
        Ok(match self.verify_now() {
            Ok(v) => AccessLogStatus {
                entries: v.entries,
                checkpoints: v.checkpoints,
                unsealed: v.unsealed,
                broken: None,
            },
            Err(b) => AccessLogStatus {
                entries: 0,
                checkpoints: 0,
                unsealed: 0,
                broken: Some((b.seq, b.reason)),
            },
        })
    }

    fn export(&self, org: &OrgId, filter: &AccessLogFilter) -> Result<AccessLogPage, AuditError> {
        let trees = self.trees();
        let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
        let start = filter.after_seq.saturating_add(1);
        let org = org.to_string();
        let org_marker = format!("org={org}");
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut next_after_seq = filter.after_seq;
        let mut done = true;
        for (scanned, item) in trees.stored_from(start).enumerate() {
            // Bounded work per request: the log is shared by every org, so a sparse filter
            // would otherwise read all of it at once.
            if entries.len() == limit || bytes > EXPORT_PAGE_BYTES || scanned == EXPORT_SCAN_ROWS {
                done = false;
                break;
            }
            let (seq, sealed) = item.map_err(|e| AuditError(e.to_string()))?;
            next_after_seq = seq;
            let entry = match trees.entry(&seq_key(seq), &sealed) {
                Ok(entry) => entry,
                Err(StoreError::Shredded { .. }) => continue,
                Err(e) => return Err(AuditError(e.to_string())),
            };
            let exported = exported_entry(&entry);
            let mine =
                match &entry.body.actor {
                    Some(actor) => actor.0 == org,
                    // The server's own entries: an org sees those about it and the server-wide
                    // ones (the access log's own trims and counts).
                    None => {
                        SYSTEM_ACTIONS.contains(&entry.body.action.as_str())
                            && entry.body.objects.first().is_none_or(|first| {
                                !first.starts_with("org=") || first == &org_marker
                            })
                    }
                };
            if !mine || !filter.matches(exported.at_ms, &exported.action, exported.user_id.as_ref())
            {
                continue;
            }
            bytes += 160
                + exported.action.len()
                + exported.outcome.len()
                + exported.source.len()
                + exported.objects.iter().map(|o| o.len() + 2).sum::<usize>();
            entries.push(exported);
        }
        Ok(AccessLogPage {
            entries,
            done,
            next_after_seq,
        })
    }

    fn expire_before(&self, before_ms: u64, now_ms: u64) -> Result<(u64, Vec<KeyId>), AuditError> {
        let error = |e: &dyn std::fmt::Display| AuditError(e.to_string());
        let trees = self.trees();
        let trimmed = trees.trimmed_through().map_err(|e| error(&e))?;
        // The last checkpoint whose entry is older than the cutoff: everything up to it goes.
        let mut through = None;
        for item in self.checkpoints.range(seq_key(trimmed.saturating_add(1))..) {
            let (key, value) = item.map_err(|e| error(&e))?;
            let checkpoint = trees.checkpoint(&key, &value).map_err(|e| error(&e))?;
            match trees.entry_at(checkpoint.seq).map_err(|e| error(&e))? {
                Some(entry) if entry.body.at_ms < before_ms => through = Some(checkpoint.seq),
                _ => break,
            }
        }
        let mut deleted = 0u64;
        if let Some(through) = through {
            // Announce the trim in the chain first: a crash after this line and before the
            // deletion leaves a whole log; the next sweep deletes.
            self.record(&AuditEvent {
                at_ms: now_ms,
                actor: None,
                action: "access_log_trim",
                objects: vec![format!("through={through}")],
                outcome: Outcome::Allowed,
                source: std::net::IpAddr::from([127, 0, 0, 1]),
            })?;
            let anchor = self
                .codec
                .seal("access_trim", Scope::Standing, META_TRIMMED, &through)
                .map_err(|e| error(&e))?;
            // Whole rows up to the checkpoint (checkpoints fall at the end of a row).
            let mut old_entries = sled::Batch::default();
            for item in self.entries.range(..=seq_key(through)) {
                let (key, value) = item.map_err(|e| error(&e))?;
                let row = decode_row(&key, &value).map_err(|e| error(&e))?;
                if row.last().is_some_and(|(seq, _)| *seq <= through) {
                    deleted += row.len() as u64;
                    old_entries.remove(key);
                }
            }
            let mut old_checkpoints = sled::Batch::default();
            for key in self.checkpoints.range(..seq_key(through)).keys() {
                old_checkpoints.remove(key.map_err(|e| error(&e))?);
            }
            use sled::Transactional;
            (&self.entries, &self.checkpoints, &self.meta)
                .transaction(|(entries, checkpoints, meta)| {
                    entries.apply_batch(&old_entries)?;
                    checkpoints.apply_batch(&old_checkpoints)?;
                    meta.insert(META_TRIMMED, anchor.as_slice())?;
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| AuditError(format!("{e:?}")))?;
        }
        // The days' keys that no remaining entry needs.
        let mut in_use = HashSet::new();
        for item in trees.stored_from(0) {
            let (_, sealed) = item.map_err(|e| error(&e))?;
            if let Some(id) = key_id_of(&sealed) {
                in_use.insert(id);
            }
        }
        let cutoff_day = day_of(before_ms);
        let unneeded = self
            .codec
            .keyring()
            .scopes()
            .into_iter()
            .filter(|(id, scope)| {
                matches!(scope, Scope::Audit { day } if *day < cutoff_day) && !in_use.contains(id)
            })
            .map(|(id, _)| id)
            .collect();
        Ok((deleted, unneeded))
    }
}

fn exported_entry(entry: &Entry) -> AccessLogEntry {
    let body = &entry.body;
    let (user_id, device_id, role) = match &body.actor {
        Some((_, user, device, role)) => (
            user.parse::<UserId>().ok(),
            device.parse::<DeviceId>().ok(),
            [Role::Patient, Role::Staff, Role::Admin]
                .into_iter()
                .find(|r| r.as_str() == role),
        ),
        None => (None, None, None),
    };
    let clip = |text: &str| -> String {
        text.chars()
            .take(medrelay_proto::limits::MAX_AUDIT_TEXT_LEN)
            .collect()
    };
    AccessLogEntry {
        seq: body.seq,
        at_ms: body.at_ms,
        user_id,
        device_id,
        role,
        action: clip(&body.action),
        objects: body
            .objects
            .iter()
            .take(medrelay_proto::limits::MAX_AUDIT_OBJECTS)
            .map(|o| clip(o))
            .collect(),
        outcome: clip(&body.outcome),
        source: clip(&body.source),
        hash: entry.hash,
    }
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// Entries after the last checkpoint (not yet sealed).
    pub unsealed: u64,
    /// Entries before this one were removed by retention (0: none).
    pub trimmed_through: u64,
}

/// The first problem found, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access log broken at entry {seq}: {reason}")]
pub struct Broken {
    /// The first entry (or checkpoint position) that fails.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

fn checkpoint_signed(checkpoint: &Checkpoint, public_key: &VerifyingKey) -> bool {
    Signature::from_slice(&checkpoint.signature).is_ok_and(|signature| {
        public_key
            .verify(
                &checkpoint_message(checkpoint.seq, &checkpoint.hash, checkpoint.at_ms),
                &signature,
            )
            .is_ok()
    })
}

/// Checks the whole chain and every checkpoint, offline; and that the chain still reaches the
/// checkpoint recorded outside the database (`head`), when there is one.
pub fn verify(
    db: &sled::Db,
    codec: &Codec,
    public_key: &VerifyingKey,
    head: Option<&Checkpoint>,
) -> Result<Verified, Broken> {
    let broken = |seq: u64, reason: &str| Broken {
        seq,
        reason: reason.to_owned(),
    };
    let open = |name: &str| db.open_tree(name).map_err(|e| broken(0, &e.to_string()));
    let (entries, checkpoints, meta) = (open(ENTRIES)?, open(CHECKPOINTS)?, open(META)?);
    verify_trees(
        &Trees {
            entries: &entries,
            checkpoints: &checkpoints,
            meta: &meta,
            codec,
        },
        public_key,
        head,
    )
}

fn verify_trees(
    trees: &Trees<'_>,
    public_key: &VerifyingKey,
    head: Option<&Checkpoint>,
) -> Result<Verified, Broken> {
    let broken = |seq: u64, reason: &str| Broken {
        seq,
        reason: reason.to_owned(),
    };
    let trimmed = trees
        .trimmed_through()
        .map_err(|_| broken(1, "the retention anchor is unreadable (changed on disk)"))?;
    let mut prev = [0u8; 32];
    if trimmed > 0 {
        let anchor = trees
            .checkpoints
            .get(seq_key(trimmed))
            .map_err(|e| broken(trimmed, &e.to_string()))?
            .and_then(|v| trees.checkpoint(&seq_key(trimmed), &v).ok())
            .ok_or_else(|| {
                broken(
                    trimmed,
                    "the checkpoint anchoring the trimmed log is missing",
                )
            })?;
        if anchor.seq != trimmed || !checkpoint_signed(&anchor, public_key) {
            return Err(broken(
                trimmed,
                "the checkpoint anchoring the trimmed log does not verify",
            ));
        }
        prev = anchor.hash;
    }
    let mut expected = trimmed + 1;
    let mut trim_recorded = trimmed == 0;
    let trim_marker = format!("through={trimmed}");
    for item in trees.entries.iter() {
        let (key, value) = item.map_err(|e| broken(expected, &e.to_string()))?;
        let row = decode_row(&key, &value)
            .map_err(|_| broken(expected, "unreadable (changed on disk)"))?;
        if row.first().is_some_and(|(first, _)| *first != expected) {
            return Err(broken(
                expected,
                "missing (deleted, or the log was reordered)",
            ));
        }
        for (key_seq, value) in row {
            let key = seq_key(key_seq);
            let entry = match trees.entry(&key, &value) {
                Ok(entry) => entry,
                Err(StoreError::Shredded { .. }) => {
                    return Err(broken(
                        expected,
                        "its key was destroyed but the entry remains",
                    ))
                }
                Err(_) => return Err(broken(expected, "unreadable (changed on disk, or moved)")),
            };
            if entry.body.seq != expected {
                return Err(broken(expected, "out of place (entries were reordered)"));
            }
            if entry.body.prev_hash != prev {
                return Err(broken(
                    expected,
                    "does not follow the entry before it (changed, removed or reordered)",
                ));
            }
            if entry_hash(&entry.body).map_err(|e| broken(expected, &e))? != entry.hash {
                return Err(broken(expected, "changed since it was written"));
            }
            if entry.body.action == "access_log_trim" && entry.body.objects.contains(&trim_marker) {
                trim_recorded = true;
            }
            prev = entry.hash;
            expected += 1;
        }
    }
    if !trim_recorded {
        return Err(broken(
            trimmed + 1,
            "entries before this one were removed without a retention record",
        ));
    }
    let last = expected - 1;
    if last == 0 {
        return Err(broken(
            1,
            "the log is empty, but every log begins with an access_log_start entry (deleted)",
        ));
    }
    let mut sealed = trimmed;
    let mut count = 0u64;
    for item in trees.checkpoints.iter() {
        let (key, value) = item.map_err(|e| broken(last, &e.to_string()))?;
        let checkpoint = trees
            .checkpoint(&key, &value)
            .map_err(|_| broken(last, "a checkpoint is unreadable"))?;
        if !checkpoint_signed(&checkpoint, public_key) {
            return Err(broken(
                checkpoint.seq,
                "a checkpoint's signature does not verify",
            ));
        }
        count += 1;
        if checkpoint.seq <= trimmed {
            continue;
        }
        match trees.entry_at(checkpoint.seq) {
            Ok(Some(entry)) if entry.hash == checkpoint.hash => {}
            Ok(Some(_)) => {
                return Err(broken(
                    checkpoint.seq,
                    "differs from what the signed checkpoint sealed (the log was rewritten)",
                ))
            }
            Ok(None) => {
                return Err(broken(
                    checkpoint.seq,
                    "is sealed by a signed checkpoint but missing (the log was truncated)",
                ))
            }
            Err(_) => return Err(broken(checkpoint.seq, "unreadable (changed on disk)")),
        }
        sealed = sealed.max(checkpoint.seq);
    }
    if let Some(head) = head {
        if !checkpoint_signed(head, public_key) {
            return Err(broken(
                head.seq,
                "the checkpoint recorded outside the database (access-log.head) does not verify",
            ));
        }
        let reached = head.seq <= trimmed
            || matches!(trees.entry_at(head.seq), Ok(Some(entry)) if entry.hash == head.hash);
        if !reached {
            return Err(broken(
                head.seq,
                "the log no longer reaches the checkpoint recorded outside the database \
                 (access-log.head): it was truncated or rewritten",
            ));
        }
    }
    Ok(Verified {
        entries: last - trimmed,
        checkpoints: count,
        unsealed: last - sealed,
        trimmed_through: trimmed,
    })
}

/// Every entry, in order (for the offline export).
pub fn entries(db: &sled::Db, codec: &Codec) -> Result<Vec<Entry>, AccessLogError> {
    let tree = db.open_tree(ENTRIES).map_err(db_error)?;
    let mut out = Vec::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(db_error)?;
        for (seq, sealed) in decode_row(&key, &value).map_err(db_error)? {
            match codec.open("access_log", &seq_key(seq), &sealed) {
                Ok(entry) => out.push(entry),
                // Past retention, its day's key destroyed: nothing left to export.
                Err(StoreError::Shredded { .. }) => {}
                Err(error) => return Err(db_error(error)),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod encoding_tests {
    use super::*;
    use crate::store::Store;
    use std::sync::Arc;

    #[test]
    fn an_entry_is_encoded_once_as_it_always_was() {
        let body = EntryBody {
            seq: 7,
            prev_hash: [3; 32],
            at_ms: 1_700_000_000_000,
            actor: Some((
                "a".repeat(32),
                "b".repeat(32),
                "c".repeat(32),
                "staff".to_owned(),
            )),
            action: "send".to_owned(),
            objects: vec!["d".repeat(32)],
            outcome: "allowed".to_owned(),
            source: "127.0.0.1".to_owned(),
        };
        let (hash, encoded) = encode_entry(&body, 0).unwrap();
        assert_eq!(hash, entry_hash(&body).unwrap());
        assert_eq!(
            encoded,
            postcard::to_allocvec(&Entry { body, hash }).unwrap()
        );
    }

    /// What `append` encodes, borrowed, is byte for byte the stored body.
    #[test]
    fn a_borrowed_body_encodes_as_the_stored_one() {
        for (actor, objects) in [
            (None, Vec::new()),
            (
                Some((
                    "a".repeat(32),
                    "b".repeat(32),
                    "c".repeat(32),
                    "patient".to_owned(),
                )),
                (0..40).map(|i| format!("{i:032x}")).collect(),
            ),
        ] {
            let body = EntryBody {
                seq: 300,
                prev_hash: [9; 32],
                at_ms: 1_700_000_000_123,
                actor: actor.clone(),
                action: "delivery".to_owned(),
                objects: objects.clone(),
                outcome: "FORBIDDEN".to_owned(),
                source: "2001:db8::1".to_owned(),
            };
            let borrowed = EntryBodyRef {
                seq: 300,
                prev_hash: [9; 32],
                at_ms: 1_700_000_000_123,
                actor: actor
                    .as_ref()
                    .map(|(o, u, d, r)| (o.as_str(), u.as_str(), d.as_str(), r.as_str())),
                action: "delivery",
                objects: &objects,
                outcome: "FORBIDDEN",
                source: "2001:db8::1",
            };
            assert_eq!(
                encode_entry(&borrowed, 0).unwrap(),
                encode_entry(&body, 0).unwrap()
            );
        }
        let mut buffer = [0u8; 32];
        assert_eq!(
            hex_of(&[0xab; 16], &mut buffer).unwrap(),
            medrelay_proto::OrgId::from([0xab; 16]).to_string()
        );
    }

    #[test]
    fn a_damaged_row_is_reported_not_believed() {
        let row = encode_row(&[b"first".as_slice(), b"second".as_slice()]);
        let key = seq_key(9);
        assert_eq!(
            decode_row(&key, &row).unwrap(),
            vec![(9, b"first".to_vec()), (10, b"second".to_vec())]
        );
        // A count flipped to four billion: an error, not an allocation of 100 GiB.
        let mut huge = row.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_row(&key, &huge),
            Err(StoreError::Corrupt { .. })
        ));
        // Numbers that would run past the last one.
        assert!(matches!(
            decode_row(&seq_key(u64::MAX), &row),
            Err(StoreError::Corrupt { .. })
        ));
        for cut in 1..row.len() {
            assert!(decode_row(&key, &row[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = row.clone();
        longer.push(0);
        assert!(decode_row(&key, &longer).is_err());
    }

    fn event(action: &'static str) -> AuditEvent {
        AuditEvent {
            at_ms: 1_700_000_000_000,
            actor: None,
            action,
            objects: Vec::new(),
            outcome: Outcome::Allowed,
            source: std::net::IpAddr::from([127, 0, 0, 1]),
        }
    }

    fn open_log(dir: &Path) -> (Arc<SledStore>, Arc<AccessLog>) {
        let keyring =
            crate::keyring::Keyring::open(&dir.join("keyring"), &dir.join("master.key")).unwrap();
        let store = Arc::new(SledStore::open(&dir.join("db"), Arc::new(keyring)).unwrap());
        let log = AccessLog::open(
            &store,
            SigningKey::from_bytes(&[7; 32]),
            Some(dir.join(HEAD_FILE)),
            1_700_000_000_000,
        )
        .unwrap();
        (store, log)
    }

    #[tokio::test]
    async fn the_head_file_names_only_a_checkpoint_a_flush_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = open_log(dir.path());
        store.sync().await.unwrap();
        log.request_checkpoint();
        store.sync().await.unwrap();
        log.write_head_file().unwrap();
        let first = read_head(dir.path()).unwrap().unwrap();
        // A checkpoint written to the database by a flush that has not finished yet (the
        // rows are in, sled's own flush is not): the head file must not name it.
        log.record(&event("ping")).unwrap();
        log.request_checkpoint();
        let written = log.write_pending().unwrap().unwrap();
        assert!(written.seq > first.seq);
        log.write_head_file().unwrap();
        assert_eq!(read_head(dir.path()).unwrap().unwrap(), first);
        // Once a flush covers it, it may.
        store.sync().await.unwrap();
        log.write_head_file().unwrap();
        assert_eq!(read_head(dir.path()).unwrap().unwrap(), written);
    }

    #[tokio::test]
    async fn a_flush_of_many_rows_ends_with_one_checkpoint_over_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = open_log(dir.path());
        store.sync().await.unwrap();
        let before = log.verify_now().unwrap();
        let rows = || store.database().open_tree(ENTRIES).unwrap().len();
        let rows_before = rows();
        for _ in 0..5 * CHECKPOINT_EVERY {
            log.record(&event("read_messages")).unwrap();
        }
        store.sync().await.unwrap();
        let after = log.verify_now().unwrap();
        assert!(
            rows() >= rows_before + 3,
            "the flush wrote {} rows",
            rows() - rows_before
        );
        assert_eq!(after.entries, before.entries + 5 * CHECKPOINT_EVERY);
        assert_eq!(after.checkpoints, before.checkpoints + 1);
        assert_eq!(
            after.unsealed, 0,
            "the checkpoint seals the flush's last entry"
        );
    }

    #[tokio::test]
    async fn an_entry_recorded_now_is_in_the_database_before_any_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = open_log(dir.path());
        store.sync().await.unwrap();
        let stored = |log: &AccessLog| log.trees().last().unwrap().map(|e| e.body.action);
        log.record(&event("list_users")).unwrap();
        assert_eq!(stored(&log).as_deref(), Some("access_log_start"));
        log.record_now(&event("revoke_device")).unwrap();
        assert_eq!(stored(&log).as_deref(), Some("revoke_device"));
        store.sync().await.unwrap();
        let entries = entries(store.database(), store.codec()).unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e.body.action.as_str()).collect();
        assert_eq!(actions, ["access_log_start", "list_users", "revoke_device"]);
    }
}
