//! The storage seam: everything the relay keeps, behind one trait.
//!
//! sled implements it now ([`sled_store::SledStore`]); a PostgreSQL backend can implement it
//! later for stateless relays. Methods are synchronous (sled is an embedded, in-process store);
//! every method that changes state applies its change atomically, and [`Store::sync`] makes
//! everything applied before the call durable, sharing flushes between concurrent callers.
//!
//! Every stored value is a versioned record (see [`codec`]); an envelope holds only ciphertext
//! and the routing metadata the server needs.

pub mod codec;
pub mod mail_log;
pub mod mail_state;
pub mod records;
pub mod sled_store;
pub mod xchacha;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use medrelay_proto::ids::{ClientMessageId, ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{Handle, TeamId};

pub use medrelay_proto::OneTimePrekey;
pub use records::{
    ArchiveItemRecord, BreakGlassRecord, CareRecord, ConsentRecord, ConversationRecord,
    CredentialsRecord, DeviceRecord, EnvelopeRecord, HoldRecord, InviteKindRecord, InviteRecord,
    LockoutRecord, LoginSession, OrgPolicy, OrgRecord, RetentionRecord, SendRecord, TeamRecord,
    UserRecord,
};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an I/O or internal error.
    #[error("database error: {0}")]
    Database(String),
    /// A stored value could not be decoded: the database is damaged or from a newer version.
    #[error("a stored {kind} record could not be decoded: {reason}")]
    Corrupt {
        /// Which kind of record.
        kind: &'static str,
        /// What was wrong, without the value itself.
        reason: String,
    },
    /// The handle is taken in this org.
    #[error("that handle is already taken in this organisation")]
    HandleTaken,
    /// A data key could not be created or used.
    #[error("key store error: {0}")]
    Keyring(String),
    /// The record's key was destroyed by retention: it can never be read again.
    #[error("a stored {kind} record is past retention and its key was destroyed")]
    Shredded {
        /// Which kind of record.
        kind: &'static str,
    },
    /// The flush that would make a write durable failed or storage stopped.
    #[error("could not make the write durable: {0}")]
    NotDurable(#[from] crate::group_commit::SyncError),
}

/// Result of storing a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSendOutcome {
    /// The envelopes were stored (atomically, not yet necessarily durable).
    Stored(SendRecord),
    /// The same sender device already sent this client message id; nothing was written.
    Duplicate(SendRecord),
    /// The same sender device's send of this client message id is being stored right now
    /// (another connection's): nothing was written, and whether that send will be stored is
    /// not known yet. Answered as a transient failure, so the client sends it again.
    InProgress,
}

/// One delivery waiting in a device's mailbox, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxItem {
    /// Position in the mailbox: strictly increasing in the order of storage.
    pub seq: u64,
    /// The message's server id.
    pub message_id: MessageId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Who sent it.
    pub sender_user: UserId,
    /// From which device.
    pub sender_device: DeviceId,
    /// When the server accepted it.
    pub server_time_ms: u64,
    /// The end-to-end ciphertext for this device. Opaque to the server.
    pub ciphertext: bytes::Bytes,
}

/// A send to store: one envelope per recipient device, and the org archive's sealed box if
/// the org archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSend {
    /// The sender's org.
    pub org: OrgId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Who sends.
    pub sender_user: UserId,
    /// From which device.
    pub sender_device: DeviceId,
    /// The sender's own id for the message (idempotency).
    pub client_message_id: ClientMessageId,
    /// The server's id and time for it.
    pub record: SendRecord,
    /// The end-to-end ciphertexts, per recipient device.
    pub envelopes: Vec<(DeviceId, bytes::Bytes)>,
    /// The org archive's sealed box.
    pub archive: Option<bytes::Bytes>,
}

/// A boxed future of a durable sync.
pub type SyncFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Writes that wait in memory for the next flush, which writes them first: the mail log's
/// and the access log's rows. Many writes then cost one database write per flush.
pub trait FlushHook: Send + Sync + std::fmt::Debug + 'static {
    /// Takes what waits (called at the start of every flush, with new writes held back).
    fn take(&self) -> Box<dyn PendingFlush>;
}

/// What one flush takes from a [`FlushHook`].
pub trait PendingFlush: Send {
    /// What it is, for the breakdown of a slow flush in the log.
    fn name(&self) -> &'static str;
    /// Writes it to the database, before the flush.
    fn write(&mut self) -> Result<(), StoreError>;
    /// The flush after [`PendingFlush::write`] succeeded: it is durable.
    fn durable(self: Box<Self>);
}

/// Held while a request changes the mail log and records its access-log entry, so that one
/// flush takes both or neither (see [`Store::hold_flush`]).
#[derive(Debug)]
pub struct FlushHold<'a>(#[allow(dead_code)] Option<std::sync::RwLockReadGuard<'a, ()>>);

impl FlushHold<'_> {
    /// A hold that holds nothing (stores without deferred writes).
    pub fn none() -> FlushHold<'static> {
        FlushHold(None)
    }
}

