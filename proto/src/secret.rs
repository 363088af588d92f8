//! Secrets that cross the wire: passwords, TOTP and recovery codes, and the credentials the
//! server shows once at setup.
//!
//! Each is a newtype that is zeroized on drop, whose `Debug` shows nothing but its type, and
//! whose value is read only through `expose()`, so a secret in a log line takes a deliberate
//! call. A value that fails its rule is zeroized too. Equality is not constant-time: it is for
//! tests; the server verifies passwords and codes against their stored hashes, never with `==`.
//!
//! The raw prost messages that carry secrets are scrubbed as well ([`Scrub`]): after encoding,
//! and when decoding fails part-way. What stays out of reach is the encoded frame itself, which
//! belongs to the transport.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::limits::{
    MAX_PASSWORD_LEN, MAX_RECOVERY_CODE_LEN, MAX_SECRET_TEXT_BYTES, MIN_PASSWORD_LEN,
    MIN_RECOVERY_CODE_LEN, TOTP_DIGITS,
};
use crate::pb::{self, client_frame, server_frame};
use crate::ProtoError;

/// A staff member's or admin's password: [`MIN_PASSWORD_LEN`] to [`MAX_PASSWORD_LEN`]
/// characters, any characters (compared as UTF-8 bytes, not normalised).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Validates `password`'s length in characters.
    pub fn new(password: impl Into<String>) -> Result<Self, ProtoError> {
        let password = Zeroizing::new(password.into());
        if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.chars().count()) {
            Ok(Self(password))
        } else {
            Err(ProtoError::CharacterCount {
                min: MIN_PASSWORD_LEN,
                max: MAX_PASSWORD_LEN,
            })
        }
    }

    /// The password itself. Hash it, verify it; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A TOTP code (RFC 6238): exactly [`TOTP_DIGITS`] ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpCode(Zeroizing<String>);

impl TotpCode {
    /// Validates `code`: exactly [`TOTP_DIGITS`] ASCII digits, nothing else (no spaces).
    pub fn new(code: impl Into<String>) -> Result<Self, ProtoError> {
        let code = Zeroizing::new(code.into());
        if code.len() == TOTP_DIGITS && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(code))
        } else {
            Err(ProtoError::InvalidTotpCode)
        }
    }

    /// The code itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A single-use recovery code, the second factor when the authenticator is lost:
/// [`MIN_RECOVERY_CODE_LEN`] to [`MAX_RECOVERY_CODE_LEN`] characters of `a-z 0-9 -`. Upper
/// case is accepted and lowered, so a code typed from paper in capitals still matches.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(Zeroizing<String>);

impl RecoveryCode {
    /// Validates `code` after lowering its ASCII letters.
    pub fn new(code: impl Into<String>) -> Result<Self, ProtoError> {
        let mut code = Zeroizing::new(code.into());
        code.make_ascii_lowercase();
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        if !code.bytes().all(allowed) {
            return Err(ProtoError::InvalidCharacters);
        }
        // All ASCII now, so bytes are characters.
        if !(MIN_RECOVERY_CODE_LEN..=MAX_RECOVERY_CODE_LEN).contains(&code.len()) {
            return Err(ProtoError::CharacterCount {
                min: MIN_RECOVERY_CODE_LEN,
                max: MAX_RECOVERY_CODE_LEN,
            });
        }
        Ok(Self(code))
    }

    /// The code itself, lowercase. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret the server shows once (a TOTP secret, an `otpauth://` URI, a recovery code): any
/// text up to [`MAX_SECRET_TEXT_BYTES`] bytes. Show it to the user; never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Validates `text`'s size.
    pub fn new(text: impl Into<String>) -> Result<Self, ProtoError> {
        let text = Zeroizing::new(text.into());
        if text.len() > MAX_SECRET_TEXT_BYTES {
            return Err(ProtoError::TooLong {
                max: MAX_SECRET_TEXT_BYTES,
                actual: text.len(),
            });
        }
        Ok(Self(text))
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// `Debug` for secrets: the type's name and nothing else, not even the length.
macro_rules! redacted_secret_debug {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    )*};
}

redacted_secret_debug!(Password, TotpCode, RecoveryCode, SecretText);

/// A raw prost message that may hold secrets, which it can wipe in place.
pub(crate) trait Scrub {
    /// Zeroizes every secret field.
    fn scrub(&mut self);
}

/// Scrubs a raw message when dropped, whatever path the conversion took. Fields are taken out
/// with `std::mem::take`; what remains is wiped.
pub(crate) struct Scrubbed<T: Scrub>(pub(crate) T);

impl<T: Scrub> Drop for Scrubbed<T> {
    fn drop(&mut self) {
        self.0.scrub();
    }
}

impl<T: Scrub> std::ops::Deref for Scrubbed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Scrub> std::ops::DerefMut for Scrubbed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl Scrub for pb::SetupCredentials {
    fn scrub(&mut self) {
        self.password.zeroize();
    }
}

impl Scrub for pb::Login {
    fn scrub(&mut self) {
        self.password.zeroize();
        self.totp_code.zeroize();
        self.recovery_code.zeroize();
    }
}

impl Scrub for pb::ChangePassword {
    fn scrub(&mut self) {
        self.current_password.zeroize();
        self.new_password.zeroize();
    }
}

