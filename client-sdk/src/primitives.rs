//! The primitive layer: X25519 (RFC 7748), ChaCha20-Poly1305 (RFC 8439), HKDF-SHA256
//! (RFC 5869), HMAC-SHA256 (RFC 2104) and ML-KEM-768 (FIPS 203).
//!
//! Every protocol module goes through these functions, and the known-answer tests in
//! `tests/kat.rs` (RFC 7748, RFC 8439, Wycheproof) exercise exactly these code paths. The one
//! policy decision made here: [`x25519`] rejects non-contributory (all-zero) results.
//!
//! Randomness comes from the caller's `rand_core` 0.6 RNG. ml-kem 0.3 speaks rand_core 0.10, so
//! key generation goes through a 64-byte seed (`DecapsulationKey::from_seed`, FIPS 203
//! `ML-KEM.KeyGen_internal(d, z)`) and encapsulation through 32 random bytes
//! (`encapsulate_deterministic`, FIPS 203 `ML-KEM.Encaps_internal(ek, m)`), both filled from the
//! caller's RNG: the same computation ml-kem performs with its own RNG.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ml_kem::kem::Decapsulate;
use ml_kem::{KeyExport, B32};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::error::PrimitiveError;
use crate::secret::{secret_array, SecretBytes};

/// Length of an X25519 public key, secret key and shared secret.
pub const X25519_LEN: usize = 32;
/// Length of a ChaCha20-Poly1305 key.
pub const AEAD_KEY_LEN: usize = 32;
/// Length of a ChaCha20-Poly1305 nonce.
pub const AEAD_NONCE_LEN: usize = 12;
/// Length of a ChaCha20-Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Length of an ML-KEM-768 encapsulation (public) key.
pub const MLKEM768_PUBLIC_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM seed (`d || z`), the stored form of a decapsulation key.
pub const MLKEM_SEED_LEN: usize = 64;

secret_array! {
    /// A 32-byte shared secret (X25519 or ML-KEM output, or a KDF input built from them).
    pub struct SharedSecret([u8; 32]);
}

secret_array! {
    /// An X25519 secret scalar (unclamped bytes; clamping happens in the ladder).
    pub struct X25519Secret([u8; 32]);
}

secret_array! {
    /// An ML-KEM seed `d || z` (FIPS 203 section 7.1), the compact form of a decapsulation key.
    pub struct MlKemSeed([u8; 64]);
}

secret_array! {
    /// A ChaCha20-Poly1305 key.
    pub struct AeadKey([u8; 32]);
}

impl SharedSecret {
    /// Wraps raw secret bytes (a PQXDH output, or a fixed key in tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The shared secret bytes. Do not log them.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl X25519Secret {
    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Do not log them.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl AeadKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// X25519 (RFC 7748 section 5) that rejects non-contributory results.
///
/// Returns [`PrimitiveError::NonContributory`] when the output is all zeros, which happens
/// exactly when `public` has small order (checked in constant time by x25519-dalek).
pub fn x25519(secret: &X25519Secret, public: &[u8; 32]) -> Result<SharedSecret, PrimitiveError> {
    let sk = x25519_dalek::StaticSecret::from(secret.0);
    let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(PrimitiveError::NonContributory);
    }
    Ok(SharedSecret(*shared.as_bytes()))
}

/// X25519 of `secret` with the base point 9: the public key.
pub fn x25519_public(secret: &X25519Secret) -> [u8; 32] {
    let sk = x25519_dalek::StaticSecret::from(secret.0);
    x25519_dalek::PublicKey::from(&sk).to_bytes()
}

/// An X25519 key pair (identity DH key, prekeys, ratchet keys, archive keys).
#[derive(Clone, Serialize, Deserialize)]
pub struct X25519KeyPair {
    secret: X25519Secret,
    public: [u8; 32],
}

impl X25519KeyPair {
    /// Generates a key pair from the caller's RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut secret = X25519Secret::zeroed();
        rng.fill_bytes(&mut secret.0);
        Self::from_secret(secret)
    }

    /// Rebuilds a key pair from its secret.
    pub fn from_secret(secret: X25519Secret) -> Self {
        let public = x25519_public(&secret);
        Self { secret, public }
    }

    /// The public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The secret key. Do not log it.
    pub fn secret(&self) -> &X25519Secret {
        &self.secret
    }

    /// X25519 with a peer public key, rejecting non-contributory results.
    pub fn agree(&self, peer_public: &[u8; 32]) -> Result<SharedSecret, PrimitiveError> {
        x25519(&self.secret, peer_public)
    }
}

