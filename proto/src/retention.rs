//! The admin policy module on the wire: retention and legal hold, the org archive, the
//! retention sweeper's report, and the access log's verification and export.

use crate::field::{
    at_most, bytes_each, bytes_of, distinct_each, in_range, optional, required, FieldError, Within,
};
use crate::limits::{
    MAX_ACCESS_LOG_PAGE, MAX_ARCHIVE_DAYS, MAX_ARCHIVE_ITEM_BYTES, MAX_ARCHIVE_PAGE,
    MAX_AUDIT_OBJECTS, MAX_AUDIT_TEXT_LEN, MAX_HELD_CONVERSATIONS, MAX_MAIL_DAYS,
};
use crate::{
    pb, Bytes, ClientRequest, ConversationId, DeviceId, MessageId, ProtoError, Role, UserId,
    X25519PublicKey,
};

/// An org's retention settings, as `get_retention` answers them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    /// How long an undelivered envelope waits: 1 to [`MAX_MAIL_DAYS`] days.
    pub mail_days: u32,
    /// How long the org archive keeps each item: 1 to [`MAX_ARCHIVE_DAYS`] days.
    pub archive_days: u32,
    /// How long the access log keeps entries (server-wide): 1 to [`MAX_ARCHIVE_DAYS`] days.
    pub audit_days: u32,
    /// Org-wide legal hold: nothing of the org expires while set.
    pub legal_hold: bool,
    /// Conversations under legal hold, at most [`MAX_HELD_CONVERSATIONS`].
    pub held_conversations: Vec<ConversationId>,
    /// The archive key, when the org archives.
    pub archive_public_key: Option<X25519PublicKey>,
}

fn days(name: &'static str, value: u32, max: u32) -> Result<u32, FieldError> {
    in_range(name, u64::from(value), 1..=u64::from(max)).map(|_| value)
}

impl Retention {
    pub(crate) fn to_pb(&self) -> pb::Retention {
        pb::Retention {
            mail_days: self.mail_days,
            archive_days: self.archive_days,
            audit_days: self.audit_days,
            legal_hold: self.legal_hold,
            held_conversations: bytes_each(&self.held_conversations),
            archive_public_key: self
                .archive_public_key
                .as_ref()
                .map(bytes_of)
                .unwrap_or_default(),
        }
    }

    pub(crate) fn from_pb(raw: pb::Retention) -> Result<Self, FieldError> {
        Ok(Self {
            mail_days: days("mail_days", raw.mail_days, MAX_MAIL_DAYS)?,
            archive_days: days("archive_days", raw.archive_days, MAX_ARCHIVE_DAYS)?,
            audit_days: days("audit_days", raw.audit_days, MAX_ARCHIVE_DAYS)?,
            legal_hold: raw.legal_hold,
            held_conversations: distinct_each(
                "held_conversations",
                &raw.held_conversations,
                MAX_HELD_CONVERSATIONS,
                ConversationId::from_bytes,
            )?,
            archive_public_key: optional(
                "archive_public_key",
                &raw.archive_public_key,
                X25519PublicKey::from_bytes,
            )?,
        })
    }
}

pub(crate) fn set_retention_from_pb(raw: pb::SetRetention) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::SetRetention {
        mail_days: days("mail_days", raw.mail_days, MAX_MAIL_DAYS)?,
        archive_days: days("archive_days", raw.archive_days, MAX_ARCHIVE_DAYS)?,
    })
}

pub(crate) fn set_hold_from_pb(raw: pb::SetHold) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::SetHold {
        conversation_id: optional(
            "conversation_id",
            &raw.conversation_id,
            ConversationId::from_bytes,
        )?,
        held: raw.held,
    })
}

pub(crate) fn set_archive_key_from_pb(raw: pb::SetArchiveKey) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::SetArchiveKey {
        public_key: optional("public_key", &raw.public_key, X25519PublicKey::from_bytes)?,
    })
}

fn page_limit(name: &'static str, limit: u32, max: usize) -> Result<u32, FieldError> {
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    in_range(name, u64::from(limit), 1..=max).map(|_| limit)
}

