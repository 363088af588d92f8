//! The access log: every decision, append-only, hash-chained and sealed by signed checkpoints.
//!
//! Each entry carries its sequence number and the SHA-256 of the entry before it; its own hash
//! covers both and its body (`medrelay-access-log-v1\0 || postcard(body)`), so changing,
//! deleting or reordering any entry breaks the chain at that entry. Every
//! [`CHECKPOINT_EVERY`] entries, and at shutdown, an Ed25519 checkpoint signs (sequence, hash,
//! time) with the log's own key (`DIR/access-log.key`, 0600; its public half beside it), so a
//! log cut short before a checkpoint is caught too. [`verify`] runs offline on the database
//! files. Entries hold pseudonymous ids, actions and outcomes: never content, keys or handles.

use std::path::Path;
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditError, AuditEvent, AuditSink, Outcome};

/// Entries between two checkpoints.
pub const CHECKPOINT_EVERY: u64 = 64;
/// Domain label of entry hashes.
const ENTRY_LABEL: &[u8] = b"medrelay-access-log-v1\0";
/// Domain label of checkpoint signatures.
const CHECKPOINT_LABEL: &[u8] = b"medrelay-access-checkpoint-v1\0";
/// The tree of entries, keyed by big-endian sequence number.
const ENTRIES: &str = "access_log";
/// The tree of checkpoints, keyed by the sequence number they seal.
const CHECKPOINTS: &str = "access_log_checkpoints";

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
    let mut hash = Sha256::new();
    hash.update(ENTRY_LABEL);
    hash.update(&bytes);
    Ok(hash.finalize().into())
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
    sealed: u64,
}

