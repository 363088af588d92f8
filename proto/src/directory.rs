//! The org's directory as admins see it: users with their role, status, permissions and
//! consent, and a user's devices. Also the requests that change them.

use crate::field::{bytes_of, required, required_text, FieldError};
use crate::{
    pb, ClientRequest, ConsentState, DeviceId, DeviceLabel, Handle, Permission, Role, UserId,
};

/// One user, as `list_users` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user.
    pub user_id: UserId,
    /// Their handle.
    pub handle: Handle,
    /// Their role.
    pub role: Role,
    /// False once deactivated: every device revoked, no further enrolment.
    pub active: bool,
    /// Effective permissions (the role's defaults plus grants), none twice.
    pub permissions: Vec<Permission>,
    /// Their consent state (`NotApplicable` for anyone but a patient).
    pub consent: ConsentState,
}

impl UserInfo {
    pub(crate) fn to_pb(&self) -> pb::UserInfo {
        pb::UserInfo {
            user_id: bytes_of(self.user_id),
            handle: self.handle.as_str().to_owned(),
            role: self.role.to_pb(),
            active: self.active,
            permissions: Permission::list_to_pb(&self.permissions),
            consent: self.consent.to_pb(),
        }
    }

    pub(crate) fn from_pb(raw: pb::UserInfo) -> Result<Self, FieldError> {
        Ok(Self {
            user_id: required("user_id", &raw.user_id, UserId::from_bytes)?,
            handle: required_text("handle", raw.handle, Handle::new)?,
            role: Role::from_pb("role", raw.role)?,
            active: raw.active,
            permissions: Permission::list_from_pb("permissions", &raw.permissions)?,
            consent: ConsentState::from_pb("consent", raw.consent)?,
        })
    }
}

/// One device, as `list_devices` answers; revoked devices are listed too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub device_id: DeviceId,
    /// The label chosen at enrolment (may be empty).
    pub label: DeviceLabel,
    /// When it enrolled, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it last authenticated or made a request, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// Whether it has been revoked.
    pub revoked: bool,
}

impl DeviceInfo {
    pub(crate) fn to_pb(&self) -> pb::DeviceInfo {
        pb::DeviceInfo {
            device_id: bytes_of(self.device_id),
            label: self.label.as_str().to_owned(),
            created_ms: self.created_ms,
            last_seen_ms: self.last_seen_ms,
            revoked: self.revoked,
        }
    }

    pub(crate) fn from_pb(raw: pb::DeviceInfo) -> Result<Self, FieldError> {
        Ok(Self {
            device_id: required("device_id", &raw.device_id, DeviceId::from_bytes)?,
            label: DeviceLabel::new(raw.label).map_err(|e| FieldError::new("label", e))?,
            created_ms: raw.created_ms,
            last_seen_ms: raw.last_seen_ms,
            revoked: raw.revoked,
        })
    }
}

/// `set_permissions`: the user, and the grants beyond their role's defaults (may be empty),
/// each set and none twice.
pub(crate) fn set_permissions_from_pb(
    raw: pb::SetPermissions,
) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::SetPermissions {
        user_id: required("user_id", &raw.user_id, UserId::from_bytes)?,
        grants: Permission::list_from_pb("grants", &raw.grants)?,
    })
}
