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
}
