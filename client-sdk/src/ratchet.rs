//! The Double Ratchet (Signal, "The Double Ratchet Algorithm", revision 4, section 3), started
//! from a PQXDH secret as section 7.1 describes: the PQXDH `SK` is the first root key and the
//! responder's signed prekey is its first ratchet key pair.
//!
//! ```text
//! KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, ikm = dh_out, info = "MedRelay_Ratchet_Root") -> rk' (32) || ck (32)
//! KDF_CK(ck)         = (HMAC-SHA256(ck, 0x02) as ck', HMAC-SHA256(ck, 0x01) as mk)
//! ENCRYPT(mk, pt, ad): key (32) || nonce (12) = HKDF-SHA256(salt = 0x00 * 32, ikm = mk,
//!                      info = "MedRelay_Message_Keys"); ChaCha20-Poly1305(key, nonce, pt, ad)
//! ad                 = session AD (128 bytes) || ratchet_key (32) || pn (u32 BE) || n (u32 BE)
//! ```
//!
//! Every message has its own message key, so no (key, nonce) pair ever repeats. Out-of-order
//! messages are handled with stored skipped keys (section 3.5), bounded by
//! [`MAX_SKIP`] per step and [`MAX_SKIPPED_MESSAGE_KEYS`] overall (oldest evicted).
//!
//! Decryption is transactional: it works on a copy of the chain state and commits only when the
//! AEAD tag verifies, so a forged, replayed or out-of-window message leaves the session as it
//! was. Each used message key is deleted at once, which is what gives forward secrecy; each DH
//! ratchet step brings in fresh randomness, which is what heals a compromise.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{PrimitiveError, RatchetError};
use crate::limits::{MAX_SKIP, MAX_SKIPPED_MESSAGE_KEYS};
use crate::primitives::{self, AeadKey, SharedSecret, X25519KeyPair};
use crate::secret::{secret_array, SecretBytes};

/// HKDF `info` of the root-key KDF.
pub const ROOT_KDF_INFO: &[u8] = b"MedRelay_Ratchet_Root";
/// HKDF `info` that turns a message key into an AEAD key and nonce.
pub const MESSAGE_KEYS_INFO: &[u8] = b"MedRelay_Message_Keys";
/// Length of the canonical header encoding bound into the associated data.
pub const HEADER_LEN: usize = 40;

secret_array! {
    /// A root key `RK`.
    pub struct RootKey([u8; 32]);
}

secret_array! {
    /// A sending or receiving chain key `CK`.
    pub struct ChainKey([u8; 32]);
}

secret_array! {
    /// A message key `MK`, used for exactly one message.
    pub struct MessageKey([u8; 32]);
}

/// A message header (section 3.1): sender's ratchet public key, previous chain length, counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Messages in the sender's previous sending chain (`PN`).
    pub previous_chain_length: u32,
    /// This message's number in the sending chain (`N`).
    pub counter: u32,
}

impl Header {
    /// Canonical encoding: `ratchet_key || pn (u32 BE) || n (u32 BE)`.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let (key, rest) = out.split_at_mut(32);
        key.copy_from_slice(&self.ratchet_key);
        let (pn, n) = rest.split_at_mut(4);
        pn.copy_from_slice(&self.previous_chain_length.to_be_bytes());
        n.copy_from_slice(&self.counter.to_be_bytes());
        out
    }
}

fn internal(_: PrimitiveError) -> RatchetError {
    RatchetError::Internal
}

fn kdf_rk(rk: &RootKey, dh_out: &SharedSecret) -> Result<(RootKey, ChainKey), RatchetError> {
    let mut okm = Zeroizing::new([0u8; 64]);
    primitives::hkdf_sha256(
        rk.as_array(),
        dh_out.expose_secret(),
        ROOT_KDF_INFO,
        okm.as_mut(),
    )
    .map_err(internal)?;
    let mut root = RootKey::zeroed();
    let mut chain = ChainKey::zeroed();
    let (a, b) = okm.split_at(32);
    root.as_mut_array().copy_from_slice(a);
    chain.as_mut_array().copy_from_slice(b);
    Ok((root, chain))
}

