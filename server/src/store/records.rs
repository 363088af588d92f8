//! The records the server stores. Each is versioned through [`super::codec`]; adding a field
//! means a new record version and a migration in the codec, never a silent reinterpretation.

use std::collections::{BTreeMap, BTreeSet};

use medrelay_proto::ids::{ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{
    Cidr, ConsentState, ConsentText, DeviceLabel, Handle, IdentityKeys, Permission, PqSignedPrekey,
    Reason, Role, SignedPrekey, TeamId, TeamName,
};
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
    /// Its access policy.
    pub policy: OrgPolicy,
}

/// An org's access policy: session timeouts, IP allow-lists, the patients' consent text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPolicy {
    /// Idle time after which staff and admin sessions are logged off.
    pub idle_timeout_ms: u64,
    /// Absolute lifetime of a staff or admin session.
    pub session_lifetime_ms: u64,
    /// Per role, the networks connections may come from (absent or empty: anywhere).
    pub allow_lists: BTreeMap<Role, Vec<Cidr>>,
    /// The messaging consent text patients accept (a built-in one when unset).
    pub consent_text: Option<ConsentText>,
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
    /// Deactivated users have every device revoked and cannot enrol again.
    pub active: bool,
    /// Permissions granted beyond the role's defaults.
    pub grants: BTreeSet<Permission>,
    /// Patients: consent to messaging.
    pub consent: ConsentRecord,
    /// Staff and admins: password and TOTP (none until set up after enrolment).
    pub credentials: Option<CredentialsRecord>,
    /// Failed logins and the lockout they caused.
    pub lockout: LockoutRecord,
}

/// A patient's consent to messaging, and when and to which text it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// Current state.
    pub state: ConsentState,
    /// When it last changed.
    pub changed_ms: u64,
    /// SHA-256 of the text accepted.
    pub text_sha256: Option<[u8; 32]>,
}

/// A staff member's or admin's second-factor credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsRecord {
    /// argon2id PHC string of the password.
    pub password_hash: String,
    /// The TOTP secret (raw bytes).
    pub totp_secret: Vec<u8>,
    /// Whether a login with this TOTP secret has succeeded yet.
    pub confirmed: bool,
    /// The last TOTP time step accepted: a code is accepted once only.
    pub last_totp_step: u64,
    /// SHA-256 of each unused recovery code.
    pub recovery_code_hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for CredentialsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsRecord")
            .field("confirmed", &self.confirmed)
            .field("recovery_codes_left", &self.recovery_code_hashes.len())
            .finish_non_exhaustive()
    }
}

/// Consecutive failed logins and the lockout they caused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutRecord {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// No login is accepted before this time.
    pub locked_until_ms: u64,
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
    /// Staff and admins: the login session on this device, if logged in.
    pub login: Option<LoginSession>,
}

/// A staff or admin login session on one device (password + second factor passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSession {
    /// When the login happened.
    pub started_ms: u64,
    /// Last request on it.
    pub last_activity_ms: u64,
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
    /// Its members, sorted (for a patient's care conversation: only the patient; the staff
    /// members follow the care assignment).
    pub members: Vec<UserId>,
    /// The patient whose care conversation this is, if any.
    pub patient: Option<UserId>,
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

/// A care team: staff who care for patients together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRecord {
    /// The team.
    pub id: TeamId,
    /// Its org.
    pub org: OrgId,
    /// Its name.
    pub name: TeamName,
    /// Its staff members.
    pub members: Vec<UserId>,
}

/// Who cares for one patient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareRecord {
    /// Staff assigned directly.
    pub staff: Vec<UserId>,
    /// Teams assigned.
    pub teams: Vec<TeamId>,
}

/// Emergency access of one staff member to one patient's conversation, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassRecord {
    /// Who gets access.
    pub staff: UserId,
    /// To whose conversation.
    pub patient: UserId,
    /// Who granted it.
    pub granted_by: UserId,
    /// Why (kept for the access log; may name a patient, so never logged in clear).
    pub reason: Reason,
    /// When it was granted.
    pub granted_ms: u64,
    /// When it ends by itself.
    pub expires_ms: u64,
}

/// An org's retention settings and archive key (the defaults until an admin changes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRecord {
    /// How long an undelivered envelope waits, in days.
    pub mail_days: u32,
    /// How long the org archive keeps an item, in days.
    pub archive_days: u32,
    /// Org-wide legal hold: nothing of the org expires while set.
    pub legal_hold: bool,
    /// The org archive's X25519 public key, when the org archives.
    pub archive_public_key: Option<[u8; 32]>,
}

/// Undelivered mail waits 30 days by default.
pub const DEFAULT_MAIL_DAYS: u32 = 30;
/// The archive keeps six years by default (HIPAA's documentation retention, 45 CFR 164.316).
pub const DEFAULT_ARCHIVE_DAYS: u32 = 6 * 365;

impl Default for RetentionRecord {
    fn default() -> Self {
        RetentionRecord {
            mail_days: DEFAULT_MAIL_DAYS,
            archive_days: DEFAULT_ARCHIVE_DAYS,
            legal_hold: false,
            archive_public_key: None,
        }
    }
}

/// A legal hold on one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// The conversation held.
    pub conversation: ConversationId,
    /// Who placed it.
    pub placed_by: UserId,
    /// When.
    pub placed_ms: u64,
}

/// One message of the org archive: sealed by the sender's client to the org's archive key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveItemRecord {
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
    /// The sealed box. Opaque to the server: only the privacy officer's offline key opens it.
    pub sealed: Vec<u8>,
}
