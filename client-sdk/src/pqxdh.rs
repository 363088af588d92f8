//! PQXDH key agreement (Signal, "The PQXDH Key Agreement Protocol", revision 3, section 3) with
//! X25519 and ML-KEM-768.
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! (CT, SS) = ML-KEM-768.Encaps(PQSPK_B)
//! SK = HKDF-SHA256(salt = 0x00 * 32,
//!                  ikm  = 0xFF * 32 || DH1 || DH2 || DH3 [|| DH4] || SS,
//!                  info = "MedRelay_PQXDH_CURVE25519_SHA-256_ML-KEM-768")        (32 bytes)
//! AD = IK_A.signing || IK_A.dh || IK_B.signing || IK_B.dh                       (128 bytes)
//! ```
//!
//! `IK` is the X25519 identity DH key; the Ed25519 signing key that certifies it is bound into
//! the associated data. Every X25519 output must be contributory (spec section 4.9 and the
//! brief): a low-order key anywhere aborts the setup. The responder never consumes the one-time
//! prekey here; [`crate::Session::accept`] does, once the first message has authenticated
//! (spec section 3.4: "If the initial ciphertext fails to decrypt, then Bob aborts").

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{PqxdhError, PrimitiveError};
use crate::identity::{DeviceIdentity, PrekeyBundle, PublicIdentity};
use crate::primitives::{self, SharedSecret, X25519KeyPair, MLKEM768_CIPHERTEXT_LEN};

/// The HKDF `info` of the PQXDH KDF (spec section 2.1's `info` parameter).
pub const PQXDH_INFO: &[u8] = b"MedRelay_PQXDH_CURVE25519_SHA-256_ML-KEM-768";

/// Length of the associated data: four 32-byte public keys.
pub const ASSOCIATED_DATA_LEN: usize = 128;

fn map_dh(e: PrimitiveError) -> PqxdhError {
    match e {
        PrimitiveError::NonContributory => PqxdhError::NonContributory,
        _ => PqxdhError::Malformed,
    }
}

/// `AD = initiator.signing_key || initiator.dh_key || responder.signing_key || responder.dh_key`.
pub fn associated_data(initiator: &PublicIdentity, responder: &PublicIdentity) -> Vec<u8> {
    let mut ad = Vec::with_capacity(ASSOCIATED_DATA_LEN);
    ad.extend_from_slice(&initiator.signing_key);
    ad.extend_from_slice(&initiator.dh_key);
    ad.extend_from_slice(&responder.signing_key);
    ad.extend_from_slice(&responder.dh_key);
    ad
}

/// The key-agreement fields of the initial message (proto `PrekeyMessage` without the inner
/// ratchet message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyHeader {
    /// The initiator's identity.
    pub sender_identity: PublicIdentity,
    /// The initiator's ephemeral X25519 key `EK_A`.
    pub ephemeral_key: [u8; 32],
    /// Which signed prekey was used.
    pub signed_prekey_id: u32,
    /// Which ML-KEM prekey was used.
    pub pq_prekey_id: u32,
    /// `CT`, the ML-KEM-768 ciphertext (1088 bytes).
    pub pq_ciphertext: Vec<u8>,
    /// Which one-time prekey was used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// The initiator's result.
#[derive(Debug)]
pub struct InitiatorAgreement {
    /// `SK`, the initial root key.
    pub shared_key: SharedSecret,
    /// `AD`.
    pub associated_data: Vec<u8>,
    /// What to send.
    pub header: PrekeyHeader,
    /// The responder's signed prekey: its first ratchet public key (Double Ratchet section 7.1).
    pub responder_ratchet_key: [u8; 32],
}

/// The responder's result.
#[derive(Debug)]
pub struct ResponderAgreement {
    /// `SK`, the initial root key.
    pub shared_key: SharedSecret,
    /// `AD`.
    pub associated_data: Vec<u8>,
    /// The signed prekey pair: the responder's first ratchet key pair.
    pub ratchet_key_pair: X25519KeyPair,
}

fn derive_sk(
    dh1: &SharedSecret,
    dh2: &SharedSecret,
    dh3: &SharedSecret,
    dh4: Option<&SharedSecret>,
    ss: &SharedSecret,
) -> Result<SharedSecret, PqxdhError> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 6));
    ikm.extend_from_slice(&[0xFF; 32]);
    ikm.extend_from_slice(dh1.expose_secret());
    ikm.extend_from_slice(dh2.expose_secret());
    ikm.extend_from_slice(dh3.expose_secret());
    if let Some(dh4) = dh4 {
        ikm.extend_from_slice(dh4.expose_secret());
    }
    ikm.extend_from_slice(ss.expose_secret());
    let mut sk = SharedSecret::zeroed();
    primitives::hkdf_sha256(&[0u8; 32], &ikm, PQXDH_INFO, sk.as_mut_array())
        .map_err(|_| PqxdhError::Malformed)?;
    Ok(sk)
}

