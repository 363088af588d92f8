//! [`Client`]: an enrolled device talking to its server. It owns the key store and one
//! connection (an actor task owning the socket), reconnects with backoff when the connection
//! drops, and does the end-to-end work: client-side fan-out on send, decryption and
//! de-duplication on receive, prekey upkeep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medrelay_proto::limits::MAX_ACK_IDS;
use medrelay_proto::{
    auth_transcript, enroll_transcript, AccessLogFilter, AccessLogPage, AccessLogStatus,
    AckRequest, ArchivePage, AuthOk, AuthProof, Binding, Bytes, ChannelBinding, ClientMessageId,
    ClientRequest, ConsentText, Conversation, ConversationId, CredentialsSetup, DeviceId,
    DeviceInfo, DeviceLabel, EnrollRequest, Envelope, ErrorCode, Handle, Identity, InviteCode,
    InviteCreated, InviteSpec, ListConversations, MessageId, OpenConversation, Password,
    Permission, Policy, Reason, Retention, Role, RoleAllowList, SecondFactor, SendRequest,
    ServerMessage, Signature, SweepReport, Team, TeamId, TeamName, UploadPrekeys, UserId, UserInfo,
    WireError, X25519PublicKey,
};
use rand_core::{OsRng, RngCore};

use super::connection::{authenticate, Connection, Push};
use super::convert;
use super::plan::{self, Backoff, MismatchPlan};
use super::profile::{Profile, ReceivedMessage, PROFILE_VERSION};
use super::tls;
use super::{ServerUrl, TransportError};
use crate::content::{self, Content};
use crate::delivery::{peer_address, OpenError, Opened};
use crate::fingerprint::{safety_number, SafetyNumber};
use crate::identity::DeviceIdentity;
use crate::keystore::{KeyStore, StoreUpdate};
use crate::limits::{ONE_TIME_PREKEY_BATCH_SIZE, ONE_TIME_PREKEY_REPLENISH_THRESHOLD};
use crate::session::Session;

/// Where the server is and which CA its certificate chains to.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `wss://HOST:PORT`.
    pub url: ServerUrl,
    /// PEM of the CA certificate(s) to trust (required; no platform roots).
    pub ca_pem: String,
}

/// Timeouts and reconnection behaviour.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP + TLS + WebSocket upgrade.
    pub connect_timeout: Duration,
    /// One request's answer (a send's answer waits for the server's flush).
    pub request_timeout: Duration,
    /// Delays between reconnection attempts.
    pub backoff: Backoff,
    /// Connection attempts before an operation gives up.
    pub max_connect_attempts: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            max_connect_attempts: 6,
        }
    }
}

/// What a send returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The server's id for the message.
    pub message_id: MessageId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The client message id used (pass it again to retry the same send safely).
    pub client_message_id: ClientMessageId,
    /// When the server accepted it, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// True when the server had already accepted this client message id (a retry).
    pub duplicate: bool,
}

/// A delivery that could not be decrypted or decoded. It carries no content and says nothing
/// about why (the crypto core's single opaque error); the client has already acked it so it
/// does not block the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndecryptableMessage {
    /// The server's id.
    pub message_id: MessageId,
    /// The conversation, as the server labelled it.
    pub conversation_id: ConversationId,
    /// The sender, as the server authenticated them.
    pub sender_user_id: UserId,
    /// The sending device.
    pub sender_device_id: DeviceId,
    /// When the server accepted it.
    pub server_time_ms: u64,
}

/// What [`Client::recv`] yields.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A message; ack it with [`Client::ack`] once it is shown or stored.
    Message(ReceivedMessage),
    /// A delivery that failed to decrypt (already acked; see [`UndecryptableMessage`]).
    Undecryptable(UndecryptableMessage),
}

/// A safety number with one of a user's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSafetyNumber {
    /// The other user's device.
    pub device_id: DeviceId,
    /// The 60-digit number both sides can compare.
    pub number: SafetyNumber,
}

/// What a successful [`Client::login`] says about the session it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginSession {
    /// The session ends after this long without a request.
    pub idle_timeout_ms: u64,
    /// The session ends at this time whatever the activity, ms since the Unix epoch.
    pub session_expires_at_ms: u64,
}

/// Whether the server answers `request` on a staff or admin connection without a login
/// session (its `decide()`): everything else is `UNAUTHENTICATED` until [`Client::login`].
fn allowed_before_login(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Ping
            | ClientRequest::WhoAmI
            | ClientRequest::Logout
            | ClientRequest::SetupCredentials { .. }
            | ClientRequest::Login { .. }
    )
}

/// The session-binding address of a device of a user.
pub use crate::archive::archive_key_fingerprint;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An enrolled device connected to its server. See the module docs.
pub struct Client<K: KeyStore> {
    options: ClientOptions,
    tls: Arc<rustls::ClientConfig>,
    store: K,
    identity: DeviceIdentity,
    profile: Profile,
    connection: Option<Connection>,
    /// What the server said when this device last authenticated, kept current by login,
    /// logout and consent changes.
    auth: Option<AuthOk>,
}

