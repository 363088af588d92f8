//! Validated text that crosses the wire: handles, origins and device labels, and the rules
//! and impls other text types share (team names, break-glass reasons, the consent text).
//!
//! Each is a newtype whose constructor enforces its rule, so a value of the type is always
//! valid. Error messages describe the rule and never echo the text.

use std::fmt;
use std::str::FromStr;

use crate::limits::{MAX_DEVICE_LABEL_LEN, MAX_HANDLE_LEN, MAX_ORIGIN_LEN, MIN_HANDLE_LEN};
use crate::ProtoError;

/// A user's name within an org, e.g. `dr.lee` or `front-desk`: 3 to 64 characters, each a
/// lowercase ASCII letter, digit, '.', '-' or '_'. Unique within an org.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Handle(String);

impl Handle {
    /// Validates `handle` against the handle rule.
    pub fn new(handle: impl Into<String>) -> Result<Self, ProtoError> {
        let handle = handle.into();
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
        if (MIN_HANDLE_LEN..=MAX_HANDLE_LEN).contains(&handle.len()) && handle.bytes().all(allowed)
        {
            Ok(Self(handle))
        } else {
            Err(ProtoError::InvalidHandle)
        }
    }

    /// The handle.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An origin a browser binds its proof to, e.g. `https://clinic.example:8443`: 1 to 256
/// visible ASCII characters. The server compares it with its own configured origins.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin(String);

impl Origin {
    /// Validates `origin`: not empty, at most [`MAX_ORIGIN_LEN`] bytes, visible ASCII only.
    pub fn new(origin: impl Into<String>) -> Result<Self, ProtoError> {
        let origin = origin.into();
        if origin.is_empty() {
            return Err(ProtoError::Empty);
        }
        if origin.len() > MAX_ORIGIN_LEN {
            return Err(ProtoError::TooLong {
                max: MAX_ORIGIN_LEN,
                actual: origin.len(),
            });
        }
        if !origin.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProtoError::InvalidCharacters);
        }
        Ok(Self(origin))
    }

    /// The origin.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short label for a device ("front desk laptop"), chosen at enrolment: at most 64 bytes of
/// UTF-8 without control characters; may be empty. It must hold no PHI.
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceLabel(String);

impl DeviceLabel {
    /// Validates `label`: at most [`MAX_DEVICE_LABEL_LEN`] bytes, no control characters.
    pub fn new(label: impl Into<String>) -> Result<Self, ProtoError> {
        let label = label.into();
        if label.len() > MAX_DEVICE_LABEL_LEN {
            return Err(ProtoError::TooLong {
                max: MAX_DEVICE_LABEL_LEN,
                actual: label.len(),
            });
        }
        if label.chars().any(char::is_control) {
            return Err(ProtoError::InvalidCharacters);
        }
        Ok(Self(label))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Implements the string conversions shared by the validated text types.
macro_rules! text_conversions {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = ProtoError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = ProtoError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

pub(crate) use text_conversions;

text_conversions!(Handle);
text_conversions!(Origin);
text_conversions!(DeviceLabel);

/// Handles and device labels can name a person (and that a person is a clinic's patient is
/// itself PHI), so `Debug`, which ends up in logs, shows only their length.
macro_rules! redacted_debug {
    ($name:ident) => {
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<{} bytes>)", stringify!($name), self.0.len())
            }
        }
    };
}

pub(crate) use redacted_debug;

redacted_debug!(Handle);
redacted_debug!(DeviceLabel);

/// Whether `c` has no place in text a person reads: control characters (newlines included),
/// bidirectional overrides and isolates (which can make an audit log line read differently
/// from what it holds), zero-width spaces and byte-order marks.
pub(crate) fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// The rule for one line of text a person wrote (a team name, a reason): not blank, no
/// unprintable characters ([`is_unprintable`]), at most `max_chars` characters.
pub(crate) fn check_line(text: &str, max_chars: usize) -> Result<(), ProtoError> {
    if text.trim().is_empty() {
        return Err(ProtoError::Empty);
    }
    if text.chars().any(is_unprintable) {
        return Err(ProtoError::InvalidCharacters);
    }
    if text.chars().count() > max_chars {
        return Err(ProtoError::CharacterCount {
            min: 1,
            max: max_chars,
        });
    }
    Ok(())
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_rule() {
        for good in ["abc", "dr.lee", "front-desk_2", &"a".repeat(64)] {
            assert!(Handle::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Dr.Lee",
            "dr lee",
            "dr@lee",
            "émile",
            &"a".repeat(65),
            "ab\n",
        ] {
            assert_eq!(Handle::new(bad), Err(ProtoError::InvalidHandle), "{bad:?}");
        }
    }

    #[test]
    fn origin_rule() {
        assert!(Origin::new("https://clinic.example:8443").is_ok());
        assert_eq!(Origin::new(""), Err(ProtoError::Empty));
        assert_eq!(
            Origin::new("https://a b"),
            Err(ProtoError::InvalidCharacters)
        );
        assert_eq!(
            Origin::new("a".repeat(257)),
            Err(ProtoError::TooLong {
                max: 256,
                actual: 257
            })
        );
    }

    #[test]
    fn device_label_rule() {
        assert!(DeviceLabel::new("").is_ok());
        assert!(DeviceLabel::new("Front desk — laptop").is_ok());
        assert_eq!(
            DeviceLabel::new("a\u{7}"),
            Err(ProtoError::InvalidCharacters)
        );
        assert!(
            DeviceLabel::new("é".repeat(33)).is_err(),
            "66 bytes of UTF-8"
        );
    }

    #[test]
    fn debug_does_not_show_names() -> Result<(), ProtoError> {
        assert_eq!(
            format!("{:?}", Handle::new("jane.doe")?),
            "Handle(<8 bytes>)"
        );
        assert_eq!(
            format!("{:?}", DeviceLabel::new("Jane's phone")?),
            "DeviceLabel(<12 bytes>)"
        );
        Ok(())
    }

    #[test]
    fn line_rule() {
        assert_eq!(check_line("Cardiology — night shift", 64), Ok(()));
        assert_eq!(check_line(&"é".repeat(64), 64), Ok(()));
        assert_eq!(
            check_line(&"é".repeat(65), 64),
            Err(ProtoError::CharacterCount { min: 1, max: 64 })
        );
        for blank in ["", " ", "\u{3000}\t "] {
            assert_eq!(check_line(blank, 64), Err(ProtoError::Empty), "{blank:?}");
        }
        for bad in [
            "a\nb",
            "a\rb",
            "a\u{7}",
            "abc\u{202E}fed",
            "a\u{2066}b",
            "a\u{200B}b",
            "\u{FEFF}a",
        ] {
            assert_eq!(
                check_line(bad, 64),
                Err(ProtoError::InvalidCharacters),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serde_validates() -> Result<(), Box<dyn std::error::Error>> {
        let h = Handle::new("dr.lee")?;
        let json = serde_json::to_string(&h)?;
        assert_eq!(json, "\"dr.lee\"");
        assert_eq!(serde_json::from_str::<Handle>(&json)?, h);
        assert!(serde_json::from_str::<Handle>("\"NO\"").is_err());
        assert_eq!(
            postcard::from_bytes::<Handle>(&postcard::to_allocvec(&h)?)?,
            h
        );
        Ok(())
    }
}
