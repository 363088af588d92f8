//! Field-level validation of raw prost messages: what was wrong, and where.
//!
//! Conversions from prost types report a [`FieldError`]: the path of the offending field
//! (`send.envelopes.ciphertext`) and a [`FieldProblem`]. Neither ever holds the field's
//! contents, so the message built from them is safe to send back and to log.

use std::collections::BTreeSet;
use std::fmt;

use crate::{ErrorCode, ProtoError};

/// What was wrong with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldProblem {
    /// A required field is absent or empty.
    #[error("is missing")]
    Missing,
    /// The value breaks its format or length rule.
    #[error("{0}")]
    Invalid(ProtoError),
    /// A repeated field has more entries than its limit.
    #[error("has {actual} entries, over the limit of {max}")]
    TooMany {
        /// The limit.
        max: usize,
        /// The number received.
        actual: usize,
    },
    /// A repeated field names the same thing twice.
    #[error("contains the same entry twice")]
    Duplicate,
    /// An enum field holds a value this protocol version does not define.
    #[error("has a value this protocol version does not know")]
    UnknownValue,
    /// The field must be left empty for this kind of request.
    #[error("must be empty for this kind of request")]
    NotAllowed,
    /// The field and the one named are alternatives: at most one may be set.
    #[error("must not be set together with {0}")]
    ConflictsWith(&'static str),
}

impl FieldProblem {
    /// The wire error code for this problem: `TOO_LARGE` for byte sizes, `LIMIT_EXCEEDED` for
    /// counts, `MALFORMED` for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(ProtoError::TooLong { .. }) => ErrorCode::TooLarge,
            Self::TooMany { .. } => ErrorCode::LimitExceeded,
            _ => ErrorCode::Malformed,
        }
    }
}

impl From<ProtoError> for FieldProblem {
    fn from(error: ProtoError) -> Self {
        Self::Invalid(error)
    }
}

/// Where a field sits in a frame, outermost first: `["send", "envelopes", "ciphertext"]`,
/// displayed as `send.envelopes.ciphertext`. Holds field names only, never values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(Vec<&'static str>);

impl FieldPath {
    /// The field names, outermost first.
    pub fn segments(&self) -> &[&'static str] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Where.
    pub(crate) path: FieldPath,
    /// What.
    pub(crate) problem: FieldProblem,
}

impl FieldError {
    /// A problem with the field `name` of the message being converted.
    pub(crate) fn new(name: &'static str, problem: impl Into<FieldProblem>) -> Self {
        Self {
            path: FieldPath(vec![name]),
            problem: problem.into(),
        }
    }

    /// A problem with the message being converted as a whole (e.g. it is empty).
    pub(crate) fn whole(problem: impl Into<FieldProblem>) -> Self {
        Self {
            path: FieldPath(Vec::new()),
            problem: problem.into(),
        }
    }

    /// The same problem seen from the enclosing message, whose field `parent` held this one.
    pub(crate) fn within(mut self, parent: &'static str) -> Self {
        self.path.0.insert(0, parent);
        self
    }
}

/// Adds the enclosing field's name to a conversion's error.
pub(crate) trait Within<T> {
    /// See [`FieldError::within`].
    fn within(self, parent: &'static str) -> Result<T, FieldError>;
}

impl<T> Within<T> for Result<T, FieldError> {
    fn within(self, parent: &'static str) -> Result<T, FieldError> {
        self.map_err(|e| e.within(parent))
    }
}

/// A required fixed-size value (id, key, signature): empty is `Missing`, a wrong length is
/// `Invalid`.
pub(crate) fn required<T>(
    name: &'static str,
    bytes: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, ProtoError>,
) -> Result<T, FieldError> {
    if bytes.is_empty() {
        return Err(FieldError::new(name, FieldProblem::Missing));
    }
    parse(bytes).map_err(|e| FieldError::new(name, e))
}

/// An optional fixed-size value: empty is `None`.
pub(crate) fn optional<T>(
    name: &'static str,
    bytes: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, ProtoError>,
) -> Result<Option<T>, FieldError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    parse(bytes).map(Some).map_err(|e| FieldError::new(name, e))
}

/// A required text value: empty is `Missing`, otherwise `parse` decides.
pub(crate) fn required_text<T>(
    name: &'static str,
    text: String,
    parse: impl FnOnce(String) -> Result<T, ProtoError>,
) -> Result<T, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new(name, FieldProblem::Missing));
    }
    parse(text).map_err(|e| FieldError::new(name, e))
}

