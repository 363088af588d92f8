//! Access control requests: staff and admin login (password + TOTP), automatic logoff, users
//! and devices, permissions, care teams and assignment, org policy (timeouts, IP allow-lists,
//! consent text), patient consent, and break-glass access. Plain functions over the store, like
//! the rest of [`Relay`]; every one checks the caller's permission itself.

use std::collections::BTreeSet;

use medrelay_proto::{
    ConsentState, ConsentText, DeviceId, ErrorCode, Password, Permission, Reason, Role,
    RoleAllowList, SecondFactor, TeamId, TeamName, UserId, WireError,
};

use crate::credentials::{self, NewCredentials};
use crate::permissions;
use crate::relay::{default_consent_text, internal, not_found, AuthedDevice, ConsentSource, Relay};
use crate::store::{
    BreakGlassRecord, CareRecord, DeviceRecord, LoginSession, OrgPolicy, TeamRecord, UserRecord,
};

/// Where a staff or admin connection stands with its second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginState {
    /// Patients: the device key is all it takes.
    NotNeeded,
    /// No password and TOTP yet: set them up, then log in.
    NeedsCredentials,
    /// Logged off (or never logged in on this device): log in.
    NeedsLogin,
    /// Logged in.
    LoggedIn(LoginSession),
}

/// Why a login session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoffReason {
    /// No activity for the org's idle timeout.
    Idle,
    /// The session reached its absolute lifetime.
    Lifetime,
}

impl LogoffReason {
    /// What the user is told.
    pub fn message(self) -> &'static str {
        match self {
            LogoffReason::Idle => {
                "you were logged off automatically after a period without activity; log in again \
                 with your password and authenticator code"
            }
            LogoffReason::Lifetime => {
                "your session reached its maximum length and was logged off; log in again with \
                 your password and authenticator code"
            }
        }
    }
}

/// Whether a session is still valid at `now` under `policy`.
pub fn session_expiry(
    session: &LoginSession,
    policy: &OrgPolicy,
    now: u64,
) -> Result<(), LogoffReason> {
    if now
        >= session
            .started_ms
            .saturating_add(policy.session_lifetime_ms)
    {
        Err(LogoffReason::Lifetime)
    } else if now
        >= session
            .last_activity_ms
            .saturating_add(policy.idle_timeout_ms)
    {
        Err(LogoffReason::Idle)
    } else {
        Ok(())
    }
}

fn forbidden(message: &str) -> WireError {
    WireError::new(ErrorCode::Forbidden, message)
}

fn login_failed() -> WireError {
    WireError::new(
        ErrorCode::AuthFailed,
        "wrong password or code (an authenticator code works once only)",
    )
}

impl Relay {
    fn device_record(&self, who: &AuthedDevice) -> Result<DeviceRecord, WireError> {
        self.store
            .device(&who.device)
            .map_err(internal)?
            .ok_or_else(|| not_found("device"))
    }

    /// The org's policy.
    pub fn policy(&self, org: &medrelay_proto::OrgId) -> Result<OrgPolicy, WireError> {
        Ok(self
            .store
            .org(org)
            .map_err(internal)?
            .ok_or_else(|| not_found("organisation"))?
            .policy)
    }

