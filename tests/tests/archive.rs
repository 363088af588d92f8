//! Proves the org archive round trip: the privacy officer makes the archive key pair offline
//! (`medrelay archive keygen`), the admin enables the archive with its public half, clients
//! then seal every message to it by themselves, the admin exports the sealed archive, and only
//! the officer's key opens it offline (`medrelay archive open`) into the transcript; the
//! server's data directory and the export hold no archive plaintext, and another key opens
//! nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use medrelay_tests::{binary, contains_bytes, Cli, Server};

fn medrelay(args: &[&str]) -> std::process::Output {
    Command::new(binary("medrelay"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn archived_messages_open_offline_with_the_officers_key_only() {
    let mut server = Server::start().unwrap();
    let officer = tempfile::tempdir().unwrap();
    let key = officer.path().join("archive.key");
    let key_text = key.display().to_string();
    let made = medrelay(&["archive", "keygen", "--out", &key_text]);
    assert!(made.status.success(), "{made:?}");
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let public_key = made["public_key"].as_str().unwrap().to_owned();
    assert!(
        !medrelay(&["archive", "keygen", "--out", &key_text])
            .status
            .success(),
        "an archive key is never overwritten"
    );

    let admin = Cli::new();
    admin
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .unwrap();
    admin.setup_and_login().unwrap();
    let staff = Cli::new();
    staff
        .enroll(&server, &admin.invite("staff", "dr.lee").unwrap())
        .unwrap();
    staff.setup_and_login().unwrap();
    let patient = Cli::new();
    patient
        .enroll(&server, &staff.invite("patient", "alice").unwrap())
        .unwrap();
    patient.accept_consent().unwrap();

    // Only a privacy officer may set the archive key: whoever sets it decides who can read.
    let refused = admin
        .run(&["admin", "archive", "enable", "--public-key", &public_key])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("privacy_officer"), "{refused}");
    let me = admin.json(&["whoami"]).unwrap();
    let handle = me["handle"].as_str().unwrap().to_owned();
    admin
        .json(&[
            "permissions",
            "--handle",
            &handle,
            "--grant",
            "privacy_officer",
        ])
        .unwrap();
    let enabled = admin
        .json(&["admin", "archive", "enable", "--public-key", &public_key])
        .unwrap();
    assert_eq!(enabled["archive_enabled"], true);
    let shown = admin.json(&["admin", "retention", "show"]).unwrap();
    assert_eq!(shown["archive_public_key"], public_key.as_str());

    let question = format!("ARCHIVED-{}-is-my-biopsy-back", std::process::id());
    let answer = format!("ARCHIVED-{}-yes-all-clear", std::process::id());
    patient.send("dr.lee", &question).unwrap();
    assert_eq!(staff.recv(5).unwrap()[0]["text"], question.as_str());
    staff.send("alice", &answer).unwrap();
    assert_eq!(patient.recv(5).unwrap()[0]["text"], answer.as_str());

    let export = officer.path().join("export.jsonl");
    let export_text = export.display().to_string();
    let exported = admin
        .json(&[
            "admin",
            "archive",
            "export",
            "--since",
            "2000-01-01",
            "--out",
            &export_text,
        ])
        .unwrap();
    assert_eq!(exported["exported"], 2, "{exported}");
    let sealed = std::fs::read(&export).unwrap();
    for text in [&question, &answer] {
        assert!(
            !contains_bytes(&sealed, text.as_bytes()),
            "the export is sealed"
        );
    }

    let opened = medrelay(&["archive", "open", "--key", &key_text, "--in", &export_text]);
    assert!(opened.status.success(), "{opened:?}");
    let transcript: Vec<serde_json::Value> = String::from_utf8(opened.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(transcript.len(), 2);
    assert_eq!(transcript[0]["text"], question.as_str());
    assert_eq!(transcript[0]["sender_handle"], "alice");
    assert_eq!(transcript[1]["text"], answer.as_str());
    assert_eq!(transcript[1]["sender_handle"], "dr.lee");

    // Another key opens nothing, and says so.
    let other = officer.path().join("other.key");
    let other_text = other.display().to_string();
    assert!(medrelay(&["archive", "keygen", "--out", &other_text])
        .status
        .success());
    let refused = medrelay(&[
        "archive",
        "open",
        "--key",
        &other_text,
        "--in",
        &export_text,
    ]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());

    // A swapped archive key is refused by the clients until their user accepts it.
    let other_public = {
        let made = medrelay(&[
            "archive",
            "keygen",
            "--out",
            &officer.path().join("new.key").display().to_string(),
        ]);
        let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
        made["public_key"].as_str().unwrap().to_owned()
    };
    admin
        .json(&["admin", "archive", "enable", "--public-key", &other_public])
        .unwrap();
    let blocked = patient
        .run(&["send", "--to", "dr.lee", "not sent"])
        .unwrap_err()
        .to_string();
    assert!(blocked.contains("archive key changed"), "{blocked}");
    let shown = patient.json(&["archive-key", "show"]).unwrap();
    assert_eq!(shown["trusted"], false);
    assert_eq!(shown["public_key"], other_public.as_str());
    patient.json(&["archive-key", "accept"]).unwrap();
    assert_eq!(
        patient.json(&["archive-key", "show"]).unwrap()["trusted"],
        true
    );
    patient.send("dr.lee", "sent after accepting").unwrap();
    assert_eq!(
        staff.recv(5).unwrap().len(),
        1,
        "only the message sent after accepting arrived"
    );

    // The server holds the archive sealed only.
    assert!(server.terminate().unwrap().success());
    for file in server.data_files() {
        let bytes = std::fs::read(&file).unwrap();
        for text in [&question, &answer] {
            assert!(
                !contains_bytes(&bytes, text.as_bytes()),
                "{} holds archive plaintext",
                file.display()
            );
        }
    }
    // The export was recorded in the access log.
    let log = medrelay(&[
        "audit",
        "export",
        "--action",
        "export_archive",
        "--data",
        &server.data().display().to_string(),
    ]);
    assert!(String::from_utf8(log.stdout).unwrap().contains("allowed"));
}

#[test]
fn the_admin_cli_sets_retention_and_holds_and_reads_the_access_log() {
    let server = Server::start().unwrap();
    let admin = Cli::new();
    admin
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .unwrap();
    admin.setup_and_login().unwrap();

    let set = admin
        .json(&["admin", "retention", "set", "--mail-days", "14"])
        .unwrap();
    assert_eq!(set["mail_days"], 14);
    assert_eq!(set["archive_days"], 2190, "unchanged");
    assert!(admin
        .run(&["admin", "retention", "set", "--mail-days", "0"])
        .unwrap_err()
        .to_string()
        .contains("--mail-days must be 1 to 3650"));
    assert_eq!(
        admin.json(&["admin", "hold", "add", "--org"]).unwrap()["org"],
        true
    );
    let shown = admin.json(&["admin", "retention", "show"]).unwrap();
    assert_eq!(shown["mail_days"], 14);
    assert_eq!(shown["legal_hold"], true);
    assert_eq!(shown["audit_days"], 2190);
    assert_eq!(shown["archive_enabled"], false);
    assert!(admin
        .run(&["admin", "hold", "add", "--conversation", "not-an-id"])
        .unwrap_err()
        .to_string()
        .contains("--conversation must be a conversation id"));
    admin.json(&["admin", "hold", "remove", "--org"]).unwrap();
    assert_eq!(
        admin.json(&["admin", "hold", "list"]).unwrap()["org"],
        false
    );
    let swept = admin.json(&["admin", "sweep"]).unwrap();
    assert_eq!(swept["envelopes_deleted"], 0);

    let verified = admin.json(&["admin", "audit", "verify"]).unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["entries"].as_u64().unwrap() >= 8);
    let csv = admin
        .run(&[
            "admin",
            "audit",
            "export",
            "--action",
            "set_retention",
            "--format",
            "csv",
        ])
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("seq,at_ms,user"), "{csv}");
    assert_eq!(
        lines.len(),
        2,
        "header, then the one retention change: {csv}"
    );
    assert!(lines[1].contains("mail_days=14"));
    let holds = admin
        .json_lines(&["admin", "audit", "export", "--action", "set_hold"])
        .unwrap();
    assert_eq!(holds.len(), 2, "on, then off: {holds:?}");
    let sweeps = admin
        .json_lines(&["admin", "audit", "export", "--action", "retention_sweep"])
        .unwrap();
    assert!(
        sweeps.iter().any(|s| s["objects"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("envelopes_deleted=0"))),
        "{sweeps:?}"
    );
}
