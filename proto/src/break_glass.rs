//! Break-glass: emergency access by a staff member to a patient's conversation outside their
//! care assignment, for a bounded time and with a written reason that goes to the access log.

use std::fmt;
use std::str::FromStr;

use crate::field::{bytes_of, in_range, required, required_text, FieldError};
use crate::limits::{MAX_BREAK_GLASS_MS, MAX_REASON_LEN};
use crate::names::{check_line, redacted_debug, text_conversions};
use crate::{pb, ClientRequest, ProtoError, UserId};

/// Why someone did something exceptional (break-glass access): 1 to [`MAX_REASON_LEN`]
/// characters on one line, not blank, nothing unprintable. A reason may name a patient, so
/// `Debug` shows only its length; it belongs in the access log, not in a server log line.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    /// Validates `reason`.
    pub fn new(reason: impl Into<String>) -> Result<Self, ProtoError> {
        let reason = reason.into();
        check_line(&reason, MAX_REASON_LEN)?;
        Ok(Self(reason))
    }

    /// The reason.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

text_conversions!(Reason);
redacted_debug!(Reason);

/// `grant_break_glass`: both users, a reason, and a duration of 1 ms to
/// [`MAX_BREAK_GLASS_MS`].
pub(crate) fn grant_break_glass_from_pb(
    raw: pb::GrantBreakGlass,
) -> Result<ClientRequest, FieldError> {
    Ok(ClientRequest::GrantBreakGlass {
        staff_user_id: required("staff_user_id", &raw.staff_user_id, UserId::from_bytes)?,
        patient_user_id: required("patient_user_id", &raw.patient_user_id, UserId::from_bytes)?,
        reason: required_text("reason", raw.reason, Reason::new)?,
        duration_ms: in_range("duration_ms", raw.duration_ms, 1..=MAX_BREAK_GLASS_MS)?,
    })
}

/// The raw form of `grant_break_glass`.
pub(crate) fn grant_break_glass_to_pb(
    staff_user_id: &UserId,
    patient_user_id: &UserId,
    reason: &Reason,
    duration_ms: u64,
) -> pb::GrantBreakGlass {
    pb::GrantBreakGlass {
        staff_user_id: bytes_of(staff_user_id),
        patient_user_id: bytes_of(patient_user_id),
        reason: reason.as_str().to_owned(),
        duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_rule() {
        assert!(Reason::new("Patient unresponsive, assigned nurse off shift").is_ok());
        assert!(Reason::new("é".repeat(500)).is_ok());
        assert_eq!(
            Reason::new("x".repeat(501)),
            Err(ProtoError::CharacterCount { min: 1, max: 500 })
        );
        assert_eq!(Reason::new(" "), Err(ProtoError::Empty));
        assert_eq!(
            Reason::new("line one\nline two"),
            Err(ProtoError::InvalidCharacters)
        );
    }

    #[test]
    fn reason_debug_shows_only_the_length() -> Result<(), Box<dyn std::error::Error>> {
        let reason = Reason::new("Jane Doe collapsed")?;
        assert_eq!(format!("{reason:?}"), "Reason(<18 bytes>)");
        let json = serde_json::to_string(&reason)?;
        assert_eq!(serde_json::from_str::<Reason>(&json)?, reason);
        assert!(serde_json::from_str::<Reason>("\"a\\nb\"").is_err());
        Ok(())
    }
}