/// The append-only access log in the server's database.
#[derive(Debug)]
pub struct AccessLog {
    entries: sled::Tree,
    checkpoints: sled::Tree,
    key: SigningKey,
    head: Mutex<Head>,
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
        return Ok(SigningKey::from_bytes(&seed));
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
    std::fs::write(
        dir.join("access-log.pub"),
        hex::encode(key.verifying_key().to_bytes()),
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

impl AccessLog {
    /// Opens the log in `db`, continuing its chain.
    pub fn open(db: &sled::Db, key: SigningKey) -> Result<AccessLog, AccessLogError> {
        let entries = db.open_tree(ENTRIES).map_err(db_error)?;
        let checkpoints = db.open_tree(CHECKPOINTS).map_err(db_error)?;
        let head = match entries.last().map_err(db_error)? {
            Some((_, value)) => {
                let entry: Entry = postcard::from_bytes(&value).map_err(db_error)?;
                let sealed = checkpoints
                    .last()
                    .map_err(db_error)?
                    .and_then(|(_, v)| postcard::from_bytes::<Checkpoint>(&v).ok())
                    .map_or(0, |c| c.seq);
                Head {
                    seq: entry.body.seq,
                    hash: entry.hash,
                    sealed,
                }
            }
            None => Head {
                seq: 0,
                hash: [0; 32],
                sealed: 0,
            },
        };
        Ok(AccessLog {
            entries,
            checkpoints,
            key,
            head: Mutex::new(head),
        })
    }

    fn write_checkpoint(&self, head: &mut Head, at_ms: u64) -> Result<(), AuditError> {
        if head.seq == head.sealed {
            return Ok(());
        }
        let signature = self
            .key
            .sign(&checkpoint_message(head.seq, &head.hash, at_ms));
        let checkpoint = Checkpoint {
            seq: head.seq,
            hash: head.hash,
            at_ms,
            signature: signature.to_bytes().to_vec(),
        };
        let bytes = postcard::to_allocvec(&checkpoint).map_err(|e| AuditError(e.to_string()))?;
        self.checkpoints
            .insert(head.seq.to_be_bytes(), bytes)
            .map_err(|e| AuditError(e.to_string()))?;
        head.sealed = head.seq;
        Ok(())
    }

    /// Seals everything written so far (at shutdown).
    pub fn seal(&self, at_ms: u64) -> Result<(), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        self.write_checkpoint(&mut head, at_ms)
    }
}

impl AuditSink for AccessLog {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let body = EntryBody {
            seq: head.seq + 1,
            prev_hash: head.hash,
            at_ms: event.at_ms,
            actor: event.actor.map(|a| {
                (
                    a.org.to_string(),
                    a.user.to_string(),
                    a.device.to_string(),
                    a.role.as_str().to_owned(),
                )
            }),
            action: event.action.to_owned(),
            objects: event.objects.clone(),
            outcome: match event.outcome {
                Outcome::Allowed => "allowed".to_owned(),
                Outcome::Denied(code) => code.as_str().to_owned(),
            },
            source: event.source.to_string(),
        };
        let hash = entry_hash(&body).map_err(AuditError)?;
        let seq = body.seq;
        let bytes =
            postcard::to_allocvec(&Entry { body, hash }).map_err(|e| AuditError(e.to_string()))?;
        self.entries
            .insert(seq.to_be_bytes(), bytes)
            .map_err(|e| AuditError(e.to_string()))?;
        head.seq = seq;
        head.hash = hash;
        if seq - head.sealed >= CHECKPOINT_EVERY {
            self.write_checkpoint(&mut head, event.at_ms)?;
        }
        Ok(())
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

/// Checks the whole chain and every checkpoint, offline.
pub fn verify(db: &sled::Db, public_key: &VerifyingKey) -> Result<Verified, Broken> {
    let broken = |seq: u64, reason: &str| Broken {
        seq,
        reason: reason.to_owned(),
    };
    let entries = db
        .open_tree(ENTRIES)
        .map_err(|e| broken(0, &e.to_string()))?;
    let checkpoints = db
        .open_tree(CHECKPOINTS)
        .map_err(|e| broken(0, &e.to_string()))?;
    let mut expected = 1u64;
    let mut prev = [0u8; 32];
    for item in entries.iter() {
        let (key, value) = item.map_err(|e| broken(expected, &e.to_string()))?;
        let key_seq = key
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| broken(expected, "malformed key"))?;
        if key_seq != expected {
            return Err(broken(
                expected,
                "missing (deleted, or the log was reordered)",
            ));
        }
        let entry: Entry = postcard::from_bytes(&value)
            .map_err(|_| broken(expected, "unreadable (changed on disk)"))?;
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
        prev = entry.hash;
        expected += 1;
    }
    let last = expected - 1;
    let mut sealed = 0u64;
    let mut count = 0u64;
    for item in checkpoints.iter() {
        let (_, value) = item.map_err(|e| broken(last, &e.to_string()))?;
        let checkpoint: Checkpoint =
            postcard::from_bytes(&value).map_err(|_| broken(last, "a checkpoint is unreadable"))?;
        let signature = Signature::from_slice(&checkpoint.signature)
            .map_err(|_| broken(checkpoint.seq, "a checkpoint's signature is malformed"))?;
        if public_key
            .verify(
                &checkpoint_message(checkpoint.seq, &checkpoint.hash, checkpoint.at_ms),
                &signature,
            )
            .is_err()
        {
            return Err(broken(
                checkpoint.seq,
                "a checkpoint's signature does not verify",
            ));
        }
        let sealed_entry = entries
            .get(checkpoint.seq.to_be_bytes())
            .map_err(|e| broken(checkpoint.seq, &e.to_string()))?
            .and_then(|v| postcard::from_bytes::<Entry>(&v).ok());
        match sealed_entry {
            Some(entry) if entry.hash == checkpoint.hash => {}
            Some(_) => {
                return Err(broken(
                    checkpoint.seq,
                    "differs from what the signed checkpoint sealed (the log was rewritten)",
                ))
            }
            None => {
                return Err(broken(
                    checkpoint.seq,
                    "is sealed by a signed checkpoint but missing (the log was truncated)",
                ))
            }
        }
        sealed = sealed.max(checkpoint.seq);
        count += 1;
    }
    Ok(Verified {
        entries: last,
        checkpoints: count,
        unsealed: last - sealed,
    })
}

/// Every entry, in order (for export).
pub fn entries(db: &sled::Db) -> Result<Vec<Entry>, AccessLogError> {
    db.open_tree(ENTRIES)
        .map_err(db_error)?
        .iter()
        .values()
        .map(|v| postcard::from_bytes(&v.map_err(db_error)?).map_err(db_error))
        .collect()
}
