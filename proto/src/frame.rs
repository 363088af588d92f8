//! Frames: one protobuf message per binary WebSocket message, decoded into validated domain
//! types and encoded back. Decoding is a pure, total function over bytes: size first, then
//! protobuf, then version, request id and body, field by field. It never panics; every
//! refusal is a [`FrameError`] with a wire [`ErrorCode`] and a message that names the field
//! but never echoes its contents.

use prost::bytes::Buf;
use prost::Message;

use crate::field::{bytes_of, optional, required, FieldError, FieldPath, FieldProblem, Within};
use crate::limits::{MAX_FRAME_BYTES, PROTOCOL_VERSION};
use crate::pb::{client_frame, server_frame};
use crate::secret::Scrubbed;
use crate::{
    break_glass, care, credentials, directory, pb, policy, retention, AccessLogFilter,
    AccessLogPage, AccessLogStatus, AckRequest, ArchivePage, AuthOk, AuthProof, Bytes, Challenge,
    ConsentText, Conversation, ConversationId, ConversationList, CredentialsSetup, Delivery,
    DeviceId, DeviceInfo, EnrollRequest, ErrorCode, FetchPrekeys, Identity, InviteCreated,
    InviteSpec, ListConversations, OpenConversation, Password, Permission, Policy, PrekeyBundle,
    Reason, Retention, RoleAllowList, SecondFactor, SendAccepted, SendRequest, SweepReport, Team,
    TeamId, TeamName, UploadPrekeys, UserId, UserInfo, WireError, X25519PublicKey,
};

/// A frame from a client: a request the server answers with the same `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    /// Chosen by the client, never 0, echoed in the answer.
    pub request_id: u64,
    /// What the client asks.
    pub request: ClientRequest,
}

/// What a client asks, one variant per `ClientFrame` body, every field validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// Enrol a new device with an invite code (`enroll`). Boxed: it carries a device's keys.
    Enroll(Box<EnrollRequest>),
    /// Authenticate as an enrolled device (`auth`).
    Auth(AuthProof),
    /// Add one-time prekeys, rotate the signed or PQ prekey (`upload_prekeys`).
    UploadPrekeys(UploadPrekeys),
    /// Fetch other devices' prekey bundles (`fetch_prekeys`).
    FetchPrekeys(FetchPrekeys),
    /// Send a message (`send`).
    Send(SendRequest),
    /// Acknowledge delivered messages (`ack`).
    Ack(AckRequest),
    /// Create an invite (`create_invite`).
    CreateInvite(InviteSpec),
    /// Open a conversation by handles (`open_conversation`).
    OpenConversation(OpenConversation),
    /// Read one conversation (`get_conversation`).
    GetConversation {
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// List the caller's conversations (`list_conversations`).
    ListConversations(ListConversations),
    /// Ask who this connection is (`whoami`).
    WhoAmI,
    /// Keep the connection alive (`ping`); allowed at any time.
    Ping,

    // ---- access control
    /// Staff and admins, once after enrolment: choose a password; the answer is the TOTP
    /// secret and recovery codes (`setup_credentials`).
    SetupCredentials {
        /// The new password.
        password: Password,
    },
    /// Start a staff login session on this device (`login`).
    Login {
        /// The account's password.
        password: Password,
        /// A TOTP code or a recovery code.
        second_factor: SecondFactor,
    },
    /// End this device's login session (`logout`).
    Logout,
    /// Change the caller's password (`change_password`).
    ChangePassword {
        /// The password now.
        current: Password,
        /// The password from now on.
        new: Password,
    },
    /// List the org's users (`list_users`).
    ListUsers,
    /// List a user's devices, revoked ones included (`list_devices`).
    ListDevices {
        /// The user; `None` (empty on the wire) for the caller.
        user_id: Option<UserId>,
    },
    /// Revoke a device at once (`revoke_device`).
    RevokeDevice {
        /// The device.
        device_id: DeviceId,
    },
    /// Deactivate a user: every device revoked, no further enrolment (`deactivate_user`).
    DeactivateUser {
        /// The user.
        user_id: UserId,
    },
    /// Replace the permissions granted to a user beyond their role's (`set_permissions`).
    SetPermissions {
        /// The user.
        user_id: UserId,
        /// The grants, none twice; empty clears them.
        grants: Vec<Permission>,
    },
    /// Create a care team with no members (`create_team`).
    CreateTeam {
        /// Its name.
        name: TeamName,
    },
    /// Replace a team's staff (`set_team_members`).
    SetTeamMembers {
        /// The team.
        team_id: TeamId,
        /// At most [`crate::limits::MAX_TEAM_MEMBERS`], none twice.
        staff_user_ids: Vec<UserId>,
    },
    /// List the org's care teams (`list_teams`).
    ListTeams,
    /// Replace who cares for a patient (`assign_care`).
    AssignCare {
        /// The patient.
        patient_user_id: UserId,
        /// Staff assigned directly: at most `MAX_MEMBERS - 1`, none twice.
        staff_user_ids: Vec<UserId>,
        /// Teams assigned: at most [`crate::limits::MAX_TEAMS_PER_PATIENT`], none twice.
        team_ids: Vec<TeamId>,
    },
    /// Read the org's policy (`get_policy`).
    GetPolicy,
    /// Set the staff session timeouts (`set_session_policy`).
    SetSessionPolicy {
        /// [`crate::limits::MIN_IDLE_TIMEOUT_MS`] to [`crate::limits::MAX_IDLE_TIMEOUT_MS`].
        idle_timeout_ms: u64,
        /// `idle_timeout_ms` to [`crate::limits::MAX_SESSION_LIFETIME_MS`].
        session_lifetime_ms: u64,
    },
    /// Replace one role's IP allow-list (`set_allow_list`).
    SetAllowList(RoleAllowList),
    /// Set the consent text patients must accept (`set_consent_text`).
    SetConsentText {
        /// The text.
        text: ConsentText,
    },
    /// A patient accepts the consent text (`accept_consent`).
    AcceptConsent {
        /// [`ConsentText::sha256`] of the text accepted, as the patient was shown it.
        text_sha256: [u8; 32],
    },
    /// A patient withdraws consent (`withdraw_consent`).
    WithdrawConsent,
    /// Grant a staff member emergency access to a patient's conversation
    /// (`grant_break_glass`).
    GrantBreakGlass {
        /// Who gets access.
        staff_user_id: UserId,
        /// To whose conversation.
        patient_user_id: UserId,
        /// Why; goes to the access log.
        reason: Reason,
        /// For how long: 1 ms to [`crate::limits::MAX_BREAK_GLASS_MS`].
        duration_ms: u64,
    },
    /// Read the org's retention settings and holds (`get_retention`).
    GetRetention,
    /// Set the org's retention (`set_retention`).
    SetRetention {
        /// Undelivered mail, in days: 1 to [`crate::limits::MAX_MAIL_DAYS`].
        mail_days: u32,
        /// The org archive, in days: 1 to [`crate::limits::MAX_ARCHIVE_DAYS`].
        archive_days: u32,
    },
    /// Place or lift a legal hold (`set_hold`).
    SetHold {
        /// The conversation, or `None` for the whole org.
        conversation_id: Option<ConversationId>,
        /// Place (true) or lift (false).
        held: bool,
    },
    /// Enable the org archive with this public key, or disable it (`set_archive_key`).
    SetArchiveKey {
        /// The privacy officer's archive public key; `None` disables the archive.
        public_key: Option<X25519PublicKey>,
    },
    /// One page of the org archive (`export_archive`).
    ExportArchive {
        /// Items stored at or after this time.
        since_ms: u64,
        /// After this position (0 from the start).
        after_seq: u64,
        /// At most this many: 1 to [`crate::limits::MAX_ARCHIVE_PAGE`].
        limit: u32,
    },
    /// Run the retention sweeper now (`run_sweep`).
    RunSweep,
    /// Verify the access log's chain and checkpoints now (`verify_access_log`).
    VerifyAccessLog,
    /// One page of the org's access-log entries (`export_access_log`).
    ExportAccessLog(AccessLogFilter),
}

