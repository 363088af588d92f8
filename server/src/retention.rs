//! The admin policy module's requests: retention and legal hold, the org archive, and the
//! sweeper that enforces retention with deletion plus crypto-shredding.
//!
//! A sweep runs in three steps so that a crash at any point leaves nothing half done: delete
//! what is past retention ([`Store::expire`]), make the deletion durable ([`Store::sync`]),
//! then destroy the epoch keys nothing needs any more ([`Store::shred`]). A crash before the
//! last step leaves keys the next sweep destroys; never a live record without its key.

use std::sync::Arc;

use medrelay_proto::limits::MAX_FRAME_BYTES;
use medrelay_proto::{
    ArchiveItem, ArchivePage, ConversationId, ErrorCode, Permission, Retention, SweepReport,
    WireError, X25519PublicKey,
};

use crate::audit::AuditSink;
use crate::relay::{internal, not_found, AuthedDevice, Relay};
use crate::store::{HoldRecord, RetentionRecord, Store};

/// Bytes of archive items one export page carries at most, well inside a frame.
const ARCHIVE_PAGE_BYTES: usize = MAX_FRAME_BYTES / 2;

impl Relay {
    /// The org's retention settings, holds and archive key.
    pub fn get_retention(
        &self,
        who: &AuthedDevice,
        audit_days: u32,
    ) -> Result<Retention, WireError> {
        self.require(who, Permission::ChangePolicy)?;
        let retention = self.store.retention(&who.org).map_err(internal)?;
        let held = self.store.holds(&who.org).map_err(internal)?;
        Ok(Retention {
            mail_days: retention.mail_days,
            archive_days: retention.archive_days,
            audit_days,
            legal_hold: retention.legal_hold,
            held_conversations: held.into_iter().map(|h| h.conversation).collect(),
            archive_public_key: retention.archive_public_key.map(X25519PublicKey::from),
        })
    }

    fn update_retention(
        &self,
        who: &AuthedDevice,
        change: impl FnOnce(&mut RetentionRecord),
    ) -> Result<(), WireError> {
        self.require(who, Permission::ChangePolicy)?;
        let mut retention = self.store.retention(&who.org).map_err(internal)?;
        change(&mut retention);
        self.store
            .put_retention(&who.org, &retention)
            .map_err(internal)
    }

    /// Sets how long mail and the archive are kept, and the org-wide legal hold.
    pub fn set_retention(
        &self,
        who: &AuthedDevice,
        mail_days: u32,
        archive_days: u32,
        legal_hold: bool,
    ) -> Result<(), WireError> {
        self.update_retention(who, |r| {
            r.mail_days = mail_days;
            r.archive_days = archive_days;
            r.legal_hold = legal_hold;
        })
    }

    /// Places or lifts a legal hold on one conversation of the caller's org.
    pub fn set_hold(
        &self,
        who: &AuthedDevice,
        conversation: &ConversationId,
        held: bool,
    ) -> Result<(), WireError> {
        self.require(who, Permission::ChangePolicy)?;
        let exists = self
            .store
            .conversation(conversation)
            .map_err(internal)?
            .is_some_and(|c| c.org == who.org);
        if !exists {
            return Err(not_found("conversation"));
        }
        if held {
            let count = self.store.holds(&who.org).map_err(internal)?.len();
            if count >= medrelay_proto::limits::MAX_HELD_CONVERSATIONS {
                return Err(WireError::new(
                    ErrorCode::LimitExceeded,
                    "too many conversations on hold: use the org-wide legal hold instead",
                ));
            }
            self.store
                .put_hold(
                    &who.org,
                    &HoldRecord {
                        conversation: *conversation,
                        placed_by: who.user,
                        placed_ms: self.clock.now_ms(),
                    },
                )
                .map_err(internal)
        } else {
            self.store
                .remove_hold(&who.org, conversation)
                .map(|_| ())
                .map_err(internal)
        }
    }

    /// Enables the org archive with the privacy officer's public key, or disables it.
    pub fn set_archive_key(
        &self,
        who: &AuthedDevice,
        public_key: Option<X25519PublicKey>,
    ) -> Result<(), WireError> {
        self.update_retention(who, |r| {
            r.archive_public_key = public_key.map(|k| *k.as_bytes());
        })
    }

    /// The org's archive key, if it archives.
    pub fn archive_key(
        &self,
        org: &medrelay_proto::OrgId,
    ) -> Result<Option<X25519PublicKey>, WireError> {
        Ok(self
            .store
            .retention(org)
            .map_err(internal)?
            .archive_public_key
            .map(X25519PublicKey::from))
    }

    /// One page of the org archive (sealed items; the server cannot open them).
    pub fn export_archive(
        &self,
        who: &AuthedDevice,
        since_ms: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<ArchivePage, WireError> {
        self.require(who, Permission::ExportAuditLog)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let records = self
            .store
            .archive_after(&who.org, after_seq, since_ms, limit.saturating_add(1))
            .map_err(internal)?;
        let mut done = records.len() <= limit;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for (seq, record) in records.into_iter().take(limit) {
            bytes += record.sealed.len() + 128;
            if bytes > ARCHIVE_PAGE_BYTES && !items.is_empty() {
                done = false;
                break;
            }
            items.push(ArchiveItem {
                seq,
                conversation_id: record.conversation,
                message_id: record.message_id,
                sender_user_id: record.sender_user,
                sender_device_id: record.sender_device,
                server_time_ms: record.server_time_ms,
                sealed: record.sealed.into(),
            });
        }
        Ok(ArchivePage { items, done })
    }
}

/// Runs one sweep now: expire, make durable, shred. `audit_days` is the access log's retention.
pub async fn sweep(
    store: &Arc<dyn Store>,
    log: &dyn AuditSink,
    now_ms: u64,
    audit_days: u32,
) -> Result<SweepReport, String> {
    let expired = store.expire(now_ms).map_err(|e| e.to_string())?;
    let audit_cutoff = now_ms.saturating_sub(u64::from(audit_days) * crate::keyring::DAY_MS);
    let (audit_deleted, audit_keys) = log
        .expire_before(audit_cutoff, now_ms)
        .map_err(|e| e.to_string())?;
    store.sync().await.map_err(|e| e.to_string())?;
    let mut keys = expired.unneeded_keys;
    keys.extend(audit_keys);
    let shredded = store.shred(&keys).map_err(|e| e.to_string())?;
    Ok(SweepReport {
        at_ms: now_ms,
        envelopes_deleted: expired.envelopes,
        archive_items_deleted: expired.archive_items,
        access_log_entries_deleted: audit_deleted,
        keys_shredded: shredded,
        kept_by_hold: expired.kept_by_hold,
    })
}
