//! The mailboxes in memory, over the mail log: which sends still wait for which devices, in
//! order; the idempotency index; and which rows of the log are still needed.
//!
//! Sans-IO, like the rest of the relay's core: [`super::mail_log`] feeds it what requests do and
//! what it recovered from disk, asks it what the next flush must write
//! ([`MailState::take_flush`]) and tells it what was written ([`MailState::flushed`]). Every
//! decision about durability and collection is made here, and tested here without a database.
//!
//! # The log
//! A flush writes everything gathered since the one before into *group rows* of at most
//! [`MAX_GROUP_BYTES`]: a send's header, one envelope per recipient device, and `Done` records
//! (these deliveries are finished: acknowledged, revoked, or past retention). One row is one
//! sled value, so a send lands whole or not at all, and a flush of a hundred sends costs a
//! handful of sled writes instead of hundreds.
//!
//! A group row is deleted as soon as nothing in it is needed any more:
//! - every send it holds is finished, or has a newer copy that is written; and
//! - every `Done` in it names only sends with no older copy left on disk (else that copy
//!   would come back as undelivered after a restart).
//!
//! When the last copy of a finished send goes, its idempotency record goes into the deleted
//! group's *summary* row, kept until retention. An old group holding little that is still
//! waiting (an offline device's mail among finished sends) is compacted: the waiting sends'
//! sealed records are copied unchanged into the next flush, after which the old row can go.
//!
//! Only sends that are durable are handed out for delivery ([`MailState::deliverable`]), so a
//! recipient never sees a message the server could still lose.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;
use medrelay_proto::ids::{ClientMessageId, ConversationId, DeviceId, MessageId, OrgId, UserId};
use serde::{Deserialize, Serialize};

use super::SendRecord;

/// Position of a send in the mail log: strictly increasing in the order sends were accepted.
pub type Seq = u64;
/// Number of a group row of the mail log.
pub type GroupNo = u64;

/// Most bytes of records in one group row. sled 0.34 stores a log message over a quarter of a
/// segment (128 KiB) as a separate blob file (a file written and synced of its own), and it
/// rewrites a whole leaf, up to 16 rows, when it consolidates one: 16 rows this size stay
/// within that. Measured here, sled's cost per byte is the same from 8 KiB rows up.
pub const MAX_GROUP_BYTES: usize = 8 * 1024;
/// Groups written after a group before it is considered for compaction.
pub const COMPACT_AFTER_GROUPS: u64 = 64;
/// Old groups examined for compaction per flush (the rest wait for later flushes).
pub const COMPACT_CHECKS_PER_FLUSH: usize = 8;
/// Bytes of envelopes copied by compaction in one flush at most.
pub const COMPACT_BYTES_PER_FLUSH: usize = 256 * 1024;

/// Flushes between two looks at every group for collection (in between, only the groups
/// something happened to are looked at; the full look is a safety net).
pub const FULL_COLLECTION_SCAN_EVERY: u32 = 64;

/// Bytes a record costs in a row besides its payload (sealing header, tag and framing).
const RECORD_OVERHEAD: usize = 64;

/// Shards of the idempotency index (a power of two).
const SENT_SHARDS: usize = 256;

/// What the server knows of a send besides its ciphertexts: its routing and its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMeta {
    /// Its position in the log.
    pub seq: Seq,
    /// The sender's org.
    pub org: OrgId,
    /// The message's server id.
    pub message_id: MessageId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Who sent it.
    pub sender_user: UserId,
    /// From which device.
    pub sender_device: DeviceId,
    /// The sender's own id for it (idempotency).
    pub client_message_id: ClientMessageId,
    /// When the server accepted it.
    pub server_time_ms: u64,
}

impl SendMeta {
    /// The idempotency record of this send.
    pub fn record(&self) -> SendRecord {
        SendRecord {
            message_id: self.message_id,
            server_time_ms: self.server_time_ms,
        }
    }

    fn idempotency_key(&self) -> SentKey {
        (self.sender_device, self.client_message_id)
    }
}

/// An idempotency key: the sending device and its own id for the message.
type SentKey = (DeviceId, ClientMessageId);

/// The idempotency index: every send's record until retention, so it grows with the mail a
/// retention period holds. One map would, at each doubling, rehash every record at once
/// while the mail state's lock is held: at a million records, hundreds of milliseconds in
/// which no send, flush or delivery moves. In shards, a doubling moves one shard's share.
/// The shard is picked by a keyed hash, so a client choosing its ids cannot fill one shard.
#[derive(Debug)]
struct SentIndex {
    pick: RandomState,
    shards: Vec<HashMap<SentKey, SendRecord>>,
}

impl SentIndex {
    fn new() -> SentIndex {
        SentIndex {
            pick: RandomState::new(),
            shards: (0..SENT_SHARDS).map(|_| HashMap::new()).collect(),
        }
    }

    fn shard(&self, key: &SentKey) -> usize {
        // The hash's low bits pick the shard; each shard's map hashes with keys of its own.
        (self.pick.hash_one(key) as usize) & (SENT_SHARDS - 1)
    }

    fn get(&self, key: &SentKey) -> Option<&SendRecord> {
        self.shards.get(self.shard(key))?.get(key)
    }

    fn insert(&mut self, key: SentKey, record: SendRecord) {
        let shard = self.shard(&key);
        if let Some(map) = self.shards.get_mut(shard) {
            map.insert(key, record);
        }
    }

    fn remove(&mut self, key: &SentKey) {
        let shard = self.shard(key);
        if let Some(map) = self.shards.get_mut(shard) {
            map.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }
}

/// Where a sealed record lies in a written group row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// The row.
    pub group: GroupNo,
    /// Byte offset of the sealed record in the row's value.
    pub offset: u32,
    /// Its length.
    pub len: u32,
}

/// A send's records as the mail log stores them, sealed when the send is appended (so the
/// work is spread over the requests, not left to the flush), outside the state's lock (see
/// [`MailState::reserve_send`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSend {
    /// The header's payload.
    pub header: Vec<u8>,
    /// Each envelope's payload, per device.
    pub envelopes: Vec<(DeviceId, Vec<u8>)>,
    /// The org archive's item as its row's value, if the org archives.
    pub archive: Option<Vec<u8>>,
}

/// A record the next flush writes.
#[derive(Debug, Clone)]
pub enum Record {
    /// A new send: its header and one envelope per recipient device, and its archive item.
    Send {
        /// The header.
        meta: SendMeta,
        /// Its sealed records.
        sealed: SealedSend,
    },
    /// A written send's sealed header and still-waiting envelopes, copied as they are
    /// (compaction).
    Copy {
        /// The send.
        seq: Seq,
        /// Its header.
        header: Loc,
        /// Its envelopes that still wait, per device.
        envelopes: Vec<(DeviceId, Loc)>,
    },
    /// These deliveries are finished.
    Done {
        /// The device.
        device: DeviceId,
        /// The sends.
        seqs: Vec<Seq>,
    },
}

impl Record {
    /// Bytes the record takes in a row, roughly (for splitting a flush into rows).
    fn size(&self) -> usize {
        match self {
            Record::Send { sealed, .. } => {
                RECORD_OVERHEAD
                    + sealed.header.len()
                    + sealed
                        .envelopes
                        .iter()
                        .map(|(_, c)| RECORD_OVERHEAD + c.len())
                        .sum::<usize>()
            }
            Record::Copy {
                header, envelopes, ..
            } => {
                2 * RECORD_OVERHEAD
                    + header.len as usize
                    + envelopes
                        .iter()
                        .map(|(_, l)| RECORD_OVERHEAD + l.len as usize)
                        .sum::<usize>()
            }
            Record::Done { seqs, .. } => RECORD_OVERHEAD + 24 + 9 * seqs.len(),
        }
    }
}

/// What one flush must do, in this order: write each group row, then write the summary rows
/// of the collected groups and delete those groups (in ascending order).
#[derive(Debug, Default)]
pub struct FlushPlan {
    /// Rows to write.
    pub groups: Vec<(GroupNo, Vec<Record>)>,
    /// Rows to delete, each with the idempotency records of the sends whose last copy it
    /// holds (the summary row written under the same number first).
    pub collect: Vec<(GroupNo, Vec<SendMeta>)>,
    /// The highest seq of a new send in this plan (0: none).
    pub newest: Seq,
}

impl FlushPlan {
    /// Whether the flush has nothing of the mail log to write.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.collect.is_empty()
    }
}

/// Where the records of one send or copy landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// The send.
    pub seq: Seq,
    /// Its header.
    pub header: Loc,
    /// Its envelopes.
    pub envelopes: Vec<(DeviceId, Loc)>,
}

/// A record found in a group row at startup.
#[derive(Debug, Clone)]
pub enum Recovered {
    /// A send's header.
    Header {
        /// The header.
        meta: SendMeta,
        /// Where it lies.
        loc: Loc,
    },
    /// An envelope.
    Envelope {
        /// Its send.
        seq: Seq,
        /// Its device.
        device: DeviceId,
        /// Where it lies.
        loc: Loc,
    },
    /// Finished deliveries.
    Done {
        /// The device.
        device: DeviceId,
        /// The sends.
        seqs: Vec<Seq>,
    },
}

/// Where the ciphertext of a delivery comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Still in memory.
    Cached(Bytes),
    /// In a group row, sealed.
    Stored(Loc),
}

/// One delivery to hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliverable {
    /// The send.
    pub meta: SendMeta,
    /// Its ciphertext for this device.
    pub source: Source,
}

/// The outcome of reserving a send's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The position is taken (in the meta): seal the send's records, then complete it with
    /// [`MailState::complete_send`] or give it up with [`MailState::cancel_send`].
    Reserved(SendMeta),
    /// This (sender device, client message id) was sent before: nothing was reserved.
    Duplicate(SendRecord),
    /// This (sender device, client message id) is being sealed right now: nothing was
    /// reserved. It cannot be answered as a duplicate yet, as the first may still be given up.
    InProgress,
}

