//! Staff and admin credentials: the one-time setup of a password and TOTP authenticator, the
//! login that every staff session starts with (password plus a second factor), and password
//! changes. A device key alone authenticates a connection; for staff it does not log them in.

use std::mem::take;

use crate::field::{between_one_and, required_text, FieldError, FieldProblem};
use crate::limits::MAX_RECOVERY_CODES;
use crate::secret::Scrubbed;
use crate::{pb, ClientRequest, Password, ProtoError, RecoveryCode, SecretText, TotpCode};

/// The second factor of a login: exactly one of a current TOTP code or an unused recovery code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondFactor {
    /// A TOTP code from the authenticator set up with [`CredentialsSetup`] (`totp_code`).
    Totp(TotpCode),
    /// One of the recovery codes handed out at setup, each usable once (`recovery_code`).
    Recovery(RecoveryCode),
}

/// The server's answer to `setup_credentials`: shown to the user once, never again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsSetup {
    /// The TOTP secret, base32 (RFC 4648, no padding), for typing into an authenticator.
    pub totp_secret: SecretText,
    /// The same secret as an `otpauth://totp/...` URI, for a QR code.
    pub otpauth_uri: SecretText,
    /// 1 to [`MAX_RECOVERY_CODES`] single-use recovery codes.
    pub recovery_codes: Vec<SecretText>,
}

impl CredentialsSetup {
    pub(crate) fn to_pb(&self) -> pb::CredentialsSetup {
        pb::CredentialsSetup {
            totp_secret: self.totp_secret.expose().to_owned(),
            otpauth_uri: self.otpauth_uri.expose().to_owned(),
            recovery_codes: self
                .recovery_codes
                .iter()
                .map(|code| code.expose().to_owned())
                .collect(),
        }
    }

    pub(crate) fn from_pb(raw: pb::CredentialsSetup) -> Result<Self, FieldError> {
        let mut raw = Scrubbed(raw);
        between_one_and(
            "recovery_codes",
            raw.recovery_codes.len(),
            MAX_RECOVERY_CODES,
        )?;
        Ok(Self {
            totp_secret: secret("totp_secret", &mut raw.totp_secret, SecretText::new)?,
            otpauth_uri: secret("otpauth_uri", &mut raw.otpauth_uri, SecretText::new)?,
            recovery_codes: raw
                .recovery_codes
                .iter_mut()
                .map(|code| secret("recovery_codes", code, SecretText::new))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Moves a required secret out of a raw field (leaving it empty) into its type, whose
/// constructor zeroizes it if it breaks the rule.
fn secret<T>(
    name: &'static str,
    field: &mut String,
    parse: impl FnOnce(String) -> Result<T, ProtoError>,
) -> Result<T, FieldError> {
    required_text(name, take(field), parse)
}

/// `setup_credentials`: the new password.
pub(crate) fn setup_credentials_from_pb(
    raw: pb::SetupCredentials,
) -> Result<ClientRequest, FieldError> {
    let mut raw = Scrubbed(raw);
    Ok(ClientRequest::SetupCredentials {
        password: secret("password", &mut raw.password, Password::new)?,
    })
}

/// `login`: the password and exactly one second factor. Neither factor is `totp_code`
/// missing; both is `recovery_code` conflicting with `totp_code`.
pub(crate) fn login_from_pb(raw: pb::Login) -> Result<ClientRequest, FieldError> {
    let mut raw = Scrubbed(raw);
    let password = secret("password", &mut raw.password, Password::new)?;
    let second_factor = match (raw.totp_code.is_empty(), raw.recovery_code.is_empty()) {
        (false, true) => {
            SecondFactor::Totp(secret("totp_code", &mut raw.totp_code, TotpCode::new)?)
        }
        (true, false) => SecondFactor::Recovery(secret(
            "recovery_code",
            &mut raw.recovery_code,
            RecoveryCode::new,
        )?),
        (true, true) => return Err(FieldError::new("totp_code", FieldProblem::Missing)),
        (false, false) => {
            return Err(FieldError::new(
                "recovery_code",
                FieldProblem::ConflictsWith("totp_code"),
            ))
        }
    };
    Ok(ClientRequest::Login {
        password,
        second_factor,
    })
}

/// The raw form of `login`.
pub(crate) fn login_to_pb(password: &Password, second_factor: &SecondFactor) -> pb::Login {
    let (totp_code, recovery_code) = match second_factor {
        SecondFactor::Totp(code) => (code.expose().to_owned(), String::new()),
        SecondFactor::Recovery(code) => (String::new(), code.expose().to_owned()),
    };
    pb::Login {
        password: password.expose().to_owned(),
        totp_code,
        recovery_code,
    }
}

/// `change_password`: the current password and the new one, both required.
pub(crate) fn change_password_from_pb(
    raw: pb::ChangePassword,
) -> Result<ClientRequest, FieldError> {
    let mut raw = Scrubbed(raw);
    Ok(ClientRequest::ChangePassword {
        current: secret("current_password", &mut raw.current_password, Password::new)?,
        new: secret("new_password", &mut raw.new_password, Password::new)?,
    })
}
