//! Device identity and prekeys, as PQXDH (Signal, revision 3) section 2.3 and 3.2 publish them.
//!
//! A device holds an Ed25519 identity signing key and an X25519 identity DH key; the DH key is
//! signed by the signing key under the label [`IDENTITY_DH_LABEL`] (Signal uses one XEdDSA key
//! for both roles; medrelay keeps two keys and binds them with this signature). It also holds:
//!
//! - a signed X25519 prekey (`SPK`), rotated every
//!   [`SIGNED_PREKEY_ROTATION_INTERVAL_MS`];
//!   the previous one is kept for
//!   [`RETIRED_PREKEY_GRACE_MS`] so prekey messages
//!   already in flight still decrypt;
//! - a signed ML-KEM-768 last-resort prekey (`PQSPK`), rotated the same way;
//! - one-time X25519 prekeys (`OPK`), each used for one session and then deleted.
//!
//! Prekey signatures are Ed25519 over `label || id (u32 big-endian) || public key`, with the
//! labels the wire protocol defines (`medrelay_proto::SIGNED_PREKEY_LABEL`, `PQ_PREKEY_LABEL`).

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::limits::{
    MAX_ACCEPTED_PREKEY_MESSAGES, MAX_ONE_TIME_PREKEYS, ONE_TIME_PREKEY_BATCH_SIZE,
    ONE_TIME_PREKEY_REPLENISH_THRESHOLD, RETIRED_PREKEY_GRACE_MS,
    SIGNED_PREKEY_ROTATION_INTERVAL_MS,
};
use crate::primitives::{self, MlKemSeed, X25519KeyPair};
use crate::secret::{byte_array, secret_array};

/// Domain label of the signature binding the identity DH key to the identity signing key
/// (defined by the wire protocol, so the server and every client sign and check the same bytes).
pub const IDENTITY_DH_LABEL: &[u8] = medrelay_proto::IDENTITY_DH_KEY_LABEL;
/// Domain label of the signed X25519 prekey's signature.
pub const SIGNED_PREKEY_LABEL: &[u8] = medrelay_proto::SIGNED_PREKEY_LABEL;
/// Domain label of the ML-KEM-768 prekey's signature.
pub const PQ_PREKEY_LABEL: &[u8] = medrelay_proto::PQ_PREKEY_LABEL;

/// Which prekey a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrekeyKind {
    /// The signed X25519 prekey.
    SignedX25519,
    /// The ML-KEM-768 last-resort prekey.
    MlKem768,
}

impl PrekeyKind {
    fn label(self) -> &'static [u8] {
        match self {
            PrekeyKind::SignedX25519 => SIGNED_PREKEY_LABEL,
            PrekeyKind::MlKem768 => PQ_PREKEY_LABEL,
        }
    }
}

/// The exact bytes a prekey signature covers: `label(kind) || id (u32 big-endian) || key`, as
/// `medrelay_proto::signed_prekey_signed_message` and `pq_prekey_signed_message` define them.
pub fn prekey_signed_message(kind: PrekeyKind, id: u32, public_key: &[u8]) -> Vec<u8> {
    [kind.label(), &id.to_be_bytes(), public_key].concat()
}

/// The exact bytes the identity DH key signature covers: `label || key`, as
/// `medrelay_proto::identity_dh_key_signed_message` defines them.
pub fn identity_dh_signed_message(dh_public: &[u8; 32]) -> Vec<u8> {
    [IDENTITY_DH_LABEL, dh_public.as_slice()].concat()
}

fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, IdentityError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidSigningKey)?;
    if key.is_weak() {
        return Err(IdentityError::InvalidSigningKey);
    }
    Ok(key)
}

fn verify(
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8; 64],
    err: IdentityError,
) -> Result<(), IdentityError> {
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| err)
}