impl ClientRequest {
    /// The body's field name in `relay.proto`, e.g. `send`: for logs, metrics and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Enroll(_) => "enroll",
            Self::Auth(_) => "auth",
            Self::UploadPrekeys(_) => "upload_prekeys",
            Self::FetchPrekeys(_) => "fetch_prekeys",
            Self::Send(_) => "send",
            Self::Ack(_) => "ack",
            Self::CreateInvite(_) => "create_invite",
            Self::OpenConversation(_) => "open_conversation",
            Self::GetConversation { .. } => "get_conversation",
            Self::ListConversations(_) => "list_conversations",
            Self::WhoAmI => "whoami",
            Self::Ping => "ping",
            Self::SetupCredentials { .. } => "setup_credentials",
            Self::Login { .. } => "login",
            Self::Logout => "logout",
            Self::ChangePassword { .. } => "change_password",
            Self::ListUsers => "list_users",
            Self::ListDevices { .. } => "list_devices",
            Self::RevokeDevice { .. } => "revoke_device",
            Self::DeactivateUser { .. } => "deactivate_user",
            Self::SetPermissions { .. } => "set_permissions",
            Self::CreateTeam { .. } => "create_team",
            Self::SetTeamMembers { .. } => "set_team_members",
            Self::ListTeams => "list_teams",
            Self::AssignCare { .. } => "assign_care",
            Self::GetPolicy => "get_policy",
            Self::SetSessionPolicy { .. } => "set_session_policy",
            Self::SetAllowList(_) => "set_allow_list",
            Self::SetConsentText { .. } => "set_consent_text",
            Self::AcceptConsent { .. } => "accept_consent",
            Self::WithdrawConsent => "withdraw_consent",
            Self::GrantBreakGlass { .. } => "grant_break_glass",
            Self::GetRetention => "get_retention",
            Self::SetRetention { .. } => "set_retention",
            Self::SetHold { .. } => "set_hold",
            Self::SetArchiveKey { .. } => "set_archive_key",
            Self::ExportArchive { .. } => "export_archive",
            Self::RunSweep => "run_sweep",
            Self::VerifyAccessLog => "verify_access_log",
            Self::ExportAccessLog(_) => "export_access_log",
        }
    }

    /// Whether the request is valid on a connection that has not authenticated yet: `enroll`,
    /// `auth` and `ping`. Anything else before authentication is `UNAUTHENTICATED`.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(self, Self::Enroll(_) | Self::Auth(_) | Self::Ping)
    }

    fn to_pb(&self) -> client_frame::Body {
        use client_frame::Body;
        match self {
            Self::Enroll(r) => Body::Enroll(r.to_pb()),
            Self::Auth(r) => Body::Auth(r.to_pb()),
            Self::UploadPrekeys(r) => Body::UploadPrekeys(r.to_pb()),
            Self::FetchPrekeys(r) => Body::FetchPrekeys(r.to_pb()),
            Self::Send(r) => Body::Send(r.to_pb()),
            Self::Ack(r) => Body::Ack(r.to_pb()),
            Self::CreateInvite(r) => Body::CreateInvite(r.to_pb()),
            Self::OpenConversation(r) => Body::OpenConversation(r.to_pb()),
            Self::GetConversation { conversation_id } => {
                Body::GetConversation(pb::GetConversation {
                    conversation_id: Bytes::copy_from_slice(conversation_id.as_bytes()),
                })
            }
            Self::ListConversations(r) => Body::ListConversations(r.to_pb()),
            Self::WhoAmI => Body::Whoami(pb::WhoAmI {}),
            Self::Ping => Body::Ping(pb::Ping {}),
            Self::SetupCredentials { password } => Body::SetupCredentials(pb::SetupCredentials {
                password: password.expose().to_owned(),
            }),
            Self::Login {
                password,
                second_factor,
            } => Body::Login(credentials::login_to_pb(password, second_factor)),
            Self::Logout => Body::Logout(pb::Logout {}),
            Self::ChangePassword { current, new } => Body::ChangePassword(pb::ChangePassword {
                current_password: current.expose().to_owned(),
                new_password: new.expose().to_owned(),
            }),
            Self::ListUsers => Body::ListUsers(pb::ListUsers {}),
            Self::ListDevices { user_id } => Body::ListDevices(pb::ListDevices {
                user_id: user_id.map(bytes_of).unwrap_or_default(),
            }),
            Self::RevokeDevice { device_id } => Body::RevokeDevice(pb::RevokeDevice {
                device_id: bytes_of(device_id),
            }),
            Self::DeactivateUser { user_id } => Body::DeactivateUser(pb::DeactivateUser {
                user_id: bytes_of(user_id),
            }),
            Self::SetPermissions { user_id, grants } => Body::SetPermissions(pb::SetPermissions {
                user_id: bytes_of(user_id),
                grants: Permission::list_to_pb(grants),
            }),
            Self::CreateTeam { name } => Body::CreateTeam(pb::CreateTeam {
                name: name.as_str().to_owned(),
            }),
            Self::SetTeamMembers {
                team_id,
                staff_user_ids,
            } => Body::SetTeamMembers(care::set_team_members_to_pb(team_id, staff_user_ids)),
            Self::ListTeams => Body::ListTeams(pb::ListTeams {}),
            Self::AssignCare {
                patient_user_id,
                staff_user_ids,
                team_ids,
            } => Body::AssignCare(care::assign_care_to_pb(
                patient_user_id,
                staff_user_ids,
                team_ids,
            )),
            Self::GetPolicy => Body::GetPolicy(pb::GetPolicy {}),
            Self::SetSessionPolicy {
                idle_timeout_ms,
                session_lifetime_ms,
            } => Body::SetSessionPolicy(pb::SetSessionPolicy {
                idle_timeout_ms: *idle_timeout_ms,
                session_lifetime_ms: *session_lifetime_ms,
            }),
            Self::SetAllowList(list) => Body::SetAllowList(pb::SetAllowList {
                allow_list: Some(list.to_pb()),
            }),
            Self::SetConsentText { text } => Body::SetConsentText(pb::SetConsentText {
                text: text.as_str().to_owned(),
            }),
            Self::AcceptConsent { text_sha256 } => Body::AcceptConsent(pb::AcceptConsent {
                text_sha256: bytes_of(text_sha256),
            }),
            Self::WithdrawConsent => Body::WithdrawConsent(pb::WithdrawConsent {}),
            Self::GrantBreakGlass {
                staff_user_id,
                patient_user_id,
                reason,
                duration_ms,
            } => Body::GrantBreakGlass(break_glass::grant_break_glass_to_pb(
                staff_user_id,
                patient_user_id,
                reason,
                *duration_ms,
            )),
            Self::GetRetention => Body::GetRetention(pb::GetRetention {}),
            Self::SetRetention {
                mail_days,
                archive_days,
            } => Body::SetRetention(pb::SetRetention {
                mail_days: *mail_days,
                archive_days: *archive_days,
            }),
            Self::SetHold {
                conversation_id,
                held,
            } => Body::SetHold(pb::SetHold {
                conversation_id: conversation_id.map(bytes_of).unwrap_or_default(),
                held: *held,
            }),
            Self::SetArchiveKey { public_key } => Body::SetArchiveKey(pb::SetArchiveKey {
                public_key: public_key.as_ref().map(bytes_of).unwrap_or_default(),
            }),
            Self::ExportArchive {
                since_ms,
                after_seq,
                limit,
            } => Body::ExportArchive(pb::ExportArchive {
                since_ms: *since_ms,
                after_seq: *after_seq,
                limit: *limit,
            }),
            Self::RunSweep => Body::RunSweep(pb::RunSweep {}),
            Self::VerifyAccessLog => Body::VerifyAccessLog(pb::VerifyAccessLog {}),
            Self::ExportAccessLog(filter) => Body::ExportAccessLog(filter.to_pb()),
        }
    }

    fn from_pb(body: client_frame::Body) -> Result<Self, FieldError> {
        use client_frame::Body;
        Ok(match body {
            Body::Enroll(r) => Self::Enroll(Box::new(EnrollRequest::from_pb(r).within("enroll")?)),
            Body::Auth(r) => Self::Auth(AuthProof::from_pb(r).within("auth")?),
            Body::UploadPrekeys(r) => {
                Self::UploadPrekeys(UploadPrekeys::from_pb(r).within("upload_prekeys")?)
            }
            Body::FetchPrekeys(r) => {
                Self::FetchPrekeys(FetchPrekeys::from_pb(r).within("fetch_prekeys")?)
            }
            Body::Send(r) => Self::Send(SendRequest::from_pb(r).within("send")?),
            Body::Ack(r) => Self::Ack(AckRequest::from_pb(r).within("ack")?),
            Body::CreateInvite(r) => {
                Self::CreateInvite(InviteSpec::from_pb(r).within("create_invite")?)
            }
            Body::OpenConversation(r) => {
                Self::OpenConversation(OpenConversation::from_pb(r).within("open_conversation")?)
            }
            Body::GetConversation(r) => Self::GetConversation {
                conversation_id: crate::field::required(
                    "conversation_id",
                    &r.conversation_id,
                    ConversationId::from_bytes,
                )
                .within("get_conversation")?,
            },
            Body::ListConversations(r) => {
                Self::ListConversations(ListConversations::from_pb(r).within("list_conversations")?)
            }
            Body::Whoami(pb::WhoAmI {}) => Self::WhoAmI,
            Body::Ping(pb::Ping {}) => Self::Ping,
            Body::SetupCredentials(r) => {
                credentials::setup_credentials_from_pb(r).within("setup_credentials")?
            }
            Body::Login(r) => credentials::login_from_pb(r).within("login")?,
            Body::Logout(pb::Logout {}) => Self::Logout,
            Body::ChangePassword(r) => {
                credentials::change_password_from_pb(r).within("change_password")?
            }
            Body::ListUsers(pb::ListUsers {}) => Self::ListUsers,
            Body::ListDevices(r) => Self::ListDevices {
                user_id: optional("user_id", &r.user_id, UserId::from_bytes)
                    .within("list_devices")?,
            },
            Body::RevokeDevice(r) => Self::RevokeDevice {
                device_id: required("device_id", &r.device_id, DeviceId::from_bytes)
                    .within("revoke_device")?,
            },
            Body::DeactivateUser(r) => Self::DeactivateUser {
                user_id: required("user_id", &r.user_id, UserId::from_bytes)
                    .within("deactivate_user")?,
            },
            Body::SetPermissions(r) => {
                directory::set_permissions_from_pb(r).within("set_permissions")?
            }
            Body::CreateTeam(r) => care::create_team_from_pb(r).within("create_team")?,
            Body::SetTeamMembers(r) => {
                care::set_team_members_from_pb(r).within("set_team_members")?
            }
            Body::ListTeams(pb::ListTeams {}) => Self::ListTeams,
            Body::AssignCare(r) => care::assign_care_from_pb(r).within("assign_care")?,
            Body::GetPolicy(pb::GetPolicy {}) => Self::GetPolicy,
            Body::SetSessionPolicy(r) => {
                policy::set_session_policy_from_pb(r).within("set_session_policy")?
            }
            Body::SetAllowList(r) => policy::set_allow_list_from_pb(r).within("set_allow_list")?,
            Body::SetConsentText(r) => Self::SetConsentText {
                text: crate::field::required_text("text", r.text, ConsentText::new)
                    .within("set_consent_text")?,
            },
            Body::AcceptConsent(r) => Self::AcceptConsent {
                text_sha256: required("text_sha256", &r.text_sha256, sha256_from_bytes)
                    .within("accept_consent")?,
            },
            Body::WithdrawConsent(pb::WithdrawConsent {}) => Self::WithdrawConsent,
            Body::GrantBreakGlass(r) => {
                break_glass::grant_break_glass_from_pb(r).within("grant_break_glass")?
            }
            Body::GetRetention(pb::GetRetention {}) => Self::GetRetention,
            Body::SetRetention(r) => retention::set_retention_from_pb(r).within("set_retention")?,
            Body::SetHold(r) => retention::set_hold_from_pb(r).within("set_hold")?,
            Body::SetArchiveKey(r) => {
                retention::set_archive_key_from_pb(r).within("set_archive_key")?
            }
            Body::ExportArchive(r) => {
                retention::export_archive_from_pb(r).within("export_archive")?
            }
            Body::RunSweep(pb::RunSweep {}) => Self::RunSweep,
            Body::VerifyAccessLog(pb::VerifyAccessLog {}) => Self::VerifyAccessLog,
            Body::ExportAccessLog(r) => {
                Self::ExportAccessLog(AccessLogFilter::from_pb(r).within("export_access_log")?)
            }
        })
    }
}

