//! Property tests of the Double Ratchet through `Session`: random interleavings of sends in
//! both directions with drops, duplicates, reordering and bit flips; plus the skip window.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use medrelay_sdk::limits::MAX_SKIP;
use medrelay_sdk::primitives::{SharedSecret, X25519KeyPair};
use medrelay_sdk::ratchet::Ratchet;
use medrelay_sdk::{DeviceIdentity, RatchetError, Session, SessionError};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::RngCore;

#[derive(Debug, Clone)]
enum Op {
    Send {
        from_alice: bool,
        len: usize,
    },
    Deliver {
        to_alice: bool,
        pick: usize,
    },
    Drop {
        to_alice: bool,
        pick: usize,
    },
    Replay {
        to_alice: bool,
        pick: usize,
    },
    Tamper {
        to_alice: bool,
        pick: usize,
        bit: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..200).prop_map(|(from_alice, len)| Op::Send { from_alice, len }),
        4 => (any::<bool>(), any::<usize>()).prop_map(|(to_alice, pick)| Op::Deliver { to_alice, pick }),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(to_alice, pick)| Op::Drop { to_alice, pick }),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(to_alice, pick)| Op::Replay { to_alice, pick }),
        1 => (any::<bool>(), any::<usize>(), any::<usize>())
            .prop_map(|(to_alice, pick, bit)| Op::Tamper { to_alice, pick, bit }),
    ]
}

struct InFlight {
    wire: Vec<u8>,
    plaintext: Vec<u8>,
}