/// The public half of a device identity: what peers pin and compare as safety numbers.
///
/// Equality compares the two keys only, never the binding signature: a second valid signature
/// over the same DH key is the same identity, and identity pinning must not depend on which
/// signature bytes a copy carries.
#[derive(Clone, Serialize, Deserialize)]
pub struct PublicIdentity {
    /// Ed25519 identity signing key.
    pub signing_key: [u8; 32],
    /// X25519 identity DH key.
    pub dh_key: [u8; 32],
    /// Ed25519 signature over [`identity_dh_signed_message`]`(dh_key)`.
    #[serde(with = "byte_array")]
    pub dh_signature: [u8; 64],
}

impl PartialEq for PublicIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.signing_key == other.signing_key && self.dh_key == other.dh_key
    }
}

impl Eq for PublicIdentity {}

impl PublicIdentity {
    /// Checks that the signing key is valid and signs the DH key.
    pub fn verify(&self) -> Result<(), IdentityError> {
        let key = verifying_key(&self.signing_key)?;
        verify(
            &key,
            &identity_dh_signed_message(&self.dh_key),
            &self.dh_signature,
            IdentityError::BadIdentitySignature,
        )
    }

    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        verifying_key(&self.signing_key)
    }
}

impl core::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("signing_key", &hex::encode(self.signing_key))
            .field("dh_key", &hex::encode(self.dh_key))
            .finish_non_exhaustive()
    }
}

/// A signed X25519 prekey, public part (maps to the proto `SignedPrekey`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekeyPublic {
    /// Prekey id, named in prekey messages.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature over [`prekey_signed_message`]`(SignedX25519, id, public_key)`.
    #[serde(with = "byte_array")]
    pub signature: [u8; 64],
}

/// A signed ML-KEM-768 prekey, public part (maps to the proto `SignedPrekey`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PqPrekeyPublic {
    /// Prekey id, named in prekey messages.
    pub id: u32,
    /// ML-KEM-768 encapsulation key (1184 bytes).
    pub public_key: Vec<u8>,
    /// Ed25519 signature over [`prekey_signed_message`]`(MlKem768, id, public_key)`.
    #[serde(with = "byte_array")]
    pub signature: [u8; 64],
}

impl core::fmt::Debug for PqPrekeyPublic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PqPrekeyPublic")
            .field("id", &self.id)
            .field("public_key_len", &self.public_key.len())
            .finish_non_exhaustive()
    }
}

/// A one-time X25519 prekey, public part (maps to the proto `OneTimePrekey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekeyPublic {
    /// Prekey id, named in prekey messages.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
}

/// Everything a device publishes (maps to the proto `DeviceKeys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicDeviceKeys {
    /// Identity keys.
    pub identity: PublicIdentity,
    /// Current signed X25519 prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// Current ML-KEM-768 prekey.
    pub pq_prekey: PqPrekeyPublic,
    /// Unused one-time prekeys.
    pub one_time_prekeys: Vec<OneTimePrekeyPublic>,
}

/// What an initiator fetches for one device (maps to the proto `PrekeyBundle`): at most one
/// one-time prekey, none when the server has run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// Identity keys.
    pub identity: PublicIdentity,
    /// Signed X25519 prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// ML-KEM-768 prekey.
    pub pq_prekey: PqPrekeyPublic,
    /// A one-time prekey, if any was left.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
}

impl PrekeyBundle {
    /// Verifies the identity binding and both prekey signatures.
    pub fn verify(&self) -> Result<(), IdentityError> {
        self.identity.verify()?;
        let key = self.identity.verifying_key()?;
        verify(
            &key,
            &prekey_signed_message(
                PrekeyKind::SignedX25519,
                self.signed_prekey.id,
                &self.signed_prekey.public_key,
            ),
            &self.signed_prekey.signature,
            IdentityError::BadSignedPrekeySignature,
        )?;
        verify(
            &key,
            &prekey_signed_message(
                PrekeyKind::MlKem768,
                self.pq_prekey.id,
                &self.pq_prekey.public_key,
            ),
            &self.pq_prekey.signature,
            IdentityError::BadPqPrekeySignature,
        )
    }
}

