//! What the relay does with each request, as plain functions over the [`Store`].
//!
//! No sockets here: the connection module decodes a frame, calls one of these methods with the
//! authenticated device, and encodes the answer. Every method checks authorisation itself (org
//! isolation, conversation membership, role), so no caller can forget to.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use medrelay_proto::ids::{ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{
    auth_transcript, enroll_transcript, Binding, ConsentState, DeviceKeys, Ed25519PublicKey,
    EnrollRequest, ErrorCode, Handle, InviteSpec, OneTimePrekey, Permission, PqSignedPrekey, Role,
    SendRequest, Signature, SignedPrekey, WireError,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::limits;
use crate::permissions;
use crate::store::{
    CareRecord, ConsentRecord, ConversationRecord, DeviceRecord, InviteKindRecord, InviteRecord,
    LockoutRecord, MailboxItem, NewSend, OrgPolicy, OrgRecord, SendRecord, Store, StoreError,
    StoreSendOutcome, UserRecord,
};

/// An authenticated device: who is asking. Only [`Relay::authenticate`] and
/// [`Relay::enroll`] make one, so holding one proves the connection authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedDevice {
    /// The device's org.
    pub org: OrgId,
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The user's role.
    pub role: Role,
    /// The user's handle (never logged).
    pub handle: Handle,
}

/// A freshly created invite.
#[derive(Debug, Clone)]
pub struct NewInvite {
    /// The code to hand to the invitee (shown once; only its hash is stored).
    pub code: String,
    /// When it expires.
    pub expires_ms: u64,
}

/// A conversation as its members see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationView {
    /// The conversation.
    pub id: ConversationId,
    /// Its members with their current devices.
    pub members: Vec<MemberView>,
}

/// One member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The member's user id.
    pub user: UserId,
    /// Handle.
    pub handle: Handle,
    /// Role.
    pub role: Role,
    /// Current (not revoked) devices.
    pub devices: Vec<DeviceId>,
    /// Patients: their consent to messaging.
    pub consent: ConsentState,
}

/// A device's published keys with at most one one-time prekey, for session setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleView {
    /// The device's user.
    pub user: UserId,
    /// The device (its keys inside).
    pub device: DeviceRecord,
    /// A one-time prekey handed out to this caller only, if any was left.
    pub one_time_prekey: Option<OneTimePrekey>,
}

/// A stored (not yet durable) send.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// Server id and time.
    pub record: SendRecord,
    /// True if this repeated an earlier send.
    pub duplicate: bool,
    /// The devices that received an envelope (to wake once durable).
    pub recipients: Vec<DeviceId>,
}

/// The outcome of fetching prekeys: bundles, and devices whose one-time prekeys ran low.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    /// One bundle per requested device.
    pub bundles: Vec<BundleView>,
    /// Devices now at or below the low-water mark.
    pub running_low: Vec<DeviceId>,
}

pub(crate) fn internal(error: StoreError) -> WireError {
    tracing::error!(%error, "storage error");
    WireError::new(
        ErrorCode::Internal,
        "the server could not complete the request; it had no effect, try again later",
    )
}

pub(crate) fn not_found(what: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("{what} not found"))
}

/// The SHA-256 of an invite code, normalised (case and separators ignored).
pub fn invite_hash(code: &str) -> [u8; 32] {
    let normalised: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(normalised.as_bytes()).into()
}

/// A new random invite code: 128 bits, as four groups of eight hex digits.
fn new_invite_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex = hex::encode(bytes);
    let mut code = String::with_capacity(35);
    for (i, c) in hex.chars().enumerate() {
        if i > 0 && i % 8 == 0 {
            code.push('-');
        }
        code.push(c);
    }
    code
}

fn verify_signature(key: &Ed25519PublicKey, message: &[u8], signature: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key.as_bytes()) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(signature.as_bytes());
    key.verify_strict(message, &signature).is_ok()
}

fn bad_signature(what: &str) -> WireError {
    WireError::new(
        ErrorCode::BadSignature,
        format!("the {what} signature does not verify against the identity signing key"),
    )
}

/// Checks that a device's published keys are signed by its identity signing key.
fn verify_device_keys(keys: &DeviceKeys) -> Result<(), WireError> {
    let signer = &keys.identity.signing_key;
    if !verify_signature(
        signer,
        &keys.identity.dh_signed_message(),
        &keys.identity.dh_signature,
    ) {
        return Err(bad_signature("identity DH key"));
    }
    verify_prekeys(signer, Some(&keys.signed_prekey), Some(&keys.pq_prekey))
}

