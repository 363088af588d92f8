//! What the web client remembers besides keys and sessions, kept as JSON in the key store's
//! profile blob (so encrypted at rest under the staff member's password with everything
//! else): who this device is, the conversations with their members, a bounded message
//! history per conversation with unread counts, and which deliveries were already processed.

use std::collections::{BTreeMap, HashSet, VecDeque};

use medrelay_proto::{
    ConsentState, Conversation, ConversationId, DeviceId, Handle, MessageId, OrgId, Role, UserId,
    X25519PublicKey,
};
use serde::{Deserialize, Serialize};

/// Processed message ids remembered (a redelivery is acked, not decrypted again).
pub const MAX_PROCESSED_IDS: usize = 4096;
/// `(sender device, client message id)` pairs remembered (a re-sent message shows once).
pub const MAX_SEEN_CLIENT_MESSAGES: usize = 4096;
/// Messages kept per conversation on this device; the oldest go first.
pub const MAX_HISTORY_PER_CONVERSATION: usize = 500;
/// The state format this build writes.
pub const STATE_VERSION: u32 = 1;

/// A set of at most `CAP` strings, forgetting the oldest first; stored as a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct RecentSet<const CAP: usize> {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl<const CAP: usize> RecentSet<CAP> {
    /// Whether `item` is remembered.
    pub fn contains(&self, item: &str) -> bool {
        self.set.contains(item)
    }

    /// Remembers `item`; forgets the oldest beyond `CAP`.
    pub fn insert(&mut self, item: String) {
        if !self.set.insert(item.clone()) {
            return;
        }
        self.order.push_back(item);
        while self.order.len() > CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

impl<const CAP: usize> From<Vec<String>> for RecentSet<CAP> {
    fn from(items: Vec<String>) -> Self {
        let mut out = Self::default();
        for item in items {
            out.insert(item);
        }
        out
    }
}

impl<const CAP: usize> From<RecentSet<CAP>> for Vec<String> {
    fn from(set: RecentSet<CAP>) -> Self {
        set.order.into()
    }
}

/// Where a sent message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Encrypting, or waiting for the server's answer.
    Sending,
    /// The server stored it durably for every recipient device (`send_accepted`).
    Stored,
    /// The server refused it, or the connection ended first.
    Failed,
}

/// One message in a conversation's history.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// The client message id (hex): the local id of a sent message, and what de-duplicates.
    pub local_id: String,
    /// The server's id, once known.
    pub message_id: Option<MessageId>,
    /// The sender.
    pub sender_user_id: UserId,
    /// Whether this device sent it.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// When the sender says it sent it, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// When the server accepted it (0 while sending).
    pub server_time_ms: u64,
    /// Sent messages: where they stand. Received ones: `Stored`.
    pub state: DeliveryState,
    /// Sent messages: how many devices the server stored it for.
    pub devices: u32,
}

impl core::fmt::Debug for HistoryMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HistoryMessage")
            .field("message_id", &self.message_id)
            .field("state", &self.state)
            .field("text_len", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// A conversation member as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The user.
    pub user_id: UserId,
    /// Their handle.
    pub handle: Handle,
    /// Their role.
    pub role: Role,
    /// Their current devices.
    pub devices: Vec<DeviceId>,
    /// Patients: consent.
    pub consent: ConsentState,
}

/// A conversation as this device knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// Members as last listed by the server.
    pub members: Vec<MemberRecord>,
    /// The history, oldest first, at most [`MAX_HISTORY_PER_CONVERSATION`].
    pub messages: Vec<HistoryMessage>,
    /// Messages received since the conversation was last read.
    pub unread: u32,
}

impl ConversationRecord {
    /// Appends a message, dropping the oldest beyond the bound.
    pub fn push(&mut self, message: HistoryMessage) {
        self.messages.push(message);
        let excess = self
            .messages
            .len()
            .saturating_sub(MAX_HISTORY_PER_CONVERSATION);
        if excess > 0 {
            self.messages.drain(..excess);
        }
    }
}

/// Everything the web client remembers besides keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The server origin the device authenticates to (`https://host:port`).
    pub origin: String,
    /// The org.
    pub org_id: OrgId,
    /// The user.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// The user's handle.
    pub handle: Handle,
    /// The user's role.
    pub role: Role,
    /// Conversations by id.
    #[serde(default)]
    pub conversations: BTreeMap<ConversationId, ConversationRecord>,
    /// Recently processed deliveries (hex message ids).
    #[serde(default)]
    pub processed: RecentSet<MAX_PROCESSED_IDS>,
    /// Recently shown `(sender device, client message id)` pairs.
    #[serde(default)]
    pub seen: RecentSet<MAX_SEEN_CLIENT_MESSAGES>,
    /// The org archive key this device seals every sent message to, pinned at enrolment or
    /// first use; a different key announced by the server is refused until the staff member
    /// accepts it (as the SDK's `Profile.archive_key`).
    #[serde(default)]
    pub archive_key: Option<X25519PublicKey>,
}

impl WebState {
    /// Records a conversation's current members.
    pub fn remember(&mut self, conversation: &Conversation) {
        let record = self.conversations.entry(conversation.id).or_default();
        record.members = conversation
            .members
            .iter()
            .map(|m| MemberRecord {
                user_id: m.user_id,
                handle: m.handle.clone(),
                role: m.role,
                devices: m.devices.clone(),
                consent: m.consent,
            })
            .collect();
    }

    /// The handle of a user seen in any conversation.
    pub fn handle_of(&self, user: &UserId) -> Option<&Handle> {
        self.conversations
            .values()
            .flat_map(|c| c.members.iter())
            .find(|m| m.user_id == *user)
            .map(|m| &m.handle)
    }

    /// The key of a `(sender device, client message id)` pair.
    pub fn seen_key(device: &DeviceId, client_message_id: &[u8]) -> String {
        format!("{device}:{}", hex::encode(client_message_id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recent_set_forgets_the_oldest() {
        let mut set = RecentSet::<2>::default();
        for item in ["a", "b", "c"] {
            set.insert(item.into());
        }
        assert!(!set.contains("a"));
        assert!(set.contains("b") && set.contains("c"));
        let round: RecentSet<2> =
            serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(round, set);
    }

    #[test]
    fn history_is_bounded_and_debug_hides_text() {
        let mut record = ConversationRecord::default();
        for i in 0..(MAX_HISTORY_PER_CONVERSATION + 3) {
            record.push(HistoryMessage {
                local_id: i.to_string(),
                message_id: None,
                sender_user_id: UserId::from_array([1; 16]),
                outgoing: false,
                text: "biopsy results".into(),
                sent_at_ms: 0,
                server_time_ms: 0,
                state: DeliveryState::Stored,
                devices: 0,
            });
        }
        assert_eq!(record.messages.len(), MAX_HISTORY_PER_CONVERSATION);
        assert_eq!(record.messages.first().unwrap().local_id, "3");
        assert!(!format!("{record:?}").contains("biopsy"));
    }
}
