//! Opening a delivery: the receive-side decisions shared by the native transport and the
//! staff web client (`medrelay-web`), sans-IO. Nothing is saved here: [`open_envelope`] says
//! what to save ([`Opened`]), and the caller saves it in one [`crate::StoreUpdate`] before it
//! acks.
//!
//! The rules: the session is found by the sending device and must be bound to the delivery's
//! sender user too (a delivery naming another user than the session's is refused); a new
//! session is bound to the delivery's sender (trust on first use); a replayed prekey message is
//! refused by [`Session::accept`]. When both sides start a session at once
//! ([`keep_existing_session`] decides which one wins), the other is set aside, newest first
//! and at most [`crate::limits::MAX_ARCHIVED_SESSIONS`], and still decrypts what is in flight
//! under it.

use medrelay_proto::{Delivery, DeviceId, UserId};
use rand_core::{CryptoRng, RngCore};

use crate::identity::DeviceIdentity;
use crate::keystore::KeyStore;
use crate::secret::SecretBytes;
use crate::session::{self, IncomingKind, PeerAddress, Role as SessionRole, Session};
use crate::{KeyStoreError, SessionError};

/// What decrypting one delivery produced, and what to save with it (nothing is saved yet).
#[derive(Debug)]
pub struct Opened {
    /// The decrypted content (padded, as sent).
    pub plaintext: SecretBytes,
    /// The peer's current session, when it changed.
    pub session: Option<Session>,
    /// The peer's archived sessions, when they changed (newest first).
    pub archived: Option<Vec<Session>>,
    /// The identity, when a one-time prekey was consumed or the replay cache grew.
    pub identity: Option<DeviceIdentity>,
}

/// Why a delivery could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The key store failed.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// The end-to-end layer refused the message (opaque by design).
    #[error("{0}")]
    Session(#[from] SessionError),
}

/// The session-binding address of a device of a user.
pub fn peer_address(user: &UserId, device: &DeviceId) -> PeerAddress {
    PeerAddress {
        user_id: *user.as_bytes(),
        device_id: *device.as_bytes(),
    }
}

/// The key store's id of a peer device.
pub fn store_device_id(id: &DeviceId) -> crate::DeviceId {
    crate::DeviceId(*id.as_bytes())
}

/// Simultaneous initiation: both devices started a session before either received the other's
/// first message. Whether the existing session survives a new incoming prekey message: it does
/// when it is an unacknowledged session this device started and this device's id is the lower,
/// so both sides agree on one session (the other is set aside, not dropped).
///
/// Only a genuinely new prekey message gets this far: [`Session::accept`] refuses one already
/// accepted (the identity's replay cache) with [`crate::SessionError::Replayed`], so a
/// re-delivered old `PrekeyMessage` can never replace a session, acknowledged or not.
pub fn keep_existing_session(
    existing: Option<&Session>,
    own_device: &DeviceId,
    sender_device: &DeviceId,
) -> bool {
    existing.is_some_and(|s| {
        s.role() == SessionRole::Initiator && !s.is_acknowledged() && own_device < sender_device
    })
}

