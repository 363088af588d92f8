//! A pairwise session with one peer device: PQXDH setup, then the Double Ratchet, encoded as
//! the `medrelay.e2e.v1` protobuf messages (`E2eMessage`, `PrekeyMessage`, `RatchetMessage`).
//!
//! Follows PQXDH revision 3 section 3.3 (the initiator sends its key-agreement fields with
//! every message until it hears back) and Double Ratchet revision 4 section 7.1. The responder
//! remembers a digest of the prekey message that created the session, so a re-delivered copy of
//! an early `PrekeyMessage` is routed to the existing session (where its message key is already
//! used, so it is rejected as a replay) instead of building a second session.
//!
//! Every accepted prekey message also goes into the device's replay cache
//! ([`DeviceIdentity`], persisted with it): [`Session::accept`] refuses a `PrekeyMessage` it
//! already accepted with [`SessionError::Replayed`], before decrypting, so an old message
//! without a one-time prekey cannot be shown again or replace a live session while the signed
//! prekey it names is kept.
//!
//! A session is bound to one peer address (user id, device id) with [`Session::bind_peer`]:
//! the initiator binds the recipient it planned, the responder the sender of the first
//! delivery (trust on first use); the transport refuses deliveries that name another user.

use medrelay_proto::e2e::{self, e2e_message::Body};
use prost::bytes::Bytes;
use prost::Message;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{PqxdhError, SessionError};
use crate::identity::{DeviceIdentity, PrekeyBundle, PublicIdentity};
use crate::pqxdh::{self, PrekeyHeader};
use crate::ratchet::{Header, Ratchet};
use crate::secret::SecretBytes;

/// Which side of the PQXDH handshake this session was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Sent the first message (fetched the peer's bundle).
    Initiator,
    /// Accepted the first message.
    Responder,
}

/// Who a session is with, as the server names them: 16-byte user and device ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// The peer's user id.
    pub user_id: [u8; 16],
    /// The peer's device id.
    pub device_id: [u8; 16],
}

/// A Double Ratchet session with one peer device.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    ratchet: Ratchet,
    associated_data: Vec<u8>,
    peer_identity: PublicIdentity,
    role: Role,
    /// Initiator only: the PQXDH fields to repeat until the peer's first message arrives.
    pending_prekey: Option<PrekeyHeader>,
    /// SHA-256 of the canonical encoding of the prekey header that created this session.
    prekey_digest: [u8; 32],
    /// The initiator's PQXDH ephemeral key, which names this session.
    base_key: [u8; 32],
    /// The peer's (user, device), once bound ([`Session::bind_peer`]).
    peer: Option<PeerAddress>,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("peer_identity", &self.peer_identity)
            .field("peer", &self.peer)
            .field("acknowledged", &self.is_acknowledged())
            .field("ratchet", &self.ratchet)
            .finish_non_exhaustive()
    }
}

/// What an incoming `E2eMessage` is, before decrypting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingKind {
    /// A `PrekeyMessage`: from a session that may be new. `sender` is not yet verified.
    Prekey {
        /// The identity the sender claims.
        sender: PublicIdentity,
        /// The PQXDH ephemeral key naming the session.
        base_key: [u8; 32],
    },
    /// A `RatchetMessage` for an existing session.
    Ratchet,
}

/// Domain label of the replay-cache digest.
const REPLAY_DIGEST_LABEL: &[u8] = b"medrelay-prekey-replay-v1\0";

/// The replay-cache digest of a prekey message: SHA-256 over a label and the key-agreement
/// fields that make it unique (ephemeral key, signed prekey id, PQ prekey id, PQ ciphertext,
/// one-time prekey id), each fixed-length or length-prefixed.
fn replay_digest(header: &PrekeyHeader) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(REPLAY_DIGEST_LABEL);
    h.update(header.ephemeral_key);
    h.update(header.signed_prekey_id.to_be_bytes());
    h.update(header.pq_prekey_id.to_be_bytes());
    h.update((header.pq_ciphertext.len() as u64).to_be_bytes());
    h.update(&header.pq_ciphertext);
    match header.one_time_prekey_id {
        None => h.update([0u8]),
        Some(id) => {
            h.update([1u8]);
            h.update(id.to_be_bytes());
        }
    }
    h.finalize().into()
}

fn header_digest(header: &PrekeyHeader) -> Result<[u8; 32], SessionError> {
    let encoded = postcard::to_allocvec(header).map_err(|_| SessionError::Malformed("header"))?;
    Ok(Sha256::digest(&encoded).into())
}

fn array32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], SessionError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| SessionError::Malformed(what))
}

fn decode(bytes: &[u8]) -> Result<Body, SessionError> {
    e2e::E2eMessage::decode(bytes)
        .map_err(|_| SessionError::Malformed("not an E2eMessage"))?
        .body
        .ok_or(SessionError::Malformed("empty E2eMessage"))
}

