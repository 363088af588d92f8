//! Full sessions: setup with and without a one-time prekey, one-time prekeys used once, bad
//! signatures and low-order keys rejected, prekey messages until acknowledged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use medrelay_proto::e2e::{e2e_message::Body, E2eMessage};
use medrelay_sdk::content;
use medrelay_sdk::session::inspect;
use medrelay_sdk::{
    DeviceIdentity, IdentityError, IncomingKind, PeerAddress, PqxdhError, Session, SessionError,
};
use prost::Message;

fn is_prekey(wire: &[u8]) -> bool {
    matches!(
        E2eMessage::decode(wire).unwrap().body,
        Some(Body::Prekey(_))
    )
}

#[test]
fn session_with_one_time_prekey_round_trips_and_acknowledges() {
    let mut rng = common::rng(1);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(5)), &mut rng).unwrap();
    let m1 = alice.encrypt(b"one").unwrap();
    let m2 = alice.encrypt(b"two").unwrap();
    assert!(
        is_prekey(&m1) && is_prekey(&m2),
        "prekey messages until acknowledged"
    );
    assert_eq!(
        inspect(&m1).unwrap(),
        IncomingKind::Prekey {
            sender: alice_id.public_identity().clone(),
            base_key: *alice.base_key()
        }
    );

    let (mut bob, pt) = Session::accept(&mut bob_id, &m1, &mut rng).unwrap();
    assert_eq!(pt.expose_secret(), b"one");
    assert_eq!(bob.peer_identity(), alice_id.public_identity());
    // Later prekey messages of the same session go to the existing session.
    assert_eq!(bob.decrypt(&m2, &mut rng).unwrap().expose_secret(), b"two");
    // A re-delivered first message is a replay.
    assert_eq!(
        bob.decrypt(&m1, &mut rng).unwrap_err(),
        SessionError::DecryptionFailed
    );

    let r = bob.encrypt(b"ack").unwrap();
    assert!(!is_prekey(&r));
    assert_eq!(inspect(&r).unwrap(), IncomingKind::Ratchet);
    assert!(!alice.is_acknowledged());
    assert_eq!(alice.decrypt(&r, &mut rng).unwrap().expose_secret(), b"ack");
    assert!(alice.is_acknowledged());
    let m3 = alice.encrypt(b"three").unwrap();
    assert!(!is_prekey(&m3));
    assert_eq!(
        bob.decrypt(&m3, &mut rng).unwrap().expose_secret(),
        b"three"
    );
}

#[test]
fn session_without_one_time_prekey() {
    let mut rng = common::rng(2);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let before = bob_id.one_time_prekey_count();
    let bundle = bob_id.prekey_bundle(None);
    assert!(bundle.one_time_prekey.is_none());
    let mut alice = Session::initiate(&alice_id, &bundle, &mut rng).unwrap();
    let (mut bob, pt) =
        Session::accept(&mut bob_id, &alice.encrypt(b"hi").unwrap(), &mut rng).unwrap();
    assert_eq!(pt.expose_secret(), b"hi");
    assert_eq!(bob_id.one_time_prekey_count(), before);
    let r = bob.encrypt(b"yo").unwrap();
    assert_eq!(alice.decrypt(&r, &mut rng).unwrap().expose_secret(), b"yo");
}

#[test]
fn used_one_time_prekey_cannot_be_reused() {
    let mut rng = common::rng(3);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let carol_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let bundle = bob_id.prekey_bundle(Some(9));
    let mut alice = Session::initiate(&alice_id, &bundle, &mut rng).unwrap();
    let m = alice.encrypt(b"a").unwrap();
    Session::accept(&mut bob_id, &m, &mut rng).unwrap();
    assert!(bob_id.prekey_bundle(Some(9)).one_time_prekey.is_none());

    // Replaying the prekey message to start a second session fails cleanly (the replay
    // cache answers before the one-time prekey is even looked up).
    assert_eq!(
        Session::accept(&mut bob_id, &m, &mut rng).unwrap_err(),
        SessionError::Replayed
    );
    // Someone else handed the same (stale) bundle also fails cleanly.
    let mut carol = Session::initiate(&carol_id, &bundle, &mut rng).unwrap();
    assert_eq!(
        Session::accept(&mut bob_id, &carol.encrypt(b"c").unwrap(), &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::UnknownOneTimePrekey(9))
    );
}