/// A message still in flight under a session set aside: that session decrypts it, and stays
/// set aside (advanced).
fn try_archived(
    archived: &[Session],
    bytes: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Option<Opened> {
    archived.iter().enumerate().find_map(|(i, session)| {
        let mut session = session.clone();
        let plaintext = session.decrypt(bytes, rng).ok()?;
        let mut updated = archived.to_vec();
        if let Some(slot) = updated.get_mut(i) {
            *slot = session;
        }
        Some(Opened {
            plaintext,
            session: None,
            archived: Some(updated),
            identity: None,
        })
    })
}

/// Decrypts a delivery's ciphertext with what `store` holds for its sending device and this
/// device's `identity` (`own_device` is this device's id). Changes nothing; see the module
/// docs for the rules.
pub fn open_envelope<K: KeyStore + ?Sized>(
    store: &K,
    identity: &DeviceIdentity,
    own_device: &DeviceId,
    delivery: &Delivery,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Opened, OpenError> {
    let bytes = delivery.ciphertext.as_ref();
    let peer = store_device_id(&delivery.sender_device_id);
    let address = peer_address(&delivery.sender_user_id, &delivery.sender_device_id);
    let mut existing = store.load_session(&peer)?;
    if let Some(session) = existing.as_mut() {
        session.bind_peer(address)?;
    }
    let mut archived = store.load_archived_sessions(&peer)?;
    for session in &mut archived {
        session.bind_peer(address)?;
    }
    match session::inspect(bytes)? {
        IncomingKind::Ratchet => {
            if let Some(session) = &existing {
                let mut attempt = session.clone();
                if let Ok(plaintext) = attempt.decrypt(bytes, rng) {
                    return Ok(Opened {
                        plaintext,
                        session: Some(attempt),
                        archived: None,
                        identity: None,
                    });
                }
            }
            try_archived(&archived, bytes, rng).ok_or(SessionError::DecryptionFailed.into())
        }
        IncomingKind::Prekey { sender, .. } => {
            if let Some(mut session) = existing.clone() {
                match session.decrypt(bytes, rng) {
                    Ok(plaintext) => {
                        return Ok(Opened {
                            plaintext,
                            session: Some(session),
                            archived: None,
                            identity: None,
                        })
                    }
                    Err(SessionError::NewSessionRequired) => {}
                    Err(e) => return Err(e.into()),
                }
                // A device's identity keys never change: a new session under another identity
                // for the same device id is refused.
                if session.peer_identity() != &sender {
                    return Err(SessionError::DecryptionFailed.into());
                }
            }
            if let Some(opened) = try_archived(&archived, bytes, rng) {
                return Ok(opened);
            }
            let mut identity = identity.clone();
            let (mut session, plaintext) = Session::accept(&mut identity, bytes, rng)?;
            session.bind_peer(address)?;
            let keep =
                keep_existing_session(existing.as_ref(), own_device, &delivery.sender_device_id);
            // The session not kept is set aside, newest first, for what is still in flight
            // under it.
            let (current, aside) = if keep {
                (None, Some(session))
            } else {
                (Some(session), existing)
            };
            let archived = aside.map(|aside| {
                let mut updated = vec![aside];
                updated.extend(archived);
                updated.truncate(crate::limits::MAX_ARCHIVED_SESSIONS);
                updated
            });
            Ok(Opened {
                plaintext,
                session: current,
                archived,
                identity: Some(identity),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use medrelay_proto::{Bytes, ConversationId, MessageId};
    use rand_core::OsRng;

    use super::*;
    use crate::keystore::{MemoryKeyStore, StoreUpdate};

    fn delivery(from_user: u8, from_device: u8, ciphertext: Vec<u8>) -> Delivery {
        Delivery {
            message_id: MessageId::from_array([9; 16]),
            conversation_id: ConversationId::from_array([7; 16]),
            sender_user_id: UserId::from_array([from_user; 16]),
            sender_device_id: DeviceId::from_array([from_device; 16]),
            server_time_ms: 0,
            ciphertext: Bytes::from(ciphertext),
        }
    }

    fn save(store: &mut MemoryKeyStore, peer: u8, opened: &Opened) {
        let peer = crate::DeviceId([peer; 16]);
        store
            .apply(&StoreUpdate {
                identity: opened.identity.as_ref(),
                sessions: opened
                    .session
                    .as_ref()
                    .map(|s| vec![(peer, s)])
                    .unwrap_or_default(),
                archived_sessions: opened
                    .archived
                    .as_deref()
                    .map(|a| vec![(peer, a)])
                    .unwrap_or_default(),
                ..StoreUpdate::default()
            })
            .unwrap();
    }

    /// Both sides start a session at once; a message each sent under the session that loses
    /// the tie-break still decrypts, from the session set aside.
    #[test]
    fn simultaneous_initiation_keeps_what_is_in_flight() {
        let alice = DeviceIdentity::generate(&mut OsRng, 0);
        let bob = DeviceIdentity::generate(&mut OsRng, 0);
        let (alice_dev, bob_dev) = (DeviceId::from_array([1; 16]), DeviceId::from_array([2; 16]));
        let mut alice_store = MemoryKeyStore::new();
        let mut bob_store = MemoryKeyStore::new();
        let mut to_bob = Session::initiate(&alice, &bob.prekey_bundle(None), &mut OsRng).unwrap();
        let mut to_alice = Session::initiate(&bob, &alice.prekey_bundle(None), &mut OsRng).unwrap();
        let a1 = to_bob.encrypt(b"a1").unwrap();
        let b1 = to_alice.encrypt(b"b1").unwrap();
        let b2 = to_alice.encrypt(b"b2").unwrap();
        alice_store
            .save_session(&store_device_id(&bob_dev), &to_bob)
            .unwrap();
        bob_store
            .save_session(&store_device_id(&alice_dev), &to_alice)
            .unwrap();

        // Alice (the lower id) keeps her session; Bob's new one is set aside.
        let opened = open_envelope(
            &alice_store,
            &alice,
            &alice_dev,
            &delivery(22, 2, b1),
            &mut OsRng,
        )
        .unwrap();
        assert_eq!(opened.plaintext.expose_secret(), b"b1");
        assert!(opened.session.is_none(), "alice's session stays current");
        assert_eq!(opened.archived.as_ref().map(Vec::len), Some(1));
        save(&mut alice_store, 2, &opened);
        let alice = opened.identity.unwrap();

        // Bob (the higher id) takes Alice's session; his own is set aside.
        let opened =
            open_envelope(&bob_store, &bob, &bob_dev, &delivery(11, 1, a1), &mut OsRng).unwrap();
        assert_eq!(opened.plaintext.expose_secret(), b"a1");
        assert!(opened.session.is_some());
        assert_eq!(opened.archived.as_ref().map(Vec::len), Some(1));
        save(&mut bob_store, 1, &opened);

        // Bob's second message, sent before he saw Alice's: decrypted by the session set aside.
        let opened = open_envelope(
            &alice_store,
            &alice,
            &alice_dev,
            &delivery(22, 2, b2),
            &mut OsRng,
        )
        .unwrap();
        assert_eq!(opened.plaintext.expose_secret(), b"b2");
        assert!(opened.session.is_none() && opened.archived.is_some());

        // A delivery naming another user than the session's is refused.
        let mut stray = to_bob.clone();
        let a2 = stray.encrypt(b"a2").unwrap();
        assert!(
            open_envelope(&bob_store, &bob, &bob_dev, &delivery(33, 1, a2), &mut OsRng).is_err()
        );
    }
}
