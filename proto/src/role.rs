//! A user's role in their org. Authorisation decisions are the server's; this is the value.

use crate::field::{required_enum, FieldError};
use crate::pb;

/// What a user is to their org. Serde writes the variant index (postcard) or name (JSON):
/// add new roles at the end only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Role {
    /// A patient, messaging the clinic from the mobile SDK.
    Patient,
    /// A member of the clinic's staff, on the staff web client.
    Staff,
    /// An administrator: manages users, devices and policy; cannot read messages.
    Admin,
}

impl Role {
    /// The wire name: `PATIENT`, `STAFF` or `ADMIN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "PATIENT",
            Self::Staff => "STAFF",
            Self::Admin => "ADMIN",
        }
    }

    /// The raw prost value.
    pub(crate) fn to_pb(self) -> i32 {
        match self {
            Self::Patient => pb::Role::Patient,
            Self::Staff => pb::Role::Staff,
            Self::Admin => pb::Role::Admin,
        }
        .into()
    }

    /// Parses a required role field.
    pub(crate) fn from_pb(name: &'static str, raw: i32) -> Result<Self, FieldError> {
        required_enum(name, raw, |role: pb::Role| match role {
            pb::Role::Unspecified => None,
            pb::Role::Patient => Some(Self::Patient),
            pb::Role::Staff => Some(Self::Staff),
            pb::Role::Admin => Some(Self::Admin),
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
