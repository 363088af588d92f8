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
use std::time::{Duration, Instant};

use medrelay_proto::ids::{ClientMessageId, ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{Handle, TeamId};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};

use super::codec::key_id_of;
use super::codec::{decode_legacy, Codec, LEGACY_VERSION};
use super::mail_log::MailLog;
use super::mail_state::SendMeta;
use super::{
    ArchiveItemRecord, ArchiveScan, BreakGlassRecord, CareRecord, ConversationRecord, DeviceRecord,
    EnvelopeRecord, Expired, FlushHold, FlushHook, HoldRecord, InviteRecord, MailboxItem, NewSend,
    OneTimePrekey, OrgRecord, PendingFlush, RetentionRecord, SendRecord, Store, StoreError,
    StoreSendOutcome, SyncFuture, TeamRecord, UserRecord,
};
use crate::group_commit::{CommitStats, Flush, GroupCommit};
use crate::keyring::{day_of, KeyId, Keyring, Scope};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The sled database and its trees.
#[derive(Debug)]
pub struct SledStore {
    db: Db,
    codec: Codec,
    /// The mailboxes (set once at open, after the records are migrated).
    mail: std::sync::OnceLock<Arc<MailLog>>,
    /// How a flush is done: the hooks, the barrier, and whether one failed.
    flusher: Arc<DbFlush>,
    /// Active device ids per user (see [`DeviceCache`]).
    device_cache: DeviceCache,
    /// Decoded records every send reads (see [`RecordCache`]).
    records: RecordCache,
    commit: Arc<GroupCommit>,
    orgs: Tree,
    invites: Tree,
    users: Tree,
    handles: Tree,
    devices: Tree,
    user_devices: Tree,
    one_time_prekeys: Tree,
    /// How many one-time prekeys each device has, kept in the same transactions as the
    /// prekeys themselves: every authentication answers with it, and counting the prekeys
    /// instead read each device's sealed prekeys (about 22 KB) into sled's cache.
    prekey_counts: Tree,
    conversations: Tree,
    conversation_index: Tree,
    user_conversations: Tree,
    /// Mailboxes of the release before the mail log: moved into it once, at open.
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

/// The deferred writes every flush writes first, in order (the access log's before the mail
/// log's: a crash that kept a send also kept its access-log entry).
type Hooks = std::sync::RwLock<Vec<Arc<dyn FlushHook>>>;

/// Bytes of sled's page cache. Its default, 1 GiB, is more than a clinic's records and
/// grows the server's memory with every device seen; the mail log keeps its own cache of
/// recent ciphertext.
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// A flush at least this long is logged with where its time went.
const SLOW_FLUSH: Duration = Duration::from_millis(50);
/// At most one slow-flush line per this long.
const SLOW_FLUSH_LOG_EVERY: Duration = Duration::from_secs(10);

/// Bytes of recent ciphertext the mail log keeps in memory for delivery.
const MAIL_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Decoded records that every send reads, several times over: the conversation, the patient
/// (consent), the org (consent text), the care assignment, its teams, break-glass grants and
/// each staff member (membership), and the org's retention (the archive key). Reading and
/// opening (decrypting) them was about a quarter of the relay's CPU at saturation.
///
/// Coherence is simple and strict: every write to any record of these kinds, through
/// [`SledStore::put`] or one of the transactions that create users and conversations, clears
/// the whole cache after it is applied, and a read stores what it read only if no write
/// happened since it began (the generation), so a read that raced a write is used once and
/// never cached. Writes to these records are rare (admin and account changes); sends, acks and
/// the access log never clear it. `cache_coherence_tests` checks every write method.
#[derive(Default)]
struct RecordCache(std::sync::Mutex<(u64, CachedRecords)>);

/// Decoded records by kind and key, type-erased.
type CachedRecords = HashMap<CacheKey, Arc<dyn std::any::Any + Send + Sync>>;

/// A cached record's kind and key (at most 32 bytes: org id and patient id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    kind: &'static str,
    key: [u8; 32],
    len: u8,
}

impl CacheKey {
    fn new(kind: &'static str, key: &[u8]) -> Option<CacheKey> {
        let mut fixed = [0u8; 32];
        fixed.get_mut(..key.len())?.copy_from_slice(key);
        Some(CacheKey {
            kind,
            key: fixed,
            len: u8::try_from(key.len()).ok()?,
        })
    }
}

/// Records cached at most; past it the cache starts over (a clinic has far fewer).
const RECORD_CACHE_ENTRIES: usize = 100_000;

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.0.lock().map(|c| c.1.len()).unwrap_or(0);
        f.debug_struct("RecordCache")
            .field("entries", &entries)
            .finish()
    }
}

impl RecordCache {
    /// The cached value of `kind` at `key`, or what `read` reads (cached if no write raced).
    fn get_or_read<T: Clone + Send + Sync + 'static>(
        &self,
        kind: &'static str,
        key: &[u8],
        read: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(key) = CacheKey::new(kind, key) else {
            return read();
        };
        let generation = {
            let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(value) = cache.1.get(&key).and_then(|v| v.downcast_ref::<T>()) {
                return Ok(value.clone());
            }
            cache.0
        };
        let value = read()?;
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 == generation {
            if cache.1.len() >= RECORD_CACHE_ENTRIES {
                cache.1.clear();
            }
            cache.1.insert(key, Arc::new(value.clone()));
        }
        Ok(value)
    }

    /// Forgets everything: called after every write to a cached kind of record.
    fn changed(&self) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.0 += 1;
        cache.1.clear();
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

