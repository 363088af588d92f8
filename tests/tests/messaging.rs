//! Proves, through the real `medrelay-client` against a real server over TLS: a patient and a
//! staff member message each other both ways, with the recipient online and offline (delivered
//! on reconnect, in order), to every device of the recipient and to the sender's own other
//! devices; and an acknowledged send survives SIGKILL of the server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use medrelay_tests::{Cli, Server};

struct Clinic {
    server: Server,
    staff: Cli,
    staff_totp: String,
    patient: Cli,
}

/// An admin, a staff member invited by the admin, and a patient invited by (so in the care
/// of) the staff member; staff logged in with password and TOTP, the patient consenting.
fn clinic() -> Clinic {
    let server = Server::start().unwrap();
    let admin = Cli::new();
    admin
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .unwrap();
    admin.setup_and_login().unwrap();
    let staff = Cli::new();
    let code = admin.invite("staff", "dr.lee").unwrap();
    let me = staff.enroll(&server, &code).unwrap();
    assert_eq!(me["role"], "staff");
    let staff_totp = staff.setup_and_login().unwrap();
    let patient = Cli::new();
    let code = staff.invite("patient", "alice").unwrap();
    patient.enroll(&server, &code).unwrap();
    patient.accept_consent().unwrap();
    let whoami = patient.json(&["whoami"]).unwrap();
    assert_eq!(whoami["handle"], "alice");
    assert_eq!(whoami["role"], "patient");
    for key in ["user_id", "device_id"] {
        assert!(
            whoami[key].as_str().is_some_and(|v| v.len() == 32),
            "{whoami}"
        );
    }
    Clinic {
        server,
        staff,
        staff_totp,
        patient,
    }
}

fn texts(messages: &[serde_json::Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

#[test]
fn patient_and_staff_message_each_other_offline_in_order() {
    let c = clinic();
    let sent = c.patient.send("dr.lee", "Is my biopsy back yet?").unwrap();
    assert!(sent["message_id"].is_string() && sent["conversation_id"].is_string());
    c.patient
        .send("dr.lee", "Also, can I move my appointment?")
        .unwrap();
    c.patient.send("dr.lee", "Thank you!").unwrap();

    // The staff member was offline: everything arrives on reconnect, in order.
    let received = c.staff.recv(5).unwrap();
    assert_eq!(
        texts(&received),
        [
            "Is my biopsy back yet?",
            "Also, can I move my appointment?",
            "Thank you!"
        ]
    );
    for message in &received {
        assert_eq!(message["from"], "alice");
        assert_eq!(message["conversation_id"], sent["conversation_id"]);
        assert!(message["sent_at"].as_str().unwrap().ends_with('Z'));
    }
    // Received messages were acked: nothing comes twice.
    assert!(c.staff.recv(1).unwrap().is_empty());

    // And back.
    c.staff
        .send("alice", "Yes, results are normal. Moving you to Friday.")
        .unwrap();
    let reply = c.patient.recv(5).unwrap();
    assert_eq!(
        texts(&reply),
        ["Yes, results are normal. Moving you to Friday."]
    );
    assert_eq!(reply[0]["from"], "dr.lee");
}

#[test]
fn an_online_recipient_receives_live() {
    let c = clinic();
    // Set up the session first so the live receive below measures delivery only.
    c.patient.send("dr.lee", "hello").unwrap();
    assert_eq!(texts(&c.staff.recv(5).unwrap()), ["hello"]);

    let listener = c
        .staff
        .command(&["recv", "--wait", "15"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give the listener time to connect, then send while it waits.
    std::thread::sleep(Duration::from_millis(1500));
    c.patient.send("dr.lee", "are you there?").unwrap();
    let out = listener.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        texts(&lines),
        ["are you there?"],
        "listener stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_device_of_the_recipient_and_the_senders_other_devices_receive() {
    let c = clinic();
    // A second device for each of them.
    let staff_tablet = Cli::new();
    let code = c.staff.run(&["invite", "--device"]).unwrap();
    let tablet = staff_tablet.enroll(&c.server, code.trim()).unwrap();
    // The same account's second device logs in too (with the next time step's code).
    staff_tablet
        .login(&c.staff_totp, medrelay_tests::now_ms() + 30_000)
        .unwrap();
    let patient_laptop = Cli::new();
    let code = c.patient.run(&["invite", "--device"]).unwrap();
    patient_laptop.enroll(&c.server, code.trim()).unwrap();
    let staff_me = c.staff.json(&["whoami"]).unwrap();
    assert_eq!(tablet["user_id"], staff_me["user_id"]);
    assert_ne!(tablet["device_id"], staff_me["device_id"]);

    c.patient.send("dr.lee", "sent from my phone").unwrap();
    // Both staff devices, and the patient's own laptop.
    for device in [&c.staff, &staff_tablet, &patient_laptop] {
        let got = device.recv(5).unwrap();
        assert_eq!(texts(&got), ["sent from my phone"]);
        assert_eq!(got[0]["from"], "alice");
    }
    // The sending device does not receive its own message.
    assert!(c.patient.recv(1).unwrap().is_empty());

    staff_tablet
        .send("alice", "answered from the tablet")
        .unwrap();
    for device in [&c.patient, &patient_laptop, &c.staff] {
        assert_eq!(
            texts(&device.recv(5).unwrap()),
            ["answered from the tablet"]
        );
    }
}

#[test]
fn an_acknowledged_send_survives_sigkill_of_the_server() {
    let mut c = clinic();
    c.patient
        .send("dr.lee", "first, to set up the session")
        .unwrap();
    assert_eq!(c.staff.recv(5).unwrap().len(), 1);
    // Acknowledged, then the server dies at once without a chance to flush anything more.
    c.patient
        .send("dr.lee", "sent right before the crash")
        .unwrap();
    c.server.kill9();
    c.server.restart().unwrap();
    assert_eq!(
        texts(&c.staff.recv(5).unwrap()),
        ["sent right before the crash"]
    );
}
