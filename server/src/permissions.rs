//! Roles and permissions: what each role may do by default, what an admin may grant on top,
//! and what nobody may be granted (admins never get a path to messages).

use std::collections::BTreeSet;

use medrelay_proto::{Permission, Role};

use crate::store::UserRecord;

/// The permissions a role has without any grant.
pub fn role_defaults(role: Role) -> BTreeSet<Permission> {
    use Permission::*;
    match role {
        Role::Patient => BTreeSet::new(),
        Role::Staff => [InvitePatients, MessageAssignedPatients]
            .into_iter()
            .collect(),
        Role::Admin => [
            InvitePatients,
            ManageStaff,
            ChangePolicy,
            ReadAuditLog,
            ExportAuditLog,
            ManageCareTeams,
            GrantBreakGlass,
        ]
        .into_iter()
        .collect(),
    }
}

/// Whether `permission` may be granted to a user of `role`. Patients get no grants; admins
/// can never be given access to patient conversations (they cannot read messages).
pub fn grantable(role: Role, permission: Permission) -> bool {
    match role {
        Role::Patient => false,
        Role::Admin => !matches!(
            permission,
            Permission::MessageAssignedPatients | Permission::SeeAllPatientConversations
        ),
        Role::Staff => true,
    }
}

/// What a user may do: the role's defaults plus the grants that are valid for the role.
pub fn effective(user: &UserRecord) -> BTreeSet<Permission> {
    let mut permissions = role_defaults(user.role);
    permissions.extend(
        user.grants
            .iter()
            .copied()
            .filter(|p| grantable(user.role, *p)),
    );
    permissions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_never_reach_messages_and_patients_get_nothing() {
        for permission in Permission::ALL {
            assert!(!grantable(Role::Patient, permission));
        }
        assert!(!grantable(
            Role::Admin,
            Permission::SeeAllPatientConversations
        ));
        assert!(!grantable(Role::Admin, Permission::MessageAssignedPatients));
        assert!(!role_defaults(Role::Admin).contains(&Permission::MessageAssignedPatients));
        assert!(grantable(Role::Staff, Permission::PrivacyOfficer));
    }
}
