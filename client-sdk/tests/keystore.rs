//! Key stores: the encrypted file store survives save, drop and reopen mid-conversation; a
//! wrong passphrase, a tampered file and a missing file each give their own clear error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use medrelay_sdk::{
    DeviceId, DeviceIdentity, FileKeyStore, KdfParams, KeyStore, KeyStoreError, MemoryKeyStore,
    Session,
};
use rand::rngs::{OsRng, StdRng};

/// Cheap Argon2id parameters so the tests stay fast; the format stores them in the header.
const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

const ALICE_DEV: DeviceId = DeviceId([0xa1; 16]);
const BOB_DEV: DeviceId = DeviceId([0xb0; 16]);

fn conversation_survives(
    mut store_a: Box<dyn KeyStore>,
    reopen: &mut dyn FnMut() -> Box<dyn KeyStore>,
    rng: &mut StdRng,
) {
    let alice_id = DeviceIdentity::generate(rng, 0);
    let mut bob_id = DeviceIdentity::generate(rng, 0);
    store_a.save_identity(&alice_id).unwrap();
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(2)), rng).unwrap();
    let first = alice.encrypt(b"first").unwrap();
    store_a.save_session(&BOB_DEV, &alice).unwrap();
    store_a
        .save_profile(b"{\"server\":\"clinic.example\"}")
        .unwrap();
    let (mut bob, _) = Session::accept(&mut bob_id, &first, rng).unwrap();
    let reply = bob.encrypt(b"reply").unwrap();
    drop(alice);
    // Closed before reopening: a file store is one process's at a time.
    drop(store_a);

    let mut store_b = reopen();
    let alice_id2 = store_b.load_identity().unwrap().unwrap();
    assert_eq!(alice_id2.public_identity(), alice_id.public_identity());
    assert_eq!(store_b.session_peers().unwrap(), vec![BOB_DEV]);
    assert_eq!(
        store_b.load_profile().unwrap().unwrap().expose_secret(),
        b"{\"server\":\"clinic.example\"}"
    );
    let mut alice = store_b.load_session(&BOB_DEV).unwrap().unwrap();
    assert_eq!(
        alice.decrypt(&reply, rng).unwrap().expose_secret(),
        b"reply"
    );
    let next = alice.encrypt(b"next").unwrap();
    store_b.save_session(&BOB_DEV, &alice).unwrap();
    assert_eq!(bob.decrypt(&next, rng).unwrap().expose_secret(), b"next");
    assert!(store_b.delete_session(&BOB_DEV).unwrap());
    assert!(!store_b.delete_session(&BOB_DEV).unwrap());
    assert!(store_b.load_session(&ALICE_DEV).unwrap().is_none());
}

#[test]
fn file_store_survives_save_drop_reopen_and_the_conversation_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut rng = common::rng(1);
    let store = FileKeyStore::create_with_params(&path, b"correct horse", TEST_KDF, OsRng).unwrap();
    let p = path.clone();
    conversation_survives(
        Box::new(store),
        &mut || Box::new(FileKeyStore::open(&p, b"correct horse", OsRng).unwrap()),
        &mut rng,
    );
    // Nothing but the store and its lock file is left in the directory (temp files renamed
    // away).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            std::ffi::OsString::from("device.mrks"),
            std::ffi::OsString::from("device.mrks.lock")
        ]
    );
}

#[test]
fn memory_store_behaves_the_same() {
    let mut rng = common::rng(2);
    let shared = std::rc::Rc::new(std::cell::RefCell::new(MemoryKeyStore::new()));
    let writer = MemoryStoreHandle(shared.clone());
    conversation_survives(
        Box::new(writer),
        &mut || Box::new(shared.borrow().clone()),
        &mut rng,
    );
}

struct MemoryStoreHandle(std::rc::Rc<std::cell::RefCell<MemoryKeyStore>>);

impl KeyStore for MemoryStoreHandle {
    fn load_identity(&self) -> Result<Option<DeviceIdentity>, KeyStoreError> {
        self.0.borrow().load_identity()
    }
    fn save_identity(&mut self, identity: &DeviceIdentity) -> Result<(), KeyStoreError> {
        self.0.borrow_mut().save_identity(identity)
    }
    fn load_session(&self, peer: &DeviceId) -> Result<Option<Session>, KeyStoreError> {
        self.0.borrow().load_session(peer)
    }
    fn save_session(&mut self, peer: &DeviceId, session: &Session) -> Result<(), KeyStoreError> {
        self.0.borrow_mut().save_session(peer, session)
    }
    fn delete_session(&mut self, peer: &DeviceId) -> Result<bool, KeyStoreError> {
        self.0.borrow_mut().delete_session(peer)
    }
    fn session_peers(&self) -> Result<Vec<DeviceId>, KeyStoreError> {
        self.0.borrow().session_peers()
    }
    fn load_profile(&self) -> Result<Option<medrelay_sdk::SecretBytes>, KeyStoreError> {
        self.0.borrow().load_profile()
    }
    fn save_profile(&mut self, profile: &[u8]) -> Result<(), KeyStoreError> {
        self.0.borrow_mut().save_profile(profile)
    }
}

