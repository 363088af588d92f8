//! Keys at rest: the master key, and the epoch keys it wraps.
//!
//! Every value the server stores is sealed under a data key ([`crate::store::codec`]). Data
//! keys are grouped by [`Scope`]: one standing key for records that live as long as what they
//! describe (users, devices, teams), and one key per org and day for what retention expires
//! (mail, the org archive) and per day for the access log. Deleting a day's key from the
//! keyring makes everything sealed under it unreadable wherever a copy lies: in sled's old
//! segments and in backups of the database alike. That is crypto-shredding.
//!
//! The keyring is its own small file (`DIR/keyring`), never a sled tree, because sled keeps old
//! segments around and a deleted key would stay readable there. It is replaced atomically
//! (write, fsync, rename, fsync the directory) on every change. Each data key is wrapped with
//! XChaCha20-Poly1305 under the master key, with its id and scope as associated data, so a key
//! cannot be moved to another scope. The master key is 32 random bytes in a file of its own
//! (mode 0600), by default `DIR/master.key`; keep it outside the data directory's backups
//! (`--master-key`). A KMS can stand in for the file later: it only has to wrap and unwrap.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use medrelay_proto::OrgId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Milliseconds in a day: the length of an epoch.
pub const DAY_MS: u64 = 86_400_000;

/// The day (days since the Unix epoch) of a time.
pub fn day_of(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// What a data key protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Records that live as long as what they describe: orgs, users, devices, teams.
    Standing,
    /// The key of keyed hashes (HMAC-SHA256) that index records by identifying values.
    Index,
    /// One org's mail (envelopes and send records) stored on one day.
    Mail {
        /// The org.
        org: OrgId,
        /// Days since the Unix epoch.
        day: u32,
    },
    /// One org's archive items stored on one day.
    Archive {
        /// The org.
        org: OrgId,
        /// Days since the Unix epoch.
        day: u32,
    },
    /// Access-log entries written on one day.
    Audit {
        /// Days since the Unix epoch.
        day: u32,
    },
}

impl Scope {
    /// The day an epoch key covers, if it is one.
    pub fn day(&self) -> Option<u32> {
        match self {
            Scope::Standing | Scope::Index => None,
            Scope::Mail { day, .. } | Scope::Archive { day, .. } | Scope::Audit { day } => {
                Some(*day)
            }
        }
    }
}

/// A data key's id, written in the clear in front of every sealed value.
pub type KeyId = u32;

/// A data key.
pub type DataKey = Arc<Zeroizing<[u8; 32]>>;

/// Why the keyring could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// A key file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The master key does not open the keyring.
    #[error(
        "the master key {master} does not open the keyring {keyring}: wrong master key, or the \
         keyring was damaged; restore both from your key backup"
    )]
    WrongMasterKey {
        /// The master key file.
        master: String,
        /// The keyring file.
        keyring: String,
    },
    /// The keyring exists but the master key does not.
    #[error(
        "the master key {0} is missing but the data directory has a keyring: restore the master \
         key from your key backup (or pass --master-key)"
    )]
    MissingMasterKey(String),
}

const MAGIC: &[u8; 8] = b"MRKEYRG1";
const WRAP_LABEL: &[u8] = b"medrelay-keyring-wrap-v1\0";