fn verify_prekeys(
    signer: &Ed25519PublicKey,
    signed_prekey: Option<&SignedPrekey>,
    pq_prekey: Option<&PqSignedPrekey>,
) -> Result<(), WireError> {
    if let Some(prekey) = signed_prekey {
        if !verify_signature(signer, &prekey.signed_message(), &prekey.signature) {
            return Err(bad_signature("signed prekey"));
        }
    }
    if let Some(prekey) = pq_prekey {
        if !verify_signature(signer, &prekey.signed_message(), &prekey.signature) {
            return Err(bad_signature("post-quantum prekey"));
        }
    }
    Ok(())
}

/// Default idle time before staff and admin sessions are logged off.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Default absolute lifetime of a staff or admin session.
pub const DEFAULT_SESSION_LIFETIME_MS: u64 = 12 * 60 * 60 * 1000;

/// The consent text patients see until the clinic sets its own.
pub fn default_consent_text(org_name: &str) -> String {
    format!(
        "By accepting, you agree that {org_name} may exchange messages with you about your care \
         through this secure messaging service. Messages are end-to-end encrypted: the server \
         cannot read them. Do not use messaging for emergencies; call your local emergency \
         number. You can withdraw this consent at any time, which stops messaging."
    )
}

/// A fresh org policy with the defaults.
pub fn default_policy() -> OrgPolicy {
    OrgPolicy {
        idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
        session_lifetime_ms: DEFAULT_SESSION_LIFETIME_MS,
        allow_lists: Default::default(),
        consent_text: None,
    }
}

/// The relay's request logic.
#[derive(Debug, Clone)]
pub struct Relay {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Per org, the staff who may see every patient conversation (they are members of all).
    see_all: Arc<Mutex<HashMap<OrgId, Arc<Vec<UserId>>>>>,
    /// Per org, what its consent text was made from (the text set, or the org's name for the
    /// default) and the text's SHA-256: every send to a patient checks it, and validating and
    /// hashing the text each time was 2-3% of the server's CPU.
    pub(crate) consent_hashes: Arc<Mutex<HashMap<OrgId, ConsentHash>>>,
}

/// What an org's consent text is made from, and the text's SHA-256.
pub(crate) type ConsentHash = (ConsentSource, [u8; 32]);

