//! Proves: every decision lands in a hash-chained access log sealed by signed checkpoints;
//! `medrelay audit verify` (offline) passes on the real log and, on a copy of the database,
//! names the first entry that was changed, deleted or reordered, and catches a truncated log
//! through its checkpoint; the export filters and never holds handles.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use medrelay_proto::{ClientRequest, Handle, OpenConversation};
use medrelay_server::access_log::{decode_row, encode_row};
use medrelay_tests::{binary, now_ms, RawClinic, Server};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs `medrelay audit verify` on `data`: (success, JSON printed).
fn verify(data: &Path) -> (bool, serde_json::Value) {
    let out = Command::new(binary("medrelay"))
        .args(["audit", "verify", "--data"])
        .arg(data)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json)
}

/// The access log's stored rows: each row's key and its sealed entries with their numbers.
/// Tampering works on entries inside rows, as an attacker with the disk would.
struct Rows(Vec<(Vec<u8>, Vec<Numbered>)>);

/// One sealed entry and its number.
type Numbered = (u64, Vec<u8>);

impl Rows {
    fn read(tree: &sled::Tree) -> Rows {
        Rows(
            tree.iter()
                .map(|item| {
                    let (key, value) = item.unwrap();
                    (key.to_vec(), decode_row(&key, &value).unwrap())
                })
                .collect(),
        )
    }

    fn write(self, tree: &sled::Tree) {
        tree.clear().unwrap();
        for (key, entries) in self.0 {
            if !entries.is_empty() {
                let sealed: Vec<Vec<u8>> = entries.into_iter().map(|(_, s)| s).collect();
                tree.insert(key, encode_row(&sealed)).unwrap();
            }
        }
    }

    fn entry(&mut self, seq: u64) -> &mut Vec<u8> {
        self.0
            .iter_mut()
            .flat_map(|(_, entries)| entries.iter_mut())
            .find(|(s, _)| *s == seq)
            .map(|(_, sealed)| sealed)
            .unwrap()
    }

    fn remove(&mut self, seq: u64) {
        for (_, entries) in &mut self.0 {
            entries.retain(|(s, _)| *s != seq);
        }
    }
}