fn parse_ratchet(message: &e2e::RatchetMessage) -> Result<Header, SessionError> {
    Ok(Header {
        ratchet_key: array32(&message.ratchet_key, "ratchet key length")?,
        previous_chain_length: message.previous_chain_length,
        counter: message.counter,
    })
}

fn parse_prekey(
    message: &e2e::PrekeyMessage,
) -> Result<(PrekeyHeader, &e2e::RatchetMessage), SessionError> {
    let sender_identity = PublicIdentity {
        signing_key: array32(&message.sender_identity_signing_key, "signing key length")?,
        dh_key: array32(&message.sender_identity_dh_key, "identity key length")?,
        dh_signature: <[u8; 64]>::try_from(message.sender_identity_dh_signature.as_ref())
            .map_err(|_| SessionError::Malformed("signature length"))?,
    };
    let header = PrekeyHeader {
        sender_identity,
        ephemeral_key: array32(&message.ephemeral_key, "ephemeral key length")?,
        signed_prekey_id: message.signed_prekey_id,
        pq_prekey_id: message.pq_prekey_id,
        pq_ciphertext: message.pq_ciphertext.to_vec(),
        one_time_prekey_id: message.one_time_prekey_id_plus_one.checked_sub(1),
    };
    let inner = message
        .message
        .as_ref()
        .ok_or(SessionError::Malformed("prekey message without message"))?;
    Ok((header, inner))
}

/// Classifies an incoming message without decrypting it, so the caller can choose between
/// [`Session::decrypt`] and [`Session::accept`].
pub fn inspect(bytes: &[u8]) -> Result<IncomingKind, SessionError> {
    match decode(bytes)? {
        Body::Ratchet(_) => Ok(IncomingKind::Ratchet),
        Body::Prekey(p) => {
            let (header, _) = parse_prekey(&p)?;
            Ok(IncomingKind::Prekey {
                sender: header.sender_identity,
                base_key: header.ephemeral_key,
            })
        }
    }
}

impl Session {
    /// Starts a session from the peer device's bundle (PQXDH initiator). Verifies every
    /// signature in the bundle and rejects low-order keys. The first messages this session
    /// encrypts are `PrekeyMessage`s, until one arrives from the peer.
    pub fn initiate(
        identity: &DeviceIdentity,
        bundle: &PrekeyBundle,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Session, SessionError> {
        if bundle.one_time_prekey.is_some_and(|o| o.id == u32::MAX) {
            return Err(SessionError::Setup(PqxdhError::Malformed));
        }
        let agreement = pqxdh::initiate(identity, bundle, rng)?;
        let ratchet =
            Ratchet::new_initiator(&agreement.shared_key, &agreement.responder_ratchet_key, rng)?;
        Ok(Session {
            ratchet,
            associated_data: agreement.associated_data,
            peer_identity: bundle.identity.clone(),
            role: Role::Initiator,
            prekey_digest: header_digest(&agreement.header)?,
            base_key: agreement.header.ephemeral_key,
            pending_prekey: Some(agreement.header),
            peer: None,
        })
    }

    /// Accepts the first message of a new session (PQXDH responder) and decrypts it.
    ///
    /// `device` is changed only on success: the one-time prekey the message used is deleted
    /// and the message's digest enters the replay cache, so persist `device` together with the
    /// new session. A message naming an unknown or already used one-time prekey fails with
    /// [`PqxdhError::UnknownOneTimePrekey`] inside [`SessionError::Setup`]; a prekey message
    /// this device already accepted fails with [`SessionError::Replayed`] before any
    /// decryption (later messages of a live session carrying the same prekey fields go to
    /// [`Session::decrypt`] instead, which routes them by digest).
    pub fn accept(
        device: &mut DeviceIdentity,
        bytes: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Session, SecretBytes), SessionError> {
        let Body::Prekey(message) = decode(bytes)? else {
            return Err(SessionError::NotAPrekeyMessage);
        };
        let (header, inner) = parse_prekey(&message)?;
        let replay = replay_digest(&header);
        if device.prekey_message_seen(&replay) {
            return Err(SessionError::Replayed);
        }
        let agreement = pqxdh::respond(device, &header)?;
        let mut session = Session {
            ratchet: Ratchet::new_responder(&agreement.shared_key, agreement.ratchet_key_pair),
            associated_data: agreement.associated_data,
            peer_identity: header.sender_identity.clone(),
            role: Role::Responder,
            pending_prekey: None,
            prekey_digest: header_digest(&header)?,
            base_key: header.ephemeral_key,
            peer: None,
        };
        let plaintext = session.decrypt_ratchet(inner, rng)?;
        if let Some(id) = header.one_time_prekey_id {
            if !device.consume_one_time_prekey(id) {
                return Err(SessionError::Setup(PqxdhError::UnknownOneTimePrekey(id)));
            }
        }
        device.remember_prekey_message(replay, header.signed_prekey_id);
        Ok((session, plaintext))
    }

    /// Encrypts `plaintext` (normally an encoded, padded `Content`) into encoded
    /// `E2eMessage` bytes.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let (header, ciphertext) = self.ratchet.encrypt(plaintext, &self.associated_data)?;
        let message = e2e::RatchetMessage {
            ratchet_key: Bytes::copy_from_slice(&header.ratchet_key),
            previous_chain_length: header.previous_chain_length,
            counter: header.counter,
            ciphertext: Bytes::from(ciphertext),
        };
        let body = match &self.pending_prekey {
            None => Body::Ratchet(message),
            Some(p) => Body::Prekey(e2e::PrekeyMessage {
                sender_identity_signing_key: Bytes::copy_from_slice(&p.sender_identity.signing_key),
                sender_identity_dh_key: Bytes::copy_from_slice(&p.sender_identity.dh_key),
                sender_identity_dh_signature: Bytes::copy_from_slice(
                    &p.sender_identity.dh_signature,
                ),
                ephemeral_key: Bytes::copy_from_slice(&p.ephemeral_key),
                signed_prekey_id: p.signed_prekey_id,
                pq_prekey_id: p.pq_prekey_id,
                pq_ciphertext: Bytes::copy_from_slice(&p.pq_ciphertext),
                one_time_prekey_id_plus_one: match p.one_time_prekey_id {
                    None => 0,
                    Some(id) => id
                        .checked_add(1)
                        .ok_or(SessionError::Setup(PqxdhError::Malformed))?,
                },
                message: Some(message),
            }),
        };
        Ok(e2e::E2eMessage { body: Some(body) }.encode_to_vec())
    }

