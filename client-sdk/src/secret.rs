//! Secret-holding types: zeroized on drop, redacted in `Debug`, serialised only into the
//! encrypted key store.
//!
//! Every secret in the crate lives in one of these wrappers (or in a type built from them), so
//! no key, seed or plaintext can reach a log line through `{:?}`.

use core::fmt;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A variable-length secret: a decrypted plaintext, a profile blob, a serialised state.
///
/// Zeroized on drop; `Debug` prints `SecretBytes(<redacted>)`.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes` (no copy is left behind by this call).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies `bytes` into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The secret bytes. Do not log them.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(VecVisitor).map(Self)
    }
}

struct VecVisitor;

impl<'de> Visitor<'de> for VecVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(v.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// `#[serde(with = "crate::secret::byte_array")]` for fixed-size byte arrays of any length
/// (serde itself stops at 32), encoded as a byte string.
pub(crate) mod byte_array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        value: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_bytes(ArrayVisitor::<N>)
    }

    struct ArrayVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a byte string of length {N}")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element::<u8>()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }
}

/// Defines a fixed-size secret key type: zeroized on drop, `Debug` redacted, serialised as a
/// byte string.
macro_rules! secret_array {
    ($(#[$meta:meta])* $vis:vis struct $name:ident([u8; $n:expr]);) => {
        $(#[$meta])*
        #[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
        $vis struct $name([u8; $n]);

        impl $name {
            /// Length of this secret in bytes.
            #[allow(dead_code)]
            pub const LEN: usize = $n;

            /// An all-zero value, to be filled in place by a KDF.
            #[allow(dead_code)]
            pub(crate) fn zeroed() -> Self {
                Self([0u8; $n])
            }

            /// Takes the bytes (the caller's copy should be a temporary).
            #[allow(dead_code)]
            pub(crate) fn from_array(bytes: [u8; $n]) -> Self {
                Self(bytes)
            }

            /// The secret bytes.
            #[allow(dead_code)]
            pub(crate) fn as_array(&self) -> &[u8; $n] {
                &self.0
            }

            /// The secret bytes, mutably (for KDF output).
            #[allow(dead_code)]
            pub(crate) fn as_mut_array(&mut self) -> &mut [u8; $n] {
                &mut self.0
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::secret::byte_array::serialize(&self.0, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::secret::byte_array::deserialize(deserializer).map(Self)
            }
        }
    };
}
pub(crate) use secret_array;

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    secret_array!(
        struct TestKey([u8; 40]);
    );

    #[test]
    fn debug_is_redacted_snapshot() {
        let s = SecretBytes::from_slice(&[0xab; 16]);
        assert_eq!(format!("{s:?}"), "SecretBytes(<redacted>)");
        let k = TestKey::from_array([0xcd; 40]);
        assert_eq!(format!("{k:?}"), "TestKey(<redacted>)");
        assert_eq!(format!("{k:#?}"), "TestKey(<redacted>)");
    }

    #[test]
    fn serde_round_trip_and_length_check() {
        let k = TestKey::from_array([7; 40]);
        let bytes = postcard::to_allocvec(&k).unwrap();
        let back: TestKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.as_array(), k.as_array());
        let short = postcard::to_allocvec(&SecretBytes::from_slice(&[1; 39])).unwrap();
        assert!(postcard::from_bytes::<TestKey>(&short).is_err());
        let s: SecretBytes = postcard::from_bytes(&short).unwrap();
        assert_eq!(s.expose_secret(), &[1; 39]);
    }
}
