//! The client's settings and bookkeeping, kept as JSON in the key store's profile blob (so
//! encrypted at rest with everything else): where the server is, who this device is, a cache
//! of handles, and which deliveries were already processed.

use std::collections::{BTreeMap, HashSet, VecDeque};

use medrelay_proto::{ConversationId, DeviceId, Handle, MessageId, OrgId, Role, UserId};
use serde::{Deserialize, Serialize};

use super::{ServerUrl, TransportError};

/// Processed message ids remembered, so a redelivered message is acked instead of being
/// decrypted again (which the ratchet would refuse as a replay).
pub const MAX_PROCESSED_IDS: usize = 4096;
/// Handles cached (user id to handle); the oldest entries are dropped beyond this.
pub const MAX_CACHED_HANDLES: usize = 4096;
/// Messages returned by `recv` and not yet acked, kept so a crash between returning a message
/// and acking it shows the message again instead of losing it. Beyond this the oldest go.
pub const MAX_PENDING_MESSAGES: usize = 1024;
/// `(sender device, client message id)` pairs remembered, so a message re-sent under the same
/// client message id (re-encrypted, so the ratchet cannot tell) is shown once.
pub const MAX_SEEN_CLIENT_MESSAGES: usize = 4096;
/// The profile format this build writes.
pub const PROFILE_VERSION: u32 = 1;

/// A set that remembers at most `CAP` items, forgetting the oldest first. Stored as the list
/// of its items, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "Vec<T>",
    into = "Vec<T>",
    bound(
        serialize = "T: Serialize + Clone",
        deserialize = "T: Deserialize<'de> + Eq + std::hash::Hash + Clone"
    )
)]
pub struct BoundedSet<T: Eq + std::hash::Hash + Clone, const CAP: usize> {
    order: VecDeque<T>,
    set: HashSet<T>,
}

impl<T: Eq + std::hash::Hash + Clone, const CAP: usize> Default for BoundedSet<T, CAP> {
    fn default() -> Self {
        BoundedSet {
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }
}

impl<T: Eq + std::hash::Hash + Clone, const CAP: usize> BoundedSet<T, CAP> {
    /// Whether `item` is remembered.
    pub fn contains(&self, item: &T) -> bool {
        self.set.contains(item)
    }

    /// Remembers `item`; forgets the oldest beyond `CAP`.
    pub fn insert(&mut self, item: T) {
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

    /// How many items are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl<T: Eq + std::hash::Hash + Clone, const CAP: usize> From<Vec<T>> for BoundedSet<T, CAP> {
    fn from(items: Vec<T>) -> Self {
        let mut out = Self::default();
        for item in items {
            out.insert(item);
        }
        out
    }
}

impl<T: Eq + std::hash::Hash + Clone, const CAP: usize> From<BoundedSet<T, CAP>> for Vec<T> {
    fn from(set: BoundedSet<T, CAP>) -> Self {
        set.order.into()
    }
}

/// Recently processed message ids, oldest forgotten first.
pub type ProcessedIds = BoundedSet<MessageId, MAX_PROCESSED_IDS>;

/// `(sender device, client message id)` pairs already shown, oldest forgotten first. Kept as
/// `"<device id>:<hex client message id>"` strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeenClientMessages(BoundedSet<String, MAX_SEEN_CLIENT_MESSAGES>);

impl SeenClientMessages {
    fn key(device: &DeviceId, client_message_id: &[u8]) -> String {
        format!("{device}:{}", hex::encode(client_message_id))
    }

    /// Whether this device's message with this client message id was already shown.
    pub fn contains(&self, device: &DeviceId, client_message_id: &[u8]) -> bool {
        self.0.contains(&Self::key(device, client_message_id))
    }

    /// Records a pair; forgets the oldest beyond [`MAX_SEEN_CLIENT_MESSAGES`].
    pub fn insert(&mut self, device: &DeviceId, client_message_id: &[u8]) {
        self.0.insert(Self::key(device, client_message_id));
    }

    /// How many pairs are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A decrypted message, as [`Client::recv`](super::Client::recv) returns it. Its `Debug` shows
/// no text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedMessage {
    /// The server's id: ack it with this.
    pub message_id: MessageId,
    /// The conversation (checked against the one inside the ciphertext).
    pub conversation_id: ConversationId,
    /// The sender, as the server authenticated them.
    pub sender_user_id: UserId,
    /// The sending device, as the server authenticated it.
    pub sender_device_id: DeviceId,
    /// The sender's handle, if known (from conversation member lists).
    pub from_handle: Option<Handle>,
    /// The text.
    pub text: String,
    /// When the sender says it sent it (its clock), ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// When the server accepted it, ms since the Unix epoch.
    pub server_time_ms: u64,
}

impl core::fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("message_id", &self.message_id)
            .field("conversation_id", &self.conversation_id)
            .field("sender_device_id", &self.sender_device_id)
            .field("text_len", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// Everything the client remembers besides keys and sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// [`PROFILE_VERSION`].
    pub version: u32,
    /// The server.
    pub server: ServerUrl,
    /// The CA certificate(s) the server's certificate must chain to, PEM.
    pub ca_pem: String,
    /// This device's org.
    pub org_id: OrgId,
    /// The org's name, once learnt from `whoami`.
    #[serde(default)]
    pub org_name: Option<String>,
    /// This device's user.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// The user's handle.
    pub handle: Handle,
    /// The user's role.
    pub role: Role,
    /// Handles of users seen in conversations.
    #[serde(default)]
    pub handles: BTreeMap<UserId, Handle>,
    /// Recently processed deliveries.
    #[serde(default)]
    pub processed: ProcessedIds,
    /// Recently shown `(sender device, client message id)` pairs.
    #[serde(default)]
    pub seen_client_messages: SeenClientMessages,
    /// The org archive key this device seals to, pinned when first seen: a different key from
    /// the server is refused until the user accepts it ([`crate::transport::Client::accept_archive_key`]),
    /// so a swapped key cannot silently receive copies of every message.
    #[serde(default)]
    pub archive_key: Option<medrelay_proto::X25519PublicKey>,
    /// Messages returned and not yet acked (see [`MAX_PENDING_MESSAGES`]).
    #[serde(default)]
    pub pending: Vec<ReceivedMessage>,
}

impl Profile {
    /// Serialises the profile (JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TransportError> {
        serde_json::to_vec(self)
            .map_err(|_| TransportError::NotEnrolled("the profile could not be encoded"))
    }