fn kdf_ck(ck: &ChainKey) -> Result<(ChainKey, MessageKey), RatchetError> {
    let mk = primitives::hmac_sha256(ck.as_array(), &[0x01]).map_err(internal)?;
    let next = primitives::hmac_sha256(ck.as_array(), &[0x02]).map_err(internal)?;
    Ok((
        ChainKey::from_array(*next.expose_secret()),
        MessageKey::from_array(*mk.expose_secret()),
    ))
}

fn aead_key_nonce(mk: &MessageKey) -> Result<(AeadKey, [u8; 12]), RatchetError> {
    let mut okm = Zeroizing::new([0u8; 44]);
    primitives::hkdf_sha256(&[0u8; 32], mk.as_array(), MESSAGE_KEYS_INFO, okm.as_mut())
        .map_err(internal)?;
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    let (k, n) = okm.split_at(32);
    key.copy_from_slice(k);
    nonce.copy_from_slice(n);
    let key = AeadKey::from_bytes(key);
    Ok((key, nonce))
}

fn full_ad(ad: &[u8], header: &Header) -> Vec<u8> {
    let mut full = Vec::with_capacity(ad.len() + HEADER_LEN);
    full.extend_from_slice(ad);
    full.extend_from_slice(&header.encode());
    full
}

fn seal(
    mk: &MessageKey,
    ad: &[u8],
    header: &Header,
    plaintext: &[u8],
) -> Result<Vec<u8>, RatchetError> {
    let (key, nonce) = aead_key_nonce(mk)?;
    primitives::aead_seal(&key, &nonce, &full_ad(ad, header), plaintext).map_err(internal)
}

fn open(
    mk: &MessageKey,
    ad: &[u8],
    header: &Header,
    ciphertext: &[u8],
) -> Result<SecretBytes, RatchetError> {
    let (key, nonce) = aead_key_nonce(mk)?;
    primitives::aead_open(&key, &nonce, &full_ad(ad, header), ciphertext)
        .map_err(|_| RatchetError::DecryptionFailed)
}

fn ratchet_dh(pair: &X25519KeyPair, peer: &[u8; 32]) -> Result<SharedSecret, RatchetError> {
    pair.agree(peer).map_err(|e| match e {
        PrimitiveError::NonContributory => RatchetError::InvalidRatchetKey,
        _ => RatchetError::Internal,
    })
}

/// The chain part of the state (section 3.2), cloned for each transactional decryption.
#[derive(Clone, Serialize, Deserialize)]
struct ChainState {
    dhs: X25519KeyPair,
    dhr: Option<[u8; 32]>,
    rk: RootKey,
    cks: Option<ChainKey>,
    ckr: Option<ChainKey>,
    ns: u32,
    nr: u32,
    pn: u32,
}

#[derive(Clone, Serialize, Deserialize)]
struct SkippedKey {
    ratchet_key: [u8; 32],
    counter: u32,
    key: MessageKey,
}

/// One party's Double Ratchet state.
#[derive(Clone, Serialize, Deserialize)]
pub struct Ratchet {
    state: ChainState,
    /// Skipped message keys, oldest first.
    skipped: VecDeque<SkippedKey>,
}