/// A SHA-256 digest: exactly 32 bytes.
fn sha256_from_bytes(bytes: &[u8]) -> Result<[u8; 32], crate::ProtoError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| crate::ProtoError::WrongLength {
        expected: 32,
        actual: bytes.len(),
    })
}

/// A frame from the server: an answer to the request with `request_id`, or a push (0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// The request answered, or 0 for a frame the server pushes on its own.
    pub request_id: u64,
    /// What the server says.
    pub message: ServerMessage,
}

impl ServerFrame {
    /// An answer to request `request_id`.
    pub fn reply(request_id: u64, message: ServerMessage) -> Self {
        Self {
            request_id,
            message,
        }
    }

    /// A frame the server sends on its own (challenge, delivery, prekeys low, logoff).
    pub fn push(message: ServerMessage) -> Self {
        Self {
            request_id: 0,
            message,
        }
    }
}

/// What the server says, one variant per `ServerFrame` body, every field validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// A refusal, answering a request or pushed (e.g. `LOGGED_OFF`) (`error`).
    Error(WireError),
    /// The first frame of every connection; push only (`challenge`).
    Challenge(Challenge),
    /// `auth` or `enroll` succeeded (`auth_ok`).
    AuthOk(AuthOk),
    /// `upload_prekeys` succeeded (`prekeys_uploaded`).
    PrekeysUploaded {
        /// One-time prekeys the server now holds for this device.
        one_time_prekeys_remaining: u32,
    },
    /// The answer to `fetch_prekeys` (`prekey_bundles`).
    PrekeyBundles(Vec<PrekeyBundle>),
    /// `send` is durable (`send_accepted`).
    SendAccepted(SendAccepted),
    /// `ack` done (`acked`).
    Acked {
        /// Stored copies deleted (unknown or already acked ids are not counted).
        count: u32,
    },
    /// `create_invite` succeeded (`invite_created`).
    InviteCreated(InviteCreated),
    /// The answer to `open_conversation` and `get_conversation` (`conversation`).
    Conversation(Conversation),
    /// The answer to `list_conversations` (`conversation_list`).
    ConversationList(ConversationList),
    /// The answer to `whoami` (`identity`).
    Identity(Identity),
    /// The answer to `ping` (`pong`).
    Pong {
        /// Server time, ms since the Unix epoch.
        server_time_ms: u64,
    },
    /// A stored envelope for this device; push only (`delivery`).
    Delivery(Delivery),
    /// This device's one-time prekeys run low; push only (`prekeys_low`).
    PrekeysLow {
        /// One-time prekeys the server still holds for this device.
        one_time_prekeys_remaining: u32,
    },

    // ---- access control
    /// The request succeeded and has nothing else to say (`done`).
    Done,
    /// The answer to `setup_credentials`: secrets shown once (`credentials_setup`).
    CredentialsSetup(CredentialsSetup),
    /// The answer to `login` (`login_ok`).
    LoginOk {
        /// Idle time after which the server logs the session off.
        idle_timeout_ms: u64,
        /// When the session ends whatever the activity, ms since the Unix epoch.
        session_expires_at_ms: u64,
    },
    /// The answer to `list_users` (`user_list`).
    UserList(Vec<UserInfo>),
    /// The answer to `list_devices` (`device_list`).
    DeviceList(Vec<DeviceInfo>),
    /// The answer to `create_team` and `set_team_members` (`team`).
    Team(Team),
    /// The answer to `list_teams` (`team_list`).
    TeamList(Vec<Team>),
    /// The answer to `get_policy` (`policy`).
    Policy(Policy),
    /// The answer to `grant_break_glass` (`break_glass_granted`).
    BreakGlassGranted {
        /// When the access ends, ms since the Unix epoch.
        expires_at_ms: u64,
    },
    /// The answer to `get_retention` (`retention`).
    Retention(Retention),
    /// The answer to `export_archive` (`archive_page`).
    ArchivePage(ArchivePage),
    /// The answer to `run_sweep` (`sweep_report`).
    SweepReport(SweepReport),
    /// The answer to `verify_access_log` (`access_log_status`).
    AccessLogStatus(AccessLogStatus),
    /// The answer to `export_access_log` (`access_log_page`).
    AccessLogPage(AccessLogPage),
}