/// A required opaque payload of at most `max` bytes.
pub(crate) fn payload(name: &'static str, len: usize, max: usize) -> Result<(), FieldError> {
    if len == 0 {
        return Err(FieldError::new(name, FieldProblem::Missing));
    }
    if len > max {
        return Err(FieldError::new(
            name,
            ProtoError::TooLong { max, actual: len },
        ));
    }
    Ok(())
}

/// A repeated field of at most `max` entries.
pub(crate) fn at_most(name: &'static str, len: usize, max: usize) -> Result<(), FieldError> {
    if len > max {
        return Err(FieldError::new(
            name,
            FieldProblem::TooMany { max, actual: len },
        ));
    }
    Ok(())
}

/// A repeated field of 1 to `max` entries.
pub(crate) fn between_one_and(
    name: &'static str,
    len: usize,
    max: usize,
) -> Result<(), FieldError> {
    if len == 0 {
        return Err(FieldError::new(name, FieldProblem::Missing));
    }
    at_most(name, len, max)
}

/// A repeated field whose entries must differ.
pub(crate) fn unique<'a, T: Ord + 'a>(
    name: &'static str,
    items: impl IntoIterator<Item = &'a T>,
) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item) {
            return Err(FieldError::new(name, FieldProblem::Duplicate));
        }
    }
    Ok(())
}

/// A required enum: `UNSPECIFIED` (mapped to `None` by `map`) is `Missing`, a value prost does
/// not know is `UnknownValue`.
pub(crate) fn required_enum<P: TryFrom<i32>, T>(
    name: &'static str,
    raw: i32,
    map: impl FnOnce(P) -> Option<T>,
) -> Result<T, FieldError> {
    let known = P::try_from(raw).map_err(|_| FieldError::new(name, FieldProblem::UnknownValue))?;
    map(known).ok_or_else(|| FieldError::new(name, FieldProblem::Missing))
}

/// A field that must be left empty here.
pub(crate) fn must_be_empty(name: &'static str, is_empty: bool) -> Result<(), FieldError> {
    if is_empty {
        Ok(())
    } else {
        Err(FieldError::new(name, FieldProblem::NotAllowed))
    }
}

/// Every entry of a repeated fixed-size field (ids, keys), each required.
pub(crate) fn required_each<T>(
    name: &'static str,
    items: &[prost::bytes::Bytes],
    parse: impl Fn(&[u8]) -> Result<T, ProtoError>,
) -> Result<Vec<T>, FieldError> {
    items
        .iter()
        .map(|item| required(name, item, &parse))
        .collect()
}

/// A repeated fixed-size field (ids) of at most `max` entries, each required, none twice.
pub(crate) fn distinct_each<T: Ord>(
    name: &'static str,
    items: &[prost::bytes::Bytes],
    max: usize,
    parse: impl Fn(&[u8]) -> Result<T, ProtoError>,
) -> Result<Vec<T>, FieldError> {
    at_most(name, items.len(), max)?;
    let parsed = required_each(name, items, parse)?;
    unique(name, &parsed)?;
    Ok(parsed)
}

/// A fixed-size value (id, key) as a prost bytes field.
pub(crate) fn bytes_of(value: impl AsRef<[u8]>) -> prost::bytes::Bytes {
    prost::bytes::Bytes::copy_from_slice(value.as_ref())
}

/// Fixed-size values (ids) as a repeated prost bytes field.
pub(crate) fn bytes_each<T: AsRef<[u8]>>(values: &[T]) -> Vec<prost::bytes::Bytes> {
    values.iter().map(bytes_of).collect()
}

/// A number within `range`, inclusive; outside is `Invalid(OutOfRange)`.
pub(crate) fn in_range(
    name: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, FieldError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            name,
            ProtoError::OutOfRange {
                min: *range.start(),
                max: *range.end(),
            },
        ))
    }
}
