//! Sealed boxes to an org's archive key: anonymous public-key encryption, as DESIGN.md's
//! "Org archive" describes, in the ECIES pattern (ephemeral-static X25519 + HKDF + AEAD, like
//! libsodium's `crypto_box_seal` and HPKE base mode).
//!
//! ```text
//! eph            = fresh X25519 key pair
//! dh             = X25519(eph, recipient)                (non-contributory: rejected)
//! key (32) || nonce (12) = HKDF-SHA256(salt = eph_pub || recipient_pub, ikm = dh,
//!                                      info = "MedRelay_SealedBox_v1")
//! ciphertext     = ChaCha20-Poly1305(key, nonce, plaintext, aad = "")
//! wire           = medrelay.e2e.v1.SealedBox { ephemeral_key = eph_pub, ciphertext }
//! ```
//!
//! The key is fresh for every box, so the derived nonce never repeats under one key.

use medrelay_proto::e2e;
use prost::bytes::Bytes;
use prost::Message;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{PrimitiveError, SealedBoxError};
use crate::primitives::{self, AeadKey, SharedSecret, X25519KeyPair, X25519Secret};
use crate::secret::SecretBytes;

/// HKDF `info` of the sealed-box KDF.
pub const SEALED_BOX_INFO: &[u8] = b"MedRelay_SealedBox_v1";

/// The archive key pair, held offline by the privacy officer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchiveKeyPair(X25519KeyPair);

impl ArchiveKeyPair {
    /// Generates a new archive key pair.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self(X25519KeyPair::generate(rng))
    }

    /// Rebuilds the key pair from its exported secret.
    pub fn from_secret(secret: X25519Secret) -> Self {
        Self(X25519KeyPair::from_secret(secret))
    }

    /// The public key to publish as the org's archive key.
    pub fn public_key(&self) -> &[u8; 32] {
        self.0.public_key()
    }

    /// The secret, for offline export. Do not log it.
    pub fn secret(&self) -> &X25519Secret {
        self.0.secret()
    }
}

fn derive(
    dh: &SharedSecret,
    eph_pub: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<(AeadKey, [u8; 12]), SealedBoxError> {
    let mut salt = [0u8; 64];
    let (a, b) = salt.split_at_mut(32);
    a.copy_from_slice(eph_pub);
    b.copy_from_slice(recipient);
    let mut okm = Zeroizing::new([0u8; 44]);
    primitives::hkdf_sha256(&salt, dh.expose_secret(), SEALED_BOX_INFO, okm.as_mut())
        .map_err(|_| SealedBoxError::Internal)?;
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    let (k, n) = okm.split_at(32);
    key.copy_from_slice(k);
    nonce.copy_from_slice(n);
    Ok((AeadKey::from_bytes(key), nonce))
}

fn map_dh(e: PrimitiveError) -> SealedBoxError {
    match e {
        PrimitiveError::NonContributory => SealedBoxError::NonContributory,
        _ => SealedBoxError::Internal,
    }
}

/// Seals `plaintext` to `recipient` and returns the encoded `SealedBox`.
pub fn seal(
    recipient: &[u8; 32],
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, SealedBoxError> {
    let eph = X25519KeyPair::generate(rng);
    let dh = eph.agree(recipient).map_err(map_dh)?;
    let (key, nonce) = derive(&dh, eph.public_key(), recipient)?;
    let ciphertext = primitives::aead_seal(&key, &nonce, &[], plaintext)
        .map_err(|_| SealedBoxError::Internal)?;
    Ok(e2e::SealedBox {
        ephemeral_key: Bytes::copy_from_slice(eph.public_key()),
        ciphertext: Bytes::from(ciphertext),
    }
    .encode_to_vec())
}

/// Opens an encoded `SealedBox` with the archive key pair.
pub fn open(keypair: &ArchiveKeyPair, sealed: &[u8]) -> Result<SecretBytes, SealedBoxError> {
    let sealed = e2e::SealedBox::decode(sealed).map_err(|_| SealedBoxError::Malformed)?;
    let eph_pub = <[u8; 32]>::try_from(sealed.ephemeral_key.as_ref())
        .map_err(|_| SealedBoxError::Malformed)?;
    let dh = keypair.0.agree(&eph_pub).map_err(map_dh)?;
    let (key, nonce) = derive(&dh, &eph_pub, keypair.public_key())?;
    primitives::aead_open(&key, &nonce, &[], &sealed.ciphertext)
        .map_err(|_| SealedBoxError::OpenFailed)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let mut rng = StdRng::seed_from_u64(1);
        let archive = ArchiveKeyPair::generate(&mut rng);
        let boxed = seal(archive.public_key(), b"record", &mut rng).unwrap();
        assert_eq!(open(&archive, &boxed).unwrap().expose_secret(), b"record");
        // Every single-bit flip is rejected.
        for i in 0..boxed.len() * 8 {
            let mut t = boxed.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(open(&archive, &t).is_err(), "bit {i}");
        }
        let other = ArchiveKeyPair::generate(&mut rng);
        assert_eq!(
            open(&other, &boxed).unwrap_err(),
            SealedBoxError::OpenFailed
        );
    }

    #[test]
    fn low_order_recipient_is_rejected() {
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(
            seal(&[0u8; 32], b"x", &mut rng).unwrap_err(),
            SealedBoxError::NonContributory
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut rng = StdRng::seed_from_u64(3);
        let archive = ArchiveKeyPair::generate(&mut rng);
        let dbg = format!("{archive:?}");
        assert!(!dbg.contains(&hex::encode(archive.secret().expose_secret())));
        assert!(dbg.contains(&hex::encode(archive.public_key())));
    }
}
