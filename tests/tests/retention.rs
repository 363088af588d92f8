//! Proves the admin policy module's retention: an envelope past retention is deleted and its
//! epoch key destroyed, so even a raw copy of the database taken before the sweep can no
//! longer open it (crypto-shredding, not only deletion); a legal hold, org-wide or on one
//! conversation, stops expiry and lifting it lets the next sweep proceed; the sweeper runs by
//! itself on the server's (injected) clock and records what it did, in counts; the access log
//! keeps its own retention and still verifies after trimming.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use medrelay_proto::{
    AccessLogFilter, ClientMessageId, ClientRequest, Conversation, DeviceId, Handle,
    OpenConversation, SendRequest, ServerMessage, SweepReport,
};
use medrelay_server::datadir::DataDir;
use medrelay_server::store::codec::Codec;
use medrelay_server::store::sled_store::SledStore;
use medrelay_server::store::StoreError;
use medrelay_tests::{binary, contains_bytes, RawClient, RawClinic, Server};

const DAY_MS: u64 = 86_400_000;

async fn ok(conn: &mut RawClient, request: ClientRequest) -> ServerMessage {
    let answer = conn.request(request).await.unwrap();
    assert!(
        !matches!(answer, ServerMessage::Error(_)),
        "refused: {answer:?}"
    );
    answer
}

/// The patient sends `marker` (as opaque bytes) to the care team; returns the conversation.
async fn patient_sends(clinic: &mut RawClinic, n: u8, marker: &[u8]) -> Conversation {
    let conversation = match ok(
        &mut clinic.patient.conn,
        ClientRequest::OpenConversation(OpenConversation {
            handles: vec![Handle::new("dr.lee").unwrap()],
        }),
    )
    .await
    {
        ServerMessage::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    let me: DeviceId = match ok(&mut clinic.patient.conn, ClientRequest::WhoAmI).await {
        ServerMessage::Identity(identity) => identity.device_id,
        other => panic!("{other:?}"),
    };
    let envelopes = conversation
        .members
        .iter()
        .flat_map(|m| m.devices.iter().copied())
        .filter(|d| *d != me)
        .map(|d| medrelay_proto::Envelope {
            recipient_device: d,
            ciphertext: medrelay_proto::Bytes::copy_from_slice(marker),
        })
        .collect();
    ok(
        &mut clinic.patient.conn,
        ClientRequest::Send(SendRequest {
            conversation_id: conversation.id,
            client_message_id: ClientMessageId::from_array([n; 16]),
            envelopes,
            archive_item: None,
        }),
    )
    .await;
    conversation
}

async fn sweep(conn: &mut RawClient) -> SweepReport {
    match ok(conn, ClientRequest::RunSweep).await {
        ServerMessage::SweepReport(report) => report,
        other => panic!("{other:?}"),
    }
}

async fn set_retention(conn: &mut RawClient, mail_days: u32, legal_hold: bool) {
    ok(
        conn,
        ClientRequest::SetRetention {
            mail_days,
            archive_days: 2190,
        },
    )
    .await;
    ok(
        conn,
        ClientRequest::SetHold {
            conversation_id: None,
            held: legal_hold,
        },
    )
    .await;
}

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

/// The mail records sealed under mail keys (headers, envelopes, idempotency records) of the
/// database at `db`, read raw: (label, associated data, sealed bytes).
fn mailbox_rows(db: &Path, keys: &Path) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let keyring = Arc::new(DataDir::new(keys).open_keyring().unwrap());
    let store = SledStore::open(db, keyring).unwrap();
    store
        .mail_records()
        .unwrap()
        .into_iter()
        .filter(|(label, _, _)| *label != "mail_done")
        .collect()
}