/// What an org's consent text is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConsentSource {
    /// The text the org set.
    Set(String),
    /// The default text, made from the org's name.
    Default(String),
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Relay {
    /// The relay over `store`, on `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Relay {
            store,
            clock,
            see_all: Arc::default(),
            consent_hashes: Arc::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Creates an org and its first admin's invite.
    pub fn create_org(&self, name: &str) -> Result<(OrgRecord, NewInvite), WireError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "an organisation name must be 1 to 128 printable characters",
            ));
        }
        let org = OrgRecord {
            id: OrgId::random(&mut rand::rngs::OsRng),
            name: name.to_owned(),
            created_ms: self.clock.now_ms(),
            policy: default_policy(),
        };
        self.store.put_org(&org).map_err(internal)?;
        let handle = Handle::new("admin").map_err(|e| {
            WireError::new(ErrorCode::Internal, format!("built-in admin handle: {e}"))
        })?;
        let invite = self.put_invite(
            org.id,
            InviteKindRecord::NewUser {
                role: Role::Admin,
                handle,
            },
            None,
        )?;
        Ok((org, invite))
    }

    fn put_invite(
        &self,
        org: OrgId,
        kind: InviteKindRecord,
        created_by: Option<UserId>,
    ) -> Result<NewInvite, WireError> {
        let now = self.clock.now_ms();
        let code = new_invite_code();
        let record = InviteRecord {
            org,
            kind,
            created_by,
            created_ms: now,
            expires_ms: now.saturating_add(limits::INVITE_LIFETIME_MS),
        };
        self.store
            .put_invite(&invite_hash(&code), &record)
            .map_err(internal)?;
        Ok(NewInvite {
            code,
            expires_ms: record.expires_ms,
        })
    }

    fn authed(&self, device: &DeviceRecord) -> Result<AuthedDevice, WireError> {
        let user = self
            .store
            .user(&device.user)
            .map_err(internal)?
            .ok_or_else(auth_failed)?;
        Ok(AuthedDevice {
            org: user.org,
            user: user.id,
            device: device.id,
            role: user.role,
            handle: user.handle,
        })
    }

    /// Checks a device's proof of possession over this connection's challenge.
    pub fn authenticate(
        &self,
        nonce: &[u8; 32],
        binding: &Binding,
        device_id: &DeviceId,
        signature: &Signature,
        source: IpAddr,
    ) -> Result<AuthedDevice, WireError> {
        let device = self
            .store
            .device(device_id)
            .map_err(internal)?
            .ok_or_else(auth_failed)?;
        let transcript = auth_transcript(nonce, binding, device_id);
        if device.revoked || !verify_signature(&device.identity.signing_key, &transcript, signature)
        {
            return Err(auth_failed());
        }
        let who = self.authed(&device)?;
        self.check_allow_list(&who.org, who.role, source)?;
        let mut device = device;
        device.last_seen_ms = self.clock.now_ms();
        self.store.put_device(&device).map_err(internal)?;
        Ok(who)
    }

    /// Refuses a connection from outside the org's allow-list for `role`.
    pub(crate) fn check_allow_list(
        &self,
        org: &OrgId,
        role: Role,
        source: IpAddr,
    ) -> Result<(), WireError> {
        let org = self
            .store
            .org(org)
            .map_err(internal)?
            .ok_or_else(|| not_found("organisation"))?;
        match org.policy.allow_lists.get(&role) {
            Some(cidrs) if !cidrs.is_empty() && !cidrs.iter().any(|c| c.contains(&source)) => {
                Err(WireError::new(
                    ErrorCode::Forbidden,
                    "connections from this network are not allowed for your role; ask your \
                     clinic's admin",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Enrols a new device with an invite code; the proof binds it to this connection.
    pub fn enroll(
        &self,
        nonce: &[u8; 32],
        binding: &Binding,
        request: &EnrollRequest,
        source: IpAddr,
    ) -> Result<AuthedDevice, WireError> {
        let keys = &request.keys;
        let transcript = enroll_transcript(nonce, binding, &keys.identity.signing_key);
        if !verify_signature(&keys.identity.signing_key, &transcript, &request.signature) {
            return Err(auth_failed());
        }
        verify_device_keys(keys)?;
        if keys.one_time_prekeys.len() > limits::MAX_ONE_TIME_PREKEYS_STORED as usize {
            return Err(WireError::new(
                ErrorCode::LimitExceeded,
                "too many one-time prekeys in one enrolment",
            ));
        }
        let hash = invite_hash(request.invite_code.expose());
        let invite = self
            .store
            .take_invite(&hash)
            .map_err(internal)?
            .ok_or_else(invite_invalid)?;
        let now = self.clock.now_ms();
        if invite.expires_ms <= now {
            return Err(invite_invalid());
        }
        let result = self
            .invite_role(&invite)
            .and_then(|role| self.check_allow_list(&invite.org, role, source))
            .and_then(|()| self.enroll_with_invite(&invite, request, now));
        if result.is_err() {
            // The invite was not used up by a failed enrolment: put it back.
            self.store
                .restore_invite(&hash, &invite)
                .map_err(internal)?;
        }
        result
    }

    /// The role of the user an invite enrols.
    fn invite_role(&self, invite: &InviteRecord) -> Result<Role, WireError> {
        match &invite.kind {
            InviteKindRecord::NewUser { role, .. } => Ok(*role),
            InviteKindRecord::NewDevice { user } => {
                let user = self
                    .store
                    .user(user)
                    .map_err(internal)?
                    .filter(|u| u.active)
                    .ok_or_else(invite_invalid)?;
                Ok(user.role)
            }
        }
    }

    fn enroll_with_invite(
        &self,
        invite: &InviteRecord,
        request: &EnrollRequest,
        now: u64,
    ) -> Result<AuthedDevice, WireError> {
        let device_id = DeviceId::random(&mut rand::rngs::OsRng);
        let user_id = match &invite.kind {
            InviteKindRecord::NewUser { .. } => UserId::random(&mut rand::rngs::OsRng),
            InviteKindRecord::NewDevice { user } => *user,
        };
        let device = DeviceRecord {
            id: device_id,
            user: user_id,
            org: invite.org,
            label: request.device_label.clone(),
            identity: request.keys.identity.clone(),
            signed_prekey: request.keys.signed_prekey.clone(),
            pq_prekey: request.keys.pq_prekey.clone(),
            created_ms: now,
            last_seen_ms: now,
            revoked: false,
            login: None,
        };
        match &invite.kind {
            InviteKindRecord::NewUser { role, handle } => {
                let user = UserRecord {
                    id: user_id,
                    org: invite.org,
                    handle: handle.clone(),
                    role: *role,
                    created_ms: now,
                    active: true,
                    grants: BTreeSet::new(),
                    consent: ConsentRecord {
                        state: if *role == Role::Patient {
                            ConsentState::Pending
                        } else {
                            ConsentState::NotApplicable
                        },
                        changed_ms: now,
                        text_sha256: None,
                    },
                    credentials: None,
                    lockout: LockoutRecord::default(),
                };
                match self
                    .store
                    .create_user(&user, &device, &request.keys.one_time_prekeys)
                {
                    Ok(()) => {}
                    Err(StoreError::HandleTaken) => return Err(handle_taken()),
                    Err(other) => return Err(internal(other)),
                }
                // A patient invited by a staff member is in that staff member's care.
                if *role == Role::Patient {
                    if let Some(inviter) = invite.created_by {
                        let inviter_is_staff = self
                            .store
                            .user(&inviter)
                            .map_err(internal)?
                            .is_some_and(|u| u.role == Role::Staff && u.active);
                        if inviter_is_staff {
                            let care = CareRecord {
                                staff: vec![inviter],
                                teams: Vec::new(),
                            };
                            self.store
                                .put_care(&invite.org, &user_id, &care)
                                .map_err(internal)?;
                            self.store
                                .patient_conversation(
                                    &invite.org,
                                    &user_id,
                                    ConversationId::random(&mut rand::rngs::OsRng),
                                    now,
                                )
                                .map_err(internal)?;
                        }
                    }
                }
            }
            InviteKindRecord::NewDevice { user } => {
                let existing = self.store.active_devices(user).map_err(internal)?;
                if existing.len() >= limits::MAX_DEVICES_PER_USER {
                    return Err(WireError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "an account may have at most {} devices; revoke one first",
                            limits::MAX_DEVICES_PER_USER
                        ),
                    ));
                }
                self.store
                    .add_device(&device, &request.keys.one_time_prekeys)
                    .map_err(internal)?;
            }
        }
        tracing::info!(org = %invite.org, user = %user_id, device = %device_id, "device enrolled");
        self.authed(&device)
    }

    /// Creates an invite: admins may invite anyone; staff may invite patients; everyone may
    /// invite another device of their own.
    pub fn create_invite(
        &self,
        who: &AuthedDevice,
        spec: &InviteSpec,
    ) -> Result<NewInvite, WireError> {
        let kind = match spec {
            InviteSpec::NewDevice => InviteKindRecord::NewDevice { user: who.user },
            InviteSpec::NewUser { role, handle } => {
                let role = *role;
                let needed = match role {
                    Role::Patient => Permission::InvitePatients,
                    Role::Staff | Role::Admin => Permission::ManageStaff,
                };
                self.require(who, needed).map_err(|_| {
                    WireError::new(
                        ErrorCode::Forbidden,
                        "you may not invite that role (inviting patients and managing staff are \
                         separate permissions)",
                    )
                })?;
                if self
                    .store
                    .user_by_handle(&who.org, handle)
                    .map_err(internal)?
                    .is_some()
                {
                    return Err(handle_taken());
                }
                InviteKindRecord::NewUser {
                    role,
                    handle: handle.clone(),
                }
            }
        };
        self.put_invite(who.org, kind, Some(who.user))
    }

    /// Adds one-time prekeys and optionally rotates the signed prekeys.
    pub fn upload_prekeys(
        &self,
        who: &AuthedDevice,
        upload: &medrelay_proto::UploadPrekeys,
    ) -> Result<u32, WireError> {
        let one_time_prekeys = &upload.one_time_prekeys;
        let have = self
            .store
            .count_one_time_prekeys(&who.device)
            .map_err(internal)?;
        let after = u64::from(have) + one_time_prekeys.len() as u64;
        if after > u64::from(limits::MAX_ONE_TIME_PREKEYS_STORED) {
            return Err(WireError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the server holds at most {} one-time prekeys per device; you have {have}",
                    limits::MAX_ONE_TIME_PREKEYS_STORED
                ),
            ));
        }
        if upload.signed_prekey.is_some() || upload.pq_prekey.is_some() {
            let mut device = self
                .store
                .device(&who.device)
                .map_err(internal)?
                .ok_or_else(|| not_found("device"))?;
            verify_prekeys(
                &device.identity.signing_key,
                upload.signed_prekey.as_ref(),
                upload.pq_prekey.as_ref(),
            )?;
            if let Some(prekey) = &upload.signed_prekey {
                device.signed_prekey = prekey.clone();
            }
            if let Some(prekey) = &upload.pq_prekey {
                device.pq_prekey = prekey.clone();
            }
            self.store.put_device(&device).map_err(internal)?;
        }
        self.store
            .add_one_time_prekeys(&who.device, one_time_prekeys)
            .map_err(internal)
    }

    /// How many one-time prekeys the caller's device has left.
    pub fn one_time_prekeys_remaining(&self, who: &AuthedDevice) -> Result<u32, WireError> {
        self.store
            .count_one_time_prekeys(&who.device)
            .map_err(internal)
    }

    /// Whether `who` shares a conversation with `other` (or is `other`).
    fn may_see_user(&self, who: &AuthedDevice, other: &UserRecord) -> Result<bool, WireError> {
        if other.org != who.org {
            return Ok(false);
        }
        if other.id == who.user {
            return Ok(true);
        }
        let now = self.clock.now_ms();
        for conversation in self.conversations_of(who, now)? {
            if self.members_of(&conversation, now)?.contains(&other.id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Who a device id names (for attributing a refused proof in the access log).
    pub fn claimed_actor(&self, device: &DeviceId) -> Option<crate::audit::Actor> {
        let device = self.store.device(device).ok()??;
        let user = self.store.user(&device.user).ok()??;
        Some(crate::audit::Actor {
            org: device.org,
            user: device.user,
            device: device.id,
            role: user.role,
        })
    }

    /// The caller's user record, which must still be active.
    pub(crate) fn caller(&self, who: &AuthedDevice) -> Result<UserRecord, WireError> {
        self.store
            .user(&who.user)
            .map_err(internal)?
            .filter(|u| u.active)
            .ok_or_else(|| WireError::new(ErrorCode::LoggedOff, "this account was deactivated"))
    }

    /// Refuses unless the caller has `permission` now.
    pub(crate) fn require(
        &self,
        who: &AuthedDevice,
        permission: Permission,
    ) -> Result<UserRecord, WireError> {
        let user = self.caller(who)?;
        if permissions::effective(&user).contains(&permission) {
            Ok(user)
        } else {
            Err(WireError::new(
                ErrorCode::Forbidden,
                format!("this needs the {} permission", permission.as_str()),
            ))
        }
    }

    /// Active staff of the org allowed to see every patient conversation.
    fn see_all_staff(&self, org: &OrgId) -> Result<Arc<Vec<UserId>>, WireError> {
        if let Some(cached) = self
            .see_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(org)
        {
            return Ok(cached.clone());
        }
        let staff: Vec<UserId> = self
            .store
            .org_users(org)
            .map_err(internal)?
            .into_iter()
            .filter(|u| {
                u.active
                    && u.role == Role::Staff
                    && permissions::effective(u).contains(&Permission::SeeAllPatientConversations)
            })
            .map(|u| u.id)
            .collect();
        let staff = Arc::new(staff);
        self.see_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*org, staff.clone());
        Ok(staff)
    }

    /// Forgets cached permission-derived membership (after a permission or user change).
    pub(crate) fn invalidate_membership(&self, org: &OrgId) {
        self.see_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(org);
    }

    /// The staff who care for a patient now: assigned directly, through a team, or by an
    /// unexpired break-glass grant; active staff only.
    pub(crate) fn care_staff(
        &self,
        org: &OrgId,
        patient: &UserId,
        now: u64,
    ) -> Result<BTreeSet<UserId>, WireError> {
        let care = self.store.care(org, patient).map_err(internal)?;
        let mut staff: BTreeSet<UserId> = care.staff.into_iter().collect();
        for team in &care.teams {
            if let Some(team) = self.store.team(org, team).map_err(internal)? {
                staff.extend(team.members);
            }
        }
        for grant in self.store.break_glass_for(org, patient).map_err(internal)? {
            if grant.expires_ms > now {
                staff.insert(grant.staff);
            }
        }
        let mut active = BTreeSet::new();
        for id in staff {
            if self
                .store
                .user(&id)
                .map_err(internal)?
                .is_some_and(|u| u.active && u.role == Role::Staff && u.org == *org)
            {
                active.insert(id);
            }
        }
        Ok(active)
    }

    /// The members of a conversation now. A patient's care conversation has the patient, the
    /// staff who care for them, and the staff allowed to see every patient conversation.
    pub(crate) fn members_of(
        &self,
        conversation: &ConversationRecord,
        now: u64,
    ) -> Result<Vec<UserId>, WireError> {
        let Some(patient) = conversation.patient else {
            return Ok(conversation.members.clone());
        };
        let mut members = self.care_staff(&conversation.org, &patient, now)?;
        members.extend(self.see_all_staff(&conversation.org)?.iter().copied());
        members.insert(patient);
        Ok(members.into_iter().collect())
    }

    /// Every conversation `who` is a member of now.
    pub(crate) fn conversations_of(
        &self,
        who: &AuthedDevice,
        now: u64,
    ) -> Result<Vec<ConversationRecord>, WireError> {
        let mut conversations = Vec::new();
        for id in self.store.user_conversations(&who.user).map_err(internal)? {
            if let Some(c) = self.store.conversation(&id).map_err(internal)? {
                conversations.push(c);
            }
        }
        if who.role == Role::Admin {
            return Ok(conversations);
        }
        for (patient, id) in self
            .store
            .org_patient_conversations(&who.org)
            .map_err(internal)?
        {
            if who.role == Role::Patient && patient != who.user {
                continue;
            }
            if let Some(c) = self.store.conversation(&id).map_err(internal)? {
                if self.members_of(&c, now)?.contains(&who.user) {
                    conversations.push(c);
                }
            }
        }
        Ok(conversations)
    }

    /// Hands out prekey bundles of every current device of `users` (restricted to `devices`
    /// if not empty), each with at most one one-time prekey, never handed out twice.
    pub fn fetch_prekeys(
        &self,
        who: &AuthedDevice,
        users: &[UserId],
        devices: &[DeviceId],
    ) -> Result<FetchOutcome, WireError> {
        let mut bundles = Vec::new();
        let mut running_low = Vec::new();
        for user_id in users {
            let user = self
                .store
                .user(user_id)
                .map_err(internal)?
                .ok_or_else(|| not_found("user"))?;
            if !self.may_see_user(who, &user)? {
                return Err(not_found("user"));
            }
            for device in self.store.active_devices(user_id).map_err(internal)? {
                if device.id == who.device || (!devices.is_empty() && !devices.contains(&device.id))
                {
                    continue;
                }
                let one_time_prekey = self
                    .store
                    .take_one_time_prekey(&device.id)
                    .map_err(internal)?;
                if one_time_prekey.is_some() {
                    let left = self
                        .store
                        .count_one_time_prekeys(&device.id)
                        .map_err(internal)?;
                    if left <= limits::ONE_TIME_PREKEY_LOW_WATER {
                        running_low.push(device.id);
                    }
                }
                bundles.push(BundleView {
                    user: *user_id,
                    device,
                    one_time_prekey,
                });
            }
        }
        Ok(FetchOutcome {
            bundles,
            running_low,
        })
    }

    fn view(&self, conversation: &ConversationRecord) -> Result<ConversationView, WireError> {
        let now = self.clock.now_ms();
        let member_ids = self.members_of(conversation, now)?;
        let mut members = Vec::with_capacity(member_ids.len());
        for user_id in &member_ids {
            let user = self
                .store
                .user(user_id)
                .map_err(internal)?
                .ok_or_else(|| not_found("member"))?;
            let devices = self
                .store
                .active_devices(user_id)
                .map_err(internal)?
                .into_iter()
                .map(|d| d.id)
                .collect();
            let consent = self.effective_consent(&user)?;
            members.push(MemberView {
                user: user.id,
                handle: user.handle,
                role: user.role,
                devices,
                consent,
            });
        }
        Ok(ConversationView {
            id: conversation.id,
            members,
        })
    }

    fn member_conversation(
        &self,
        who: &AuthedDevice,
        id: &ConversationId,
    ) -> Result<ConversationRecord, WireError> {
        self.member_conversation_now(who, id).map(|(c, _)| c)
    }

    /// The conversation if the caller is a member now, with its members now.
    fn member_conversation_now(
        &self,
        who: &AuthedDevice,
        id: &ConversationId,
    ) -> Result<(ConversationRecord, Vec<UserId>), WireError> {
        // Not a member and does not exist look the same: existence is not leaked.
        if let Some(c) = self.store.conversation(id).map_err(internal)? {
            if c.org == who.org {
                let members = self.members_of(&c, self.clock.now_ms())?;
                if members.contains(&who.user) {
                    return Ok((c, members));
                }
            }
        }
        Err(not_found("conversation"))
    }

    /// Opens the conversation of the caller and these handles. With a patient among them it
    /// is that patient's care conversation, which everyone named must belong to (patients
    /// reach their care team only; staff reach the patients they care for; admins none).
    /// Without a patient, a staff conversation is created on first use.
    pub fn open_conversation(
        &self,
        who: &AuthedDevice,
        handles: &[Handle],
    ) -> Result<ConversationView, WireError> {
        let caller = self.caller(who)?;
        let mut others: Vec<UserRecord> = Vec::new();
        for handle in handles {
            let user = self
                .store
                .user_by_handle(&who.org, handle)
                .map_err(internal)?
                .filter(|u| u.active)
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::NotFound,
                        "no user with that handle in your organisation",
                    )
                })?;
            if user.id != who.user && !others.iter().any(|o| o.id == user.id) {
                others.push(user);
            }
        }
        if others.is_empty() {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "a conversation needs at least one other member",
            ));
        }
        let mut patients: Vec<UserId> = others
            .iter()
            .filter(|u| u.role == Role::Patient)
            .map(|u| u.id)
            .collect();
        if caller.role == Role::Patient {
            patients.push(caller.id);
        }
        if patients.len() > 1 {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "patients message their care team, not other patients",
            ));
        }
        let now = self.clock.now_ms();
        if let Some(patient) = patients.first() {
            if caller.role == Role::Admin || others.iter().any(|u| u.role == Role::Admin) {
                return Err(WireError::new(
                    ErrorCode::Forbidden,
                    "admins do not take part in patient conversations",
                ));
            }
            let members = self.care_staff(&who.org, patient, now)?;
            let see_all = self.see_all_staff(&who.org)?;
            let belongs =
                |id: &UserId| id == patient || members.contains(id) || see_all.contains(id);
            if !belongs(&who.user) || !others.iter().all(|u| belongs(&u.id)) {
                return Err(if caller.role == Role::Patient {
                    WireError::new(
                        ErrorCode::Forbidden,
                        "you can message your care team only; the clinic assigns it",
                    )
                } else {
                    WireError::new(
                        ErrorCode::Forbidden,
                        "this patient is not assigned to you or your team",
                    )
                });
            }
            let conversation = self
                .store
                .patient_conversation(
                    &who.org,
                    patient,
                    ConversationId::random(&mut rand::rngs::OsRng),
                    now,
                )
                .map_err(internal)?;
            return self.view(&conversation);
        }
        let mut members = BTreeSet::new();
        members.insert(who.user);
        members.extend(others.iter().map(|u| u.id));
        if members.len() > medrelay_proto::limits::MAX_MEMBERS {
            return Err(WireError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a conversation has at most {} members",
                    medrelay_proto::limits::MAX_MEMBERS
                ),
            ));
        }
        let members: Vec<UserId> = members.into_iter().collect();
        let conversation = self
            .store
            .find_or_create_conversation(
                &who.org,
                &members,
                ConversationId::random(&mut rand::rngs::OsRng),
                now,
            )
            .map_err(internal)?;
        self.view(&conversation)
    }

    /// A conversation the caller is a member of.
    pub fn get_conversation(
        &self,
        who: &AuthedDevice,
        id: &ConversationId,
    ) -> Result<ConversationView, WireError> {
        let conversation = self.member_conversation(who, id)?;
        self.view(&conversation)
    }

    /// One page of the caller's conversations, in id order, after `after`; and whether more
    /// follow.
    pub fn list_conversations(
        &self,
        who: &AuthedDevice,
        after: Option<ConversationId>,
    ) -> Result<(Vec<ConversationView>, bool), WireError> {
        let mut ids: Vec<ConversationId> = self
            .conversations_of(who, self.clock.now_ms())?
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids.dedup();
        let page = medrelay_proto::limits::MAX_CONVERSATIONS_PER_PAGE;
        let mut rest = ids.into_iter().filter(|id| after.is_none_or(|a| *id > a));
        let mut views = Vec::new();
        for id in rest.by_ref().take(page) {
            if let Some(conversation) = self.store.conversation(&id).map_err(internal)? {
                views.push(self.view(&conversation)?);
            }
        }
        Ok((views, rest.next().is_some()))
    }

    /// Stores a send: one envelope for each current device of each member except the sending
    /// device, no more and no less. Not yet durable: the caller syncs before acknowledging.
    pub fn send(&self, who: &AuthedDevice, input: &SendRequest) -> Result<SendOutcome, WireError> {
        let (conversation, members) = self.member_conversation_now(who, &input.conversation_id)?;
        // A repeat of a send that was accepted is answered as such even if the recipients'
        // devices changed since: it is the same message, already stored.
        if let Some(record) = self
            .store
            .sent(&who.device, &input.client_message_id)
            .map_err(internal)?
        {
            return Ok(SendOutcome {
                record,
                duplicate: true,
                recipients: Vec::new(),
            });
        }
        if let Some(patient) = conversation.patient {
            self.check_consent(&patient, who)?;
        }
        let mut expected = BTreeSet::new();
        for member in &members {
            for device in self
                .store
                .active_device_ids(member)
                .map_err(internal)?
                .iter()
            {
                if *device != who.device {
                    expected.insert(*device);
                }
            }
        }
        let mut given = BTreeSet::new();
        for envelope in &input.envelopes {
            if !given.insert(envelope.recipient_device) {
                return Err(WireError::new(
                    ErrorCode::Malformed,
                    "the send has two envelopes for the same device",
                ));
            }
        }
        let missing: Vec<DeviceId> = expected.difference(&given).copied().collect();
        let stale: Vec<DeviceId> = given.difference(&expected).copied().collect();
        if !missing.is_empty() || !stale.is_empty() {
            let mut error = WireError::new(
                ErrorCode::DevicesMismatch,
                format!(
                    "the recipients' devices changed: {} missing, {} stale; fetch the \
                     conversation and prekeys again, then resend",
                    missing.len(),
                    stale.len()
                ),
            );
            error.missing_devices = missing;
            error.stale_devices = stale;
            return Err(error);
        }
        let record = SendRecord {
            // The thread's CSPRNG (seeded and reseeded from the OS): no system call per message.
            message_id: MessageId::random(&mut rand::thread_rng()),
            server_time_ms: self.clock.now_ms(),
        };
        let archives = self.archive_key(&who.org)?.is_some();
        let archive = match (&input.archive_item, archives) {
            (Some(sealed), true) => Some(sealed.clone()),
            (None, false) => None,
            (None, true) => {
                return Err(WireError::new(
                    ErrorCode::ArchiveRequired,
                    "this organisation archives every message: seal it to the archive key as \
                     well (reconnect to learn the key), then resend",
                ))
            }
            // The org stopped archiving since the client learnt its key: nothing to keep.
            (Some(_), false) => None,
        };
        let recipients: Vec<DeviceId> = expected.into_iter().collect();
        let outcome = self
            .store
            .store_send(NewSend {
                org: who.org,
                conversation: conversation.id,
                sender_user: who.user,
                sender_device: who.device,
                client_message_id: input.client_message_id,
                record,
                envelopes: input
                    .envelopes
                    .iter()
                    .map(|e| (e.recipient_device, e.ciphertext.clone()))
                    .collect(),
                archive,
            })
            .map_err(internal)?;
        Ok(match outcome {
            StoreSendOutcome::Stored(record) => SendOutcome {
                record,
                duplicate: false,
                recipients,
            },
            StoreSendOutcome::Duplicate(record) => SendOutcome {
                record,
                duplicate: true,
                recipients: Vec::new(),
            },
            // Answering it as a duplicate could confirm a send that then fails to be stored.
            StoreSendOutcome::InProgress => {
                return Err(WireError::new(
                    ErrorCode::Internal,
                    "this message is being stored from another connection right now; send it \
                     again with the same client message id",
                ))
            }
        })
    }

    /// Refuses messaging in a patient's conversation unless the patient consents.
    fn check_consent(&self, patient: &UserId, who: &AuthedDevice) -> Result<(), WireError> {
        let state = match self.store.user(patient).map_err(internal)? {
            Some(user) => self.effective_consent(&user)?,
            None => ConsentState::Pending,
        };
        match state {
            ConsentState::Accepted | ConsentState::NotApplicable => Ok(()),
            ConsentState::Withdrawn => Err(WireError::new(
                ErrorCode::Forbidden,
                "the patient has withdrawn consent to messaging",
            )),
            ConsentState::Pending if *patient == who.user => Err(WireError::new(
                ErrorCode::Forbidden,
                "accept the clinic's messaging consent first",
            )),
            ConsentState::Pending => Err(WireError::new(
                ErrorCode::Forbidden,
                "the patient has not yet accepted messaging consent",
            )),
        }
    }

    /// The next envelopes of the caller's mailbox after position `after`.
    pub fn mailbox(
        &self,
        who: &AuthedDevice,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MailboxItem>, WireError> {
        self.store
            .mailbox_after(&who.device, after, limit)
            .map_err(internal)
    }

    /// Deletes the caller's copies of these messages.
    pub fn ack(&self, who: &AuthedDevice, message_ids: &[MessageId]) -> Result<u32, WireError> {
        self.store.ack(&who.device, message_ids).map_err(internal)
    }

    /// The caller's org record.
    pub fn org(&self, who: &AuthedDevice) -> Result<OrgRecord, WireError> {
        self.store
            .org(&who.org)
            .map_err(internal)?
            .ok_or_else(|| not_found("organisation"))
    }
}

fn auth_failed() -> WireError {
    WireError::new(
        ErrorCode::AuthFailed,
        "authentication failed: unknown or revoked device, or a proof not made for this connection",
    )
}

fn invite_invalid() -> WireError {
    WireError::new(
        ErrorCode::InviteInvalid,
        "that invite code is unknown, already used or expired; ask for a new one",
    )
}

fn handle_taken() -> WireError {
    WireError::new(
        ErrorCode::HandleTaken,
        "that handle is already taken in this organisation",
    )
}