/// Alice initiates; Bob accepts the first message; nobody has replied yet, so Alice keeps
/// sending prekey messages until one of Bob's arrives.
fn fresh_pair(rng: &mut StdRng) -> (Session, Session) {
    let alice_id = DeviceIdentity::generate(rng, 0);
    let mut bob_id = DeviceIdentity::generate(rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(1)), rng).unwrap();
    let (bob, _) = Session::accept(&mut bob_id, &alice.encrypt(b"hello").unwrap(), rng).unwrap();
    (alice, bob)
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut t = bytes.to_vec();
    let bit = bit % (t.len() * 8);
    t[bit / 8] ^= 1 << (bit % 8);
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_decrypt_exactly_once(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..80)) {
        let mut rng = common::rng(seed);
        let (mut alice, mut bob) = fresh_pair(&mut rng);
        // queues[0]: to Alice, queues[1]: to Bob.
        let mut queues: [Vec<InFlight>; 2] = [Vec::new(), Vec::new()];
        let mut delivered: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        let mut counter = 0u64;

        for op in ops {
            match op {
                Op::Send { from_alice, len } => {
                    counter += 1;
                    let mut plaintext = counter.to_be_bytes().to_vec();
                    let mut pad = vec![0u8; len];
                    rng.fill_bytes(&mut pad);
                    plaintext.extend(pad);
                    let (sender, to) = if from_alice { (&mut alice, 1) } else { (&mut bob, 0) };
                    let wire = sender.encrypt(&plaintext).unwrap();
                    queues[to].push(InFlight { wire, plaintext });
                }
                Op::Deliver { to_alice, pick } => {
                    let (receiver, q) = if to_alice { (&mut alice, 0) } else { (&mut bob, 1) };
                    if queues[q].is_empty() { continue; }
                    let m = queues[q].remove(pick % queues[q].len());
                    let got = receiver.decrypt(&m.wire, &mut rng);
                    prop_assert_eq!(got.unwrap().expose_secret().to_vec(), m.plaintext.as_slice());
                    delivered[q].push(m.wire);
                }
                Op::Drop { to_alice, pick } => {
                    let q = usize::from(!to_alice);
                    if !queues[q].is_empty() {
                        let i = pick % queues[q].len();
                        queues[q].remove(i);
                    }
                }
                Op::Replay { to_alice, pick } => {
                    let (receiver, q) = if to_alice { (&mut alice, 0) } else { (&mut bob, 1) };
                    if delivered[q].is_empty() { continue; }
                    let wire = &delivered[q][pick % delivered[q].len()];
                    prop_assert_eq!(receiver.decrypt(wire, &mut rng).unwrap_err(), SessionError::DecryptionFailed);
                }
                Op::Tamper { to_alice, pick, bit } => {
                    let (receiver, q) = if to_alice { (&mut alice, 0) } else { (&mut bob, 1) };
                    if queues[q].is_empty() { continue; }
                    let m = &queues[q][pick % queues[q].len()];
                    let tampered = flip(&m.wire, bit);
                    prop_assert!(receiver.decrypt(&tampered, &mut rng).is_err());
                    // The genuine message stays in flight and must still decrypt later.
                }
            }
        }
        // Everything not dropped arrives (newest first, to reorder once more), exactly once.
        for (q, receiver) in [(0usize, &mut alice), (1usize, &mut bob)] {
            while let Some(m) = queues[q].pop() {
                prop_assert_eq!(receiver.decrypt(&m.wire, &mut rng).unwrap().expose_secret().to_vec(), m.plaintext.as_slice());
                delivered[q].push(m.wire);
            }
            for wire in &delivered[q] {
                prop_assert!(receiver.decrypt(wire, &mut rng).is_err());
            }
        }
        // And the sessions still work both ways.
        let w = alice.encrypt(b"still here").unwrap();
        prop_assert_eq!(bob.decrypt(&w, &mut rng).unwrap().expose_secret().to_vec(), b"still here");
        let w = bob.encrypt(b"me too").unwrap();
        prop_assert_eq!(alice.decrypt(&w, &mut rng).unwrap().expose_secret().to_vec(), b"me too");
    }

    #[test]
    fn any_bit_flip_in_header_body_or_ad_is_rejected(seed in any::<u64>(), bit in any::<usize>(), part in 0u8..5) {
        let mut rng = common::rng(seed);
        let sk = SharedSecret::from_bytes([seed as u8; 32]);
        let bob_spk = X25519KeyPair::generate(&mut rng);
        let mut alice = Ratchet::new_initiator(&sk, bob_spk.public_key(), &mut rng).unwrap();
        let mut bob = Ratchet::new_responder(&sk, bob_spk);
        let ad = vec![0x5a; 128];
        let (_, _) = alice.encrypt(b"warm-up", &ad).unwrap();
        let (header, ct) = alice.encrypt(b"payload", &ad).unwrap();

        let (mut h, mut c, mut a) = (header, ct.clone(), ad.clone());
        match part {
            0 => { let f = flip(&h.ratchet_key, bit); h.ratchet_key.copy_from_slice(&f); }
            1 => h.previous_chain_length ^= 1 << (bit % 32),
            2 => h.counter ^= 1 << (bit % 32),
            3 => c = flip(&c, bit),
            _ => a = flip(&a, bit),
        }
        let err = bob.decrypt(&h, &c, &a, &mut rng).unwrap_err();
        prop_assert!(matches!(err, RatchetError::DecryptionFailed | RatchetError::TooFarAhead | RatchetError::InvalidRatchetKey), "{:?}", err);
        // Untouched: the genuine message (sent second) still decrypts, then the first.
        prop_assert_eq!(bob.decrypt(&header, &ct, &ad, &mut rng).unwrap().expose_secret().to_vec(), b"payload");
    }

    #[test]
    fn any_bit_flip_in_the_first_prekey_message_is_rejected(seed in any::<u64>(), bit in any::<usize>()) {
        let mut rng = common::rng(seed % 4);
        let alice_id = DeviceIdentity::generate(&mut rng, 0);
        let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
        let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(3)), &mut rng).unwrap();
        let wire = alice.encrypt(b"first").unwrap();
        let before = bob_id.one_time_prekey_count();
        prop_assert!(Session::accept(&mut bob_id, &flip(&wire, bit), &mut rng).is_err());
        prop_assert_eq!(bob_id.one_time_prekey_count(), before);
        let (_, pt) = Session::accept(&mut bob_id, &wire, &mut rng).unwrap();
        prop_assert_eq!(pt.expose_secret(), b"first");
    }
}

#[test]
fn beyond_the_skip_window_is_rejected_clearly_and_the_session_goes_on() {
    let mut rng = common::rng(99);
    let (_, mut alice, _, mut bob) = common::established(&mut rng);
    let msgs: Vec<Vec<u8>> = (0..=MAX_SKIP + 1)
        .map(|i| alice.encrypt(&i.to_be_bytes()).unwrap())
        .collect();
    let last = msgs.last().unwrap();
    assert_eq!(
        bob.decrypt(last, &mut rng).unwrap_err(),
        SessionError::TooFarAhead
    );
    // Exactly MAX_SKIP ahead is inside the window.
    let edge = &msgs[MAX_SKIP as usize];
    assert_eq!(
        bob.decrypt(edge, &mut rng).unwrap().expose_secret(),
        MAX_SKIP.to_be_bytes()
    );
    assert_eq!(
        bob.decrypt(last, &mut rng).unwrap().expose_secret(),
        (MAX_SKIP + 1).to_be_bytes()
    );
    for (i, m) in msgs.iter().enumerate().take(MAX_SKIP as usize).rev() {
        assert_eq!(
            bob.decrypt(m, &mut rng).unwrap().expose_secret(),
            (i as u32).to_be_bytes()
        );
    }
    let w = bob.encrypt(b"ok").unwrap();
    assert_eq!(alice.decrypt(&w, &mut rng).unwrap().expose_secret(), b"ok");
}
