//! The mail log on sled: the durable half of [`super::mail_state`].
//!
//! Two trees. `mail_groups` holds the group rows flushes write, keyed by group number
//! (big-endian); `mail_sent` holds the summary rows of collected groups: the idempotency
//! records of finished sends, kept until retention.
//!
//! A row's value is `ROW_FORMAT || flush number (u64) || records`, each record
//! `kind (u8) || length (u32) || payload`. Every payload is sealed on its own through
//! [`Codec`] under the key of its org and day (a `Done` under the standing key), so retention
//! shreds one day's mail while a row may still hold another's. A header's payload is
//! `position (u64) || sealed`, an envelope's `position || device || sealed`: that address is
//! the associated data it is sealed with, so it cannot be altered or moved to another send,
//! and compaction copies the payload as it is. A `Done` and a summary entry are bound to
//! their row and place instead.
//!
//! A flush writes, in this order: the new group rows, the org archive's items of the sends
//! in them (the `archive` tree, a row each), the summary rows of the groups it collects, then
//! deletes those groups in ascending order. sled recovers a prefix of its log after a crash
//! (its recovery stops at the first torn message), so a deletion that survived means
//! everything written before it did. The one thing a crash can leave half done is the archive
//! items of the newest flush: opening writes any that are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use medrelay_proto::ids::{ClientMessageId, DeviceId, MessageId, OrgId};
use serde::{Deserialize, Serialize};
use sled::{Db, Tree};

use super::codec::{key_id_of, Codec};
use super::mail_state::{
    Deliverable, FlushPlan, GroupNo, Landed, Loc, MailState, MailStats, Record, Recovered,
    Reservation, SealedSend, SendMeta, Seq, Source,
};
use super::{ArchiveItemRecord, MailboxItem, NewSend, SendRecord, StoreError, StoreSendOutcome};
use crate::keyring::{day_of, Scope};

/// The format byte every row begins with.
const ROW_FORMAT: u8 = 1;
/// A new send's header.
const KIND_HEADER: u8 = 1;
/// A header copied by compaction (its archive item was written with the original).
const KIND_COPIED_HEADER: u8 = 2;
/// An envelope for one device.
const KIND_ENVELOPE: u8 = 3;
/// Finished deliveries.
const KIND_DONE: u8 = 4;
/// The idempotency records of one org and day in a summary row (one sealed list).
const KIND_SENT: u8 = 5;
/// Sealing labels (part of the associated data), one per kind of record.
/// Idempotency records in one summary row: about 7 KiB, within a group row's size (sled
/// writes a leaf over 128 KiB as a blob file of its own).
const SUMMARY_RECORDS_PER_ROW: usize = 60;
/// Times a mailbox read starts again because compaction moved a row under it (each needs a
/// whole flush to happen during one read, so more than a couple means something is wrong).
const MAX_MAILBOX_READ_ATTEMPTS: usize = 8;
const LABEL_HEADER: &str = "mail_header";
const LABEL_ENVELOPE: &str = "mail_envelope";
const LABEL_DONE: &str = "mail_done";
const LABEL_SENT: &str = "mail_sent";
/// Bytes of a header's address (its position) and an envelope's (position and device).
const HEADER_ADDRESS: usize = 8;
const ENVELOPE_ADDRESS: usize = 8 + 16;

/// A stored mail record as (sealing label, associated data, sealed bytes): what opens it with
/// [`Codec::open_raw`].
pub type RawRecord = (&'static str, Vec<u8>, Vec<u8>);

/// A send's header as stored: its routing and, if the org archives, the archive's sealed box.
#[derive(Debug, Serialize, Deserialize)]
struct StoredHeader {
    meta: SendMeta,
    archive: Option<Vec<u8>>,
}

/// Finished deliveries as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredDone {
    device: DeviceId,
    seqs: Vec<Seq>,
}

fn db_error(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        kind: "mail log",
        reason: reason.into(),
    }
}

fn mail_scope(meta: &SendMeta) -> Scope {
    Scope::Mail {
        org: meta.org,
        day: day_of(meta.server_time_ms),
    }
}

fn envelope_address(seq: Seq, device: &DeviceId) -> [u8; ENVELOPE_ADDRESS] {
    let mut address = [0u8; ENVELOPE_ADDRESS];
    address[..8].copy_from_slice(&seq.to_be_bytes());
    address[8..].copy_from_slice(device.as_bytes());
    address
}

fn place(group: GroupNo, index: u32) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..8].copy_from_slice(&group.to_be_bytes());
    aad[8..].copy_from_slice(&index.to_be_bytes());
    aad
}

fn row_number(key: &[u8]) -> Result<GroupNo, StoreError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("malformed row key"))
}

/// A row being built.
struct RowWriter {
    bytes: Vec<u8>,
    count: u32,
}

impl RowWriter {
    fn new(flush: u64) -> RowWriter {
        let mut bytes = Vec::with_capacity(super::mail_state::MAX_GROUP_BYTES + 2048);
        bytes.push(ROW_FORMAT);
        bytes.extend_from_slice(&flush.to_be_bytes());
        RowWriter { bytes, count: 0 }
    }

    /// Appends a record made of `parts`; returns its place (the index for a bound record,
    /// and the offset and length of its payload).
    fn push(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(u32, u32, u32), StoreError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| corrupt("record too large"))?;
        self.bytes.push(kind);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        let offset = u32::try_from(self.bytes.len()).map_err(|_| corrupt("row too large"))?;
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        let index = self.count;
        self.count += 1;
        Ok((index, offset, len))
    }
}

/// One record of a stored row.
struct RowRecord<'a> {
    kind: u8,
    index: u32,
    offset: u32,
    payload: &'a [u8],
}