#[test]
fn wrong_passphrase_tampering_and_missing_file_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut rng = common::rng(3);
    let mut store = FileKeyStore::create_with_params(&path, b"right", TEST_KDF, OsRng).unwrap();
    store
        .save_identity(&DeviceIdentity::generate(&mut rng, 0))
        .unwrap();
    drop(store);

    assert!(matches!(
        FileKeyStore::open(&path, b"wrong", OsRng).unwrap_err(),
        KeyStoreError::WrongPassphraseOrCorrupt
    ));
    let good = std::fs::read(&path).unwrap();
    // Flip one bit in the ciphertext, in the salt, in the KDF parameters, in the generation
    // and in the nonce.
    for offset in [good.len() - 1, good.len() / 2, 20, 9, 41, 45] {
        let mut bad = good.clone();
        bad[offset] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let err = FileKeyStore::open(&path, b"right", OsRng).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::WrongPassphraseOrCorrupt),
            "offset {offset}: {err:?}"
        );
    }
    let mut bad = good.clone();
    bad[0] = b'X';
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        FileKeyStore::open(&path, b"right", OsRng).unwrap_err(),
        KeyStoreError::NotAKeyStore
    ));
    let mut bad = good.clone();
    bad[4] = 9;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        FileKeyStore::open(&path, b"right", OsRng).unwrap_err(),
        KeyStoreError::UnsupportedVersion(9)
    ));
    // A header claiming absurd memory is refused before allocating.
    let mut bad = good.clone();
    bad[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        FileKeyStore::open(&path, b"right", OsRng).unwrap_err(),
        KeyStoreError::InvalidKdfParams
    ));
    std::fs::write(&path, &good[..30]).unwrap();
    assert!(matches!(
        FileKeyStore::open(&path, b"right", OsRng).unwrap_err(),
        KeyStoreError::NotAKeyStore
    ));

    std::fs::write(&path, &good).unwrap();
    assert!(FileKeyStore::open(&path, b"right", OsRng)
        .unwrap()
        .load_identity()
        .unwrap()
        .is_some());
    assert!(matches!(
        FileKeyStore::create_with_params(&path, b"right", TEST_KDF, OsRng).unwrap_err(),
        KeyStoreError::AlreadyExists
    ));
    assert!(matches!(
        FileKeyStore::open(dir.path().join("missing"), b"right", OsRng).unwrap_err(),
        KeyStoreError::NotFound
    ));
}

#[test]
fn owasp_params_by_default_in_the_header_and_changeable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut store = FileKeyStore::create(&path, b"pw", OsRng).unwrap();
    assert_eq!(store.kdf_params(), KdfParams::OWASP);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..6], b"MRKS\x03\x01");
    assert_eq!(&bytes[6..10], &19_456u32.to_be_bytes());
    assert_eq!(&bytes[10..14], &2u32.to_be_bytes());
    assert_eq!(&bytes[14..18], &1u32.to_be_bytes());
    store.save_profile(b"p").unwrap();
    store.change_passphrase(b"new pw", TEST_KDF).unwrap();
    drop(store);
    assert!(matches!(
        FileKeyStore::open(&path, b"pw", OsRng).unwrap_err(),
        KeyStoreError::WrongPassphraseOrCorrupt
    ));
    let store = FileKeyStore::open(&path, b"new pw", OsRng).unwrap();
    assert_eq!(store.kdf_params(), TEST_KDF);
    assert_eq!(store.load_profile().unwrap().unwrap().expose_secret(), b"p");
}

#[cfg(unix)]
#[test]
fn file_mode_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut store = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();
    store.save_profile(b"x").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let lock = dir.path().join("device.mrks.lock");
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn debug_of_an_open_store_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut rng = common::rng(4);
    let mut store = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();
    store.save_profile(b"SECRET-PROFILE-CONTENT").unwrap();
    store
        .save_identity(&DeviceIdentity::generate(&mut rng, 0))
        .unwrap();
    let dbg = format!("{store:?}");
    assert!(!dbg.contains("SECRET-PROFILE-CONTENT"));
    assert!(!dbg.contains(&hex::encode(b"SECRET-PROFILE-CONTENT")));
    assert!(dbg.contains("AeadKey(<redacted>)"));
    assert!(dbg.contains("SecretBytes(<redacted>)"));
}