/// One flush of the database: every hook's deferred writes, then sled's own flush.
#[derive(Debug)]
struct DbFlush {
    db: Db,
    /// Writes each flush writes first: the mail log's and the access log's.
    hooks: Hooks,
    /// Keeps a flush from taking deferred writes while a request is between changing the
    /// mail log and recording its access-log entry (see [`Store::hold_flush`]).
    barrier: std::sync::RwLock<()>,
    /// Set by the first flush that fails. The hooks handed their writes to that flush and
    /// count on it (the mail log has moved the sends it took to rows that may not exist),
    /// so no later flush may report anything durable: every later write is refused until
    /// a restart recovers the state from what is on disk.
    failed: std::sync::atomic::AtomicBool,
    /// A flush at least this long is logged with where its time went.
    slow: Duration,
    /// When a slow flush was last logged, and how many slow flushes were not logged since
    /// (at most one line per [`SLOW_FLUSH_LOG_EVERY`]: a slow disk must not flood the log).
    slow_logged: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl DbFlush {
    fn new(db: Db) -> DbFlush {
        DbFlush {
            db,
            hooks: Hooks::default(),
            barrier: std::sync::RwLock::new(()),
            failed: std::sync::atomic::AtomicBool::new(false),
            slow: SLOW_FLUSH,
            slow_logged: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Writes every hook's deferred writes, then flushes the database: one flush. After a
    /// failed flush, every flush fails.
    fn flush_now(&self) -> Result<(), StoreError> {
        self.flush_queued(Duration::ZERO)
    }

    /// [`DbFlush::flush_now`] for a flush that waited `queued` for a thread to run it (the
    /// group commit's), counted in the breakdown of a slow flush.
    fn flush_queued(&self, queued: Duration) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.failed.load(Ordering::SeqCst) {
            return Err(StoreError::Database(
                "an earlier storage flush failed, so nothing more can be made durable: fix the \
                 disk (see the error logged before this one), then restart the server"
                    .to_owned(),
            ));
        }
        let result = self.write_and_flush(queued);
        if let Err(error) = &result {
            self.failed.store(true, Ordering::SeqCst);
            tracing::error!(%error, "storage flush failed; every write is refused until restart");
        }
        result
    }

    fn write_and_flush(&self, queued: Duration) -> Result<(), StoreError> {
        let started = Instant::now();
        let hooks: Vec<Arc<dyn FlushHook>> =
            self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut pending: Vec<Box<dyn PendingFlush>> = {
            // New writes wait this long: only while each hook swaps out what it holds.
            let _held = self.barrier.write().unwrap_or_else(|e| e.into_inner());
            hooks.iter().map(|hook| hook.take()).collect()
        };
        let taken = started.elapsed();
        let mut writes = Vec::with_capacity(pending.len());
        for part in &mut pending {
            let writing = Instant::now();
            part.write()?;
            writes.push((part.name(), writing.elapsed()));
        }
        let syncing = Instant::now();
        self.db.flush().map_err(db_error)?;
        let synced = syncing.elapsed();
        let finishing = Instant::now();
        for part in pending {
            part.durable();
        }
        let finished = finishing.elapsed();
        let total = queued + started.elapsed();
        if total >= self.slow {
            self.log_slow(total, queued, taken, &writes, synced, finished);
        }
        Ok(())
    }

    /// Logs where a slow flush's time went, so an operator (or the benchmarks) can tell a slow
    /// disk from a busy machine or a large flush: durations only, nothing about whom. At most
    /// one line per [`SLOW_FLUSH_LOG_EVERY`], counting the slow flushes not logged meanwhile.
    fn log_slow(
        &self,
        total: Duration,
        queued: Duration,
        taken: Duration,
        writes: &[(&'static str, Duration)],
        synced: Duration,
        finished: Duration,
    ) {
        let not_logged = {
            let mut logged = self.slow_logged.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if logged
                .0
                .is_some_and(|at| now.duration_since(at) < SLOW_FLUSH_LOG_EVERY)
            {
                logged.1 += 1;
                return;
            }
            let not_logged = logged.1;
            *logged = (Some(now), 0);
            not_logged
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let wrote = writes
            .iter()
            .map(|(name, took)| format!("{name} {:.1}", ms(*took)))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            total_ms = ms(total),
            waited_for_a_thread_ms = ms(queued),
            took_pending_ms = ms(taken),
            wrote_ms = %wrote,
            synced_ms = ms(synced),
            marked_durable_ms = ms(finished),
            slow_flushes_not_logged = not_logged,
            "slow storage flush"
        );
    }
}

/// The group commit's handle on the flusher.
struct GroupFlush(Arc<DbFlush>);

impl Flush for GroupFlush {
    fn flush(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
        let flusher = self.0.clone();
        Box::pin(async move {
            let queued = Instant::now();
            tokio::task::spawn_blocking(move || flusher.flush_queued(queued.elapsed()))
                .await
                .map_err(io::Error::other)?
                .map_err(|e| io::Error::other(e.to_string()))
        })
    }
}

/// The mail log as a flush hook.
#[derive(Debug)]
struct MailHook(Arc<MailLog>);

impl FlushHook for MailHook {
    fn take(&self) -> Box<dyn PendingFlush> {
        Box::new(self.0.take_flush())
    }
}

impl PendingFlush for super::mail_log::MailFlush {
    fn name(&self) -> &'static str {
        "mail log"
    }

    fn write(&mut self) -> Result<(), StoreError> {
        super::mail_log::MailFlush::write(self)
    }

    fn durable(self: Box<Self>) {
        super::mail_log::MailFlush::durable(*self);
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
/// The meta key set once every device's one-time prekeys are counted in `prekey_counts`.
const META_PREKEY_COUNTS: &[u8] = b"prekey-counts";
/// The kind (sealing label) of a device's one-time prekey count.
const PREKEY_COUNT: &str = "prekey_count";
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
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                // sled reports a held lock as `Other` with this text (0.34), not as
                // `WouldBlock`.
                sled::Error::Io(io)
                    if io.kind() == io::ErrorKind::WouldBlock
                        || io.to_string().starts_with("could not acquire lock") =>
                {
                    StoreError::Database(format!(
                        "the database at {} is in use by another process (is `medrelay serve` \
                         running on this data directory?)",
                        path.display()
                    ))
                }
                other => db_error(other),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(db_error);
        let flusher = Arc::new(DbFlush::new(db.clone()));
        let store = SledStore {
            codec: Codec::new(keyring),
            mail: std::sync::OnceLock::new(),
            commit: GroupCommit::start(Arc::new(GroupFlush(flusher.clone()))),
            flusher,
            device_cache: DeviceCache::default(),
            records: RecordCache::default(),
            orgs: tree("orgs")?,
            invites: tree("invites")?,
            users: tree("users")?,
            handles: tree("handles")?,
            devices: tree("devices")?,
            user_devices: tree("user_devices")?,
            one_time_prekeys: tree("one_time_prekeys")?,
            prekey_counts: tree("prekey_counts")?,
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
        store.migrate_prekey_counts()?;
        // Asked once per waiting delivery at recovery: read each device once.
        let revoked = std::cell::RefCell::new(HashMap::<DeviceId, bool>::new());
        let mail = MailLog::open(
            &store.db,
            store.codec.clone(),
            store.archive.clone(),
            |device| {
                *revoked.borrow_mut().entry(*device).or_insert_with(|| {
                    store
                        .device(device)
                        .ok()
                        .flatten()
                        .is_some_and(|d| d.revoked)
                })
            },
            MAIL_CACHE_BYTES,
        )?;
        let mail = Arc::new(mail);
        store
            .flusher
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(MailHook(mail.clone())));
        let _ = store.mail.set(mail);
        store.migrate_mailboxes()?;
        Ok(store)
    }

    /// The mailboxes.
    fn mail(&self) -> Result<&Arc<MailLog>, StoreError> {
        self.mail
            .get()
            .ok_or_else(|| StoreError::Database("the mail log is not open".to_owned()))
    }

    /// Adds deferred writes every flush writes first, before the mail log's (the access
    /// log's).
    pub fn add_flush_hook(&self, hook: Arc<dyn FlushHook>) {
        self.flusher
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(0, hook);
    }

    /// Writes what waits and flushes, now, without the group commit (at open and for tools).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.flusher.flush_now()
    }

    /// Counts of the mailboxes, for metrics.
    pub fn mail_stats(&self) -> super::mail_state::MailStats {
        self.mail().map(|m| m.stats()).unwrap_or_default()
    }

    /// Every mail record as stored: (label, associated data, sealed bytes). Tests open them
    /// with a [`Codec`] to show what a copy of the database still holds after retention.
    pub fn mail_records(&self) -> Result<Vec<super::mail_log::RawRecord>, StoreError> {
        self.mail()?.raw_records()
    }

    /// Moves the mailboxes of the release before the mail log (one sled row per envelope,
    /// idempotency records in their own tree) into the mail log, once. Running it again after
    /// a crash finds the sends already moved by their idempotency records.
    fn migrate_mailboxes(&self) -> Result<(), StoreError> {
        if self.mailbox.is_empty() && self.sent.is_empty() && self.mailbox_ids.is_empty() {
            return Ok(());
        }
        tracing::info!("moving the mailboxes into the mail log; this runs once");
        let mail = self.mail()?;
        let mut senders: HashMap<MessageId, (DeviceId, ClientMessageId)> = HashMap::new();
        let mut records: Vec<(DeviceId, ClientMessageId, SendRecord)> = Vec::new();
        for entry in self.sent.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let (Some(device), Some(cmid)) = (id_suffix::<16>(&key, 0), id_suffix::<16>(&key, 16))
            else {
                continue;
            };
            let record: SendRecord = match self.unseal("send", &key, &value) {
                Ok(record) => record,
                Err(StoreError::Shredded { .. }) => continue,
                Err(error) => return Err(error),
            };
            let (device, cmid) = (DeviceId::from(device), ClientMessageId::from(cmid));
            senders.insert(record.message_id, (device, cmid));
            records.push((device, cmid, record));
        }
        // Envelopes, grouped by message, in their old order.
        let mut messages: BTreeMap<u64, (EnvelopeRecord, Vec<(DeviceId, bytes::Bytes)>)> =
            BTreeMap::new();
        let mut first_seq: HashMap<MessageId, u64> = HashMap::new();
        for entry in self.mailbox.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let (Some(device), Some(seq)) = (id_suffix::<16>(&key, 0), id_suffix::<8>(&key, 16))
            else {
                continue;
            };
            let envelope: EnvelopeRecord = match self.unseal("envelope", &key, &value) {
                Ok(envelope) => envelope,
                Err(StoreError::Shredded { .. }) => continue,
                Err(error) => return Err(error),
            };
            let seq = u64::from_be_bytes(seq);
            let first = *first_seq.entry(envelope.message_id).or_insert(seq);
            let ciphertext = bytes::Bytes::from(envelope.ciphertext.clone());
            messages
                .entry(first)
                .or_insert_with(|| (envelope, Vec::new()))
                .1
                .push((DeviceId::from(device), ciphertext));
        }
        let mut moved: HashSet<MessageId> = HashSet::new();
        for (_, (envelope, devices)) in messages {
            let (device, cmid) = senders.get(&envelope.message_id).copied().unwrap_or((
                envelope.sender_device,
                // No idempotency record left: a stand-in only this message has.
                ClientMessageId::from(envelope.message_id.to_array()),
            ));
            let org = self
                .conversation(&envelope.conversation)?
                .map_or(unknown_org(), |c| c.org);
            moved.insert(envelope.message_id);
            mail.store_send(NewSend {
                org,
                conversation: envelope.conversation,
                sender_user: envelope.sender_user,
                sender_device: device,
                client_message_id: cmid,
                record: SendRecord {
                    message_id: envelope.message_id,
                    server_time_ms: envelope.server_time_ms,
                },
                envelopes: devices,
                archive: None,
            })?;
        }
        // Sends delivered everywhere already: their idempotency records only.
        for (device, cmid, record) in records {
            if moved.contains(&record.message_id) {
                continue;
            }
            let org = self.device(&device)?.map_or(unknown_org(), |d| d.org);
            mail.store_send(NewSend {
                org,
                conversation: ConversationId::from([0; 16]),
                sender_user: UserId::from([0; 16]),
                sender_device: device,
                client_message_id: cmid,
                record,
                envelopes: Vec::new(),
                archive: None,
            })?;
        }
        self.flush_now()?;
        self.mailbox.clear().map_err(db_error)?;
        self.mailbox_ids.clear().map_err(db_error)?;
        self.sent.clear().map_err(db_error)?;
        self.db.flush().map_err(db_error)?;
        Ok(())
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

    /// Counts the one-time prekeys of every device once, for a database of the release that
    /// counted them on every authentication.
    fn migrate_prekey_counts(&self) -> Result<(), StoreError> {
        if self
            .meta
            .contains_key(META_PREKEY_COUNTS)
            .map_err(db_error)?
        {
            return Ok(());
        }
        let mut counts: BTreeMap<[u8; 16], u32> = BTreeMap::new();
        for key in self.one_time_prekeys.iter().keys() {
            let key = key.map_err(db_error)?;
            if let Some(device) = id_suffix::<16>(&key, 0) {
                *counts.entry(device).or_default() += 1;
            }
        }
        if !counts.is_empty() {
            tracing::info!(
                devices = counts.len(),
                "counting each device's one-time prekeys; this runs once"
            );
        }
        let mut batch = sled::Batch::default();
        for (device, count) in counts {
            batch.insert(&device, self.seal(PREKEY_COUNT, &device, &count)?);
        }
        self.prekey_counts.apply_batch(batch).map_err(db_error)?;
        self.meta
            .insert(META_PREKEY_COUNTS, &[1u8][..])
            .map_err(db_error)?;
        self.db.flush().map_err(db_error)?;
        Ok(())
    }

    /// Within a transaction: stores sealed prekey rows and counts those that were new.
    /// Returns the device's count after.
    fn insert_prekeys(
        &self,
        otpks: &TransactionalTree,
        counts: &TransactionalTree,
        device: &DeviceId,
        rows: &Rows,
    ) -> Result<u32, ConflictableTransactionError<StoreError>> {
        let mut count = self.prekey_count_in(counts, device)?;
        for (key, value) in rows {
            if otpks.insert(key.as_slice(), value.as_slice())?.is_none() {
                count = count.saturating_add(1);
            }
        }
        self.set_prekey_count(counts, device, count)?;
        Ok(count)
    }

    /// Within a transaction: the device's prekey count.
    fn prekey_count_in(
        &self,
        counts: &TransactionalTree,
        device: &DeviceId,
    ) -> Result<u32, ConflictableTransactionError<StoreError>> {
        match counts.get(device.as_bytes())? {
            Some(bytes) => self
                .unseal(PREKEY_COUNT, device.as_bytes(), &bytes)
                .map_err(abort),
            None => Ok(0),
        }
    }

    /// Within a transaction: sets the device's prekey count.
    fn set_prekey_count(
        &self,
        counts: &TransactionalTree,
        device: &DeviceId,
        count: u32,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        let sealed = self
            .seal(PREKEY_COUNT, device.as_bytes(), &count)
            .map_err(abort)?;
        counts.insert(device.as_bytes().as_slice(), sealed)?;
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
        let result = tree
            .insert(key, self.seal(kind, key, record)?)
            .map_err(db_error);
        self.records.changed();
        result.map(|_| ())
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
    fn hold_flush(&self) -> FlushHold<'_> {
        FlushHold(Some(
            self.flusher
                .barrier
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        ))
    }

    fn sync(&self) -> SyncFuture<'_> {
        Box::pin(async move { self.commit.sync().await.map_err(StoreError::from) })
    }

