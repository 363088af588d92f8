//! Patient consent to messaging: the clinic's consent text, whether a patient accepted it, and
//! the hash an acceptance carries so that a text changed in between is not accepted blindly.

use sha2::{Digest, Sha256};

use crate::field::{required_enum, FieldError};
use crate::limits::MAX_CONSENT_TEXT_BYTES;
use crate::names::{is_unprintable, redacted_debug, text_conversions};
use crate::{pb, ProtoError};

use std::fmt;
use std::str::FromStr;

/// Where a user stands on consent. Serde writes the variant index (postcard) or the name
/// (JSON): add new states at the end only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ConsentState {
    /// Not a patient: consent does not apply.
    NotApplicable,
    /// A patient who has not accepted the current consent text yet.
    Pending,
    /// A patient who accepted the consent text.
    Accepted,
    /// A patient who accepted, then withdrew; staff must not message them.
    Withdrawn,
}

impl ConsentState {
    /// The wire name: `NOT_APPLICABLE`, `PENDING`, `ACCEPTED` or `WITHDRAWN`.
    pub fn as_str(self) -> &'static str {
        self.to_pb_enum().as_str_name()
    }

    fn to_pb_enum(self) -> pb::ConsentState {
        match self {
            Self::NotApplicable => pb::ConsentState::NotApplicable,
            Self::Pending => pb::ConsentState::Pending,
            Self::Accepted => pb::ConsentState::Accepted,
            Self::Withdrawn => pb::ConsentState::Withdrawn,
        }
    }

    /// The raw prost value.
    pub(crate) fn to_pb(self) -> i32 {
        self.to_pb_enum().into()
    }

    /// Parses a required consent field: `CONSENT_STATE_UNSPECIFIED` is missing (`MALFORMED`).
    pub(crate) fn from_pb(name: &'static str, raw: i32) -> Result<Self, FieldError> {
        required_enum(name, raw, |state: pb::ConsentState| match state {
            pb::ConsentState::Unspecified => None,
            pb::ConsentState::NotApplicable => Some(Self::NotApplicable),
            pb::ConsentState::Pending => Some(Self::Pending),
            pb::ConsentState::Accepted => Some(Self::Accepted),
            pb::ConsentState::Withdrawn => Some(Self::Withdrawn),
        })
    }
}

impl fmt::Display for ConsentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The clinic's consent text, shown to patients before they may message: 1 to
/// [`MAX_CONSENT_TEXT_BYTES`] bytes of UTF-8, not blank, line breaks and tabs allowed but no
/// other control or unprintable characters. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConsentText(String);

impl ConsentText {
    /// Validates `text`.
    pub fn new(text: impl Into<String>) -> Result<Self, ProtoError> {
        let text = text.into();
        if text.trim().is_empty() {
            return Err(ProtoError::Empty);
        }
        if text.len() > MAX_CONSENT_TEXT_BYTES {
            return Err(ProtoError::TooLong {
                max: MAX_CONSENT_TEXT_BYTES,
                actual: text.len(),
            });
        }
        if text
            .chars()
            .any(|c| !matches!(c, '\n' | '\r' | '\t') && is_unprintable(c))
        {
            return Err(ProtoError::InvalidCharacters);
        }
        Ok(Self(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the text's UTF-8 bytes, exactly as sent: what `AcceptConsent` carries.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

text_conversions!(ConsentText);
redacted_debug!(ConsentText);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_text_rule() {
        assert!(ConsentText::new("I agree.\r\n\n\tSigned").is_ok());
        assert!(ConsentText::new("x".repeat(16 * 1024)).is_ok());
        assert_eq!(
            ConsentText::new("x".repeat(16 * 1024 + 1)),
            Err(ProtoError::TooLong {
                max: 16384,
                actual: 16385
            })
        );
        assert_eq!(ConsentText::new(""), Err(ProtoError::Empty));
        assert_eq!(ConsentText::new(" \n "), Err(ProtoError::Empty));
        assert_eq!(
            ConsentText::new("a\u{0}b"),
            Err(ProtoError::InvalidCharacters)
        );
        assert_eq!(
            ConsentText::new("I do not\u{202E} agree"),
            Err(ProtoError::InvalidCharacters)
        );
    }

    #[test]
    fn sha256_is_over_the_exact_bytes() -> Result<(), Box<dyn std::error::Error>> {
        // FIPS 180-2 test vector.
        assert_eq!(
            hex::encode(ConsentText::new("abc")?.sha256()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(
            ConsentText::new("abc")?.sha256(),
            ConsentText::new("abc ")?.sha256()
        );
        Ok(())
    }

    #[test]
    fn debug_shows_only_the_length() -> Result<(), ProtoError> {
        let text = ConsentText::new("Jane Doe consents")?;
        assert_eq!(format!("{text:?}"), "ConsentText(<17 bytes>)");
        Ok(())
    }

    #[test]
    fn consent_state_wire_values_round_trip() -> Result<(), FieldError> {
        for state in [
            ConsentState::NotApplicable,
            ConsentState::Pending,
            ConsentState::Accepted,
            ConsentState::Withdrawn,
        ] {
            assert_eq!(ConsentState::from_pb("consent", state.to_pb())?, state);
        }
        assert_eq!(ConsentState::Withdrawn.to_string(), "WITHDRAWN");
        assert!(ConsentState::from_pb("consent", 0).is_err());
        assert!(ConsentState::from_pb("consent", 99).is_err());
        Ok(())
    }

    #[test]
    fn serde_validates() -> Result<(), Box<dyn std::error::Error>> {
        let text = ConsentText::new("I agree")?;
        let json = serde_json::to_string(&text)?;
        assert_eq!(serde_json::from_str::<ConsentText>(&json)?, text);
        assert!(serde_json::from_str::<ConsentText>("\"\"").is_err());
        let state = postcard::to_allocvec(&ConsentState::Accepted)?;
        assert_eq!(
            postcard::from_bytes::<ConsentState>(&state)?,
            ConsentState::Accepted
        );
        Ok(())
    }
}