/// Everything the relay stores.
pub trait Store: Send + Sync + 'static {
    /// Returns once every change applied before this call is durable (group commit).
    fn sync(&self) -> SyncFuture<'_>;

    /// Like [`Store::sync`], and runs `after` once the changes are durable and before any
    /// other waiter of the same flush returns, where the store can promise that (so a
    /// recipient waiting on that flush already finds its wake-up when it runs); `after` does
    /// not run if they could not be made durable.
    fn sync_then(&self, after: Box<dyn FnOnce() + Send>) -> SyncFuture<'_> {
        Box::pin(async move {
            self.sync().await?;
            after();
            Ok(())
        })
    }

    /// Keeps the next flush from taking deferred writes until the hold is dropped: hold it
    /// from a change to the mail log through recording its access-log entry, so the two are
    /// durable together. Hold it briefly; never across an await.
    fn hold_flush(&self) -> FlushHold<'_> {
        FlushHold::none()
    }

    // ---- orgs
    /// Stores (creates or replaces) an org.
    fn put_org(&self, org: &OrgRecord) -> Result<(), StoreError>;
    /// Looks an org up.
    fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>, StoreError>;
    /// Every org.
    fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError>;

    // ---- invites
    /// Stores an invite under the hash of its code.
    fn put_invite(&self, code_hash: &[u8; 32], invite: &InviteRecord) -> Result<(), StoreError>;
    /// Removes and returns the invite: a code can be taken once only, also under races.
    fn take_invite(&self, code_hash: &[u8; 32]) -> Result<Option<InviteRecord>, StoreError>;
    /// Puts a taken invite back (when enrolment failed after taking it).
    fn restore_invite(&self, code_hash: &[u8; 32], invite: &InviteRecord)
        -> Result<(), StoreError>;

    // ---- users and devices
    /// Creates a user with its first device and one-time prekeys, atomically; fails with
    /// [`StoreError::HandleTaken`] and writes nothing if the handle is taken in the org.
    fn create_user(
        &self,
        user: &UserRecord,
        device: &DeviceRecord,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<(), StoreError>;
    /// Adds another device to an existing user, with its one-time prekeys, atomically.
    fn add_device(
        &self,
        device: &DeviceRecord,
        one_time_prekeys: &[OneTimePrekey],
    ) -> Result<(), StoreError>;
    /// Replaces a device record (prekey rotation, last activity).
    fn put_device(&self, device: &DeviceRecord) -> Result<(), StoreError>;
    /// Looks a user up.
    fn user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by handle within an org.
    fn user_by_handle(
        &self,
        org: &OrgId,
        handle: &Handle,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a device up.
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// The user's devices that are not revoked, in a stable order.
    fn active_devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>, StoreError>;
    /// The ids of the user's devices that are not revoked, as [`Store::active_devices`]
    /// lists them. Every send asks this for every member, so a store may cache it, as long
    /// as every change to a device or to a user's device list is seen by the next call.
    fn active_device_ids(&self, user: &UserId) -> Result<Arc<Vec<DeviceId>>, StoreError> {
        Ok(Arc::new(
            self.active_devices(user)?
                .into_iter()
                .map(|d| d.id)
                .collect(),
        ))
    }

    /// Replaces a user record (not its handle).
    fn put_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// Every user of an org.
    fn org_users(&self, org: &OrgId) -> Result<Vec<UserRecord>, StoreError>;
    /// Every device of a user, revoked ones included.
    fn all_devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Marks a device revoked and deletes its one-time prekeys and its mailbox, atomically.
    fn revoke_device(&self, device: &DeviceId) -> Result<(), StoreError>;

    // ---- care teams and assignment
    /// Stores a team.
    fn put_team(&self, team: &TeamRecord) -> Result<(), StoreError>;
    /// Looks a team up.
    fn team(&self, org: &OrgId, id: &TeamId) -> Result<Option<TeamRecord>, StoreError>;
    /// Every team of an org.
    fn org_teams(&self, org: &OrgId) -> Result<Vec<TeamRecord>, StoreError>;
    /// Who is assigned to care for a patient.
    fn care(&self, org: &OrgId, patient: &UserId) -> Result<CareRecord, StoreError>;
    /// Replaces a patient's care assignment.
    fn put_care(&self, org: &OrgId, patient: &UserId, care: &CareRecord) -> Result<(), StoreError>;
    /// Records a break-glass grant (replacing an earlier one for the same pair).
    fn put_break_glass(&self, org: &OrgId, grant: &BreakGlassRecord) -> Result<(), StoreError>;
    /// Every break-glass grant for a patient, expired ones included.
    fn break_glass_for(
        &self,
        org: &OrgId,
        patient: &UserId,
    ) -> Result<Vec<BreakGlassRecord>, StoreError>;
    /// The care conversation of a patient, created if there is none.
    fn patient_conversation(
        &self,
        org: &OrgId,
        patient: &UserId,
        new_id: ConversationId,
        now_ms: u64,
    ) -> Result<ConversationRecord, StoreError>;
    /// Every patient of the org that has a care conversation, with its id.
    fn org_patient_conversations(
        &self,
        org: &OrgId,
    ) -> Result<Vec<(UserId, ConversationId)>, StoreError>;

    // ---- one-time prekeys
    /// Adds one-time prekeys; returns how many the device now has.
    fn add_one_time_prekeys(
        &self,
        device: &DeviceId,
        prekeys: &[OneTimePrekey],
    ) -> Result<u32, StoreError>;
    /// Removes and returns one one-time prekey: each is handed out once, also under races.
    fn take_one_time_prekey(&self, device: &DeviceId) -> Result<Option<OneTimePrekey>, StoreError>;
    /// How many one-time prekeys the device has left.
    fn count_one_time_prekeys(&self, device: &DeviceId) -> Result<u32, StoreError>;

    // ---- conversations
    /// Looks a conversation up.
    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError>;
    /// The conversation of exactly these members in this org, created if there is none.
    fn find_or_create_conversation(
        &self,
        org: &OrgId,
        members: &[UserId],
        new_id: ConversationId,
        now_ms: u64,
    ) -> Result<ConversationRecord, StoreError>;
    /// The conversations a user is a member of.
    fn user_conversations(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError>;

    // ---- mailboxes
    /// Stores one envelope per recipient device, the idempotency record and the archive item,
    /// all or nothing (durable after the next [`Store::sync`]); or finds that this (sender
    /// device, client message id) was sent before.
    fn store_send(&self, send: NewSend) -> Result<StoreSendOutcome, StoreError>;
    /// The earlier send of this (sender device, client message id), if there was one.
    fn sent(
        &self,
        sender_device: &DeviceId,
        client_message_id: &ClientMessageId,
    ) -> Result<Option<SendRecord>, StoreError>;
    /// Up to `limit` durable deliveries of a device's mailbox after position `after` (from the
    /// start if `None`), oldest first.
    fn mailbox_after(
        &self,
        device: &DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MailboxItem>, StoreError>;
    /// Deletes the device's copies of these messages; returns how many were deleted.
    fn ack(&self, device: &DeviceId, message_ids: &[MessageId]) -> Result<u32, StoreError>;

    // ---- retention, legal hold, the org archive
    /// The org's retention settings (the defaults if never set).
    fn retention(&self, org: &OrgId) -> Result<RetentionRecord, StoreError>;
    /// Replaces the org's retention settings.
    fn put_retention(&self, org: &OrgId, retention: &RetentionRecord) -> Result<(), StoreError>;
    /// The org's conversation holds.
    fn holds(&self, org: &OrgId) -> Result<Vec<HoldRecord>, StoreError>;
    /// Places a hold on a conversation.
    fn put_hold(&self, org: &OrgId, hold: &HoldRecord) -> Result<(), StoreError>;
    /// Lifts a hold; returns whether there was one.
    fn remove_hold(&self, org: &OrgId, conversation: &ConversationId) -> Result<bool, StoreError>;
    /// Up to `limit` archive items of the org after position `after`, stored at or after
    /// `since_ms`, oldest first, reading at most `scan` rows.
    fn archive_after(
        &self,
        org: &OrgId,
        after: u64,
        since_ms: u64,
        limit: usize,
        scan: usize,
    ) -> Result<ArchiveScan, StoreError>;
    /// Deletes what is past retention at `now_ms` (mail and archive, each org by its own
    /// settings and holds) and returns the counts and the epoch keys nothing needs any more.
    /// Deletion is applied but not yet durable: [`Store::sync`], then [`Store::shred`].
    fn expire(&self, now_ms: u64) -> Result<Expired, StoreError>;
    /// Destroys epoch keys (crypto-shredding); returns how many.
    fn shred(&self, keys: &[crate::keyring::KeyId]) -> Result<u64, StoreError>;
    /// Creates the data keys of `today` and `ahead` that will be needed (the access log's;
    /// the mail and archive keys of every org that had mail today or yesterday) ahead of their
    /// first use, in one write of the keyring file; returns how many were created. Blocking.
    fn prepare_keys(&self, today: u32, ahead: u32) -> Result<usize, StoreError>;
}

/// A bounded read of the org archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveScan {
    /// The items found, with their positions.
    pub items: Vec<(u64, ArchiveItemRecord)>,
    /// The last position read (the resume point when the scan bound stopped the read).
    pub scanned_through: Option<u64>,
    /// Nothing follows.
    pub done: bool,
}

/// What [`Store::expire`] did, per org, and the keys it left unneeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Per org: what was deleted or kept.
    pub counts: std::collections::BTreeMap<OrgId, ExpiredCounts>,
    /// Epoch keys past retention that no record still needs, with their org.
    pub unneeded_keys: Vec<(crate::keyring::KeyId, OrgId)>,
}

/// One org's part of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredCounts {
    /// Envelopes deleted.
    pub envelopes: u64,
    /// Archive items deleted.
    pub archive_items: u64,
    /// Records past retention kept by a legal hold.
    pub kept_by_hold: u64,
    /// Records past retention that could not be read, kept and reported.
    pub unreadable: u64,
}