#[derive(Clone, Serialize, Deserialize)]
struct WrappedKey {
    id: KeyId,
    scope: Scope,
    nonce: [u8; 24],
    wrapped: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct FileBody {
    next_id: KeyId,
    keys: Vec<WrappedKey>,
}

#[derive(Default)]
struct State {
    next_id: KeyId,
    by_id: BTreeMap<KeyId, (Scope, DataKey)>,
    by_scope: BTreeMap<Scope, KeyId>,
    /// Each key as wrapped in the file, so adding one key wraps only that one.
    wrapped: BTreeMap<KeyId, WrappedKey>,
}

/// The master key and the data keys it wraps.
pub struct Keyring {
    path: PathBuf,
    master_path: PathBuf,
    master: Zeroizing<[u8; 32]>,
    state: RwLock<State>,
    /// Held by whoever changes the file (new keys, shredding), for the whole change: the
    /// file is written with `state` unlocked, so sealing and opening under existing keys
    /// never waits for the disk.
    writer: Mutex<()>,
    created: bool,
    created_master: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> KeyringError {
    KeyringError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

fn wrap_aad(id: KeyId, scope: &Scope) -> Vec<u8> {
    let mut aad = WRAP_LABEL.to_vec();
    aad.extend_from_slice(&id.to_be_bytes());
    // postcard of a plain enum cannot fail; an empty scope encoding would still be unique per id.
    aad.extend_from_slice(&postcard::to_allocvec(scope).unwrap_or_default());
    aad
}

/// Writes `bytes` to `path` atomically and durably, with mode 0600.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn read_master(path: &Path) -> Result<Option<Zeroizing<[u8; 32]>>, KeyringError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    let bytes = Zeroizing::new(
        hex::decode(text.trim()).map_err(|_| io_error(path, "not a hex-encoded key"))?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| io_error(path, "not a 32-byte key"))?;
    Ok(Some(Zeroizing::new(key)))
}

impl Keyring {
    /// Opens the keyring at `path` under the master key at `master_path`; when neither exists
    /// yet, creates both (a fresh data directory).
    pub fn open(path: &Path, master_path: &Path) -> Result<Keyring, KeyringError> {
        let mut created_master = false;
        let master = match read_master(master_path)? {
            Some(master) => master,
            None if path.exists() => {
                return Err(KeyringError::MissingMasterKey(
                    master_path.display().to_string(),
                ))
            }
            None => {
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(key.as_mut_slice());
                if let Some(parent) = master_path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
                }
                write_atomically(master_path, Zeroizing::new(hex::encode(*key)).as_bytes())
                    .map_err(|e| io_error(master_path, e))?;
                created_master = true;
                key
            }
        };
        let created = !path.exists();
        let keyring = Keyring {
            path: path.to_owned(),
            master_path: master_path.to_owned(),
            master,
            state: RwLock::new(State::default()),
            writer: Mutex::new(()),
            created,
            created_master,
        };
        if created {
            keyring.persist_body(&FileBody {
                next_id: 0,
                keys: Vec::new(),
            })?;
        } else {
            keyring.load()?;
        }
        Ok(keyring)
    }

    /// Whether this open created the keyring (a fresh data directory; or, for a database that
    /// already holds sealed records, a lost keyring, which the store refuses).
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// Removes the files this open created (when the store refuses them), so the next start
    /// finds the directory as the operator left it.
    pub fn discard_created(&self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
        if self.created_master {
            let _ = std::fs::remove_file(&self.master_path);
        }
    }

