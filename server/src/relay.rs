//! What the relay does with each request, as plain functions over the [`Store`].
//!
//! No sockets here: the connection module decodes a frame, calls one of these methods with the
//! authenticated device, and encodes the answer. Every method checks authorisation itself (org
//! isolation, conversation membership, role), so no caller can forget to.

use std::collections::BTreeSet;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use medrelay_proto::ids::{ConversationId, DeviceId, MessageId, OrgId, UserId};
use medrelay_proto::{
    auth_transcript, enroll_transcript, Binding, DeviceKeys, Ed25519PublicKey, EnrollRequest,
    ErrorCode, Handle, InviteSpec, OneTimePrekey, PqSignedPrekey, Role, SendRequest, Signature,
    SignedPrekey, WireError,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::limits;
use crate::store::{
    ConversationRecord, DeviceRecord, EnvelopeRecord, InviteKindRecord, InviteRecord, MailboxItem,
    OrgRecord, SendRecord, Store, StoreError, StoreSendOutcome, UserRecord,
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

fn internal(error: StoreError) -> WireError {
    tracing::error!(%error, "storage error");
    WireError::new(
        ErrorCode::Internal,
        "the server could not complete the request; it had no effect, try again later",
    )
}

fn not_found(what: &str) -> WireError {
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

/// The relay's request logic.
#[derive(Debug, Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Relay {
    /// The relay over `store`, on `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Relay { store, clock }
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
        let mut device = device;
        device.last_seen_ms = self.clock.now_ms();
        self.store.put_device(&device).map_err(internal)?;
        self.authed(&device)
    }

    /// Enrols a new device with an invite code; the proof binds it to this connection.
    pub fn enroll(
        &self,
        nonce: &[u8; 32],
        binding: &Binding,
        request: &EnrollRequest,
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
        let result = self.enroll_with_invite(&invite, request, now);
        if result.is_err() {
            // The invite was not used up by a failed enrolment: put it back.
            self.store
                .restore_invite(&hash, &invite)
                .map_err(internal)?;
        }
        result
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
        };
        match &invite.kind {
            InviteKindRecord::NewUser { role, handle } => {
                let user = UserRecord {
                    id: user_id,
                    org: invite.org,
                    handle: handle.clone(),
                    role: *role,
                    created_ms: now,
                };
                match self
                    .store
                    .create_user(&user, &device, &request.keys.one_time_prekeys)
                {
                    Ok(()) => {}
                    Err(StoreError::HandleTaken) => return Err(handle_taken()),
                    Err(other) => return Err(internal(other)),
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
                let allowed = match who.role {
                    Role::Admin => true,
                    Role::Staff => role == Role::Patient,
                    Role::Patient => false,
                };
                if !allowed {
                    return Err(WireError::new(
                        ErrorCode::Forbidden,
                        "your role may not invite that role (staff invite patients; admins invite anyone)",
                    ));
                }
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
        for id in self.store.user_conversations(&who.user).map_err(internal)? {
            if let Some(conversation) = self.store.conversation(&id).map_err(internal)? {
                if conversation.members.contains(&other.id) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
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
        let mut members = Vec::with_capacity(conversation.members.len());
        for user_id in &conversation.members {
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
            members.push(MemberView {
                user: user.id,
                handle: user.handle,
                role: user.role,
                devices,
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
        // Not a member and does not exist look the same: existence is not leaked.
        match self.store.conversation(id).map_err(internal)? {
            Some(c) if c.org == who.org && c.members.contains(&who.user) => Ok(c),
            _ => Err(not_found("conversation")),
        }
    }

    /// Opens (creating on first use) the conversation of the caller and these handles.
    /// A conversation never holds two patients, nor anyone of another org.
    pub fn open_conversation(
        &self,
        who: &AuthedDevice,
        handles: &[Handle],
    ) -> Result<ConversationView, WireError> {
        let mut members = BTreeSet::new();
        members.insert(who.user);
        let mut patients = usize::from(who.role == Role::Patient);
        for handle in handles {
            let user = self
                .store
                .user_by_handle(&who.org, handle)
                .map_err(internal)?
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::NotFound,
                        "no user with that handle in your organisation",
                    )
                })?;
            if members.insert(user.id) && user.role == Role::Patient {
                patients += 1;
            }
        }
        if members.len() < 2 {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "a conversation needs at least one other member",
            ));
        }
        if members.len() > medrelay_proto::limits::MAX_MEMBERS {
            return Err(WireError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a conversation has at most {} members",
                    medrelay_proto::limits::MAX_MEMBERS
                ),
            ));
        }
        if patients > 1 {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "patients message their care team, not other patients",
            ));
        }
        let members: Vec<UserId> = members.into_iter().collect();
        let conversation = self
            .store
            .find_or_create_conversation(
                &who.org,
                &members,
                ConversationId::random(&mut rand::rngs::OsRng),
                self.clock.now_ms(),
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
        let mut ids = self.store.user_conversations(&who.user).map_err(internal)?;
        ids.sort();
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
        let conversation = self.member_conversation(who, &input.conversation_id)?;
        let mut expected = BTreeSet::new();
        for member in &conversation.members {
            for device in self.store.active_devices(member).map_err(internal)? {
                if device.id != who.device {
                    expected.insert(device.id);
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
            message_id: MessageId::random(&mut rand::rngs::OsRng),
            server_time_ms: self.clock.now_ms(),
        };
        let recipients: Vec<DeviceId> = expected.into_iter().collect();
        let envelopes = input
            .envelopes
            .iter()
            .map(|envelope| {
                (
                    envelope.recipient_device,
                    EnvelopeRecord {
                        message_id: record.message_id,
                        conversation: conversation.id,
                        sender_user: who.user,
                        sender_device: who.device,
                        server_time_ms: record.server_time_ms,
                        ciphertext: envelope.ciphertext.to_vec(),
                    },
                )
            })
            .collect();
        let outcome = self
            .store
            .store_send(&who.device, &input.client_message_id, &record, envelopes)
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
        })
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