secret_array! {
    /// An Ed25519 secret key seed.
    pub(crate) struct Ed25519Seed([u8; 32]);
}

#[derive(Clone, Serialize, Deserialize)]
struct SignedPrekeyPair {
    id: u32,
    keypair: X25519KeyPair,
    #[serde(with = "byte_array")]
    signature: [u8; 64],
    created_at_ms: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct PqPrekeyPair {
    id: u32,
    seed: MlKemSeed,
    public_key: Vec<u8>,
    #[serde(with = "byte_array")]
    signature: [u8; 64],
    created_at_ms: u64,
}

/// A prekey message this device accepted: the replay-cache entry (see
/// [`DeviceIdentity::remember_prekey_message`]).
#[derive(Clone, Copy, Serialize, Deserialize)]
struct AcceptedPrekeyMessage {
    digest: [u8; 32],
    signed_prekey_id: u32,
}

#[derive(Clone, Serialize, Deserialize)]
struct Retired<T> {
    prekey: T,
    retired_at_ms: u64,
}

/// A device's secret identity and prekey state. Persist it (through a
/// [`KeyStore`](crate::keystore::KeyStore)) after every call that takes `&mut self`:
/// accepting a session consumes a one-time prekey.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceIdentity {
    signing_seed: Ed25519Seed,
    public: PublicIdentity,
    dh: X25519KeyPair,
    signed_prekey: SignedPrekeyPair,
    retired_signed_prekey: Option<Retired<SignedPrekeyPair>>,
    pq_prekey: PqPrekeyPair,
    retired_pq_prekey: Option<Retired<PqPrekeyPair>>,
    one_time_prekeys: BTreeMap<u32, X25519KeyPair>,
    next_signed_prekey_id: u32,
    next_pq_prekey_id: u32,
    next_one_time_prekey_id: u32,
    /// Digests of accepted prekey messages, oldest first, while the signed prekey each names
    /// is held: a replayed `PrekeyMessage` (above all one without a one-time prekey, which
    /// nothing else would stop) is refused.
    accepted_prekey_messages: Vec<AcceptedPrekeyMessage>,
}

impl core::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("public", &self.public)
            .field("signing_seed", &self.signing_seed)
            .field("signed_prekey_id", &self.signed_prekey.id)
            .field("pq_prekey_id", &self.pq_prekey.id)
            .field("one_time_prekeys", &self.one_time_prekeys.len())
            .field(
                "accepted_prekey_messages",
                &self.accepted_prekey_messages.len(),
            )
            .finish_non_exhaustive()
    }
}

fn next_id(counter: &mut u32) -> Result<u32, IdentityError> {
    let id = *counter;
    *counter = counter
        .checked_add(1)
        .ok_or(IdentityError::PrekeyIdsExhausted)?;
    Ok(id)
}

