//! Proves: the server never sees plaintext. A unique marker sent through the server both ways
//! is absent, as bytes, from every file under the data directory and from the server's log
//! (kept at debug level for the test), while the recipients read it; and neither the log nor
//! any file of the data directory names the patient (records are sealed at rest, the handle
//! index is a keyed hash).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_tests::{contains_bytes, Cli, Server};

#[test]
fn a_marker_sent_through_the_server_is_nowhere_on_its_disk_or_in_its_log() {
    let mut server = Server::start().unwrap();
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
    let patient_handle = "zebulon.quixote";
    patient
        .enroll(&server, &staff.invite("patient", patient_handle).unwrap())
        .unwrap();
    patient.accept_consent().unwrap();

    let marker = format!("MARKER-{}-rash-on-left-forearm", std::process::id());
    let reply_marker = format!("REPLY-{}-apply-hydrocortisone", std::process::id());
    patient.send("dr.lee", &marker).unwrap();
    let got = staff.recv(5).unwrap();
    assert_eq!(got[0]["text"], marker.as_str());
    staff.send(patient_handle, &reply_marker).unwrap();
    // Leave the reply undelivered, so its ciphertext is still in the mailbox on disk.

    // Stop gracefully so everything the server holds is flushed to its files.
    let status = server.terminate().unwrap();
    assert!(status.success());

    let files = server.data_files();
    assert!(
        files.len() > 3,
        "the data directory holds {} files",
        files.len()
    );
    let mut scanned = 0usize;
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        scanned += bytes.len();
        for needle in [&marker, &reply_marker] {
            assert!(
                !contains_bytes(&bytes, needle.as_bytes()),
                "{} holds a message's plaintext",
                file.display()
            );
        }
        // Records are sealed at rest and the handle index is a keyed hash: nothing names
        // the patient in clear.
        assert!(
            !contains_bytes(&bytes, patient_handle.as_bytes()),
            "{} names the patient in clear",
            file.display()
        );
    }
    assert!(scanned > 0);
    let log = std::fs::read(server.log_path()).unwrap();
    assert!(!log.is_empty(), "the server logged nothing at debug level");
    for needle in [marker.as_str(), reply_marker.as_str(), patient_handle] {
        assert!(
            !contains_bytes(&log, needle.as_bytes()),
            "the server log holds {needle:?}"
        );
    }
    // The test can fail: the reply is still readable by the patient, so it was stored.
    server.restart().unwrap();
    assert_eq!(patient.recv(5).unwrap()[0]["text"], reply_marker.as_str());
}
