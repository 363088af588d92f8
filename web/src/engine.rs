//! [`Engine`]: the staff web client's protocol and end-to-end logic, sans-IO.
//!
//! The page owns the WebSocket and IndexedDB; the engine owns the keys, the sessions and the
//! protocol state. The page feeds it every frame the server sends ([`Engine::receive`]) and
//! starts operations (log in, send, list, console requests), each of which returns an
//! operation number; then it *pumps*:
//!
//! 1. [`Engine::take_unsaved`]: the sealed key store (the SDK's encrypted key-store format,
//!    under a key derived from the staff member's password) if it changed: store it in
//!    IndexedDB and wait for the write to complete;
//! 2. [`Engine::take_outgoing`]: the frames to send, in order;
//! 3. [`Engine::take_events`]: what happened, as JSON (results of operations, messages,
//!    logoff notices).
//!
//! Taking the store before the frames keeps the transport's rule: every session step a frame
//! depends on (a message key used by a send, a processed delivery acked) is saved before the
//! frame leaves, so no message key is ever used twice and nothing acked is lost.
//!
//! Authentication binds to the page's origin (`Binding::Origin`): a browser cannot reach the
//! TLS exporter, and the server checks the origin is its own and matches the WebSocket's
//! `Origin` header.

use std::collections::BTreeMap;

use medrelay_proto::limits::MAX_ACK_IDS;
use medrelay_proto::{
    auth_transcript, decode_server_frame, encode_client_frame, enroll_transcript, AckRequest,
    AuthOk, AuthProof, Binding, Bytes, ChannelBinding, ClientFrame, ClientMessageId, ClientRequest,
    Conversation, ConversationId, Delivery, DeviceId, DeviceLabel, EnrollRequest, Envelope,
    ErrorCode, InviteCode, ListConversations, MessageId, Origin, Role, SendRequest, ServerMessage,
    Signature, UploadPrekeys, UserId, WireError, X25519PublicKey,
};
use medrelay_sdk::archive::archive_key_fingerprint;
use medrelay_sdk::content::{self, Content};
use medrelay_sdk::identity::PublicIdentity;
use medrelay_sdk::limits::{ONE_TIME_PREKEY_BATCH_SIZE, ONE_TIME_PREKEY_REPLENISH_THRESHOLD};
use medrelay_sdk::{
    safety_number, DeviceIdentity, KdfParams, KeyStore, SealedKeyStore, SecretBytes, Session,
    StoreUpdate,
};
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::error::EngineError;
use crate::requests;
use crate::state::{ConversationRecord, DeliveryState, HistoryMessage, WebState, STATE_VERSION};
use crate::wire::{self, Recipient};

/// How many times a send is re-planned after `DEVICES_MISMATCH` (as the SDK's transport).
pub const MAX_MISMATCH_RETRIES: u32 = 3;

/// What the engine is waiting for on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A new connection: the server's challenge comes first.
    AwaitingChallenge,
    /// The proof is sent.
    AwaitingAuthOk,
    /// Authenticated.
    Ready,
}

/// A message being sent, across its steps.
struct Outgoing {
    conversation_id: ConversationId,
    client_message_id: ClientMessageId,
    plaintext: SecretBytes,
    retries: u32,
    /// Whether the connection was already refreshed after `ARCHIVE_REQUIRED` (once only).
    archive_refreshed: bool,
}

/// What an answer to a request id continues.
enum Pending {
    /// The `auth` or `enroll` proof.
    Hello,
    /// A console request: its answer becomes the operation's result.
    Console { op: u32 },
    /// `setup_credentials`: the result carries the TOTP secret and its QR code.
    Setup { op: u32 },
    /// `login`.
    Login { op: u32 },
    /// `logout`.
    Logout { op: u32 },
    /// `list_conversations`, following pages.
    List { op: u32 },
    /// A send: the conversation's current members.
    SendMembers { op: u32, send: Outgoing },
    /// A send: prekey bundles for devices without a session.
    SendBundles {
        op: u32,
        send: Outgoing,
        conversation: Conversation,
    },
    /// A send: the server's answer.
    SendSubmit {
        op: u32,
        send: Outgoing,
        devices: u32,
    },
    /// Safety numbers: bundles for devices without a session.
    Safety {
        op: u32,
        user: UserId,
        known: Vec<(DeviceId, PublicIdentity)>,
        missing: Vec<Recipient>,
    },
    /// Housekeeping whose answer needs nothing (ack, prekey upload, ping).
    Quiet,
}

/// An enrolment waiting for the server's challenge.
struct Enrolment {
    invite: InviteCode,
    label: DeviceLabel,
}

/// The browser's end of one enrolled (or enrolling) device. See the module docs.
pub struct Engine {
    store: SealedKeyStore<OsRng>,
    identity: DeviceIdentity,
    origin: Origin,
    state: Option<WebState>,
    enrolment: Option<Enrolment>,
    phase: Phase,
    auth: Option<AuthOk>,
    next_request_id: u64,
    next_op: u32,
    pending: BTreeMap<u64, Pending>,
    outgoing: Vec<Vec<u8>>,
    events: Vec<Value>,
    /// Sends refused with `ARCHIVE_REQUIRED`, to repeat (same client message id) once the
    /// next connection has told the org's archive key.
    resend: Vec<(u32, Outgoing)>,
}

impl core::fmt::Debug for Engine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Engine")
            .field("phase", &self.phase)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn user_hex(id: &UserId) -> String {
    id.to_string()
}

impl Engine {
    /// Starts enrolling a new device with an invite code: generates its identity and a new key
    /// store sealed under `password` (the Argon2id derivation runs here, once). The enrolment
    /// goes out when the connection's challenge arrives.
    pub fn enroll(
        origin: &str,
        invite_code: &str,
        password: &str,
        kdf: KdfParams,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let origin = Origin::new(origin)?;
        let invite = InviteCode::new(invite_code.trim())
            .map_err(|e| EngineError::Invalid(format!("the invite code {e}")))?;
        // The same rule as the server's, so the store's password is the login password.
        let password = requests::password(password)?;
        let store = SealedKeyStore::create(password.expose().as_bytes(), kdf, OsRng)?;
        let identity = DeviceIdentity::generate(&mut OsRng, now_ms);
        Ok(Self::new(
            store,
            identity,
            origin,
            None,
            Some(Enrolment {
                invite,
                label: requests::browser_label(),
            }),
        ))
    }

    /// Opens a device's sealed key store with the staff member's password. A wrong password
    /// is [`EngineError::KeyStore`] with `WRONG_PASSWORD` as its code.
    pub fn unlock(sealed: &[u8], password: &str) -> Result<Self, EngineError> {
        let store = SealedKeyStore::open(sealed, password.as_bytes(), OsRng)?;
        let identity = store.load_identity()?.ok_or(EngineError::Local(
            "this browser's key store holds no device",
        ))?;
        let blob = store.load_profile()?.ok_or(EngineError::Local(
            "this browser's key store holds no profile",
        ))?;
        let state: WebState = serde_json::from_slice(blob.expose_secret())
            .map_err(|_| EngineError::Local("this browser's key store does not decode"))?;
        let origin = Origin::new(state.origin.clone())?;
        Ok(Self::new(store, identity, origin, Some(state), None))
    }

