//! Shared helpers for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use medrelay_sdk::{DeviceIdentity, Session};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A deterministic RNG for reproducible tests.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Alice initiates to Bob (with one-time prekey 1), Bob accepts Alice's first message, and
/// Bob replies once so both sides are past the handshake.
pub fn established(rng: &mut StdRng) -> (DeviceIdentity, Session, DeviceIdentity, Session) {
    let alice_id = DeviceIdentity::generate(rng, 0);
    let mut bob_id = DeviceIdentity::generate(rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(1)), rng).unwrap();
    let first = alice.encrypt(b"first").unwrap();
    let (mut bob, pt) = Session::accept(&mut bob_id, &first, rng).unwrap();
    assert_eq!(pt.expose_secret(), b"first");
    let reply = bob.encrypt(b"reply").unwrap();
    assert_eq!(
        alice.decrypt(&reply, rng).unwrap().expose_secret(),
        b"reply"
    );
    assert!(alice.is_acknowledged());
    (alice_id, alice, bob_id, bob)
}