/// Initiator side (spec section 3.3): verifies the bundle, then derives `SK` and `AD`.
pub fn initiate(
    identity: &DeviceIdentity,
    bundle: &PrekeyBundle,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<InitiatorAgreement, PqxdhError> {
    bundle.verify()?;
    let spk = &bundle.signed_prekey.public_key;
    let ek = X25519KeyPair::generate(rng);
    let dh1 = identity.identity_dh().agree(spk).map_err(map_dh)?;
    let dh2 = ek.agree(&bundle.identity.dh_key).map_err(map_dh)?;
    let dh3 = ek.agree(spk).map_err(map_dh)?;
    let dh4 = match &bundle.one_time_prekey {
        Some(opk) => Some(ek.agree(&opk.public_key).map_err(map_dh)?),
        None => None,
    };
    let (pq_ciphertext, ss) =
        primitives::mlkem768_encapsulate(&bundle.pq_prekey.public_key, rng)
            .map_err(|_| PqxdhError::Identity(crate::error::IdentityError::InvalidPqPrekey))?;
    let shared_key = derive_sk(&dh1, &dh2, &dh3, dh4.as_ref(), &ss)?;
    Ok(InitiatorAgreement {
        shared_key,
        associated_data: associated_data(identity.public_identity(), &bundle.identity),
        header: PrekeyHeader {
            sender_identity: identity.public_identity().clone(),
            ephemeral_key: *ek.public_key(),
            signed_prekey_id: bundle.signed_prekey.id,
            pq_prekey_id: bundle.pq_prekey.id,
            pq_ciphertext,
            one_time_prekey_id: bundle.one_time_prekey.map(|o| o.id),
        },
        responder_ratchet_key: *spk,
    })
}

/// Responder side (spec section 3.4): derives `SK` and `AD` from a prekey header. Does not
/// consume the one-time prekey (the caller does, after the first message authenticates), but
/// fails with [`PqxdhError::UnknownOneTimePrekey`] if it is unknown or already used.
pub fn respond(
    device: &DeviceIdentity,
    header: &PrekeyHeader,
) -> Result<ResponderAgreement, PqxdhError> {
    header.sender_identity.verify()?;
    let spk = device
        .signed_prekey(header.signed_prekey_id)
        .ok_or(PqxdhError::UnknownSignedPrekey(header.signed_prekey_id))?;
    let pq = device
        .pq_prekey(header.pq_prekey_id)
        .ok_or(PqxdhError::UnknownPqPrekey(header.pq_prekey_id))?;
    let opk = match header.one_time_prekey_id {
        Some(id) => Some(
            device
                .one_time_prekey(id)
                .ok_or(PqxdhError::UnknownOneTimePrekey(id))?,
        ),
        None => None,
    };
    if header.pq_ciphertext.len() != MLKEM768_CIPHERTEXT_LEN {
        return Err(PqxdhError::Malformed);
    }
    let ek = &header.ephemeral_key;
    let dh1 = spk.agree(&header.sender_identity.dh_key).map_err(map_dh)?;
    let dh2 = device.identity_dh().agree(ek).map_err(map_dh)?;
    let dh3 = spk.agree(ek).map_err(map_dh)?;
    let dh4 = match opk {
        Some(opk) => Some(opk.agree(ek).map_err(map_dh)?),
        None => None,
    };
    let ss = primitives::mlkem768_decapsulate(pq, &header.pq_ciphertext)
        .map_err(|_| PqxdhError::Malformed)?;
    let shared_key = derive_sk(&dh1, &dh2, &dh3, dh4.as_ref(), &ss)?;
    Ok(ResponderAgreement {
        shared_key,
        associated_data: associated_data(&header.sender_identity, device.public_identity()),
        ratchet_key_pair: spk.clone(),
    })
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
    fn both_sides_agree_with_and_without_one_time_prekey() {
        let mut rng = StdRng::seed_from_u64(9);
        let alice = DeviceIdentity::generate(&mut rng, 0);
        let bob = DeviceIdentity::generate(&mut rng, 0);
        for opk in [Some(3), None] {
            let a = initiate(&alice, &bob.prekey_bundle(opk), &mut rng).unwrap();
            assert_eq!(a.header.one_time_prekey_id, opk);
            let b = respond(&bob, &a.header).unwrap();
            assert_eq!(a.shared_key.expose_secret(), b.shared_key.expose_secret());
            assert_eq!(a.associated_data, b.associated_data);
            assert_eq!(a.associated_data.len(), ASSOCIATED_DATA_LEN);
            assert_eq!(&a.responder_ratchet_key, b.ratchet_key_pair.public_key());
        }
    }

    #[test]
    fn one_time_prekey_changes_the_key() {
        let mut rng = StdRng::seed_from_u64(10);
        let alice = DeviceIdentity::generate(&mut rng, 0);
        let bob = DeviceIdentity::generate(&mut rng, 0);
        let a = initiate(&alice, &bob.prekey_bundle(Some(1)), &mut rng).unwrap();
        let mut header = a.header.clone();
        header.one_time_prekey_id = Some(2);
        let b = respond(&bob, &header).unwrap();
        assert_ne!(a.shared_key.expose_secret(), b.shared_key.expose_secret());
    }
}
