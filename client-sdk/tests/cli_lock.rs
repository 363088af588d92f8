//! The key-store lock across processes, through the real `medrelay-client` binary: while one
//! process has a profile open, a second fails at once with one clear line; once the first is
//! gone the profile opens again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use medrelay_sdk::{FileKeyStore, KdfParams};
use rand::rngs::OsRng;

const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

fn whoami(home: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medrelay-client"))
        .arg("--home")
        .arg(home)
        .arg("whoami")
        .env("MEDRELAY_PASSPHRASE", "pw")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn a_second_process_on_the_same_profile_fails_fast_with_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("keystore.mrks");
    let held = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();

    let started = Instant::now();
    let (ok, stderr) = whoami(home.path());
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "medrelay-client: another medrelay-client is using this profile ({}); wait for it to finish\n",
            home.path().display()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it must not wait"
    );

    // Released with the store: the next process gets past the lock (and fails later, on the
    // empty store, for another reason).
    drop(held);
    let (ok, stderr) = whoami(home.path());
    assert!(!ok);
    assert!(!stderr.contains("using this profile"), "{stderr}");
    assert!(stderr.contains("no enrolled device"), "{stderr}");
}