impl ServerMessage {
    /// The body's field name in `relay.proto`, e.g. `send_accepted`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Error(_) => "error",
            Self::Challenge(_) => "challenge",
            Self::AuthOk(_) => "auth_ok",
            Self::PrekeysUploaded { .. } => "prekeys_uploaded",
            Self::PrekeyBundles(_) => "prekey_bundles",
            Self::SendAccepted(_) => "send_accepted",
            Self::Acked { .. } => "acked",
            Self::InviteCreated(_) => "invite_created",
            Self::Conversation(_) => "conversation",
            Self::ConversationList(_) => "conversation_list",
            Self::Identity(_) => "identity",
            Self::Pong { .. } => "pong",
            Self::Delivery(_) => "delivery",
            Self::PrekeysLow { .. } => "prekeys_low",
            Self::Done => "done",
            Self::CredentialsSetup(_) => "credentials_setup",
            Self::LoginOk { .. } => "login_ok",
            Self::UserList(_) => "user_list",
            Self::DeviceList(_) => "device_list",
            Self::Team(_) => "team",
            Self::TeamList(_) => "team_list",
            Self::Policy(_) => "policy",
            Self::BreakGlassGranted { .. } => "break_glass_granted",
            Self::Retention(_) => "retention",
            Self::ArchivePage(_) => "archive_page",
            Self::SweepReport(_) => "sweep_report",
            Self::AccessLogStatus(_) => "access_log_status",
            Self::AccessLogPage(_) => "access_log_page",
        }
    }

    /// Whether this message is only ever pushed (request id 0): challenge, delivery and
    /// prekeys low. `Error` may be either; everything else answers a request.
    pub fn is_push_only(&self) -> bool {
        matches!(
            self,
            Self::Challenge(_) | Self::Delivery(_) | Self::PrekeysLow { .. }
        )
    }

    fn to_pb(&self) -> server_frame::Body {
        use server_frame::Body;
        match self {
            Self::Error(e) => Body::Error(e.to_pb()),
            Self::Challenge(c) => Body::Challenge(c.to_pb()),
            Self::AuthOk(a) => Body::AuthOk(a.to_pb()),
            Self::PrekeysUploaded {
                one_time_prekeys_remaining,
            } => Body::PrekeysUploaded(pb::PrekeysUploaded {
                one_time_prekeys_remaining: *one_time_prekeys_remaining,
            }),
            Self::PrekeyBundles(bundles) => Body::PrekeyBundles(pb::PrekeyBundles {
                bundles: bundles.iter().map(PrekeyBundle::to_pb).collect(),
            }),
            Self::SendAccepted(s) => Body::SendAccepted(s.to_pb()),
            Self::Acked { count } => Body::Acked(pb::Acked { count: *count }),
            Self::InviteCreated(i) => Body::InviteCreated(i.to_pb()),
            Self::Conversation(c) => Body::Conversation(c.to_pb()),
            Self::ConversationList(l) => Body::ConversationList(l.to_pb()),
            Self::Identity(i) => Body::Identity(i.to_pb()),
            Self::Pong { server_time_ms } => Body::Pong(pb::Pong {
                server_time_ms: *server_time_ms,
            }),
            Self::Delivery(d) => Body::Delivery(d.to_pb()),
            Self::PrekeysLow {
                one_time_prekeys_remaining,
            } => Body::PrekeysLow(pb::PrekeysLow {
                one_time_prekeys_remaining: *one_time_prekeys_remaining,
            }),
            Self::Done => Body::Done(pb::Done {}),
            Self::CredentialsSetup(c) => Body::CredentialsSetup(c.to_pb()),
            Self::LoginOk {
                idle_timeout_ms,
                session_expires_at_ms,
            } => Body::LoginOk(pb::LoginOk {
                idle_timeout_ms: *idle_timeout_ms,
                session_expires_at_ms: *session_expires_at_ms,
            }),
            Self::UserList(users) => Body::UserList(pb::UserList {
                users: users.iter().map(UserInfo::to_pb).collect(),
            }),
            Self::DeviceList(devices) => Body::DeviceList(pb::DeviceList {
                devices: devices.iter().map(DeviceInfo::to_pb).collect(),
            }),
            Self::Team(t) => Body::Team(t.to_pb()),
            Self::TeamList(teams) => Body::TeamList(pb::TeamList {
                teams: teams.iter().map(Team::to_pb).collect(),
            }),
            Self::Policy(p) => Body::Policy(p.to_pb()),
            Self::BreakGlassGranted { expires_at_ms } => {
                Body::BreakGlassGranted(pb::BreakGlassGranted {
                    expires_at_ms: *expires_at_ms,
                })
            }
            Self::Retention(r) => Body::Retention(r.to_pb()),
            Self::ArchivePage(p) => Body::ArchivePage(p.to_pb()),
            Self::SweepReport(r) => Body::SweepReport(r.to_pb()),
            Self::AccessLogStatus(s) => Body::AccessLogStatus(s.to_pb()),
            Self::AccessLogPage(p) => Body::AccessLogPage(p.to_pb()),
        }
    }

    fn from_pb(body: server_frame::Body) -> Result<Self, FieldError> {
        use server_frame::Body;
        Ok(match body {
            Body::Error(e) => Self::Error(WireError::from_pb(e).within("error")?),
            Body::Challenge(c) => Self::Challenge(Challenge::from_pb(c).within("challenge")?),
            Body::AuthOk(a) => Self::AuthOk(AuthOk::from_pb(a).within("auth_ok")?),
            Body::PrekeysUploaded(p) => Self::PrekeysUploaded {
                one_time_prekeys_remaining: p.one_time_prekeys_remaining,
            },
            Body::PrekeyBundles(p) => Self::PrekeyBundles(
                p.bundles
                    .into_iter()
                    .map(|b| PrekeyBundle::from_pb(b).within("bundles"))
                    .collect::<Result<_, _>>()
                    .within("prekey_bundles")?,
            ),
            Body::SendAccepted(s) => {
                Self::SendAccepted(SendAccepted::from_pb(s).within("send_accepted")?)
            }
            Body::Acked(a) => Self::Acked { count: a.count },
            Body::InviteCreated(i) => {
                Self::InviteCreated(InviteCreated::from_pb(i).within("invite_created")?)
            }
            Body::Conversation(c) => {
                Self::Conversation(Conversation::from_pb(c).within("conversation")?)
            }
            Body::ConversationList(l) => {
                Self::ConversationList(ConversationList::from_pb(l).within("conversation_list")?)
            }
            Body::Identity(i) => Self::Identity(Identity::from_pb(i).within("identity")?),
            Body::Pong(p) => Self::Pong {
                server_time_ms: p.server_time_ms,
            },
            Body::Delivery(d) => Self::Delivery(Delivery::from_pb(d).within("delivery")?),
            Body::PrekeysLow(p) => Self::PrekeysLow {
                one_time_prekeys_remaining: p.one_time_prekeys_remaining,
            },
            Body::Done(pb::Done {}) => Self::Done,
            Body::CredentialsSetup(c) => {
                Self::CredentialsSetup(CredentialsSetup::from_pb(c).within("credentials_setup")?)
            }
            Body::LoginOk(l) => Self::LoginOk {
                idle_timeout_ms: l.idle_timeout_ms,
                session_expires_at_ms: l.session_expires_at_ms,
            },
            Body::UserList(l) => {
                Self::UserList(each(l.users, "users", UserInfo::from_pb).within("user_list")?)
            }
            Body::DeviceList(l) => Self::DeviceList(
                each(l.devices, "devices", DeviceInfo::from_pb).within("device_list")?,
            ),
            Body::Team(t) => Self::Team(Team::from_pb(t).within("team")?),
            Body::TeamList(l) => {
                Self::TeamList(each(l.teams, "teams", Team::from_pb).within("team_list")?)
            }
            Body::Policy(p) => Self::Policy(Policy::from_pb(p).within("policy")?),
            Body::BreakGlassGranted(b) => Self::BreakGlassGranted {
                expires_at_ms: b.expires_at_ms,
            },
            Body::Retention(r) => Self::Retention(Retention::from_pb(r).within("retention")?),
            Body::ArchivePage(p) => {
                Self::ArchivePage(ArchivePage::from_pb(p).within("archive_page")?)
            }
            Body::SweepReport(r) => Self::SweepReport(SweepReport::from_pb(r)),
            Body::AccessLogStatus(s) => {
                Self::AccessLogStatus(AccessLogStatus::from_pb(s).within("access_log_status")?)
            }
            Body::AccessLogPage(p) => {
                Self::AccessLogPage(AccessLogPage::from_pb(p).within("access_log_page")?)
            }
        })
    }
}

