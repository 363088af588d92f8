//! `medrelay init` and `medrelay org add` as a new operator drives them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn medrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medrelay"))
}

fn tree_listing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path().display().to_string(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn init_prints_the_org_and_invite_then_refuses_a_second_time_changing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = medrelay()
        .args(["init", "--data"])
        .arg(&data)
        .args(["--org", "Lakeside Aesthetics"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["org"], "Lakeside Aesthetics");
    assert!(report["admin_invite"].as_str().unwrap().len() >= 32);
    assert!(data.join("certs/ca.pem").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["certs/ca.key", "certs/server.key"] {
            let mode = std::fs::metadata(data.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    let before = tree_listing(&data);
    let again = medrelay()
        .args(["init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already initialised"), "{stderr}");
    assert!(again.stdout.is_empty());
    let after = tree_listing(&data);
    // Nothing changed but sled's own bookkeeping files may be touched on open; compare certs.
    let certs = |l: &[(String, u64)]| -> Vec<(String, u64)> {
        l.iter()
            .filter(|(p, _)| p.contains("/certs/"))
            .cloned()
            .collect()
    };
    assert_eq!(certs(&before), certs(&after));
}

#[test]
fn org_add_without_a_running_server_opens_the_database_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(medrelay()
        .args(["init", "--data"])
        .arg(&data)
        .status()
        .unwrap()
        .success());
    let out = medrelay()
        .args(["org", "add", "--data"])
        .arg(&data)
        .arg("Second Clinic")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["org"], "Second Clinic");
    assert!(added["admin_invite"].is_string());
}

#[test]
fn org_add_on_a_directory_that_is_not_initialised_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = medrelay()
        .args(["org", "add", "--data"])
        .arg(dir.path().join("nothing-here"))
        .arg("X Clinic")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("medrelay init"));
}
