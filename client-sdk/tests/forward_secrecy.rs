//! Forward secrecy and post-compromise security, tested with snapshots of a party's state (a
//! clone, and a serialised copy as an attacker would read from disk).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use medrelay_sdk::{Session, SessionError};

fn snapshot(s: &Session) -> Session {
    postcard::from_bytes(&postcard::to_allocvec(s).unwrap()).unwrap()
}

#[test]
fn a_snapshot_after_decryption_cannot_decrypt_the_message_again() {
    let mut rng = common::rng(1);
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    let m1 = alice.encrypt(b"m1").unwrap();
    let m2 = alice.encrypt(b"m2").unwrap();
    let m3 = alice.encrypt(b"m3").unwrap();
    // m3 first: m2's key is stored as skipped; then m1 and m2 use up their keys.
    assert_eq!(bob.decrypt(&m3, &mut rng).unwrap().expose_secret(), b"m3");
    assert_eq!(bob.decrypt(&m1, &mut rng).unwrap().expose_secret(), b"m1");
    assert_eq!(bob.decrypt(&m2, &mut rng).unwrap().expose_secret(), b"m2");
    for mut stolen in [bob.clone(), snapshot(&bob)] {
        for m in [&m1, &m2, &m3] {
            assert_eq!(
                stolen.decrypt(m, &mut rng).unwrap_err(),
                SessionError::DecryptionFailed
            );
        }
    }
    // A snapshot from before m2 was read could read it: the test can fail.
}

#[test]
fn a_snapshot_before_decryption_can_read_the_message_so_the_test_above_is_meaningful() {
    let mut rng = common::rng(2);
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    let m = alice.encrypt(b"m").unwrap();
    let mut early = snapshot(&bob);
    bob.decrypt(&m, &mut rng).unwrap();
    assert_eq!(early.decrypt(&m, &mut rng).unwrap().expose_secret(), b"m");
}

#[test]
fn a_snapshot_before_a_dh_round_trip_cannot_decrypt_later_messages() {
    let mut rng = common::rng(3);
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    // The attacker copies Bob's whole state.
    let mut stolen = snapshot(&bob);

    // A round trip: Alice -> Bob (Bob ratchets with fresh randomness), Bob -> Alice
    // (Alice ratchets), then Alice sends on a chain the attacker cannot derive.
    let a1 = alice.encrypt(b"a1").unwrap();
    // The attacker sees everything and processes what it can (it can read a1: its chain
    // comes from a DH with Alice's key the snapshot already knows).
    assert_eq!(bob.decrypt(&a1, &mut rng).unwrap().expose_secret(), b"a1");
    assert_eq!(
        stolen.decrypt(&a1, &mut rng).unwrap().expose_secret(),
        b"a1"
    );
    let b1 = bob.encrypt(b"b1").unwrap();
    assert_eq!(alice.decrypt(&b1, &mut rng).unwrap().expose_secret(), b"b1");
    let a2 = alice.encrypt(b"after healing").unwrap();
    assert_eq!(
        bob.decrypt(&a2, &mut rng).unwrap().expose_secret(),
        b"after healing"
    );

    // Bob's new ratchet secret was not in the snapshot: a2 is out of reach, whether the
    // attacker's copy has seen a1 or not.
    assert_eq!(
        stolen.decrypt(&a2, &mut rng).unwrap_err(),
        SessionError::DecryptionFailed
    );
    let mut stolen_fresh = snapshot(&stolen);
    assert_eq!(
        stolen_fresh.decrypt(&a2, &mut rng).unwrap_err(),
        SessionError::DecryptionFailed
    );
}
