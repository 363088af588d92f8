//! The records the server stores. Each is versioned through [`super::codec`]; adding a field
//! means a new record version and a migration in the codec, never a silent reinterpretation.

use medrelay_proto::ids::{ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{DeviceLabel, Handle, IdentityKeys, PqSignedPrekey, Role, SignedPrekey};
use serde::{Deserialize, Serialize};

/// An organisation (a clinic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// The org's id.
    pub id: OrgId,
    /// Its display name (not PHI: the clinic's name).
    pub name: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A person: patient, staff member or admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's id (pseudonymous: this is what logs show).
    pub id: UserId,
    /// The org the user belongs to.
    pub org: OrgId,
    /// Handle, unique within the org.
    pub handle: Handle,
    /// Role.
    pub role: Role,
    /// When the user enrolled.
    pub created_ms: u64,
}

/// A device of a user, with its public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device's id.
    pub id: DeviceId,
    /// Its user.
    pub user: UserId,
    /// Its user's org.
    pub org: OrgId,
    /// A short label chosen at enrolment (no PHI).
    pub label: DeviceLabel,
    /// Identity keys: Ed25519 signing key and signed X25519 DH key.
    pub identity: IdentityKeys,
    /// Current signed X25519 prekey.
    pub signed_prekey: SignedPrekey,
    /// Current signed ML-KEM-768 prekey.
    pub pq_prekey: PqSignedPrekey,
    /// When it enrolled.
    pub created_ms: u64,
    /// Last authenticated activity.
    pub last_seen_ms: u64,
    /// Revoked devices can no longer authenticate and receive nothing.
    pub revoked: bool,
}

/// What an invite creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteKindRecord {
    /// A new user with this role and handle.
    NewUser {
        /// The new user's role.
        role: Role,
        /// The new user's handle.
        handle: Handle,
    },
    /// Another device for an existing user.
    NewDevice {
        /// The user who gets the device.
        user: UserId,
    },
}

/// An invite, stored under the SHA-256 of its code (the code itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// The org the invite is for.
    pub org: OrgId,
    /// What it creates.
    pub kind: InviteKindRecord,
    /// Who created it (none for the first admin's invite).
    pub created_by: Option<UserId>,
    /// When it was created.
    pub created_ms: u64,
    /// When it stops working.
    pub expires_ms: u64,
}

/// A conversation: 1:1 or a small group within one org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// The conversation's id.
    pub id: ConversationId,
    /// Its org.
    pub org: OrgId,
    /// Its members, sorted.
    pub members: Vec<UserId>,
    /// When it was created.
    pub created_ms: u64,
}

/// One envelope waiting in a device's mailbox: ciphertext and routing metadata only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    /// The message's server id (shared by all envelopes of one send).
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
    pub ciphertext: Vec<u8>,
}

/// What a send produced, kept for idempotency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRecord {
    /// The message's server id.
    pub message_id: MessageId,
    /// When the server accepted it.
    pub server_time_ms: u64,
}