    /// The consent text patients of the org see now.
    pub fn consent_text(&self, org: &medrelay_proto::OrgId) -> Result<ConsentText, WireError> {
        let org = self
            .store
            .org(org)
            .map_err(internal)?
            .ok_or_else(|| not_found("organisation"))?;
        match org.policy.consent_text {
            Some(text) => Ok(text),
            None => ConsentText::new(default_consent_text(&org.name))
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string())),
        }
    }

    /// SHA-256 of the org's consent text as it stands now (hashed once per text).
    fn consent_sha256(&self, org_id: &medrelay_proto::OrgId) -> Result<[u8; 32], WireError> {
        let org = self
            .store
            .org(org_id)
            .map_err(internal)?
            .ok_or_else(|| not_found("organisation"))?;
        let mut cache = self
            .consent_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let unchanged = |source: &ConsentSource| match (source, &org.policy.consent_text) {
            (ConsentSource::Set(cached), Some(text)) => cached == text.as_str(),
            (ConsentSource::Default(name), None) => *name == org.name,
            _ => false,
        };
        if let Some((_, hash)) = cache.get(org_id).filter(|(source, _)| unchanged(source)) {
            return Ok(*hash);
        }
        let (source, text) = match org.policy.consent_text {
            Some(text) => (ConsentSource::Set(text.as_str().to_owned()), text),
            None => (
                ConsentSource::Default(org.name.clone()),
                ConsentText::new(default_consent_text(&org.name))
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?,
            ),
        };
        let hash = text.sha256();
        cache.insert(*org_id, (source, hash));
        Ok(hash)
    }

    /// A patient's consent as it stands now: an acceptance counts only for the text it was
    /// given to, so a changed consent text asks every patient again.
    pub fn effective_consent(&self, user: &UserRecord) -> Result<ConsentState, WireError> {
        if user.consent.state != ConsentState::Accepted {
            return Ok(user.consent.state);
        }
        let current = self.consent_sha256(&user.org)?;
        Ok(if user.consent.text_sha256 == Some(current) {
            ConsentState::Accepted
        } else {
            ConsentState::Pending
        })
    }

    /// Where a freshly authenticated connection stands with its login.
    pub fn login_state(&self, who: &AuthedDevice) -> Result<LoginState, WireError> {
        if who.role == Role::Patient {
            return Ok(LoginState::NotNeeded);
        }
        let user = self.caller(who)?;
        if user.credentials.is_none() {
            return Ok(LoginState::NeedsCredentials);
        }
        let device = self.device_record(who)?;
        let policy = self.policy(&who.org)?;
        let now = self.clock.now_ms();
        Ok(match device.login {
            Some(session) if session_expiry(&session, &policy, now).is_ok() => {
                LoginState::LoggedIn(session)
            }
            _ => LoginState::NeedsLogin,
        })
    }

    /// Staff and admins, right after enrolment: a password, a TOTP secret and recovery codes.
    pub fn setup_credentials(
        &self,
        who: &AuthedDevice,
        password: &Password,
    ) -> Result<NewCredentials, WireError> {
        if who.role == Role::Patient {
            return Err(forbidden("patients sign in with their device only"));
        }
        let mut user = self.caller(who)?;
        if user.credentials.as_ref().is_some_and(|c| c.confirmed) {
            return Err(forbidden(
                "your password and authenticator are already set up; change the password instead",
            ));
        }
        let account = user.handle.as_str().to_owned();
        let new = credentials::new_credentials(&account, password.expose())
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        user.credentials = Some(new.record.clone());
        self.store.put_user(&user).map_err(internal)?;
        Ok(new)
    }

    /// Checks password and second factor; on success starts a login session on this device.
    pub fn login(
        &self,
        who: &AuthedDevice,
        password: &Password,
        second_factor: &SecondFactor,
    ) -> Result<LoginSession, WireError> {
        if who.role == Role::Patient {
            return Err(forbidden("patients sign in with their device only"));
        }
        let mut user = self.caller(who)?;
        let now = self.clock.now_ms();
        if let Some(wait) = credentials::locked_for(&user.lockout, now) {
            return Err(WireError::new(
                ErrorCode::LockedOut,
                "too many failed logins; the account is locked for a while",
            )
            .with_retry_after(wait));
        }
        let Some(mut record) = user.credentials.clone() else {
            return Err(forbidden(
                "set up your password and authenticator first (setup-credentials)",
            ));
        };
        let password_ok = credentials::verify_password(&record.password_hash, password.expose());
        let factor_ok = match second_factor {
            SecondFactor::Totp(code) => {
                match credentials::check_totp(&record, code.expose(), now) {
                    Some(step) if password_ok => {
                        record.last_totp_step = step;
                        true
                    }
                    _ => false,
                }
            }
            SecondFactor::Recovery(code) => {
                password_ok && credentials::use_recovery_code(&mut record, code.expose())
            }
        };
        if !(password_ok && factor_ok) {
            credentials::record_failure(&mut user.lockout, now);
            let locked = credentials::locked_for(&user.lockout, now);
            self.store.put_user(&user).map_err(internal)?;
            return Err(match locked {
                Some(wait) => WireError::new(
                    ErrorCode::LockedOut,
                    "too many failed logins; the account is locked for a while",
                )
                .with_retry_after(wait),
                None => login_failed(),
            });
        }
        record.confirmed = true;
        user.credentials = Some(record);
        user.lockout = Default::default();
        self.store.put_user(&user).map_err(internal)?;
        let session = LoginSession {
            started_ms: now,
            last_activity_ms: now,
        };
        let mut device = self.device_record(who)?;
        device.login = Some(session);
        self.store.put_device(&device).map_err(internal)?;
        Ok(session)
    }

    /// Ends (or records the end of) the login session on this device.
    pub fn logout(&self, who: &AuthedDevice) -> Result<(), WireError> {
        let mut device = self.device_record(who)?;
        device.login = None;
        self.store.put_device(&device).map_err(internal)
    }

    /// Stores the last activity of a live session (so a reconnect continues it).
    pub fn record_activity(
        &self,
        who: &AuthedDevice,
        session: LoginSession,
    ) -> Result<(), WireError> {
        let mut device = self.device_record(who)?;
        if device.login.is_some() {
            device.login = Some(session);
            self.store.put_device(&device).map_err(internal)?;
        }
        Ok(())
    }

    /// Changes the caller's password (the current one must be right).
    pub fn change_password(
        &self,
        who: &AuthedDevice,
        current: &Password,
        new: &Password,
    ) -> Result<(), WireError> {
        let mut user = self.caller(who)?;
        let now = self.clock.now_ms();
        let Some(mut record) = user.credentials.clone() else {
            return Err(forbidden("no password is set up yet"));
        };
        if !credentials::verify_password(&record.password_hash, current.expose()) {
            credentials::record_failure(&mut user.lockout, now);
            self.store.put_user(&user).map_err(internal)?;
            return Err(login_failed());
        }
        record.password_hash = credentials::hash_password(new.expose())
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        user.credentials = Some(record);
        self.store.put_user(&user).map_err(internal)
    }

    fn org_user(&self, who: &AuthedDevice, id: &UserId) -> Result<UserRecord, WireError> {
        self.store
            .user(id)
            .map_err(internal)?
            .filter(|u| u.org == who.org)
            .ok_or_else(|| not_found("user"))
    }

    /// The org's people (for admins managing staff or care teams).
    pub fn list_users(&self, who: &AuthedDevice) -> Result<Vec<UserRecord>, WireError> {
        let caller = self.caller(who)?;
        let allowed = permissions::effective(&caller);
        if !allowed.contains(&Permission::ManageStaff)
            && !allowed.contains(&Permission::ManageCareTeams)
        {
            return Err(forbidden(
                "listing people needs manage_staff or manage_care_teams",
            ));
        }
        let mut users = self.store.org_users(&who.org).map_err(internal)?;
        users.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(users)
    }

    /// A user's devices: one's own, or anyone's in the org with manage_staff.
    pub fn list_devices(
        &self,
        who: &AuthedDevice,
        user: Option<UserId>,
    ) -> Result<Vec<DeviceRecord>, WireError> {
        let target = user.unwrap_or(who.user);
        if target != who.user {
            self.require(who, Permission::ManageStaff)?;
            self.org_user(who, &target)?;
        }
        self.store.all_devices(&target).map_err(internal)
    }

    /// Revokes a device (one's own, or anyone's in the org with manage_staff). The caller
    /// closes its live connection.
    pub fn revoke_device(&self, who: &AuthedDevice, device: &DeviceId) -> Result<(), WireError> {
        let record = self
            .store
            .device(device)
            .map_err(internal)?
            .filter(|d| d.org == who.org)
            .ok_or_else(|| not_found("device"))?;
        if record.user != who.user {
            self.require(who, Permission::ManageStaff)?;
        }
        self.store.revoke_device(device).map_err(internal)
    }

    /// Deactivates a user and revokes all their devices; returns the devices to disconnect.
    pub fn deactivate_user(
        &self,
        who: &AuthedDevice,
        user: &UserId,
    ) -> Result<Vec<DeviceId>, WireError> {
        self.require(who, Permission::ManageStaff)?;
        if *user == who.user {
            return Err(forbidden(
                "you cannot deactivate yourself; ask another admin",
            ));
        }
        let mut target = self.org_user(who, user)?;
        target.active = false;
        self.store.put_user(&target).map_err(internal)?;
        let mut revoked = Vec::new();
        for device in self.store.all_devices(user).map_err(internal)? {
            if !device.revoked {
                self.store.revoke_device(&device.id).map_err(internal)?;
                revoked.push(device.id);
            }
        }
        self.invalidate_membership(&who.org);
        Ok(revoked)
    }

    /// Replaces the permissions granted to a user beyond their role's defaults.
    pub fn set_permissions(
        &self,
        who: &AuthedDevice,
        user: &UserId,
        grants: &[Permission],
    ) -> Result<(), WireError> {
        self.require(who, Permission::ManageStaff)?;
        let mut target = self.org_user(who, user)?;
        if let Some(refused) = grants
            .iter()
            .find(|p| !permissions::grantable(target.role, **p))
        {
            return Err(forbidden(&format!(
                "{} cannot be granted to a {} (admins never get a path to messages; patients \
                 get no grants)",
                refused.as_str(),
                target.role.as_str()
            )));
        }
        target.grants = grants.iter().copied().collect();
        self.store.put_user(&target).map_err(internal)?;
        self.invalidate_membership(&who.org);
        Ok(())
    }

    fn staff_members(&self, who: &AuthedDevice, ids: &[UserId]) -> Result<(), WireError> {
        for id in ids {
            let user = self.org_user(who, id)?;
            if user.role != Role::Staff || !user.active {
                return Err(forbidden(
                    "only active staff members can be on a care team or assigned to patients",
                ));
            }
        }
        Ok(())
    }

    /// Creates a care team.
    pub fn create_team(
        &self,
        who: &AuthedDevice,
        name: &TeamName,
    ) -> Result<TeamRecord, WireError> {
        self.require(who, Permission::ManageCareTeams)?;
        let team = TeamRecord {
            id: TeamId::random(&mut rand::rngs::OsRng),
            org: who.org,
            name: name.clone(),
            members: Vec::new(),
        };
        self.store.put_team(&team).map_err(internal)?;
        Ok(team)
    }

    /// Replaces a team's members.
    pub fn set_team_members(
        &self,
        who: &AuthedDevice,
        team: &TeamId,
        staff: &[UserId],
    ) -> Result<TeamRecord, WireError> {
        self.require(who, Permission::ManageCareTeams)?;
        let mut record = self
            .store
            .team(&who.org, team)
            .map_err(internal)?
            .ok_or_else(|| not_found("team"))?;
        self.staff_members(who, staff)?;
        record.members = staff.to_vec();
        self.store.put_team(&record).map_err(internal)?;
        Ok(record)
    }

    /// The org's teams.
    pub fn list_teams(&self, who: &AuthedDevice) -> Result<Vec<TeamRecord>, WireError> {
        if who.role == Role::Patient {
            return Err(forbidden("patients do not manage care teams"));
        }
        self.store.org_teams(&who.org).map_err(internal)
    }

    /// Replaces who cares for a patient. The patient's conversation then has exactly them.
    pub fn assign_care(
        &self,
        who: &AuthedDevice,
        patient: &UserId,
        staff: &[UserId],
        teams: &[TeamId],
    ) -> Result<medrelay_proto::ConversationId, WireError> {
        self.require(who, Permission::ManageCareTeams)?;
        let target = self.org_user(who, patient)?;
        if target.role != Role::Patient {
            return Err(forbidden("care is assigned to patients"));
        }
        self.staff_members(who, staff)?;
        let mut everyone: BTreeSet<UserId> = staff.iter().copied().collect();
        for team in teams {
            let team = self
                .store
                .team(&who.org, team)
                .map_err(internal)?
                .ok_or_else(|| not_found("team"))?;
            everyone.extend(team.members);
        }
        if everyone.len() + 1 > medrelay_proto::limits::MAX_MEMBERS {
            return Err(WireError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a patient's care team has at most {} staff",
                    medrelay_proto::limits::MAX_MEMBERS - 1
                ),
            ));
        }
        let care = CareRecord {
            staff: staff.to_vec(),
            teams: teams.to_vec(),
        };
        self.store
            .put_care(&who.org, patient, &care)
            .map_err(internal)?;
        let conversation = self
            .store
            .patient_conversation(
                &who.org,
                patient,
                medrelay_proto::ConversationId::random(&mut rand::rngs::OsRng),
                self.clock.now_ms(),
            )
            .map_err(internal)?;
        Ok(conversation.id)
    }

    /// The org's policy, for those who may change it.
    pub fn get_policy(&self, who: &AuthedDevice) -> Result<OrgPolicy, WireError> {
        self.require(who, Permission::ChangePolicy)?;
        self.policy(&who.org)
    }

    fn update_policy(
        &self,
        who: &AuthedDevice,
        change: impl FnOnce(&mut OrgPolicy),
    ) -> Result<(), WireError> {
        self.require(who, Permission::ChangePolicy)?;
        let mut org = self
            .store
            .org(&who.org)
            .map_err(internal)?
            .ok_or_else(|| not_found("organisation"))?;
        change(&mut org.policy);
        self.store.put_org(&org).map_err(internal)
    }

    /// Sets the idle timeout and session lifetime of staff and admin sessions.
    pub fn set_session_policy(
        &self,
        who: &AuthedDevice,
        idle_timeout_ms: u64,
        session_lifetime_ms: u64,
    ) -> Result<(), WireError> {
        self.update_policy(who, |policy| {
            policy.idle_timeout_ms = idle_timeout_ms;
            policy.session_lifetime_ms = session_lifetime_ms;
        })
    }

    /// Replaces one role's IP allow-list. An admin cannot lock out the address they use.
    pub fn set_allow_list(
        &self,
        who: &AuthedDevice,
        list: &RoleAllowList,
        caller_address: std::net::IpAddr,
    ) -> Result<(), WireError> {
        if list.role == who.role
            && !list.cidrs.is_empty()
            && !list.cidrs.iter().any(|c| c.contains(&caller_address))
        {
            return Err(forbidden(
                "that allow-list would lock you out: include the network you connect from",
            ));
        }
        self.update_policy(who, |policy| {
            if list.cidrs.is_empty() {
                policy.allow_lists.remove(&list.role);
            } else {
                policy.allow_lists.insert(list.role, list.cidrs.clone());
            }
        })
    }

    /// Sets the consent text patients must accept.
    pub fn set_consent_text(
        &self,
        who: &AuthedDevice,
        text: &ConsentText,
    ) -> Result<(), WireError> {
        self.update_policy(who, |policy| policy.consent_text = Some(text.clone()))
    }

    /// A patient accepts the consent text (the one whose hash they send).
    pub fn accept_consent(
        &self,
        who: &AuthedDevice,
        text_sha256: &[u8; 32],
    ) -> Result<(), WireError> {
        if who.role != Role::Patient {
            return Err(forbidden("consent is a patient's to give"));
        }
        let current = self.consent_text(&who.org)?;
        if current.sha256() != *text_sha256 {
            return Err(forbidden(
                "the consent text has changed since you read it; read the new text and accept again",
            ));
        }
        let mut user = self.caller(who)?;
        user.consent.state = ConsentState::Accepted;
        user.consent.changed_ms = self.clock.now_ms();
        user.consent.text_sha256 = Some(*text_sha256);
        self.store.put_user(&user).map_err(internal)
    }

    /// A patient withdraws consent: messaging stops, and staff see it.
    pub fn withdraw_consent(&self, who: &AuthedDevice) -> Result<(), WireError> {
        if who.role != Role::Patient {
            return Err(forbidden("consent is a patient's to withdraw"));
        }
        let mut user = self.caller(who)?;
        user.consent.state = ConsentState::Withdrawn;
        user.consent.changed_ms = self.clock.now_ms();
        self.store.put_user(&user).map_err(internal)
    }

    /// Emergency access: a staff member joins a patient's conversation until it expires.
    pub fn grant_break_glass(
        &self,
        who: &AuthedDevice,
        staff: &UserId,
        patient: &UserId,
        reason: &Reason,
        duration_ms: u64,
    ) -> Result<u64, WireError> {
        self.require(who, Permission::GrantBreakGlass)?;
        let staff_user = self.org_user(who, staff)?;
        if staff_user.role != Role::Staff || !staff_user.active {
            return Err(forbidden("break-glass access is for active staff members"));
        }
        if self.org_user(who, patient)?.role != Role::Patient {
            return Err(forbidden(
                "break-glass access is to a patient's conversation",
            ));
        }
        let now = self.clock.now_ms();
        let grant = BreakGlassRecord {
            staff: *staff,
            patient: *patient,
            granted_by: who.user,
            reason: reason.clone(),
            granted_ms: now,
            expires_ms: now.saturating_add(duration_ms),
        };
        self.store
            .put_break_glass(&who.org, &grant)
            .map_err(internal)?;
        self.store
            .patient_conversation(
                &who.org,
                patient,
                medrelay_proto::ConversationId::random(&mut rand::rngs::OsRng),
                now,
            )
            .map_err(internal)?;
        Ok(grant.expires_ms)
    }
}