impl core::fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ratchet")
            .field(
                "sending_ratchet_key",
                &hex::encode(self.state.dhs.public_key()),
            )
            .field("root_key", &self.state.rk)
            .field("sent", &self.state.ns)
            .field("received", &self.state.nr)
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl Ratchet {
    /// `RatchetInitAlice` (section 3.3): the initiator starts a sending chain at once.
    pub fn new_initiator(
        shared_key: &SharedSecret,
        responder_ratchet_key: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, RatchetError> {
        let dhs = X25519KeyPair::generate(rng);
        let root = RootKey::from_array(*shared_key.expose_secret());
        let (rk, cks) = kdf_rk(&root, &ratchet_dh(&dhs, responder_ratchet_key)?)?;
        Ok(Self {
            state: ChainState {
                dhs,
                dhr: Some(*responder_ratchet_key),
                rk,
                cks: Some(cks),
                ckr: None,
                ns: 0,
                nr: 0,
                pn: 0,
            },
            skipped: VecDeque::new(),
        })
    }

    /// `RatchetInitBob` (section 3.3): the responder's first ratchet key pair is its signed
    /// prekey; it can send only after its first received message.
    pub fn new_responder(shared_key: &SharedSecret, ratchet_key_pair: X25519KeyPair) -> Self {
        Self {
            state: ChainState {
                dhs: ratchet_key_pair,
                dhr: None,
                rk: RootKey::from_array(*shared_key.expose_secret()),
                cks: None,
                ckr: None,
                ns: 0,
                nr: 0,
                pn: 0,
            },
            skipped: VecDeque::new(),
        }
    }

    /// The current sending ratchet public key.
    pub fn sending_ratchet_key(&self) -> &[u8; 32] {
        self.state.dhs.public_key()
    }

    /// How many skipped message keys are stored.
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.len()
    }

    /// `RatchetEncrypt`: encrypts with the next sending message key.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<(Header, Vec<u8>), RatchetError> {
        let cks = self
            .state
            .cks
            .as_ref()
            .ok_or(RatchetError::NoSendingChain)?;
        let (next, mk) = kdf_ck(cks)?;
        let header = Header {
            ratchet_key: *self.state.dhs.public_key(),
            previous_chain_length: self.state.pn,
            counter: self.state.ns,
        };
        let ns = self
            .state
            .ns
            .checked_add(1)
            .ok_or(RatchetError::CounterExhausted)?;
        let ciphertext = seal(&mk, associated_data, &header, plaintext)?;
        self.state.cks = Some(next);
        self.state.ns = ns;
        Ok((header, ciphertext))
    }

    /// `RatchetDecrypt`, transactionally: on any error the state is unchanged.
    pub fn decrypt(
        &mut self,
        header: &Header,
        ciphertext: &[u8],
        associated_data: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<SecretBytes, RatchetError> {
        // TrySkippedMessageKeys: a stored key is removed only once its message authenticates.
        if let Some(pos) = self
            .skipped
            .iter()
            .position(|s| s.ratchet_key == header.ratchet_key && s.counter == header.counter)
        {
            let entry = self.skipped.get(pos).ok_or(RatchetError::Internal)?;
            let plaintext = open(&entry.key, associated_data, header, ciphertext)?;
            self.skipped.remove(pos);
            return Ok(plaintext);
        }

        let mut state = self.state.clone();
        let mut new_skipped = Vec::new();
        if Some(header.ratchet_key) != state.dhr {
            skip_message_keys(&mut state, header.previous_chain_length, &mut new_skipped)?;
            dh_ratchet(&mut state, &header.ratchet_key, rng)?;
        }
        skip_message_keys(&mut state, header.counter, &mut new_skipped)?;
        if header.counter < state.nr {
            // An old counter on the current chain whose key is gone: a replay.
            return Err(RatchetError::DecryptionFailed);
        }
        let ckr = state.ckr.as_ref().ok_or(RatchetError::DecryptionFailed)?;
        let (next, mk) = kdf_ck(ckr)?;
        state.ckr = Some(next);
        state.nr = state
            .nr
            .checked_add(1)
            .ok_or(RatchetError::CounterExhausted)?;
        let plaintext = open(&mk, associated_data, header, ciphertext)?;

        // Authenticated: commit.
        self.state = state;
        for key in new_skipped {
            if self.skipped.len() >= MAX_SKIPPED_MESSAGE_KEYS {
                self.skipped.pop_front();
            }
            self.skipped.push_back(key);
        }
        Ok(plaintext)
    }
}

/// `SkipMessageKeys`: stores the keys of messages `state.nr .. until` of the receiving chain.
fn skip_message_keys(
    state: &mut ChainState,
    until: u32,
    out: &mut Vec<SkippedKey>,
) -> Result<(), RatchetError> {
    let (Some(mut ck), Some(dhr)) = (state.ckr.clone(), state.dhr) else {
        return Ok(());
    };
    if until <= state.nr {
        return Ok(());
    }
    if until - state.nr > MAX_SKIP {
        return Err(RatchetError::TooFarAhead);
    }
    while state.nr < until {
        let (next, mk) = kdf_ck(&ck)?;
        out.push(SkippedKey {
            ratchet_key: dhr,
            counter: state.nr,
            key: mk,
        });
        ck = next;
        state.nr += 1;
    }
    state.ckr = Some(ck);
    Ok(())
}

