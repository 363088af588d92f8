//! Proves: when both sides start a session at the same moment (each sends twice before hearing
//! from the other), no message is lost. Both sessions decrypt what was sent under them: the
//! one the devices settle on, and the one set aside, kept as an archived session for the
//! messages still in flight under it. Afterwards the conversation goes on, both ways.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_tests::{Cli, Server};

fn texts(messages: &[serde_json::Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn messages_sent_while_both_sides_start_a_session_all_arrive() {
    let server = Server::start().unwrap();
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

    // Neither has heard from the other: each starts a session, twice over.
    patient.send("dr.lee", "patient one").unwrap();
    patient.send("dr.lee", "patient two").unwrap();
    staff.send("alice", "staff one").unwrap();
    staff.send("alice", "staff two").unwrap();

    assert_eq!(texts(&patient.recv(5).unwrap()), ["staff one", "staff two"]);
    assert_eq!(
        texts(&staff.recv(5).unwrap()),
        ["patient one", "patient two"]
    );

    // Settled: the conversation goes on both ways.
    patient.send("dr.lee", "patient three").unwrap();
    assert_eq!(texts(&staff.recv(5).unwrap()), ["patient three"]);
    staff.send("alice", "staff three").unwrap();
    assert_eq!(texts(&patient.recv(5).unwrap()), ["staff three"]);
    patient.send("dr.lee", "patient four").unwrap();
    assert_eq!(texts(&staff.recv(5).unwrap()), ["patient four"]);
}