#[test]
fn bad_bundle_signatures_are_rejected() {
    let mut rng = common::rng(4);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let bob_id = DeviceIdentity::generate(&mut rng, 0);
    let mallory_id = DeviceIdentity::generate(&mut rng, 0);
    let good = bob_id.prekey_bundle(Some(1));

    let mut b = good.clone();
    b.signed_prekey.signature[10] ^= 1;
    assert_eq!(
        Session::initiate(&alice_id, &b, &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::Identity(
            IdentityError::BadSignedPrekeySignature
        ))
    );
    let mut b = good.clone();
    b.pq_prekey = mallory_id.pq_prekey_public();
    assert_eq!(
        Session::initiate(&alice_id, &b, &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::Identity(IdentityError::BadPqPrekeySignature))
    );
    let mut b = good.clone();
    b.identity.dh_key = mallory_id.public_identity().dh_key;
    assert_eq!(
        Session::initiate(&alice_id, &b, &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::Identity(IdentityError::BadIdentitySignature))
    );
    // A prekey message whose sender identity binding is forged is rejected by the responder.
    let mut bob_id = bob_id;
    let mut alice = Session::initiate(&alice_id, &good, &mut rng).unwrap();
    let mut msg = E2eMessage::decode(alice.encrypt(b"x").unwrap().as_slice()).unwrap();
    let Some(Body::Prekey(p)) = msg.body.as_mut() else {
        panic!()
    };
    p.sender_identity_dh_key = mallory_id.public_identity().dh_key.to_vec().into();
    assert_eq!(
        Session::accept(&mut bob_id, &msg.encode_to_vec(), &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::Identity(IdentityError::BadIdentitySignature))
    );
}

#[test]
fn low_order_points_are_rejected() {
    let mut rng = common::rng(5);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    // A low-order one-time prekey in a bundle (not signed, so a server could substitute it).
    let mut b = bob_id.prekey_bundle(Some(1));
    if let Some(o) = b.one_time_prekey.as_mut() {
        o.public_key = [0u8; 32];
    }
    assert_eq!(
        Session::initiate(&alice_id, &b, &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::NonContributory)
    );
    // A low-order ephemeral key in a prekey message.
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(1)), &mut rng).unwrap();
    let wire = alice.encrypt(b"x").unwrap();
    let mut msg = E2eMessage::decode(wire.as_slice()).unwrap();
    let Some(Body::Prekey(p)) = msg.body.as_mut() else {
        panic!()
    };
    let mut one = [0u8; 32];
    one[0] = 1;
    p.ephemeral_key = one.to_vec().into();
    assert_eq!(
        Session::accept(&mut bob_id, &msg.encode_to_vec(), &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::NonContributory)
    );
    // A low-order ratchet key in an established session: rejected, session unharmed.
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    let wire = alice.encrypt(b"after").unwrap();
    let mut msg = E2eMessage::decode(wire.as_slice()).unwrap();
    let Some(Body::Ratchet(r)) = msg.body.as_mut() else {
        panic!()
    };
    r.ratchet_key = vec![0u8; 32].into();
    assert_eq!(
        bob.decrypt(&msg.encode_to_vec(), &mut rng).unwrap_err(),
        SessionError::InvalidRatchetKey
    );
    assert_eq!(
        bob.decrypt(&wire, &mut rng).unwrap().expose_secret(),
        b"after"
    );
}

#[test]
fn unknown_prekey_ids_and_malformed_input_fail_cleanly() {
    let mut rng = common::rng(6);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(None), &mut rng).unwrap();
    let wire = alice.encrypt(b"x").unwrap();
    for (field, expected) in [
        (0, SessionError::Setup(PqxdhError::UnknownSignedPrekey(77))),
        (1, SessionError::Setup(PqxdhError::UnknownPqPrekey(77))),
        (
            2,
            SessionError::Setup(PqxdhError::UnknownOneTimePrekey(999)),
        ),
        // An existing one-time prekey the initiator did not use: keys differ, so it fails.
        (3, SessionError::DecryptionFailed),
    ] {
        let mut msg = E2eMessage::decode(wire.as_slice()).unwrap();
        let Some(Body::Prekey(p)) = msg.body.as_mut() else {
            panic!()
        };
        match field {
            0 => p.signed_prekey_id = 77,
            1 => p.pq_prekey_id = 77,
            2 => p.one_time_prekey_id_plus_one = 1000,
            _ => p.one_time_prekey_id_plus_one = 77,
        }
        assert_eq!(
            Session::accept(&mut bob_id, &msg.encode_to_vec(), &mut rng).unwrap_err(),
            expected
        );
    }
    assert!(matches!(
        Session::accept(&mut bob_id, b"\xff\xff\xff", &mut rng).unwrap_err(),
        SessionError::Malformed(_)
    ));
    assert!(matches!(
        Session::accept(&mut bob_id, &[], &mut rng).unwrap_err(),
        SessionError::Malformed(_)
    ));
    let (_, mut a, _, mut b) = common::established(&mut rng);
    let ratchet_msg = a.encrypt(b"r").unwrap();
    assert_eq!(
        Session::accept(&mut bob_id, &ratchet_msg, &mut rng).unwrap_err(),
        SessionError::NotAPrekeyMessage
    );
    // A prekey message for some other session is not decrypted by this one.
    assert_eq!(
        b.decrypt(&wire, &mut rng).unwrap_err(),
        SessionError::NewSessionRequired
    );
    assert_eq!(
        b.decrypt(&ratchet_msg, &mut rng).unwrap().expose_secret(),
        b"r"
    );
}