impl<K: KeyStore> std::fmt::Debug for Client<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.profile.server)
            .field("device_id", &self.profile.device_id)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl<K: KeyStore> Client<K> {
    /// Enrols a new device with an invite code: generates its identity, uploads its public keys
    /// (with [`ONE_TIME_PREKEY_BATCH_SIZE`] one-time prekeys), and saves identity and profile in
    /// `store`, which must not hold an identity yet. The invite is spent once the server
    /// answers; if saving then fails, the device must be enrolled again with a new invite.
    pub async fn enroll(
        server: ServerConfig,
        options: ClientOptions,
        mut store: K,
        invite_code: InviteCode,
        device_label: DeviceLabel,
    ) -> Result<Self, TransportError> {
        if store.load_identity()?.is_some() {
            return Err(TransportError::InvalidArgument(
                "this key store already holds an enrolled device".into(),
            ));
        }
        let tls = tls::client_config(server.ca_pem.as_bytes())?;
        let identity = DeviceIdentity::generate(&mut OsRng, now_ms());
        let keys = convert::device_keys(&identity.public_keys())?;
        let (mut ws, exporter) =
            tls::open(&server.url, tls.clone(), options.connect_timeout).await?;
        let auth_ok = authenticate(
            &mut ws,
            exporter,
            |nonce, exporter| {
                let binding = Binding::TlsExporter(exporter);
                let transcript = enroll_transcript(nonce, &binding, &keys.identity.signing_key);
                let signature = identity.sign_auth_transcript(&transcript)?;
                Ok(ClientRequest::Enroll(Box::new(EnrollRequest {
                    invite_code,
                    keys: keys.clone(),
                    binding: ChannelBinding::TlsExporter,
                    signature: Signature::from_array(signature),
                    device_label,
                })))
            },
            options.request_timeout,
        )
        .await?;
        let profile = Profile {
            version: PROFILE_VERSION,
            server: server.url,
            ca_pem: server.ca_pem,
            org_id: auth_ok.org_id,
            org_name: None,
            user_id: auth_ok.user_id,
            device_id: auth_ok.device_id,
            handle: auth_ok.handle.clone(),
            role: auth_ok.role,
            handles: BTreeMap::from([(auth_ok.user_id, auth_ok.handle.clone())]),
            processed: Default::default(),
            seen_client_messages: Default::default(),
            pending: Vec::new(),
            // Trust on first use: the archive key the org has when this device enrols.
            archive_key: auth_ok.archive_public_key,
        };
        let blob = profile.to_bytes()?;
        store.apply(&StoreUpdate {
            identity: Some(&identity),
            profile: Some(&blob),
            ..StoreUpdate::default()
        })?;
        tracing::info!(device = %auth_ok.device_id, "device enrolled");
        let remaining = auth_ok.one_time_prekeys_remaining;
        let mut client = Self {
            connection: Some(Connection::spawn(ws, options.request_timeout)),
            options,
            tls,
            store,
            identity,
            profile,
            auth: Some(auth_ok),
        };
        // Staff and admins upload nothing before they log in (the server would refuse it);
        // the enrolment carried a full batch of one-time prekeys anyway.
        if client.login_blocker().is_none() {
            client.maintain_prekeys(remaining).await?;
        }
        Ok(client)
    }

    /// Opens an enrolled key store and authenticates to the server its profile names.
    pub async fn connect(options: ClientOptions, store: K) -> Result<Self, TransportError> {
        let mut client = Self::open(options, store)?;
        client.ensure_connected().await?;
        Ok(client)
    }

    /// Opens an enrolled key store without connecting yet (the first request connects).
    pub fn open(options: ClientOptions, store: K) -> Result<Self, TransportError> {
        let identity = store
            .load_identity()?
            .ok_or(TransportError::NotEnrolled("no device identity"))?;
        let blob = store
            .load_profile()?
            .ok_or(TransportError::NotEnrolled("no profile"))?;
        let profile = Profile::from_bytes(blob.expose_secret())?;
        let tls = tls::client_config(profile.ca_pem.as_bytes())?;
        Ok(Self {
            options,
            tls,
            store,
            identity,
            profile,
            connection: None,
            auth: None,
        })
    }

    /// The stored profile: server, ids, handle, role.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The key store.
    pub fn store(&self) -> &K {
        &self.store
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Closes the connection (the next request reconnects).
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    /// What the server said when this device last authenticated (`auth_ok`), kept current
    /// by [`Client::login`], [`Client::logout`] and the consent calls. `None` before the first
    /// connection ([`Client::open`] does not connect; [`Client::connect`] does).
    pub fn auth_ok(&self) -> Option<&AuthOk> {
        self.auth.as_ref()
    }

    /// Staff and admins: no login session on this device; [`Client::login`] first. Until
    /// then every request but `whoami`, `ping`, `logout`, `setup_credentials` and `login`
    /// fails with [`TransportError::LoginRequired`] without being sent.
    pub fn login_required(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.login_required)
    }

    /// Staff and admins: no password and TOTP yet; [`Client::setup_credentials`], then
    /// [`Client::login`].
    pub fn credentials_required(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.credentials_required)
    }

    /// Patients: the clinic's consent text must be accepted ([`Client::accept_consent`])
    /// before messaging.
    pub fn consent_required(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.consent_required)
    }

    /// Patients: the consent text the server showed at authentication (present whenever
    /// consent is required; the server also sends it once accepted).
    pub fn consent_text(&self) -> Option<&ConsentText> {
        self.auth.as_ref().and_then(|a| a.consent_text.as_ref())
    }

    /// Why requests that need a login session cannot be sent now, if they cannot.
    fn login_blocker(&self) -> Option<TransportError> {
        let auth = self.auth.as_ref()?;
        (auth.credentials_required || auth.login_required).then_some(
            TransportError::LoginRequired {
                credentials_required: auth.credentials_required,
            },
        )
    }

    fn save_profile(&mut self) -> Result<(), TransportError> {
        let blob = self.profile.to_bytes()?;
        self.store.save_profile(&blob)?;
        Ok(())
    }

    async fn connect_once(&mut self) -> Result<AuthOk, TransportError> {
        let (mut ws, exporter) = tls::open(
            &self.profile.server,
            self.tls.clone(),
            self.options.connect_timeout,
        )
        .await?;
        let device_id = self.profile.device_id;
        let identity = &self.identity;
        let auth_ok = authenticate(
            &mut ws,
            exporter,
            |nonce, exporter| {
                let binding = Binding::TlsExporter(exporter);
                let transcript = auth_transcript(nonce, &binding, &device_id);
                let signature = identity.sign_auth_transcript(&transcript)?;
                Ok(ClientRequest::Auth(AuthProof {
                    device_id,
                    binding: ChannelBinding::TlsExporter,
                    signature: Signature::from_array(signature),
                }))
            },
            self.options.request_timeout,
        )
        .await?;
        if auth_ok.device_id != device_id || auth_ok.user_id != self.profile.user_id {
            return Err(TransportError::Protocol(
                "auth_ok names another device than the one that authenticated".into(),
            ));
        }
        self.connection = Some(Connection::spawn(ws, self.options.request_timeout));
        Ok(auth_ok)
    }

    /// Connects if needed, retrying transient failures with backoff and jitter.
    async fn ensure_connected(&mut self) -> Result<(), TransportError> {
        if self.is_connected() {
            return Ok(());
        }
        self.connection = None;
        self.auth = None;
        let mut attempt = 0u32;
        loop {
            match self.connect_once().await {
                Ok(auth_ok) => {
                    if auth_ok.handle != self.profile.handle || auth_ok.role != self.profile.role {
                        self.profile.handle = auth_ok.handle.clone();
                        self.profile.role = auth_ok.role;
                        self.save_profile()?;
                    }
                    let remaining = auth_ok.one_time_prekeys_remaining;
                    self.auth = Some(auth_ok);
                    // Before a staff login the server refuses uploads: upkeep runs after it.
                    if self.login_blocker().is_none() {
                        self.upkeep(remaining).await;
                    }
                    return Ok(());
                }
                Err(error)
                    if error.is_transient() && attempt + 1 < self.options.max_connect_attempts =>
                {
                    let delay = self.options.backoff.delay(attempt, OsRng.next_u32());
                    tracing::info!(%error, ?delay, "connection failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Prekey upkeep that only logs a failure (it is retried on the next connection).
    async fn upkeep(&mut self, server_remaining: u32) {
        if let Err(error) = self.maintain_prekeys(server_remaining).await {
            tracing::warn!(%error, "prekey upkeep failed; will retry on the next connection");
        }
    }

    /// One request on the current connection (connecting first if needed). A request that
    /// needs a login session is not sent while there is none.
    async fn request_once(
        &mut self,
        request: ClientRequest,
    ) -> Result<ServerMessage, TransportError> {
        self.ensure_connected().await?;
        if !allowed_before_login(&request) {
            if let Some(blocked) = self.login_blocker() {
                return Err(blocked);
            }
        }
        let connection = self
            .connection
            .as_ref()
            .ok_or_else(|| TransportError::Disconnected("not connected".into()))?;
        let result = connection.request(request).await;
        if matches!(
            result,
            Err(TransportError::Disconnected(_)
                | TransportError::Timeout(_)
                | TransportError::LoggedOff(_))
        ) {
            self.connection = None;
        }
        result
    }

    /// After the server pushed `LOGGED_OFF` (and closed): reconnects once. The notice
    /// stands, as [`TransportError::LoggedOff`], when the new connection needs a login
    /// session that `request` needs (or when the device can no longer authenticate: a
    /// revoked device gets `AUTH_FAILED`); otherwise the connection merely ended (a restart,
    /// an idle connection) and the caller may go on.
    async fn after_logoff(
        &mut self,
        notice: WireError,
        request: Option<&ClientRequest>,
    ) -> Result<(), TransportError> {
        self.connection = None;
        self.ensure_connected().await?;
        let needs_login = request.is_none_or(|r| !allowed_before_login(r));
        if needs_login && self.login_blocker().is_some() {
            return Err(TransportError::LoggedOff(notice));
        }
        Ok(())
    }

    /// A request that is safe to repeat (idempotent on the server), repeated across
    /// reconnections while the failure is a dropped connection or a timeout.
    async fn request(&mut self, request: ClientRequest) -> Result<ServerMessage, TransportError> {
        let mut attempt = 0u32;
        loop {
            match self.request_once(request.clone()).await {
                Err(error @ (TransportError::Disconnected(_) | TransportError::Timeout(_)))
                    if attempt + 1 < self.options.max_connect_attempts =>
                {
                    let delay = self.options.backoff.delay(attempt, OsRng.next_u32());
                    tracing::info!(%error, ?delay, request = request.name(), "request failed; reconnecting");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                // A logoff is final unless the reconnection shows the session survived.
                Err(TransportError::LoggedOff(notice))
                    if attempt + 1 < self.options.max_connect_attempts =>
                {
                    self.after_logoff(notice, Some(&request)).await?;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Uploads one-time prekeys when the server holds fewer than the replenish threshold, and
    /// rotates the signed and ML-KEM prekeys when due. The identity is saved before the
    /// upload, so the server never hands out a key this device lost.
    async fn maintain_prekeys(&mut self, server_remaining: u32) -> Result<(), TransportError> {
        let now = now_ms();
        let mut identity = self.identity.clone();
        identity.prune_retired_prekeys(now);
        let mut upload = UploadPrekeys {
            one_time_prekeys: Vec::new(),
            signed_prekey: None,
            pq_prekey: None,
        };
        if identity.prekey_rotation_due(now) {
            let spk = identity.rotate_signed_prekey(&mut OsRng, now)?;
            let pq = identity.rotate_pq_prekey(&mut OsRng, now)?;
            upload.signed_prekey = Some(convert::signed_prekey(&spk));
            upload.pq_prekey = Some(convert::pq_prekey(&pq)?);
        }
        if (server_remaining as usize) < ONE_TIME_PREKEY_REPLENISH_THRESHOLD {
            let fresh = identity.generate_one_time_prekeys(ONE_TIME_PREKEY_BATCH_SIZE, &mut OsRng);
            upload.one_time_prekeys = convert::one_time_prekeys(&fresh);
        }
        self.store.save_identity(&identity)?;
        self.identity = identity;
        if upload.one_time_prekeys.is_empty() && upload.signed_prekey.is_none() {
            return Ok(());
        }
        // On the current connection only (this runs while connecting): a failure is retried
        // on the next connection, whose auth_ok reports the count again.
        let connection = self
            .connection
            .as_ref()
            .ok_or_else(|| TransportError::Disconnected("not connected".into()))?;
        match connection
            .request(ClientRequest::UploadPrekeys(upload))
            .await?
        {
            ServerMessage::PrekeysUploaded {
                one_time_prekeys_remaining,
            } => {
                tracing::debug!(one_time_prekeys_remaining, "prekeys uploaded");
                Ok(())
            }
            other => Err(unexpected("prekeys_uploaded", &other)),
        }
    }

    /// Who this device is, according to the server (and the org's name).
    pub async fn whoami(&mut self) -> Result<Identity, TransportError> {
        match self.request(ClientRequest::WhoAmI).await? {
            ServerMessage::Identity(identity) => {
                if self.profile.org_name.as_deref() != Some(identity.org_name.as_str()) {
                    self.profile.org_name = Some(identity.org_name.clone());
                    self.save_profile()?;
                }
                Ok(identity)
            }
            other => Err(unexpected("identity", &other)),
        }
    }

    /// Creates an invite (a new user with a role and handle, or another device of this
    /// account). Not repeated after a dropped connection: a lost answer would leave an invite
    /// nobody knows the code of, so the caller decides.
    pub async fn create_invite(
        &mut self,
        spec: InviteSpec,
    ) -> Result<InviteCreated, TransportError> {
        match self.request_once(ClientRequest::CreateInvite(spec)).await? {
            ServerMessage::InviteCreated(invite) => Ok(invite),
            other => Err(unexpected("invite_created", &other)),
        }
    }

    // ---- access control

    /// Staff and admins, once after enrolment: sets the password and returns the TOTP secret,
    /// its `otpauth://` URI and the recovery codes, shown this once. They take effect at the
    /// first successful [`Client::login`]; until then setting up again replaces them. Sent
    /// once (a lost answer means running it again).
    pub async fn setup_credentials(
        &mut self,
        password: Password,
    ) -> Result<CredentialsSetup, TransportError> {
        match self
            .request_once(ClientRequest::SetupCredentials { password })
            .await?
        {
            ServerMessage::CredentialsSetup(setup) => Ok(setup),
            other => Err(unexpected("credentials_setup", &other)),
        }
    }

    /// Staff and admins: starts a login session on this device with the password and a TOTP
    /// or recovery code. It survives reconnections until the idle timeout or the session
    /// lifetime. Sent once, never repeated: each code works once, and a repeat would count
    /// as a failed attempt towards the lockout (`LOCKED_OUT`, with `retry_after_ms`).
    pub async fn login(
        &mut self,
        password: Password,
        second_factor: SecondFactor,
    ) -> Result<LoginSession, TransportError> {
        let request = ClientRequest::Login {
            password,
            second_factor,
        };
        match self.request_once(request).await? {
            ServerMessage::LoginOk {
                idle_timeout_ms,
                session_expires_at_ms,
            } => {
                let mut remaining = None;
                if let Some(auth) = self.auth.as_mut() {
                    auth.login_required = false;
                    auth.credentials_required = false;
                    remaining = Some(auth.one_time_prekeys_remaining);
                }
                // The upkeep skipped while logged off.
                if let Some(remaining) = remaining {
                    self.upkeep(remaining).await;
                }
                Ok(LoginSession {
                    idle_timeout_ms,
                    session_expires_at_ms,
                })
            }
            other => Err(unexpected("login_ok", &other)),
        }
    }

    /// Ends this device's login session (staff and admins); the next request that needs one
    /// fails with [`TransportError::LoginRequired`] until [`Client::login`].
    pub async fn logout(&mut self) -> Result<(), TransportError> {
        self.done(ClientRequest::Logout, false).await?;
        if let Some(auth) = self.auth.as_mut() {
            if auth.role != Role::Patient {
                auth.login_required = true;
            }
        }
        Ok(())
    }

    /// Changes the caller's password. Sent once (a wrong current password counts towards
    /// the lockout).
    pub async fn change_password(
        &mut self,
        current: Password,
        new: Password,
    ) -> Result<(), TransportError> {
        self.done(ClientRequest::ChangePassword { current, new }, false)
            .await
    }

    /// The org's users, with effective permissions and consent (needs `manage_staff` or
    /// `manage_care_teams`).
    pub async fn list_users(&mut self) -> Result<Vec<UserInfo>, TransportError> {
        match self.request(ClientRequest::ListUsers).await? {
            // Not remembered in the profile: the directory is not this device's to keep.
            ServerMessage::UserList(users) => Ok(users),
            other => Err(unexpected("user_list", &other)),
        }
    }

    /// A user's devices, revoked ones included; `None` for the caller's own.
    pub async fn list_devices(
        &mut self,
        user_id: Option<UserId>,
    ) -> Result<Vec<DeviceInfo>, TransportError> {
        match self.request(ClientRequest::ListDevices { user_id }).await? {
            ServerMessage::DeviceList(devices) => Ok(devices),
            other => Err(unexpected("device_list", &other)),
        }
    }

    /// Revokes a device at once (one's own, or anyone's with `manage_staff`).
    pub async fn revoke_device(&mut self, device_id: DeviceId) -> Result<(), TransportError> {
        self.done(ClientRequest::RevokeDevice { device_id }, true)
            .await
    }

    /// Deactivates a user: every device revoked, no further enrolment.
    pub async fn deactivate_user(&mut self, user_id: UserId) -> Result<(), TransportError> {
        self.done(ClientRequest::DeactivateUser { user_id }, true)
            .await
    }

    /// Replaces the permissions granted to a user beyond their role's; empty clears them.
    pub async fn set_permissions(
        &mut self,
        user_id: UserId,
        grants: Vec<Permission>,
    ) -> Result<(), TransportError> {
        self.done(ClientRequest::SetPermissions { user_id, grants }, true)
            .await
    }

    /// Creates a care team with no members. Sent once (a repeat would create another).
    pub async fn create_team(&mut self, name: TeamName) -> Result<Team, TransportError> {
        match self
            .request_once(ClientRequest::CreateTeam { name })
            .await?
        {
            ServerMessage::Team(team) => Ok(team),
            other => Err(unexpected("team", &other)),
        }
    }

    /// Replaces a team's staff.
    pub async fn set_team_members(
        &mut self,
        team_id: TeamId,
        staff_user_ids: Vec<UserId>,
    ) -> Result<Team, TransportError> {
        let request = ClientRequest::SetTeamMembers {
            team_id,
            staff_user_ids,
        };
        match self.request(request).await? {
            ServerMessage::Team(team) => Ok(team),
            other => Err(unexpected("team", &other)),
        }
    }

    /// The org's care teams.
    pub async fn list_teams(&mut self) -> Result<Vec<Team>, TransportError> {
        match self.request(ClientRequest::ListTeams).await? {
            ServerMessage::TeamList(teams) => Ok(teams),
            other => Err(unexpected("team_list", &other)),
        }
    }

    /// Replaces who cares for a patient: staff directly and teams. The patient's
    /// conversation then has exactly them (and the patient).
    pub async fn assign_care(
        &mut self,
        patient_user_id: UserId,
        staff_user_ids: Vec<UserId>,
        team_ids: Vec<TeamId>,
    ) -> Result<(), TransportError> {
        let request = ClientRequest::AssignCare {
            patient_user_id,
            staff_user_ids,
            team_ids,
        };
        self.done(request, true).await
    }

    /// The org's policy: session timeouts, allow-lists, consent text.
    pub async fn get_policy(&mut self) -> Result<Policy, TransportError> {
        match self.request(ClientRequest::GetPolicy).await? {
            ServerMessage::Policy(policy) => Ok(policy),
            other => Err(unexpected("policy", &other)),
        }
    }

    /// The org's retention settings, legal holds and archive key.
    pub async fn get_retention(&mut self) -> Result<Retention, TransportError> {
        match self.request(ClientRequest::GetRetention).await? {
            ServerMessage::Retention(retention) => Ok(retention),
            other => Err(unexpected("retention", &other)),
        }
    }

    /// Sets how long undelivered mail and the org archive are kept.
    pub async fn set_retention(
        &mut self,
        mail_days: u32,
        archive_days: u32,
    ) -> Result<(), TransportError> {
        let request = ClientRequest::SetRetention {
            mail_days,
            archive_days,
        };
        self.done(request, true).await
    }

    /// Places (`held`) or lifts a legal hold on one conversation, or (`None`) on the org.
    pub async fn set_hold(
        &mut self,
        conversation_id: Option<ConversationId>,
        held: bool,
    ) -> Result<(), TransportError> {
        let request = ClientRequest::SetHold {
            conversation_id,
            held,
        };
        self.done(request, true).await
    }

    /// Enables the org archive with this public key (from `medrelay archive keygen` on the
    /// privacy officer's machine), or disables it with `None`.
    pub async fn set_archive_key(
        &mut self,
        public_key: Option<X25519PublicKey>,
    ) -> Result<(), TransportError> {
        self.done(ClientRequest::SetArchiveKey { public_key }, true)
            .await
    }

    /// One page of the org archive after `after_seq`, of items stored at or after `since_ms`.
    pub async fn export_archive(
        &mut self,
        since_ms: u64,
        after_seq: u64,
    ) -> Result<ArchivePage, TransportError> {
        let request = ClientRequest::ExportArchive {
            since_ms,
            after_seq,
            limit: u32::try_from(medrelay_proto::limits::MAX_ARCHIVE_PAGE).unwrap_or(u32::MAX),
        };
        match self.request(request).await? {
            ServerMessage::ArchivePage(page) => Ok(page),
            other => Err(unexpected("archive_page", &other)),
        }
    }

    /// Runs the retention sweeper now.
    pub async fn run_sweep(&mut self) -> Result<SweepReport, TransportError> {
        match self.request(ClientRequest::RunSweep).await? {
            ServerMessage::SweepReport(report) => Ok(report),
            other => Err(unexpected("sweep_report", &other)),
        }
    }

    /// Verifies the access log's chain and signed checkpoints on the server now.
    pub async fn verify_access_log(&mut self) -> Result<AccessLogStatus, TransportError> {
        match self.request(ClientRequest::VerifyAccessLog).await? {
            ServerMessage::AccessLogStatus(status) => Ok(status),
            other => Err(unexpected("access_log_status", &other)),
        }
    }

    /// One page of the org's access-log entries matching `filter`.
    pub async fn export_access_log(
        &mut self,
        filter: AccessLogFilter,
    ) -> Result<AccessLogPage, TransportError> {
        match self.request(ClientRequest::ExportAccessLog(filter)).await? {
            ServerMessage::AccessLogPage(page) => Ok(page),
            other => Err(unexpected("access_log_page", &other)),
        }
    }

    /// Sets the staff and admin session timeouts (idle 1 s to 24 h; lifetime from the idle
    /// timeout to 7 days).
    pub async fn set_session_policy(
        &mut self,
        idle_timeout_ms: u64,
        session_lifetime_ms: u64,
    ) -> Result<(), TransportError> {
        let request = ClientRequest::SetSessionPolicy {
            idle_timeout_ms,
            session_lifetime_ms,
        };
        self.done(request, true).await
    }

    /// Replaces one role's IP allow-list; an empty list allows every address.
    pub async fn set_allow_list(&mut self, list: RoleAllowList) -> Result<(), TransportError> {
        self.done(ClientRequest::SetAllowList(list), true).await
    }

    /// Sets the consent text patients must accept.
    pub async fn set_consent_text(&mut self, text: ConsentText) -> Result<(), TransportError> {
        self.done(ClientRequest::SetConsentText { text }, true)
            .await
    }

    /// Patients: accepts the consent text the server showed when this connection
    /// authenticated ([`Client::consent_text`]), by its SHA-256, so a text changed since is
    /// refused rather than accepted unseen. Connects first if needed.
    pub async fn accept_consent(&mut self) -> Result<(), TransportError> {
        self.ensure_connected().await?;
        let text_sha256 = self
            .consent_text()
            .map(ConsentText::sha256)
            .ok_or_else(|| {
                TransportError::InvalidArgument(
                    "the server showed no consent text to accept (consent is for patients)".into(),
                )
            })?;
        self.done(ClientRequest::AcceptConsent { text_sha256 }, true)
            .await?;
        if let Some(auth) = self.auth.as_mut() {
            auth.consent_required = false;
        }
        Ok(())
    }

    /// Patients: withdraws consent; staff may no longer message this patient.
    pub async fn withdraw_consent(&mut self) -> Result<(), TransportError> {
        self.done(ClientRequest::WithdrawConsent, true).await?;
        if let Some(auth) = self.auth.as_mut() {
            auth.consent_required = true;
        }
        Ok(())
    }

    /// Grants a staff member access to a patient's conversation for `duration_ms` (1 ms to
    /// 24 h); returns when it ends. Sent once (each grant is its own access-log entry).
    pub async fn grant_break_glass(
        &mut self,
        staff_user_id: UserId,
        patient_user_id: UserId,
        reason: Reason,
        duration_ms: u64,
    ) -> Result<u64, TransportError> {
        let request = ClientRequest::GrantBreakGlass {
            staff_user_id,
            patient_user_id,
            reason,
            duration_ms,
        };
        match self.request_once(request).await? {
            ServerMessage::BreakGlassGranted { expires_at_ms } => Ok(expires_at_ms),
            other => Err(unexpected("break_glass_granted", &other)),
        }
    }

    /// A request answered `done`: repeated across reconnections when `idempotent`.
    async fn done(
        &mut self,
        request: ClientRequest,
        idempotent: bool,
    ) -> Result<(), TransportError> {
        let name = request.name();
        let answer = if idempotent {
            self.request(request).await?
        } else {
            self.request_once(request).await?
        };
        match answer {
            ServerMessage::Done => Ok(()),
            other => Err(TransportError::Protocol(format!(
                "expected done to {name}, got {}",
                other.name()
            ))),
        }
    }

    fn remember_members(&mut self, conversation: &Conversation) -> Result<(), TransportError> {
        let mut changed = false;
        for member in &conversation.members {
            changed |= self.profile.remember_handle(member.user_id, &member.handle);
        }
        if changed {
            self.save_profile()?;
        }
        Ok(())
    }

    /// Opens (creating on first use) the conversation of this user and `handles`.
    pub async fn open_conversation(
        &mut self,
        handles: &[Handle],
    ) -> Result<Conversation, TransportError> {
        let request = ClientRequest::OpenConversation(OpenConversation {
            handles: handles.to_vec(),
        });
        match self.request(request).await? {
            ServerMessage::Conversation(c) => {
                self.remember_members(&c)?;
                Ok(c)
            }
            other => Err(unexpected("conversation", &other)),
        }
    }

    /// One conversation, with its members' current devices.
    pub async fn conversation(
        &mut self,
        id: ConversationId,
    ) -> Result<Conversation, TransportError> {
        let request = ClientRequest::GetConversation {
            conversation_id: id,
        };
        match self.request(request).await? {
            ServerMessage::Conversation(c) => {
                self.remember_members(&c)?;
                Ok(c)
            }
            other => Err(unexpected("conversation", &other)),
        }
    }

    /// Every conversation of this user, following the server's pages.
    pub async fn list_conversations(&mut self) -> Result<Vec<Conversation>, TransportError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let request = ClientRequest::ListConversations(ListConversations { after });
            let page = match self.request(request).await? {
                ServerMessage::ConversationList(page) => page,
                other => return Err(unexpected("conversation_list", &other)),
            };
            let last = page.conversations.last().map(|c| c.id);
            for c in &page.conversations {
                self.remember_members(c)?;
            }
            all.extend(page.conversations);
            match (page.more, last) {
                (true, Some(last)) if after.is_none_or(|a| last > a) => after = Some(last),
                _ => return Ok(all),
            }
        }
    }

    /// Sends `text` to a conversation: one envelope per recipient device (every member's
    /// devices, this user's other devices included, this device excluded). Sessions are
    /// started where missing (fetching prekeys for those devices only), and every advanced
    /// session is saved before the frame goes out, so no message key is ever used twice. On
    /// `DEVICES_MISMATCH` the send is re-planned and repeated a bounded number of times with
    /// the same client message id; across reconnections it is repeated too (the server
    /// de-duplicates by client message id). Pass `client_message_id` to make a retry of an
    /// earlier call safe.
    pub async fn send_text(
        &mut self,
        conversation_id: ConversationId,
        text: &str,
        client_message_id: Option<ClientMessageId>,
    ) -> Result<SendReceipt, TransportError> {
        let client_message_id =
            client_message_id.unwrap_or_else(|| ClientMessageId::random(&mut OsRng));
        let content = Content {
            client_message_id: Bytes::copy_from_slice(client_message_id.as_bytes()),
            conversation_id: Bytes::copy_from_slice(conversation_id.as_bytes()),
            sent_at_ms: now_ms(),
            text: text.to_owned(),
            padding: Bytes::new(),
        };
        let plaintext = content::encode_padded(&content, &mut OsRng);
        let mut conversation = self.conversation(conversation_id).await?;
        let mut retries = 0u32;
        let mut archive_refreshed = false;
        loop {
            // Checked before anything is encrypted: a changed key stops the send whole.
            let archive_key = self.pinned_archive_key()?;
            let envelopes = self
                .encrypt_for(&conversation, plaintext.expose_secret())
                .await?;
            // The archived copy is padded like the message itself, so its length leaks as
            // little.
            let padded = content::decode(plaintext.expose_secret())
                .map_err(|e| TransportError::Crypto(e.to_string()))?;
            let archive_item = self.archive_item(archive_key.as_ref(), &padded)?;
            let request = ClientRequest::Send(SendRequest {
                conversation_id,
                client_message_id,
                envelopes,
                archive_item,
            });
            match self.request(request).await {
                Ok(ServerMessage::SendAccepted(accepted)) => {
                    return Ok(SendReceipt {
                        message_id: accepted.message_id,
                        conversation_id,
                        client_message_id,
                        server_time_ms: accepted.server_time_ms,
                        duplicate: accepted.duplicate,
                    })
                }
                Ok(other) => return Err(unexpected("send_accepted", &other)),
                Err(TransportError::Server(error))
                    if error.code == ErrorCode::ArchiveRequired && !archive_refreshed =>
                {
                    // The org's archive key changed since this connection authenticated:
                    // reconnect to learn it, then send again (same client message id).
                    tracing::info!("the org archives messages now; reconnecting to learn its key");
                    self.disconnect();
                    self.ensure_connected().await?;
                    archive_refreshed = true;
                }
                Err(TransportError::Server(error)) => match plan::plan_mismatch(&error, retries) {
                    MismatchPlan::Retry { delete_sessions } => {
                        tracing::info!(
                            missing = error.missing_devices.len(),
                            stale = error.stale_devices.len(),
                            "recipients' devices changed; re-planning the send"
                        );
                        let deleted: Vec<crate::DeviceId> = delete_sessions
                            .iter()
                            .map(convert::store_device_id)
                            .collect();
                        self.store.apply(&StoreUpdate {
                            deleted_sessions: deleted,
                            ..StoreUpdate::default()
                        })?;
                        conversation = self.conversation(conversation_id).await?;
                        retries += 1;
                    }
                    MismatchPlan::GiveUp => return Err(TransportError::Server(error)),
                },
                Err(other) => return Err(other),
            }
        }
    }

    /// The org archive key to seal to, if the org archives: the one pinned on this device
    /// (pinned now if this is the first), or [`TransportError::ArchiveKeyChanged`].
    fn pinned_archive_key(&mut self) -> Result<Option<X25519PublicKey>, TransportError> {
        let Some(key) = self.auth_ok().and_then(|ok| ok.archive_public_key) else {
            return Ok(None);
        };
        match self.profile.archive_key {
            Some(pinned) if pinned == key => Ok(Some(key)),
            Some(_) => Err(TransportError::ArchiveKeyChanged {
                fingerprint: archive_key_fingerprint(&key),
            }),
            None => {
                self.profile.archive_key = Some(key);
                self.save_profile()?;
                Ok(Some(key))
            }
        }
    }

    /// The org archive key the server announces now and its fingerprint (to compare with the
    /// privacy officer's), and whether it is the one this device pinned. Connects if needed.
    pub async fn archive_key(
        &mut self,
    ) -> Result<Option<(X25519PublicKey, String, bool)>, TransportError> {
        self.ensure_connected().await?;
        Ok(self
            .auth_ok()
            .and_then(|ok| ok.archive_public_key)
            .map(|key| {
                let pinned = self.profile.archive_key == Some(key);
                (key, archive_key_fingerprint(&key), pinned)
            }))
    }

    /// Accepts (pins) the org archive key the server announces now, after the user checked
    /// its fingerprint with the clinic's privacy officer. Returns the fingerprint.
    pub async fn accept_archive_key(&mut self) -> Result<Option<String>, TransportError> {
        self.ensure_connected().await?;
        let key = self.auth_ok().and_then(|ok| ok.archive_public_key);
        self.profile.archive_key = key;
        self.save_profile()?;
        Ok(key.as_ref().map(archive_key_fingerprint))
    }

    /// When the org archives, the message sealed to the archive key as an `ArchiveRecord`:
    /// the privacy officer's offline key alone opens it.
    fn archive_item(
        &self,
        key: Option<&X25519PublicKey>,
        content: &Content,
    ) -> Result<Option<Bytes>, TransportError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let sealed = crate::archive::seal_record(
            key,
            self.profile.user_id.as_bytes(),
            self.profile.device_id.as_bytes(),
            content,
            &mut OsRng,
        )
        .map_err(|e| TransportError::Crypto(format!("could not seal to the archive key: {e}")))?;
        Ok(Some(Bytes::from(sealed)))
    }

    /// Encrypts `plaintext` once per recipient device of `conversation`, starting missing
    /// sessions, and saves every advanced session (one atomic write) before returning.
    async fn encrypt_for(
        &mut self,
        conversation: &Conversation,
        plaintext: &[u8],
    ) -> Result<Vec<Envelope>, TransportError> {
        let recipients = plan::recipients(conversation, &self.profile.device_id);
        let mut sessions: BTreeMap<DeviceId, Session> = BTreeMap::new();
        for r in &recipients {
            if let Some(mut s) = self
                .store
                .load_session(&convert::store_device_id(&r.device))?
            {
                // A device never changes user: a conversation listing a device under another
                // user than its session's is refused, not silently re-labelled.
                s.bind_peer(peer_address(&r.user, &r.device)).map_err(|_| {
                    TransportError::Crypto(format!(
                        "device {} is listed under another user than the one its session was \
                         set up with; not sending",
                        r.device
                    ))
                })?;
                sessions.insert(r.device, s);
            }
        }
        let needed = plan::needing_sessions(&recipients, |d| sessions.contains_key(d));
        if !needed.is_empty() {
            let fetch = plan::fetch_request(&needed);
            let bundles = match self.request(ClientRequest::FetchPrekeys(fetch)).await? {
                ServerMessage::PrekeyBundles(b) => b,
                other => return Err(unexpected("prekey_bundles", &other)),
            };
            for wire in &bundles {
                // Bound to the recipient planned from the conversation, not to the bundle's
                // own labels.
                let Some(r) = needed.iter().find(|r| r.device == wire.device_id) else {
                    continue;
                };
                let mut session =
                    Session::initiate(&self.identity, &convert::bundle(wire), &mut OsRng).map_err(
                        |e| {
                            TransportError::Crypto(format!(
                                "device {} published an unusable prekey bundle: {e}",
                                wire.device_id
                            ))
                        },
                    )?;
                session.bind_peer(peer_address(&r.user, &r.device))?;
                sessions.insert(wire.device_id, session);
            }
        }
        let mut envelopes = Vec::with_capacity(sessions.len());
        for r in &recipients {
            // A device with no bundle (revoked meanwhile) is left out; the server's
            // DEVICES_MISMATCH answer then re-plans the send.
            if let Some(session) = sessions.get_mut(&r.device) {
                envelopes.push(Envelope {
                    recipient_device: r.device,
                    ciphertext: Bytes::from(session.encrypt(plaintext)?),
                });
            }
        }
        let saved: Vec<(crate::DeviceId, &Session)> = sessions
            .iter()
            .map(|(d, s)| (convert::store_device_id(d), s))
            .collect();
        self.store.apply(&StoreUpdate {
            sessions: saved,
            ..StoreUpdate::default()
        })?;
        Ok(envelopes)
    }

    /// Waits up to `timeout` for the next message. Redelivered messages already processed are
    /// acked silently (or returned again if they were returned but never acked); prekey
    /// warnings are handled on the way; a dropped connection is re-established. A message is
    /// recorded as processed, durably, before it is returned: ack it with [`Client::ack`] once
    /// shown or stored. A delivery that fails to decrypt is acked and returned as
    /// [`Incoming::Undecryptable`], with no content.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Incoming>, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut logoffs = 0u32;
        loop {
            self.ensure_connected().await?;
            // The server would refuse the acks (and should not deliver) before a login.
            if let Some(blocked) = self.login_blocker() {
                return Err(blocked);
            }
            let Some(connection) = self.connection.as_mut() else {
                continue;
            };
            let Some(push) = connection.next_push(deadline).await else {
                return Ok(None);
            };
            match push {
                Push::Delivery(delivery) => {
                    if let Some(incoming) = self.process_delivery(delivery).await? {
                        return Ok(Some(incoming));
                    }
                }
                Push::PrekeysLow(remaining) => {
                    tracing::debug!(remaining, "server reports one-time prekeys low");
                    // The server warns at or below its low-water mark: replenish now.
                    if let Err(error) = self.maintain_prekeys(0).await {
                        tracing::warn!(%error, "prekey replenishment failed");
                    }
                }
                Push::Error(error) => {
                    tracing::info!(code = error.code.as_str(), message = %error.message, "server notice");
                    if error.code == ErrorCode::LoggedOff {
                        // Reconnect once; a second logoff in one call is final (two
                        // processes of one device would otherwise replace each other forever).
                        logoffs += 1;
                        if logoffs > 1 {
                            self.connection = None;
                            return Err(TransportError::LoggedOff(error));
                        }
                        self.after_logoff(error, None).await?;
                    }
                }
                Push::Closed(reason) => {
                    tracing::info!(%reason, "connection closed; reconnecting");
                    self.connection = None;
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    let delay = self.options.backoff.delay(0, OsRng.next_u32());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Acknowledges messages (in chunks of the protocol's limit): the server deletes its
    /// copies for this device. Returns how many copies the server deleted.
    pub async fn ack(&mut self, message_ids: &[MessageId]) -> Result<u32, TransportError> {
        // Forget them first: a crash after this and before the ack only means the server
        // delivers them again, and they are then acked as already processed.
        if self.profile.forget_pending(message_ids) {
            self.save_profile()?;
        }
        let mut count = 0u32;
        for chunk in message_ids.chunks(MAX_ACK_IDS) {
            let request = ClientRequest::Ack(AckRequest {
                message_ids: chunk.to_vec(),
            });
            match self.request(request).await? {
                ServerMessage::Acked { count: n } => count = count.saturating_add(n),
                other => return Err(unexpected("acked", &other)),
            }
        }
        Ok(count)
    }

    async fn handle_of(&mut self, user: UserId, conversation: ConversationId) -> Option<Handle> {
        if let Some(h) = self.profile.handles.get(&user) {
            return Some(h.clone());
        }
        if let Err(error) = self.conversation(conversation).await {
            tracing::debug!(%error, "could not resolve a sender's handle");
        }
        self.profile.handles.get(&user).cloned()
    }

    /// Decrypts one delivery. `None` when there is nothing to show (an acked duplicate).
    async fn process_delivery(
        &mut self,
        delivery: medrelay_proto::Delivery,
    ) -> Result<Option<Incoming>, TransportError> {
        let id = delivery.message_id;
        if self.profile.processed.contains(&id) {
            if let Some(pending) = self.profile.pending(&id) {
                return Ok(Some(Incoming::Message(pending.clone())));
            }
            self.ack_quietly(id).await?;
            return Ok(None);
        }
        let peer = convert::store_device_id(&delivery.sender_device_id);
        let opened = self.open_envelope(&delivery);
        let Opened {
            plaintext,
            session,
            archived,
            identity,
        } = match opened {
            Ok(x) => x,
            Err(error) => {
                tracing::warn!(message = %id, %error, "a delivery could not be decrypted; acking it");
                return self.undecryptable(&delivery).await.map(Some);
            }
        };
        let content = match content::decode(plaintext.expose_secret()) {
            Ok(c) if c.conversation_id.as_ref() == delivery.conversation_id.as_bytes() => c,
            _ => {
                tracing::warn!(message = %id, "a delivery's content is malformed or names another conversation");
                return self.undecryptable(&delivery).await.map(Some);
            }
        };
        if self
            .profile
            .seen_client_messages
            .contains(&delivery.sender_device_id, &content.client_message_id)
        {
            // The same message again under a new server id (re-encrypted, so the ratchet
            // accepted it): keep the session step, show nothing, ack it.
            tracing::info!(message = %id, "a delivery repeats a message already shown; acking it");
            let mut profile = self.profile.clone();
            profile.processed.insert(id);
            let blob = profile.to_bytes()?;
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
            self.profile = profile;
            if let Some(identity) = identity {
                self.identity = identity;
            }
            self.ack_quietly(id).await?;
            return Ok(None);
        }
        let from_handle = self
            .handle_of(delivery.sender_user_id, delivery.conversation_id)
            .await;
        let message = ReceivedMessage {
            message_id: id,
            conversation_id: delivery.conversation_id,
            sender_user_id: delivery.sender_user_id,
            sender_device_id: delivery.sender_device_id,
            from_handle,
            text: content.text,
            sent_at_ms: content.sent_at_ms,
            server_time_ms: delivery.server_time_ms,
        };
        let mut profile = self.profile.clone();
        profile.record_received(&message);
        profile
            .seen_client_messages
            .insert(&delivery.sender_device_id, &content.client_message_id);
        let blob = profile.to_bytes()?;
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
        self.profile = profile;
        if let Some(identity) = identity {
            self.identity = identity;
        }
        Ok(Some(Incoming::Message(message)))
    }

    /// Decrypts a delivery's ciphertext ([`crate::delivery::open_envelope`], shared with the
    /// web client). Changes nothing.
    fn open_envelope(&self, delivery: &medrelay_proto::Delivery) -> Result<Opened, TransportError> {
        crate::delivery::open_envelope(
            &self.store,
            &self.identity,
            &self.profile.device_id,
            delivery,
            &mut OsRng,
        )
        .map_err(|e| match e {
            OpenError::KeyStore(e) => TransportError::KeyStore(e),
            OpenError::Session(e) => e.into(),
        })
    }

    async fn undecryptable(
        &mut self,
        delivery: &medrelay_proto::Delivery,
    ) -> Result<Incoming, TransportError> {
        self.profile.processed.insert(delivery.message_id);
        self.save_profile()?;
        self.ack_quietly(delivery.message_id).await?;
        Ok(Incoming::Undecryptable(UndecryptableMessage {
            message_id: delivery.message_id,
            conversation_id: delivery.conversation_id,
            sender_user_id: delivery.sender_user_id,
            sender_device_id: delivery.sender_device_id,
            server_time_ms: delivery.server_time_ms,
        }))
    }

    async fn ack_quietly(&mut self, id: MessageId) -> Result<(), TransportError> {
        let request = ClientRequest::Ack(AckRequest {
            message_ids: vec![id],
        });
        match self.request(request).await? {
            ServerMessage::Acked { .. } => Ok(()),
            other => Err(unexpected("acked", &other)),
        }
    }

    /// Safety numbers with each current device of `user` (a member of one of this user's
    /// conversations), computed from the identity keys this device actually encrypts to:
    /// those of the stored sessions, started (fetching a prekey bundle) where missing.
    pub async fn safety_numbers(
        &mut self,
        user: UserId,
    ) -> Result<Vec<DeviceSafetyNumber>, TransportError> {
        let conversations = self.list_conversations().await?;
        let member = conversations
            .iter()
            .flat_map(|c| c.members.iter())
            .find(|m| m.user_id == user)
            .cloned()
            .ok_or_else(|| {
                TransportError::InvalidArgument("that user shares no conversation with you".into())
            })?;
        let recipients: Vec<plan::Recipient> = member
            .devices
            .iter()
            .filter(|d| **d != self.profile.device_id)
            .map(|d| plan::Recipient { user, device: *d })
            .collect();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for r in &recipients {
            match self
                .store
                .load_session(&convert::store_device_id(&r.device))?
            {
                Some(mut s) => {
                    s.bind_peer(peer_address(&r.user, &r.device))?;
                    out.push((r.device, s.peer_identity().clone()));
                }
                None => missing.push(*r),
            }
        }
        if !missing.is_empty() {
            let bundles = match self
                .request(ClientRequest::FetchPrekeys(plan::fetch_request(&missing)))
                .await?
            {
                ServerMessage::PrekeyBundles(b) => b,
                other => return Err(unexpected("prekey_bundles", &other)),
            };
            for wire in &bundles {
                let Some(r) = missing.iter().find(|r| r.device == wire.device_id) else {
                    continue;
                };
                let mut session =
                    Session::initiate(&self.identity, &convert::bundle(wire), &mut OsRng)?;
                session.bind_peer(peer_address(&r.user, &r.device))?;
                self.store
                    .save_session(&convert::store_device_id(&wire.device_id), &session)?;
                out.push((wire.device_id, session.peer_identity().clone()));
            }
        }
        let local = self.identity.public_identity().clone();
        Ok(out
            .into_iter()
            .map(|(device_id, remote)| DeviceSafetyNumber {
                device_id,
                number: safety_number(
                    self.profile.user_id.as_bytes(),
                    &local,
                    user.as_bytes(),
                    &remote,
                ),
            })
            .collect())
    }
}

fn unexpected(expected: &str, got: &ServerMessage) -> TransportError {
    TransportError::Protocol(format!("expected {expected}, got {}", got.name()))
}