/// Converts every entry of a repeated message field named `name`.
fn each<R, T>(
    raw: Vec<R>,
    name: &'static str,
    convert: impl Fn(R) -> Result<T, FieldError>,
) -> Result<Vec<T>, FieldError> {
    raw.into_iter().map(|r| convert(r).within(name)).collect()
}

/// Why a frame was refused. Peer misbehaviour only: decoding has no local failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is larger than [`MAX_FRAME_BYTES`]; nothing was decoded.
    #[error("the frame is {len} bytes, over the limit of {MAX_FRAME_BYTES}")]
    TooLarge {
        /// The frame's length.
        len: usize,
    },
    /// The bytes are not a protobuf frame.
    #[error("the frame is not a valid protobuf frame")]
    Undecodable,
    /// The frame speaks a protocol version other than [`PROTOCOL_VERSION`].
    #[error("protocol version {version} is not supported; only version {PROTOCOL_VERSION} is")]
    UnsupportedVersion {
        /// The version the frame claimed.
        version: u32,
        /// The frame's request id.
        request_id: u64,
    },
    /// A client frame with request id 0, which only server pushes may use.
    #[error("request_id must not be 0")]
    ZeroRequestId,
    /// The frame has no body, or one this protocol version does not know.
    #[error("the frame has no body, or one this protocol version does not know")]
    MissingBody {
        /// The frame's request id.
        request_id: u64,
    },
    /// A field is missing or breaks a rule.
    #[error("{field} {problem}")]
    InvalidField {
        /// The frame's request id.
        request_id: u64,
        /// Where, e.g. `send.envelopes.ciphertext`.
        field: FieldPath,
        /// What.
        problem: FieldProblem,
    },
    /// A server frame that must be pushed (request id 0) answered a request.
    #[error("{body} is only ever pushed, with request_id 0")]
    PushWithRequestId {
        /// The frame's request id.
        request_id: u64,
        /// The body's name.
        body: &'static str,
    },
    /// A server frame that must answer a request came with request id 0.
    #[error("{body} must answer a request, with its non-zero request_id")]
    ResponseWithoutRequestId {
        /// The body's name.
        body: &'static str,
    },
}