/// The flush number and the records of a stored row.
fn parse_row(value: &[u8]) -> Result<(u64, Vec<RowRecord<'_>>), StoreError> {
    let Some((&ROW_FORMAT, rest)) = value.split_first() else {
        return Err(corrupt("unknown row format"));
    };
    let (flush, mut rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("truncated row"))?;
    let mut records = Vec::new();
    while let Some((&kind, after)) = rest.split_first() {
        let (len, after) = after
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated record"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let offset =
            u32::try_from(value.len() - after.len()).map_err(|_| corrupt("row too large"))?;
        let (payload, after) = after
            .split_at_checked(len)
            .ok_or_else(|| corrupt("truncated record"))?;
        let index = u32::try_from(records.len()).map_err(|_| corrupt("row too large"))?;
        records.push(RowRecord {
            kind,
            index,
            offset,
            payload,
        });
        rest = after;
    }
    Ok((u64::from_be_bytes(*flush), records))
}

/// The payload at `loc` in a row's value.
fn payload_at(value: &[u8], loc: Loc) -> Result<&[u8], StoreError> {
    value
        .get(loc.offset as usize..loc.offset as usize + loc.len as usize)
        .ok_or_else(|| corrupt("a record lies outside its row"))
}

/// Opens a record, `None` if its key was destroyed by retention.
fn open_or_shredded<T: serde::de::DeserializeOwned>(
    codec: &Codec,
    label: &'static str,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Option<T>, StoreError> {
    match codec.open(label, aad, sealed) {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::Shredded { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The mailboxes: the mail log's rows on disk and their state in memory.
#[derive(Debug)]
pub struct MailLog {
    codec: Codec,
    db: Db,
    groups: Tree,
    summaries: Tree,
    archive: Tree,
    state: Mutex<MailState>,
    /// Signalled when a send being sealed is completed or given up while a flush waits for it.
    sealed: Condvar,
    /// The next flush's number (recovery looks for the newest flush's rows).
    next_flush: Mutex<u64>,
}

/// A send whose position is reserved while its records are sealed. Completed with
/// [`Sealing::complete`]; dropped otherwise (sealing failed, or a panic), it is given up, so
/// no flush waits for it for ever.
struct Sealing<'a> {
    log: &'a MailLog,
    meta: SendMeta,
    /// Not yet completed.
    open: bool,
}

impl Sealing<'_> {
    fn complete(mut self, envelopes: Vec<(DeviceId, Bytes)>, sealed: SealedSend) -> SendRecord {
        let (record, wake) = self
            .log
            .state()
            .complete_send(self.meta.clone(), envelopes, sealed);
        self.open = false;
        if wake {
            self.log.sealed.notify_all();
        }
        record
    }
}

impl Drop for Sealing<'_> {
    fn drop(&mut self) {
        if self.open && self.log.state().cancel_send(&self.meta) {
            self.log.sealed.notify_all();
        }
    }
}

/// One flush of the mail log, from taking its work to its flush being durable.
#[derive(Debug)]
pub struct MailFlush {
    log: Arc<MailLog>,
    plan: FlushPlan,
    landed: Vec<Landed>,
}

