//! The staff web client in a real browser: `web/e2e/staff.mjs` drives headless Chromium (the
//! system's `/usr/bin/chromium`, through `playwright-core`; nothing downloads a browser)
//! against this test's `medrelay serve`. It proves enrolment with TOTP, login, live receive,
//! answering, the patient receiving the answer, safety numbers, the admin console (a retention
//! change found in the access-log view, verify, export; the org archive enabled from the
//! console, the browser's sends sealed to it and opened offline, a changed key announced with
//! its fingerprint and accepted), automatic
//! logoff with its notice, the security headers, and a console free of errors; screenshots of
//! each main screen land in `target/<profile>/web-e2e/`.
//!
//! Needs `chromium`, `node` and `web/e2e/node_modules` (`npm ci` in `web/e2e`); `.ci/run`
//! installs all three. Without them the test says so loudly and passes, except under CI
//! (`CI` set), where it fails: CI must really run it.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use medrelay_tests::{binary, Cli, Server, TEST_PASSWORD};

const CHROMIUM: &str = "/usr/bin/chromium";

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("web")
        .join("e2e")
}

/// What is missing to run the browser test, if anything.
fn missing_tools() -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (apt-get install nodejs npm)".into());
    }
    if !e2e_dir().join("node_modules/playwright-core").exists() {
        missing.push("web/e2e/node_modules (cd web/e2e && npm ci)".into());
    }
    missing
}

#[test]
fn staff_web_client_end_to_end_in_chromium() {
    let missing = missing_tools();
    if !missing.is_empty() {
        let message = format!(
            "\n\n*** SKIPPING the browser end-to-end test: missing {} ***\n\n",
            missing.join(", ")
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "{message}under CI it must run"
        );
        eprintln!("{message}");
        return;
    }

    let server = Server::start().unwrap();
    let admin = Cli::new();
    admin
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .unwrap();
    admin.setup_and_login().unwrap();
    let staff_invite = admin.invite("staff", "dr.lee").unwrap();
    let admin_invite = admin.invite("admin", "admin2").unwrap();
    let patient_home = tempfile::tempdir().unwrap();
    // Two org archive keys, made as the privacy officer makes them (offline, with the server
    // binary): the page enables the first, then changes to the second.
    let officer = tempfile::tempdir().unwrap();
    let mut archive_keys = Vec::new();
    for name in ["archive-a.key", "archive-b.key"] {
        let path = officer.path().join(name);
        let made = Command::new(binary("medrelay"))
            .args(["archive", "keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
        archive_keys.push((path, made["public_key"].as_str().unwrap().to_owned()));
    }
    let screenshots = binary("medrelay")
        .parent()
        .unwrap()
        .join("web-e2e")
        .join("screenshots");

    let output = Command::new("node")
        .arg(e2e_dir().join("staff.mjs"))
        .current_dir(e2e_dir())
        .env("MEDRELAY_URL", format!("https://localhost:{}", server.port))
        .env("MEDRELAY_WSS", server.url())
        .env("MEDRELAY_CA", server.ca_path())
        .env("MEDRELAY_CLIENT", binary("medrelay-client"))
        .env("PATIENT_HOME", patient_home.path())
        .env("STAFF_INVITE", &staff_invite)
        .env("ADMIN_INVITE", &admin_invite)
        .env("SCREENSHOTS", &screenshots)
        .env("MEDRELAY_SERVER_BIN", binary("medrelay"))
        .env("ADMIN_CLI_HOME", admin.home())
        .env("ADMIN_CLI_PASSPHRASE", TEST_PASSWORD)
        .env("ARCHIVE_DIR", officer.path())
        .env("ARCHIVE_KEY_A", &archive_keys[0].1)
        .env("ARCHIVE_SECRET_A", &archive_keys[0].0)
        .env("ARCHIVE_KEY_B", &archive_keys[1].1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser test failed ({}); server log: {}",
        output.status,
        server.log_path().display()
    );
    assert!(stdout.contains("all checks passed"));
    for name in [
        "staff-enrol",
        "staff-totp",
        "staff-inbox",
        "staff-conversation",
        "staff-safety-numbers",
        "staff-logged-off",
        "admin-people",
        "admin-sessions",
        "admin-retention",
        "admin-access-log",
        "admin-archive-key",
        "staff-archive-key-changed",
    ] {
        assert!(
            screenshots.join(format!("{name}.png")).exists(),
            "no screenshot {name}"
        );
    }
}
