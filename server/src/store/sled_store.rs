//! The [`Store`] on sled, the embedded database.
//!
//! One tree per kind of record; keys are fixed-width ids (and big-endian counters, so byte
//! order is numeric order). Changes that touch several keys run in one sled transaction, so
//! they land whole or not at all. Durability comes from [`GroupCommit`] over `flush_async`.
//!
//! Note on durability: sled's flush is `sync_file_range` on Linux. It survives a process crash
//! (kill -9) but is weaker than `fsync` against power loss; see ARCHITECTURE.md.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use medrelay_proto::ids::{ClientMessageId, ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{Handle, TeamId};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Db, Transactional, Tree};

use super::codec::key_id_of;
use super::codec::{decode_legacy, Codec, LEGACY_VERSION};
use super::{
    ArchiveItemRecord, ArchiveScan, BreakGlassRecord, CareRecord, ConversationRecord, DeviceRecord,
    EnvelopeRecord, Expired, HoldRecord, InviteRecord, MailboxItem, OneTimePrekey, OrgRecord,
    RetentionRecord, SendRecord, Store, StoreError, StoreSendOutcome, SyncFuture, TeamRecord,
    UserRecord,
};
use crate::group_commit::{CommitStats, Flush, GroupCommit};
use crate::keyring::{day_of, KeyId, Keyring, Scope};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The sled database and its trees.
#[derive(Debug)]
pub struct SledStore {
    db: Db,
    codec: Codec,
    /// Held from taking a send's mailbox positions to committing it, so sends commit in the
    /// order of their positions: a reader that saw position n never misses a smaller one
    /// committed later (it would otherwise wait for the device's next connection).
    send_order: std::sync::Mutex<()>,
    /// Keeps sled's hot multi-tree writes and its flushes apart; see [`FlushGate`].
    gate: FlushGate,
    /// Active device ids per user (see [`DeviceCache`]).
    device_cache: DeviceCache,
    commit: Arc<GroupCommit>,
    orgs: Tree,
    invites: Tree,
    users: Tree,
    handles: Tree,
    devices: Tree,
    user_devices: Tree,
    one_time_prekeys: Tree,
    conversations: Tree,
    conversation_index: Tree,
    user_conversations: Tree,
    mailbox: Tree,
    mailbox_ids: Tree,
    sent: Tree,
    meta: Tree,
    teams: Tree,
    care: Tree,
    break_glass: Tree,
    patient_conversations: Tree,
    retention: Tree,
    holds: Tree,
    archive: Tree,
}

/// Why the hot writes pass a gate of ours before they reach sled.
///
/// sled 0.34 serialises every transaction and batch against every flush with one
/// process-wide reader-writer lock: a flush holds it shared for its whole `pwrite` and
/// `sync_file_range` (about 18 ms on a busy disk), a transaction needs it exclusively, and
/// once a writer waits for it, every plain read or insert (task-fair lock) waits too. So a
/// send arriving during a flush used to park a tokio worker, every other request on that
/// worker and, through the fair lock, every read on the other worker: the whole server stood
/// still once per flush, and throughput was a few sends per flush.
///
/// The gate is our own lock taken the other way round: flushes hold it exclusively, hot
/// transactions (sends and acks) shared. A transaction that meets a running flush waits
/// here, on a thread handed over with `block_in_place`, never inside sled, so sled's lock has
/// no parked writer and reads and appends elsewhere go on. Durability is unchanged: a write
/// is still acknowledged only after a flush that started after it was applied.
#[derive(Debug, Clone, Default)]
struct FlushGate(Arc<std::sync::RwLock<()>>);

impl FlushGate {
    /// Runs `f` while no flush runs, without blocking a tokio worker on a running flush.
    fn exclusive_write<T>(&self, f: impl FnOnce() -> T) -> T {
        if let Ok(_open) = self.0.try_read() {
            return f();
        }
        let wait = || {
            let _open = self.0.read().unwrap_or_else(|e| e.into_inner());
            f()
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }
}

/// Active device ids per user, read by every send for every member of the conversation.
///
/// Each lookup used to scan the user's device index and open (decrypt) every device record:
/// about 6% of the server's CPU at saturation. Every write to a device record or to a user's
/// device list calls [`DeviceCache::changed`] after the write. A lookup stores what it read
/// only if no change happened since it began (the generation), so a read that raced a change
/// is used once and never cached.
#[derive(Debug, Default)]
struct DeviceCache(std::sync::Mutex<(u64, DeviceIds)>);

/// Active device ids by user.
type DeviceIds = HashMap<UserId, Arc<Vec<DeviceId>>>;

impl DeviceCache {
    fn get_or_read(
        &self,
        user: &UserId,
        read: impl FnOnce() -> Result<Vec<DeviceId>, StoreError>,
    ) -> Result<Arc<Vec<DeviceId>>, StoreError> {
        let generation = {
            let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ids) = cache.1.get(user) {
                return Ok(ids.clone());
            }
            cache.0
        };
        let ids = Arc::new(read()?);
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 == generation {
            cache.1.insert(*user, ids.clone());
        }
        Ok(ids)
    }

    /// Forgets everything: called after any device write.
    fn changed(&self) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.0 += 1;
        cache.1.clear();
    }
}

struct DbFlush {
    db: Db,
    gate: FlushGate,
}

impl Flush for DbFlush {
    fn flush(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
        let db = self.db.clone();
        let gate = self.gate.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let _closed = gate.0.write().unwrap_or_else(|e| e.into_inner());
                db.flush()
            })
            .await
            .map_err(io::Error::other)?
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
        })
    }
}

