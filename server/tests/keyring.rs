//! Proves: a data directory whose keyring is lost is refused at open, naming the fix, and left
//! as it was (no empty keyring is created in its place, which would make every record
//! unreadable and let the sweeper treat them as shredded).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use medrelay_server::datadir::DataDir;
use medrelay_server::store::records::{OrgPolicy, OrgRecord};
use medrelay_server::store::sled_store::SledStore;
use medrelay_server::store::Store;

#[tokio::test]
async fn a_lost_keyring_is_refused_and_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let org = OrgRecord {
        id: medrelay_proto::OrgId::from([5; 16]),
        name: "Clinic".to_owned(),
        created_ms: 1,
        policy: OrgPolicy {
            idle_timeout_ms: 900_000,
            session_lifetime_ms: 43_200_000,
            allow_lists: Default::default(),
            consent_text: None,
        },
    };
    {
        let store = SledStore::open(&data.db(), Arc::new(data.open_keyring().unwrap())).unwrap();
        store.put_org(&org).unwrap();
        store.mark_initialised(&org.id).unwrap();
        store.sync().await.unwrap();
    }
    // The store keeps its database open for the runtime's life (its flusher holds it), so
    // reopen from a copy.
    let copy = tempfile::tempdir().unwrap();
    let copy_data = DataDir::new(copy.path());
    copy_tree(dir.path(), copy.path());
    std::fs::remove_file(copy_data.keyring()).unwrap();
    let error = SledStore::open(&copy_data.db(), Arc::new(copy_data.open_keyring().unwrap()))
        .expect_err("a sealed database without its keyring is refused");
    assert!(error.to_string().contains("restore the keyring"), "{error}");
    assert!(
        !copy_data.keyring().exists(),
        "no empty keyring left behind"
    );
    assert!(
        copy_data.master_key().exists(),
        "the master key is untouched"
    );

    // With the keyring in place (a fresh copy: the refused open still holds the first), it
    // opens and reads.
    let again = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), again.path());
    let again = DataDir::new(again.path());
    let store = SledStore::open(&again.db(), Arc::new(again.open_keyring().unwrap())).unwrap();
    assert_eq!(store.org(&org.id).unwrap(), Some(org));
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