pub(crate) fn export_archive_from_pb(raw: pb::ExportArchive) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::ExportArchive {
        since_ms: raw.since_ms,
        after_seq: raw.after_seq,
        limit: page_limit("limit", raw.limit, MAX_ARCHIVE_PAGE)?,
    })
}

/// One item of the org archive: a message sealed to the archive key, with its routing data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveItem {
    /// Position in the org's archive (the export cursor).
    pub seq: u64,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The message's server id.
    pub message_id: MessageId,
    /// Who sent it.
    pub sender_user_id: UserId,
    /// From which device.
    pub sender_device_id: DeviceId,
    /// When the server accepted it.
    pub server_time_ms: u64,
    /// The sealed message (an `e2e.SealedBox`), at most [`MAX_ARCHIVE_ITEM_BYTES`].
    pub sealed: Bytes,
}

impl ArchiveItem {
    fn to_pb(&self) -> pb::ArchiveItem {
        pb::ArchiveItem {
            seq: self.seq,
            conversation_id: bytes_of(self.conversation_id),
            message_id: bytes_of(self.message_id),
            sender_user_id: bytes_of(self.sender_user_id),
            sender_device_id: bytes_of(self.sender_device_id),
            server_time_ms: self.server_time_ms,
            sealed: self.sealed.clone(),
        }
    }

    fn from_pb(raw: pb::ArchiveItem) -> Result<Self, FieldError> {
        crate::field::payload("sealed", raw.sealed.len(), MAX_ARCHIVE_ITEM_BYTES)?;
        Ok(Self {
            seq: raw.seq,
            conversation_id: required(
                "conversation_id",
                &raw.conversation_id,
                ConversationId::from_bytes,
            )?,
            message_id: required("message_id", &raw.message_id, MessageId::from_bytes)?,
            sender_user_id: required("sender_user_id", &raw.sender_user_id, UserId::from_bytes)?,
            sender_device_id: required(
                "sender_device_id",
                &raw.sender_device_id,
                DeviceId::from_bytes,
            )?,
            server_time_ms: raw.server_time_ms,
            sealed: raw.sealed,
        })
    }
}

/// A page of the org archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePage {
    /// At most [`MAX_ARCHIVE_PAGE`] items, in archive order.
    pub items: Vec<ArchiveItem>,
    /// No item follows.
    pub done: bool,
    /// The `after_seq` of the next page.
    pub next_after_seq: u64,
}

impl ArchivePage {
    pub(crate) fn to_pb(&self) -> pb::ArchivePage {
        pb::ArchivePage {
            items: self.items.iter().map(ArchiveItem::to_pb).collect(),
            done: self.done,
            next_after_seq: self.next_after_seq,
        }
    }

    pub(crate) fn from_pb(raw: pb::ArchivePage) -> Result<Self, FieldError> {
        at_most("items", raw.items.len(), MAX_ARCHIVE_PAGE)?;
        Ok(Self {
            items: raw
                .items
                .into_iter()
                .map(|i| ArchiveItem::from_pb(i).within("items"))
                .collect::<Result<_, _>>()?,
            done: raw.done,
            next_after_seq: raw.next_after_seq,
        })
    }
}

/// What one retention sweep did, in counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// When it ran (server time).
    pub at_ms: u64,
    /// Undelivered envelopes past retention, deleted.
    pub envelopes_deleted: u64,
    /// Archive items past retention, deleted.
    pub archive_items_deleted: u64,
    /// Access-log entries past retention, deleted.
    pub access_log_entries_deleted: u64,
    /// Epoch keys destroyed (crypto-shredding).
    pub keys_shredded: u64,
    /// Records past retention kept because of a legal hold.
    pub kept_by_hold: u64,
}

impl SweepReport {
    pub(crate) fn to_pb(self) -> pb::SweepReport {
        pb::SweepReport {
            at_ms: self.at_ms,
            envelopes_deleted: self.envelopes_deleted,
            archive_items_deleted: self.archive_items_deleted,
            access_log_entries_deleted: self.access_log_entries_deleted,
            keys_shredded: self.keys_shredded,
            kept_by_hold: self.kept_by_hold,
        }
    }