/// An entry of what the next flush writes: a record, or the place of a send being sealed.
#[derive(Debug)]
enum Pending {
    Ready(Record),
    /// A reserved send, not yet complete: no flush takes it or anything after it.
    Sealing(Seq),
}

/// The outcome of appending a send.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored (durable at the next flush).
    Stored(SendRecord),
    /// This (sender device, client message id) was sent before: nothing was stored.
    Duplicate(SendRecord),
    /// This (sender device, client message id) is being sealed: nothing was stored.
    InProgress,
}

/// One send whose records are still in the log (or pending).
#[derive(Debug, Clone)]
struct Send {
    meta: SendMeta,
    /// Devices still waiting, with where their envelope lies in the home copy (None: not
    /// written yet).
    waiting: Vec<(DeviceId, Option<Loc>)>,
    /// Where the header lies in the home copy.
    header: Option<Loc>,
    /// The group whose copy reads use (None: not written yet).
    home: Option<GroupNo>,
    /// A copy the flush in progress writes (compaction).
    moving_to: Option<GroupNo>,
    /// Every group holding a copy, written or being written.
    copies: Vec<GroupNo>,
    /// Past retention: no idempotency record is kept when its last copy goes.
    expired: bool,
}

impl Send {
    fn finished(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// One group row.
#[derive(Debug, Clone, Default)]
struct Group {
    /// Written by a completed flush.
    written: bool,
    /// Sends with a copy in it.
    holds: Vec<Seq>,
    /// Deliveries its `Done` records finish.
    refs: Vec<(Seq, DeviceId)>,
}

/// What waits for one device.
#[derive(Debug, Default)]
struct Queue {
    by_seq: BTreeMap<Seq, MessageId>,
    by_id: HashMap<MessageId, Seq>,
}

/// Recent ciphertexts in memory, so online devices get them without reading and opening rows.
#[derive(Debug)]
struct Cache {
    entries: HashMap<(Seq, DeviceId), Bytes>,
    order: VecDeque<(Seq, DeviceId)>,
    bytes: usize,
    budget: usize,
}

impl Cache {
    fn insert(&mut self, key: (Seq, DeviceId), bytes: Bytes) {
        self.bytes += bytes.len();
        if let Some(old) = self.entries.insert(key, bytes) {
            self.bytes -= old.len();
        }
        self.order.push_back(key);
        while self.bytes > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.entries.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
        // Keys of entries removed since stay in `order` until they reach its front; keep
        // that bounded too.
        if self.order.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    fn remove(&mut self, key: &(Seq, DeviceId)) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.len();
        }
    }
}

/// Counts for `/metrics` and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailStats {
    /// Sends with a device still waiting.
    pub waiting_sends: u64,
    /// Deliveries waiting, over all devices.
    pub waiting_deliveries: u64,
    /// Group rows on disk or being written.
    pub groups: u64,
    /// Idempotency records held.
    pub idempotency_records: u64,
    /// Bytes of ciphertext cached in memory.
    pub cached_bytes: u64,
}

/// The mailboxes in memory. See the module documentation.
#[derive(Debug)]
pub struct MailState {
    next_group: GroupNo,
    next_flush: u64,
    /// What the next flush writes, in the order it happened.
    pending: Vec<Pending>,
    /// Sends reserved and not yet completed or given up, with their idempotency keys.
    sealing: BTreeMap<Seq, SentKey>,
    /// The newest position reserved.
    last_reserved: Seq,
    /// Flushes waiting for a send being sealed (see [`Self::sealing_through`]).
    flushes_waiting: usize,
    sends: HashMap<Seq, Send>,
    queues: HashMap<DeviceId, Queue>,
    sent: SentIndex,
    groups: BTreeMap<GroupNo, Group>,
    /// Every send up to here is durable.
    durable: Seq,
    /// Where the compaction scan resumes.
    compact_cursor: GroupNo,
    cache: Cache,
    /// Devices revoked since the start: a send that read its device list before the
    /// revocation and appends after it leaves nothing waiting for them.
    revoked: HashSet<DeviceId>,
    /// Groups that may have become collectable since the last flush looked: a send they
    /// hold finished or moved, or they were written. Only these, and the groups holding
    /// `Done` records, are looked at (at saturation the log holds hundreds of rows, each
    /// pinned by a message or two still in flight).
    dirty: BTreeSet<GroupNo>,
    /// Groups holding `Done` records: looked at every flush, as the older copies their
    /// records outlive may go at any time.
    with_refs: BTreeSet<GroupNo>,
    /// Flushes until the next look at every group.
    full_scan_in: u32,
}

impl MailState {
    /// An empty state whose first group is `next_group`, caching up to `cache_budget` bytes
    /// of ciphertext.
    pub fn new(next_group: GroupNo, cache_budget: usize) -> MailState {
        MailState {
            next_group: next_group.max(1),
            next_flush: 1,
            pending: Vec::new(),
            sealing: BTreeMap::new(),
            last_reserved: 0,
            flushes_waiting: 0,
            sends: HashMap::new(),
            queues: HashMap::new(),
            sent: SentIndex::new(),
            groups: BTreeMap::new(),
            durable: 0,
            compact_cursor: 0,
            cache: Cache {
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                budget: cache_budget,
            },
            revoked: HashSet::new(),
            dirty: BTreeSet::new(),
            with_refs: BTreeSet::new(),
            full_scan_in: 0,
        }
    }

    /// Rebuilds the state from what is on disk: the group rows in ascending order, the
    /// summary rows, and which devices are revoked (their deliveries are finished). Returns
    /// the state and the `Done` records to append for deliveries finished by revocation.
    pub fn recover(
        groups: Vec<(GroupNo, Vec<Recovered>)>,
        summaries: Vec<(GroupNo, Vec<SendMeta>)>,
        revoked: impl Fn(&DeviceId) -> bool,
        cache_budget: usize,
    ) -> MailState {
        let highest_group = groups
            .iter()
            .map(|(g, _)| *g)
            .chain(summaries.iter().map(|(g, _)| *g))
            .max()
            .unwrap_or(0);
        let mut state = MailState::new(highest_group + 1, cache_budget);
        let mut done: HashSet<(Seq, DeviceId)> = HashSet::new();
        for (number, records) in groups {
            let mut group = Group {
                written: true,
                ..Group::default()
            };
            for record in records {
                match record {
                    Recovered::Header { meta, loc } => {
                        let seq = meta.seq;
                        state.durable = state.durable.max(seq);
                        let send = state.sends.entry(seq).or_insert_with(|| Send {
                            meta: meta.clone(),
                            waiting: Vec::new(),
                            header: None,
                            home: None,
                            moving_to: None,
                            copies: Vec::new(),
                            expired: false,
                        });
                        // A later copy (compaction) replaces what reads use.
                        send.header = Some(loc);
                        send.home = Some(number);
                        send.waiting.clear();
                        if !send.copies.contains(&number) {
                            send.copies.push(number);
                        }
                        if !group.holds.contains(&seq) {
                            group.holds.push(seq);
                        }
                    }
                    Recovered::Envelope { seq, device, loc } => {
                        // An envelope belongs to the header before it in the same row.
                        if let Some(send) = state.sends.get_mut(&seq) {
                            if send.home == Some(number) {
                                send.waiting.push((device, Some(loc)));
                            }
                        }
                    }
                    Recovered::Done { device, seqs } => {
                        for seq in seqs {
                            done.insert((seq, device));
                            group.refs.push((seq, device));
                        }
                    }
                }
            }
            if !group.refs.is_empty() {
                state.with_refs.insert(number);
            }
            state.groups.insert(number, group);
        }
        // Summaries first: a send still in the log is newer than any summary entry with
        // the same key (a client that reused an id after its record expired).
        for (_, metas) in summaries {
            for meta in metas {
                state.sent.insert(meta.idempotency_key(), meta.record());
            }
        }
        for (seq, send) in &mut state.sends {
            send.waiting
                .retain(|(device, _)| !done.contains(&(*seq, *device)) && !revoked(device));
            state
                .sent
                .insert(send.meta.idempotency_key(), send.meta.record());
            for (device, _) in &send.waiting {
                let queue = state.queues.entry(*device).or_default();
                queue.by_seq.insert(*seq, send.meta.message_id);
                queue.by_id.insert(send.meta.message_id, *seq);
            }
        }
        state
    }

    /// The earlier send of this (sender device, client message id), if any. A send still
    /// being sealed is not one yet: it may still be given up (a repeat then goes on to
    /// [`Self::reserve_send`], which says it is in progress).
    pub fn sent(
        &self,
        sender: &DeviceId,
        client_message_id: &ClientMessageId,
    ) -> Option<SendRecord> {
        let key = (*sender, *client_message_id);
        if self.sealing.values().any(|k| *k == key) {
            return None;
        }
        self.sent.get(&key).copied()
    }

    /// Appends a send, or finds it was sent before: [`Self::reserve_send`], `seal`, then
    /// [`Self::complete_send`] (or [`Self::cancel_send`] if `seal` fails: nothing changes).
    /// The tests' shorthand for what the mail log does in steps.
    #[cfg(test)]
    pub fn append_send<E>(
        &mut self,
        meta_without_seq: SendMeta,
        envelopes: Vec<(DeviceId, Bytes)>,
        next_seq: impl FnOnce() -> Result<Seq, E>,
        seal: impl FnOnce(&SendMeta) -> Result<SealedSend, E>,
    ) -> Result<Appended, E> {
        let meta = match self.reserve_send(meta_without_seq, next_seq)? {
            Reservation::Duplicate(record) => return Ok(Appended::Duplicate(record)),
            Reservation::InProgress => return Ok(Appended::InProgress),
            Reservation::Reserved(meta) => meta,
        };
        match seal(&meta) {
            Ok(sealed) => Ok(Appended::Stored(
                self.complete_send(meta, envelopes, sealed).0,
            )),
            Err(error) => {
                self.cancel_send(&meta);
                Err(error)
            }
        }
    }