/// Opens mail records with the keyring and master key of the data directory `keys`, read
/// afresh: (opened, shredded).
fn open_rows(rows: &[(&'static str, Vec<u8>, Vec<u8>)], keys: &Path) -> (usize, usize) {
    let codec = Codec::new(Arc::new(DataDir::new(keys).open_keyring().unwrap()));
    let (mut opened, mut shredded) = (0, 0);
    for (label, aad, sealed) in rows {
        match codec.open_raw(label, aad, sealed) {
            Ok(_) => opened += 1,
            Err(StoreError::Shredded { .. }) => shredded += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    (opened, shredded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_past_retention_is_gone_even_from_a_copy_taken_before_the_sweep() {
    // The sweeper runs by itself every minute of the server's clock.
    let mut server = Server::start_with_test_clock_and(&["--sweep-interval-minutes", "1"]).unwrap();
    let now = server.advance_clock(0).unwrap();
    let mut clinic = RawClinic::new(&server, now).await.unwrap();
    set_retention(&mut clinic.admin.conn, 1, false).await;
    let marker = b"retention-marker-5d1c".to_vec();
    patient_sends(&mut clinic, 1, &marker).await;
    drop(clinic);

    // A raw copy of the data directory (database, keyring, master key), taken now.
    server.terminate().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let before = scratch.path().join("before");
    copy_dir(&server.data(), &before);
    for file in server.data_files() {
        assert!(
            !contains_bytes(&std::fs::read(&file).unwrap(), &marker),
            "{} holds the envelope in clear",
            file.display()
        );
    }
    // Control: with its own keys, the copy opens the waiting envelopes.
    let rows = mailbox_rows(&before.join("db"), &before);
    assert!(!rows.is_empty());
    assert_eq!(open_rows(&rows, &before), (rows.len(), 0));
    server.restart().unwrap();

    // Two days later the sweeper, on its own, deletes the envelope and destroys its key.
    server.advance_clock(2 * DAY_MS + 120_000).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The copy's rows, with the server's keyring as it is now.
        let (opened, shredded) = open_rows(&rows, &server.data());
        if opened == 0 {
            assert_eq!(shredded, rows.len());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no sweep within 20 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.terminate().unwrap();
    // The sweep recorded what it did, in counts, in the access log.
    let export = std::process::Command::new(binary("medrelay"))
        .args(["audit", "export", "--action", "retention_sweep", "--data"])
        .arg(server.data())
        .output()
        .unwrap();
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(
        text.contains("envelopes_deleted=1") && text.contains("keys_shredded="),
        "{text}"
    );
    // The live database has no envelope left either.
    assert!(
        mailbox_rows(&server.data().join("db"), &server.data()).is_empty(),
        "deleted, not only unreadable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legal_hold_stops_expiry_and_lifting_it_lets_the_next_sweep_proceed() {
    let server = Server::start_with_test_clock().unwrap();
    let now = server.advance_clock(0).unwrap();
    let mut clinic = RawClinic::new(&server, now).await.unwrap();
    set_retention(&mut clinic.admin.conn, 1, true).await;
    let conversation = patient_sends(&mut clinic, 1, b"held-1").await;
    server.advance_clock(3 * DAY_MS).unwrap();
    // Log in again after the long pause.
    let secret = clinic.admin.totp_secret.clone().unwrap();
    let mut admin = clinic.admin.device.connect(&server).await.unwrap();
    admin.login(&secret, now + 3 * DAY_MS).await.unwrap();

    let held = sweep(&mut admin).await;
    assert_eq!(held.envelopes_deleted, 0, "{held:?}");
    assert!(held.kept_by_hold >= 1, "{held:?}");

    // Org-wide hold lifted, one conversation held: still kept.
    set_retention(&mut admin, 1, false).await;
    ok(
        &mut admin,
        ClientRequest::SetHold {
            conversation_id: Some(conversation.id),
            held: true,
        },
    )
    .await;
    let retention = match ok(&mut admin, ClientRequest::GetRetention).await {
        ServerMessage::Retention(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(retention.held_conversations, vec![conversation.id]);
    let still = sweep(&mut admin).await;
    assert_eq!(still.envelopes_deleted, 0, "{still:?}");
    assert!(still.kept_by_hold >= 1);

    // Lifted: the next sweep deletes and shreds.
    ok(
        &mut admin,
        ClientRequest::SetHold {
            conversation_id: Some(conversation.id),
            held: false,
        },
    )
    .await;
    let done = sweep(&mut admin).await;
    assert!(done.envelopes_deleted >= 1, "{done:?}");
    assert!(done.keys_shredded >= 1, "{done:?}");
    assert_eq!(done.kept_by_hold, 0);

    // The staff member's mailbox is empty now.
    let staff_secret = clinic.staff.totp_secret.clone().unwrap();
    let mut staff = clinic.staff.device.connect(&server).await.unwrap();
    staff.login(&staff_secret, now + 3 * DAY_MS).await.unwrap();
    let deliveries = staff
        .drain_deliveries(Duration::from_millis(500))
        .await
        .unwrap();
    assert!(deliveries.is_empty(), "{deliveries:?}");

    // A non-admin may not sweep or change retention.
    let refused = staff.request(ClientRequest::RunSweep).await.unwrap();
    assert!(
        matches!(refused, ServerMessage::Error(e) if e.code == medrelay_proto::ErrorCode::Forbidden)
    );

    // Every change is in the access log, with its values and no handle.
    let page = match ok(
        &mut admin,
        ClientRequest::ExportAccessLog(AccessLogFilter {
            action: Some("set_hold".to_owned()),
            limit: 256,
            ..AccessLogFilter::default()
        }),
    )
    .await
    {
        ServerMessage::AccessLogPage(page) => page,
        other => panic!("{other:?}"),
    };
    assert!(page
        .entries
        .iter()
        .any(|e| e.objects == ["org".to_owned(), "held=true".to_owned()]));
}

/// The days of the keyring's per-day keys: (access-log days, mail days).
fn key_days(data: &Path) -> (Vec<u32>, Vec<u32>) {
    use medrelay_server::keyring::Scope;
    let keyring = DataDir::new(data).open_keyring().unwrap();
    let (mut audit, mut mail) = (Vec::new(), Vec::new());
    for (_, scope) in keyring.scopes() {
        match scope {
            Scope::Audit { day } => audit.push(day),
            Scope::Mail { day, .. } => mail.push(day),
            _ => {}
        }
    }
    (audit, mail)
}

/// Whether the server's log says the sweeper has made the keys of `ahead` (colours removed).
fn sweeper_prepared(server: &Server, ahead: u64) -> bool {
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain.lines().any(|line| {
        line.contains("data keys ready ahead of the day")
            && line.contains(&format!("ahead={ahead}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_makes_a_days_keys_before_the_day_begins() {
    // A new day's first seal would otherwise create its key, and write the keyring file,
    // while other sealers of that scope wait.
    let server = Server::start_with_test_clock().unwrap();
    let now = server.advance_clock(0).unwrap();
    // Noon of tomorrow: the clinic has mail that day, so its org is active.
    let day = now / DAY_MS + 1;
    let noon = day * DAY_MS + DAY_MS / 2;
    server.advance_clock(noon - now).unwrap();
    let mut clinic = RawClinic::new(&server, noon).await.unwrap();
    patient_sends(&mut clinic, 1, b"keys-ahead").await;
    let next = u32::try_from(day + 1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sweeper_prepared(&server, day) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper did not handle day {day} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (audit, mail) = key_days(&server.data());
    assert!(
        !audit.contains(&next) && !mail.contains(&next),
        "control: no keys for a day twelve hours away: {audit:?} {mail:?}"
    );
    // Half an hour before the next day begins.
    server.advance_clock(DAY_MS / 2 - 30 * 60_000).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (audit, mail) = key_days(&server.data());
        if audit.contains(&next) && mail.contains(&next) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no keys for the coming day within 20 s: {audit:?} {mail:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
