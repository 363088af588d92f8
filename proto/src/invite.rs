//! Invites: how a new user or a new device gets in. An admin (or a user, for their own new
//! device) creates one; the invitee enrols with its code.

use crate::field::{must_be_empty, required_enum, required_text, FieldError};
use crate::limits::MAX_INVITE_CODE_LEN;
use crate::{pb, Handle, ProtoError, Role};

/// What an invite creates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum InviteKind {
    /// A new user, with the role and handle fixed by the invite.
    NewUser,
    /// Another device for the inviting user's own account.
    NewDevice,
}

/// A `CreateInvite` request: which kind, and for a new user the role and handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteSpec {
    /// Invite a new user. On the wire: kind `NEW_USER` with a role and a handle.
    NewUser {
        /// The new user's role.
        role: Role,
        /// The new user's handle, reserved until the invite is used or expires.
        handle: Handle,
    },
    /// Invite another device for the caller's account. On the wire: kind `NEW_DEVICE`, role
    /// and handle left empty.
    NewDevice,
}

impl InviteSpec {
    /// The invite's kind.
    pub fn kind(&self) -> InviteKind {
        match self {
            Self::NewUser { .. } => InviteKind::NewUser,
            Self::NewDevice => InviteKind::NewDevice,
        }
    }

    pub(crate) fn to_pb(&self) -> pb::CreateInvite {
        match self {
            Self::NewUser { role, handle } => pb::CreateInvite {
                kind: pb::InviteKind::NewUser.into(),
                role: role.to_pb(),
                handle: handle.as_str().to_owned(),
            },
            Self::NewDevice => pb::CreateInvite {
                kind: pb::InviteKind::NewDevice.into(),
                role: pb::Role::Unspecified.into(),
                handle: String::new(),
            },
        }
    }

    pub(crate) fn from_pb(raw: pb::CreateInvite) -> Result<Self, FieldError> {
        let kind = required_enum("kind", raw.kind, |kind: pb::InviteKind| match kind {
            pb::InviteKind::Unspecified => None,
            pb::InviteKind::NewUser => Some(InviteKind::NewUser),
            pb::InviteKind::NewDevice => Some(InviteKind::NewDevice),
        })?;
        match kind {
            InviteKind::NewUser => Ok(Self::NewUser {
                role: Role::from_pb("role", raw.role)?,
                handle: required_text("handle", raw.handle, Handle::new)?,
            }),
            InviteKind::NewDevice => {
                must_be_empty("role", raw.role == i32::from(pb::Role::Unspecified))?;
                must_be_empty("handle", raw.handle.is_empty())?;
                Ok(Self::NewDevice)
            }
        }
    }
}

/// An invite code: 1 to 64 ASCII letters, digits, '-' or '_'. A bearer secret until used or
/// expired, so `Debug` does not show it; hand it to the invitee out of band.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InviteCode(String);

impl InviteCode {
    /// Validates `code`.
    pub fn new(code: impl Into<String>) -> Result<Self, ProtoError> {
        let code = code.into();
        if code.is_empty() {
            return Err(ProtoError::Empty);
        }
        if code.len() > MAX_INVITE_CODE_LEN {
            return Err(ProtoError::TooLong {
                max: MAX_INVITE_CODE_LEN,
                actual: code.len(),
            });
        }
        if !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ProtoError::InvalidCharacters);
        }
        Ok(Self(code))
    }

    /// The code itself. Treat it as a secret: do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteCode(<redacted>)")
    }
}

/// The server's answer to `CreateInvite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteCreated {
    /// The code to hand to the invitee.
    pub code: InviteCode,
    /// When the code stops working, ms since the Unix epoch (server clock).
    pub expires_at_ms: u64,
}

impl InviteCreated {
    pub(crate) fn to_pb(&self) -> pb::InviteCreated {
        pb::InviteCreated {
            code: self.code.expose().to_owned(),
            expires_at_ms: self.expires_at_ms,
        }
    }

    pub(crate) fn from_pb(raw: pb::InviteCreated) -> Result<Self, FieldError> {
        Ok(Self {
            code: required_text("code", raw.code, InviteCode::new)?,
            expires_at_ms: raw.expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_code_rule_and_redaction() -> Result<(), ProtoError> {
        let code = InviteCode::new("AbC-12_x")?;
        assert_eq!(code.expose(), "AbC-12_x");
        assert_eq!(format!("{code:?}"), "InviteCode(<redacted>)");
        assert_eq!(InviteCode::new(""), Err(ProtoError::Empty));
        assert_eq!(InviteCode::new("a b"), Err(ProtoError::InvalidCharacters));
        assert!(InviteCode::new("a".repeat(65)).is_err());
        Ok(())
    }
}