    /// Takes a send's position, or finds it was sent before. `next_seq` is called (once,
    /// inside) to take the position, so positions follow the order sends are reserved in; it
    /// must give positions above every earlier one, from 1 (0 is below the durable mark of an
    /// empty log).
    ///
    /// The send's records are sealed after this, with the position in their associated data,
    /// and without the lock the caller holds around this state: sealing is the costliest part
    /// of a send, and the connections would otherwise wait for one another. Its place in the
    /// log is kept meanwhile: a flush takes nothing from it on until it is completed or given
    /// up, so what a flush writes is always everything up to one moment, and the durable mark
    /// never passes a send that is not yet written.
    pub fn reserve_send<E>(
        &mut self,
        meta_without_seq: SendMeta,
        next_seq: impl FnOnce() -> Result<Seq, E>,
    ) -> Result<Reservation, E> {
        let key = meta_without_seq.idempotency_key();
        if let Some(previous) = self.sent.get(&key) {
            // At most one send per runtime worker is being sealed at a time: a short look.
            if self.sealing.values().any(|k| *k == key) {
                return Ok(Reservation::InProgress);
            }
            return Ok(Reservation::Duplicate(*previous));
        }
        let seq = next_seq()?;
        let meta = SendMeta {
            seq,
            ..meta_without_seq
        };
        // Recorded now, so a repeat arriving while this one is sealed is not taken as new.
        self.sent.insert(key, meta.record());
        self.sealing.insert(seq, key);
        self.last_reserved = self.last_reserved.max(seq);
        self.pending.push(Pending::Sealing(seq));
        Ok(Reservation::Reserved(meta))
    }

    /// Completes a reserved send with its sealed records: it waits for its devices from the
    /// next flush on. Also returns whether a flush waits for it (see
    /// [`Self::sealing_through`]).
    pub fn complete_send(
        &mut self,
        meta: SendMeta,
        envelopes: Vec<(DeviceId, Bytes)>,
        sealed: SealedSend,
    ) -> (SendRecord, bool) {
        let seq = meta.seq;
        let mut waiting = Vec::with_capacity(envelopes.len());
        for (device, ciphertext) in envelopes {
            if self.revoked.contains(&device) {
                continue;
            }
            waiting.push((device, None));
            let queue = self.queues.entry(device).or_default();
            queue.by_seq.insert(seq, meta.message_id);
            queue.by_id.insert(meta.message_id, seq);
            self.cache.insert((seq, device), ciphertext);
        }
        self.sends.insert(
            seq,
            Send {
                meta: meta.clone(),
                waiting,
                header: None,
                home: None,
                moving_to: None,
                copies: Vec::new(),
                expired: false,
            },
        );
        let record = meta.record();
        let ready = Pending::Ready(Record::Send { meta, sealed });
        // Its place is near the end: only what happened while it was sealed is after it.
        match self
            .pending
            .iter_mut()
            .rev()
            .find(|p| matches!(p, Pending::Sealing(s) if *s == seq))
        {
            Some(place) => *place = ready,
            // Not reserved: cannot happen; written with the next flush all the same.
            None => self.pending.push(ready),
        }
        self.sealing.remove(&seq);
        (record, self.flushes_waiting > 0)
    }

    /// Gives up a reserved send (its records could not be sealed): as if it never came. Returns
    /// whether a flush waits for it.
    pub fn cancel_send(&mut self, meta: &SendMeta) -> bool {
        self.pending
            .retain(|p| !matches!(p, Pending::Sealing(s) if *s == meta.seq));
        self.sealing.remove(&meta.seq);
        let key = meta.idempotency_key();
        if self
            .sent
            .get(&key)
            .is_some_and(|r| r.message_id == meta.message_id)
        {
            self.sent.remove(&key);
        }
        self.flushes_waiting > 0
    }

    /// The newest position reserved so far.
    pub fn last_reserved(&self) -> Seq {
        self.last_reserved
    }

    /// Whether a send at or before position `cut` is still being sealed. A flush takes, from
    /// the state, every send reserved before the flush began (`cut`: the
    /// [`Self::last_reserved`] then), so that a sync that began after a send was stored covers
    /// it: while this is true, it waits, counted by [`Self::flush_waits`], and
    /// [`Self::complete_send`] and [`Self::cancel_send`] say when to look again.
    pub fn sealing_through(&self, cut: Seq) -> bool {
        self.sealing.range(..=cut).next().is_some()
    }

    /// A flush starts (`true`) or stops (`false`) waiting for sends being sealed.
    pub fn flush_waits(&mut self, waiting: bool) {
        if waiting {
            self.flushes_waiting += 1;
        } else {
            self.flushes_waiting = self.flushes_waiting.saturating_sub(1);
        }
    }

    /// Up to `limit` durable deliveries waiting for `device` after position `after` (from
    /// the start if `None`), oldest first.
    pub fn deliverable(
        &self,
        device: &DeviceId,
        after: Option<Seq>,
        limit: usize,
    ) -> Vec<Deliverable> {
        let Some(queue) = self.queues.get(device) else {
            return Vec::new();
        };
        let start = match after {
            Some(seq) => match seq.checked_add(1) {
                Some(next) => next,
                None => return Vec::new(),
            },
            None => 0,
        };
        if start > self.durable {
            return Vec::new();
        }
        let mut out = Vec::new();
        for seq in queue.by_seq.range(start..=self.durable).map(|(s, _)| *s) {
            if out.len() >= limit {
                break;
            }
            let Some(send) = self.sends.get(&seq) else {
                continue;
            };
            let source = match self.cache.entries.get(&(seq, *device)) {
                Some(bytes) => Source::Cached(bytes.clone()),
                None => match send
                    .waiting
                    .iter()
                    .find(|(d, _)| d == device)
                    .and_then(|(_, loc)| *loc)
                {
                    Some(loc) => Source::Stored(loc),
                    // Durable but its location not recorded: cannot happen; skip it.
                    None => continue,
                },
            };
            out.push(Deliverable {
                meta: send.meta.clone(),
                source,
            });
        }
        out
    }

    /// Finishes `device`'s deliveries of these messages (an acknowledgement); returns how
    /// many were waiting.
    pub fn acknowledge(&mut self, device: &DeviceId, message_ids: &[MessageId]) -> u32 {
        let seqs: Vec<Seq> = match self.queues.get(device) {
            Some(queue) => message_ids
                .iter()
                .filter_map(|id| queue.by_id.get(id).copied())
                .collect(),
            None => return 0,
        };
        self.finish(device, &seqs)
    }

    /// Finishes every delivery waiting for `device` (revoked); returns how many.
    pub fn drop_device(&mut self, device: &DeviceId) -> u32 {
        self.revoked.insert(*device);
        let seqs: Vec<Seq> = match self.queues.get(device) {
            Some(queue) => queue.by_seq.keys().copied().collect(),
            None => return 0,
        };
        self.finish(device, &seqs)
    }

    /// Finishes these deliveries of `device` and logs it; returns how many were waiting.
    fn finish(&mut self, device: &DeviceId, seqs: &[Seq]) -> u32 {
        let mut finished = Vec::new();
        for seq in seqs {
            let Some(send) = self.sends.get_mut(seq) else {
                continue;
            };
            let before = send.waiting.len();
            send.waiting.retain(|(d, _)| d != device);
            if send.waiting.len() == before {
                continue;
            }
            if send.finished() {
                self.dirty.extend(send.copies.iter().copied());
            }
            if let Some(queue) = self.queues.get_mut(device) {
                queue.by_seq.remove(seq);
                queue.by_id.remove(&send.meta.message_id);
            }
            self.cache.remove(&(*seq, *device));
            finished.push(*seq);
        }
        if self.queues.get(device).is_some_and(|q| q.by_seq.is_empty()) {
            self.queues.remove(device);
        }
        let count = u32::try_from(finished.len()).unwrap_or(u32::MAX);
        if !finished.is_empty() {
            self.pending.push(Pending::Ready(Record::Done {
                device: *device,
                seqs: finished,
            }));
        }
        count
    }