#[test]
fn rotated_signed_prekey_still_accepts_in_flight_messages() {
    let mut rng = common::rng(7);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let old_bundle = bob_id.prekey_bundle(None);
    let mut alice = Session::initiate(&alice_id, &old_bundle, &mut rng).unwrap();
    let in_flight = alice.encrypt(b"sent before rotation").unwrap();
    bob_id.rotate_signed_prekey(&mut rng, 1_000).unwrap();
    bob_id.rotate_pq_prekey(&mut rng, 1_000).unwrap();
    let (_, pt) = Session::accept(&mut bob_id, &in_flight, &mut rng).unwrap();
    assert_eq!(pt.expose_secret(), b"sent before rotation");
    bob_id.prune_retired_prekeys(1_000 + medrelay_sdk::limits::RETIRED_PREKEY_GRACE_MS);
    let mut late = Session::initiate(&alice_id, &old_bundle, &mut rng).unwrap();
    assert_eq!(
        Session::accept(&mut bob_id, &late.encrypt(b"too late").unwrap(), &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::UnknownSignedPrekey(old_bundle.signed_prekey.id))
    );
}

#[test]
fn padded_content_travels_through_a_session() {
    use medrelay_sdk::content::Content;
    let mut rng = common::rng(8);
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    let c = Content {
        client_message_id: vec![1u8; 16].into(),
        conversation_id: vec![2u8; 16].into(),
        sent_at_ms: 1,
        text: "BP 120/80, follow up in 2 weeks".into(),
        padding: Default::default(),
    };
    let plain = content::encode_padded(&c, &mut rng);
    assert_eq!(plain.len() % 64, 0);
    let wire = alice.encrypt(plain.expose_secret()).unwrap();
    let got = content::decode(bob.decrypt(&wire, &mut rng).unwrap().expose_secret()).unwrap();
    assert_eq!(got.text, c.text);
}

#[test]
fn session_debug_shows_no_secret() {
    let mut rng = common::rng(9);
    let (alice_id, alice, _, _) = common::established(&mut rng);
    let dbg = format!("{alice:?} {alice:#?} {alice_id:?}");
    assert!(dbg.contains("<redacted>"));
    // No long hex run other than public keys: check the serialised state's secret-bearing
    // bytes do not appear, by checking every 16-byte window of the postcard encoding that
    // is not a public key.
    let public: Vec<String> = [
        hex::encode(alice.peer_identity().signing_key),
        hex::encode(alice.peer_identity().dh_key),
        hex::encode(alice_id.public_identity().signing_key),
        hex::encode(alice_id.public_identity().dh_key),
    ]
    .into();
    for token in dbg
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|t| t.len() >= 32)
    {
        assert!(
            public.iter().any(|p| p.contains(token)) || token.len() == 64,
            "unexpected hex in Debug: {token}"
        );
    }
}