impl DeviceIdentity {
    /// Generates a new device: identity keys, a signed prekey, an ML-KEM-768 prekey and a first
    /// batch of [`ONE_TIME_PREKEY_BATCH_SIZE`] one-time prekeys. `now_ms` is the caller's clock
    /// (ms since the Unix epoch), used for rotation.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng), now_ms: u64) -> Self {
        let mut signing_seed = Ed25519Seed::zeroed();
        rng.fill_bytes(signing_seed.as_mut_array());
        let signing = SigningKey::from_bytes(signing_seed.as_array());
        let dh = X25519KeyPair::generate(rng);
        let dh_signature = signing
            .sign(&identity_dh_signed_message(dh.public_key()))
            .to_bytes();
        let public = PublicIdentity {
            signing_key: signing.verifying_key().to_bytes(),
            dh_key: *dh.public_key(),
            dh_signature,
        };
        let signed_prekey = new_signed_prekey(&signing, 1, rng, now_ms);
        let pq_prekey = new_pq_prekey(&signing, 1, rng, now_ms);
        let mut device = Self {
            signing_seed,
            public,
            dh,
            signed_prekey,
            retired_signed_prekey: None,
            pq_prekey,
            retired_pq_prekey: None,
            one_time_prekeys: BTreeMap::new(),
            next_signed_prekey_id: 2,
            next_pq_prekey_id: 2,
            next_one_time_prekey_id: 1,
            accepted_prekey_messages: Vec::new(),
        };
        device.generate_one_time_prekeys(ONE_TIME_PREKEY_BATCH_SIZE, rng);
        device
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(self.signing_seed.as_array())
    }

    /// The public identity (signing key, DH key, binding signature).
    pub fn public_identity(&self) -> &PublicIdentity {
        &self.public
    }

    pub(crate) fn identity_dh(&self) -> &X25519KeyPair {
        &self.dh
    }

    /// Signs an authentication transcript (the server's proof of possession) with the identity
    /// signing key. An allow-list: only transcripts starting with
    /// `medrelay_proto::AUTH_TRANSCRIPT_LABEL` or `ENROLL_TRANSCRIPT_LABEL` are signed
    /// (anything else is [`IdentityError::ReservedDomain`]), so the identity key can never be
    /// made to sign a prekey, an identity binding or any future signed structure.
    pub fn sign_auth_transcript(&self, transcript: &[u8]) -> Result<[u8; 64], IdentityError> {
        let allowed = [
            medrelay_proto::AUTH_TRANSCRIPT_LABEL,
            medrelay_proto::ENROLL_TRANSCRIPT_LABEL,
        ];
        if !allowed.iter().any(|label| transcript.starts_with(label)) {
            return Err(IdentityError::ReservedDomain);
        }
        Ok(self.signing_key().sign(transcript).to_bytes())
    }

    /// Everything to upload: identity, current prekeys and every unused one-time prekey.
    pub fn public_keys(&self) -> PublicDeviceKeys {
        PublicDeviceKeys {
            identity: self.public.clone(),
            signed_prekey: self.signed_prekey_public(),
            pq_prekey: self.pq_prekey_public(),
            one_time_prekeys: self
                .one_time_prekeys
                .iter()
                .map(|(id, kp)| OneTimePrekeyPublic {
                    id: *id,
                    public_key: *kp.public_key(),
                })
                .collect(),
        }
    }

    /// A bundle as the server would hand it out, with the given unused one-time prekey (or
    /// none if `one_time_prekey_id` is `None` or not an unused id). For tests and local use.
    pub fn prekey_bundle(&self, one_time_prekey_id: Option<u32>) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.public.clone(),
            signed_prekey: self.signed_prekey_public(),
            pq_prekey: self.pq_prekey_public(),
            one_time_prekey: one_time_prekey_id.and_then(|id| {
                self.one_time_prekeys
                    .get(&id)
                    .map(|kp| OneTimePrekeyPublic {
                        id,
                        public_key: *kp.public_key(),
                    })
            }),
        }
    }

    /// The current signed X25519 prekey, public part.
    pub fn signed_prekey_public(&self) -> SignedPrekeyPublic {
        SignedPrekeyPublic {
            id: self.signed_prekey.id,
            public_key: *self.signed_prekey.keypair.public_key(),
            signature: self.signed_prekey.signature,
        }
    }

    /// The current ML-KEM-768 prekey, public part.
    pub fn pq_prekey_public(&self) -> PqPrekeyPublic {
        PqPrekeyPublic {
            id: self.pq_prekey.id,
            public_key: self.pq_prekey.public_key.clone(),
            signature: self.pq_prekey.signature,
        }
    }

    /// Generates `count` one-time prekeys (at most [`MAX_ONE_TIME_PREKEYS`]) and returns their
    /// public parts for upload. Never more than [`MAX_ONE_TIME_PREKEYS`] are held: to make
    /// room, the oldest unused ones (lowest ids) are deleted first. Those were uploaded
    /// earliest, and the server hands prekeys out in upload order, so they are the ones it
    /// gave to initiators who never used them; without this, such leftovers would fill the
    /// bound and stop replenishment for good.
    pub fn generate_one_time_prekeys(
        &mut self,
        count: usize,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<OneTimePrekeyPublic> {
        let count = count.min(MAX_ONE_TIME_PREKEYS);
        while self.one_time_prekeys.len() + count > MAX_ONE_TIME_PREKEYS {
            if self.one_time_prekeys.pop_first().is_none() {
                break;
            }
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let Ok(id) = next_id(&mut self.next_one_time_prekey_id) else {
                break;
            };
            let kp = X25519KeyPair::generate(rng);
            out.push(OneTimePrekeyPublic {
                id,
                public_key: *kp.public_key(),
            });
            self.one_time_prekeys.insert(id, kp);
        }
        out
    }

    /// If fewer than [`ONE_TIME_PREKEY_REPLENISH_THRESHOLD`] one-time prekeys are left,
    /// generates a batch of [`ONE_TIME_PREKEY_BATCH_SIZE`]; returns the new public parts
    /// (empty when none were needed).
    pub fn replenish_one_time_prekeys(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<OneTimePrekeyPublic> {
        if self.needs_one_time_prekeys() {
            self.generate_one_time_prekeys(ONE_TIME_PREKEY_BATCH_SIZE, rng)
        } else {
            Vec::new()
        }
    }

    /// How many unused one-time prekeys this device holds.
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time_prekeys.len()
    }

    /// Whether the one-time prekeys are below [`ONE_TIME_PREKEY_REPLENISH_THRESHOLD`].
    pub fn needs_one_time_prekeys(&self) -> bool {
        self.one_time_prekeys.len() < ONE_TIME_PREKEY_REPLENISH_THRESHOLD
    }

    /// Whether the signed prekey (or the ML-KEM prekey) is older than
    /// [`SIGNED_PREKEY_ROTATION_INTERVAL_MS`].
    pub fn prekey_rotation_due(&self, now_ms: u64) -> bool {
        let due =
            |created: u64| now_ms.saturating_sub(created) >= SIGNED_PREKEY_ROTATION_INTERVAL_MS;
        due(self.signed_prekey.created_at_ms) || due(self.pq_prekey.created_at_ms)
    }

    /// Replaces the signed X25519 prekey; the previous one is kept until
    /// [`prune_retired_prekeys`](Self::prune_retired_prekeys) finds its grace period over.
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        now_ms: u64,
    ) -> Result<SignedPrekeyPublic, IdentityError> {
        let id = next_id(&mut self.next_signed_prekey_id)?;
        let fresh = new_signed_prekey(&self.signing_key(), id, rng, now_ms);
        let old = core::mem::replace(&mut self.signed_prekey, fresh);
        self.retired_signed_prekey = Some(Retired {
            prekey: old,
            retired_at_ms: now_ms,
        });
        self.forget_prekey_messages_of_pruned_prekeys();
        Ok(self.signed_prekey_public())
    }

    /// Replaces the ML-KEM-768 prekey, keeping the previous one for the grace period.
    pub fn rotate_pq_prekey(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        now_ms: u64,
    ) -> Result<PqPrekeyPublic, IdentityError> {
        let id = next_id(&mut self.next_pq_prekey_id)?;
        let fresh = new_pq_prekey(&self.signing_key(), id, rng, now_ms);
        let old = core::mem::replace(&mut self.pq_prekey, fresh);
        self.retired_pq_prekey = Some(Retired {
            prekey: old,
            retired_at_ms: now_ms,
        });
        Ok(self.pq_prekey_public())
    }

    /// Deletes retired prekeys whose [`RETIRED_PREKEY_GRACE_MS`] has passed.
    pub fn prune_retired_prekeys(&mut self, now_ms: u64) {
        let expired = |r: u64| now_ms.saturating_sub(r) >= RETIRED_PREKEY_GRACE_MS;
        if self
            .retired_signed_prekey
            .as_ref()
            .is_some_and(|r| expired(r.retired_at_ms))
        {
            self.retired_signed_prekey = None;
        }
        if self
            .retired_pq_prekey
            .as_ref()
            .is_some_and(|r| expired(r.retired_at_ms))
        {
            self.retired_pq_prekey = None;
        }
        self.forget_prekey_messages_of_pruned_prekeys();
    }

    /// Whether a prekey message with this replay digest was already accepted (see
    /// [`crate::Session::accept`]).
    pub(crate) fn prekey_message_seen(&self, digest: &[u8; 32]) -> bool {
        self.accepted_prekey_messages
            .iter()
            .any(|e| e.digest == *digest)
    }

    /// Records an accepted prekey message's replay digest. It is kept while the signed prekey
    /// it names is held (a replay needs that prekey to succeed); beyond
    /// [`MAX_ACCEPTED_PREKEY_MESSAGES`] the oldest entry goes.
    pub(crate) fn remember_prekey_message(&mut self, digest: [u8; 32], signed_prekey_id: u32) {
        if self.prekey_message_seen(&digest) {
            return;
        }
        self.accepted_prekey_messages.push(AcceptedPrekeyMessage {
            digest,
            signed_prekey_id,
        });
        let excess = self
            .accepted_prekey_messages
            .len()
            .saturating_sub(MAX_ACCEPTED_PREKEY_MESSAGES);
        self.accepted_prekey_messages.drain(..excess);
    }

    /// How many accepted prekey messages the replay cache holds.
    pub fn accepted_prekey_message_count(&self) -> usize {
        self.accepted_prekey_messages.len()
    }

    fn forget_prekey_messages_of_pruned_prekeys(&mut self) {
        let current = self.signed_prekey.id;
        let retired = self.retired_signed_prekey.as_ref().map(|r| r.prekey.id);
        self.accepted_prekey_messages
            .retain(|e| e.signed_prekey_id == current || Some(e.signed_prekey_id) == retired);
    }

    /// The signed prekey with this id: the current one or the retired one in its grace period.
    pub(crate) fn signed_prekey(&self, id: u32) -> Option<&X25519KeyPair> {
        if self.signed_prekey.id == id {
            return Some(&self.signed_prekey.keypair);
        }
        self.retired_signed_prekey
            .as_ref()
            .filter(|r| r.prekey.id == id)
            .map(|r| &r.prekey.keypair)
    }

    /// The ML-KEM seed of the PQ prekey with this id (current or retired).
    pub(crate) fn pq_prekey(&self, id: u32) -> Option<&MlKemSeed> {
        if self.pq_prekey.id == id {
            return Some(&self.pq_prekey.seed);
        }
        self.retired_pq_prekey
            .as_ref()
            .filter(|r| r.prekey.id == id)
            .map(|r| &r.prekey.seed)
    }

    /// An unused one-time prekey, without consuming it.
    pub(crate) fn one_time_prekey(&self, id: u32) -> Option<&X25519KeyPair> {
        self.one_time_prekeys.get(&id)
    }

    /// Deletes a one-time prekey after a session using it was established. Returns whether it
    /// was present.
    pub(crate) fn consume_one_time_prekey(&mut self, id: u32) -> bool {
        self.one_time_prekeys.remove(&id).is_some()
    }
}