    /// The id the next new key gets: every id below it was handed out once.
    pub fn next_id(&self) -> KeyId {
        self.state.read().unwrap_or_else(|e| e.into_inner()).next_id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.master.as_slice().into())
    }

    fn load(&self) -> Result<(), KeyringError> {
        let bytes = std::fs::read(&self.path).map_err(|e| io_error(&self.path, e))?;
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| io_error(&self.path, "not a medrelay keyring"))?;
        let body: FileBody =
            postcard::from_bytes(body).map_err(|_| io_error(&self.path, "damaged keyring"))?;
        let cipher = self.cipher();
        // Ids are never reused, whatever `next_id` says.
        let past_ids = body.keys.iter().map(|k| k.id.saturating_add(1)).max();
        let mut state = State {
            next_id: body.next_id.max(past_ids.unwrap_or(0)),
            ..State::default()
        };
        for wrapped in body.keys {
            let aad = wrap_aad(wrapped.id, &wrapped.scope);
            let key = Zeroizing::new(
                cipher
                    .decrypt(
                        XNonce::from_slice(&wrapped.nonce),
                        Payload {
                            msg: &wrapped.wrapped,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| KeyringError::WrongMasterKey {
                        master: self.master_path.display().to_string(),
                        keyring: self.path.display().to_string(),
                    })?,
            );
            let key: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| io_error(&self.path, "a wrapped key has the wrong length"))?;
            state
                .by_id
                .insert(wrapped.id, (wrapped.scope, Arc::new(Zeroizing::new(key))));
            state.by_scope.insert(wrapped.scope, wrapped.id);
            state.wrapped.insert(wrapped.id, wrapped);
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(())
    }

    fn wrap(&self, id: KeyId, scope: Scope, key: &DataKey) -> Result<WrappedKey, KeyringError> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| io_error(&self.path, format!("no randomness for a nonce: {e}")))?;
        let aad = wrap_aad(id, &scope);
        let wrapped = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.as_slice(),
                    aad: &aad,
                },
            )
            .map_err(|_| io_error(&self.path, "could not wrap a key"))?;
        Ok(WrappedKey {
            id,
            scope,
            nonce,
            wrapped,
        })
    }

    fn persist_body(&self, body: &FileBody) -> Result<(), KeyringError> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&postcard::to_allocvec(body).map_err(|e| io_error(&self.path, e))?);
        write_atomically(&self.path, &bytes).map_err(|e| io_error(&self.path, e))
    }

    /// The key of `scope`, created (and made durable in the keyring file) if there is none.
    pub fn key_for(&self, scope: Scope) -> Result<(KeyId, DataKey), KeyringError> {
        if let Some(found) = self.existing(scope) {
            return Ok(found);
        }
        self.add(&[scope])?;
        self.existing(scope)
            .ok_or_else(|| io_error(&self.path, "a key just written is missing"))
    }

    /// Creates the keys of `scopes` that have none, with one write of the keyring file, and
    /// returns how many it created. The sweeper calls it ahead of a new day, on a blocking
    /// thread, so the day's first seal of each scope does not write the file itself.
    pub fn prepare(&self, scopes: &[Scope]) -> Result<usize, KeyringError> {
        if scopes.iter().all(|scope| self.existing(*scope).is_some()) {
            return Ok(0);
        }
        self.add(scopes)
    }

    fn existing(&self, scope: Scope) -> Option<(KeyId, DataKey)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let id = state.by_scope.get(&scope)?;
        let (_, key) = state.by_id.get(id)?;
        Some((*id, key.clone()))
    }

    /// Adds keys for the `scopes` that have none: made and written to the file first, with
    /// the state unlocked (only other writers wait), and visible only once durable, so no key
    /// is ever handed out that a restart would lose, and a failure changes nothing.
    fn add(&self, scopes: &[Scope]) -> Result<usize, KeyringError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Only writers change the state, and this one holds the writer lock: the snapshot
        // stays true until the insert below.
        let (mut next_id, mut keys, missing) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let mut missing: Vec<Scope> = Vec::new();
            for scope in scopes {
                if !state.by_scope.contains_key(scope) && !missing.contains(scope) {
                    missing.push(*scope);
                }
            }
            if missing.is_empty() {
                return Ok(0);
            }
            if state.by_id.range(state.next_id..).next().is_some() {
                return Err(io_error(
                    &self.path,
                    "a key id at or above the next id is in use; the keyring is damaged",
                ));
            }
            let keys: Vec<WrappedKey> = state.wrapped.values().cloned().collect();
            (state.next_id, keys, missing)
        };
        let mut made = Vec::with_capacity(missing.len());
        for scope in missing {
            let id = next_id;
            if id == KeyId::MAX {
                return Err(io_error(
                    &self.path,
                    "no key id left; the keyring is damaged",
                ));
            }
            let mut key = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng
                .try_fill_bytes(key.as_mut_slice())
                .map_err(|e| io_error(&self.path, format!("no randomness for a key: {e}")))?;
            let key: DataKey = Arc::new(key);
            let wrapped = self.wrap(id, scope, &key)?;
            keys.push(wrapped.clone());
            made.push((id, scope, key, wrapped));
            next_id = id + 1;
        }
        self.persist_body(&FileBody { next_id, keys })?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.next_id = next_id;
        let count = made.len();
        for (id, scope, key, wrapped) in made {
            state.by_id.insert(id, (scope, key));
            state.by_scope.insert(scope, id);
            state.wrapped.insert(id, wrapped);
        }
        Ok(count)
    }

    /// The key with this id, or `None` if it was shredded (or never existed).
    pub fn key(&self, id: KeyId) -> Option<(Scope, DataKey)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.by_id.get(&id).cloned()
    }

    /// Every key's id and scope.
    pub fn scopes(&self) -> Vec<(KeyId, Scope)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .by_id
            .iter()
            .map(|(id, (scope, _))| (*id, *scope))
            .collect()
    }

    /// Destroys these keys: everything sealed under them becomes unreadable everywhere.
    /// Returns how many were destroyed. The standing and index keys are never shredded.
    pub fn shred(&self, ids: &[KeyId]) -> Result<usize, KeyringError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // The file is written without the keys first, with the state unlocked; they leave
        // memory once that is durable. A failure changes nothing.
        let (removed, body) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let removed: BTreeMap<KeyId, Scope> = ids
                .iter()
                .filter_map(|id| {
                    let (scope, _) = state.by_id.get(id)?;
                    scope.day().map(|_| (*id, *scope))
                })
                .collect();
            let body = FileBody {
                next_id: state.next_id,
                keys: state
                    .wrapped
                    .values()
                    .filter(|w| !removed.contains_key(&w.id))
                    .cloned()
                    .collect(),
            };
            (removed, body)
        };
        if removed.is_empty() {
            return Ok(0);
        }
        self.persist_body(&body)?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        for (id, scope) in &removed {
            state.by_id.remove(id);
            state.by_scope.remove(scope);
            state.wrapped.remove(id);
        }
        Ok(removed.len())
    }

    /// HMAC-SHA256 of `data` under the index key: how identifying values become index keys.
    pub fn index_mac(&self, data: &[u8]) -> Result<[u8; 32], KeyringError> {
        let (_, key) = self.key_for(Scope::Index)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice())
            .map_err(|e| io_error(&self.path, e))?;
        mac.update(data);
        Ok(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fresh directory and the keyring and master-key paths in it.
    fn paths() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (ring, master) = (dir.path().join("keyring"), dir.path().join("master.key"));
        (dir, ring, master)
    }

    #[test]
    fn keys_survive_reopen_and_shredding_is_permanent() {
        let (_dir, ring, master) = paths();
        let keyring = Keyring::open(&ring, &master).unwrap();
        let org = OrgId::from([7; 16]);
        let (day1, key1) = keyring.key_for(Scope::Mail { org, day: 1 }).unwrap();
        let (day2, _) = keyring.key_for(Scope::Mail { org, day: 2 }).unwrap();
        let (standing, _) = keyring.key_for(Scope::Standing).unwrap();
        let mac = keyring.index_mac(b"alice").unwrap();
        drop(keyring);

        let keyring = Keyring::open(&ring, &master).unwrap();
        assert_eq!(keyring.key(day1).unwrap().1, key1);
        assert_eq!(keyring.index_mac(b"alice").unwrap(), mac);
        assert_eq!(
            keyring.shred(&[day1, standing]).unwrap(),
            1,
            "standing stays"
        );
        drop(keyring);

        let keyring = Keyring::open(&ring, &master).unwrap();
        assert!(keyring.key(day1).is_none());
        assert!(keyring.key(day2).is_some());
        assert!(keyring.key(standing).is_some());
        // A new key for the shredded scope is a different key under a new id.
        let (again, key_again) = keyring.key_for(Scope::Mail { org, day: 1 }).unwrap();
        assert_ne!(again, day1);
        assert_ne!(key_again, key1);
    }

    #[test]
    fn prepared_keys_are_durable_and_are_the_ones_handed_out() {
        let (_dir, ring, master) = paths();
        let keyring = Keyring::open(&ring, &master).unwrap();
        let org = OrgId::from([7; 16]);
        let (existing, _) = keyring.key_for(Scope::Audit { day: 4 }).unwrap();
        let scopes = [Scope::Audit { day: 4 }, Scope::Mail { org, day: 4 }];
        assert_eq!(keyring.prepare(&scopes).unwrap(), 1, "only the missing one");
        assert_eq!(keyring.prepare(&scopes).unwrap(), 0);
        let mail = keyring
            .scopes()
            .into_iter()
            .find(|(_, scope)| *scope == Scope::Mail { org, day: 4 })
            .unwrap()
            .0;
        drop(keyring);

        let keyring = Keyring::open(&ring, &master).unwrap();
        assert_eq!(
            keyring.key_for(Scope::Mail { org, day: 4 }).unwrap().0,
            mail
        );
        assert_eq!(
            keyring.key_for(Scope::Audit { day: 4 }).unwrap().0,
            existing
        );
    }

    #[test]
    fn a_prepare_that_cannot_write_the_file_changes_nothing() {
        let (_dir, ring, master) = paths();
        let keyring = Keyring::open(&ring, &master).unwrap();
        keyring.key_for(Scope::Standing).unwrap();
        let before = keyring.scopes();
        // A directory where the replacement file goes: the write fails.
        let blocker = ring.with_extension("tmp");
        std::fs::create_dir(&blocker).unwrap();
        let org = OrgId::from([7; 16]);
        let scopes = [Scope::Audit { day: 9 }, Scope::Mail { org, day: 9 }];
        assert!(keyring.prepare(&scopes).is_err());
        assert_eq!(keyring.scopes(), before, "nothing half-created in memory");
        std::fs::remove_dir(&blocker).unwrap();
        drop(keyring);
        let keyring = Keyring::open(&ring, &master).unwrap();
        assert_eq!(keyring.scopes(), before, "nor on disk");
        assert_eq!(keyring.prepare(&scopes).unwrap(), 2);
    }

    #[test]
    fn a_wrong_or_missing_master_key_is_refused() {
        let (_dir, ring, master) = paths();
        let keyring = Keyring::open(&ring, &master).unwrap();
        keyring.key_for(Scope::Standing).unwrap();
        drop(keyring);
        std::fs::write(&master, hex::encode([1u8; 32])).unwrap();
        assert!(matches!(
            Keyring::open(&ring, &master),
            Err(KeyringError::WrongMasterKey { .. })
        ));
        std::fs::remove_file(&master).unwrap();
        assert!(matches!(
            Keyring::open(&ring, &master),
            Err(KeyringError::MissingMasterKey(_))
        ));
    }
}