    /// Decrypts an encoded `E2eMessage` for this session. On any error the session is
    /// unchanged. A `PrekeyMessage` is accepted only if it is the one that created this
    /// session; one that starts a different session gives [`SessionError::NewSessionRequired`].
    pub fn decrypt(
        &mut self,
        bytes: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<SecretBytes, SessionError> {
        match decode(bytes)? {
            Body::Ratchet(message) => self.decrypt_ratchet(&message, rng),
            Body::Prekey(message) => {
                let (header, inner) = parse_prekey(&message)?;
                if self.role == Role::Responder && header_digest(&header)? == self.prekey_digest {
                    self.decrypt_ratchet(inner, rng)
                } else if header.ephemeral_key == self.base_key {
                    // Same session name, different fields: tampered.
                    Err(SessionError::DecryptionFailed)
                } else {
                    Err(SessionError::NewSessionRequired)
                }
            }
        }
    }

    fn decrypt_ratchet(
        &mut self,
        message: &e2e::RatchetMessage,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<SecretBytes, SessionError> {
        let header = parse_ratchet(message)?;
        let plaintext =
            self.ratchet
                .decrypt(&header, &message.ciphertext, &self.associated_data, rng)?;
        // The peer has our ratchet key: stop repeating the PQXDH fields.
        self.pending_prekey = None;
        Ok(plaintext)
    }

    /// The peer device's identity (compare it with [`crate::fingerprint`] safety numbers).
    pub fn peer_identity(&self) -> &PublicIdentity {
        &self.peer_identity
    }

    /// The peer (user, device) this session is bound to, if bound.
    pub fn peer(&self) -> Option<&PeerAddress> {
        self.peer.as_ref()
    }

    /// Binds the session to its peer's (user, device): the first call sets it (the initiator
    /// passes the recipient it planned, the responder the sender of the first delivery: trust
    /// on first use); later calls check it, failing with [`SessionError::PeerMismatch`] (the
    /// session unchanged) for any other address.
    pub fn bind_peer(&mut self, peer: PeerAddress) -> Result<(), SessionError> {
        match &self.peer {
            None => {
                self.peer = Some(peer);
                Ok(())
            }
            Some(bound) if *bound == peer => Ok(()),
            Some(_) => Err(SessionError::PeerMismatch),
        }
    }

    /// Which side of the handshake this session was.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer has been heard from (an initiator stops sending `PrekeyMessage`s then).
    pub fn is_acknowledged(&self) -> bool {
        self.pending_prekey.is_none()
    }

    /// The PQXDH ephemeral key that names this session (matches [`IncomingKind::Prekey`]).
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// The session's associated data (`AD`, 128 bytes; see [`crate::pqxdh::associated_data`]).
    pub fn associated_data(&self) -> &[u8] {
        &self.associated_data
    }
}