    pub(crate) fn from_pb(raw: pb::SweepReport) -> Self {
        Self {
            at_ms: raw.at_ms,
            envelopes_deleted: raw.envelopes_deleted,
            archive_items_deleted: raw.archive_items_deleted,
            access_log_entries_deleted: raw.access_log_entries_deleted,
            keys_shredded: raw.keys_shredded,
            kept_by_hold: raw.kept_by_hold,
        }
    }
}

/// The result of verifying the access log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessLogStatus {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// Entries after the last checkpoint.
    pub unsealed: u64,
    /// The first broken entry and why, if any.
    pub broken: Option<(u64, String)>,
}

fn audit_text(name: &'static str, text: String) -> Result<String, FieldError> {
    if text.len() > MAX_AUDIT_TEXT_LEN {
        return Err(FieldError::new(
            name,
            ProtoError::TooLong {
                max: MAX_AUDIT_TEXT_LEN,
                actual: text.len(),
            },
        ));
    }
    Ok(text)
}

impl AccessLogStatus {
    pub(crate) fn to_pb(&self) -> pb::AccessLogStatus {
        let (broken_entry, reason) = self.broken.clone().unwrap_or_default();
        pb::AccessLogStatus {
            ok: self.broken.is_none(),
            entries: self.entries,
            checkpoints: self.checkpoints,
            unsealed: self.unsealed,
            broken_entry,
            reason,
        }
    }

    pub(crate) fn from_pb(raw: pb::AccessLogStatus) -> Result<Self, FieldError> {
        let broken = if raw.ok {
            crate::field::must_be_empty("reason", raw.reason.is_empty())?;
            None
        } else {
            Some((raw.broken_entry, audit_text("reason", raw.reason)?))
        };
        Ok(Self {
            entries: raw.entries,
            checkpoints: raw.checkpoints,
            unsealed: raw.unsealed,
            broken,
        })
    }
}

/// Which access-log entries to export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLogFilter {
    /// Entries at or after this time.
    pub since_ms: Option<u64>,
    /// Entries before this time.
    pub until_ms: Option<u64>,
    /// Only this action (request kind).
    pub action: Option<String>,
    /// Only entries of this actor.
    pub actor_user_id: Option<UserId>,
    /// Entries after this sequence number (the page cursor; 0 from the start).
    pub after_seq: u64,
    /// At most this many: 1 to [`MAX_ACCESS_LOG_PAGE`].
    pub limit: u32,
}

impl AccessLogFilter {
    /// Whether an entry at `at_ms` with this action and actor passes the filter (the cursor and
    /// limit aside).
    pub fn matches(&self, at_ms: u64, action: &str, actor: Option<&UserId>) -> bool {
        self.since_ms.is_none_or(|s| at_ms >= s)
            && self.until_ms.is_none_or(|u| at_ms < u)
            && self.action.as_deref().is_none_or(|a| a == action)
            && self.actor_user_id.is_none_or(|a| actor == Some(&a))
    }

    pub(crate) fn to_pb(&self) -> pb::ExportAccessLog {
        pb::ExportAccessLog {
            since_ms: self.since_ms.unwrap_or(0),
            until_ms: self.until_ms.unwrap_or(0),
            action: self.action.clone().unwrap_or_default(),
            actor_user_id: self.actor_user_id.map(bytes_of).unwrap_or_default(),
            after_seq: self.after_seq,
            limit: self.limit,
        }
    }

    pub(crate) fn from_pb(raw: pb::ExportAccessLog) -> Result<Self, FieldError> {
        let action = audit_text("action", raw.action)?;
        Ok(Self {
            since_ms: (raw.since_ms != 0).then_some(raw.since_ms),
            until_ms: (raw.until_ms != 0).then_some(raw.until_ms),
            action: (!action.is_empty()).then_some(action),
            actor_user_id: optional("actor_user_id", &raw.actor_user_id, UserId::from_bytes)?,
            after_seq: raw.after_seq,
            limit: page_limit("limit", raw.limit, MAX_ACCESS_LOG_PAGE)?,
        })
    }
}

