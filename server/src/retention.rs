//! The admin policy module's requests: retention and legal hold, the org archive, and the
//! sweeper that enforces retention with deletion plus crypto-shredding.
//!
//! A sweep runs in three steps so that a crash at any point leaves nothing half done: delete
//! what is past retention ([`Store::expire`]), make the deletion durable ([`Store::sync`]),
//! then destroy the epoch keys nothing needs any more ([`Store::shred`]). A crash before the
//! last step leaves keys the next sweep destroys; never a live record without its key.

use std::collections::BTreeMap;
use std::sync::Arc;

use medrelay_proto::limits::MAX_FRAME_BYTES;
use medrelay_proto::{
    ArchiveItem, ArchivePage, ConversationId, ErrorCode, OrgId, Permission, Retention, SweepReport,
    WireError, X25519PublicKey,
};

use crate::audit::AuditSink;
use crate::relay::{internal, not_found, AuthedDevice, Relay};
use crate::store::{ExpiredCounts, HoldRecord, RetentionRecord, Store};

/// Bytes of archive items one export page carries at most, well inside a frame.
const ARCHIVE_PAGE_BYTES: usize = MAX_FRAME_BYTES / 2;
/// Most archive rows one export request reads.
const ARCHIVE_SCAN_ROWS: usize = 20_000;

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

    /// Sets how long mail and the archive are kept.
    pub fn set_retention(
        &self,
        who: &AuthedDevice,
        mail_days: u32,
        archive_days: u32,
    ) -> Result<(), WireError> {
        self.update_retention(who, |r| {
            r.mail_days = mail_days;
            r.archive_days = archive_days;
        })
    }

    /// Places or lifts a legal hold: on one conversation of the caller's org, or (`None`) on
    /// the whole org.
    pub fn set_hold(
        &self,
        who: &AuthedDevice,
        conversation: Option<&ConversationId>,
        held: bool,
    ) -> Result<(), WireError> {
        let Some(conversation) = conversation else {
            return self.update_retention(who, |r| r.legal_hold = held);
        };
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

    /// Enables the org archive with the privacy officer's public key, or disables it. Only a
    /// privacy officer may: whoever sets the key chooses who can read every archived message
    /// (clients pin the key and refuse a changed one until their user accepts it).
    pub fn set_archive_key(
        &self,
        who: &AuthedDevice,
        public_key: Option<X25519PublicKey>,
    ) -> Result<(), WireError> {
        self.require(who, Permission::PrivacyOfficer)?;
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
        let scan = self
            .store
            .archive_after(&who.org, after_seq, since_ms, limit, ARCHIVE_SCAN_ROWS)
            .map_err(internal)?;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut next_after_seq = scan.scanned_through.unwrap_or(after_seq);
        let mut done = scan.done;
        for (seq, record) in scan.items {
            bytes += record.sealed.len() + 128;
            if bytes > ARCHIVE_PAGE_BYTES && !items.is_empty() {
                done = false;
                break;
            }
            next_after_seq = seq;
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
        if !done && items.len() < limit && bytes <= ARCHIVE_PAGE_BYTES {
            // Stopped by the scan bound, not the page: resume after the last row read.
            next_after_seq = scan.scanned_through.unwrap_or(next_after_seq);
        }
        Ok(ArchivePage {
            items,
            done,
            next_after_seq,
        })
    }
}

/// What one sweep did: per org, and for the server-wide access log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// When it ran.
    pub at_ms: u64,
    /// Per org: its records and keys.
    pub orgs: BTreeMap<OrgId, OrgSweep>,
    /// Access-log entries trimmed (the log is one server-wide chain).
    pub access_log_entries_deleted: u64,
    /// Access-log day keys destroyed.
    pub access_log_keys_shredded: u64,
}

/// One org's part of a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgSweep {
    /// What was deleted or kept.
    pub counts: ExpiredCounts,
    /// The org's epoch keys destroyed.
    pub keys_shredded: u64,
}

impl SweepOutcome {
    /// The report an org's admin sees: the org's counts and the access log's.
    pub fn report_for(&self, org: &OrgId) -> SweepReport {
        let mine = self.orgs.get(org).copied().unwrap_or_default();
        SweepReport {
            at_ms: self.at_ms,
            envelopes_deleted: mine.counts.envelopes,
            archive_items_deleted: mine.counts.archive_items,
            access_log_entries_deleted: self.access_log_entries_deleted,
            // The org's day keys, and the shared access log's.
            keys_shredded: mine.keys_shredded + self.access_log_keys_shredded,
            kept_by_hold: mine.counts.kept_by_hold,
        }
    }
}

/// Runs one sweep now: expire, make durable, shred. `audit_days` is the access log's retention.
/// The scans run on a blocking thread, off the async workers.
pub async fn sweep(
    store: Arc<dyn Store>,
    log: Arc<dyn AuditSink>,
    now_ms: u64,
    audit_days: u32,
) -> Result<SweepOutcome, String> {
    let (expired, audit) = {
        let store = store.clone();
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            let expired = store.expire(now_ms).map_err(|e| e.to_string())?;
            let cutoff = now_ms.saturating_sub(u64::from(audit_days) * crate::keyring::DAY_MS);
            let audit = log
                .expire_before(cutoff, now_ms)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((expired, audit))
        })
        .await
        .map_err(|e| e.to_string())??
    };
    store.sync().await.map_err(|e| e.to_string())?;
    let mut outcome = SweepOutcome {
        at_ms: now_ms,
        access_log_entries_deleted: audit.0,
        ..SweepOutcome::default()
    };
    // Every org gets its line, zeros included: a sweep that found nothing says so.
    for org in store.orgs().map_err(|e| e.to_string())? {
        outcome.orgs.entry(org.id).or_default();
    }
    for (org, counts) in &expired.counts {
        outcome.orgs.entry(*org).or_default().counts = *counts;
    }
    let mut by_org: BTreeMap<OrgId, Vec<crate::keyring::KeyId>> = BTreeMap::new();
    for (key, org) in &expired.unneeded_keys {
        by_org.entry(*org).or_default().push(*key);
    }
    for (org, keys) in by_org {
        outcome.orgs.entry(org).or_default().keys_shredded =
            store.shred(&keys).map_err(|e| e.to_string())?;
    }
    outcome.access_log_keys_shredded = store.shred(&audit.1).map_err(|e| e.to_string())?;
    Ok(outcome)
}