    /// Retention: finishes every waiting delivery of a send for which `past` says its
    /// retention ran out and `held` does not keep it, and drops the idempotency records
    /// `past_record` says are expired. Returns, per org, (envelopes deleted, envelopes kept by
    /// a hold).
    pub fn expire(
        &mut self,
        past: impl Fn(&SendMeta) -> bool,
        held: impl Fn(&SendMeta) -> bool,
        forget_record: impl Fn(&SendMeta) -> bool,
    ) -> BTreeMap<OrgId, (u64, u64)> {
        let mut counts: BTreeMap<OrgId, (u64, u64)> = BTreeMap::new();
        let mut to_finish: BTreeMap<DeviceId, Vec<Seq>> = BTreeMap::new();
        let mut seqs: Vec<Seq> = self.sends.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let Some(send) = self.sends.get_mut(&seq) else {
                continue;
            };
            if !past(&send.meta) {
                continue;
            }
            let waiting = send.waiting.len() as u64;
            if held(&send.meta) {
                counts.entry(send.meta.org).or_default().1 += waiting;
                continue;
            }
            counts.entry(send.meta.org).or_default().0 += waiting;
            for (device, _) in &send.waiting {
                to_finish.entry(*device).or_default().push(seq);
            }
            if forget_record(&send.meta) {
                send.expired = true;
                // Only its own record: a later send may have reused the key since.
                let key = send.meta.idempotency_key();
                if self
                    .sent
                    .get(&key)
                    .is_some_and(|r| r.message_id == send.meta.message_id)
                {
                    self.sent.remove(&key);
                }
            }
        }
        for (device, seqs) in to_finish {
            self.finish(&device, &seqs);
        }
        counts
    }

    /// Forgets an idempotency record (its summary entry is past retention).
    pub fn forget_sent(&mut self, meta: &SendMeta) {
        // A send still in the log keeps its own record until its last copy goes, and a
        // later send that reused the key keeps its own.
        let key = meta.idempotency_key();
        if !self.sends.contains_key(&meta.seq)
            && self
                .sent
                .get(&key)
                .is_some_and(|r| r.message_id == meta.message_id)
        {
            self.sent.remove(&key);
        }
    }

    /// Every send still in the log (for the sweep's view of which keys are needed).
    pub fn sends_in_log(&self) -> impl Iterator<Item = &SendMeta> {
        self.sends.values().filter(|s| !s.expired).map(|s| &s.meta)
    }

    /// What the next flush writes and deletes. Call once per flush, then [`Self::flushed`]
    /// with where the records landed once they are durable.
    pub fn take_flush(&mut self) -> FlushPlan {
        let mut plan = FlushPlan::default();
        // Everything up to the first send still being sealed; the rest waits for the next.
        let later = match self
            .pending
            .iter()
            .position(|p| matches!(p, Pending::Sealing(_)))
        {
            Some(first) => self.pending.split_off(first),
            None => Vec::new(),
        };
        let mut taken: Vec<Record> = std::mem::replace(&mut self.pending, later)
            .into_iter()
            .filter_map(|p| match p {
                Pending::Ready(record) => Some(record),
                Pending::Sealing(_) => None,
            })
            .collect();
        // Collect first: a group is judged on what was durable before this flush. `Done`
        // records that must outlive a collected group go into this flush's rows, which are
        // written before anything is deleted.
        let (collect, relog) = self.collectable();
        self.dirty.clear();
        self.full_scan_in = match self.full_scan_in {
            0 => FULL_COLLECTION_SCAN_EVERY,
            n => n - 1,
        };
        plan.collect = collect;
        for (number, _) in &plan.collect {
            self.forget_group(*number);
        }
        for (device, seqs) in relog {
            taken.push(Record::Done { device, seqs });
        }
        // A `Done` naming only sends whose last copy this flush deletes says nothing the
        // deletion does not: the acknowledgement is answered after this flush either way.
        // Most acknowledgements arrive before the next flush, so most `Done`s go here.
        let sends = &self.sends;
        taken.retain_mut(|record| match record {
            Record::Done { seqs, .. } => {
                seqs.retain(|seq| sends.contains_key(seq));
                !seqs.is_empty()
            }
            Record::Send { .. } | Record::Copy { .. } => true,
        });
        // Copies go into rows of their own: they hold mail that waits long (an offline
        // device's), which new traffic would otherwise pin and then copy again.
        let copies = self.plan_compaction();
        let fresh = taken;
        let mut rows: Vec<Vec<Record>> = Vec::new();
        for records in [fresh, copies] {
            let mut row_bytes = MAX_GROUP_BYTES;
            for record in records {
                let size = record.size();
                match rows.last_mut() {
                    Some(row) if row_bytes + size <= MAX_GROUP_BYTES => {
                        row_bytes += size;
                        row.push(record);
                    }
                    _ => {
                        row_bytes = size;
                        rows.push(vec![record]);
                    }
                }
            }
        }
        for records in rows {
            let number = self.next_group;
            self.next_group += 1;
            let mut group = Group::default();
            for record in &records {
                match record {
                    Record::Send { meta, .. } => {
                        plan.newest = plan.newest.max(meta.seq);
                        group.holds.push(meta.seq);
                        if let Some(send) = self.sends.get_mut(&meta.seq) {
                            send.copies.push(number);
                            send.home = Some(number);
                        }
                    }
                    Record::Copy { seq, .. } => {
                        group.holds.push(*seq);
                        if let Some(send) = self.sends.get_mut(seq) {
                            send.copies.push(number);
                            send.moving_to = Some(number);
                        }
                    }
                    Record::Done { device, seqs } => {
                        group.refs.extend(seqs.iter().map(|s| (*s, *device)));
                    }
                }
            }
            if !group.refs.is_empty() {
                self.with_refs.insert(number);
            }
            self.groups.insert(number, group);
            plan.groups.push((number, records));
        }
        self.next_flush += 1;
        plan
    }

    /// Groups that can be deleted now, ascending, each with the idempotency records of the
    /// sends whose last copy it is; and the deliveries whose `Done` records must be written
    /// again because an older copy of their send stays on disk.
    #[allow(clippy::type_complexity)]
    fn collectable(&self) -> (Vec<(GroupNo, Vec<SendMeta>)>, BTreeMap<DeviceId, Vec<Seq>>) {
        self.collectable_among(self.collection_candidates())
    }

    /// [`Self::collectable`], looking at these groups (ascending) only.
    #[allow(clippy::type_complexity)]
    fn collectable_among(
        &self,
        candidates: Vec<GroupNo>,
    ) -> (Vec<(GroupNo, Vec<SendMeta>)>, BTreeMap<DeviceId, Vec<Seq>>) {
        let mut out = Vec::new();
        let mut relog: BTreeMap<DeviceId, Vec<Seq>> = BTreeMap::new();
        let mut deleting: HashSet<GroupNo> = HashSet::new();
        for number in candidates {
            let Some(group) = self.groups.get(&number) else {
                continue;
            };
            let number = &number;
            if !group.written {
                continue;
            }
            let needed = group.holds.iter().any(|seq| match self.sends.get(seq) {
                None => false,
                // Reads use this copy, or the newer one is not written yet.
                Some(send) => {
                    !send.finished()
                        && (send.home == Some(*number)
                            || send.moving_to.is_some()
                            || send
                                .home
                                .is_none_or(|h| !self.groups.get(&h).is_some_and(|g| g.written)))
                }
            });
            if needed {
                continue;
            }
            // A `Done` here must outlive every older copy of what it names: written again
            // in this flush, it does.
            let must_relog: Vec<(Seq, DeviceId)> = group
                .refs
                .iter()
                .filter(|(seq, _)| {
                    self.sends.get(seq).is_some_and(|send| {
                        send.copies
                            .iter()
                            .any(|c| c < number && !deleting.contains(c))
                    })
                })
                .copied()
                .collect();
            // A row of nothing but such `Done` records would only be written again, flush
            // after flush, for as long as the older copy stays: keep it instead.
            let frees_a_send = group.holds.iter().any(|seq| self.sends.contains_key(seq));
            if !must_relog.is_empty() && !frees_a_send {
                continue;
            }
            for (seq, device) in must_relog {
                relog.entry(device).or_default().push(seq);
            }
            let mut summary = Vec::new();
            for seq in &group.holds {
                if let Some(send) = self.sends.get(seq) {
                    let last_copy = send
                        .copies
                        .iter()
                        .all(|c| c == number || deleting.contains(c));
                    if last_copy && !send.expired {
                        summary.push(send.meta.clone());
                    }
                }
            }
            deleting.insert(*number);
            out.push((*number, summary));
        }
        for seqs in relog.values_mut() {
            seqs.sort_unstable();
            seqs.dedup();
        }
        (out, relog)
    }

    /// The groups [`Self::collectable`] looks at, ascending: every group now and then, else
    /// those something happened to and those holding `Done` records.
    fn collection_candidates(&self) -> Vec<GroupNo> {
        if self.full_scan_in == 0 {
            self.groups.keys().copied().collect()
        } else {
            self.dirty.union(&self.with_refs).copied().collect()
        }
    }

    /// Drops a collected group and the sends whose last copy it held.
    fn forget_group(&mut self, number: GroupNo) {
        self.with_refs.remove(&number);
        let Some(group) = self.groups.remove(&number) else {
            return;
        };
        for seq in group.holds {
            let gone = match self.sends.get_mut(&seq) {
                Some(send) => {
                    send.copies.retain(|c| *c != number);
                    send.copies.is_empty()
                }
                None => false,
            };
            if gone {
                self.sends.remove(&seq);
            }
        }
    }

    /// Copies of the still-waiting sends of old, mostly finished groups, for this flush.
    fn plan_compaction(&mut self) -> Vec<Record> {
        let mut planned = Vec::new();
        let horizon = self.next_group.saturating_sub(COMPACT_AFTER_GROUPS);
        let mut budget = COMPACT_BYTES_PER_FLUSH;
        let candidates: Vec<GroupNo> = self
            .groups
            .range(self.compact_cursor..horizon)
            .take(COMPACT_CHECKS_PER_FLUSH)
            .map(|(n, _)| *n)
            .collect();
        self.compact_cursor = match candidates.last() {
            Some(last) if candidates.len() == COMPACT_CHECKS_PER_FLUSH => last + 1,
            // Reached the horizon: start over next time.
            _ => 0,
        };
        for number in candidates {
            let Some(group) = self.groups.get(&number) else {
                continue;
            };
            if !group.written {
                continue;
            }
            let mut copies = Vec::new();
            let (mut live, mut dead) = (0usize, 0usize);
            for seq in &group.holds {
                let Some(send) = self.sends.get(seq) else {
                    continue;
                };
                if send.home != Some(number) || send.moving_to.is_some() {
                    continue;
                }
                let waiting: Vec<(DeviceId, Loc)> = send
                    .waiting
                    .iter()
                    .filter_map(|(d, l)| l.map(|l| (*d, l)))
                    .collect();
                let bytes: usize = waiting.iter().map(|(_, l)| l.len as usize).sum();
                if send.finished() {
                    dead += 1;
                    continue;
                }
                live += bytes;
                if let Some(header) = send.header {
                    copies.push(Record::Copy {
                        seq: *seq,
                        header,
                        envelopes: waiting,
                    });
                }
            }
            // Worth it only when the row is mostly finished, or pinned by a few waiting sends.
            let worth = live > 0 && (dead >= copies.len() || live < MAX_GROUP_BYTES / 2);
            if !worth || live > budget {
                continue;
            }
            budget -= live;
            for copy in copies {
                if let Record::Copy { seq, .. } = &copy {
                    if let Some(send) = self.sends.get_mut(seq) {
                        // Marked now so that no other flush copies it again.
                        send.moving_to = Some(0);
                    }
                }
                planned.push(copy);
            }
        }
        planned
    }

    /// Everything `plan` wrote is durable; `landed` says where its sends and copies lie.
    pub fn flushed(&mut self, plan: &FlushPlan, landed: Vec<Landed>) {
        for (number, _) in &plan.groups {
            if let Some(group) = self.groups.get_mut(number) {
                group.written = true;
                self.dirty.insert(*number);
            }
        }
        for landed in landed {
            let Some(send) = self.sends.get_mut(&landed.seq) else {
                continue;
            };
            let group = landed.header.group;
            // Reads move to the new copy: the older ones may be collectable now.
            self.dirty
                .extend(send.copies.iter().copied().filter(|c| *c != group));
            send.header = Some(landed.header);
            send.home = Some(group);
            send.moving_to = None;
            for (device, loc) in &mut send.waiting {
                if let Some(found) = landed.envelopes.iter().find(|(d, _)| d == device) {
                    *loc = Some(found.1);
                }
            }
        }
        self.durable = self.durable.max(plan.newest);
    }

    /// Every delivery up to here may be handed out.
    pub fn durable(&self) -> Seq {
        self.durable
    }

    /// Whether the next flush has anything of the mail log to do.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Counts for metrics.
    pub fn stats(&self) -> MailStats {
        MailStats {
            waiting_sends: self.sends.values().filter(|s| !s.finished()).count() as u64,
            waiting_deliveries: self.queues.values().map(|q| q.by_seq.len() as u64).sum(),
            groups: self.groups.len() as u64,
            idempotency_records: self.sent.len() as u64,
            cached_bytes: self.cache.bytes as u64,
        }
    }

    /// Checks the internal bookkeeping against itself (tests): every waiting delivery is in
    /// its device's queue and the other way round, and every copy names a group that holds it.
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        let mut expected: HashMap<DeviceId, BTreeMap<Seq, MessageId>> = HashMap::new();
        for (seq, send) in &self.sends {
            if send.meta.seq != *seq {
                return Err(format!("send {seq} filed under another position"));
            }
            for (device, _) in &send.waiting {
                expected
                    .entry(*device)
                    .or_default()
                    .insert(*seq, send.meta.message_id);
            }
            for copy in &send.copies {
                match self.groups.get(copy) {
                    Some(group) if group.holds.contains(seq) => {}
                    _ => return Err(format!("send {seq} names group {copy}, which lacks it")),
                }
            }
            if self.sent.get(&send.meta.idempotency_key()).is_none() && !send.expired {
                return Err(format!("send {seq} has no idempotency record"));
            }
        }
        for (device, queue) in &self.queues {
            let want = expected.remove(device).unwrap_or_default();
            if queue.by_seq != want {
                return Err(format!("queue of {device:?} differs from the sends"));
            }
            if queue.by_id.len() != queue.by_seq.len() {
                return Err(format!("queue of {device:?} has a stale id index"));
            }
        }
        if let Some((device, _)) = expected.into_iter().find(|(_, q)| !q.is_empty()) {
            return Err(format!("{device:?} waits but has no queue"));
        }
        let placed: BTreeSet<Seq> = self
            .pending
            .iter()
            .filter_map(|p| match p {
                Pending::Sealing(seq) => Some(*seq),
                Pending::Ready(_) => None,
            })
            .collect();
        if placed != self.sealing.keys().copied().collect() {
            return Err("the sends being sealed and their places in the log differ".into());
        }
        let mut last = 0;
        for entry in &self.pending {
            let seq = match entry {
                Pending::Sealing(seq)
                | Pending::Ready(Record::Send {
                    meta: SendMeta { seq, .. },
                    ..
                }) => *seq,
                Pending::Ready(_) => continue,
            };
            if seq <= last || seq <= self.durable {
                return Err(format!(
                    "send {seq} is out of order in what the next flush writes"
                ));
            }
            last = seq;
        }
        // Looking only where something happened finds every group a look at all would.
        let everywhere = self.collectable_among(self.groups.keys().copied().collect());
        let looked: BTreeSet<GroupNo> = self
            .collectable_among(self.collection_candidates())
            .0
            .into_iter()
            .map(|(g, _)| g)
            .collect();
        if let Some((missed, _)) = everywhere.0.iter().find(|(g, _)| !looked.contains(g)) {
            return Err(format!(
                "group {missed} is collectable but was not looked at"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn id<T: From<[u8; 16]>>(n: u64) -> T {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        T::from(bytes)
    }

    fn meta(n: u64) -> SendMeta {
        SendMeta {
            seq: 0,
            org: id(1),
            message_id: id(1000 + n),
            conversation: id(2),
            sender_user: id(3),
            sender_device: id(4),
            client_message_id: id(n),
            server_time_ms: 1_000 * n,
        }
    }

    #[test]
    fn the_idempotency_index_spreads_even_ids_a_client_chose_alike() {
        // One device whose ids are alike in every byte but a few, and all end in the same
        // byte: ids a client could pick to crowd one shard of a plainly split index. No shard
        // may end up with much more than its share, or its doubling would again move a large
        // part of the index at once.
        let mut index = SentIndex::new();
        let records = 64 * SENT_SHARDS;
        for n in 0..records as u64 {
            let mut client_id = [0u8; 16];
            client_id[8..].copy_from_slice(&(n * SENT_SHARDS as u64).to_be_bytes());
            index.insert((id(4), ClientMessageId::from(client_id)), meta(n).record());
        }
        index.insert((id(4), id(0)), meta(0).record());
        assert_eq!(index.len(), records, "a key inserted twice is counted once");
        let largest = index.shards.iter().map(HashMap::len).max().unwrap();
        assert!(
            largest < 2 * records / SENT_SHARDS,
            "largest shard {largest} of {records} records"
        );
        let mut client_id = [0u8; 16];
        client_id[8..].copy_from_slice(&(7 * SENT_SHARDS as u64).to_be_bytes());
        let key = (id(4), ClientMessageId::from(client_id));
        assert_eq!(index.get(&key), Some(&meta(7).record()));
        index.remove(&key);
        index.remove(&key);
        assert_eq!(index.get(&key), None);
        assert_eq!(index.len(), records - 1);
    }

    /// A fake disk: what the flushes wrote, as the mail log adapter would, and a counter of
    /// positions.
    #[derive(Default, Clone)]
    struct Disk {
        groups: BTreeMap<GroupNo, Vec<Recovered>>,
        summaries: BTreeMap<GroupNo, Vec<SendMeta>>,
        next_seq: Seq,
        /// Sealed records as written, by location: (seq, device) of envelopes, headers.
        envelopes: HashMap<(GroupNo, u32), (Seq, Option<DeviceId>)>,
    }

    impl Disk {
        /// Writes a plan as the adapter does and returns where things landed.
        fn write(&mut self, state: &MailState, plan: &FlushPlan) -> Vec<Landed> {
            let mut landed = Vec::new();
            for (number, records) in &plan.groups {
                let mut row = Vec::new();
                let mut offset = 0u32;
                let mut place = |what: (Seq, Option<DeviceId>), disk: &mut Disk| {
                    offset += 1;
                    disk.envelopes.insert((*number, offset), what);
                    Loc {
                        group: *number,
                        offset,
                        len: 100,
                    }
                };
                for record in records {
                    match record {
                        Record::Send { meta, sealed } => {
                            let envelopes = &sealed.envelopes;
                            let header = place((meta.seq, None), self);
                            row.push(Recovered::Header {
                                meta: meta.clone(),
                                loc: header,
                            });
                            let mut envs = Vec::new();
                            for (device, _) in envelopes {
                                let loc = place((meta.seq, Some(*device)), self);
                                row.push(Recovered::Envelope {
                                    seq: meta.seq,
                                    device: *device,
                                    loc,
                                });
                                envs.push((*device, loc));
                            }
                            landed.push(Landed {
                                seq: meta.seq,
                                header,
                                envelopes: envs,
                            });
                        }
                        Record::Copy {
                            seq,
                            header,
                            envelopes,
                        } => {
                            // The copied bytes must be what the locations point at.
                            assert_eq!(
                                self.envelopes.get(&(header.group, header.offset)),
                                Some(&(*seq, None)),
                                "copy of a header from a row that lacks it"
                            );
                            let meta = state.sends[seq].meta.clone();
                            let new_header = place((*seq, None), self);
                            row.push(Recovered::Header {
                                meta,
                                loc: new_header,
                            });
                            let mut envs = Vec::new();
                            for (device, loc) in envelopes {
                                assert_eq!(
                                    self.envelopes.get(&(loc.group, loc.offset)),
                                    Some(&(*seq, Some(*device))),
                                    "copy of an envelope from a row that lacks it"
                                );
                                assert!(
                                    self.groups.contains_key(&loc.group),
                                    "copy from a deleted row"
                                );
                                let new = place((*seq, Some(*device)), self);
                                row.push(Recovered::Envelope {
                                    seq: *seq,
                                    device: *device,
                                    loc: new,
                                });
                                envs.push((*device, new));
                            }
                            landed.push(Landed {
                                seq: *seq,
                                header: new_header,
                                envelopes: envs,
                            });
                        }
                        Record::Done { device, seqs } => row.push(Recovered::Done {
                            device: *device,
                            seqs: seqs.clone(),
                        }),
                    }
                }
                self.groups.insert(*number, row);
            }
            for (number, summary) in &plan.collect {
                if !summary.is_empty() {
                    self.summaries.insert(*number, summary.clone());
                }
                assert!(
                    self.groups.remove(number).is_some(),
                    "collected a row never written"
                );
            }
            landed
        }

        fn recover(&self, revoked: &BTreeSet<DeviceId>) -> MailState {
            MailState::recover(
                self.groups.clone().into_iter().collect(),
                self.summaries.clone().into_iter().collect(),
                |d| revoked.contains(d),
                1 << 20,
            )
        }
    }

    fn flush(state: &mut MailState, disk: &mut Disk) {
        let plan = state.take_flush();
        let landed = disk.write(state, &plan);
        state.flushed(&plan, landed);
        state.check().unwrap();
    }

    fn send(state: &mut MailState, disk: &mut Disk, n: u64, to: &[DeviceId]) -> Appended {
        let (envelopes, sealed) = records(n, to);
        append(state, disk, n, envelopes, sealed)
    }

    /// Send `n`'s envelopes for these devices, and its records as a codec would seal them:
    /// here, the ciphertexts as they are.
    fn records(n: u64, to: &[DeviceId]) -> (Vec<(DeviceId, Bytes)>, SealedSend) {
        let envelopes = to
            .iter()
            .map(|d| (*d, Bytes::from(vec![n as u8; 8])))
            .collect();
        let sealed = SealedSend {
            header: Vec::new(),
            envelopes: to.iter().map(|d| (*d, vec![n as u8; 8])).collect(),
            archive: None,
        };
        (envelopes, sealed)
    }

    /// Appends send `n` with its already sealed records, numbered from the disk's counter.
    fn append(
        state: &mut MailState,
        disk: &mut Disk,
        n: u64,
        envelopes: Vec<(DeviceId, Bytes)>,
        sealed: SealedSend,
    ) -> Appended {
        let next = &mut disk.next_seq;
        state
            .append_send(
                meta(n),
                envelopes,
                || {
                    *next += 1;
                    Ok::<_, ()>(*next)
                },
                |_| Ok(sealed),
            )
            .unwrap()
    }

    fn waiting(state: &MailState, device: &DeviceId) -> Vec<MessageId> {
        state
            .deliverable(device, None, usize::MAX)
            .into_iter()
            .map(|d| d.meta.message_id)
            .collect()
    }

    #[test]
    fn a_send_is_delivered_only_once_durable_and_an_ack_finishes_it() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        assert!(matches!(
            send(&mut state, &mut disk, 1, &[bob]),
            Appended::Stored(_)
        ));
        assert!(waiting(&state, &bob).is_empty(), "not durable yet");
        flush(&mut state, &mut disk);
        assert_eq!(waiting(&state, &bob), vec![id(1001)]);
        assert_eq!(state.acknowledge(&bob, &[id(1001)]), 1);
        assert_eq!(state.acknowledge(&bob, &[id(1001)]), 0, "acknowledged once");
        assert!(waiting(&state, &bob).is_empty());
        flush(&mut state, &mut disk); // writes the Done
        flush(&mut state, &mut disk); // collects both groups
        assert!(disk.groups.is_empty(), "{:?}", disk.groups.keys());
        assert_eq!(disk.summaries.values().flatten().count(), 1);
        // The idempotency record outlives the rows, also across a restart.
        let recovered = disk.recover(&BTreeSet::new());
        assert!(matches!(
            recovered.sent(&id(4), &id(1)),
            Some(SendRecord { message_id, .. }) if message_id == id(1001)
        ));
    }

    /// Reserves send `n` for these devices, numbered from the disk's counter; returns its
    /// meta and the envelopes and records to complete it with.
    fn reserve(
        state: &mut MailState,
        disk: &mut Disk,
        n: u64,
        to: &[DeviceId],
    ) -> (SendMeta, Vec<(DeviceId, Bytes)>, SealedSend) {
        let next = &mut disk.next_seq;
        let reserved = state
            .reserve_send(meta(n), || {
                *next += 1;
                Ok::<_, ()>(*next)
            })
            .unwrap();
        let Reservation::Reserved(meta) = reserved else {
            panic!("send {n} is not new: {reserved:?}");
        };
        let (envelopes, sealed) = records(n, to);
        (meta, envelopes, sealed)
    }

    #[test]
    fn a_flush_takes_nothing_from_a_send_still_being_sealed_on() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        send(&mut state, &mut disk, 1, &[bob]);
        let (sealing, envelopes, sealed) = reserve(&mut state, &mut disk, 2, &[bob]);
        send(&mut state, &mut disk, 3, &[bob]);
        assert_eq!(state.last_reserved(), 3);
        assert!(state.sealing_through(3));
        assert!(!state.sealing_through(1));
        // A flush now writes send 1 only: send 3 came after the one being sealed.
        flush(&mut state, &mut disk);
        assert_eq!(state.durable(), 1);
        assert_eq!(waiting(&state, &bob), vec![id(1001)]);
        let (_, wake) = state.complete_send(sealing, envelopes, sealed);
        assert!(!wake, "no flush waited");
        // Complete, a repeat is a duplicate.
        let next = &mut disk.next_seq;
        let again = state
            .reserve_send(meta(2), || Ok::<_, ()>(*next + 1))
            .unwrap();
        assert!(matches!(again, Reservation::Duplicate(r) if r.message_id == id(1002)));
        state.check().unwrap();
        assert_eq!(
            waiting(&state, &bob),
            vec![id(1001)],
            "2 and 3 are not durable"
        );
        flush(&mut state, &mut disk);
        assert_eq!(state.durable(), 3);
        assert_eq!(waiting(&state, &bob), vec![id(1001), id(1002), id(1003)]);
        // On disk in the order of their positions, and all there after a restart.
        let restarted = disk.recover(&BTreeSet::new());
        assert_eq!(
            waiting(&restarted, &bob),
            vec![id(1001), id(1002), id(1003)]
        );
    }

    #[test]
    fn a_send_given_up_while_sealed_leaves_nothing_and_holds_back_no_flush() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        let (sealing, _, _) = reserve(&mut state, &mut disk, 1, &[bob]);
        // A repeat while it is sealed is neither new nor, yet, a duplicate: the first may
        // still be given up, and a repeat answered as accepted would then be lost.
        let next = &mut disk.next_seq;
        let again = state
            .reserve_send(meta(1), || {
                *next += 1;
                Ok::<_, ()>(*next)
            })
            .unwrap();
        assert_eq!(again, Reservation::InProgress);
        assert_eq!(state.sent(&id(4), &id(1)), None, "not a send yet");
        send(&mut state, &mut disk, 2, &[bob]);
        assert!(state.sealing_through(2));
        state.flush_waits(true);
        assert!(state.cancel_send(&sealing), "the flush waiting is told");
        state.flush_waits(false);
        assert!(!state.sealing_through(2));
        state.check().unwrap();
        flush(&mut state, &mut disk);
        assert_eq!(waiting(&state, &bob), vec![id(1002)]);
        // Given up, its client message id is free again.
        assert!(state.sent(&id(4), &id(1)).is_none());
        assert!(matches!(
            send(&mut state, &mut disk, 1, &[bob]),
            Appended::Stored(_)
        ));
    }

    #[test]
    fn a_failed_seal_changes_nothing() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        let failed = state.append_send(
            meta(1),
            vec![(bob, Bytes::from_static(b"x"))],
            || Ok(1),
            |_| Err("no key"),
        );
        assert_eq!(failed, Err("no key"));
        assert!(!state.has_work());
        assert!(state.sent(&id(4), &id(1)).is_none());
        assert!(!state.sealing_through(u64::MAX));
        state.check().unwrap();
        disk.next_seq = 1;
        send(&mut state, &mut disk, 1, &[bob]);
        flush(&mut state, &mut disk);
        assert_eq!(waiting(&state, &bob), vec![id(1001)]);
    }

    #[test]
    fn a_row_of_done_records_that_must_stay_is_kept_not_written_again_every_flush() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let (online, offline): (DeviceId, DeviceId) = (id(50), id(51));
        send(&mut state, &mut disk, 1, &[online, offline]);
        flush(&mut state, &mut disk);
        assert_eq!(state.acknowledge(&online, &[id(1001)]), 1);
        flush(&mut state, &mut disk); // writes the Done, in a row of its own
        let rows: Vec<GroupNo> = disk.groups.keys().copied().collect();
        assert_eq!(rows.len(), 2);
        // The offline device's copy stays, so the Done must too: nothing more to write.
        for _ in 0..5 {
            let plan = state.take_flush();
            assert!(plan.is_empty(), "{plan:?}");
            let landed = disk.write(&state, &plan);
            state.flushed(&plan, landed);
        }
        assert_eq!(disk.groups.keys().copied().collect::<Vec<_>>(), rows);
        // Once the offline device has its message, both rows go.
        assert_eq!(state.acknowledge(&offline, &[id(1001)]), 1);
        flush(&mut state, &mut disk);
        flush(&mut state, &mut disk);
        assert!(disk.groups.is_empty(), "{:?}", disk.groups.keys());
        let recovered = disk.recover(&BTreeSet::new());
        assert!(waiting(&recovered, &online).is_empty());
        assert!(waiting(&recovered, &offline).is_empty());
    }

    #[test]
    fn a_send_appended_after_a_revocation_leaves_nothing_waiting_for_the_revoked_device() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let (revoked, kept): (DeviceId, DeviceId) = (id(50), id(51));
        send(&mut state, &mut disk, 1, &[revoked, kept]);
        flush(&mut state, &mut disk);
        assert_eq!(state.drop_device(&revoked), 1);
        // A send that read the device list before the revocation lands after it.
        send(&mut state, &mut disk, 2, &[revoked, kept]);
        flush(&mut state, &mut disk);
        assert!(waiting(&state, &revoked).is_empty());
        assert_eq!(waiting(&state, &kept), vec![id(1001), id(1002)]);
        assert_eq!(state.stats().waiting_deliveries, 2);
    }

    #[test]
    fn a_repeated_client_message_id_is_a_duplicate() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        let first = send(&mut state, &mut disk, 7, &[bob]);
        let again = send(&mut state, &mut disk, 7, &[bob]);
        match (first, again) {
            (Appended::Stored(a), Appended::Duplicate(b)) => assert_eq!(a, b),
            other => panic!("{other:?}"),
        }
        flush(&mut state, &mut disk);
        assert_eq!(waiting(&state, &bob).len(), 1);
    }

    #[test]
    fn deliveries_come_in_order_after_the_cursor_and_survive_a_restart() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        for n in 1..=5 {
            send(&mut state, &mut disk, n, &[bob]);
        }
        flush(&mut state, &mut disk);
        let all = state.deliverable(&bob, None, 10);
        let seqs: Vec<Seq> = all.iter().map(|d| d.meta.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let after = state.deliverable(&bob, Some(2), 2);
        assert_eq!(
            after.iter().map(|d| d.meta.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
        state.acknowledge(&bob, &[id(1002)]);
        flush(&mut state, &mut disk);
        let recovered = disk.recover(&BTreeSet::new());
        recovered.check().unwrap();
        let seqs: Vec<Seq> = recovered
            .deliverable(&bob, None, 10)
            .iter()
            .map(|d| d.meta.seq)
            .collect();
        assert_eq!(seqs, vec![1, 3, 4, 5]);
        // After a restart, ciphertexts come from the rows.
        assert!(recovered
            .deliverable(&bob, None, 10)
            .iter()
            .all(|d| matches!(d.source, Source::Stored(_))));
    }

    #[test]
    fn a_done_record_outlives_the_older_copy_it_finishes() {
        // A fan-out send: one device acknowledges, the other is offline. The group holding
        // the acknowledgement finishes nothing else, but must stay while the send's row
        // (with the acknowledged envelope) is on disk.
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let (bob, carol): (DeviceId, DeviceId) = (id(50), id(51));
        send(&mut state, &mut disk, 1, &[bob, carol]);
        flush(&mut state, &mut disk);
        state.acknowledge(&bob, &[id(1001)]);
        flush(&mut state, &mut disk);
        for _ in 0..3 {
            flush(&mut state, &mut disk);
        }
        assert_eq!(disk.groups.len(), 2, "both rows stay");
        let recovered = disk.recover(&BTreeSet::new());
        assert!(waiting(&recovered, &bob).is_empty(), "the ack was not lost");
        assert_eq!(waiting(&recovered, &carol), vec![id(1001)]);
        // Carol acknowledges: then everything goes.
        state.acknowledge(&carol, &[id(1001)]);
        flush(&mut state, &mut disk);
        flush(&mut state, &mut disk);
        assert!(disk.groups.is_empty(), "{:?}", disk.groups.keys());
    }

    #[test]
    fn old_rows_pinned_by_an_offline_device_are_compacted() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let (online, offline): (DeviceId, DeviceId) = (id(50), id(51));
        // One message for the offline device, among many for the online one.
        send(&mut state, &mut disk, 1, &[offline]);
        for n in 2..=10 {
            send(&mut state, &mut disk, n, &[online]);
        }
        flush(&mut state, &mut disk);
        let first_group = *disk.groups.keys().next().unwrap();
        let ids: Vec<MessageId> = (2..=10).map(|n| id(1000 + n)).collect();
        state.acknowledge(&online, &ids);
        // Traffic goes on until the first row is old.
        let mut n = 100;
        while state.next_group
            <= first_group + COMPACT_AFTER_GROUPS + 2 * COMPACT_CHECKS_PER_FLUSH as u64
        {
            send(&mut state, &mut disk, n, &[online]);
            flush(&mut state, &mut disk);
            state.acknowledge(&online, &[id(1000 + n)]);
            n += 1;
        }
        flush(&mut state, &mut disk);
        flush(&mut state, &mut disk);
        assert!(
            !disk.groups.contains_key(&first_group),
            "the old row was compacted away"
        );
        assert!(
            disk.groups.len() < 8,
            "{} rows left: {:?}",
            disk.groups.len(),
            state
                .groups
                .iter()
                .map(|(n, g)| (*n, g.written, g.holds.clone(), g.refs.clone()))
                .collect::<Vec<_>>()
        );
        let recovered = disk.recover(&BTreeSet::new());
        assert_eq!(waiting(&recovered, &offline), vec![id(1001)]);
        assert!(waiting(&recovered, &online).is_empty());
        assert_eq!(waiting(&state, &offline), vec![id(1001)]);
    }

    #[test]
    fn a_revoked_device_waits_for_nothing_also_after_a_restart() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let (bob, carol): (DeviceId, DeviceId) = (id(50), id(51));
        send(&mut state, &mut disk, 1, &[bob, carol]);
        flush(&mut state, &mut disk);
        // Revoked, and the server stops before the Done is written.
        let revoked: BTreeSet<DeviceId> = [bob].into();
        let recovered = disk.recover(&revoked);
        assert!(waiting(&recovered, &bob).is_empty());
        assert_eq!(waiting(&recovered, &carol), vec![id(1001)]);
        assert_eq!(state.drop_device(&bob), 1);
        assert!(waiting(&state, &bob).is_empty());
    }

    #[test]
    fn retention_finishes_what_is_past_and_holds_keep_the_rest() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        for n in 1..=4 {
            send(&mut state, &mut disk, n, &[bob]);
        }
        flush(&mut state, &mut disk);
        // 1 and 2 are past retention; 2 is held.
        let counts = state.expire(
            |m| m.server_time_ms <= 2_000,
            |m| m.server_time_ms == 2_000,
            |_| true,
        );
        assert_eq!(counts[&id::<OrgId>(1)], (1, 1));
        let seqs: Vec<Seq> = state
            .deliverable(&bob, None, 10)
            .iter()
            .map(|d| d.meta.seq)
            .collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert!(
            state.sent(&id(4), &id(1)).is_none(),
            "its idempotency record went too"
        );
        flush(&mut state, &mut disk);
        flush(&mut state, &mut disk);
        assert!(disk
            .summaries
            .values()
            .flatten()
            .all(|m| m.client_message_id != id(1)));
    }

    #[test]
    fn retention_forgets_only_its_own_idempotency_record_not_a_later_one_with_the_same_key() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        send(&mut state, &mut disk, 1, &[bob]);
        flush(&mut state, &mut disk);
        state.expire(|m| m.server_time_ms <= 1_000, |_| false, |_| true);
        assert!(state.sent(&id(4), &id(1)).is_none());
        // The client reuses the id for a new message while the old send is still in the log.
        let reused = SendMeta {
            message_id: id(5000),
            server_time_ms: 9_000,
            ..meta(1)
        };
        let next = disk.next_seq + 1;
        disk.next_seq = next;
        let appended = state
            .append_send(
                reused,
                vec![(bob, Bytes::from_static(b"new"))],
                || Ok::<_, ()>(next),
                |_| {
                    Ok(SealedSend {
                        header: Vec::new(),
                        envelopes: vec![(bob, b"new".to_vec())],
                        archive: None,
                    })
                },
            )
            .unwrap();
        assert!(matches!(appended, Appended::Stored(_)));
        // The next pass meets the old send again: the new record stays.
        state.expire(|m| m.server_time_ms <= 1_000, |_| false, |_| true);
        assert_eq!(
            state.sent(&id(4), &id(1)).map(|r| r.message_id),
            Some(id(5000))
        );
        state.check().unwrap();
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_reads_fall_back_to_rows() {
        let (mut state, mut disk) = (MailState::new(1, 20), Disk::default());
        let bob: DeviceId = id(50);
        for n in 1..=5 {
            send(&mut state, &mut disk, n, &[bob]); // 8 bytes each
        }
        assert!(state.stats().cached_bytes <= 20);
        flush(&mut state, &mut disk);
        let all = state.deliverable(&bob, None, 10);
        assert_eq!(all.len(), 5);
        assert!(matches!(all[0].source, Source::Stored(_)));
        assert!(matches!(all[4].source, Source::Cached(_)));
    }

    #[test]
    fn a_flush_is_split_into_rows_within_the_size_limit() {
        let (mut state, mut disk) = (MailState::new(1, 1 << 20), Disk::default());
        let bob: DeviceId = id(50);
        for n in 1..=40u64 {
            let envelopes = vec![(bob, Bytes::from(vec![0u8; 1024]))];
            let sealed = SealedSend {
                header: vec![0; 200],
                envelopes: vec![(bob, vec![0; 1024 + 64])],
                archive: None,
            };
            append(&mut state, &mut disk, n, envelopes, sealed);
        }
        let plan = state.take_flush();
        assert!(plan.groups.len() >= 3, "{} rows", plan.groups.len());
        for (_, records) in &plan.groups {
            assert!(records.iter().map(Record::size).sum::<usize>() <= MAX_GROUP_BYTES);
        }
        let landed = disk.write(&state, &plan);
        state.flushed(&plan, landed);
        assert_eq!(waiting(&state, &bob).len(), 40);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Send {
                to: Vec<u8>,
            },
            Ack {
                device: u8,
                pick: u8,
            },
            Revoke {
                device: u8,
            },
            Flush,
            /// A flush that writes its rows, then the process dies before they are durable:
            /// what it wrote may or may not be there (the rows are kept, the deletions not).
            Crash {
                keep_rows: bool,
            },
            Restart,
            Expire {
                before: u8,
            },
            /// A send whose position is taken and whose records are still being sealed (on
            /// another connection) while what follows happens.
            Reserve {
                to: Vec<u8>,
            },
            /// The reserved send is sealed and completed.
            Complete,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => prop::collection::vec(0u8..4, 0..4).prop_map(|to| Op::Send { to }),
                4 => (0u8..4, any::<u8>()).prop_map(|(device, pick)| Op::Ack { device, pick }),
                1 => (0u8..4).prop_map(|device| Op::Revoke { device }),
                4 => Just(Op::Flush),
                1 => any::<bool>().prop_map(|keep_rows| Op::Crash { keep_rows }),
                1 => Just(Op::Restart),
                1 => (0u8..40).prop_map(|before| Op::Expire { before }),
                2 => prop::collection::vec(0u8..4, 0..4).prop_map(|to| Op::Reserve { to }),
                2 => Just(Op::Complete),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

            /// Nothing made durable is lost, nothing finished and made durable comes back,
            /// order holds, and the bookkeeping stays consistent, through flushes, crashes
            /// and restarts.
            #[test]
            fn the_log_keeps_exactly_what_it_must(ops in prop::collection::vec(op(), 1..120)) {
                let mut state = MailState::new(1, 64);
                let mut disk = Disk::default();
                let mut revoked: BTreeSet<DeviceId> = BTreeSet::new();
                // The model: what must wait for each device once durable; what may.
                let mut durable_waiting: BTreeMap<DeviceId, BTreeSet<Seq>> = BTreeMap::new();
                let mut pending_waiting: BTreeMap<DeviceId, BTreeSet<Seq>> = BTreeMap::new();
                let mut durable_finished: BTreeSet<(Seq, DeviceId)> = BTreeSet::new();
                let mut pending_finished: BTreeSet<(Seq, DeviceId)> = BTreeSet::new();
                // A send being sealed, and what happened after it: no flush writes any of it
                // until it is complete. A real flush waits for the sends reserved before it
                // began (`MailLog::take_flush`), so a flush here with one open stands for a
                // flush that began before it was reserved.
                type Open = (SendMeta, Vec<(DeviceId, Bytes)>, SealedSend);
                let mut open: Option<Open> = None;
                let mut behind_waiting: BTreeMap<DeviceId, BTreeSet<Seq>> = BTreeMap::new();
                let mut behind_finished: BTreeSet<(Seq, DeviceId)> = BTreeSet::new();
                // Deliveries finished behind a send being sealed, until a flush writes them: a
                // flush meanwhile may already have collected their rows (it collects what is
                // finished, whenever it was), so after a crash they may come back or not.
                let mut early: BTreeSet<(Seq, DeviceId)> = BTreeSet::new();
                let mut n = 0u64;
                let dev = |d: u8| -> DeviceId { id(50 + u64::from(d)) };
                // A shutdown waits for the send being sealed: a restart with one open is its
                // completion, then the restart.
                let ops = ops.into_iter().flat_map(|op| match op {
                    Op::Restart => vec![Op::Complete, Op::Restart],
                    op => vec![op],
                });
                for op in ops {
                    // What happens now goes after the send being sealed, if there is one.
                    let after_open = open.is_some();
                    match op {
                        Op::Send { to } => {
                            n += 1;
                            let to: BTreeSet<DeviceId> = to.into_iter().map(dev).filter(|d| !revoked.contains(d)).collect();
                            let to: Vec<DeviceId> = to.into_iter().collect();
                            let before = disk.next_seq;
                            send(&mut state, &mut disk, n, &to);
                            let seq = disk.next_seq;
                            prop_assert_eq!(seq, before + 1);
                            let now_waiting = if after_open { &mut behind_waiting } else { &mut pending_waiting };
                            for d in to {
                                now_waiting.entry(d).or_default().insert(seq);
                            }
                        }
                        Op::Reserve { to } => {
                            if open.is_some() {
                                continue;
                            }
                            n += 1;
                            let to: BTreeSet<DeviceId> = to.into_iter().map(dev).filter(|d| !revoked.contains(d)).collect();
                            let to: Vec<DeviceId> = to.into_iter().collect();
                            open = Some(reserve(&mut state, &mut disk, n, &to));
                        }
                        Op::Complete => {
                            let Some((meta, envelopes, sealed)) = open.take() else {
                                continue;
                            };
                            let seq = meta.seq;
                            // Revoked while it was sealed: nothing waits for that device.
                            let to: Vec<DeviceId> = envelopes.iter().map(|(d, _)| *d).filter(|d| !revoked.contains(d)).collect();
                            state.complete_send(meta, envelopes, sealed);
                            for d in to {
                                pending_waiting.entry(d).or_default().insert(seq);
                            }
                            for (d, seqs) in std::mem::take(&mut behind_waiting) {
                                pending_waiting.entry(d).or_default().extend(seqs);
                            }
                            early.extend(behind_finished.iter().copied());
                            pending_finished.extend(std::mem::take(&mut behind_finished));
                        }
                        Op::Ack { device, pick } => {
                            let d = dev(device);
                            let list = state.deliverable(&d, None, usize::MAX);
                            if list.is_empty() { continue; }
                            let chosen = &list[pick as usize % list.len()];
                            prop_assert_eq!(state.acknowledge(&d, &[chosen.meta.message_id]), 1);
                            let now_finished = if after_open { &mut behind_finished } else { &mut pending_finished };
                            now_finished.insert((chosen.meta.seq, d));
                        }
                        Op::Revoke { device } => {
                            let d = dev(device);
                            revoked.insert(d);
                            state.drop_device(&d);
                            let all = durable_waiting.get(&d).into_iter().flatten()
                                .chain(pending_waiting.get(&d).into_iter().flatten())
                                .chain(behind_waiting.get(&d).into_iter().flatten());
                            let finished: Vec<(Seq, DeviceId)> = all.map(|s| (*s, d)).collect();
                            if after_open { behind_finished.extend(finished) } else { pending_finished.extend(finished) }
                        }
                        Op::Flush => {
                            flush(&mut state, &mut disk);
                            for (d, seqs) in std::mem::take(&mut pending_waiting) {
                                durable_waiting.entry(d).or_default().extend(seqs);
                            }
                            durable_finished.extend(std::mem::take(&mut pending_finished));
                            early.clear();
                        }
                        Op::Crash { keep_rows } => {
                            // The send being sealed, and the sends after it, never made it. What
                            // was finished after it may have been made durable all the same (a
                            // flush collects the rows of what is finished, whenever it was), or
                            // may come back: either is right, as no one was answered yet.
                            open = None;
                            behind_waiting.clear();
                            let mut maybe_finished = std::mem::take(&mut behind_finished);
                            maybe_finished.extend(pending_finished.intersection(&early).copied());
                            early.clear();
                            let plan = state.take_flush();
                            if keep_rows {
                                // The rows made it; the deletions did not.
                                let written: BTreeSet<(Seq, DeviceId)> = plan
                                    .groups
                                    .iter()
                                    .flat_map(|(_, records)| records.iter())
                                    .flat_map(|record| match record {
                                        Record::Done { device, seqs } => seqs.iter().map(|s| (*s, *device)).collect(),
                                        _ => Vec::new(),
                                    })
                                    .collect();
                                let mut partial = FlushPlan { groups: plan.groups, collect: Vec::new(), newest: plan.newest };
                                let landed = disk.write(&state, &partial);
                                let _ = landed;
                                partial.groups.clear();
                                // Every send pending is on disk now: durable. A finished delivery
                                // is durably finished only if its `Done` was written; one whose
                                // `Done` the flush left to its deletions may come back (no one
                                // was answered yet).
                                for (d, seqs) in std::mem::take(&mut pending_waiting) {
                                    durable_waiting.entry(d).or_default().extend(seqs);
                                }
                                durable_finished.extend(
                                    std::mem::take(&mut pending_finished).into_iter().filter(|f| written.contains(f)),
                                );
                            } else {
                                // Sends never durable: their senders were never answered.
                                for (_, seqs) in std::mem::take(&mut pending_waiting) {
                                    let _ = seqs;
                                }
                                pending_finished.clear();
                            }
                            state = disk.recover(&revoked);
                            state.check().map_err(TestCaseError::fail)?;
                            for (s, d) in maybe_finished {
                                if !state.deliverable(&d, None, usize::MAX).iter().any(|x| x.meta.seq == s) {
                                    durable_finished.insert((s, d));
                                }
                            }
                            disk.next_seq += 1_000; // sled's counter jumps ahead after a crash
                        }
                        Op::Restart => {
                            // (A send being sealed was completed first: see the loop's head.)
                            flush(&mut state, &mut disk);
                            for (d, seqs) in std::mem::take(&mut pending_waiting) {
                                durable_waiting.entry(d).or_default().extend(seqs);
                            }
                            durable_finished.extend(std::mem::take(&mut pending_finished));
                            early.clear();
                            state = disk.recover(&revoked);
                            state.check().map_err(TestCaseError::fail)?;
                        }
                        Op::Expire { before } => {
                            let cutoff = u64::from(before) * 1_000;
                            state.expire(|m| m.server_time_ms <= cutoff, |_| false, |_| true);
                            let mut finished = Vec::new();
                            for (d, seqs) in durable_waiting.iter().chain(pending_waiting.iter()).chain(behind_waiting.iter()) {
                                for s in seqs {
                                    // server_time_ms = 1000 * n.
                                    let time = state_time(&state, *s).unwrap_or(u64::MAX);
                                    if time <= cutoff {
                                        finished.push((*s, *d));
                                    }
                                }
                            }
                            if after_open { behind_finished.extend(finished) } else { pending_finished.extend(finished) }
                        }
                    }
                    // What the state offers: every durable delivery not finished, in order,
                    // and nothing finished durably.
                    for d in (0..4).map(dev) {
                        let offered: Vec<Seq> = state.deliverable(&d, None, usize::MAX).iter().map(|x| x.meta.seq).collect();
                        let mut sorted = offered.clone();
                        sorted.sort_unstable();
                        prop_assert_eq!(&offered, &sorted, "in order");
                        let offered: BTreeSet<Seq> = offered.into_iter().collect();
                        for s in durable_waiting.get(&d).into_iter().flatten() {
                            // Revocation is durable at once (the device record), the rest
                            // once a flush wrote it.
                            let finished = durable_finished.contains(&(*s, d))
                                || pending_finished.contains(&(*s, d))
                                || behind_finished.contains(&(*s, d))
                                || revoked.contains(&d);
                            if !finished {
                                prop_assert!(offered.contains(s), "durable delivery {} to {:?} lost", s, d);
                            }
                        }
                        for s in &offered {
                            prop_assert!(
                                durable_waiting.get(&d).is_some_and(|w| w.contains(s)),
                                "delivery {} to {:?} offered before it was durable", s, d
                            );
                            prop_assert!(!durable_finished.contains(&(*s, d)), "finished delivery {} to {:?} came back", s, d);
                            prop_assert!(!pending_finished.contains(&(*s, d)), "finished delivery {} offered", s);
                            prop_assert!(!behind_finished.contains(&(*s, d)), "finished delivery {} offered", s);
                        }
                    }
                }
            }
        }

        fn state_time(state: &MailState, seq: Seq) -> Option<u64> {
            state.sends.get(&seq).map(|s| s.meta.server_time_ms)
        }
    }
}
