//! Refusals as they travel: the stable [`ErrorCode`] and the [`WireError`] that carries it.
//!
//! `README.md` says what each code means and what a client should do about it.

use crate::field::{required_each, FieldError};
use crate::{pb, DeviceId, FrameError};

/// Why a request was refused: stable and machine-readable. Mirrors `medrelay.v1.ErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded, or a field is missing or malformed.
    Malformed,
    /// The frame's protocol version is not supported.
    UnsupportedVersion,
    /// The frame, or a payload inside it, exceeds a size limit.
    TooLarge,
    /// The request needs an authenticated connection.
    Unauthenticated,
    /// The authentication proof is invalid, replayed or for another connection.
    AuthFailed,
    /// The caller is authenticated but not allowed to do this.
    Forbidden,
    /// The object does not exist, or the caller may not know it does.
    NotFound,
    /// The invite code is unknown, used or expired.
    InviteInvalid,
    /// The handle is already taken in this org.
    HandleTaken,
    /// The send's device list does not match the recipients' current devices.
    DevicesMismatch,
    /// Too many requests; see `retry_after_ms`.
    RateLimited,
    /// A limit other than size was exceeded (envelopes, prekeys, members...).
    LimitExceeded,
    /// This kind of frame is not valid at this point of the connection.
    UnexpectedFrame,
    /// The server failed; the request had no effect. Try again later.
    Internal,
    /// The server is shutting down or overloaded; reconnect later.
    Unavailable,
    /// A signature on uploaded keys does not verify.
    BadSignature,
    /// The session ended (idle timeout, lifetime, revocation); log in again.
    LoggedOff,
    /// The account is locked after repeated failures; see `retry_after_ms`.
    LockedOut,
    /// The org archives every message: the send must carry the message sealed to the org's
    /// archive key (reconnect to learn it).
    ArchiveRequired,
    /// A code this version does not know (from a newer peer), or none at all. Treat it like
    /// [`ErrorCode::Internal`]. Encoded as `ERROR_CODE_UNSPECIFIED`.
    Unknown,
}

