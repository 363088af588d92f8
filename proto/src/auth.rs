//! The connection's opening: the server's challenge, the client's proof (auth for an enrolled
//! device, enrol for a new one), and who the connection turned out to be.

use crate::field::{
    optional, required, required_enum, required_text, FieldError, FieldProblem, Within,
};
use crate::limits::{MAX_ORG_NAME_LEN, NONCE_LEN};
use crate::policy::optional_consent_text;
use crate::{
    pb, Bytes, ConsentText, DeviceId, DeviceKeys, DeviceLabel, Handle, InviteCode, OrgId, Origin,
    ProtoError, Role, Signature, UserId, X25519PublicKey,
};

/// Pushed by the server as the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Fresh, random, for this connection and one proof only.
    pub nonce: [u8; NONCE_LEN],
    /// Server time, ms since the Unix epoch.
    pub server_time_ms: u64,
}

impl Challenge {
    pub(crate) fn to_pb(&self) -> pb::Challenge {
        pb::Challenge {
            nonce: Bytes::copy_from_slice(&self.nonce),
            server_time_ms: self.server_time_ms,
        }
    }

    pub(crate) fn from_pb(raw: pb::Challenge) -> Result<Self, FieldError> {
        Ok(Self {
            nonce: required("nonce", &raw.nonce, |b| {
                <[u8; NONCE_LEN]>::try_from(b).map_err(|_| ProtoError::WrongLength {
                    expected: NONCE_LEN,
                    actual: b.len(),
                })
            })?,
            server_time_ms: raw.server_time_ms,
        })
    }
}

/// How a proof says it is bound to its connection. The value itself is in the transcript
/// ([`crate::Binding`]): for the TLS exporter the server derives it from its own session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// TLS exporter keying material: native clients. On the wire `origin` is empty.
    TlsExporter,
    /// The server origin the browser talks to: browsers.
    Origin(Origin),
}

impl ChannelBinding {
    /// The wire enum value and origin string.
    fn to_pb(&self) -> (i32, String) {
        match self {
            Self::TlsExporter => (pb::ChannelBinding::TlsExporter.into(), String::new()),
            Self::Origin(origin) => (
                pb::ChannelBinding::Origin.into(),
                origin.as_str().to_owned(),
            ),
        }
    }

    /// Reads the `binding` and `origin` fields of a proof.
    fn from_pb(binding: i32, origin: String) -> Result<Self, FieldError> {
        let kind = required_enum("binding", binding, |kind: pb::ChannelBinding| match kind {
            pb::ChannelBinding::Unspecified => None,
            other => Some(other),
        })?;
        match kind {
            pb::ChannelBinding::Origin => {
                required_text("origin", origin, Origin::new).map(Self::Origin)
            }
            _ => {
                if origin.is_empty() {
                    Ok(Self::TlsExporter)
                } else {
                    Err(FieldError::new("origin", FieldProblem::NotAllowed))
                }
            }
        }
    }
}

/// An enrolled device proves it holds its identity signing key, bound to this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthProof {
    /// The device logging in.
    pub device_id: DeviceId,
    /// How the signature is bound to the connection.
    pub binding: ChannelBinding,
    /// Ed25519 over [`crate::auth_transcript`], by the device's identity signing key.
    pub signature: Signature,
}

impl AuthProof {
    pub(crate) fn to_pb(&self) -> pb::AuthProof {
        let (binding, origin) = self.binding.to_pb();
        pb::AuthProof {
            device_id: Bytes::copy_from_slice(self.device_id.as_bytes()),
            binding,
            origin,
            signature: Bytes::copy_from_slice(self.signature.as_bytes()),
        }
    }

    pub(crate) fn from_pb(raw: pb::AuthProof) -> Result<Self, FieldError> {
        Ok(Self {
            device_id: required("device_id", &raw.device_id, DeviceId::from_bytes)?,
            binding: ChannelBinding::from_pb(raw.binding, raw.origin)?,
            signature: required("signature", &raw.signature, Signature::from_bytes)?,
        })
    }
}

/// A new device enrols with an invite code; on success the connection is authenticated as it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollRequest {
    /// The invite being used.
    pub invite_code: InviteCode,
    /// The new device's public keys.
    pub keys: DeviceKeys,
    /// How the signature is bound to the connection.
    pub binding: ChannelBinding,
    /// Ed25519 over [`crate::enroll_transcript`], by `keys.identity.signing_key`.
    pub signature: Signature,
    /// A short label for the device; no PHI. May be empty.
    pub device_label: DeviceLabel,
}

impl EnrollRequest {
    pub(crate) fn to_pb(&self) -> pb::EnrollRequest {
        let (binding, origin) = self.binding.to_pb();
        pb::EnrollRequest {
            invite_code: self.invite_code.expose().to_owned(),
            keys: Some(self.keys.to_pb()),
            binding,
            origin,
            signature: Bytes::copy_from_slice(self.signature.as_bytes()),
            device_label: self.device_label.as_str().to_owned(),
        }
    }