#[test]
fn apply_saves_identity_sessions_and_profile_in_one_write() {
    let mut rng = common::rng(41);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.mrks");
    let (alice_id, alice, _bob_id, bob) = common::established(&mut rng);
    let mut store = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();
    store.save_session(&ALICE_DEV, &bob).unwrap();
    let aside = [bob.clone()];
    store
        .apply(&medrelay_sdk::StoreUpdate {
            identity: Some(&alice_id),
            sessions: vec![(BOB_DEV, &alice)],
            deleted_sessions: vec![ALICE_DEV],
            archived_sessions: vec![(BOB_DEV, &aside)],
            profile: Some(b"profile-v2"),
        })
        .unwrap();
    drop(store);
    let mut reopened = FileKeyStore::open(&path, b"pw", OsRng).unwrap();
    assert_eq!(reopened.session_peers().unwrap(), vec![BOB_DEV]);
    assert_eq!(reopened.load_archived_sessions(&BOB_DEV).unwrap().len(), 1);
    // Deleting a peer's session deletes its archived ones too.
    assert!(reopened.delete_session(&BOB_DEV).unwrap());
    assert!(reopened
        .load_archived_sessions(&BOB_DEV)
        .unwrap()
        .is_empty());
    drop(reopened);
    let reopened = FileKeyStore::open(&path, b"pw", OsRng).unwrap();
    assert!(reopened
        .load_archived_sessions(&BOB_DEV)
        .unwrap()
        .is_empty());
    assert!(reopened.session_peers().unwrap().is_empty());
    assert!(reopened.load_identity().unwrap().is_some());
    assert_eq!(
        reopened.load_profile().unwrap().unwrap().expose_secret(),
        b"profile-v2"
    );
    drop(reopened);
    let mut memory = MemoryKeyStore::new();
    memory
        .apply(&medrelay_sdk::StoreUpdate {
            sessions: vec![(BOB_DEV, &alice)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(memory.session_peers().unwrap(), vec![BOB_DEV]);
}

#[test]
fn a_second_open_fails_fast_with_in_use_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut first = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();
    first.save_profile(b"one").unwrap();
    // While the first is open, neither another open nor a create gets in (both before the
    // passphrase is even tried).
    for passphrase in [&b"pw"[..], b"wrong"] {
        assert!(matches!(
            FileKeyStore::open(&path, passphrase, OsRng).unwrap_err(),
            KeyStoreError::InUse
        ));
    }
    assert!(matches!(
        FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap_err(),
        KeyStoreError::InUse
    ));
    assert_eq!(
        KeyStoreError::InUse.to_string(),
        "another medrelay-client is using this profile; wait for it to finish"
    );
    first.save_profile(b"two").unwrap();
    drop(first);
    let second = FileKeyStore::open(&path, b"pw", OsRng).unwrap();
    assert_eq!(
        second.load_profile().unwrap().unwrap().expose_secret(),
        b"two"
    );
}

#[test]
fn a_write_is_refused_when_the_file_on_disk_is_not_the_one_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let mut store = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();
    assert_eq!(store.generation(), 1);
    store.save_profile(b"v2").unwrap();
    assert_eq!(store.generation(), 2);
    let older = std::fs::read(&path).unwrap();
    assert_eq!(&older[34..42], &2u64.to_be_bytes());
    store.save_profile(b"v3").unwrap();

    // Another writer without the lock (a lock-less filesystem): a copy opened elsewhere,
    // advanced, and put back in place.
    let other_path = dir.path().join("copy.mrks");
    std::fs::copy(&path, &other_path).unwrap();
    let mut other = FileKeyStore::open(&other_path, b"pw", OsRng).unwrap();
    other.save_profile(b"other").unwrap();
    assert_eq!(other.generation(), 4);
    drop(other);
    let newer = std::fs::read(&other_path).unwrap();
    std::fs::write(&path, &newer).unwrap();
    let err = store.save_profile(b"v4").unwrap_err();
    assert!(
        matches!(
            err,
            KeyStoreError::ChangedOnDisk {
                on_disk: 4,
                loaded: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), newer, "nothing was written");
    // The in-memory state did not take the refused change either.
    assert_eq!(
        store.load_profile().unwrap().unwrap().expose_secret(),
        b"v3"
    );

    // An older file restored underneath is refused too.
    std::fs::write(&path, &older).unwrap();
    assert!(matches!(
        store.save_profile(b"v4").unwrap_err(),
        KeyStoreError::ChangedOnDisk {
            on_disk: 2,
            loaded: 3
        }
    ));
    // A deleted one as well.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        store.save_profile(b"v4").unwrap_err(),
        KeyStoreError::ChangedOnDisk { on_disk: 0, .. }
    ));
    drop(store);

    // Reopening takes whatever is there now and goes on from its generation.
    std::fs::write(&path, &newer).unwrap();
    let mut reopened = FileKeyStore::open(&path, b"pw", OsRng).unwrap();
    assert_eq!(reopened.generation(), 4);
    reopened.save_profile(b"v5").unwrap();
    assert_eq!(reopened.generation(), 5);
}

#[test]
fn format_1_files_are_refused_with_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.mrks");
    let store = FileKeyStore::create_with_params(&path, b"pw", TEST_KDF, OsRng).unwrap();
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4] = 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FileKeyStore::open(&path, b"pw", OsRng).unwrap_err(),
        KeyStoreError::UnsupportedVersion(1)
    ));
}