#[test]
fn a_replayed_prekey_message_without_one_time_prekey_is_refused() {
    let mut rng = common::rng(21);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(None), &mut rng).unwrap();
    let first = alice.encrypt(b"an old message").unwrap();
    let second = alice.encrypt(b"the next one").unwrap();
    let (mut bob, _) = Session::accept(&mut bob_id, &first, &mut rng).unwrap();
    assert_eq!(bob_id.accepted_prekey_message_count(), 1);

    // The same bytes again, or a later message carrying the same prekey fields, cannot start
    // a second session: nothing about the signed or PQ prekey has changed, only the cache
    // stops it. The identity is unchanged by the refusal.
    for replay in [&first, &second] {
        let before = bob_id.accepted_prekey_message_count();
        assert_eq!(
            Session::accept(&mut bob_id, replay, &mut rng).unwrap_err(),
            SessionError::Replayed
        );
        assert_eq!(bob_id.accepted_prekey_message_count(), before);
    }
    // The live session still takes the later message (routed by digest, not by accept).
    assert_eq!(
        bob.decrypt(&second, &mut rng).unwrap().expose_secret(),
        b"the next one"
    );

    // A fresh session from the same peer to the same bundle is genuinely new: accepted.
    let mut again = Session::initiate(&alice_id, &bob_id.prekey_bundle(None), &mut rng).unwrap();
    Session::accept(&mut bob_id, &again.encrypt(b"new").unwrap(), &mut rng).unwrap();
    assert_eq!(bob_id.accepted_prekey_message_count(), 2);
}

#[test]
fn the_replay_cache_survives_persistence_and_ends_with_its_signed_prekey() {
    let mut rng = common::rng(22);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let old_bundle = bob_id.prekey_bundle(None);
    let mut alice = Session::initiate(&alice_id, &old_bundle, &mut rng).unwrap();
    let first = alice.encrypt(b"hi").unwrap();
    Session::accept(&mut bob_id, &first, &mut rng).unwrap();

    // Through a key store (what the client restarts from).
    let mut store = medrelay_sdk::MemoryKeyStore::new();
    medrelay_sdk::KeyStore::save_identity(&mut store, &bob_id).unwrap();
    let mut bob_id = medrelay_sdk::KeyStore::load_identity(&store)
        .unwrap()
        .unwrap();
    assert_eq!(
        Session::accept(&mut bob_id, &first, &mut rng).unwrap_err(),
        SessionError::Replayed
    );

    // Rotation keeps the entry (the old prekey is still held in its grace period) ...
    bob_id.rotate_signed_prekey(&mut rng, 1_000).unwrap();
    bob_id.rotate_pq_prekey(&mut rng, 1_000).unwrap();
    assert_eq!(bob_id.accepted_prekey_message_count(), 1);
    assert_eq!(
        Session::accept(&mut bob_id, &first, &mut rng).unwrap_err(),
        SessionError::Replayed
    );
    // ... pruning the prekey drops it, and the old message then fails on the prekey.
    bob_id.prune_retired_prekeys(1_000 + medrelay_sdk::limits::RETIRED_PREKEY_GRACE_MS);
    assert_eq!(bob_id.accepted_prekey_message_count(), 0);
    assert_eq!(
        Session::accept(&mut bob_id, &first, &mut rng).unwrap_err(),
        SessionError::Setup(PqxdhError::UnknownSignedPrekey(old_bundle.signed_prekey.id))
    );
}

#[test]
fn a_session_binds_its_peer_once_and_then_refuses_another() {
    let mut rng = common::rng(23);
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    let bob_addr = PeerAddress {
        user_id: [1; 16],
        device_id: [2; 16],
    };
    assert_eq!(alice.peer(), None);
    alice.bind_peer(bob_addr).unwrap();
    assert_eq!(alice.peer(), Some(&bob_addr));
    alice.bind_peer(bob_addr).unwrap();
    let relabelled = PeerAddress {
        user_id: [9; 16],
        ..bob_addr
    };
    assert_eq!(
        alice.bind_peer(relabelled).unwrap_err(),
        SessionError::PeerMismatch
    );
    assert_eq!(alice.peer(), Some(&bob_addr));

    // The binding is part of the persisted session.
    let mut store = medrelay_sdk::MemoryKeyStore::new();
    let dev = medrelay_sdk::DeviceId([2; 16]);
    medrelay_sdk::KeyStore::save_session(&mut store, &dev, &alice).unwrap();
    let mut alice = medrelay_sdk::KeyStore::load_session(&store, &dev)
        .unwrap()
        .unwrap();
    assert_eq!(alice.peer(), Some(&bob_addr));
    assert_eq!(
        alice.bind_peer(relabelled).unwrap_err(),
        SessionError::PeerMismatch
    );
    let m = alice.encrypt(b"still works").unwrap();
    assert_eq!(
        bob.decrypt(&m, &mut rng).unwrap().expose_secret(),
        b"still works"
    );
}