/// One access-log entry as exported: pseudonymous ids, never content, keys or handles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessLogEntry {
    /// Position in the log.
    pub seq: u64,
    /// Server time.
    pub at_ms: u64,
    /// The actor, if authenticated.
    pub user_id: Option<UserId>,
    /// The actor's device.
    pub device_id: Option<DeviceId>,
    /// The actor's role.
    pub role: Option<Role>,
    /// What was done.
    pub action: String,
    /// Which objects (hex ids, or counts for a sweep).
    pub objects: Vec<String>,
    /// `allowed` or the error code.
    pub outcome: String,
    /// Source address.
    pub source: String,
    /// The entry's chain hash.
    #[serde(serialize_with = "hex_hash")]
    pub hash: [u8; 32],
}

fn hex_hash<S: serde::Serializer>(hash: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
    use std::fmt::Write;
    let mut text = String::with_capacity(64);
    for byte in hash {
        let _ = write!(text, "{byte:02x}");
    }
    serializer.serialize_str(&text)
}

impl AccessLogEntry {
    fn to_pb(&self) -> pb::AccessLogEntry {
        pb::AccessLogEntry {
            seq: self.seq,
            at_ms: self.at_ms,
            user_id: self.user_id.map(bytes_of).unwrap_or_default(),
            device_id: self.device_id.map(bytes_of).unwrap_or_default(),
            role: self.role.map_or(0, Role::to_pb),
            action: self.action.clone(),
            objects: self.objects.clone(),
            outcome: self.outcome.clone(),
            source: self.source.clone(),
            hash: bytes_of(self.hash),
        }
    }

    fn from_pb(raw: pb::AccessLogEntry) -> Result<Self, FieldError> {
        at_most("objects", raw.objects.len(), MAX_AUDIT_OBJECTS)?;
        Ok(Self {
            seq: raw.seq,
            at_ms: raw.at_ms,
            user_id: optional("user_id", &raw.user_id, UserId::from_bytes)?,
            device_id: optional("device_id", &raw.device_id, DeviceId::from_bytes)?,
            role: if raw.role == 0 {
                None
            } else {
                Some(Role::from_pb("role", raw.role)?)
            },
            action: audit_text("action", raw.action)?,
            objects: raw
                .objects
                .into_iter()
                .map(|o| audit_text("objects", o))
                .collect::<Result<_, _>>()?,
            outcome: audit_text("outcome", raw.outcome)?,
            source: audit_text("source", raw.source)?,
            hash: required("hash", &raw.hash, |b| {
                <[u8; 32]>::try_from(b).map_err(|_| ProtoError::WrongLength {
                    expected: 32,
                    actual: b.len(),
                })
            })?,
        })
    }
}

/// A page of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogPage {
    /// At most [`MAX_ACCESS_LOG_PAGE`] entries, oldest first.
    pub entries: Vec<AccessLogEntry>,
    /// No entry follows.
    pub done: bool,
    /// The `after_seq` of the next page.
    pub next_after_seq: u64,
}

impl AccessLogPage {
    pub(crate) fn to_pb(&self) -> pb::AccessLogPage {
        pb::AccessLogPage {
            entries: self.entries.iter().map(AccessLogEntry::to_pb).collect(),
            done: self.done,
            next_after_seq: self.next_after_seq,
        }
    }

    pub(crate) fn from_pb(raw: pb::AccessLogPage) -> Result<Self, FieldError> {
        at_most("entries", raw.entries.len(), MAX_ACCESS_LOG_PAGE)?;
        Ok(Self {
            entries: raw
                .entries
                .into_iter()
                .map(|e| AccessLogEntry::from_pb(e).within("entries"))
                .collect::<Result<_, _>>()?,
            done: raw.done,
            next_after_seq: raw.next_after_seq,
        })
    }
}
