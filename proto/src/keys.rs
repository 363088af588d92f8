//! Public keys and signatures as they cross the wire: fixed-size newtypes, length-checked on
//! construction. This crate does no cryptography; the SDK and the server verify and use them.

use crate::fixed_bytes::fixed_bytes_newtype;
use crate::limits::{
    ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, ML_KEM_768_PUBLIC_KEY_LEN, X25519_PUBLIC_KEY_LEN,
};
use crate::ProtoError;

/// An Ed25519 public key: a device's identity signing key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ed25519PublicKey([u8; ED25519_PUBLIC_KEY_LEN]);
fixed_bytes_newtype!(Ed25519PublicKey, ED25519_PUBLIC_KEY_LEN);

/// An X25519 public key: an identity DH key, a signed prekey or a one-time prekey.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct X25519PublicKey([u8; X25519_PUBLIC_KEY_LEN]);
fixed_bytes_newtype!(X25519PublicKey, X25519_PUBLIC_KEY_LEN);

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; ED25519_SIGNATURE_LEN]);
fixed_bytes_newtype!(Signature, ED25519_SIGNATURE_LEN);

/// An ML-KEM-768 encapsulation key (FIPS 203), the post-quantum prekey. Boxed: at 1184 bytes it
/// would bloat every enum that holds one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MlKemPublicKey(Box<[u8; ML_KEM_768_PUBLIC_KEY_LEN]>);

impl MlKemPublicKey {
    /// The key's length in bytes.
    pub const LEN: usize = ML_KEM_768_PUBLIC_KEY_LEN;

    /// Wraps exactly [`Self::LEN`] bytes; any other length is [`ProtoError::WrongLength`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() != Self::LEN {
            return Err(ProtoError::WrongLength {
                expected: Self::LEN,
                actual: bytes.len(),
            });
        }
        Box::<[u8; ML_KEM_768_PUBLIC_KEY_LEN]>::try_from(bytes.to_vec().into_boxed_slice())
            .map(Self)
            .map_err(|_| ProtoError::WrongLength {
                expected: Self::LEN,
                actual: bytes.len(),
            })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; ML_KEM_768_PUBLIC_KEY_LEN] {
        &self.0
    }
}

impl From<[u8; ML_KEM_768_PUBLIC_KEY_LEN]> for MlKemPublicKey {
    fn from(bytes: [u8; ML_KEM_768_PUBLIC_KEY_LEN]) -> Self {
        Self(Box::new(bytes))
    }
}

impl TryFrom<&[u8]> for MlKemPublicKey {
    type Error = ProtoError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        Self::from_bytes(bytes)
    }
}

impl AsRef<[u8]> for MlKemPublicKey {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl std::fmt::Debug for MlKemPublicKey {
    /// The type and the first four bytes in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = self.0.get(..4).unwrap_or(&[]);
        write!(f, "MlKemPublicKey({}…)", hex::encode(prefix))
    }
}

impl serde::Serialize for MlKemPublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::fixed_bytes::serialize(&self.0, serializer)
    }
}

impl<'de> serde::Deserialize<'de> for MlKemPublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::fixed_bytes::deserialize::<D, ML_KEM_768_PUBLIC_KEY_LEN>(deserializer)
            .map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        assert!(X25519PublicKey::from_bytes(&[1; 32]).is_ok());
        assert!(X25519PublicKey::from_bytes(&[1; 33]).is_err());
        assert!(Ed25519PublicKey::from_bytes(&[1; 31]).is_err());
        assert!(Signature::from_bytes(&[1; 64]).is_ok());
        assert!(Signature::from_bytes(&[1; 32]).is_err());
        assert!(MlKemPublicKey::from_bytes(&[1; 1184]).is_ok());
        assert_eq!(
            MlKemPublicKey::from_bytes(&[1; 1183]),
            Err(ProtoError::WrongLength {
                expected: 1184,
                actual: 1183
            })
        );
    }

    #[test]
    fn serde_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let sig = Signature::from([9; 64]);
        assert_eq!(
            postcard::from_bytes::<Signature>(&postcard::to_allocvec(&sig)?)?,
            sig
        );
        assert_eq!(
            serde_json::from_str::<Signature>(&serde_json::to_string(&sig)?)?,
            sig
        );
        let pq = MlKemPublicKey::from([3; 1184]);
        assert_eq!(
            postcard::from_bytes::<MlKemPublicKey>(&postcard::to_allocvec(&pq)?)?,
            pq
        );
        assert_eq!(format!("{pq:?}"), "MlKemPublicKey(03030303…)");
        Ok(())
    }
}