fn new_signed_prekey(
    signing: &SigningKey,
    id: u32,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: u64,
) -> SignedPrekeyPair {
    let keypair = X25519KeyPair::generate(rng);
    let signature = signing
        .sign(&prekey_signed_message(
            PrekeyKind::SignedX25519,
            id,
            keypair.public_key(),
        ))
        .to_bytes();
    SignedPrekeyPair {
        id,
        keypair,
        signature,
        created_at_ms: now_ms,
    }
}

fn new_pq_prekey(
    signing: &SigningKey,
    id: u32,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: u64,
) -> PqPrekeyPair {
    let seed = primitives::mlkem768_generate_seed(rng);
    let public_key = primitives::mlkem768_public_key(&seed);
    let signature = signing
        .sign(&prekey_signed_message(
            PrekeyKind::MlKem768,
            id,
            &public_key,
        ))
        .to_bytes();
    PqPrekeyPair {
        id,
        seed,
        public_key,
        signature,
        created_at_ms: now_ms,
    }
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
    fn bundle_verifies_and_signatures_are_bound() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = DeviceIdentity::generate(&mut rng, 0);
        let b = d.prekey_bundle(Some(1));
        assert!(b.one_time_prekey.is_some());
        b.verify().unwrap();

        let mut bad = b.clone();
        bad.signed_prekey.id += 1;
        assert_eq!(bad.verify(), Err(IdentityError::BadSignedPrekeySignature));
        let mut bad = b.clone();
        bad.pq_prekey.public_key[5] ^= 1;
        assert_eq!(bad.verify(), Err(IdentityError::BadPqPrekeySignature));
        let mut bad = b.clone();
        bad.identity.dh_key[0] ^= 1;
        assert_eq!(bad.verify(), Err(IdentityError::BadIdentitySignature));
        // A signed-prekey signature must not verify as a PQ-prekey signature (kind byte).
        let mut bad = b;
        bad.pq_prekey.signature = bad.signed_prekey.signature;
        assert_eq!(bad.verify(), Err(IdentityError::BadPqPrekeySignature));
    }

    #[test]
    fn one_time_prekeys_consume_once_and_replenish() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut d = DeviceIdentity::generate(&mut rng, 0);
        assert_eq!(d.one_time_prekey_count(), ONE_TIME_PREKEY_BATCH_SIZE);
        assert!(d.consume_one_time_prekey(7));
        assert!(!d.consume_one_time_prekey(7));
        assert!(d.prekey_bundle(Some(7)).one_time_prekey.is_none());
        assert!(d.replenish_one_time_prekeys(&mut rng).is_empty());
        for id in 1..=(ONE_TIME_PREKEY_BATCH_SIZE as u32) {
            d.consume_one_time_prekey(id);
        }
        assert!(d.needs_one_time_prekeys());
        let fresh = d.replenish_one_time_prekeys(&mut rng);
        assert_eq!(fresh.len(), ONE_TIME_PREKEY_BATCH_SIZE);
        assert!(fresh
            .iter()
            .all(|p| p.id > ONE_TIME_PREKEY_BATCH_SIZE as u32));
    }

    #[test]
    fn replenishment_keeps_working_after_many_unused_batches() {
        // The server hands out one-time prekeys that initiators never use: their secrets stay
        // here. Replenishment must go on uploading full batches regardless.
        let mut rng = StdRng::seed_from_u64(6);
        let mut d = DeviceIdentity::generate(&mut rng, 0);
        let mut last_max = 0;
        for _cycle in 0..(3 * MAX_ONE_TIME_PREKEYS / ONE_TIME_PREKEY_BATCH_SIZE) {
            let fresh = d.generate_one_time_prekeys(ONE_TIME_PREKEY_BATCH_SIZE, &mut rng);
            assert_eq!(fresh.len(), ONE_TIME_PREKEY_BATCH_SIZE);
            assert!(d.one_time_prekey_count() <= MAX_ONE_TIME_PREKEYS);
            // Every new key is held; the ones dropped were the oldest.
            assert!(fresh.iter().all(|p| d.one_time_prekey(p.id).is_some()));
            assert!(fresh.iter().all(|p| p.id > last_max));
            last_max = fresh.iter().map(|p| p.id).max().unwrap();
            let oldest = *d.one_time_prekeys.keys().next().unwrap();
            assert_eq!(
                oldest as usize,
                last_max as usize + 1 - d.one_time_prekey_count()
            );
        }
        assert_eq!(d.one_time_prekey_count(), MAX_ONE_TIME_PREKEYS);
        // An absurd request is capped, still never above the bound.
        let all = d.generate_one_time_prekeys(usize::MAX, &mut rng);
        assert_eq!(all.len(), MAX_ONE_TIME_PREKEYS);
        assert_eq!(d.one_time_prekey_count(), MAX_ONE_TIME_PREKEYS);
    }

    #[test]
    fn public_identity_equality_ignores_the_signature() {
        let mut rng = StdRng::seed_from_u64(7);
        let d = DeviceIdentity::generate(&mut rng, 0);
        let a = d.public_identity().clone();
        let mut b = a.clone();
        b.dh_signature[63] ^= 0x01;
        assert_eq!(
            a, b,
            "same keys: same identity, whatever the signature bytes"
        );
        let mut c = a.clone();
        c.dh_key[0] ^= 0x01;
        assert_ne!(a, c);
        let mut e = a.clone();
        e.signing_key[0] ^= 0x01;
        assert_ne!(a, e);
    }

    #[test]
    fn rotation_keeps_previous_for_grace_period() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut d = DeviceIdentity::generate(&mut rng, 0);
        assert!(!d.prekey_rotation_due(1));
        assert!(d.prekey_rotation_due(SIGNED_PREKEY_ROTATION_INTERVAL_MS));
        let new = d.rotate_signed_prekey(&mut rng, 10).unwrap();
        let pq = d.rotate_pq_prekey(&mut rng, 10).unwrap();
        assert_eq!((new.id, pq.id), (2, 2));
        assert!(d.signed_prekey(1).is_some() && d.pq_prekey(1).is_some());
        d.prune_retired_prekeys(10 + RETIRED_PREKEY_GRACE_MS - 1);
        assert!(d.signed_prekey(1).is_some());
        d.prune_retired_prekeys(10 + RETIRED_PREKEY_GRACE_MS);
        assert!(d.signed_prekey(1).is_none() && d.pq_prekey(1).is_none());
        assert!(d.signed_prekey(2).is_some() && d.pq_prekey(2).is_some());
        d.prekey_bundle(None).verify().unwrap();
    }

    #[test]
    fn auth_transcript_cannot_enter_reserved_domains() {
        let mut rng = StdRng::seed_from_u64(4);
        let d = DeviceIdentity::generate(&mut rng, 0);
        let auth = [medrelay_proto::AUTH_TRANSCRIPT_LABEL, b"..."].concat();
        let enroll = [medrelay_proto::ENROLL_TRANSCRIPT_LABEL, b"..."].concat();
        assert!(d.sign_auth_transcript(&auth).is_ok());
        assert!(d.sign_auth_transcript(&enroll).is_ok());
        // An allow-list: anything else is refused, not just the known prekey labels.
        for other in [
            &b""[..],
            b"medrelay-auth-v1 ...",
            b"medrelay-future-signed-structure-v1\0...",
            &identity_dh_signed_message(&[7; 32]),
        ] {
            assert_eq!(
                d.sign_auth_transcript(other),
                Err(IdentityError::ReservedDomain)
            );
        }
        assert_eq!(
            d.sign_auth_transcript(&prekey_signed_message(
                PrekeyKind::SignedX25519,
                1,
                &[0; 32]
            )),
            Err(IdentityError::ReservedDomain)
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut rng = StdRng::seed_from_u64(5);
        let d = DeviceIdentity::generate(&mut rng, 0);
        let dbg = format!("{d:?} {d:#?}");
        let secrets = [
            hex::encode(d.signing_seed.as_array()),
            hex::encode(d.dh.secret().expose_secret()),
            hex::encode(d.signed_prekey.keypair.secret().expose_secret()),
            hex::encode(d.pq_prekey.seed.as_array()),
        ];
        for s in secrets {
            assert!(!dbg.contains(&s));
            assert!(!dbg.contains(&s[..16]));
        }
        assert!(dbg.contains("Ed25519Seed(<redacted>)"));
    }
}