    pub(crate) fn from_pb(raw: pb::EnrollRequest) -> Result<Self, FieldError> {
        let keys = raw
            .keys
            .ok_or_else(|| FieldError::new("keys", FieldProblem::Missing))?;
        Ok(Self {
            invite_code: required_text("invite_code", raw.invite_code, InviteCode::new)?,
            keys: DeviceKeys::from_pb(keys).within("keys")?,
            binding: ChannelBinding::from_pb(raw.binding, raw.origin)?,
            signature: required("signature", &raw.signature, Signature::from_bytes)?,
            device_label: DeviceLabel::new(raw.device_label)
                .map_err(|e| FieldError::new("device_label", e))?,
        })
    }
}

/// The server accepted an `auth` or `enroll`: the connection is now this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOk {
    /// The device's org.
    pub org_id: OrgId,
    /// The device's user.
    pub user_id: UserId,
    /// The device (newly assigned after an enrolment).
    pub device_id: DeviceId,
    /// The user's role.
    pub role: Role,
    /// The user's handle.
    pub handle: Handle,
    /// One-time prekeys the server still holds for this device.
    pub one_time_prekeys_remaining: u32,
    /// If the org archives, the key every message must also be sealed to.
    pub archive_public_key: Option<X25519PublicKey>,
    /// Staff and admins: the account has no password and TOTP yet; send `setup_credentials`,
    /// then `login`.
    pub credentials_required: bool,
    /// Staff and admins: no live login session on this device (first login, or after a
    /// logoff); send `login` before anything else.
    pub login_required: bool,
    /// Patients: the consent text must be accepted (`accept_consent`) before messaging.
    pub consent_required: bool,
    /// The consent text to accept; always present when `consent_required` is.
    pub consent_text: Option<ConsentText>,
}

impl AuthOk {
    pub(crate) fn to_pb(&self) -> pb::AuthOk {
        pb::AuthOk {
            org_id: Bytes::copy_from_slice(self.org_id.as_bytes()),
            user_id: Bytes::copy_from_slice(self.user_id.as_bytes()),
            device_id: Bytes::copy_from_slice(self.device_id.as_bytes()),
            role: self.role.to_pb(),
            handle: self.handle.as_str().to_owned(),
            one_time_prekeys_remaining: self.one_time_prekeys_remaining,
            archive_public_key: self
                .archive_public_key
                .map(|key| Bytes::copy_from_slice(key.as_bytes()))
                .unwrap_or_default(),
            credentials_required: self.credentials_required,
            login_required: self.login_required,
            consent_required: self.consent_required,
            consent_text: self
                .consent_text
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn from_pb(raw: pb::AuthOk) -> Result<Self, FieldError> {
        let consent_text = optional_consent_text("consent_text", raw.consent_text)?;
        if raw.consent_required && consent_text.is_none() {
            return Err(FieldError::new("consent_text", FieldProblem::Missing));
        }
        Ok(Self {
            org_id: required("org_id", &raw.org_id, OrgId::from_bytes)?,
            user_id: required("user_id", &raw.user_id, UserId::from_bytes)?,
            device_id: required("device_id", &raw.device_id, DeviceId::from_bytes)?,
            role: Role::from_pb("role", raw.role)?,
            handle: required_text("handle", raw.handle, Handle::new)?,
            one_time_prekeys_remaining: raw.one_time_prekeys_remaining,
            archive_public_key: optional(
                "archive_public_key",
                &raw.archive_public_key,
                X25519PublicKey::from_bytes,
            )?,
            credentials_required: raw.credentials_required,
            login_required: raw.login_required,
            consent_required: raw.consent_required,
            consent_text,
        })
    }
}

/// The answer to `WhoAmI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller's org.
    pub org_id: OrgId,
    /// The caller's user.
    pub user_id: UserId,
    /// The caller's device.
    pub device_id: DeviceId,
    /// The caller's role.
    pub role: Role,
    /// The caller's handle.
    pub handle: Handle,
    /// The org's display name (the clinic's name; not PHI). At most
    /// [`MAX_ORG_NAME_LEN`] bytes.
    pub org_name: String,
}

impl Identity {
    pub(crate) fn to_pb(&self) -> pb::Identity {
        pb::Identity {
            org_id: Bytes::copy_from_slice(self.org_id.as_bytes()),
            user_id: Bytes::copy_from_slice(self.user_id.as_bytes()),
            device_id: Bytes::copy_from_slice(self.device_id.as_bytes()),
            role: self.role.to_pb(),
            handle: self.handle.as_str().to_owned(),
            org_name: self.org_name.clone(),
        }
    }

    pub(crate) fn from_pb(raw: pb::Identity) -> Result<Self, FieldError> {
        if raw.org_name.len() > MAX_ORG_NAME_LEN {
            return Err(FieldError::new(
                "org_name",
                ProtoError::TooLong {
                    max: MAX_ORG_NAME_LEN,
                    actual: raw.org_name.len(),
                },
            ));
        }
        Ok(Self {
            org_id: required("org_id", &raw.org_id, OrgId::from_bytes)?,
            user_id: required("user_id", &raw.user_id, UserId::from_bytes)?,
            device_id: required("device_id", &raw.device_id, DeviceId::from_bytes)?,
            role: Role::from_pb("role", raw.role)?,
            handle: required_text("handle", raw.handle, Handle::new)?,
            org_name: raw.org_name,
        })
    }
}