fn db_error(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

fn tx_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => db_error(e),
    }
}

fn abort(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

/// What a stored row's key says about the row, at sweep time.
enum Row<'a> {
    /// Not past retention (or its key is newer than the sweep's view of the keyring).
    Live,
    /// Past its org's retention.
    Past {
        org: OrgId,
        org_hold: bool,
        held: &'a BTreeSet<ConversationId>,
    },
    /// Its key was destroyed already.
    Orphan,
}

/// `a || b` as a key.
fn key2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len());
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

/// Key-value rows ready for a batch or transaction.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// One-time prekeys as `(device || id, record)` rows.
fn encode_prekeys(
    codec: &Codec,
    device: &DeviceId,
    prekeys: &[OneTimePrekey],
) -> Result<Rows, StoreError> {
    prekeys
        .iter()
        .map(|p| {
            let key = key2(device.as_bytes(), &p.id.to_be_bytes());
            let value = codec.seal("prekey", Scope::Standing, &key, p)?;
            Ok((key, value))
        })
        .collect()
}

/// The key under which the conversation of exactly these (sorted) members is indexed.
fn members_key(org: &OrgId, members: &[UserId]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for member in members {
        hash.update(member.as_bytes());
    }
    key2(org.as_bytes(), &hash.finalize())
}

fn id_suffix<const N: usize>(key: &[u8], prefix: usize) -> Option<[u8; N]> {
    key.get(prefix..prefix + N)?.try_into().ok()
}

/// The meta key marking an initialised data directory.
const META_INITIALISED: &[u8] = b"initialised";
/// The meta key holding the default org's id.
const META_DEFAULT_ORG: &[u8] = b"default-org";
/// The meta key holding the storage format: absent in databases of the unencrypted release.
const META_FORMAT: &[u8] = b"format";
/// The org a migrated record is filed under when its own org can no longer be found.
fn unknown_org() -> OrgId {
    OrgId::from([0; 16])
}
/// The storage format written today: every record sealed, handles indexed by keyed hash.
const FORMAT_SEALED: u8 = 2;

