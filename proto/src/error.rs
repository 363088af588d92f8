//! Why a single value (an id, a key, a handle, a label) was refused.
//!
//! [`ProtoError`] describes the value's problem without echoing the value: messages built from
//! it reach clients and logs, and a refused value may be PHI or a secret.

/// A value that does not meet its format or length rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A fixed-size value (id, key, signature, nonce) had the wrong number of bytes.
    #[error("must be exactly {expected} bytes, got {actual}")]
    WrongLength {
        /// The required length.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// A hexadecimal rendering of a fixed-size value was not valid hex of the right length.
    #[error("must be {expected} hexadecimal characters")]
    InvalidHex {
        /// The number of hex characters required.
        expected: usize,
    },
    /// A handle broke the handle rule.
    #[error(
        "must be {min} to {max} characters, each a lowercase letter, digit, '.', '-' or '_'",
        min = crate::limits::MIN_HANDLE_LEN,
        max = crate::limits::MAX_HANDLE_LEN
    )]
    InvalidHandle,
    /// A variable-length value was over its limit.
    #[error("is {actual} bytes, over the limit of {max}")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length received.
        actual: usize,
    },
    /// A value that must not be empty was empty.
    #[error("must not be empty")]
    Empty,
    /// A text value held characters its rule does not allow (control characters, spaces...).
    #[error("contains characters that are not allowed")]
    InvalidCharacters,
    /// A text value (password, team name, reason, recovery code) had too few or too many
    /// characters. The actual count is not given: for a password even its length is a hint.
    #[error("must be {min} to {max} characters")]
    CharacterCount {
        /// The fewest characters allowed.
        min: usize,
        /// The most characters allowed.
        max: usize,
    },
    /// A TOTP code was not exactly [`crate::limits::TOTP_DIGITS`] ASCII digits.
    #[error("must be exactly {digits} digits", digits = crate::limits::TOTP_DIGITS)]
    InvalidTotpCode,
    /// A CIDR was not an IP address with an optional `/prefix` within the address's length.
    #[error("must be an IPv4 or IPv6 address, optionally followed by /prefix (e.g. 10.0.0.0/8)")]
    InvalidCidr,
    /// A number (a duration, a timeout) was outside its allowed range.
    #[error("must be between {min} and {max}")]
    OutOfRange {
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A name (e.g. of a permission, as typed on a command line) that names nothing.
    #[error("is not a known name")]
    UnknownName,
}