    fn new(
        store: SealedKeyStore<OsRng>,
        identity: DeviceIdentity,
        origin: Origin,
        state: Option<WebState>,
        enrolment: Option<Enrolment>,
    ) -> Self {
        Self {
            store,
            identity,
            origin,
            state,
            enrolment,
            phase: Phase::AwaitingChallenge,
            auth: None,
            next_request_id: 1,
            next_op: 1,
            pending: BTreeMap::new(),
            outgoing: Vec::new(),
            events: Vec::new(),
            resend: Vec::new(),
        }
    }

    // ---- the pump

    /// The sealed key store, if it changed since the last call: persist it before sending
    /// [`Engine::take_outgoing`]'s frames.
    pub fn take_unsaved(&mut self) -> Option<Vec<u8>> {
        // Nothing is worth keeping before the server accepted the enrolment: a refused invite
        // must not leave a store without a device behind.
        self.state.as_ref()?;
        self.store.take_unsaved()
    }

    /// The frames to send, in order.
    pub fn take_outgoing(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outgoing)
    }

    /// What happened since the last call.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// The connection ended: every operation waiting on it fails, and the next connection
    /// starts with the challenge again.
    pub fn connection_closed(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (_, p) in pending {
            self.fail_pending(p, &EngineError::Disconnected);
        }
        self.phase = Phase::AwaitingChallenge;
        self.auth = None;
    }

    /// Whether the server said this device has no live login session (staff and admins).
    pub fn login_required(&self) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|a| a.login_required || a.credentials_required)
    }

    /// Whether the connection is authenticated.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    // ---- frames in

    /// Handles one frame from the server.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), EngineError> {
        let frame = decode_server_frame(bytes).map_err(|e| EngineError::Protocol(e.to_string()))?;
        if frame.request_id == 0 {
            return self.on_push(frame.message, now_ms);
        }
        let Some(pending) = self.pending.remove(&frame.request_id) else {
            return Err(EngineError::Protocol(
                "an answer to a request this client did not send".into(),
            ));
        };
        match frame.message {
            ServerMessage::Error(error) => {
                self.on_refusal(pending, error, now_ms);
                Ok(())
            }
            answer => self.on_answer(pending, answer, now_ms),
        }
    }

    fn on_push(&mut self, message: ServerMessage, now_ms: u64) -> Result<(), EngineError> {
        match message {
            ServerMessage::Challenge(challenge) if self.phase == Phase::AwaitingChallenge => {
                self.send_proof(&challenge.nonce)
            }
            ServerMessage::Delivery(delivery) => self.on_delivery(delivery),
            ServerMessage::PrekeysLow { .. } => self.maintain_prekeys(0, now_ms),
            ServerMessage::Error(error) => {
                let kind = if error.code == ErrorCode::LoggedOff {
                    "logged_off"
                } else {
                    "notice"
                };
                self.events.push(json!({
                    "type": kind, "code": error.code.as_str(), "message": error.message,
                }));
                Ok(())
            }
            other => Err(EngineError::Protocol(format!(
                "unexpected {} pushed by the server",
                other.name()
            ))),
        }
    }

    fn request(&mut self, request: ClientRequest, pending: Pending) {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.saturating_add(1);
        self.outgoing.push(encode_client_frame(&ClientFrame {
            request_id,
            request,
        }));
        self.pending.insert(request_id, pending);
    }

    fn new_op(&mut self) -> u32 {
        let op = self.next_op;
        self.next_op = self.next_op.wrapping_add(1).max(1);
        op
    }

    fn result(&mut self, op: u32, value: Value) {
        self.events
            .push(json!({ "type": "result", "op": op, "ok": true, "value": value }));
    }

    fn failure(&mut self, op: u32, error: &EngineError) {
        self.events.push(json!({
            "type": "result", "op": op, "ok": false,
            "code": error.code(), "message": error.to_string(),
        }));
    }

    // ---- authentication

    fn send_proof(&mut self, nonce: &[u8; 32]) -> Result<(), EngineError> {
        let binding = Binding::Origin(self.origin.clone());
        let request = if let Some(enrolment) = &self.enrolment {
            let keys = wire::device_keys(&self.identity.public_keys())?;
            let transcript = enroll_transcript(nonce, &binding, &keys.identity.signing_key);
            let signature = self
                .identity
                .sign_auth_transcript(&transcript)
                .map_err(|_| EngineError::Local("could not sign the enrolment"))?;
            ClientRequest::Enroll(Box::new(EnrollRequest {
                invite_code: enrolment.invite.clone(),
                keys,
                binding: ChannelBinding::Origin(self.origin.clone()),
                signature: Signature::from_array(signature),
                device_label: enrolment.label.clone(),
            }))
        } else {
            let state = self.state()?;
            let device_id = state.device_id;
            let transcript = auth_transcript(nonce, &binding, &device_id);
            let signature = self
                .identity
                .sign_auth_transcript(&transcript)
                .map_err(|_| EngineError::Local("could not sign the proof"))?;
            ClientRequest::Auth(AuthProof {
                device_id,
                binding: ChannelBinding::Origin(self.origin.clone()),
                signature: Signature::from_array(signature),
            })
        };
        self.request(request, Pending::Hello);
        self.phase = Phase::AwaitingAuthOk;
        Ok(())
    }

    fn on_auth_ok(&mut self, auth: AuthOk, now_ms: u64) -> Result<(), EngineError> {
        if self.enrolment.take().is_some() {
            let state = WebState {
                version: STATE_VERSION,
                origin: self.origin.as_str().to_owned(),
                org_id: auth.org_id,
                user_id: auth.user_id,
                device_id: auth.device_id,
                handle: auth.handle.clone(),
                role: auth.role,
                conversations: BTreeMap::new(),
                processed: Default::default(),
                seen: Default::default(),
                // Trust on first use: the archive key the org has when this device enrols.
                archive_key: auth.archive_public_key,
            };
            let blob = serde_json::to_vec(&state).map_err(|_| EngineError::Local("encode"))?;
            let identity = self.identity.clone();
            self.store.apply(&StoreUpdate {
                identity: Some(&identity),
                profile: Some(&blob),
                ..StoreUpdate::default()
            })?;
            self.state = Some(state);
        } else {
            let state = self.state()?;
            if auth.device_id != state.device_id || auth.user_id != state.user_id {
                return Err(EngineError::Protocol(
                    "auth_ok names another device than the one that authenticated".into(),
                ));
            }
        }
        self.phase = Phase::Ready;
        let remaining = auth.one_time_prekeys_remaining;
        self.events.push(json!({
            "type": "authenticated",
            "user_id": user_hex(&auth.user_id),
            "device_id": auth.device_id.to_string(),
            "handle": auth.handle.as_str(),
            "role": auth.role.as_str(),
            "credentials_required": auth.credentials_required,
            "login_required": auth.login_required,
        }));
        let blocked = auth.credentials_required || auth.login_required;
        self.announce_archive_key(&auth);
        self.auth = Some(auth);
        if !blocked {
            self.maintain_prekeys(remaining, now_ms)?;
            self.restart_resends();
        }
        Ok(())
    }

    /// Tells the page when the server announces an archive key other than the pinned one:
    /// sending stops until the staff member compares its fingerprint and accepts it.
    fn announce_archive_key(&mut self, auth: &AuthOk) {
        let pinned = self.state.as_ref().and_then(|s| s.archive_key);
        if let Some(key) = auth.archive_public_key {
            if pinned.is_some_and(|p| p != key) {
                self.events.push(json!({
                    "type": "archive_key_changed",
                    "fingerprint": archive_key_fingerprint(&key),
                }));
            }
        }
    }

    /// The sends refused with `ARCHIVE_REQUIRED` start again (fresh members, same client
    /// message id), now that this connection's `auth_ok` carries the archive key.
    fn restart_resends(&mut self) {
        for (op, send) in std::mem::take(&mut self.resend) {
            let conversation_id = send.conversation_id;
            self.request(
                ClientRequest::GetConversation { conversation_id },
                Pending::SendMembers { op, send },
            );
        }
    }

    /// The org archive key the server announces on this connection, its fingerprint (to
    /// compare with the privacy officer's), and whether it is the pinned one. `null` when the
    /// org does not archive.
    pub fn archive_key(&self) -> Value {
        let pinned = self.state.as_ref().and_then(|s| s.archive_key);
        match self.auth.as_ref().and_then(|a| a.archive_public_key) {
            Some(key) => json!({
                "fingerprint": archive_key_fingerprint(&key),
                "pinned": pinned == Some(key),
                "pinned_fingerprint": pinned.as_ref().map(archive_key_fingerprint),
            }),
            None => Value::Null,
        }
    }

    /// Accepts (pins) the org archive key this connection announces, after the staff member
    /// compared its fingerprint with the privacy officer's. `fingerprint` must be the one they
    /// were shown, so a key that changed again meanwhile is not accepted unseen.
    pub fn accept_archive_key(&mut self, fingerprint: &str) -> Result<(), EngineError> {
        let key = self.auth.as_ref().and_then(|a| a.archive_public_key);
        if key.as_ref().map(archive_key_fingerprint).as_deref() != Some(fingerprint) {
            return Err(EngineError::Invalid(
                "the archive key changed again; compare the new fingerprint".into(),
            ));
        }
        self.state_mut()?.archive_key = key;
        self.save_state()
    }

    /// The archive key to seal a send to: `None` when the org does not archive; the pinned
    /// key (pinned now if none was); or a refusal when the server announces another one.
    fn pinned_archive_key(&mut self) -> Result<Option<X25519PublicKey>, EngineError> {
        let Some(key) = self.auth.as_ref().and_then(|a| a.archive_public_key) else {
            return Ok(None);
        };
        match self.state()?.archive_key {
            Some(pinned) if pinned == key => Ok(Some(key)),
            Some(_) => Err(EngineError::ArchiveKeyChanged {
                fingerprint: archive_key_fingerprint(&key),
            }),
            None => {
                self.state_mut()?.archive_key = Some(key);
                self.save_state()?;
                Ok(Some(key))
            }
        }
    }

    /// Who this device is: handle, role, ids (none before enrolment completes).
    pub fn whoami(&self) -> Value {
        match &self.state {
            Some(s) => json!({
                "handle": s.handle.as_str(), "role": s.role.as_str(),
                "user_id": user_hex(&s.user_id), "device_id": s.device_id.to_string(),
                "origin": s.origin,
            }),
            None => Value::Null,
        }
    }

    fn state(&self) -> Result<&WebState, EngineError> {
        self.state
            .as_ref()
            .ok_or(EngineError::Local("the device is not enrolled yet"))
    }

    fn state_mut(&mut self) -> Result<&mut WebState, EngineError> {
        self.state
            .as_mut()
            .ok_or(EngineError::Local("the device is not enrolled yet"))
    }

    fn save_state(&mut self) -> Result<(), EngineError> {
        let blob = serde_json::to_vec(self.state()?).map_err(|_| EngineError::Local("encode"))?;
        self.store.save_profile(&blob)?;
        Ok(())
    }

    // ---- credentials and sessions

    /// Staff and admins, once after enrolment: sets the password (the key store's too) and
    /// asks for the TOTP secret, whose result carries the `otpauth://` URI as a QR code.
    pub fn setup_credentials(&mut self, password: &str) -> Result<u32, EngineError> {
        let password = requests::password(password)?;
        let op = self.new_op();
        self.request(
            ClientRequest::SetupCredentials { password },
            Pending::Setup { op },
        );
        Ok(op)
    }

    /// Logs in with the password and a TOTP (six digits) or recovery code. Sent once.
    pub fn login(&mut self, password: &str, code: &str) -> Result<u32, EngineError> {
        let password = requests::password(password)?;
        let second_factor = requests::second_factor(code)?;
        let op = self.new_op();
        self.request(
            ClientRequest::Login {
                password,
                second_factor,
            },
            Pending::Login { op },
        );
        Ok(op)
    }

    /// Ends the login session on the server.
    pub fn logout(&mut self) -> u32 {
        let op = self.new_op();
        self.request(ClientRequest::Logout, Pending::Logout { op });
        op
    }

    /// Keeps the connection alive (does not count as activity for the idle timeout).
    pub fn ping(&mut self) {
        if self.phase == Phase::Ready {
            self.request(ClientRequest::Ping, Pending::Quiet);
        }
    }

    /// A console request by its wire name with JSON arguments (see [`requests::build`]).
    pub fn console(&mut self, kind: &str, args: &Value) -> Result<u32, EngineError> {
        let request = requests::build(kind, args)?;
        let op = self.new_op();
        let pending = match request {
            ClientRequest::Logout => Pending::Logout { op },
            _ => Pending::Console { op },
        };
        self.request(request, pending);
        Ok(op)
    }

    /// Uploads one-time prekeys below the threshold and rotates signed prekeys when due; the
    /// identity is saved (so sealed) before the upload leaves.
    fn maintain_prekeys(&mut self, server_remaining: u32, now_ms: u64) -> Result<(), EngineError> {
        let mut identity = self.identity.clone();
        identity.prune_retired_prekeys(now_ms);
        let mut upload = UploadPrekeys {
            one_time_prekeys: Vec::new(),
            signed_prekey: None,
            pq_prekey: None,
        };
        if identity.prekey_rotation_due(now_ms) {
            let spk = identity
                .rotate_signed_prekey(&mut OsRng, now_ms)
                .map_err(|_| EngineError::Local("could not rotate the signed prekey"))?;
            let pq = identity
                .rotate_pq_prekey(&mut OsRng, now_ms)
                .map_err(|_| EngineError::Local("could not rotate the post-quantum prekey"))?;
            upload.signed_prekey = Some(wire::signed_prekey(&spk));
            upload.pq_prekey = Some(wire::pq_prekey(&pq)?);
        }
        if (server_remaining as usize) < ONE_TIME_PREKEY_REPLENISH_THRESHOLD {
            let fresh = identity.generate_one_time_prekeys(ONE_TIME_PREKEY_BATCH_SIZE, &mut OsRng);
            upload.one_time_prekeys = wire::one_time_prekeys(&fresh);
        }
        self.store.save_identity(&identity)?;
        self.identity = identity;
        if !upload.one_time_prekeys.is_empty() || upload.signed_prekey.is_some() {
            self.request(ClientRequest::UploadPrekeys(upload), Pending::Quiet);
        }
        Ok(())
    }

    // ---- conversations

    /// Lists this user's conversations (following pages); the result is the inbox.
    pub fn list_conversations(&mut self) -> u32 {
        let op = self.new_op();
        self.request(
            ClientRequest::ListConversations(ListConversations { after: None }),
            Pending::List { op },
        );
        op
    }

    /// The inbox: every known conversation with its other members, consent, unread count and
    /// last message, most recent first.
    pub fn inbox(&self) -> Value {
        let Some(state) = &self.state else {
            return Value::Array(Vec::new());
        };
        let mut rows: Vec<(u64, Value)> = state
            .conversations
            .iter()
            .map(|(id, c)| {
                let last = c.messages.last();
                let at = last.map_or(0, |m| m.server_time_ms.max(m.sent_at_ms));
                (at, conversation_summary(state, id, c))
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        Value::Array(rows.into_iter().map(|(_, v)| v).collect())
    }

    /// One conversation: members and history.
    pub fn conversation(&self, id: &str) -> Result<Value, EngineError> {
        let id: ConversationId = id
            .parse()
            .map_err(|_| EngineError::Invalid("not a conversation id".into()))?;
        let state = self.state()?;
        let record = state
            .conversations
            .get(&id)
            .ok_or_else(|| EngineError::Invalid("no such conversation here".into()))?;
        let mut summary = conversation_summary(state, &id, record);
        let messages: Vec<Value> = record
            .messages
            .iter()
            .map(|m| {
                json!({
                    "local_id": m.local_id,
                    "outgoing": m.outgoing,
                    "from": state.handle_of(&m.sender_user_id).map(|h| h.as_str().to_owned()),
                    "text": m.text,
                    "sent_at_ms": m.sent_at_ms,
                    "server_time_ms": m.server_time_ms,
                    "state": m.state,
                    "devices": m.devices,
                })
            })
            .collect();
        if let Value::Object(map) = &mut summary {
            map.insert("messages".into(), Value::Array(messages));
        }
        Ok(summary)
    }

    /// Marks a conversation read.
    pub fn mark_read(&mut self, id: &str) -> Result<(), EngineError> {
        let id: ConversationId = id
            .parse()
            .map_err(|_| EngineError::Invalid("not a conversation id".into()))?;
        let changed = match self.state_mut()?.conversations.get_mut(&id) {
            Some(c) if c.unread > 0 => {
                c.unread = 0;
                true
            }
            _ => false,
        };
        if changed {
            self.save_state()?;
        }
        Ok(())
    }

    // ---- sending

    /// Sends `text` to a conversation: one envelope per recipient device, sessions started
    /// where missing; the message appears in the history at once as `sending`.
    pub fn send_text(
        &mut self,
        conversation: &str,
        text: &str,
        now_ms: u64,
    ) -> Result<u32, EngineError> {
        let conversation_id: ConversationId = conversation
            .parse()
            .map_err(|_| EngineError::Invalid("not a conversation id".into()))?;
        if text.trim().is_empty() {
            return Err(EngineError::Invalid("the message is empty".into()));
        }
        let client_message_id = ClientMessageId::random(&mut OsRng);
        let content = Content {
            client_message_id: Bytes::copy_from_slice(client_message_id.as_bytes()),
            conversation_id: Bytes::copy_from_slice(conversation_id.as_bytes()),
            sent_at_ms: now_ms,
            text: text.to_owned(),
            padding: Bytes::new(),
        };
        let plaintext = content::encode_padded(&content, &mut OsRng);
        drop(content);
        let local_id = hex::encode(client_message_id.as_bytes());
        let state = self.state_mut()?;
        let me = state.user_id;
        state
            .conversations
            .entry(conversation_id)
            .or_default()
            .push(HistoryMessage {
                local_id: local_id.clone(),
                message_id: None,
                sender_user_id: me,
                outgoing: true,
                text: text.to_owned(),
                sent_at_ms: now_ms,
                server_time_ms: 0,
                state: DeliveryState::Sending,
                devices: 0,
            });
        self.save_state()?;
        let op = self.new_op();
        self.events.push(json!({
            "type": "history", "conversation_id": conversation_id.to_string(),
        }));
        let send = Outgoing {
            conversation_id,
            client_message_id,
            plaintext,
            retries: 0,
            archive_refreshed: false,
        };
        self.request(
            ClientRequest::GetConversation { conversation_id },
            Pending::SendMembers { op, send },
        );
        Ok(op)
    }

    /// The send's next step once the conversation's current members are known.
    fn send_plan(
        &mut self,
        op: u32,
        send: Outgoing,
        conversation: Conversation,
    ) -> Result<(), EngineError> {
        let own = self.state()?.device_id;
        let recipients = wire::recipients(&conversation, &own);
        let mut needed = Vec::new();
        for r in &recipients {
            if self
                .store
                .load_session(&wire::store_device_id(&r.device))?
                .is_none()
            {
                needed.push(*r);
            }
        }
        if needed.is_empty() {
            return self.send_encrypt(op, send, &conversation, &[]);
        }
        let fetch = fetch_request(&needed);
        self.request(
            ClientRequest::FetchPrekeys(fetch),
            Pending::SendBundles {
                op,
                send,
                conversation,
            },
        );
        Ok(())
    }

    /// Encrypts once per recipient device, seals every advanced session, then sends.
    fn send_encrypt(
        &mut self,
        op: u32,
        send: Outgoing,
        conversation: &Conversation,
        bundles: &[medrelay_proto::PrekeyBundle],
    ) -> Result<(), EngineError> {
        // Checked before anything is encrypted: a changed key stops the send whole.
        let archive_key = self.pinned_archive_key()?;
        let archive_item = match archive_key {
            None => None,
            Some(key) => {
                // The archived copy is the padded content as sent, so its length leaks as
                // little as the message's.
                let padded = content::decode(send.plaintext.expose_secret())
                    .map_err(|_| EngineError::Local("could not read back the message"))?;
                let state = self.state()?;
                let sealed = medrelay_sdk::archive::seal_record(
                    &key,
                    state.user_id.as_bytes(),
                    state.device_id.as_bytes(),
                    &padded,
                    &mut OsRng,
                )
                .map_err(|_| EngineError::Local("could not seal to the archive key"))?;
                Some(Bytes::from(sealed))
            }
        };
        let own = self.state()?.device_id;
        let recipients = wire::recipients(conversation, &own);
        let mut sessions: BTreeMap<DeviceId, Session> = BTreeMap::new();
        for r in &recipients {
            if let Some(mut s) = self.store.load_session(&wire::store_device_id(&r.device))? {
                s.bind_peer(wire::peer_address(&r.user, &r.device))
                    .map_err(|_| {
                        EngineError::Invalid(
                            "a device is listed under another user than its session's; not \
                             sending"
                                .into(),
                        )
                    })?;
                sessions.insert(r.device, s);
            }
        }
        for b in bundles {
            let Some(r) = recipients
                .iter()
                .find(|r| r.device == b.device_id && !sessions.contains_key(&r.device))
            else {
                continue;
            };
            let mut session = Session::initiate(&self.identity, &wire::bundle(b), &mut OsRng)?;
            session.bind_peer(wire::peer_address(&r.user, &r.device))?;
            sessions.insert(b.device_id, session);
        }
        let mut envelopes = Vec::with_capacity(sessions.len());
        for r in &recipients {
            if let Some(session) = sessions.get_mut(&r.device) {
                envelopes.push(Envelope {
                    recipient_device: r.device,
                    ciphertext: Bytes::from(session.encrypt(send.plaintext.expose_secret())?),
                });
            }
        }
        let saved: Vec<(medrelay_sdk::DeviceId, &Session)> = sessions
            .iter()
            .map(|(d, s)| (wire::store_device_id(d), s))
            .collect();
        self.store.apply(&StoreUpdate {
            sessions: saved,
            ..StoreUpdate::default()
        })?;
        let devices = u32::try_from(envelopes.len()).unwrap_or(u32::MAX);
        self.request(
            ClientRequest::Send(SendRequest {
                conversation_id: send.conversation_id,
                client_message_id: send.client_message_id,
                envelopes,
                archive_item,
            }),
            Pending::SendSubmit { op, send, devices },
        );
        Ok(())
    }

    fn mark_sent(
        &mut self,
        send: &Outgoing,
        outcome: Option<(MessageId, u64, u32)>,
    ) -> Result<(), EngineError> {
        let local_id = hex::encode(send.client_message_id.as_bytes());
        let state = self.state_mut()?;
        if let Some(message) = state
            .conversations
            .get_mut(&send.conversation_id)
            .and_then(|c| c.messages.iter_mut().find(|m| m.local_id == local_id))
        {
            match outcome {
                Some((id, at, devices)) => {
                    message.message_id = Some(id);
                    message.server_time_ms = at;
                    message.devices = devices;
                    message.state = DeliveryState::Stored;
                }
                None => message.state = DeliveryState::Failed,
            }
        }
        self.save_state()?;
        self.events.push(json!({
            "type": "history", "conversation_id": send.conversation_id.to_string(),
        }));
        Ok(())
    }

    // ---- safety numbers

    /// Safety numbers with each current device of `user` (a member of a conversation here),
    /// from the identity keys this device encrypts to (sessions started where missing).
    pub fn safety_numbers(&mut self, user: &str) -> Result<u32, EngineError> {
        let user: UserId = user
            .parse()
            .map_err(|_| EngineError::Invalid("not a user id".into()))?;
        let state = self.state()?;
        let own = state.device_id;
        let member = state
            .conversations
            .values()
            .flat_map(|c| c.members.iter())
            .find(|m| m.user_id == user)
            .cloned()
            .ok_or_else(|| EngineError::Invalid("that user shares no conversation here".into()))?;
        let mut known = Vec::new();
        let mut missing = Vec::new();
        for device in member.devices.iter().filter(|d| **d != own) {
            match self.store.load_session(&wire::store_device_id(device))? {
                Some(mut s) => {
                    s.bind_peer(wire::peer_address(&user, device))?;
                    known.push((*device, s.peer_identity().clone()));
                }
                None => missing.push(Recipient {
                    user,
                    device: *device,
                }),
            }
        }
        let op = self.new_op();
        if missing.is_empty() {
            let value = self.safety_value(&user, &known);
            self.result(op, value);
        } else {
            self.request(
                ClientRequest::FetchPrekeys(fetch_request(&missing)),
                Pending::Safety {
                    op,
                    user,
                    known,
                    missing,
                },
            );
        }
        Ok(op)
    }

    fn safety_value(&self, user: &UserId, devices: &[(DeviceId, PublicIdentity)]) -> Value {
        let Some(state) = &self.state else {
            return Value::Null;
        };
        let local = self.identity.public_identity().clone();
        Value::Array(
            devices
                .iter()
                .map(|(device, remote)| {
                    let number =
                        safety_number(state.user_id.as_bytes(), &local, user.as_bytes(), remote);
                    json!({ "device_id": device.to_string(), "groups": number.groups() })
                })
                .collect(),
        )
    }

    // ---- receiving

    fn ack(&mut self, ids: Vec<MessageId>) {
        for chunk in ids.chunks(MAX_ACK_IDS) {
            self.request(
                ClientRequest::Ack(AckRequest {
                    message_ids: chunk.to_vec(),
                }),
                Pending::Quiet,
            );
        }
    }

    fn on_delivery(&mut self, delivery: Delivery) -> Result<(), EngineError> {
        let id = delivery.message_id;
        let id_hex = id.to_string();
        if self.state()?.processed.contains(&id_hex) {
            self.ack(vec![id]);
            return Ok(());
        }
        let peer = wire::store_device_id(&delivery.sender_device_id);
        let own = self.state()?.device_id;
        let opened = medrelay_sdk::delivery::open_envelope(
            &self.store,
            &self.identity,
            &own,
            &delivery,
            &mut OsRng,
        );
        let decoded = opened.ok().and_then(|opened| {
            match content::decode(opened.plaintext.expose_secret()) {
                Ok(c) if c.conversation_id.as_ref() == delivery.conversation_id.as_bytes() => {
                    Some((c, opened.session, opened.archived, opened.identity))
                }
                _ => None,
            }
        });
        let Some((content, session, archived, identity)) = decoded else {
            // Acked and reported without content, so it never blocks the queue.
            self.state_mut()?.processed.insert(id_hex);
            self.save_state()?;
            self.ack(vec![id]);
            self.events.push(json!({
                "type": "undecryptable",
                "conversation_id": delivery.conversation_id.to_string(),
            }));
            return Ok(());
        };
        let seen_key = WebState::seen_key(&delivery.sender_device_id, &content.client_message_id);
        let state = self.state_mut()?;
        state.processed.insert(id_hex);
        let repeat = state.seen.contains(&seen_key);
        let known = state.conversations.contains_key(&delivery.conversation_id);
        if !repeat {
            state.seen.insert(seen_key);
            let record: &mut ConversationRecord = state
                .conversations
                .entry(delivery.conversation_id)
                .or_default();
            record.push(HistoryMessage {
                local_id: hex::encode(&content.client_message_id),
                message_id: Some(id),
                sender_user_id: delivery.sender_user_id,
                outgoing: false,
                text: content.text.clone(),
                sent_at_ms: content.sent_at_ms,
                server_time_ms: delivery.server_time_ms,
                state: DeliveryState::Stored,
                devices: 0,
            });
            record.unread = record.unread.saturating_add(1);
        }
        let blob = serde_json::to_vec(self.state()?).map_err(|_| EngineError::Local("encode"))?;
        self.store.apply(&StoreUpdate {
            identity: identity.as_ref(),
            sessions: session
                .as_ref()
                .map(|s| vec![(peer, s)])
                .unwrap_or_default(),
            archived_sessions: archived
                .as_deref()
                .map(|a| vec![(peer, a)])
                .unwrap_or_default(),
            profile: Some(&blob),
            ..StoreUpdate::default()
        })?;
        if let Some(identity) = identity {
            self.identity = identity;
        }
        // Stored (sealed, persisted by the pump before this frame leaves): now ack.
        self.ack(vec![id]);
        if !repeat {
            self.events.push(json!({
                "type": "message",
                "conversation_id": delivery.conversation_id.to_string(),
                "known_conversation": known,
            }));
        }
        Ok(())
    }

    // ---- answers

    fn on_answer(
        &mut self,
        pending: Pending,
        answer: ServerMessage,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        match (pending, answer) {
            (Pending::Hello, ServerMessage::AuthOk(auth)) => self.on_auth_ok(auth, now_ms),
            (Pending::Console { op }, answer) => {
                let value = requests::answer(&answer);
                self.result(op, value);
                Ok(())
            }
            (Pending::Setup { op }, ServerMessage::CredentialsSetup(setup)) => {
                let uri = setup.otpauth_uri.expose();
                let value = json!({
                    "totp_secret": setup.totp_secret.expose(),
                    "otpauth_uri": uri,
                    "qr_svg": crate::qr::svg(uri).ok(),
                    "recovery_codes": setup.recovery_codes.iter().map(|c| c.expose()).collect::<Vec<_>>(),
                });
                self.result(op, value);
                Ok(())
            }
            (
                Pending::Login { op },
                ServerMessage::LoginOk {
                    idle_timeout_ms,
                    session_expires_at_ms,
                },
            ) => {
                let mut remaining = None;
                if let Some(auth) = self.auth.as_mut() {
                    auth.login_required = false;
                    auth.credentials_required = false;
                    remaining = Some(auth.one_time_prekeys_remaining);
                }
                if let Some(remaining) = remaining {
                    self.maintain_prekeys(remaining, now_ms)?;
                }
                self.result(
                    op,
                    json!({
                        "idle_timeout_ms": idle_timeout_ms,
                        "session_expires_at_ms": session_expires_at_ms,
                    }),
                );
                Ok(())
            }
            (Pending::Logout { op }, ServerMessage::Done) => {
                if let Some(auth) = self.auth.as_mut() {
                    if auth.role != Role::Patient {
                        auth.login_required = true;
                    }
                }
                self.result(op, json!({}));
                Ok(())
            }
            (Pending::List { op }, ServerMessage::ConversationList(page)) => {
                let state = self.state_mut()?;
                for c in &page.conversations {
                    state.remember(c);
                }
                self.save_state()?;
                let last = page.conversations.last().map(|c| c.id);
                match (page.more, last) {
                    (true, Some(after)) => self.request(
                        ClientRequest::ListConversations(ListConversations { after: Some(after) }),
                        Pending::List { op },
                    ),
                    _ => {
                        let inbox = self.inbox();
                        self.result(op, inbox);
                    }
                }
                Ok(())
            }
            (Pending::SendMembers { op, send }, ServerMessage::Conversation(conversation)) => {
                self.state_mut()?.remember(&conversation);
                self.save_state()?;
                if let Err(e) = self.pinned_archive_key() {
                    // Nothing was encrypted or sent: the message is marked not sent.
                    self.mark_sent(&send, None)?;
                    if let EngineError::ArchiveKeyChanged { fingerprint } = &e {
                        self.events.push(json!({
                            "type": "archive_key_changed", "fingerprint": fingerprint,
                        }));
                    }
                    self.failure(op, &e);
                    return Ok(());
                }
                if let Err(e) = self.send_plan(op, send, conversation) {
                    self.failure(op, &e);
                }
                Ok(())
            }
            (
                Pending::SendBundles {
                    op,
                    send,
                    conversation,
                },
                ServerMessage::PrekeyBundles(bundles),
            ) => {
                let conversation_id = send.conversation_id;
                if let Err(e) = self.send_encrypt(op, send, &conversation, &bundles) {
                    self.failure(op, &e);
                    self.events.push(json!({
                        "type": "history", "conversation_id": conversation_id.to_string(),
                    }));
                }
                Ok(())
            }
            (Pending::SendSubmit { op, send, devices }, ServerMessage::SendAccepted(accepted)) => {
                self.mark_sent(
                    &send,
                    Some((accepted.message_id, accepted.server_time_ms, devices)),
                )?;
                self.result(
                    op,
                    json!({
                        "message_id": accepted.message_id.to_string(),
                        "devices": devices,
                        "duplicate": accepted.duplicate,
                    }),
                );
                Ok(())
            }
            (
                Pending::Safety {
                    op,
                    user,
                    mut known,
                    missing,
                },
                ServerMessage::PrekeyBundles(bundles),
            ) => {
                let mut update = Vec::new();
                for b in &bundles {
                    let Some(r) = missing.iter().find(|r| r.device == b.device_id) else {
                        continue;
                    };
                    let mut session =
                        Session::initiate(&self.identity, &wire::bundle(b), &mut OsRng)?;
                    session.bind_peer(wire::peer_address(&r.user, &r.device))?;
                    known.push((b.device_id, session.peer_identity().clone()));
                    update.push((wire::store_device_id(&b.device_id), session));
                }
                self.store.apply(&StoreUpdate {
                    sessions: update.iter().map(|(d, s)| (*d, s)).collect(),
                    ..StoreUpdate::default()
                })?;
                let value = self.safety_value(&user, &known);
                self.result(op, value);
                Ok(())
            }
            (Pending::Quiet, _) => Ok(()),
            (pending, other) => {
                let error = EngineError::Protocol(format!("unexpected answer {}", other.name()));
                self.fail_pending(pending, &error);
                Ok(())
            }
        }
    }

    fn on_refusal(&mut self, pending: Pending, error: WireError, _now_ms: u64) {
        match pending {
            Pending::Hello => {
                self.events.push(json!({
                    "type": "auth_failed", "code": error.code.as_str(), "message": error.message,
                }));
            }
            Pending::SendSubmit {
                op,
                mut send,
                devices: _,
            } if error.code == ErrorCode::DevicesMismatch
                && send.retries < MAX_MISMATCH_RETRIES =>
            {
                let stale: Vec<medrelay_sdk::DeviceId> = error
                    .stale_devices
                    .iter()
                    .map(wire::store_device_id)
                    .collect();
                if let Err(e) = self.store.apply(&StoreUpdate {
                    deleted_sessions: stale,
                    ..StoreUpdate::default()
                }) {
                    self.fail_pending(
                        Pending::SendSubmit {
                            op,
                            send,
                            devices: 0,
                        },
                        &e.into(),
                    );
                    return;
                }
                send.retries += 1;
                let conversation_id = send.conversation_id;
                self.request(
                    ClientRequest::GetConversation { conversation_id },
                    Pending::SendMembers { op, send },
                );
            }
            Pending::SendSubmit { op, mut send, .. }
                if error.code == ErrorCode::ArchiveRequired && !send.archive_refreshed =>
            {
                // The org archives now (or its key changed) since this connection
                // authenticated: the next connection's auth_ok carries the key; the send is
                // repeated there with the same client message id.
                send.archive_refreshed = true;
                self.resend.push((op, send));
                self.events.push(json!({ "type": "refresh_connection" }));
            }
            other => self.fail_pending(other, &EngineError::Server(error)),
        }
    }

    fn fail_pending(&mut self, pending: Pending, error: &EngineError) {
        match pending {
            Pending::Hello => self.events.push(json!({
                "type": "auth_failed", "code": error.code(), "message": error.to_string(),
            })),
            Pending::Quiet => {}
            Pending::Console { op }
            | Pending::Setup { op }
            | Pending::Login { op }
            | Pending::Logout { op }
            | Pending::List { op }
            | Pending::Safety { op, .. } => self.failure(op, error),
            Pending::SendMembers { op, send }
            | Pending::SendBundles { op, send, .. }
            | Pending::SendSubmit { op, send, .. } => {
                // The state was saved before; a failure to mark it only loses the mark.
                let _ = self.mark_sent(&send, None);
                self.failure(op, error);
            }
        }
    }
}

/// The `fetch_prekeys` for exactly these devices.
fn fetch_request(needed: &[Recipient]) -> medrelay_proto::FetchPrekeys {
    let users: std::collections::BTreeSet<UserId> = needed.iter().map(|r| r.user).collect();
    medrelay_proto::FetchPrekeys {
        user_ids: users.into_iter().collect(),
        devices: needed.iter().map(|r| r.device).collect(),
    }
}

fn conversation_summary(state: &WebState, id: &ConversationId, c: &ConversationRecord) -> Value {
    let others: Vec<Value> = c
        .members
        .iter()
        .filter(|m| m.user_id != state.user_id)
        .map(|m| {
            json!({
                "user_id": user_hex(&m.user_id), "handle": m.handle.as_str(),
                "role": m.role.as_str(), "consent": m.consent.as_str(),
                "devices": m.devices.len(),
            })
        })
        .collect();
    let patient = c.members.iter().find(|m| m.role == Role::Patient);
    let title = patient
        .map(|p| p.handle.as_str().to_owned())
        .unwrap_or_else(|| {
            others
                .iter()
                .filter_map(|o| o.get("handle").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(", ")
        });
    let last = c.messages.last();
    json!({
        "conversation_id": id.to_string(),
        "title": title,
        "consent": patient.map(|p| p.consent.as_str()),
        "members": others,
        "unread": c.unread,
        "last_text": last.map(|m| m.text.clone()),
        "last_at_ms": last.map(|m| m.server_time_ms.max(m.sent_at_ms)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
    use medrelay_proto::{
        decode_client_frame, encode_server_frame, Challenge, Handle, OrgId, ServerFrame,
    };

    use super::*;

    const ORIGIN: &str = "https://clinic.example:8443";
    const PASSWORD: &str = "a long staff password";
    const CHEAP: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    fn push(message: ServerMessage) -> Vec<u8> {
        encode_server_frame(&ServerFrame::push(message))
    }

    fn auth_ok(login_required: bool) -> AuthOk {
        AuthOk {
            org_id: OrgId::from_array([1; 16]),
            user_id: UserId::from_array([2; 16]),
            device_id: DeviceId::from_array([3; 16]),
            role: Role::Staff,
            handle: Handle::new("dr.lee").unwrap(),
            one_time_prekeys_remaining: 100,
            archive_public_key: None,
            credentials_required: login_required,
            login_required,
            consent_required: false,
            consent_text: None,
        }
    }

    /// Enrols against a scripted server; returns the engine and the request id of the proof.
    fn enrolled() -> Engine {
        enrolled_with(auth_ok(true))
    }

    fn enrolled_with(answer: AuthOk) -> Engine {
        let mut engine = Engine::enroll(ORIGIN, "INVITE-123", PASSWORD, CHEAP, 1_000).unwrap();
        assert!(
            engine.take_unsaved().is_none(),
            "nothing to keep before enrolment"
        );
        let nonce = [9u8; 32];
        engine
            .receive(
                &push(ServerMessage::Challenge(Challenge {
                    nonce,
                    server_time_ms: 1_000,
                })),
                1_000,
            )
            .unwrap();
        let frames = engine.take_outgoing();
        assert_eq!(frames.len(), 1);
        let frame = decode_client_frame(frames.first().unwrap()).unwrap();
        let ClientRequest::Enroll(enroll) = frame.request else {
            panic!("expected enroll");
        };
        // Bound to the origin, signed by the key being enrolled.
        assert_eq!(
            enroll.binding,
            ChannelBinding::Origin(Origin::new(ORIGIN).unwrap())
        );
        let key = VerifyingKey::from_bytes(enroll.keys.identity.signing_key.as_bytes()).unwrap();
        let transcript = enroll_transcript(
            &nonce,
            &Binding::Origin(Origin::new(ORIGIN).unwrap()),
            &enroll.keys.identity.signing_key,
        );
        key.verify_strict(
            &transcript,
            &EdSignature::from_bytes(enroll.signature.as_bytes()),
        )
        .unwrap();
        engine
            .receive(
                &encode_server_frame(&ServerFrame::reply(
                    frame.request_id,
                    ServerMessage::AuthOk(answer),
                )),
                1_000,
            )
            .unwrap();
        engine
    }

    #[test]
    fn enrolment_is_origin_bound_and_sealed_under_the_password() {
        let mut engine = enrolled();
        assert!(engine.is_ready() && engine.login_required());
        let events = engine.take_events();
        assert_eq!(events.first().unwrap()["type"], "authenticated");
        assert!(
            engine.take_outgoing().is_empty(),
            "no prekey upload before login"
        );
        let sealed = engine
            .take_unsaved()
            .expect("the enrolled device is sealed");

        let reopened = Engine::unlock(&sealed, PASSWORD).unwrap();
        assert_eq!(reopened.whoami()["handle"], "dr.lee");
        let wrong = Engine::unlock(&sealed, "not the password!").unwrap_err();
        assert_eq!(wrong.code(), "WRONG_PASSWORD");
    }

    #[test]
    fn a_refused_invite_leaves_nothing_to_keep() {
        let mut engine = Engine::enroll(ORIGIN, "INVITE-123", PASSWORD, CHEAP, 1_000).unwrap();
        engine
            .receive(
                &push(ServerMessage::Challenge(Challenge {
                    nonce: [1; 32],
                    server_time_ms: 0,
                })),
                0,
            )
            .unwrap();
        let frame = decode_client_frame(engine.take_outgoing().first().unwrap()).unwrap();
        let refusal = ServerMessage::Error(WireError::new(ErrorCode::InviteInvalid, "no"));
        engine
            .receive(
                &encode_server_frame(&ServerFrame::reply(frame.request_id, refusal)),
                0,
            )
            .unwrap();
        assert_eq!(engine.take_events().first().unwrap()["type"], "auth_failed");
        assert!(engine.take_unsaved().is_none());
    }

    #[test]
    fn logoff_is_reported_and_a_lost_connection_fails_waiting_operations() {
        let mut engine = enrolled();
        engine.take_events();
        let op = engine.login(PASSWORD, "123456").unwrap();
        engine.connection_closed();
        let events = engine.take_events();
        let result = events.first().unwrap();
        assert_eq!(result["op"], op);
        assert_eq!(result["ok"], false);
        assert_eq!(result["code"], "DISCONNECTED");
        assert!(!engine.is_ready());

        let notice = WireError::new(ErrorCode::LoggedOff, "idle timeout");
        engine
            .receive(&push(ServerMessage::Error(notice)), 0)
            .unwrap();
        assert_eq!(engine.take_events().first().unwrap()["type"], "logged_off");
    }

    #[test]
    fn short_passwords_and_empty_messages_are_refused_before_anything_is_sent() {
        assert_eq!(
            Engine::enroll(ORIGIN, "INVITE-123", "short", CHEAP, 0)
                .unwrap_err()
                .code(),
            "INVALID_INPUT"
        );
        let mut engine = enrolled();
        engine.take_outgoing();
        assert!(engine.login("short", "123456").is_err());
        let id = ConversationId::from_array([4; 16]).to_string();
        assert!(engine.send_text(&id, "   ", 0).is_err());
        assert!(engine.take_outgoing().is_empty());
    }

    /// The one frame out, decoded.
    fn next_request(engine: &mut Engine) -> ClientFrame {
        let frames = engine.take_outgoing();
        assert_eq!(frames.len(), 1, "one frame out");
        decode_client_frame(frames.first().unwrap()).unwrap()
    }

    fn answer(engine: &mut Engine, request_id: u64, message: ServerMessage) {
        engine
            .receive(
                &encode_server_frame(&ServerFrame::reply(request_id, message)),
                1_000,
            )
            .unwrap();
    }

    /// Answers `get_conversation` with a conversation of this device alone (so a send needs
    /// no session).
    fn answer_members(engine: &mut Engine, conversation: ConversationId) {
        let frame = next_request(engine);
        assert!(matches!(
            frame.request,
            ClientRequest::GetConversation { .. }
        ));
        let me = medrelay_proto::Member {
            user_id: UserId::from_array([2; 16]),
            handle: Handle::new("dr.lee").unwrap(),
            role: Role::Staff,
            devices: vec![DeviceId::from_array([3; 16])],
            consent: medrelay_proto::ConsentState::NotApplicable,
        };
        answer(
            engine,
            frame.request_id,
            ServerMessage::Conversation(Conversation {
                id: conversation,
                members: vec![me],
            }),
        );
    }

    /// The send's frame once the members are known.
    fn members(engine: &mut Engine, conversation: ConversationId) -> ClientFrame {
        answer_members(engine, conversation);
        next_request(engine)
    }

    fn opens_to(keys: &medrelay_sdk::ArchiveKeyPair, item: &Bytes, text: &str) {
        let plain = medrelay_sdk::sealed_box::open(keys, item).unwrap();
        let record: medrelay_proto::e2e::ArchiveRecord =
            prost::Message::decode(plain.expose_secret()).unwrap();
        assert_eq!(record.sender_user_id.as_ref(), &[2; 16]);
        assert_eq!(record.sender_device_id.as_ref(), &[3; 16]);
        assert_eq!(record.content.unwrap().text, text);
    }

    #[test]
    fn sends_are_sealed_to_the_pinned_archive_key_and_a_changed_key_is_refused_until_accepted() {
        let key_a = medrelay_sdk::ArchiveKeyPair::generate(&mut OsRng);
        let key_b = medrelay_sdk::ArchiveKeyPair::generate(&mut OsRng);
        let public =
            |k: &medrelay_sdk::ArchiveKeyPair| X25519PublicKey::from_array(*k.public_key());
        // The org does not archive yet when the device enrols.
        let mut engine = enrolled_with(auth_ok(false));
        engine.take_outgoing();
        engine.take_events();
        let conversation = ConversationId::from_array([4; 16]);
        let id = conversation.to_string();

        // The org starts archiving after this connection authenticated: the server refuses the
        // send, the engine asks for a new connection and repeats the send there, sealed.
        let op = engine.send_text(&id, "first", 1_000).unwrap();
        let send = members(&mut engine, conversation);
        let ClientRequest::Send(request) = &send.request else {
            panic!("expected send")
        };
        assert!(request.archive_item.is_none());
        let client_message_id = request.client_message_id;
        answer(
            &mut engine,
            send.request_id,
            ServerMessage::Error(WireError::new(ErrorCode::ArchiveRequired, "archive")),
        );
        assert!(engine
            .take_events()
            .iter()
            .any(|e| e["type"] == "refresh_connection"));
        engine.connection_closed();
        assert!(
            engine.take_events().iter().all(|e| e["op"] != op),
            "the send survives the reconnection"
        );
        engine
            .receive(
                &push(ServerMessage::Challenge(Challenge {
                    nonce: [5; 32],
                    server_time_ms: 0,
                })),
                1_000,
            )
            .unwrap();
        let hello = next_request(&mut engine);
        let mut archiving = auth_ok(false);
        archiving.archive_public_key = Some(public(&key_a));
        answer(
            &mut engine,
            hello.request_id,
            ServerMessage::AuthOk(archiving.clone()),
        );
        let send = members(&mut engine, conversation);
        let ClientRequest::Send(request) = &send.request else {
            panic!("expected send")
        };
        assert_eq!(
            request.client_message_id, client_message_id,
            "the same message"
        );
        opens_to(&key_a, request.archive_item.as_ref().unwrap(), "first");
        assert_eq!(
            engine.state().unwrap().archive_key,
            Some(public(&key_a)),
            "pinned on first use"
        );

        // Another key on a later connection: announced, and nothing is sent until accepted.
        engine.connection_closed();
        engine.take_events();
        engine
            .receive(
                &push(ServerMessage::Challenge(Challenge {
                    nonce: [6; 32],
                    server_time_ms: 0,
                })),
                1_000,
            )
            .unwrap();
        let hello = next_request(&mut engine);
        let mut changed = archiving;
        changed.archive_public_key = Some(public(&key_b));
        answer(
            &mut engine,
            hello.request_id,
            ServerMessage::AuthOk(changed),
        );
        let fingerprint = archive_key_fingerprint(&public(&key_b));
        let events = engine.take_events();
        assert!(events.iter().any(
            |e| e["type"] == "archive_key_changed" && e["fingerprint"] == fingerprint.as_str()
        ));
        assert_eq!(engine.archive_key()["pinned"], false);
        let op = engine.send_text(&id, "second", 1_000).unwrap();
        answer_members(&mut engine, conversation);
        assert!(engine.take_outgoing().is_empty(), "nothing sent");
        let events = engine.take_events();
        let result = events.iter().find(|e| e["op"] == op).unwrap();
        assert_eq!(result["code"], "ARCHIVE_KEY_CHANGED");
        assert!(
            engine.accept_archive_key("0000").is_err(),
            "only the key shown"
        );
        engine.accept_archive_key(&fingerprint).unwrap();
        engine.send_text(&id, "third", 1_000).unwrap();
        let send = members(&mut engine, conversation);
        let ClientRequest::Send(request) = &send.request else {
            panic!("expected send")
        };
        opens_to(&key_b, request.archive_item.as_ref().unwrap(), "third");
    }
}