impl SledStore {
    /// Opens (creating if needed) the database at `path` and starts its flusher.
    /// Must be called inside a tokio runtime.
    pub fn open(path: &Path, keyring: Arc<Keyring>) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock => {
                    StoreError::Database(format!(
                        "the database at {} is in use by another process (is `medrelay serve` \
                         running on this data directory?)",
                        path.display()
                    ))
                }
                other => db_error(other),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(db_error);
        let gate = FlushGate::default();
        let store = SledStore {
            send_order: std::sync::Mutex::new(()),
            codec: Codec::new(keyring),
            commit: GroupCommit::start(Arc::new(DbFlush {
                db: db.clone(),
                gate: gate.clone(),
            })),
            gate,
            device_cache: DeviceCache::default(),
            orgs: tree("orgs")?,
            invites: tree("invites")?,
            users: tree("users")?,
            handles: tree("handles")?,
            devices: tree("devices")?,
            user_devices: tree("user_devices")?,
            one_time_prekeys: tree("one_time_prekeys")?,
            conversations: tree("conversations")?,
            conversation_index: tree("conversation_index")?,
            user_conversations: tree("user_conversations")?,
            mailbox: tree("mailbox")?,
            mailbox_ids: tree("mailbox_ids")?,
            sent: tree("sent")?,
            meta: tree("meta")?,
            teams: tree("teams")?,
            care: tree("care")?,
            break_glass: tree("break_glass")?,
            patient_conversations: tree("patient_conversations")?,
            retention: tree("retention")?,
            holds: tree("holds")?,
            archive: tree("archive")?,
            db,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Brings a database of an earlier release to today's format, once: seals every record
    /// that was stored unencrypted and re-keys the handle index by keyed hash.
    fn migrate(&self) -> Result<(), StoreError> {
        let format = self.meta.get(META_FORMAT).map_err(db_error)?;
        if format.as_deref() == Some(&[FORMAT_SEALED][..]) {
            if self.codec.keyring().was_created() {
                self.codec.keyring().discard_created();
                return Err(StoreError::Keyring(
                    "the keyring file is missing but the database holds sealed records: \
                     restore the keyring (DIR/keyring) from your key backup; nothing was changed"
                        .to_owned(),
                ));
            }
            return Ok(());
        }
        if self.is_initialised()? {
            tracing::info!("migrating the database to sealed records; this runs once");
            self.reseal::<OrgRecord>(&self.orgs, "org")?;
            self.reseal::<InviteRecord>(&self.invites, "invite")?;
            self.reseal::<UserRecord>(&self.users, "user")?;
            self.reseal::<DeviceRecord>(&self.devices, "device")?;
            self.reseal::<OneTimePrekey>(&self.one_time_prekeys, "prekey")?;
            self.reseal::<ConversationRecord>(&self.conversations, "conversation")?;
            self.reseal::<TeamRecord>(&self.teams, "team")?;
            self.reseal::<CareRecord>(&self.care, "care")?;
            self.reseal::<BreakGlassRecord>(&self.break_glass, "break_glass")?;
            for entry in self.mailbox.iter() {
                let (key, value) = entry.map_err(db_error)?;
                if value.first() != Some(&LEGACY_VERSION) {
                    continue;
                }
                let envelope: EnvelopeRecord = decode_legacy("envelope", &value)?;
                let org = self
                    .conversation(&envelope.conversation)?
                    .map_or(unknown_org(), |c| c.org);
                let scope = Scope::Mail {
                    org,
                    day: day_of(envelope.server_time_ms),
                };
                let sealed = self.codec.seal("envelope", scope, &key, &envelope)?;
                self.mailbox.insert(key, sealed).map_err(db_error)?;
            }
            for entry in self.sent.iter() {
                let (key, value) = entry.map_err(db_error)?;
                if value.first() != Some(&LEGACY_VERSION) {
                    continue;
                }
                let send: SendRecord = decode_legacy("send", &value)?;
                let org = match id_suffix::<16>(&key, 0) {
                    Some(device) => self
                        .device(&DeviceId::from(device))?
                        .map_or(unknown_org(), |d| d.org),
                    None => unknown_org(),
                };
                let scope = Scope::Mail {
                    org,
                    day: day_of(send.server_time_ms),
                };
                let sealed = self.codec.seal("send", scope, &key, &send)?;
                self.sent.insert(key, sealed).map_err(db_error)?;
            }
            self.handles.clear().map_err(db_error)?;
            for user in self.scan::<UserRecord>(&self.users, "user", &[])? {
                self.handles
                    .insert(
                        self.handle_key(&user.org, &user.handle)?,
                        user.id.as_bytes().as_slice(),
                    )
                    .map_err(db_error)?;
            }
        }
        self.meta
            .insert(META_FORMAT, &[FORMAT_SEALED][..])
            .map_err(db_error)?;
        self.db.flush().map_err(db_error)?;
        Ok(())
    }

    fn reseal<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        tree: &Tree,
        kind: &'static str,
    ) -> Result<(), StoreError> {
        for entry in tree.iter() {
            let (key, value) = entry.map_err(db_error)?;
            if value.first() == Some(&LEGACY_VERSION) {
                let record: T = decode_legacy(kind, &value)?;
                tree.insert(&key, self.seal(kind, &key, &record)?)
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// The codec sealing every value (the access log seals its entries with it too).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The underlying database (for the access log, which keeps its own trees).
    pub fn database(&self) -> &Db {
        &self.db
    }

    /// How well flushes were shared so far.
    pub fn commit_stats(&self) -> CommitStats {
        self.commit.stats()
    }

    /// Whether `medrelay init` (or the first `serve`) completed on this database.
    pub fn is_initialised(&self) -> Result<bool, StoreError> {
        self.meta.contains_key(META_INITIALISED).map_err(db_error)
    }

    /// Marks the database initialised with its default org.
    pub fn mark_initialised(&self, default_org: &OrgId) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(META_DEFAULT_ORG, default_org.as_bytes().as_slice());
        batch.insert(META_INITIALISED, &[1u8][..]);
        self.meta.apply_batch(batch).map_err(db_error)
    }

    /// The org created at initialisation.
    pub fn default_org(&self) -> Result<Option<OrgId>, StoreError> {
        match self.meta.get(META_DEFAULT_ORG).map_err(db_error)? {
            Some(bytes) => OrgId::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    kind: "meta",
                    reason: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// The conversation an index entry points at.
    fn indexed_conversation(
        &self,
        index: &'static str,
        id: &[u8],
    ) -> Result<ConversationRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            kind: index,
            reason,
        };
        let id = ConversationId::from_bytes(id).map_err(|e| corrupt(e.to_string()))?;
        self.conversation(&id)?
            .ok_or_else(|| corrupt("index points at a missing conversation".to_owned()))
    }

    /// Seals a record that lives as long as what it describes (the standing key).
    fn seal<T: serde::Serialize>(
        &self,
        kind: &'static str,
        key: &[u8],
        record: &T,
    ) -> Result<Vec<u8>, StoreError> {
        self.codec.seal(kind, Scope::Standing, key, record)
    }

    fn unseal<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        self.codec.open(kind, key, bytes)
    }

    fn put<T: serde::Serialize>(
        &self,
        tree: &Tree,
        kind: &'static str,
        key: impl AsRef<[u8]>,
        record: &T,
    ) -> Result<(), StoreError> {
        let key = key.as_ref();
        tree.insert(key, self.seal(kind, key, record)?)
            .map_err(db_error)?;
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: &Tree,
        kind: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(db_error)? {
            Some(bytes) => self.unseal(kind, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every record of a tree (or of one prefix of it), opened.
    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        tree: &Tree,
        kind: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        tree.scan_prefix(prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(db_error)?;
                self.unseal(kind, &key, &value)
            })
            .collect()
    }

    /// The index key of a handle in an org: a keyed hash, so no handle lies in clear on disk.
    fn handle_key(&self, org: &OrgId, handle: &Handle) -> Result<Vec<u8>, StoreError> {
        let mac = self
            .codec
            .keyring()
            .index_mac(&key2(org.as_bytes(), handle.as_str().as_bytes()))
            .map_err(|e| StoreError::Keyring(e.to_string()))?;
        Ok(key2(org.as_bytes(), &mac))
    }
}

impl Store for SledStore {
    fn sync(&self) -> SyncFuture<'_> {
        Box::pin(async move { self.commit.sync().await.map_err(StoreError::from) })
    }

    fn put_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        self.put(&self.orgs, "org", org.id.as_bytes(), org)
    }

    fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError> {
        self.get(&self.orgs, "org", id.as_bytes())
    }

    fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        self.scan(&self.orgs, "org", &[])
    }

    fn put_invite(&self, code_hash: &[u8; 32], invite: &InviteRecord) -> Result<(), StoreError> {
        self.put(&self.invites, "invite", code_hash, invite)
    }

    fn take_invite(&self, code_hash: &[u8; 32]) -> Result<Option<InviteRecord>, StoreError> {
        match self.invites.remove(code_hash).map_err(db_error)? {
            Some(bytes) => self.unseal("invite", code_hash, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn restore_invite(
        &self,
        code_hash: &[u8; 32],
        invite: &InviteRecord,
    ) -> Result<(), StoreError> {
        self.put_invite(code_hash, invite)
    }

    fn create_user(
        &self,
        user: &UserRecord,
        device: &DeviceRecord,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<(), StoreError> {
        let user_bytes = self.seal("user", user.id.as_bytes(), user)?;
        let device_bytes = self.seal("device", device.id.as_bytes(), device)?;
        let prekeys = encode_prekeys(&self.codec, &device.id, one_time_prekeys)?;
        let handle = self.handle_key(&user.org, &user.handle)?;
        let result = (
            &self.handles,
            &self.users,
            &self.devices,
            &self.user_devices,
            &self.one_time_prekeys,
        )
            .transaction(|(handles, users, devices, user_devices, otpks)| {
                if handles.get(&handle)?.is_some() {
                    return Err(abort(StoreError::HandleTaken));
                }
                handles.insert(handle.as_slice(), user.id.as_bytes().as_slice())?;
                users.insert(user.id.as_bytes().as_slice(), user_bytes.as_slice())?;
                devices.insert(device.id.as_bytes().as_slice(), device_bytes.as_slice())?;
                user_devices.insert(key2(user.id.as_bytes(), device.id.as_bytes()), &[])?;
                for (key, value) in &prekeys {
                    otpks.insert(key.as_slice(), value.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error);
        self.device_cache.changed();
        result
    }

    fn add_device(
        &self,
        device: &DeviceRecord,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<(), StoreError> {
        let device_bytes = self.seal("device", device.id.as_bytes(), device)?;
        let prekeys = encode_prekeys(&self.codec, &device.id, one_time_prekeys)?;
        let result = (&self.devices, &self.user_devices, &self.one_time_prekeys)
            .transaction(|(devices, user_devices, otpks)| {
                devices.insert(device.id.as_bytes().as_slice(), device_bytes.as_slice())?;
                user_devices.insert(key2(device.user.as_bytes(), device.id.as_bytes()), &[])?;
                for (key, value) in &prekeys {
                    otpks.insert(key.as_slice(), value.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error);
        self.device_cache.changed();
        result
    }

    fn put_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        let result = self.put(&self.devices, "device", device.id.as_bytes(), device);
        self.device_cache.changed();
        result
    }

    fn user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.get(&self.users, "user", id.as_bytes())
    }

    fn user_by_handle(
        &self,
        org: &OrgId,
        handle: &Handle,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self
            .handles
            .get(self.handle_key(org, handle)?)
            .map_err(db_error)?
        {
            Some(id) => {
                let id = UserId::from_bytes(&id).map_err(|e| StoreError::Corrupt {
                    kind: "handle",
                    reason: e.to_string(),
                })?;
                self.user(&id)
            }
            None => Ok(None),
        }
    }

    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.get(&self.devices, "device", id.as_bytes())
    }

    fn active_devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut devices = Vec::new();
        for key in self.user_devices.scan_prefix(user.as_bytes()).keys() {
            let key = key.map_err(db_error)?;
            let id = id_suffix::<16>(&key, 16).ok_or_else(|| StoreError::Corrupt {
                kind: "user_devices",
                reason: "short key".to_owned(),
            })?;
            if let Some(device) = self.device(&DeviceId::from(id))? {
                if !device.revoked {
                    devices.push(device);
                }
            }
        }
        Ok(devices)
    }

    fn active_device_ids(&self, user: &UserId) -> Result<Arc<Vec<DeviceId>>, StoreError> {
        self.device_cache.get_or_read(user, || {
            Ok(self
                .active_devices(user)?
                .into_iter()
                .map(|d| d.id)
                .collect())
        })
    }

    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.put(&self.users, "user", user.id.as_bytes(), user)
    }

    fn org_users(&self, org: &OrgId) -> Result<Vec<UserRecord>, StoreError> {
        let mut users: Vec<UserRecord> = self.scan(&self.users, "user", &[])?;
        users.retain(|user| user.org == *org);
        Ok(users)
    }

    fn all_devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut devices = Vec::new();
        for key in self.user_devices.scan_prefix(user.as_bytes()).keys() {
            let key = key.map_err(db_error)?;
            let id = id_suffix::<16>(&key, 16).ok_or_else(|| StoreError::Corrupt {
                kind: "user_devices",
                reason: "short key".to_owned(),
            })?;
            if let Some(device) = self.device(&DeviceId::from(id))? {
                devices.push(device);
            }
        }
        Ok(devices)
    }

    fn revoke_device(&self, device: &DeviceId) -> Result<(), StoreError> {
        let Some(mut record) = self.device(device)? else {
            return Ok(());
        };
        record.revoked = true;
        record.login = None;
        let record_bytes = self.seal("device", device.as_bytes(), &record)?;
        let keys = |tree: &Tree| -> Result<Vec<sled::IVec>, StoreError> {
            tree.scan_prefix(device.as_bytes())
                .keys()
                .map(|k| k.map_err(db_error))
                .collect()
        };
        let prekeys = keys(&self.one_time_prekeys)?;
        let mail = keys(&self.mailbox)?;
        let mail_ids = keys(&self.mailbox_ids)?;
        let result = (
            &self.devices,
            &self.one_time_prekeys,
            &self.mailbox,
            &self.mailbox_ids,
        )
            .transaction(|(devices, otpks, mailbox, mailbox_ids)| {
                devices.insert(device.as_bytes().as_slice(), record_bytes.as_slice())?;
                for key in &prekeys {
                    otpks.remove(key)?;
                }
                for key in &mail {
                    mailbox.remove(key)?;
                }
                for key in &mail_ids {
                    mailbox_ids.remove(key)?;
                }
                Ok(())
            })
            .map_err(tx_error);
        self.device_cache.changed();
        result
    }

    fn put_team(&self, team: &TeamRecord) -> Result<(), StoreError> {
        self.put(
            &self.teams,
            "team",
            key2(team.org.as_bytes(), team.id.as_bytes()),
            team,
        )
    }

    fn team(&self, org: &OrgId, id: &TeamId) -> Result<Option<TeamRecord>, StoreError> {
        self.get(&self.teams, "team", &key2(org.as_bytes(), id.as_bytes()))
    }

    fn org_teams(&self, org: &OrgId) -> Result<Vec<TeamRecord>, StoreError> {
        self.scan(&self.teams, "team", org.as_bytes())
    }

    fn care(&self, org: &OrgId, patient: &UserId) -> Result<CareRecord, StoreError> {
        Ok(self
            .get(
                &self.care,
                "care",
                &key2(org.as_bytes(), patient.as_bytes()),
            )?
            .unwrap_or_default())
    }

    fn put_care(&self, org: &OrgId, patient: &UserId, care: &CareRecord) -> Result<(), StoreError> {
        self.put(
            &self.care,
            "care",
            key2(org.as_bytes(), patient.as_bytes()),
            care,
        )
    }

    fn put_break_glass(&self, org: &OrgId, grant: &BreakGlassRecord) -> Result<(), StoreError> {
        let key = [
            org.as_bytes().as_slice(),
            grant.patient.as_bytes(),
            grant.staff.as_bytes(),
        ]
        .concat();
        self.put(&self.break_glass, "break_glass", key, grant)
    }

    fn break_glass_for(
        &self,
        org: &OrgId,
        patient: &UserId,
    ) -> Result<Vec<BreakGlassRecord>, StoreError> {
        self.scan(
            &self.break_glass,
            "break_glass",
            &key2(org.as_bytes(), patient.as_bytes()),
        )
    }

    fn patient_conversation(
        &self,
        org: &OrgId,
        patient: &UserId,
        new_id: ConversationId,
        now_ms: u64,
    ) -> Result<ConversationRecord, StoreError> {
        let index_key = key2(org.as_bytes(), patient.as_bytes());
        let record = ConversationRecord {
            id: new_id,
            org: *org,
            members: vec![*patient],
            patient: Some(*patient),
            created_ms: now_ms,
        };
        let record_bytes = self.seal("conversation", record.id.as_bytes(), &record)?;
        let existing = (&self.patient_conversations, &self.conversations)
            .transaction(|(index, conversations)| {
                if let Some(id) = index.get(&index_key)? {
                    return Ok(Some(id));
                }
                index.insert(index_key.as_slice(), record.id.as_bytes().as_slice())?;
                conversations.insert(record.id.as_bytes().as_slice(), record_bytes.as_slice())?;
                Ok(None)
            })
            .map_err(tx_error)?;
        match existing {
            None => Ok(record),
            Some(id) => self.indexed_conversation("patient_conversations", &id),
        }
    }

    fn org_patient_conversations(
        &self,
        org: &OrgId,
    ) -> Result<Vec<(UserId, ConversationId)>, StoreError> {
        self.patient_conversations
            .scan_prefix(org.as_bytes())
            .map(|entry| {
                let (key, value) = entry.map_err(db_error)?;
                let corrupt = |reason: &str| StoreError::Corrupt {
                    kind: "patient_conversations",
                    reason: reason.to_owned(),
                };
                let patient = id_suffix::<16>(&key, 16).ok_or_else(|| corrupt("short key"))?;
                let id = ConversationId::from_bytes(&value).map_err(|e| corrupt(&e.to_string()))?;
                Ok((UserId::from(patient), id))
            })
            .collect()
    }

    fn add_one_time_prekeys(
        &self,
        device: &DeviceId,
        prekeys: &[OneTimePrekey],
    ) -> Result<u32, StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in encode_prekeys(&self.codec, device, prekeys)? {
            batch.insert(key, value);
        }
        self.one_time_prekeys.apply_batch(batch).map_err(db_error)?;
        self.count_one_time_prekeys(device)
    }

    fn take_one_time_prekey(&self, device: &DeviceId) -> Result<Option<OneTimePrekey>, StoreError> {
        loop {
            let first = self
                .one_time_prekeys
                .scan_prefix(device.as_bytes())
                .keys()
                .next();
            let Some(key) = first else { return Ok(None) };
            let key = key.map_err(db_error)?;
            // `remove` is atomic: of two concurrent takers, only one gets the value.
            if let Some(value) = self.one_time_prekeys.remove(&key).map_err(db_error)? {
                return self.unseal("prekey", &key, &value).map(Some);
            }
        }
    }

    fn count_one_time_prekeys(&self, device: &DeviceId) -> Result<u32, StoreError> {
        let count = self
            .one_time_prekeys
            .scan_prefix(device.as_bytes())
            .keys()
            .count();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        self.get(&self.conversations, "conversation", id.as_bytes())
    }

    fn find_or_create_conversation(
        &self,
        org: &OrgId,
        members: &[UserId],
        new_id: ConversationId,
        now_ms: u64,
    ) -> Result<ConversationRecord, StoreError> {
        let mut sorted = members.to_vec();
        sorted.sort();
        sorted.dedup();
        let index_key = members_key(org, &sorted);
        let record = ConversationRecord {
            id: new_id,
            org: *org,
            members: sorted,
            patient: None,
            created_ms: now_ms,
        };
        let record_bytes = self.seal("conversation", record.id.as_bytes(), &record)?;
        let existing = (
            &self.conversation_index,
            &self.conversations,
            &self.user_conversations,
        )
            .transaction(|(index, conversations, user_conversations)| {
                if let Some(id) = index.get(&index_key)? {
                    return Ok(Some(id));
                }
                index.insert(index_key.as_slice(), record.id.as_bytes().as_slice())?;
                conversations.insert(record.id.as_bytes().as_slice(), record_bytes.as_slice())?;
                for member in &record.members {
                    user_conversations
                        .insert(key2(member.as_bytes(), record.id.as_bytes()), &[])?;
                }
                Ok(None)
            })
            .map_err(tx_error)?;
        match existing {
            None => Ok(record),
            Some(id) => self.indexed_conversation("conversation_index", &id),
        }
    }

    fn user_conversations(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        self.user_conversations
            .scan_prefix(user.as_bytes())
            .keys()
            .map(|key| {
                let key = key.map_err(db_error)?;
                id_suffix::<16>(&key, 16)
                    .map(ConversationId::from)
                    .ok_or_else(|| StoreError::Corrupt {
                        kind: "user_conversations",
                        reason: "short key".to_owned(),
                    })
            })
            .collect()
    }

    fn store_send(
        &self,
        org: &OrgId,
        sender_device: &DeviceId,
        client_message_id: &ClientMessageId,
        send: &SendRecord,
        envelopes: Vec<(DeviceId, EnvelopeRecord)>,
        archive: Option<ArchiveItemRecord>,
    ) -> Result<StoreSendOutcome, StoreError> {
        let sent_key = key2(sender_device.as_bytes(), client_message_id.as_bytes());
        let scope = Scope::Mail {
            org: *org,
            day: day_of(send.server_time_ms),
        };
        let send_bytes = self.codec.seal("send", scope, &sent_key, send)?;
        // Positions are taken and committed in one order (each envelope is sealed under its
        // row's key, which holds the position, so sealing is inside too).
        // Sends meet flushes at the gate, not inside sled (see `FlushGate`).
        self.gate.exclusive_write(|| {
            let _in_order = self.send_order.lock().unwrap_or_else(|e| e.into_inner());
            let mut rows = Vec::with_capacity(envelopes.len());
            for (device, envelope) in &envelopes {
                let seq = self.db.generate_id().map_err(db_error)?;
                let mailbox_key = key2(device.as_bytes(), &seq.to_be_bytes());
                let sealed = self.codec.seal("envelope", scope, &mailbox_key, envelope)?;
                rows.push((
                    mailbox_key,
                    key2(device.as_bytes(), envelope.message_id.as_bytes()),
                    seq.to_be_bytes(),
                    sealed,
                ));
            }
            let archive_row = match &archive {
                Some(item) => {
                    let seq = self.db.generate_id().map_err(db_error)?;
                    let key = key2(org.as_bytes(), &seq.to_be_bytes());
                    let scope = Scope::Archive {
                        org: *org,
                        day: day_of(item.server_time_ms),
                    };
                    let sealed = self.codec.seal("archive", scope, &key, item)?;
                    Some((key, sealed))
                }
                None => None,
            };
            (&self.sent, &self.mailbox, &self.mailbox_ids, &self.archive)
                .transaction(|(sent, mailbox, mailbox_ids, archive)| {
                    if let Some(previous) = sent.get(&sent_key)? {
                        let previous = self.unseal("send", &sent_key, &previous).map_err(abort)?;
                        return Ok(StoreSendOutcome::Duplicate(previous));
                    }
                    sent.insert(sent_key.as_slice(), send_bytes.as_slice())?;
                    for (mailbox_key, id_key, seq, envelope) in &rows {
                        mailbox.insert(mailbox_key.as_slice(), envelope.as_slice())?;
                        mailbox_ids.insert(id_key.as_slice(), seq.as_slice())?;
                    }
                    if let Some((key, sealed)) = &archive_row {
                        archive.insert(key.as_slice(), sealed.as_slice())?;
                    }
                    Ok(StoreSendOutcome::Stored(*send))
                })
                .map_err(tx_error)
        })
    }

    fn sent(
        &self,
        sender_device: &DeviceId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<SendRecord>, StoreError> {
        self.get(
            &self.sent,
            "send",
            &key2(sender_device.as_bytes(), client_message_id.as_bytes()),
        )
    }

    fn mailbox_after(
        &self,
        device: &DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MailboxItem>, StoreError> {
        let start = match after {
            Some(seq) => match seq.checked_add(1) {
                Some(next) => key2(device.as_bytes(), &next.to_be_bytes()),
                None => return Ok(Vec::new()),
            },
            None => device.as_bytes().to_vec(),
        };
        let end = key2(device.as_bytes(), &u64::MAX.to_be_bytes());
        let mut items = Vec::new();
        for entry in self.mailbox.range(start..=end) {
            if items.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(db_error)?;
            let seq = id_suffix::<8>(&key, 16)
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    kind: "mailbox",
                    reason: "short key".to_owned(),
                })?;
            match self.unseal("envelope", &key, &value) {
                Ok(envelope) => items.push(MailboxItem { seq, envelope }),
                // Past retention and shredded; the sweeper deletes the row.
                Err(StoreError::Shredded { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(items)
    }

    fn ack(&self, device: &DeviceId, message_ids: &[MessageId]) -> Result<u32, StoreError> {
        let id_keys: Vec<Vec<u8>> = message_ids
            .iter()
            .map(|id| key2(device.as_bytes(), id.as_bytes()))
            .collect();
        self.gate.exclusive_write(|| {
            (&self.mailbox, &self.mailbox_ids)
                .transaction(|(mailbox, mailbox_ids)| {
                    let mut removed = 0u32;
                    for id_key in &id_keys {
                        if let Some(seq) = mailbox_ids.remove(id_key.as_slice())? {
                            mailbox.remove(key2(device.as_bytes(), &seq))?;
                            removed += 1;
                        }
                    }
                    Ok(removed)
                })
                .map_err(tx_error)
        })
    }

    fn retention(&self, org: &OrgId) -> Result<RetentionRecord, StoreError> {
        Ok(self
            .get(&self.retention, "retention", org.as_bytes())?
            .unwrap_or_default())
    }

    fn put_retention(&self, org: &OrgId, retention: &RetentionRecord) -> Result<(), StoreError> {
        self.put(&self.retention, "retention", org.as_bytes(), retention)
    }

    fn holds(&self, org: &OrgId) -> Result<Vec<HoldRecord>, StoreError> {
        self.scan(&self.holds, "hold", org.as_bytes())
    }

    fn put_hold(&self, org: &OrgId, hold: &HoldRecord) -> Result<(), StoreError> {
        self.put(
            &self.holds,
            "hold",
            key2(org.as_bytes(), hold.conversation.as_bytes()),
            hold,
        )
    }

    fn remove_hold(&self, org: &OrgId, conversation: &ConversationId) -> Result<bool, StoreError> {
        Ok(self
            .holds
            .remove(key2(org.as_bytes(), conversation.as_bytes()))
            .map_err(db_error)?
            .is_some())
    }

    fn archive_after(
        &self,
        org: &OrgId,
        after: u64,
        since_ms: u64,
        limit: usize,
        scan: usize,
    ) -> Result<ArchiveScan, StoreError> {
        let Some(next) = after.checked_add(1) else {
            return Ok(ArchiveScan {
                done: true,
                ..ArchiveScan::default()
            });
        };
        let start = key2(org.as_bytes(), &next.to_be_bytes());
        let end = key2(org.as_bytes(), &u64::MAX.to_be_bytes());
        let mut out = ArchiveScan {
            done: true,
            ..ArchiveScan::default()
        };
        for (read, entry) in self.archive.range(start..=end).enumerate() {
            if out.items.len() >= limit || read >= scan {
                out.done = false;
                break;
            }
            let (key, value) = entry.map_err(db_error)?;
            let seq = id_suffix::<8>(&key, 16)
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    kind: "archive",
                    reason: "short key".to_owned(),
                })?;
            out.scanned_through = Some(seq);
            let item: ArchiveItemRecord = match self.unseal("archive", &key, &value) {
                Ok(item) => item,
                Err(StoreError::Shredded { .. }) => continue,
                Err(error) => return Err(error),
            };
            if item.server_time_ms >= since_ms {
                out.items.push((seq, item));
            }
        }
        Ok(out)
    }

    fn expire(&self, now_ms: u64) -> Result<Expired, StoreError> {
        let today = day_of(now_ms);
        let mut policies: HashMap<OrgId, (RetentionRecord, BTreeSet<ConversationId>)> =
            HashMap::new();
        for org in self.orgs()? {
            let holds = self.holds(&org.id)?.into_iter().map(|h| h.conversation);
            policies.insert(org.id, (self.retention(&org.id)?, holds.collect()));
        }
        let default_policy = (RetentionRecord::default(), BTreeSet::new());
        let keyring = self.codec.keyring();
        let scopes: HashMap<KeyId, Scope> = keyring.scopes().into_iter().collect();
        let next_id = keyring.next_id();
        // What a row's key says about it. A key created after the snapshot above (a send of a
        // new day or a new org while this sweep runs) is live; only a key gone from the
        // keyring itself makes a row an orphan.
        let classify = |key_id: KeyId| -> Row<'_> {
            let scope = match scopes.get(&key_id) {
                Some(scope) => *scope,
                None => match keyring.key(key_id) {
                    Some(_) => return Row::Live,
                    // Handed out once and gone since: shredded.
                    None if key_id < next_id => return Row::Orphan,
                    // Never handed out by this keyring: it is older than the data (restored
                    // from an old backup?). Keep the row; never guess.
                    None => {
                        tracing::error!(key_id, "a record's key is unknown to the keyring");
                        return Row::Live;
                    }
                },
            };
            let (org, day, policy) = match scope {
                Scope::Mail { org, day } => {
                    let policy = policies.get(&org).unwrap_or(&default_policy);
                    (org, day, policy.0.mail_days)
                }
                Scope::Archive { org, day } => {
                    let policy = policies.get(&org).unwrap_or(&default_policy);
                    (org, day, policy.0.archive_days)
                }
                _ => return Row::Live,
            };
            if today > day.saturating_add(policy) {
                let (retention, held) = policies.get(&org).unwrap_or(&default_policy);
                Row::Past {
                    org,
                    org_hold: retention.legal_hold,
                    held,
                }
            } else {
                Row::Live
            }
        };
        let mut expired = Expired::default();
        let mut in_use: HashSet<KeyId> = HashSet::new();

        // Mailboxes: envelopes and their id index.
        let mut mailbox_batch = sled::Batch::default();
        let mut ids_batch = sled::Batch::default();
        for entry in self.mailbox.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let Some(key_id) = key_id_of(&value) else {
                continue;
            };
            let device = key.get(..16).unwrap_or_default();
            let org = match classify(key_id) {
                Row::Live => {
                    in_use.insert(key_id);
                    continue;
                }
                Row::Past {
                    org,
                    org_hold,
                    held,
                } => {
                    let envelope: EnvelopeRecord = match self.unseal("envelope", &key, &value) {
                        Ok(envelope) => envelope,
                        Err(error) => {
                            // Keep it (and its key), report it, and go on with the others.
                            tracing::error!(%error, "an expired envelope could not be read");
                            expired.counts.entry(org).or_default().unreadable += 1;
                            in_use.insert(key_id);
                            continue;
                        }
                    };
                    if org_hold || held.contains(&envelope.conversation) {
                        expired.counts.entry(org).or_default().kept_by_hold += 1;
                        in_use.insert(key_id);
                        continue;
                    }
                    ids_batch.remove(key2(device, envelope.message_id.as_bytes()));
                    Some(org)
                }
                Row::Orphan => {
                    // Its key is gone already: drop the row and whatever indexes it.
                    let seq = key.get(16..).unwrap_or_default();
                    for id_entry in self.mailbox_ids.scan_prefix(device) {
                        let (id_key, id_seq) = id_entry.map_err(db_error)?;
                        if id_seq.as_ref() == seq {
                            ids_batch.remove(id_key);
                        }
                    }
                    None
                }
            };
            mailbox_batch.remove(key);
            if let Some(org) = org {
                expired.counts.entry(org).or_default().envelopes += 1;
            }
        }
        self.mailbox.apply_batch(mailbox_batch).map_err(db_error)?;
        self.mailbox_ids.apply_batch(ids_batch).map_err(db_error)?;

        // Idempotency records of sends: kept only as long as the mail they describe.
        let mut sent_batch = sled::Batch::default();
        for entry in self.sent.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let Some(key_id) = key_id_of(&value) else {
                continue;
            };
            match classify(key_id) {
                Row::Live | Row::Past { org_hold: true, .. } => {
                    in_use.insert(key_id);
                }
                Row::Past { .. } | Row::Orphan => sent_batch.remove(key),
            }
        }
        self.sent.apply_batch(sent_batch).map_err(db_error)?;

        // The org archive.
        let mut archive_batch = sled::Batch::default();
        for entry in self.archive.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let Some(key_id) = key_id_of(&value) else {
                continue;
            };
            match classify(key_id) {
                Row::Live => {
                    in_use.insert(key_id);
                    continue;
                }
                Row::Past {
                    org,
                    org_hold,
                    held,
                } => {
                    let item: ArchiveItemRecord = match self.unseal("archive", &key, &value) {
                        Ok(item) => item,
                        Err(error) => {
                            tracing::error!(%error, "an expired archive item could not be read");
                            expired.counts.entry(org).or_default().unreadable += 1;
                            in_use.insert(key_id);
                            continue;
                        }
                    };
                    if org_hold || held.contains(&item.conversation) {
                        expired.counts.entry(org).or_default().kept_by_hold += 1;
                        in_use.insert(key_id);
                        continue;
                    }
                    expired.counts.entry(org).or_default().archive_items += 1;
                }
                Row::Orphan => {}
            }
            archive_batch.remove(key);
        }
        self.archive.apply_batch(archive_batch).map_err(db_error)?;

        // Keys past retention that nothing needs. An org on legal hold keeps all of its keys:
        // what they open may still lie in backups, and a hold must preserve that too.
        for id in scopes.keys() {
            if in_use.contains(id) {
                continue;
            }
            if let Row::Past {
                org,
                org_hold: false,
                ..
            } = classify(*id)
            {
                expired.unneeded_keys.push((*id, org));
            }
        }
        expired.unneeded_keys.sort_unstable();
        Ok(expired)
    }

    fn shred(&self, keys: &[KeyId]) -> Result<u64, StoreError> {
        let shredded = self
            .codec
            .keyring()
            .shred(keys)
            .map_err(|e| StoreError::Keyring(e.to_string()))?;
        Ok(u64::try_from(shredded).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod device_cache_tests {
    use super::*;

    fn ids(n: u8) -> Vec<DeviceId> {
        vec![DeviceId::from([n; 16])]
    }

    #[test]
    fn a_change_during_a_read_is_not_cached() {
        let cache = DeviceCache::default();
        let user = UserId::from([1; 16]);
        // The read sees the old list while a device write lands meanwhile.
        let seen = cache
            .get_or_read(&user, || {
                cache.changed();
                Ok(ids(1))
            })
            .unwrap();
        assert_eq!(*seen, ids(1));
        // The next lookup reads again instead of serving the raced list.
        let next = cache.get_or_read(&user, || Ok(ids(2))).unwrap();
        assert_eq!(*next, ids(2));
        // And that one is cached.
        let cached = cache.get_or_read(&user, || Ok(ids(3))).unwrap();
        assert_eq!(*cached, ids(2));
        cache.changed();
        let fresh = cache.get_or_read(&user, || Ok(ids(4))).unwrap();
        assert_eq!(*fresh, ids(4));
    }
}
