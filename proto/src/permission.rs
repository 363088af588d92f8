//! Fine-grained permissions. A role grants defaults and admins may grant more; which request
//! needs which permission is the server's policy. This is the value, on the wire and in storage.

use std::fmt;
use std::str::FromStr;

use crate::field::{required_enum, unique, FieldError};
use crate::{pb, ProtoError};

/// One thing a user may be allowed to do. Serde writes the variant index (postcard) or the
/// snake_case name (JSON): add new permissions at the end only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Create invites for new patients.
    InvitePatients,
    /// Message the patients assigned to them (directly or through a care team).
    MessageAssignedPatients,
    /// See every patient conversation, assigned or not.
    SeeAllPatientConversations,
    /// Invite staff, revoke devices, deactivate users, grant permissions.
    ManageStaff,
    /// Change the org's session policy, IP allow-lists and consent text.
    ChangePolicy,
    /// Read the audit log.
    ReadAuditLog,
    /// Export the audit log.
    ExportAuditLog,
    /// Act as the privacy officer (accounting of disclosures, consent records).
    PrivacyOfficer,
    /// Create care teams, set their members, assign care.
    ManageCareTeams,
    /// Grant emergency (break-glass) access to a patient's conversation.
    GrantBreakGlass,
}

impl Permission {
    /// Every permission, in wire order.
    pub const ALL: [Permission; 10] = [
        Self::InvitePatients,
        Self::MessageAssignedPatients,
        Self::SeeAllPatientConversations,
        Self::ManageStaff,
        Self::ChangePolicy,
        Self::ReadAuditLog,
        Self::ExportAuditLog,
        Self::PrivacyOfficer,
        Self::ManageCareTeams,
        Self::GrantBreakGlass,
    ];

    /// The snake_case name, e.g. `manage_care_teams`: for command lines, logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvitePatients => "invite_patients",
            Self::MessageAssignedPatients => "message_assigned_patients",
            Self::SeeAllPatientConversations => "see_all_patient_conversations",
            Self::ManageStaff => "manage_staff",
            Self::ChangePolicy => "change_policy",
            Self::ReadAuditLog => "read_audit_log",
            Self::ExportAuditLog => "export_audit_log",
            Self::PrivacyOfficer => "privacy_officer",
            Self::ManageCareTeams => "manage_care_teams",
            Self::GrantBreakGlass => "grant_break_glass",
        }
    }

    /// The raw prost value.
    pub(crate) fn to_pb(self) -> i32 {
        use pb::Permission as P;
        match self {
            Self::InvitePatients => P::InvitePatients,
            Self::MessageAssignedPatients => P::MessageAssignedPatients,
            Self::SeeAllPatientConversations => P::SeeAllPatientConversations,
            Self::ManageStaff => P::ManageStaff,
            Self::ChangePolicy => P::ChangePolicy,
            Self::ReadAuditLog => P::ReadAuditLog,
            Self::ExportAuditLog => P::ExportAuditLog,
            Self::PrivacyOfficer => P::PrivacyOfficer,
            Self::ManageCareTeams => P::ManageCareTeams,
            Self::GrantBreakGlass => P::GrantBreakGlass,
        }
        .into()
    }

    /// Parses one required permission: `PERMISSION_UNSPECIFIED` is missing.
    fn from_pb(name: &'static str, raw: i32) -> Result<Self, FieldError> {
        use pb::Permission as P;
        required_enum(name, raw, |permission: P| match permission {
            P::Unspecified => None,
            P::InvitePatients => Some(Self::InvitePatients),
            P::MessageAssignedPatients => Some(Self::MessageAssignedPatients),
            P::SeeAllPatientConversations => Some(Self::SeeAllPatientConversations),
            P::ManageStaff => Some(Self::ManageStaff),
            P::ChangePolicy => Some(Self::ChangePolicy),
            P::ReadAuditLog => Some(Self::ReadAuditLog),
            P::ExportAuditLog => Some(Self::ExportAuditLog),
            P::PrivacyOfficer => Some(Self::PrivacyOfficer),
            P::ManageCareTeams => Some(Self::ManageCareTeams),
            P::GrantBreakGlass => Some(Self::GrantBreakGlass),
        })
    }

    /// Parses a repeated permission field: each set, none twice. May be empty.
    pub(crate) fn list_from_pb(name: &'static str, raw: &[i32]) -> Result<Vec<Self>, FieldError> {
        let list = raw
            .iter()
            .map(|&p| Self::from_pb(name, p))
            .collect::<Result<Vec<_>, _>>()?;
        unique(name, &list)?;
        Ok(list)
    }

    /// The raw prost values of a list.
    pub(crate) fn list_to_pb(list: &[Self]) -> Vec<i32> {
        list.iter().map(|p| p.to_pb()).collect()
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = ProtoError;

    /// Parses the snake_case name exactly (see [`Permission::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(ProtoError::UnknownName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut names = std::collections::BTreeSet::new();
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
            assert!(names.insert(p.as_str()));
        }
        assert_eq!(
            "MANAGE_STAFF".parse::<Permission>(),
            Err(ProtoError::UnknownName)
        );
        assert_eq!("".parse::<Permission>(), Err(ProtoError::UnknownName));
    }

    #[test]
    fn wire_values_round_trip_and_match_the_proto_names() -> Result<(), FieldError> {
        for p in Permission::ALL {
            assert_eq!(Permission::from_pb("p", p.to_pb())?, p);
            let wire = pb::Permission::try_from(p.to_pb()).map(|w| w.as_str_name().to_lowercase());
            assert_eq!(wire.ok().as_deref(), Some(p.as_str()));
        }
        assert_eq!(
            Permission::list_from_pb("grants", &Permission::list_to_pb(&Permission::ALL))?,
            Permission::ALL.to_vec()
        );
        Ok(())
    }

    #[test]
    fn all_is_in_wire_order() {
        let mut sorted = Permission::ALL;
        sorted.sort();
        assert_eq!(sorted, Permission::ALL);
        assert!(Permission::ALL.windows(2).all(|w| match w {
            [a, b] => a.to_pb() + 1 == b.to_pb(),
            _ => false,
        }));
    }

    #[test]
    fn serde_uses_the_snake_case_name() -> Result<(), Box<dyn std::error::Error>> {
        let json = serde_json::to_string(&Permission::ManageCareTeams)?;
        assert_eq!(json, "\"manage_care_teams\"");
        assert_eq!(
            serde_json::from_str::<Permission>(&json)?,
            Permission::ManageCareTeams
        );
        let bin = postcard::to_allocvec(&Permission::GrantBreakGlass)?;
        assert_eq!(
            postcard::from_bytes::<Permission>(&bin)?,
            Permission::GrantBreakGlass
        );
        Ok(())
    }
}