impl FrameError {
    /// The wire error code to refuse the frame with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::InvalidField { problem, .. } => problem.code(),
            Self::Undecodable
            | Self::ZeroRequestId
            | Self::MissingBody { .. }
            | Self::PushWithRequestId { .. }
            | Self::ResponseWithoutRequestId { .. } => ErrorCode::Malformed,
        }
    }

    /// A plain-English message naming the problem and the field, never its contents.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The refused frame's request id, if decoding got that far; 0 otherwise. The server
    /// answers the error with it, so the client can fail just that request.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::UnsupportedVersion { request_id, .. }
            | Self::MissingBody { request_id }
            | Self::InvalidField { request_id, .. }
            | Self::PushWithRequestId { request_id, .. } => *request_id,
            Self::TooLarge { .. }
            | Self::Undecodable
            | Self::ZeroRequestId
            | Self::ResponseWithoutRequestId { .. } => 0,
        }
    }

    /// The [`WireError`] to send back.
    pub fn to_wire_error(&self) -> WireError {
        WireError::from(self)
    }

    fn invalid_field(request_id: u64, error: FieldError) -> Self {
        Self::InvalidField {
            request_id,
            field: error.path,
            problem: error.problem,
        }
    }
}

/// Checks the size, then protobuf-decodes a frame.
fn decode_raw<M: Message + Default>(mut buf: impl Buf) -> Result<M, FrameError> {
    let len = buf.remaining();
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    M::decode(&mut buf).map_err(|_| FrameError::Undecodable)
}

