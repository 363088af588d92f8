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

use super::codec::{decode, encode};
use super::{
    BreakGlassRecord, CareRecord, ConversationRecord, DeviceRecord, EnvelopeRecord, InviteRecord,
    MailboxItem, OneTimePrekey, OrgRecord, SendRecord, Store, StoreError, StoreSendOutcome,
    SyncFuture, TeamRecord, UserRecord,
};
use crate::group_commit::{CommitStats, Flush, GroupCommit};

/// The sled database and its trees.
#[derive(Debug)]
pub struct SledStore {
    db: Db,
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
}

struct DbFlush(Db);

impl Flush for DbFlush {
    fn flush(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
        Box::pin(async move {
            self.0
                .flush_async()
                .await
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
fn encode_prekeys(device: &DeviceId, prekeys: &[OneTimePrekey]) -> Result<Rows, StoreError> {
    prekeys
        .iter()
        .map(|p| {
            Ok((
                key2(device.as_bytes(), &p.id.to_be_bytes()),
                encode("prekey", p)?,
            ))
        })
        .collect()
}

fn handle_key(org: &OrgId, handle: &Handle) -> Vec<u8> {
    key2(org.as_bytes(), handle.as_str().as_bytes())
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

impl SledStore {
    /// Opens (creating if needed) the database at `path` and starts its flusher.
    /// Must be called inside a tokio runtime.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        Ok(SledStore {
            commit: GroupCommit::start(Arc::new(DbFlush(db.clone()))),
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
            db,
        })
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

    fn put<T: serde::Serialize>(
        tree: &Tree,
        kind: &'static str,
        key: impl AsRef<[u8]>,
        record: &T,
    ) -> Result<(), StoreError> {
        tree.insert(key.as_ref(), encode(kind, record)?)
            .map_err(db_error)?;
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(
        tree: &Tree,
        kind: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(db_error)? {
            Some(bytes) => decode(kind, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl Store for SledStore {
    fn sync(&self) -> SyncFuture<'_> {
        Box::pin(async move { self.commit.sync().await.map_err(StoreError::from) })
    }

    fn put_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        Self::put(&self.orgs, "org", org.id.as_bytes(), org)
    }

    fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError> {
        Self::get(&self.orgs, "org", id.as_bytes())
    }

    fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        self.orgs
            .iter()
            .values()
            .map(|v| decode("org", &v.map_err(db_error)?))
            .collect()
    }

    fn put_invite(&self, code_hash: &[u8; 32], invite: &InviteRecord) -> Result<(), StoreError> {
        Self::put(&self.invites, "invite", code_hash, invite)
    }

    fn take_invite(&self, code_hash: &[u8; 32]) -> Result<Option<InviteRecord>, StoreError> {
        match self.invites.remove(code_hash).map_err(db_error)? {
            Some(bytes) => decode("invite", &bytes).map(Some),
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
        let user_bytes = encode("user", user)?;
        let device_bytes = encode("device", device)?;
        let prekeys = encode_prekeys(&device.id, one_time_prekeys)?;
        let handle = handle_key(&user.org, &user.handle);
        (
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
            .map_err(tx_error)
    }

    fn add_device(
        &self,
        device: &DeviceRecord,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<(), StoreError> {
        let device_bytes = encode("device", device)?;
        let prekeys = encode_prekeys(&device.id, one_time_prekeys)?;
        (&self.devices, &self.user_devices, &self.one_time_prekeys)
            .transaction(|(devices, user_devices, otpks)| {
                devices.insert(device.id.as_bytes().as_slice(), device_bytes.as_slice())?;
                user_devices.insert(key2(device.user.as_bytes(), device.id.as_bytes()), &[])?;
                for (key, value) in &prekeys {
                    otpks.insert(key.as_slice(), value.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    fn put_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        Self::put(&self.devices, "device", device.id.as_bytes(), device)
    }

    fn user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        Self::get(&self.users, "user", id.as_bytes())
    }

    fn user_by_handle(
        &self,
        org: &OrgId,
        handle: &Handle,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self
            .handles
            .get(handle_key(org, handle))
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
        Self::get(&self.devices, "device", id.as_bytes())
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

    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        Self::put(&self.users, "user", user.id.as_bytes(), user)
    }

    fn org_users(&self, org: &OrgId) -> Result<Vec<UserRecord>, StoreError> {
        let mut users = Vec::new();
        for value in self.users.iter().values() {
            let user: UserRecord = decode("user", &value.map_err(db_error)?)?;
            if user.org == *org {
                users.push(user);
            }
        }
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
        let record_bytes = encode("device", &record)?;
        let keys = |tree: &Tree| -> Result<Vec<sled::IVec>, StoreError> {
            tree.scan_prefix(device.as_bytes())
                .keys()
                .map(|k| k.map_err(db_error))
                .collect()
        };
        let prekeys = keys(&self.one_time_prekeys)?;
        let mail = keys(&self.mailbox)?;
        let mail_ids = keys(&self.mailbox_ids)?;
        (
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
            .map_err(tx_error)
    }

    fn put_team(&self, team: &TeamRecord) -> Result<(), StoreError> {
        self.teams
            .insert(
                key2(team.org.as_bytes(), team.id.as_bytes()),
                encode("team", team)?,
            )
            .map_err(db_error)?;
        Ok(())
    }

    fn team(&self, org: &OrgId, id: &TeamId) -> Result<Option<TeamRecord>, StoreError> {
        Self::get(&self.teams, "team", &key2(org.as_bytes(), id.as_bytes()))
    }

    fn org_teams(&self, org: &OrgId) -> Result<Vec<TeamRecord>, StoreError> {
        self.teams
            .scan_prefix(org.as_bytes())
            .values()
            .map(|v| decode("team", &v.map_err(db_error)?))
            .collect()
    }

    fn care(&self, org: &OrgId, patient: &UserId) -> Result<CareRecord, StoreError> {
        Ok(Self::get(
            &self.care,
            "care",
            &key2(org.as_bytes(), patient.as_bytes()),
        )?
        .unwrap_or_default())
    }

    fn put_care(&self, org: &OrgId, patient: &UserId, care: &CareRecord) -> Result<(), StoreError> {
        self.care
            .insert(
                key2(org.as_bytes(), patient.as_bytes()),
                encode("care", care)?,
            )
            .map_err(db_error)?;
        Ok(())
    }

    fn put_break_glass(&self, org: &OrgId, grant: &BreakGlassRecord) -> Result<(), StoreError> {
        let key = [
            org.as_bytes().as_slice(),
            grant.patient.as_bytes(),
            grant.staff.as_bytes(),
        ]
        .concat();
        Self::put(&self.break_glass, "break_glass", key, grant)
    }

    fn break_glass_for(
        &self,
        org: &OrgId,
        patient: &UserId,
    ) -> Result<Vec<BreakGlassRecord>, StoreError> {
        self.break_glass
            .scan_prefix(key2(org.as_bytes(), patient.as_bytes()))
            .values()
            .map(|v| decode("break_glass", &v.map_err(db_error)?))
            .collect()
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
        let record_bytes = encode("conversation", &record)?;
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
        for (key, value) in encode_prekeys(device, prekeys)? {
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
                return decode("prekey", &value).map(Some);
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
        Self::get(&self.conversations, "conversation", id.as_bytes())
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
        let record_bytes = encode("conversation", &record)?;
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
        sender_device: &DeviceId,
        client_message_id: &ClientMessageId,
        send: &SendRecord,
        envelopes: Vec<(DeviceId, EnvelopeRecord)>,
    ) -> Result<StoreSendOutcome, StoreError> {
        let sent_key = key2(sender_device.as_bytes(), client_message_id.as_bytes());
        let send_bytes = encode("send", send)?;
        let mut rows = Vec::with_capacity(envelopes.len());
        for (device, envelope) in &envelopes {
            let seq = self.db.generate_id().map_err(db_error)?;
            rows.push((
                key2(device.as_bytes(), &seq.to_be_bytes()),
                key2(device.as_bytes(), envelope.message_id.as_bytes()),
                seq.to_be_bytes(),
                encode("envelope", envelope)?,
            ));
        }
        (&self.sent, &self.mailbox, &self.mailbox_ids)
            .transaction(|(sent, mailbox, mailbox_ids)| {
                if let Some(previous) = sent.get(&sent_key)? {
                    let previous = decode("send", &previous).map_err(abort)?;
                    return Ok(StoreSendOutcome::Duplicate(previous));
                }
                sent.insert(sent_key.as_slice(), send_bytes.as_slice())?;
                for (mailbox_key, id_key, seq, envelope) in &rows {
                    mailbox.insert(mailbox_key.as_slice(), envelope.as_slice())?;
                    mailbox_ids.insert(id_key.as_slice(), seq.as_slice())?;
                }
                Ok(StoreSendOutcome::Stored(*send))
            })
            .map_err(tx_error)
    }

    fn sent(
        &self,
        sender_device: &DeviceId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<SendRecord>, StoreError> {
        Self::get(
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
        for entry in self.mailbox.range(start..=end).take(limit) {
            let (key, value) = entry.map_err(db_error)?;
            let seq = id_suffix::<8>(&key, 16)
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    kind: "mailbox",
                    reason: "short key".to_owned(),
                })?;
            items.push(MailboxItem {
                seq,
                envelope: decode("envelope", &value)?,
            });
        }
        Ok(items)
    }

    fn ack(&self, device: &DeviceId, message_ids: &[MessageId]) -> Result<u32, StoreError> {
        let id_keys: Vec<Vec<u8>> = message_ids
            .iter()
            .map(|id| key2(device.as_bytes(), id.as_bytes()))
            .collect();
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
    }
}
