//! Fixed-size byte newtypes (ids, public keys, signatures): the impls they share.
//!
//! Serde writes them as bytes in binary formats (postcard) and as lowercase hex in
//! human-readable ones (JSON); serde's own array support stops at 32 and writes a tuple.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Writes `bytes` as lowercase hex, through a buffer on the stack (ids are formatted for
/// every access-log entry: no allocation per id).
pub(crate) fn write_hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut buffer = [0u8; 64];
    for chunk in bytes.chunks(32) {
        let text = buffer.get_mut(..chunk.len() * 2).ok_or(fmt::Error)?;
        hex::encode_to_slice(chunk, text).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

/// Serialises `bytes` as a byte string, or as hex for human-readable formats.
pub(crate) fn serialize<S: Serializer, const N: usize>(
    bytes: &[u8; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&hex::encode(bytes))
    } else {
        serializer.serialize_bytes(bytes)
    }
}

/// Deserialises what [`serialize`] wrote; also accepts a sequence of exactly `N` numbers.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_str(FixedBytesVisitor::<N>)
    } else {
        deserializer.deserialize_bytes(FixedBytesVisitor::<N>)
    }
}

/// Builds a `[u8; N]` from bytes, hex or a sequence.
struct FixedBytesVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for FixedBytesVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{N} bytes, or {} hexadecimal characters", N * 2)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let mut out = [0u8; N];
        hex::decode_to_slice(v, &mut out)
            .map_err(|_| E::invalid_value(de::Unexpected::Str("(redacted)"), &self))?;
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = [0u8; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(N + 1, &self));
        }
        Ok(out)
    }
}

/// Implements the shared API of a `struct $name([u8; $len])` newtype: constructors from
/// arrays and slices, accessors, hex `Display`/`FromStr`, a short-prefix `Debug`, and serde.
macro_rules! fixed_bytes_newtype {
    ($name:ident, $len:expr) => {
        impl $name {
            /// The value's length in bytes.
            pub const LEN: usize = $len;

            /// Wraps exactly `LEN` bytes; any other length is [`crate::ProtoError::WrongLength`].
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::ProtoError> {
                <[u8; $len]>::try_from(bytes).map(Self).map_err(|_| {
                    crate::ProtoError::WrongLength {
                        expected: $len,
                        actual: bytes.len(),
                    }
                })
            }

            /// Wraps an array.
            pub const fn from_array(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The raw bytes, by value.
            pub const fn to_array(self) -> [u8; $len] {
                self.0
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }

        impl From<$name> for [u8; $len] {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = crate::ProtoError;

            fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
                Self::from_bytes(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            /// The full value in lowercase hex.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::fixed_bytes::write_hex(&self.0, f)
            }
        }

        impl std::fmt::Debug for $name {
            /// The type and the first four bytes in hex: enough to tell values apart in logs.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let prefix = self.0.get(..4).unwrap_or(&self.0);
                write!(f, "{}({}…)", stringify!($name), hex::encode(prefix))
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::ProtoError;

            /// Parses exactly `2 * LEN` hex characters (either case).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| crate::ProtoError::InvalidHex { expected: 2 * $len })?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                crate::fixed_bytes::serialize(&self.0, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                crate::fixed_bytes::deserialize(deserializer).map(Self)
            }
        }
    };
}

pub(crate) use fixed_bytes_newtype;