    fn sync_then(&self, after: Box<dyn FnOnce() + Send>) -> SyncFuture<'_> {
        Box::pin(async move { self.commit.sync_then(after).await.map_err(StoreError::from) })
    }

    fn put_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        self.put(&self.orgs, "org", org.id.as_bytes(), org)
    }

    fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError> {
        self.records.get_or_read("org", id.as_bytes(), || {
            self.get(&self.orgs, "org", id.as_bytes())
        })
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
            &self.prekey_counts,
        )
            .transaction(|(handles, users, devices, user_devices, otpks, counts)| {
                if handles.get(&handle)?.is_some() {
                    return Err(abort(StoreError::HandleTaken));
                }
                handles.insert(handle.as_slice(), user.id.as_bytes().as_slice())?;
                users.insert(user.id.as_bytes().as_slice(), user_bytes.as_slice())?;
                devices.insert(device.id.as_bytes().as_slice(), device_bytes.as_slice())?;
                user_devices.insert(key2(user.id.as_bytes(), device.id.as_bytes()), &[])?;
                self.insert_prekeys(otpks, counts, &device.id, &prekeys)?;
                Ok(())
            })
            .map_err(tx_error);
        self.device_cache.changed();
        self.records.changed();
        result
    }

    fn add_device(
        &self,
        device: &DeviceRecord,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<(), StoreError> {
        let device_bytes = self.seal("device", device.id.as_bytes(), device)?;
        let prekeys = encode_prekeys(&self.codec, &device.id, one_time_prekeys)?;
        let result = (
            &self.devices,
            &self.user_devices,
            &self.one_time_prekeys,
            &self.prekey_counts,
        )
            .transaction(|(devices, user_devices, otpks, counts)| {
                devices.insert(device.id.as_bytes().as_slice(), device_bytes.as_slice())?;
                user_devices.insert(key2(device.user.as_bytes(), device.id.as_bytes()), &[])?;
                self.insert_prekeys(otpks, counts, &device.id, &prekeys)?;
                Ok(())
            })
            .map_err(tx_error);
        self.device_cache.changed();
        self.records.changed();
        result
    }

    fn put_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        let result = self.put(&self.devices, "device", device.id.as_bytes(), device);
        self.device_cache.changed();
        self.records.changed();
        result
    }

    fn user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.records.get_or_read("user", id.as_bytes(), || {
            self.get(&self.users, "user", id.as_bytes())
        })
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
        let result = (&self.devices, &self.one_time_prekeys, &self.prekey_counts)
            .transaction(|(devices, otpks, counts)| {
                devices.insert(device.as_bytes().as_slice(), record_bytes.as_slice())?;
                for key in &prekeys {
                    otpks.remove(key)?;
                }
                counts.remove(device.as_bytes().as_slice())?;
                Ok(())
            })
            .map_err(tx_error);
        self.device_cache.changed();
        self.records.changed();
        result?;
        // Its mailbox empties with the next flush; should the server stop first, opening the
        // mail log finishes every delivery to a revoked device.
        self.mail()?.drop_device(device);
        Ok(())
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
        let key = key2(org.as_bytes(), id.as_bytes());
        self.records
            .get_or_read("team", &key, || self.get(&self.teams, "team", &key))
    }

    fn org_teams(&self, org: &OrgId) -> Result<Vec<TeamRecord>, StoreError> {
        self.scan(&self.teams, "team", org.as_bytes())
    }

    fn care(&self, org: &OrgId, patient: &UserId) -> Result<CareRecord, StoreError> {
        let key = key2(org.as_bytes(), patient.as_bytes());
        self.records.get_or_read("care", &key, || {
            Ok(self.get(&self.care, "care", &key)?.unwrap_or_default())
        })
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
        let key = key2(org.as_bytes(), patient.as_bytes());
        self.records.get_or_read("break_glass_for", &key, || {
            self.scan(&self.break_glass, "break_glass", &key)
        })
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
        self.records.changed();
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
        let rows = encode_prekeys(&self.codec, device, prekeys)?;
        (&self.one_time_prekeys, &self.prekey_counts)
            .transaction(|(otpks, counts)| self.insert_prekeys(otpks, counts, device, &rows))
            .map_err(tx_error)
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
            // Serialisable: of two concurrent takers, only one removes the value (and counts
            // it); the other looks again.
            let taken = (&self.one_time_prekeys, &self.prekey_counts)
                .transaction(|(otpks, counts)| {
                    let Some(value) = otpks.remove(&key)? else {
                        return Ok(None);
                    };
                    let left = self.prekey_count_in(counts, device)?.saturating_sub(1);
                    self.set_prekey_count(counts, device, left)?;
                    Ok(Some(value))
                })
                .map_err(tx_error)?;
            if let Some(value) = taken {
                return self.unseal("prekey", &key, &value).map(Some);
            }
        }
    }

    fn count_one_time_prekeys(&self, device: &DeviceId) -> Result<u32, StoreError> {
        match self
            .prekey_counts
            .get(device.as_bytes())
            .map_err(db_error)?
        {
            Some(bytes) => self.unseal(PREKEY_COUNT, device.as_bytes(), &bytes),
            None => Ok(0),
        }
    }

    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        self.records.get_or_read("conversation", id.as_bytes(), || {
            self.get(&self.conversations, "conversation", id.as_bytes())
        })
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
        self.records.changed();
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

    fn store_send(&self, send: NewSend) -> Result<StoreSendOutcome, StoreError> {
        self.mail()?.store_send(send)
    }

    fn sent(
        &self,
        sender_device: &DeviceId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<SendRecord>, StoreError> {
        Ok(self.mail()?.sent(sender_device, client_message_id))
    }

    fn mailbox_after(
        &self,
        device: &DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MailboxItem>, StoreError> {
        self.mail()?.mailbox_after(device, after, limit)
    }

    fn ack(&self, device: &DeviceId, message_ids: &[MessageId]) -> Result<u32, StoreError> {
        Ok(self.mail()?.ack(device, message_ids))
    }

    fn retention(&self, org: &OrgId) -> Result<RetentionRecord, StoreError> {
        self.records.get_or_read("retention", org.as_bytes(), || {
            Ok(self
                .get(&self.retention, "retention", org.as_bytes())?
                .unwrap_or_default())
        })
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

        // Mailboxes and the idempotency records of sends (kept only as long as the mail they
        // describe, unless the org is on hold).
        let policy_of = |org: &OrgId| policies.get(org).unwrap_or(&default_policy);
        let past = |meta: &SendMeta| {
            today > day_of(meta.server_time_ms).saturating_add(policy_of(&meta.org).0.mail_days)
        };
        let held = |meta: &SendMeta| {
            let (retention, held) = policy_of(&meta.org);
            retention.legal_hold || held.contains(&meta.conversation)
        };
        let org_held = |meta: &SendMeta| policy_of(&meta.org).0.legal_hold;
        let (counts, kept) = self.mail()?.expire(past, held, org_held)?;
        for (org, (deleted, kept_by_hold)) in counts {
            let entry = expired.counts.entry(org).or_default();
            entry.envelopes += deleted;
            entry.kept_by_hold += kept_by_hold;
        }
        for (id, scope) in &scopes {
            if kept.contains(scope) {
                in_use.insert(*id);
            }
        }

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

    fn prepare_keys(&self, today: u32, ahead: u32) -> Result<usize, StoreError> {
        let keyring = self.codec.keyring();
        let held: HashSet<Scope> = keyring.scopes().into_iter().map(|(_, s)| s).collect();
        let days: &[u32] = if today == ahead {
            &[today]
        } else {
            &[today, ahead]
        };
        let mut scopes: Vec<Scope> = days.iter().map(|&day| Scope::Audit { day }).collect();
        for org in self.orgs()? {
            // An org with mail today or yesterday gets the coming day's keys; a quiet one
            // makes its key on first use, so idle orgs do not fill the keyring.
            let had_mail = |day: u32| held.contains(&Scope::Mail { org: org.id, day });
            if !had_mail(today) && !had_mail(today.saturating_sub(1)) {
                continue;
            }
            let archives = self.retention(&org.id)?.archive_public_key.is_some();
            for &day in days {
                scopes.push(Scope::Mail { org: org.id, day });
                if archives {
                    scopes.push(Scope::Archive { org: org.id, day });
                }
            }
        }
        keyring
            .prepare(&scopes)
            .map_err(|e| StoreError::Keyring(e.to_string()))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod cache_coherence_tests {
    use super::*;
    use medrelay_proto::{ConsentState, Reason, Role, TeamName};

    fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let keyring =
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap();
        let store = SledStore::open(&dir.path().join("db"), Arc::new(keyring)).unwrap();
        (dir, store)
    }

    fn user(org: OrgId, n: u8, role: Role) -> UserRecord {
        UserRecord {
            id: UserId::from([n; 16]),
            org,
            handle: Handle::new(format!("user{n}")).unwrap(),
            role,
            created_ms: 1,
            active: true,
            grants: BTreeSet::new(),
            consent: super::super::ConsentRecord {
                state: ConsentState::Pending,
                changed_ms: 1,
                text_sha256: None,
            },
            credentials: None,
            lockout: Default::default(),
        }
    }

    /// Every cached read, read (so cached), then changed through each write that can change
    /// it, then read again: the second read sees the write.
    #[tokio::test]
    async fn every_write_is_seen_by_the_next_read() {
        let (_dir, store) = store();
        let org = OrgId::from([1; 16]);
        let mut record = OrgRecord {
            id: org,
            name: "Clinic".to_owned(),
            created_ms: 1,
            policy: crate::relay::default_policy(),
        };
        store.put_org(&record).unwrap();
        assert_eq!(store.org(&org).unwrap().unwrap().name, "Clinic");
        record.name = "Renamed".to_owned();
        store.put_org(&record).unwrap();
        assert_eq!(store.org(&org).unwrap().unwrap().name, "Renamed");

        let patient = user(org, 2, Role::Patient);
        assert!(
            store.user(&patient.id).unwrap().is_none(),
            "a miss is cached too"
        );
        store.put_user(&patient).unwrap();
        assert!(store.user(&patient.id).unwrap().is_some());
        let mut accepted = patient.clone();
        accepted.consent.state = ConsentState::Accepted;
        store.put_user(&accepted).unwrap();
        assert_eq!(
            store.user(&patient.id).unwrap().unwrap().consent.state,
            ConsentState::Accepted
        );

        let staff = user(org, 3, Role::Staff);
        store.put_user(&staff).unwrap();
        assert!(store.care(&org, &patient.id).unwrap().staff.is_empty());
        let care = CareRecord {
            staff: vec![staff.id],
            teams: Vec::new(),
        };
        store.put_care(&org, &patient.id, &care).unwrap();
        assert_eq!(store.care(&org, &patient.id).unwrap(), care);

        let team_id = TeamId::from([4; 16]);
        let mut team = TeamRecord {
            id: team_id,
            org,
            name: TeamName::new("Nurses").unwrap(),
            members: Vec::new(),
        };
        store.put_team(&team).unwrap();
        assert!(store
            .team(&org, &team_id)
            .unwrap()
            .unwrap()
            .members
            .is_empty());
        team.members.push(staff.id);
        store.put_team(&team).unwrap();
        assert_eq!(
            store.team(&org, &team_id).unwrap().unwrap().members,
            vec![staff.id]
        );

        assert!(store.break_glass_for(&org, &patient.id).unwrap().is_empty());
        let grant = BreakGlassRecord {
            staff: staff.id,
            patient: patient.id,
            granted_by: staff.id,
            reason: Reason::new("emergency").unwrap(),
            granted_ms: 1,
            expires_ms: 2,
        };
        store.put_break_glass(&org, &grant).unwrap();
        assert_eq!(
            store.break_glass_for(&org, &patient.id).unwrap(),
            vec![grant]
        );

        let id = ConversationId::from([5; 16]);
        assert!(store.conversation(&id).unwrap().is_none());
        let created = store
            .patient_conversation(&org, &patient.id, id, 1)
            .unwrap();
        assert_eq!(store.conversation(&id).unwrap(), Some(created));
        let group = ConversationId::from([6; 16]);
        assert!(store.conversation(&group).unwrap().is_none());
        store
            .find_or_create_conversation(&org, &[staff.id, patient.id], group, 1)
            .unwrap();
        assert!(store.conversation(&group).unwrap().is_some());

        assert!(!store.retention(&org).unwrap().legal_hold);
        let held = RetentionRecord {
            legal_hold: true,
            ..RetentionRecord::default()
        };
        store.put_retention(&org, &held).unwrap();
        assert!(store.retention(&org).unwrap().legal_hold);
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let cache = RecordCache::default();
        let seen: u32 = cache
            .get_or_read("k", b"key", || {
                cache.changed();
                Ok(1)
            })
            .unwrap();
        assert_eq!(seen, 1);
        assert_eq!(cache.get_or_read("k", b"key", || Ok(2u32)).unwrap(), 2);
        assert_eq!(
            cache.get_or_read("k", b"key", || Ok(3u32)).unwrap(),
            2,
            "cached"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod prekey_count_tests {
    use super::*;
    use medrelay_proto::X25519PublicKey;

    #[tokio::test]
    async fn a_database_in_use_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Arc::new(
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap(),
        );
        let first = SledStore::open(&dir.path().join("db"), keyring.clone()).unwrap();
        let Err(StoreError::Database(error)) = SledStore::open(&dir.path().join("db"), keyring)
        else {
            panic!("a second open of a database in use must fail");
        };
        assert!(error.contains("in use by another process"), "{error}");
        drop(first);
    }

    fn open(dir: &Path) -> SledStore {
        let keyring =
            Arc::new(Keyring::open(&dir.join("keyring"), &dir.join("master.key")).unwrap());
        // sled's background threads let go of the file lock a moment after the last handle
        // is dropped: wait for it rather than fail a reopen.
        for _ in 0..200 {
            match SledStore::open(&dir.join("db"), keyring.clone()) {
                Ok(store) => return store,
                Err(StoreError::Database(e)) if e.contains("in use by another process") => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the database stayed locked");
    }

    fn prekeys(ids: std::ops::Range<u32>) -> Vec<OneTimePrekey> {
        ids.map(|id| OneTimePrekey {
            id,
            public_key: X25519PublicKey::from_bytes(&[7; 32]).unwrap(),
        })
        .collect()
    }

    /// What counting the rows themselves says.
    fn rows(store: &SledStore, device: &DeviceId) -> u32 {
        let n = store
            .one_time_prekeys
            .scan_prefix(device.as_bytes())
            .count();
        u32::try_from(n).unwrap()
    }

    #[tokio::test]
    async fn the_count_follows_adds_and_takes_and_counts_a_resent_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (a, b) = (DeviceId::from([1; 16]), DeviceId::from([2; 16]));
        assert_eq!(store.count_one_time_prekeys(&a).unwrap(), 0);
        assert_eq!(store.add_one_time_prekeys(&a, &prekeys(0..10)).unwrap(), 10);
        assert_eq!(store.add_one_time_prekeys(&b, &prekeys(0..3)).unwrap(), 3);
        // Keys 5..10 again and 10..15 new: five more, not ten.
        assert_eq!(store.add_one_time_prekeys(&a, &prekeys(5..15)).unwrap(), 15);
        for left in (0..15).rev() {
            assert!(store.take_one_time_prekey(&a).unwrap().is_some());
            assert_eq!(store.count_one_time_prekeys(&a).unwrap(), left);
            assert_eq!(rows(&store, &a), left);
        }
        assert!(store.take_one_time_prekey(&a).unwrap().is_none());
        assert_eq!(store.count_one_time_prekeys(&a).unwrap(), 0);
        assert_eq!(store.count_one_time_prekeys(&b).unwrap(), 3);
    }

    #[tokio::test]
    async fn concurrent_takers_each_get_a_different_key_and_the_count_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let device = DeviceId::from([3; 16]);
        store
            .add_one_time_prekeys(&device, &prekeys(0..64))
            .unwrap();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for _ in 0..10 {
                        ids.push(store.take_one_time_prekey(&device).unwrap().unwrap().id);
                    }
                    ids
                })
            })
            .collect();
        let mut taken: Vec<u32> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        taken.sort_unstable();
        taken.dedup();
        assert_eq!(taken.len(), 40, "a key was handed out twice");
        assert_eq!(store.count_one_time_prekeys(&device).unwrap(), 24);
        assert_eq!(rows(&store, &device), 24);
    }

    /// Opens the store in a runtime of its own and closes both after `f`: the group commit's
    /// task holds the database until its runtime ends.
    fn with_store<T>(dir: &Path, f: impl FnOnce(&SledStore) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let store = open(dir);
        let result = f(&store);
        drop(store);
        result
    }

    #[test]
    fn a_database_without_counts_is_counted_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (DeviceId::from([4; 16]), DeviceId::from([5; 16]));
        with_store(dir.path(), |store| {
            store.add_one_time_prekeys(&a, &prekeys(0..7)).unwrap();
            store.add_one_time_prekeys(&b, &prekeys(0..2)).unwrap();
            // As the release before the counts left it.
            store.prekey_counts.clear().unwrap();
            store.meta.remove(META_PREKEY_COUNTS).unwrap();
            store.db.flush().unwrap();
            assert_eq!(store.count_one_time_prekeys(&a).unwrap(), 0);
        });
        with_store(dir.path(), |store| {
            assert_eq!(store.count_one_time_prekeys(&a).unwrap(), 7);
            assert_eq!(store.count_one_time_prekeys(&b).unwrap(), 2);
            store.take_one_time_prekey(&a).unwrap().unwrap();
            store.db.flush().unwrap();
        });
        // And only once: a count changed after the migration survives the next open.
        let left = with_store(dir.path(), |store| {
            store.count_one_time_prekeys(&a).unwrap()
        });
        assert_eq!(left, 6);
    }

    #[tokio::test]
    async fn a_count_is_sealed_to_its_device() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (a, b) = (DeviceId::from([6; 16]), DeviceId::from([7; 16]));
        store.add_one_time_prekeys(&a, &prekeys(0..9)).unwrap();
        let sealed = store.prekey_counts.get(a.as_bytes()).unwrap().unwrap();
        // Moved to another device's row, it does not open.
        store.prekey_counts.insert(b.as_bytes(), sealed).unwrap();
        assert!(store.count_one_time_prekeys(&b).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod failed_flush_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A hook whose write fails while `fail` is set, as a full disk would.
    #[derive(Debug, Default)]
    struct FaultyHook {
        fail: AtomicBool,
    }

    #[derive(Debug)]
    struct FaultyWrite(bool);

    impl FlushHook for FaultyHook {
        fn take(&self) -> Box<dyn PendingFlush> {
            Box::new(FaultyWrite(self.fail.load(Ordering::SeqCst)))
        }
    }

    impl PendingFlush for FaultyWrite {
        fn name(&self) -> &'static str {
            "faulty test hook"
        }

        fn write(&mut self) -> Result<(), StoreError> {
            if self.0 {
                Err(StoreError::Database("no space left on device".to_owned()))
            } else {
                Ok(())
            }
        }

        fn durable(self: Box<Self>) {}
    }

    /// A hook whose write takes a while, as a large flush's would.
    #[derive(Debug)]
    struct SlowHook(Duration);

    impl FlushHook for SlowHook {
        fn take(&self) -> Box<dyn PendingFlush> {
            Box::new(SlowHook(self.0))
        }
    }

    impl PendingFlush for SlowHook {
        fn name(&self) -> &'static str {
            "slow test hook"
        }

        fn write(&mut self) -> Result<(), StoreError> {
            std::thread::sleep(self.0);
            Ok(())
        }

        fn durable(self: Box<Self>) {}
    }

    /// Log lines, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_slow_flush_is_logged_with_where_its_time_went() {
        let dir = tempfile::tempdir().unwrap();
        let keyring =
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap();
        let store = SledStore::open(&dir.path().join("db"), Arc::new(keyring)).unwrap();
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Other tests may have run this call site with no subscriber listening.
            tracing::callsite::rebuild_interest_cache();
            // Opening may itself have flushed slowly on a busy machine: start the count afresh.
            *store.flusher.slow_logged.lock().unwrap() = (None, 0);
            store.add_flush_hook(Arc::new(SlowHook(SLOW_FLUSH + Duration::from_millis(10))));
            store.flush_now().unwrap();
            // A second slow flush right after: not logged (one line per 10 s at most).
            store.flush_now().unwrap();
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("slow storage flush").count(), 1, "{log}");
        assert!(log.contains("WARN"), "{log}");
        // The hook that took the time is named with its time; the mail log's write follows.
        let slow_write: f64 = log
            .split_once("wrote_ms=slow test hook ")
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|ms| ms.trim().parse().ok())
            .expect("the slow hook's write time");
        assert!(slow_write >= 60.0, "{log}");
        assert!(log.contains(", mail log "), "{log}");
        assert!(log.contains("synced_ms="), "{log}");
        assert!(log.contains("slow_flushes_not_logged=0"), "{log}");
    }

    #[tokio::test]
    async fn after_one_failed_flush_nothing_more_is_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let keyring =
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap();
        let store = SledStore::open(&dir.path().join("db"), Arc::new(keyring)).unwrap();
        let hook = Arc::new(FaultyHook::default());
        store.add_flush_hook(hook.clone());
        store.sync().await.unwrap();

        hook.fail.store(true, Ordering::SeqCst);
        assert!(store.sync().await.is_err());
        // The disk recovers, but what the failed flush took is gone: still refused.
        hook.fail.store(false, Ordering::SeqCst);
        assert!(store.sync().await.is_err());
        let error = store.flush_now().unwrap_err().to_string();
        assert!(error.contains("restart the server"), "{error}");
    }
}