/// `DHRatchet` (section 3.5).
fn dh_ratchet(
    state: &mut ChainState,
    their_key: &[u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(), RatchetError> {
    state.pn = state.ns;
    state.ns = 0;
    state.nr = 0;
    state.dhr = Some(*their_key);
    let (rk, ckr) = kdf_rk(&state.rk, &ratchet_dh(&state.dhs, their_key)?)?;
    state.ckr = Some(ckr);
    state.dhs = X25519KeyPair::generate(rng);
    let (rk, cks) = kdf_rk(&rk, &ratchet_dh(&state.dhs, their_key)?)?;
    state.rk = rk;
    state.cks = Some(cks);
    Ok(())
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

    fn pair(rng: &mut StdRng) -> (Ratchet, Ratchet) {
        let sk = SharedSecret::from_array([42; 32]);
        let bob_spk = X25519KeyPair::generate(rng);
        let alice = Ratchet::new_initiator(&sk, bob_spk.public_key(), rng).unwrap();
        let bob = Ratchet::new_responder(&sk, bob_spk);
        (alice, bob)
    }

    #[test]
    fn header_encoding_is_canonical() {
        let h = Header {
            ratchet_key: [9; 32],
            previous_chain_length: 0x0102_0304,
            counter: 5,
        };
        let e = h.encode();
        assert_eq!(&e[..32], &[9; 32]);
        assert_eq!(&e[32..], &[1, 2, 3, 4, 0, 0, 0, 5]);
    }

    #[test]
    fn kdf_ck_separates_message_and_chain_keys() {
        let ck = ChainKey::from_array([1; 32]);
        let (next, mk) = kdf_ck(&ck).unwrap();
        assert_ne!(next.as_array(), mk.as_array());
        let mk2 = primitives::hmac_sha256(&[1; 32], &[1]).unwrap();
        assert_eq!(mk.as_array(), mk2.expose_secret());
    }

    #[test]
    fn responder_cannot_send_first_and_skipped_keys_are_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let (mut alice, mut bob) = pair(&mut rng);
        assert_eq!(bob.encrypt(b"x", b"ad"), Err(RatchetError::NoSendingChain));
        // Fill the skipped store past its bound with several chains of MAX_SKIP gaps.
        let mut last = None;
        for round in 0..3 {
            for _ in 0..MAX_SKIP {
                alice.encrypt(b"skipped", b"ad").unwrap();
            }
            let (h, c) = alice.encrypt(b"delivered", b"ad").unwrap();
            bob.decrypt(&h, &c, b"ad", &mut rng).unwrap();
            assert!(bob.skipped_key_count() <= MAX_SKIPPED_MESSAGE_KEYS);
            // A reply makes Alice start a new chain.
            let (h, c) = bob.encrypt(b"reply", b"ad").unwrap();
            alice.decrypt(&h, &c, b"ad", &mut rng).unwrap();
            last = Some(round);
        }
        assert_eq!(last, Some(2));
        assert_eq!(bob.skipped_key_count(), MAX_SKIPPED_MESSAGE_KEYS);
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut rng = StdRng::seed_from_u64(2);
        let (alice, _) = pair(&mut rng);
        let dbg = format!("{alice:?}");
        assert!(!dbg.contains(&hex::encode(alice.state.rk.as_array())));
        assert!(!dbg.contains(&hex::encode(alice.state.dhs.secret().expose_secret())));
        assert!(!dbg.contains(&hex::encode(alice.state.cks.as_ref().unwrap().as_array())));
        assert!(dbg.contains("RootKey(<redacted>)"));
        assert_eq!(
            format!("{:?}", MessageKey::from_array([3; 32])),
            "MessageKey(<redacted>)"
        );
        assert_eq!(
            format!("{:?}", ChainKey::from_array([3; 32])),
            "ChainKey(<redacted>)"
        );
    }
}