/// Checks the protocol version.
fn check_version(version: u32, request_id: u64) -> Result<(), FrameError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(FrameError::UnsupportedVersion {
            version,
            request_id,
        })
    }
}

fn decode_client(buf: impl Buf) -> Result<ClientFrame, FrameError> {
    // Scrubbed: a refused frame may still hold a password.
    let mut raw = Scrubbed(decode_raw::<pb::ClientFrame>(buf)?);
    check_version(raw.version, raw.request_id)?;
    let request_id = raw.request_id;
    if request_id == 0 {
        return Err(FrameError::ZeroRequestId);
    }
    let body = raw
        .body
        .take()
        .ok_or(FrameError::MissingBody { request_id })?;
    let request =
        ClientRequest::from_pb(body).map_err(|e| FrameError::invalid_field(request_id, e))?;
    Ok(ClientFrame {
        request_id,
        request,
    })
}

fn decode_server(buf: impl Buf) -> Result<ServerFrame, FrameError> {
    // Scrubbed: a refused frame may still hold credentials being set up.
    let mut raw = Scrubbed(decode_raw::<pb::ServerFrame>(buf)?);
    check_version(raw.version, raw.request_id)?;
    let request_id = raw.request_id;
    let body = raw
        .body
        .take()
        .ok_or(FrameError::MissingBody { request_id })?;
    let message =
        ServerMessage::from_pb(body).map_err(|e| FrameError::invalid_field(request_id, e))?;
    let is_error = matches!(message, ServerMessage::Error(_));
    if message.is_push_only() && request_id != 0 {
        return Err(FrameError::PushWithRequestId {
            request_id,
            body: message.name(),
        });
    }
    if !message.is_push_only() && !is_error && request_id == 0 {
        return Err(FrameError::ResponseWithoutRequestId {
            body: message.name(),
        });
    }
    Ok(ServerFrame {
        request_id,
        message,
    })
}