impl Scrub for pb::CredentialsSetup {
    fn scrub(&mut self) {
        self.totp_secret.zeroize();
        self.otpauth_uri.zeroize();
        self.recovery_codes.zeroize();
    }
}

impl Scrub for pb::ClientFrame {
    fn scrub(&mut self) {
        use client_frame::Body;
        match &mut self.body {
            Some(Body::SetupCredentials(m)) => m.scrub(),
            Some(Body::Login(m)) => m.scrub(),
            Some(Body::ChangePassword(m)) => m.scrub(),
            _ => {}
        }
    }
}

impl Scrub for pb::ServerFrame {
    fn scrub(&mut self) {
        if let Some(server_frame::Body::CredentialsSetup(m)) = &mut self.body {
            m.scrub();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_length_is_counted_in_characters() {
        let range = ProtoError::CharacterCount { min: 12, max: 256 };
        assert!(Password::new("a".repeat(12)).is_ok());
        assert!(Password::new("a".repeat(256)).is_ok());
        assert!(
            Password::new("é".repeat(12)).is_ok(),
            "24 bytes, 12 characters"
        );
        assert!(
            Password::new("é".repeat(256)).is_ok(),
            "512 bytes, 256 characters"
        );
        assert!(Password::new("correct horse battery staple").is_ok());
        assert_eq!(Password::new("a".repeat(11)), Err(range));
        assert_eq!(Password::new("a".repeat(257)), Err(range));
        assert_eq!(Password::new(""), Err(range));
    }

    #[test]
    fn totp_code_rule() {
        assert!(TotpCode::new("000000").is_ok());
        assert!(TotpCode::new("123456").is_ok());
        for bad in [
            "12345",
            "1234567",
            "12345a",
            "123 456",
            " 123456",
            "１２３４５６",
            "",
        ] {
            assert_eq!(
                TotpCode::new(bad),
                Err(ProtoError::InvalidTotpCode),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn recovery_code_rule_and_lowercasing() -> Result<(), ProtoError> {
        assert_eq!(RecoveryCode::new("ABCD-1234")?.expose(), "abcd-1234");
        assert_eq!(RecoveryCode::new("abcd1234")?.expose(), "abcd1234");
        assert!(RecoveryCode::new("a".repeat(64)).is_ok());
        let range = ProtoError::CharacterCount { min: 8, max: 64 };
        assert_eq!(RecoveryCode::new("abc-123"), Err(range));
        assert_eq!(RecoveryCode::new("a".repeat(65)), Err(range));
        for bad in ["abcd 1234", "abcd_1234", "abcd-123é", "abcd\n1234"] {
            assert_eq!(
                RecoveryCode::new(bad),
                Err(ProtoError::InvalidCharacters),
                "{bad:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn secret_text_rule() {
        assert!(SecretText::new("").is_ok());
        assert!(SecretText::new("x".repeat(4096)).is_ok());
        assert_eq!(
            SecretText::new("x".repeat(4097)),
            Err(ProtoError::TooLong {
                max: 4096,
                actual: 4097
            })
        );
    }

    /// Debug output is what reaches logs: it must show no secret, and not its length either.
    #[test]
    fn debug_shows_no_secret() -> Result<(), ProtoError> {
        let password = Password::new("hunter2hunter2")?;
        let totp = TotpCode::new("424242")?;
        let recovery = RecoveryCode::new("zqxj-wvkm-9876")?;
        let secret = SecretText::new("JBSWY3DPEHPK3PXP")?;
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        assert_eq!(format!("{totp:?}"), "TotpCode(<redacted>)");
        assert_eq!(format!("{recovery:?}"), "RecoveryCode(<redacted>)");
        assert_eq!(format!("{secret:?}"), "SecretText(<redacted>)");
        let all = format!("{password:#?} {totp:#?} {recovery:#?} {secret:#?}");
        for leak in ["hunter2", "4242", "zqxj", "9876", "JBSWY"] {
            assert!(!all.contains(leak), "{all}");
        }
        assert_eq!(password.expose(), "hunter2hunter2");
        assert_eq!(password.clone(), password);
        Ok(())
    }

    #[test]
    fn scrubbing_wipes_every_secret_field() {
        let mut frame = pb::ClientFrame {
            version: 1,
            request_id: 1,
            body: Some(client_frame::Body::Login(pb::Login {
                password: "hunter2hunter2".into(),
                totp_code: "424242".into(),
                recovery_code: "word-word".into(),
            })),
        };
        frame.scrub();
        assert_eq!(
            frame.body,
            Some(client_frame::Body::Login(pb::Login::default()))
        );

        let mut change = pb::ChangePassword {
            current_password: "a".into(),
            new_password: "b".into(),
        };
        change.scrub();
        assert_eq!(change, pb::ChangePassword::default());

        let mut setup = pb::ServerFrame {
            version: 1,
            request_id: 1,
            body: Some(server_frame::Body::CredentialsSetup(pb::CredentialsSetup {
                totp_secret: "JBSWY3DP".into(),
                otpauth_uri: "otpauth://totp/x".into(),
                recovery_codes: vec!["word-word".into()],
            })),
        };
        setup.scrub();
        assert_eq!(
            setup.body,
            Some(server_frame::Body::CredentialsSetup(
                pb::CredentialsSetup::default()
            ))
        );
    }
}
