//! Care teams and care assignment: who may message a patient. A team is a named group of
//! staff; a patient is assigned staff directly and whole teams, and their conversation then
//! has exactly those members.

use std::fmt;
use std::str::FromStr;

use crate::field::{bytes_each, bytes_of, distinct_each, required, required_text, FieldError};
use crate::limits::{MAX_MEMBERS, MAX_TEAMS_PER_PATIENT, MAX_TEAM_MEMBERS, MAX_TEAM_NAME_LEN};
use crate::names::{check_line, redacted_debug, text_conversions};
use crate::{pb, ClientRequest, ProtoError, TeamId, UserId};

/// A care team's name, e.g. `Cardiology nights`: 1 to [`MAX_TEAM_NAME_LEN`] characters on one
/// line, not blank, nothing unprintable. `Debug` shows only its length (a team may be named
/// after a person).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TeamName(String);

impl TeamName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, ProtoError> {
        let name = name.into();
        check_line(&name, MAX_TEAM_NAME_LEN)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

text_conversions!(TeamName);
redacted_debug!(TeamName);

/// A care team, as `create_team`, `set_team_members` and `list_teams` answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    /// The team.
    pub team_id: TeamId,
    /// Its name.
    pub name: TeamName,
    /// Its staff, at most [`MAX_TEAM_MEMBERS`], none twice.
    pub staff_user_ids: Vec<UserId>,
}

impl Team {
    pub(crate) fn to_pb(&self) -> pb::Team {
        pb::Team {
            team_id: bytes_of(self.team_id),
            name: self.name.as_str().to_owned(),
            staff_user_ids: bytes_each(&self.staff_user_ids),
        }
    }

    pub(crate) fn from_pb(raw: pb::Team) -> Result<Self, FieldError> {
        Ok(Self {
            team_id: required("team_id", &raw.team_id, TeamId::from_bytes)?,
            name: required_text("name", raw.name, TeamName::new)?,
            staff_user_ids: staff("staff_user_ids", &raw.staff_user_ids, MAX_TEAM_MEMBERS)?,
        })
    }
}

/// A list of staff user ids: at most `max`, each 16 bytes, none twice.
fn staff(
    name: &'static str,
    raw: &[prost::bytes::Bytes],
    max: usize,
) -> Result<Vec<UserId>, FieldError> {
    distinct_each(name, raw, max, UserId::from_bytes)
}

/// `create_team`: the name is required.
pub(crate) fn create_team_from_pb(raw: pb::CreateTeam) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::CreateTeam {
        name: required_text("name", raw.name, TeamName::new)?,
    })
}

/// `set_team_members`: the team, and its new staff (may be empty).
pub(crate) fn set_team_members_from_pb(
    raw: pb::SetTeamMembers,
) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::SetTeamMembers {
        team_id: required("team_id", &raw.team_id, TeamId::from_bytes)?,
        staff_user_ids: staff("staff_user_ids", &raw.staff_user_ids, MAX_TEAM_MEMBERS)?,
    })
}

/// The raw form of `set_team_members`.
pub(crate) fn set_team_members_to_pb(
    team_id: &TeamId,
    staff_user_ids: &[UserId],
) -> pb::SetTeamMembers {
    pb::SetTeamMembers {
        team_id: bytes_of(team_id),
        staff_user_ids: bytes_each(staff_user_ids),
    }
}

/// `assign_care`: the patient, up to `MAX_MEMBERS - 1` staff (the patient is the other
/// member) and up to [`MAX_TEAMS_PER_PATIENT`] teams, none twice. Both lists may be empty.
pub(crate) fn assign_care_from_pb(raw: pb::AssignCare) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::AssignCare {
        patient_user_id: required("patient_user_id", &raw.patient_user_id, UserId::from_bytes)?,
        staff_user_ids: staff("staff_user_ids", &raw.staff_user_ids, MAX_MEMBERS - 1)?,
        team_ids: distinct_each(
            "team_ids",
            &raw.team_ids,
            MAX_TEAMS_PER_PATIENT,
            TeamId::from_bytes,
        )?,
    })
}

/// The raw form of `assign_care`.
pub(crate) fn assign_care_to_pb(
    patient_user_id: &UserId,
    staff_user_ids: &[UserId],
    team_ids: &[TeamId],
) -> pb::AssignCare {
    pb::AssignCare {
        patient_user_id: bytes_of(patient_user_id),
        staff_user_ids: bytes_each(staff_user_ids),
        team_ids: bytes_each(team_ids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_name_rule() {
        assert!(TeamName::new("Cardiology nights").is_ok());
        assert!(TeamName::new("é".repeat(64)).is_ok());
        assert_eq!(
            TeamName::new("x".repeat(65)),
            Err(ProtoError::CharacterCount { min: 1, max: 64 })
        );
        assert_eq!(TeamName::new("  "), Err(ProtoError::Empty));
        assert_eq!(
            TeamName::new("Night\nshift"),
            Err(ProtoError::InvalidCharacters)
        );
    }

    #[test]
    fn team_name_debug_and_serde() -> Result<(), Box<dyn std::error::Error>> {
        let name = TeamName::new("Dr Lee's team")?;
        assert_eq!(format!("{name:?}"), "TeamName(<13 bytes>)");
        let json = serde_json::to_string(&name)?;
        assert_eq!(json, "\"Dr Lee's team\"");
        assert_eq!(serde_json::from_str::<TeamName>(&json)?, name);
        assert!(serde_json::from_str::<TeamName>("\"\"").is_err());
        Ok(())
    }
}