/// A copy of the data directory with its access log changed by `tamper`.
fn tampered(
    original: &Path,
    scratch: &Path,
    name: &str,
    tamper: impl FnOnce(&mut Rows),
) -> PathBuf {
    let copy = scratch.join(name);
    copy_dir(original, &copy);
    let db = sled::open(copy.join("db")).unwrap();
    let tree = db.open_tree("access_log").unwrap();
    let mut rows = Rows::read(&tree);
    tamper(&mut rows);
    rows.write(&tree);
    db.flush().unwrap();
    drop(db);
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_verifies_and_any_tampering_is_named() {
    let mut server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    for _ in 0..3 {
        clinic
            .patient
            .conn
            .request(ClientRequest::OpenConversation(OpenConversation {
                handles: vec![Handle::new("dr.lee").unwrap()],
            }))
            .await
            .unwrap();
    }
    drop(clinic);
    assert!(server.terminate().unwrap().success());
    let data = server.data();

    let (ok, report) = verify(&data);
    assert!(ok, "{report}");
    let entries = report["entries"].as_u64().unwrap();
    assert!(entries >= 15, "{report}");
    assert_eq!(report["unsealed"], 0, "shutdown seals the log: {report}");

    // The export filters, and holds pseudonymous ids only.
    let export = Command::new(binary("medrelay"))
        .args(["audit", "export", "--action", "login", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "admin and staff logged in once each: {text}"
    );
    assert!(lines
        .iter()
        .all(|l| l["action"] == "login" && l["outcome"] == "allowed"));
    let everything = Command::new(binary("medrelay"))
        .args(["audit", "export", "--format", "csv", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let csv = String::from_utf8(everything.stdout).unwrap();
    assert_eq!(csv.lines().count() as u64, entries + 1);
    for handle in ["alice", "dr.lee"] {
        assert!(!csv.contains(handle), "the access log names {handle}");
    }

    let scratch = tempfile::tempdir().unwrap();
    // One byte of entry 5 changed.
    let changed = tampered(&data, scratch.path(), "changed", |log| {
        let value = log.entry(5);
        let middle = value.len() / 2;
        value[middle] ^= 0x01;
    });
    let (ok, report) = verify(&changed);
    assert!(!ok);
    assert_eq!(report["entry"], 5, "{report}");

    // Entry 7 deleted.
    let deleted = tampered(&data, scratch.path(), "deleted", |log| log.remove(7));
    let (ok, report) = verify(&deleted);
    assert!(!ok);
    assert_eq!(report["entry"], 7, "{report}");

    // Entries 3 and 4 swapped.
    let reordered = tampered(&data, scratch.path(), "reordered", |log| {
        let three = log.entry(3).clone();
        let four = std::mem::replace(log.entry(4), three);
        *log.entry(3) = four;
    });
    let (ok, report) = verify(&reordered);
    assert!(!ok);
    assert_eq!(report["entry"], 3, "{report}");

    // The last three entries cut off: the chain itself is intact, the checkpoint is not.
    let truncated = tampered(&data, scratch.path(), "truncated", |log| {
        for seq in entries - 2..=entries {
            log.remove(seq);
        }
    });
    let (ok, report) = verify(&truncated);
    assert!(!ok);
    assert_eq!(report["entry"], entries, "{report}");
    assert!(report["reason"].as_str().unwrap().contains("truncated"));

    // The tail cut off together with the checkpoints that sealed it: the database is
    // consistent again, but it no longer reaches the checkpoint kept outside it.
    let cut = scratch.path().join("cut");
    copy_dir(&data, &cut);
    {
        let db = sled::open(cut.join("db")).unwrap();
        let tree = db.open_tree("access_log").unwrap();
        let mut log = Rows::read(&tree);
        for seq in 10..=entries {
            log.remove(seq);
        }
        log.write(&tree);
        let checkpoints = db.open_tree("access_log_checkpoints").unwrap();
        for item in checkpoints.iter().keys() {
            let k = item.unwrap();
            if u64::from_be_bytes(k.as_ref().try_into().unwrap()) >= 10 {
                checkpoints.remove(k).unwrap();
            }
        }
        db.flush().unwrap();
    }
    let (ok, report) = verify(&cut);
    assert!(!ok);
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("access-log.head"),
        "{report}"
    );

    // Everything deleted: an empty log is a deleted one.
    let emptied = scratch.path().join("emptied");
    copy_dir(&data, &emptied);
    std::fs::remove_file(emptied.join("access-log.head")).unwrap();
    {
        let db = sled::open(emptied.join("db")).unwrap();
        for tree in ["access_log", "access_log_checkpoints", "access_log_meta"] {
            db.open_tree(tree).unwrap().clear().unwrap();
        }
        db.flush().unwrap();
    }
    let (ok, report) = verify(&emptied);
    assert!(!ok);
    assert_eq!(report["entry"], 1, "{report}");

    // The original still verifies.
    assert!(verify(&data).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_to_write_the_access_log_fails_the_request_and_changes_nothing() {
    use medrelay_proto::{ErrorCode, ServerMessage};
    let mut server = Server::start_with_test_clock().unwrap();
    let now = server.advance_clock(0).unwrap();
    let mut clinic = RawClinic::new(&server, now).await.unwrap();
    let conversation = clinic.care_conversation().await.unwrap();

    server.fail_access_log(true).unwrap();
    let refused = clinic
        .admin
        .conn
        .request(ClientRequest::SetRetention {
            mail_days: 7,
            archive_days: 7,
        })
        .await
        .unwrap();
    match &refused {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::Internal);
            assert!(e.message.contains("access log"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let send = clinic
        .patient
        .conn
        .request(ClientRequest::Send(medrelay_proto::SendRequest {
            conversation_id: conversation.id,
            client_message_id: medrelay_proto::ClientMessageId::from_array([9; 16]),
            envelopes: conversation
                .members
                .iter()
                .filter(|m| m.user_id != clinic.patient.user_id)
                .flat_map(|m| m.devices.iter().copied())
                .map(|d| medrelay_proto::Envelope {
                    recipient_device: d,
                    ciphertext: medrelay_proto::Bytes::from_static(b"opaque"),
                })
                .collect(),
            archive_item: None,
        }))
        .await
        .unwrap();
    assert!(matches!(send, ServerMessage::Error(e) if e.code == ErrorCode::Internal));

    server.fail_access_log(false).unwrap();
    let retention = match clinic
        .admin
        .conn
        .request(ClientRequest::GetRetention)
        .await
        .unwrap()
    {
        ServerMessage::Retention(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(retention.mail_days, 30, "the refused change did not happen");
    assert!(!retention.legal_hold);
    let delivered = clinic
        .staff
        .conn
        .drain_deliveries(std::time::Duration::from_millis(500))
        .await
        .unwrap();
    assert!(delivered.is_empty(), "the refused send stored nothing");

    // The log itself is whole: nothing half-written.
    drop(clinic);
    assert!(server.terminate().unwrap().success());
    let (ok, report) = verify(&server.data());
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_retention_trims_whole_sealed_segments_and_the_rest_still_verifies() {
    use medrelay_proto::ServerMessage;
    let mut server = Server::start_with_test_clock_and(&["--audit-retention-days", "1"]).unwrap();
    let now = server.advance_clock(0).unwrap();
    let clinic = RawClinic::new(&server, now).await.unwrap();
    let mut admin = clinic.admin.conn;
    for _ in 0..140 {
        admin.request(ClientRequest::Ping).await.unwrap();
    }
    server.advance_clock(3 * 86_400_000).unwrap();
    let mut admin = clinic.admin.device.connect(&server).await.unwrap();
    admin
        .login(
            clinic.admin.totp_secret.as_deref().unwrap(),
            now + 3 * 86_400_000,
        )
        .await
        .unwrap();
    let report = match admin.request(ClientRequest::RunSweep).await.unwrap() {
        ServerMessage::SweepReport(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(report.access_log_entries_deleted >= 128, "{report:?}");
    assert!(report.keys_shredded >= 1, "{report:?}");
    match admin.request(ClientRequest::VerifyAccessLog).await.unwrap() {
        ServerMessage::AccessLogStatus(status) => assert!(status.broken.is_none(), "{status:?}"),
        other => panic!("{other:?}"),
    }
    drop(admin);
    assert!(server.terminate().unwrap().success());
    let (ok, report) = verify(&server.data());
    assert!(ok, "{report}");
    assert!(
        report["trimmed_through"].as_u64().unwrap() >= 128,
        "{report}"
    );

    // A prefix removed without the retention record is caught: drop the anchor so the log
    // looks untrimmed, and verification names entry 1 as missing.
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("unanchored");
    copy_dir(&server.data(), &copy);
    let db = sled::open(copy.join("db")).unwrap();
    db.open_tree("access_log_meta")
        .unwrap()
        .remove("trimmed-through")
        .unwrap();
    db.flush().unwrap();
    drop(db);
    let (ok, report) = verify(&copy);
    assert!(!ok);
    assert_eq!(report["entry"], 1, "{report}");
}