impl ErrorCode {
    /// The wire name, e.g. `DEVICES_MISMATCH`.
    pub fn as_str(self) -> &'static str {
        self.to_pb_enum().as_str_name()
    }

    /// Whether the same request may succeed if simply tried again later, unchanged.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Internal | Self::Unavailable | Self::Unknown
        )
    }

    fn to_pb_enum(self) -> pb::ErrorCode {
        use pb::ErrorCode as P;
        match self {
            Self::Malformed => P::Malformed,
            Self::UnsupportedVersion => P::UnsupportedVersion,
            Self::TooLarge => P::TooLarge,
            Self::Unauthenticated => P::Unauthenticated,
            Self::AuthFailed => P::AuthFailed,
            Self::Forbidden => P::Forbidden,
            Self::NotFound => P::NotFound,
            Self::InviteInvalid => P::InviteInvalid,
            Self::HandleTaken => P::HandleTaken,
            Self::DevicesMismatch => P::DevicesMismatch,
            Self::RateLimited => P::RateLimited,
            Self::LimitExceeded => P::LimitExceeded,
            Self::UnexpectedFrame => P::UnexpectedFrame,
            Self::Internal => P::Internal,
            Self::Unavailable => P::Unavailable,
            Self::BadSignature => P::BadSignature,
            Self::LoggedOff => P::LoggedOff,
            Self::LockedOut => P::LockedOut,
            Self::ArchiveRequired => P::ArchiveRequired,
            Self::Unknown => P::Unspecified,
        }
    }

    /// The raw prost value.
    pub(crate) fn to_pb(self) -> i32 {
        self.to_pb_enum().into()
    }

    /// Reads a raw prost value; unknown and unspecified values become [`ErrorCode::Unknown`].
    pub(crate) fn from_pb(raw: i32) -> Self {
        use pb::ErrorCode as P;
        match P::try_from(raw) {
            Ok(P::Malformed) => Self::Malformed,
            Ok(P::UnsupportedVersion) => Self::UnsupportedVersion,
            Ok(P::TooLarge) => Self::TooLarge,
            Ok(P::Unauthenticated) => Self::Unauthenticated,
            Ok(P::AuthFailed) => Self::AuthFailed,
            Ok(P::Forbidden) => Self::Forbidden,
            Ok(P::NotFound) => Self::NotFound,
            Ok(P::InviteInvalid) => Self::InviteInvalid,
            Ok(P::HandleTaken) => Self::HandleTaken,
            Ok(P::DevicesMismatch) => Self::DevicesMismatch,
            Ok(P::RateLimited) => Self::RateLimited,
            Ok(P::LimitExceeded) => Self::LimitExceeded,
            Ok(P::UnexpectedFrame) => Self::UnexpectedFrame,
            Ok(P::Internal) => Self::Internal,
            Ok(P::Unavailable) => Self::Unavailable,
            Ok(P::BadSignature) => Self::BadSignature,
            Ok(P::LoggedOff) => Self::LoggedOff,
            Ok(P::LockedOut) => Self::LockedOut,
            Ok(P::ArchiveRequired) => Self::ArchiveRequired,
            Ok(P::Unspecified) | Err(_) => Self::Unknown,
        }
    }

    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 20] = [
        Self::Malformed,
        Self::UnsupportedVersion,
        Self::TooLarge,
        Self::Unauthenticated,
        Self::AuthFailed,
        Self::Forbidden,
        Self::NotFound,
        Self::InviteInvalid,
        Self::HandleTaken,
        Self::DevicesMismatch,
        Self::RateLimited,
        Self::LimitExceeded,
        Self::UnexpectedFrame,
        Self::Internal,
        Self::Unavailable,
        Self::BadSignature,
        Self::LoggedOff,
        Self::LockedOut,
        Self::ArchiveRequired,
        Self::Unknown,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal as sent to a client: a stable code, a plain-English message (never PHI, keys or
/// message content), and details for the codes that have them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// What went wrong.
    pub code: ErrorCode,
    /// For a person; no PHI.
    pub message: String,
    /// For `DEVICES_MISMATCH`: current recipient devices the send left out.
    pub missing_devices: Vec<DeviceId>,
    /// For `DEVICES_MISMATCH`: devices the send named that are not (or no longer) recipients.
    pub stale_devices: Vec<DeviceId>,
    /// For `RATE_LIMITED` and `LOCKED_OUT`: when to try again, in ms; 0 when not given.
    pub retry_after_ms: u64,
}

impl WireError {
    /// An error with a code and a message, and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            missing_devices: Vec::new(),
            stale_devices: Vec::new(),
            retry_after_ms: 0,
        }
    }

    /// A `DEVICES_MISMATCH` naming the missing and stale devices.
    pub fn devices_mismatch(missing_devices: Vec<DeviceId>, stale_devices: Vec<DeviceId>) -> Self {
        Self {
            message: format!(
                "the send's device list is out of date: {} device(s) missing, {} stale; \
                 fetch the missing devices' prekeys, drop the stale ones and send again",
                missing_devices.len(),
                stale_devices.len()
            ),
            missing_devices,
            stale_devices,
            ..Self::new(ErrorCode::DevicesMismatch, "")
        }
    }

    /// The same error, telling the client to wait `retry_after_ms` before trying again.
    pub fn with_retry_after(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    pub(crate) fn to_pb(&self) -> pb::Error {
        let ids = |ids: &[DeviceId]| {
            ids.iter()
                .map(|id| prost::bytes::Bytes::copy_from_slice(id.as_bytes()))
                .collect()
        };
        pb::Error {
            code: self.code.to_pb(),
            message: self.message.clone(),
            missing_devices: ids(&self.missing_devices),
            stale_devices: ids(&self.stale_devices),
            retry_after_ms: self.retry_after_ms,
        }
    }

    pub(crate) fn from_pb(raw: pb::Error) -> Result<Self, FieldError> {
        Ok(Self {
            code: ErrorCode::from_pb(raw.code),
            message: raw.message,
            missing_devices: required_each(
                "missing_devices",
                &raw.missing_devices,
                DeviceId::from_bytes,
            )?,
            stale_devices: required_each(
                "stale_devices",
                &raw.stale_devices,
                DeviceId::from_bytes,
            )?,
            retry_after_ms: raw.retry_after_ms,
        })
    }
}

impl From<&FrameError> for WireError {
    fn from(error: &FrameError) -> Self {
        Self::new(error.code(), error.message())
    }
}

impl From<FrameError> for WireError {
    fn from(error: FrameError) -> Self {
        Self::from(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_value() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_pb(code.to_pb()), code);
        }
        assert_eq!(ErrorCode::from_pb(9999), ErrorCode::Unknown);
        assert_eq!(ErrorCode::DevicesMismatch.as_str(), "DEVICES_MISMATCH");
    }
}