impl core::fmt::Debug for X25519KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("X25519KeyPair")
            .field("public", &hex::encode(self.public))
            .field("secret", &self.secret)
            .finish()
    }
}

/// ChaCha20-Poly1305 encryption (RFC 8439 section 2.8); returns `ciphertext || tag`.
pub fn aead_seal(
    key: &AeadKey,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PrimitiveError> {
    let cipher = ChaCha20Poly1305::new(&key.0.into());
    cipher
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| PrimitiveError::InvalidLength)
}

/// ChaCha20-Poly1305 decryption of `ciphertext || tag`; any failure is
/// [`PrimitiveError::AuthenticationFailed`].
pub fn aead_open(
    key: &AeadKey,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<SecretBytes, PrimitiveError> {
    let cipher = ChaCha20Poly1305::new(&key.0.into());
    cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map(SecretBytes::new)
        .map_err(|_| PrimitiveError::AuthenticationFailed)
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand `info` into `okm`.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), PrimitiveError> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm)
        .map_err(|_| PrimitiveError::InvalidLength)
}

/// HMAC-SHA256 (RFC 2104), written into a zeroize-on-drop secret.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<SharedSecret, PrimitiveError> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| PrimitiveError::InvalidLength)?;
    mac.update(data);
    let mut tag = mac.finalize().into_bytes();
    let mut out = SharedSecret::zeroed();
    out.0.copy_from_slice(tag.as_slice());
    tag.as_mut_slice().zeroize();
    Ok(out)
}

/// Generates an ML-KEM-768 seed from the caller's RNG.
pub fn mlkem768_generate_seed(rng: &mut (impl RngCore + CryptoRng)) -> MlKemSeed {
    let mut seed = MlKemSeed::zeroed();
    rng.fill_bytes(&mut seed.0);
    seed
}

fn mlkem768_decapsulation_key(seed: &MlKemSeed) -> ml_kem::ml_kem_768::DecapsulationKey {
    ml_kem::ml_kem_768::DecapsulationKey::from_seed(ml_kem::Seed::from(seed.0))
}

/// The ML-KEM-768 encapsulation key (1184 bytes) for a seed.
pub fn mlkem768_public_key(seed: &MlKemSeed) -> Vec<u8> {
    let dk = mlkem768_decapsulation_key(seed);
    dk.encapsulation_key().to_bytes().to_vec()
}

/// ML-KEM-768 encapsulation to `public_key`: returns `(ciphertext, shared secret)`.
///
/// Fails with [`PrimitiveError::InvalidEncoding`] if the key has the wrong length or fails the
/// FIPS 203 modulus check.
pub fn mlkem768_encapsulate(
    public_key: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Vec<u8>, SharedSecret), PrimitiveError> {
    let encoded = ml_kem::kem::Key::<ml_kem::ml_kem_768::EncapsulationKey>::try_from(public_key)
        .map_err(|_| PrimitiveError::InvalidEncoding)?;
    let ek = ml_kem::ml_kem_768::EncapsulationKey::new(&encoded)
        .map_err(|_| PrimitiveError::InvalidEncoding)?;
    let mut m = [0u8; 32];
    rng.fill_bytes(&mut m);
    let mut m_arr = B32::from(m);
    m.zeroize();
    let (ct, mut ss) = ek.encapsulate_deterministic(&m_arr);
    m_arr.as_mut_slice().zeroize();
    let mut out = SharedSecret::zeroed();
    out.0.copy_from_slice(ss.as_slice());
    ss.as_mut_slice().zeroize();
    Ok((ct.to_vec(), out))
}

/// ML-KEM-768 decapsulation. A tampered ciphertext of the right length yields an unrelated
/// pseudo-random secret (FIPS 203 implicit rejection); only a wrong length is an error.
pub fn mlkem768_decapsulate(
    seed: &MlKemSeed,
    ciphertext: &[u8],
) -> Result<SharedSecret, PrimitiveError> {
    let dk = mlkem768_decapsulation_key(seed);
    let mut ss = dk
        .decapsulate_slice(ciphertext)
        .map_err(|_| PrimitiveError::InvalidEncoding)?;
    let mut out = SharedSecret::zeroed();
    out.0.copy_from_slice(ss.as_slice());
    ss.as_mut_slice().zeroize();
    Ok(out)
}
