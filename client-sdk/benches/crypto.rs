//! Criterion benchmarks of the crypto core: encrypt + decrypt through established sessions at
//! 64 B, 1 KiB and 16 KiB, and session setup (PQXDH initiate + accept of the first message).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use medrelay_sdk::{DeviceIdentity, Session};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn established(rng: &mut StdRng) -> (Session, Session) {
    let alice_id = DeviceIdentity::generate(rng, 0);
    let mut bob_id = DeviceIdentity::generate(rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(1)), rng).unwrap();
    let (mut bob, _) = Session::accept(&mut bob_id, &alice.encrypt(b"hi").unwrap(), rng).unwrap();
    alice.decrypt(&bob.encrypt(b"ack").unwrap(), rng).unwrap();
    (alice, bob)
}

fn encrypt_decrypt(c: &mut Criterion) {
    let mut group = c.benchmark_group("encrypt_decrypt");
    let mut rng = StdRng::seed_from_u64(1);
    for size in [64usize, 1024, 16 * 1024] {
        let (mut alice, mut bob) = established(&mut rng);
        let plaintext = vec![0x42u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &plaintext, |b, pt| {
            b.iter(|| {
                let wire = alice.encrypt(pt).unwrap();
                bob.decrypt(&wire, &mut rng).unwrap()
            })
        });
    }
    group.finish();
}

fn ratchet_round_trip(c: &mut Criterion) {
    // One message each way: every message starts a new DH ratchet step (2 X25519 agreements +
    // 1 key generation on each receive).
    let mut rng = StdRng::seed_from_u64(2);
    let (mut alice, mut bob) = established(&mut rng);
    let pt = vec![0x42u8; 1024];
    c.bench_function("ping_pong_1KiB_with_dh_ratchet", |b| {
        b.iter(|| {
            let w = alice.encrypt(&pt).unwrap();
            bob.decrypt(&w, &mut rng).unwrap();
            let w = bob.encrypt(&pt).unwrap();
            alice.decrypt(&w, &mut rng).unwrap()
        })
    });
}

fn session_setup(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let bob_id = DeviceIdentity::generate(&mut rng, 0);
    c.bench_function("session_setup_initiate_accept", |b| {
        b.iter_batched(
            || bob_id.clone(),
            |mut bob_id| {
                let bundle = bob_id.prekey_bundle(Some(1));
                let mut alice = Session::initiate(&alice_id, &bundle, &mut rng).unwrap();
                let first = alice.encrypt(b"hello").unwrap();
                Session::accept(&mut bob_id, &first, &mut rng).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, encrypt_decrypt, ratchet_round_trip, session_setup);
criterion_main!(benches);