    /// Reads a profile written by [`Profile::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TransportError> {
        let profile: Profile = serde_json::from_slice(bytes)
            .map_err(|_| TransportError::NotEnrolled("the stored profile does not decode"))?;
        if profile.version != PROFILE_VERSION {
            return Err(TransportError::NotEnrolled(
                "the stored profile was written by an incompatible version",
            ));
        }
        Ok(profile)
    }

    /// Caches a handle; returns whether anything changed.
    pub fn remember_handle(&mut self, user: UserId, handle: &Handle) -> bool {
        if self.handles.get(&user) == Some(handle) {
            return false;
        }
        if self.handles.len() >= MAX_CACHED_HANDLES && !self.handles.contains_key(&user) {
            // No recency is kept: drop an arbitrary (the smallest) entry.
            let first = self.handles.keys().next().copied();
            if let Some(first) = first {
                self.handles.remove(&first);
            }
        }
        self.handles.insert(user, handle.clone());
        true
    }

    /// Records a message as processed and pending its ack.
    pub fn record_received(&mut self, message: &ReceivedMessage) {
        self.processed.insert(message.message_id);
        self.pending.retain(|m| m.message_id != message.message_id);
        self.pending.push(message.clone());
        let excess = self.pending.len().saturating_sub(MAX_PENDING_MESSAGES);
        self.pending.drain(..excess);
    }

    /// A message returned earlier and not yet acked.
    pub fn pending(&self, id: &MessageId) -> Option<&ReceivedMessage> {
        self.pending.iter().find(|m| m.message_id == *id)
    }

    /// Forgets pending messages once acked; returns whether anything changed.
    pub fn forget_pending(&mut self, ids: &[MessageId]) -> bool {
        let before = self.pending.len();
        self.pending.retain(|m| !ids.contains(&m.message_id));
        before != self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    fn mid(n: u32) -> MessageId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_be_bytes());
        MessageId::from_array(b)
    }

    pub(crate) fn sample() -> Profile {
        Profile {
            version: PROFILE_VERSION,
            server: ServerUrl::parse("wss://127.0.0.1:8443").unwrap(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            org_id: OrgId::from_array([1; 16]),
            org_name: Some("Clinic".into()),
            user_id: UserId::from_array([2; 16]),
            device_id: DeviceId::from_array([3; 16]),
            handle: Handle::new("dr.jones").unwrap(),
            role: Role::Staff,
            handles: BTreeMap::new(),
            processed: ProcessedIds::default(),
            seen_client_messages: SeenClientMessages::default(),
            pending: Vec::new(),
            archive_key: None,
        }
    }

    #[test]
    fn processed_ids_are_bounded_and_evict_the_oldest() {
        let mut p = ProcessedIds::default();
        for n in 0..(MAX_PROCESSED_IDS as u32 + 10) {
            p.insert(mid(n));
        }
        assert_eq!(p.len(), MAX_PROCESSED_IDS);
        assert!(!p.contains(&mid(9)));
        assert!(p.contains(&mid(10)));
        assert!(p.contains(&mid(MAX_PROCESSED_IDS as u32 + 9)));
        p.insert(mid(10));
        assert_eq!(p.len(), MAX_PROCESSED_IDS, "re-inserting is a no-op");
    }

    #[test]
    fn profile_round_trips_with_cache_processed_and_pending() {
        let mut p = sample();
        p.remember_handle(
            UserId::from_array([4; 16]),
            &Handle::new("pat.smith").unwrap(),
        );
        let m = ReceivedMessage {
            message_id: mid(1),
            conversation_id: ConversationId::from_array([5; 16]),
            sender_user_id: UserId::from_array([4; 16]),
            sender_device_id: DeviceId::from_array([6; 16]),
            from_handle: Some(Handle::new("pat.smith").unwrap()),
            text: "hello".into(),
            sent_at_ms: 1,
            server_time_ms: 2,
        };
        p.record_received(&m);
        p.processed.insert(mid(2));
        let back = Profile::from_bytes(&p.to_bytes().unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(back.processed.contains(&mid(1)) && back.processed.contains(&mid(2)));
        assert_eq!(back.pending(&mid(1)), Some(&m));
        assert!(!format!("{m:?}").contains("hello"));
        let mut back = back;
        assert!(back.forget_pending(&[mid(1)]));
        assert!(back.pending(&mid(1)).is_none());
        assert!(Profile::from_bytes(b"{}").is_err());
    }
}