impl MailLog {
    /// Opens the mail log in `db` and rebuilds the mailboxes from it; deliveries to devices
    /// `revoked` names are finished.
    pub fn open(
        db: &Db,
        codec: Codec,
        archive: Tree,
        revoked: impl Fn(&DeviceId) -> bool,
        cache_budget: usize,
    ) -> Result<MailLog, StoreError> {
        let groups = db.open_tree("mail_groups").map_err(db_error)?;
        let summaries = db.open_tree("mail_sent").map_err(db_error)?;
        let mut recovered = Vec::new();
        let mut newest_flush = 0u64;
        let mut newest_headers: Vec<StoredHeader> = Vec::new();
        for item in groups.iter() {
            let (key, value) = item.map_err(db_error)?;
            let number = row_number(&key)?;
            let (flush, records) = parse_row(&value)?;
            let mut out = Vec::with_capacity(records.len());
            let mut fresh_headers = Vec::new();
            for record in records {
                let loc = Loc {
                    group: number,
                    offset: record.offset,
                    len: u32::try_from(record.payload.len()).unwrap_or(u32::MAX),
                };
                match record.kind {
                    KIND_HEADER | KIND_COPIED_HEADER => {
                        let (address, sealed) = record
                            .payload
                            .split_at_checked(HEADER_ADDRESS)
                            .ok_or_else(|| corrupt("truncated header"))?;
                        let Some(header) = open_or_shredded::<StoredHeader>(
                            &codec,
                            LABEL_HEADER,
                            address,
                            sealed,
                        )?
                        else {
                            continue;
                        };
                        if header.meta.seq.to_be_bytes() != address {
                            return Err(corrupt("a header lies under another position"));
                        }
                        out.push(Recovered::Header {
                            meta: header.meta.clone(),
                            loc,
                        });
                        if record.kind == KIND_HEADER && header.archive.is_some() {
                            fresh_headers.push(header);
                        }
                    }
                    KIND_ENVELOPE => {
                        // Its address says whose it is; the body is opened when delivered.
                        let (address, sealed) = record
                            .payload
                            .split_at_checked(ENVELOPE_ADDRESS)
                            .ok_or_else(|| corrupt("truncated envelope"))?;
                        let key_id = key_id_of(sealed)
                            .ok_or_else(|| corrupt("an envelope is not a sealed record"))?;
                        if codec.keyring().key(key_id).is_none() {
                            // Shredded by retention: nothing is left to deliver.
                            continue;
                        }
                        let (seq, device) = address.split_at(8);
                        let seq = seq
                            .try_into()
                            .map(u64::from_be_bytes)
                            .map_err(|_| corrupt("address"))?;
                        let device =
                            DeviceId::from_bytes(device).map_err(|_| corrupt("address"))?;
                        out.push(Recovered::Envelope { seq, device, loc });
                    }
                    KIND_DONE => {
                        let done: StoredDone =
                            codec.open(LABEL_DONE, &place(number, record.index), record.payload)?;
                        out.push(Recovered::Done {
                            device: done.device,
                            seqs: done.seqs,
                        });
                    }
                    other => return Err(corrupt(format!("unknown record kind {other}"))),
                }
            }
            if flush > newest_flush {
                newest_flush = flush;
                newest_headers.clear();
            }
            if flush == newest_flush {
                newest_headers.extend(fresh_headers);
            }
            recovered.push((number, out));
        }
        let mut summary_rows = Vec::new();
        for item in summaries.iter() {
            let (key, value) = item.map_err(db_error)?;
            let number = row_number(&key)?;
            summary_rows.push((number, open_summary(&codec, number, &value)?));
        }
        let log = MailLog {
            state: Mutex::new(MailState::recover(
                recovered,
                summary_rows,
                revoked,
                cache_budget,
            )),
            codec,
            db: db.clone(),
            groups,
            summaries,
            archive,
            sealed: Condvar::new(),
            next_flush: Mutex::new(newest_flush + 1),
        };
        // The newest flush may have stopped between its rows and its archive items.
        for header in newest_headers {
            log.write_archive_item(&header, true)?;
        }
        Ok(log)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MailState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a send (durable with the next flush), or finds it was sent before.
    ///
    /// Its position is taken under the state's lock, its records are sealed without it, and
    /// then it is completed under the lock again (see [`MailState::reserve_send`]).
    pub fn store_send(&self, send: NewSend) -> Result<StoreSendOutcome, StoreError> {
        let meta = SendMeta {
            seq: 0,
            org: send.org,
            message_id: send.record.message_id,
            conversation: send.conversation,
            sender_user: send.sender_user,
            sender_device: send.sender_device,
            client_message_id: send.client_message_id,
            server_time_ms: send.record.server_time_ms,
        };
        let db = &self.db;
        // Positions start at 1: 0 means "nothing" to the durable mark and to cursors.
        let reserved = self.state().reserve_send(meta, || {
            db.generate_id()
                .map(|id| id.saturating_add(1))
                .map_err(db_error)
        })?;
        let meta = match reserved {
            Reservation::Duplicate(record) => return Ok(StoreSendOutcome::Duplicate(record)),
            Reservation::InProgress => return Ok(StoreSendOutcome::InProgress),
            Reservation::Reserved(meta) => meta,
        };
        // From here until it is completed, dropping this gives the reservation up.
        let sealing = Sealing {
            log: self,
            meta,
            open: true,
        };
        let sealed = self.seal_send(&sealing.meta, &send.envelopes, send.archive.as_deref())?;
        Ok(StoreSendOutcome::Stored(
            sealing.complete(send.envelopes, sealed),
        ))
    }

    /// The earlier send of this (sender device, client message id), if there was one.
    pub fn sent(
        &self,
        sender: &DeviceId,
        client_message_id: &ClientMessageId,
    ) -> Option<SendRecord> {
        self.state().sent(sender, client_message_id)
    }

    /// Up to `limit` durable deliveries waiting for `device` after `after`, oldest first.
    ///
    /// The state's lock is not held while rows are read, so compaction can move a send to a
    /// new row and collect the old one between the two: the read then starts again after the
    /// last delivery it has (the state now points at the new row), never skipping one.
    pub fn mailbox_after(
        &self,
        device: &DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MailboxItem>, StoreError> {
        let mut items = Vec::with_capacity(limit);
        for _ in 0..MAX_MAILBOX_READ_ATTEMPTS {
            let after = items.last().map(|i: &MailboxItem| i.seq).or(after);
            let deliverable =
                self.state()
                    .deliverable(device, after, limit.saturating_sub(items.len()));
            if self.read_deliverable(device, deliverable, &mut items)? {
                return Ok(items);
            }
        }
        Err(StoreError::Database(format!(
            "a mailbox row moved {MAX_MAILBOX_READ_ATTEMPTS} times while it was read"
        )))
    }

    /// Reads these deliveries' ciphertexts into `items`, in order; false if a row was
    /// collected meanwhile (`items` then ends before that delivery).
    fn read_deliverable(
        &self,
        device: &DeviceId,
        deliverable: Vec<Deliverable>,
        items: &mut Vec<MailboxItem>,
    ) -> Result<bool, StoreError> {
        let mut rows: BTreeMap<GroupNo, sled::IVec> = BTreeMap::new();
        for Deliverable { meta, source } in deliverable {
            let ciphertext = match source {
                Source::Cached(bytes) => bytes,
                Source::Stored(loc) => {
                    let row = match rows.get(&loc.group) {
                        Some(row) => row.clone(),
                        None => match self.groups.get(loc.group.to_be_bytes()).map_err(db_error)? {
                            Some(row) => {
                                rows.insert(loc.group, row.clone());
                                row
                            }
                            // Moved by compaction and collected meanwhile: read again.
                            None => return Ok(false),
                        },
                    };
                    match self.open_envelope(&row, loc, meta.seq, device)? {
                        Some(ciphertext) => Bytes::from(ciphertext),
                        // Past retention and shredded: the sweep finishes it.
                        None => continue,
                    }
                }
            };
            items.push(MailboxItem {
                seq: meta.seq,
                message_id: meta.message_id,
                conversation: meta.conversation,
                sender_user: meta.sender_user,
                sender_device: meta.sender_device,
                server_time_ms: meta.server_time_ms,
                ciphertext,
            });
        }
        Ok(true)
    }

    /// Opens the envelope at `loc`, checking it is the one of (`seq`, `device`).
    fn open_envelope(
        &self,
        row: &[u8],
        loc: Loc,
        seq: Seq,
        device: &DeviceId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let payload = payload_at(row, loc)?;
        let (address, sealed) = payload
            .split_at_checked(ENVELOPE_ADDRESS)
            .ok_or_else(|| corrupt("truncated envelope"))?;
        if address != envelope_address(seq, device) {
            return Err(corrupt("an envelope lies where another was recorded"));
        }
        match self.codec.open_raw(LABEL_ENVELOPE, address, sealed) {
            Ok(plain) => Ok(Some(plain)),
            Err(StoreError::Shredded { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Finishes `device`'s deliveries of these messages; returns how many were waiting.
    pub fn ack(&self, device: &DeviceId, message_ids: &[MessageId]) -> u32 {
        self.state().acknowledge(device, message_ids)
    }

    /// Finishes everything waiting for a revoked device; returns how many deliveries.
    pub fn drop_device(&self, device: &DeviceId) -> u32 {
        self.state().drop_device(device)
    }

    /// Counts for metrics.
    pub fn stats(&self) -> MailStats {
        self.state().stats()
    }

    /// Retention: finishes the deliveries `past` says ran out of retention, unless `held`;
    /// forgets the idempotency records past retention unless their org is on hold
    /// (`org_held`), deleting summary rows left with nothing. Returns per org (envelopes
    /// deleted, envelopes kept by a hold), and the scopes of everything kept, whose keys must
    /// stay.
    #[allow(clippy::type_complexity)]
    pub fn expire(
        &self,
        past: impl Fn(&SendMeta) -> bool,
        held: impl Fn(&SendMeta) -> bool,
        org_held: impl Fn(&SendMeta) -> bool,
    ) -> Result<(BTreeMap<OrgId, (u64, u64)>, BTreeSet<Scope>), StoreError> {
        let counts = self.state().expire(&past, &held, |m| !org_held(m));
        let mut kept = BTreeSet::new();
        for item in self.summaries.iter() {
            let (key, value) = item.map_err(db_error)?;
            let number = row_number(&key)?;
            let mut keep = false;
            for meta in open_summary(&self.codec, number, &value)? {
                if past(&meta) && !org_held(&meta) {
                    self.state().forget_sent(&meta);
                } else {
                    keep = true;
                    kept.insert(mail_scope(&meta));
                }
            }
            if !keep {
                self.summaries.remove(&key).map_err(db_error)?;
            }
        }
        for meta in self.state().sends_in_log() {
            kept.insert(mail_scope(meta));
        }
        Ok((counts, kept))
    }

    /// Takes what the next flush writes (called with new writes held back).
    pub fn take_flush(self: &Arc<Self>) -> MailFlush {
        let mut state = self.state();
        // Every send stored before this flush began goes into it, so that a sync that began
        // after a send was stored covers it: wait for those still being sealed (each takes
        // microseconds, and no lock is held meanwhile but this condvar's). The server's
        // requests hold the flush barrier while they store a send (`Store::hold_flush`), so
        // there a flush never finds one; this keeps the mail log right on its own.
        let cut = state.last_reserved();
        while state.sealing_through(cut) {
            state.flush_waits(true);
            state = self.sealed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.flush_waits(false);
        }
        let plan = state.take_flush();
        drop(state);
        MailFlush {
            log: self.clone(),
            plan,
            landed: Vec::new(),
        }
    }

    /// A send's records, sealed: its header (with the archive's sealed box), its envelopes and
    /// its archive item.
    fn seal_send(
        &self,
        meta: &SendMeta,
        envelopes: &[(DeviceId, Bytes)],
        archive: Option<&[u8]>,
    ) -> Result<SealedSend, StoreError> {
        let scope = mail_scope(meta);
        let address = meta.seq.to_be_bytes();
        let header = StoredHeader {
            meta: meta.clone(),
            archive: archive.map(<[u8]>::to_vec),
        };
        let mut payload = address.to_vec();
        payload.extend(self.codec.seal(LABEL_HEADER, scope, &address, &header)?);
        let mut sealed = SealedSend {
            header: payload,
            envelopes: Vec::with_capacity(envelopes.len()),
            archive: None,
        };
        for (device, ciphertext) in envelopes {
            let address = envelope_address(meta.seq, device);
            let mut payload = address.to_vec();
            payload.extend(
                self.codec
                    .seal_raw(LABEL_ENVELOPE, scope, &address, ciphertext)?,
            );
            sealed.envelopes.push((*device, payload));
        }
        if let Some(sealed_box) = archive {
            sealed.archive = Some(self.archive_item(meta, sealed_box)?.1);
        }
        Ok(sealed)
    }

    /// A send's archive item: its row's key (org, position) and value.
    fn archive_item(
        &self,
        meta: &SendMeta,
        sealed_box: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let mut key = Vec::with_capacity(24);
        key.extend_from_slice(meta.org.as_bytes());
        key.extend_from_slice(&meta.seq.to_be_bytes());
        let item = ArchiveItemRecord {
            message_id: meta.message_id,
            conversation: meta.conversation,
            sender_user: meta.sender_user,
            sender_device: meta.sender_device,
            server_time_ms: meta.server_time_ms,
            sealed: sealed_box.to_vec(),
        };
        let scope = Scope::Archive {
            org: meta.org,
            day: day_of(meta.server_time_ms),
        };
        let value = self.codec.seal("archive", scope, &key, &item)?;
        Ok((key, value))
    }

    /// Writes a send's archive item (`only_if_missing`: as recovery repairs the newest
    /// flush).
    fn write_archive_item(
        &self,
        header: &StoredHeader,
        only_if_missing: bool,
    ) -> Result<(), StoreError> {
        let Some(sealed) = &header.archive else {
            return Ok(());
        };
        let (key, value) = self.archive_item(&header.meta, sealed)?;
        if only_if_missing && self.archive.contains_key(&key).map_err(db_error)? {
            return Ok(());
        }
        self.archive.insert(key, value).map_err(db_error)?;
        Ok(())
    }

    /// Every mail record's sealed bytes with the associated data it opens with (tests: what
    /// a copy of the database holds).
    pub fn raw_records(&self) -> Result<Vec<RawRecord>, StoreError> {
        raw_records(&self.groups, &self.summaries)
    }
}

/// The idempotency records of a summary row.
fn open_summary(codec: &Codec, number: GroupNo, value: &[u8]) -> Result<Vec<SendMeta>, StoreError> {
    let (_, records) = parse_row(value)?;
    let mut metas = Vec::new();
    for record in records {
        if record.kind != KIND_SENT {
            return Err(corrupt("a summary row holds another kind of record"));
        }
        if let Some(list) = open_or_shredded::<Vec<SendMeta>>(
            codec,
            LABEL_SENT,
            &place(number, record.index),
            record.payload,
        )? {
            metas.extend(list);
        }
    }
    Ok(metas)
}

/// Every mail record of these trees as (label, associated data, sealed bytes): what opens
/// each with [`Codec::open`]. For tests that check a copy of the database after retention.
pub fn raw_records(groups: &Tree, summaries: &Tree) -> Result<Vec<RawRecord>, StoreError> {
    let mut out = Vec::new();
    for (tree, is_summary) in [(groups, false), (summaries, true)] {
        for item in tree.iter() {
            let (key, value) = item.map_err(db_error)?;
            let number = row_number(&key)?;
            let (_, records) = parse_row(&value)?;
            for record in records {
                let (label, aad, sealed) = match (record.kind, is_summary) {
                    (KIND_HEADER | KIND_COPIED_HEADER, false) => {
                        let (a, s) = record
                            .payload
                            .split_at_checked(HEADER_ADDRESS)
                            .ok_or_else(|| corrupt("truncated"))?;
                        (LABEL_HEADER, a.to_vec(), s)
                    }
                    (KIND_ENVELOPE, false) => {
                        let (a, s) = record
                            .payload
                            .split_at_checked(ENVELOPE_ADDRESS)
                            .ok_or_else(|| corrupt("truncated"))?;
                        (LABEL_ENVELOPE, a.to_vec(), s)
                    }
                    (KIND_DONE, false) => (
                        LABEL_DONE,
                        place(number, record.index).to_vec(),
                        record.payload,
                    ),
                    (KIND_SENT, true) => (
                        LABEL_SENT,
                        place(number, record.index).to_vec(),
                        record.payload,
                    ),
                    (kind, _) => return Err(corrupt(format!("unexpected record kind {kind}"))),
                };
                out.push((label, aad, sealed.to_vec()));
            }
        }
    }
    Ok(out)
}

impl MailFlush {
    /// Seals and writes the rows, then the archive items, the summaries, and deletes what was
    /// collected, in that order (see the module documentation).
    pub fn write(&mut self) -> Result<(), StoreError> {
        if self.plan.is_empty() {
            return Ok(());
        }
        let log = self.log.clone();
        let flush = {
            let mut next = log.next_flush.lock().unwrap_or_else(|e| e.into_inner());
            let flush = *next;
            *next += 1;
            flush
        };
        let codec = &log.codec;
        let mut archive_items = Vec::new();
        let mut source_rows: BTreeMap<GroupNo, sled::IVec> = BTreeMap::new();
        for (number, records) in &self.plan.groups {
            let mut row = RowWriter::new(flush);
            for record in records {
                match record {
                    Record::Send { meta, sealed } => {
                        let (_, offset, len) = row.push(KIND_HEADER, &[&sealed.header])?;
                        let header_loc = Loc {
                            group: *number,
                            offset,
                            len,
                        };
                        let mut landed = Vec::with_capacity(sealed.envelopes.len());
                        for (device, payload) in &sealed.envelopes {
                            let (_, offset, len) = row.push(KIND_ENVELOPE, &[payload])?;
                            landed.push((
                                *device,
                                Loc {
                                    group: *number,
                                    offset,
                                    len,
                                },
                            ));
                        }
                        self.landed.push(Landed {
                            seq: meta.seq,
                            header: header_loc,
                            envelopes: landed,
                        });
                        if let Some(value) = &sealed.archive {
                            let mut key = Vec::with_capacity(24);
                            key.extend_from_slice(meta.org.as_bytes());
                            key.extend_from_slice(&meta.seq.to_be_bytes());
                            archive_items.push((key, value.clone()));
                        }
                    }
                    Record::Copy {
                        seq,
                        header,
                        envelopes,
                    } => {
                        let source = |group: GroupNo,
                                      rows: &mut BTreeMap<GroupNo, sled::IVec>|
                         -> Result<sled::IVec, StoreError> {
                            if let Some(row) = rows.get(&group) {
                                return Ok(row.clone());
                            }
                            let row = log
                                .groups
                                .get(group.to_be_bytes())
                                .map_err(db_error)?
                                .ok_or_else(|| corrupt("a row to compact is gone"))?;
                            rows.insert(group, row.clone());
                            Ok(row)
                        };
                        let from = source(header.group, &mut source_rows)?;
                        let (_, offset, len) =
                            row.push(KIND_COPIED_HEADER, &[payload_at(&from, *header)?])?;
                        let header_loc = Loc {
                            group: *number,
                            offset,
                            len,
                        };
                        let mut landed = Vec::with_capacity(envelopes.len());
                        for (device, loc) in envelopes {
                            let from = source(loc.group, &mut source_rows)?;
                            let payload = payload_at(&from, *loc)?;
                            if payload.get(..ENVELOPE_ADDRESS)
                                != Some(&envelope_address(*seq, device)[..])
                            {
                                return Err(corrupt(
                                    "an envelope to compact is not where it was recorded",
                                ));
                            }
                            let (_, offset, len) = row.push(KIND_ENVELOPE, &[payload])?;
                            landed.push((
                                *device,
                                Loc {
                                    group: *number,
                                    offset,
                                    len,
                                },
                            ));
                        }
                        self.landed.push(Landed {
                            seq: *seq,
                            header: header_loc,
                            envelopes: landed,
                        });
                    }
                    Record::Done { device, seqs } => {
                        let index = row.count;
                        let sealed = codec.seal(
                            LABEL_DONE,
                            Scope::Standing,
                            &place(*number, index),
                            &StoredDone {
                                device: *device,
                                seqs: seqs.clone(),
                            },
                        )?;
                        row.push(KIND_DONE, &[&sealed])?;
                    }
                }
            }
            log.groups
                .insert(number.to_be_bytes(), row.bytes)
                .map_err(db_error)?;
        }
        for (key, value) in archive_items {
            log.archive.insert(key, value).map_err(db_error)?;
        }
        // The idempotency records of every send whose last copy this flush deletes, in as few
        // summary rows as fit them (each at most a group row's size, one sealed list per org
        // and day in each: retention shreds them by that key anyway), each under the number
        // of a row this flush deletes, all before any row is deleted.
        let mut metas: Vec<&SendMeta> = self.plan.collect.iter().flat_map(|(_, s)| s).collect();
        metas.sort_by_key(|meta| mail_scope(meta));
        let mut numbers = self.plan.collect.iter().map(|(number, _)| *number);
        // Never more rows than numbers to put them under (a row of very small sends can
        // hold more than a summary row's share).
        let per_row =
            SUMMARY_RECORDS_PER_ROW.max(metas.len().div_ceil(self.plan.collect.len().max(1)));
        for chunk in metas.chunks(per_row) {
            let Some(number) = numbers.next() else {
                return Err(corrupt("more summary rows than rows collected"));
            };
            let mut row = RowWriter::new(flush);
            for same_scope in chunk.chunk_by(|a, b| mail_scope(a) == mail_scope(b)) {
                let Some(first) = same_scope.first() else {
                    continue;
                };
                let index = row.count;
                let sealed = codec.seal(
                    LABEL_SENT,
                    mail_scope(first),
                    &place(number, index),
                    &same_scope,
                )?;
                row.push(KIND_SENT, &[&sealed])?;
            }
            log.summaries
                .insert(number.to_be_bytes(), row.bytes)
                .map_err(db_error)?;
        }
        for (number, _) in &self.plan.collect {
            log.groups.remove(number.to_be_bytes()).map_err(db_error)?;
        }
        Ok(())
    }

    /// The flush that followed [`MailFlush::write`] made it durable.
    pub fn durable(self) {
        let MailFlush { log, plan, landed } = self;
        log.state().flushed(&plan, landed);
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
    use crate::keyring::Keyring;

    struct Fixture {
        dir: tempfile::TempDir,
        db: Db,
        log: Arc<MailLog>,
    }

    fn open(dir: tempfile::TempDir) -> Fixture {
        // sled's background flusher lets go of the database's file lock a moment after the
        // last handle is dropped: wait for it rather than fail a reopen.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new().path(dir.path().join("db")).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other && attempts < 200 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let keyring =
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap();
        let log = MailLog::open(
            &db,
            Codec::new(Arc::new(keyring)),
            db.open_tree("archive").unwrap(),
            |_| false,
            1 << 20,
        )
        .unwrap();
        Fixture {
            dir,
            db,
            log: Arc::new(log),
        }
    }

    fn reopen(fixture: Fixture) -> Fixture {
        let Fixture { dir, db, log } = fixture;
        drop(log);
        db.flush().unwrap();
        drop(db);
        open(dir)
    }

    fn flush(fixture: &Fixture) {
        let mut pending = fixture.log.take_flush();
        pending.write().unwrap();
        fixture.db.flush().unwrap();
        pending.durable();
    }

    fn id<T: From<[u8; 16]>>(n: u8) -> T {
        T::from([n; 16])
    }

    fn send(fixture: &Fixture, n: u8, to: &[DeviceId], archive: bool) -> SendRecord {
        let outcome = fixture
            .log
            .store_send(NewSend {
                org: id(1),
                conversation: id(2),
                sender_user: id(3),
                sender_device: id(4),
                client_message_id: id(n),
                record: SendRecord {
                    message_id: id(100 + n),
                    server_time_ms: 1_700_000_000_000,
                },
                envelopes: to
                    .iter()
                    .map(|d| (*d, Bytes::from(format!("ciphertext-{n}-{d}"))))
                    .collect(),
                archive: archive.then(|| Bytes::from_static(b"sealed box")),
            })
            .unwrap();
        match outcome {
            StoreSendOutcome::Stored(record) => record,
            other => panic!("{other:?}"),
        }
    }

    fn texts(fixture: &Fixture, device: &DeviceId) -> Vec<String> {
        fixture
            .log
            .mailbox_after(device, None, 100)
            .unwrap()
            .into_iter()
            .map(|item| String::from_utf8(item.ciphertext.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_send_is_delivered_once_flushed_and_again_from_disk_after_a_restart() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        send(&fixture, 1, &[bob], false);
        assert!(texts(&fixture, &bob).is_empty(), "not before the flush");
        flush(&fixture);
        let expected = vec![format!("ciphertext-1-{bob}")];
        assert_eq!(texts(&fixture, &bob), expected);
        let fixture = reopen(fixture);
        assert_eq!(
            texts(&fixture, &bob),
            expected,
            "read and opened from its row"
        );
        assert!(fixture.log.sent(&id(4), &id(1)).is_some());
    }

    /// Reserves a send's position as `store_send` does, and hands back the reservation
    /// before its records are sealed.
    fn reserve(fixture: &Fixture, n: u8) -> Sealing<'_> {
        let meta = SendMeta {
            seq: 0,
            org: id(1),
            message_id: id(100 + n),
            conversation: id(2),
            sender_user: id(3),
            sender_device: id(4),
            client_message_id: id(n),
            server_time_ms: 1_700_000_000_000,
        };
        let db = &fixture.db;
        let reserved = fixture
            .log
            .state()
            .reserve_send(meta, || db.generate_id().map(|id| id + 1))
            .unwrap();
        let Reservation::Reserved(meta) = reserved else {
            panic!("{reserved:?}");
        };
        Sealing {
            log: &fixture.log,
            meta,
            open: true,
        }
    }

    /// Takes a flush on another thread; tells whether it is still waiting after a while.
    fn flush_on_a_thread(fixture: &Fixture) -> std::thread::JoinHandle<MailFlush> {
        let log = fixture.log.clone();
        let flush = std::thread::spawn(move || log.take_flush());
        // The flush cannot finish while it waits: this only gives it time to get there.
        std::thread::sleep(std::time::Duration::from_millis(100));
        flush
    }

    #[test]
    fn a_flush_waits_for_a_send_reserved_before_it_began_and_writes_it() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        let sealing = reserve(&fixture, 1);
        // Stored after the reservation, so the flush must hold it too (its sender may be
        // syncing already).
        let later = send(&fixture, 2, &[bob], false);
        let flush = flush_on_a_thread(&fixture);
        assert!(
            !flush.is_finished(),
            "the flush took its work around a send being sealed"
        );
        let text = Bytes::from(format!("ciphertext-1-{bob}"));
        let sealed = fixture
            .log
            .seal_send(&sealing.meta, &[(bob, text.clone())], None)
            .unwrap();
        let first = sealing.complete(vec![(bob, text)], sealed);
        let mut flush = flush.join().unwrap();
        flush.write().unwrap();
        fixture.db.flush().unwrap();
        flush.durable();
        let delivered: Vec<MessageId> = fixture
            .log
            .mailbox_after(&bob, None, 10)
            .unwrap()
            .into_iter()
            .map(|item| item.message_id)
            .collect();
        assert_eq!(delivered, vec![first.message_id, later.message_id]);
    }

    #[test]
    fn a_reservation_dropped_unsealed_is_given_up_and_the_flush_goes_on() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        let sealing = reserve(&fixture, 1);
        send(&fixture, 2, &[bob], false);
        let flush = flush_on_a_thread(&fixture);
        assert!(!flush.is_finished());
        // As when sealing fails (or panics) before the send is complete.
        drop(sealing);
        let mut flush = flush.join().unwrap();
        flush.write().unwrap();
        fixture.db.flush().unwrap();
        flush.durable();
        assert_eq!(texts(&fixture, &bob), vec![format!("ciphertext-2-{bob}")]);
        assert!(
            fixture.log.sent(&id(4), &id(1)).is_none(),
            "its id is free again"
        );
    }

    #[test]
    fn a_repeat_of_a_send_being_sealed_is_refused_until_the_first_is_done_with() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        let repeat = || NewSend {
            org: id(1),
            conversation: id(2),
            sender_user: id(3),
            sender_device: id(4),
            client_message_id: id(1),
            record: SendRecord {
                message_id: id(201),
                server_time_ms: 1_700_000_000_000,
            },
            envelopes: vec![(bob, Bytes::from_static(b"again"))],
            archive: None,
        };
        let sealing = reserve(&fixture, 1);
        // Not a duplicate yet: the first could still fail to be stored. The relay looks
        // first, then stores.
        assert!(fixture.log.sent(&id(4), &id(1)).is_none());
        assert_eq!(
            fixture.log.store_send(repeat()).unwrap(),
            StoreSendOutcome::InProgress
        );
        // The first is given up (its sealing failed): the repeat is stored as new.
        drop(sealing);
        let stored = fixture.log.store_send(repeat()).unwrap();
        assert!(
            matches!(stored, StoreSendOutcome::Stored(r) if r.message_id == id(201)),
            "{stored:?}"
        );
        flush(&fixture);
        assert_eq!(texts(&fixture, &bob), vec!["again".to_string()]);
        // Now it is a duplicate.
        assert!(matches!(
            fixture.log.store_send(repeat()).unwrap(),
            StoreSendOutcome::Duplicate(r) if r.message_id == id(201)
        ));
    }

    #[test]
    fn acknowledged_mail_is_collected_and_its_idempotency_record_stays() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        let record = send(&fixture, 1, &[bob], false);
        flush(&fixture);
        assert_eq!(fixture.log.ack(&bob, &[record.message_id]), 1);
        flush(&fixture);
        flush(&fixture);
        assert_eq!(fixture.log.groups.len(), 0, "every row collected");
        assert_eq!(fixture.log.summaries.len(), 1);
        let fixture = reopen(fixture);
        assert!(texts(&fixture, &bob).is_empty(), "the ack held");
        assert_eq!(fixture.log.sent(&id(4), &id(1)), Some(record));
    }

    #[test]
    fn the_records_of_a_flush_share_summary_rows_and_all_survive_a_restart() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        let records: Vec<SendRecord> = (1..=100)
            .map(|n| send(&fixture, n, &[bob], false))
            .collect();
        flush(&fixture);
        let groups = fixture.log.groups.len();
        assert!(groups > 2, "{groups} rows");
        let ids: Vec<MessageId> = records.iter().map(|r| r.message_id).collect();
        assert_eq!(fixture.log.ack(&bob, &ids), 100);
        flush(&fixture);
        assert_eq!(fixture.log.groups.len(), 0, "every row collected");
        assert_eq!(fixture.log.summaries.len(), 2, "100 records in rows of 60");
        let fixture = reopen(fixture);
        for (n, record) in (1..=100).zip(&records) {
            assert_eq!(fixture.log.sent(&id(4), &id(n)), Some(*record), "send {n}");
        }
    }

    #[test]
    fn the_archive_item_is_written_with_the_flush_and_repaired_for_the_newest_only() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        send(&fixture, 1, &[bob], true);
        flush(&fixture);
        send(&fixture, 2, &[bob], true);
        flush(&fixture);
        assert_eq!(fixture.log.archive.len(), 2);
        // As if the newest flush stopped before its archive items, and an older item was
        // removed since (retention): only the newest flush's is written again.
        let keys: Vec<sled::IVec> = fixture
            .log
            .archive
            .iter()
            .keys()
            .map(|k| k.unwrap())
            .collect();
        for key in &keys {
            fixture.log.archive.remove(key).unwrap();
        }
        let fixture = reopen(fixture);
        let left: Vec<sled::IVec> = fixture
            .log
            .archive
            .iter()
            .keys()
            .map(|k| k.unwrap())
            .collect();
        assert_eq!(left, vec![keys[1].clone()]);
    }

    #[test]
    fn a_changed_envelope_is_refused_and_a_changed_done_stops_the_open() {
        let fixture = open(tempfile::tempdir().unwrap());
        let (bob, carol): (DeviceId, DeviceId) = (id(50), id(51));
        let record = send(&fixture, 1, &[bob, carol], false);
        flush(&fixture);
        fixture.log.ack(&bob, &[record.message_id]);
        flush(&fixture);
        let fixture = reopen(fixture);
        // Flip a byte inside carol's envelope on disk.
        let (key, value) = fixture.log.groups.first().unwrap().unwrap();
        let (_, records) = parse_row(&value).unwrap();
        let envelope = records
            .iter()
            .find(|r| r.kind == KIND_ENVELOPE && r.payload[8..24] == carol.as_bytes()[..])
            .map(|r| r.offset as usize + r.payload.len() - 1)
            .unwrap();
        let mut changed = value.to_vec();
        changed[envelope] ^= 1;
        fixture.log.groups.insert(&key, changed).unwrap();
        let fixture = reopen(fixture);
        assert!(matches!(
            fixture.log.mailbox_after(&carol, None, 10),
            Err(StoreError::Corrupt { .. })
        ));
        // Flip a byte of the Done record: the log no longer opens, naming the damage.
        let (key, value) = fixture.log.groups.last().unwrap().unwrap();
        let mut changed = value.to_vec();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        fixture.log.groups.insert(&key, changed).unwrap();
        let Fixture { dir, db, log } = fixture;
        drop(log);
        db.flush().unwrap();
        drop(db);
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let keyring =
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap();
        let reopened = MailLog::open(
            &db,
            Codec::new(Arc::new(keyring)),
            db.open_tree("archive").unwrap(),
            |_| false,
            1 << 20,
        );
        assert!(matches!(reopened, Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn compaction_copies_an_offline_devices_mail_as_sealed_and_it_still_opens() {
        let fixture = open(tempfile::tempdir().unwrap());
        let (online, offline): (DeviceId, DeviceId) = (id(50), id(51));
        send(&fixture, 1, &[offline], false);
        let mut n = 2u8;
        let first_row = {
            let record = send(&fixture, n, &[online], false);
            flush(&fixture);
            fixture.log.ack(&online, &[record.message_id]);
            fixture.log.groups.first().unwrap().unwrap().0
        };
        for _ in 0..(super::super::mail_state::COMPACT_AFTER_GROUPS + 40) {
            n = n.wrapping_add(1).max(2);
            let record = send(&fixture, n, &[online], false);
            flush(&fixture);
            fixture.log.ack(&online, &[record.message_id]);
        }
        flush(&fixture);
        flush(&fixture);
        assert!(
            fixture.log.groups.get(&first_row).unwrap().is_none(),
            "the first row was compacted away"
        );
        assert!(
            fixture.log.groups.len() < 6,
            "{} rows",
            fixture.log.groups.len()
        );
        let fixture = reopen(fixture);
        assert_eq!(
            texts(&fixture, &offline),
            vec![format!("ciphertext-1-{offline}")]
        );
        assert!(texts(&fixture, &online).is_empty());
    }

    #[test]
    fn a_read_that_races_compaction_starts_again_instead_of_skipping_a_message() {
        let fixture = open(tempfile::tempdir().unwrap());
        let (online, offline): (DeviceId, DeviceId) = (id(50), id(51));
        send(&fixture, 1, &[offline], false);
        let record = send(&fixture, 2, &[online], false);
        flush(&fixture);
        fixture.log.ack(&online, &[record.message_id]);
        flush(&fixture);
        // Read from its row, not from the cache of recent mail.
        let fixture = reopen(fixture);
        let stale = fixture.log.state().deliverable(&offline, None, 10);
        assert!(matches!(
            stale.first().map(|d| &d.source),
            Some(Source::Stored(_))
        ));
        let mut n = 2u8;
        for _ in 0..(super::super::mail_state::COMPACT_AFTER_GROUPS + 40) {
            n = n.wrapping_add(1).max(3);
            let record = send(&fixture, n, &[online], false);
            flush(&fixture);
            fixture.log.ack(&online, &[record.message_id]);
        }
        flush(&fixture);
        // The row the stale location names is gone: the read says so rather than skipping.
        let mut items = Vec::new();
        assert!(!fixture
            .log
            .read_deliverable(&offline, stale, &mut items)
            .unwrap());
        assert!(items.is_empty());
        assert_eq!(
            texts(&fixture, &offline),
            vec![format!("ciphertext-1-{offline}")]
        );
    }

    #[test]
    fn nothing_of_a_ciphertext_lies_on_disk_in_the_clear() {
        let fixture = open(tempfile::tempdir().unwrap());
        let bob: DeviceId = id(50);
        send(&fixture, 7, &[bob], true);
        flush(&fixture);
        let fixture = reopen(fixture);
        let marker = format!("ciphertext-7-{bob}");
        let mut files = vec![fixture.dir.path().join("db")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                    "{} holds a ciphertext in the clear",
                    path.display()
                );
                assert!(!bytes.windows(10).any(|w| w == b"sealed box"));
            }
        }
    }
}