/// Decodes and validates a client frame (server side). Total: never panics.
pub fn decode_client_frame(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    decode_client(bytes)
}

/// [`decode_client_frame`] from a `Bytes`, sharing its buffer: ciphertexts are not copied.
pub fn decode_client_frame_bytes(bytes: Bytes) -> Result<ClientFrame, FrameError> {
    decode_client(bytes)
}

/// Decodes and validates a server frame (SDK side), including that push-only messages carry
/// request id 0 and answers a non-zero one. Total: never panics.
pub fn decode_server_frame(bytes: &[u8]) -> Result<ServerFrame, FrameError> {
    decode_server(bytes)
}

/// [`decode_server_frame`] from a `Bytes`, sharing its buffer: ciphertexts are not copied.
pub fn decode_server_frame_bytes(bytes: Bytes) -> Result<ServerFrame, FrameError> {
    decode_server(bytes)
}

/// Encodes a client frame (SDK side) at [`PROTOCOL_VERSION`]. The frame is not re-checked
/// against the limits: a frame that breaks one is refused by the server. The intermediate
/// prost message is scrubbed of secrets; the returned bytes of a `setup_credentials`, `login`
/// or `change_password` frame hold a password, and are the caller's to wipe once sent.
pub fn encode_client_frame(frame: &ClientFrame) -> Vec<u8> {
    Scrubbed(pb::ClientFrame {
        version: PROTOCOL_VERSION,
        request_id: frame.request_id,
        body: Some(frame.request.to_pb()),
    })
    .encode_to_vec()
}

/// Encodes a server frame (server side) at [`PROTOCOL_VERSION`]. As for
/// [`encode_client_frame`], the bytes of a `credentials_setup` frame hold secrets.
pub fn encode_server_frame(frame: &ServerFrame) -> Vec<u8> {
    Scrubbed(pb::ServerFrame {
        version: PROTOCOL_VERSION,
        request_id: frame.request_id,
        body: Some(frame.message.to_pb()),
    })
    .encode_to_vec()
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "frame_access_tests.rs"]
mod access_tests;
