//! Builds the staff web client into the binary: the `medrelay-web` crate for
//! `wasm32-unknown-unknown` (a nested cargo with its own target directory, so it never waits on
//! the outer build's lock and never recurses: `medrelay-web` does not depend on this crate),
//! then its JavaScript glue with `wasm-bindgen-cli-support` (the exact version of the
//! `wasm-bindgen` the web crate links), then copies `web/static/`. `src/web_assets.rs` embeds
//! the result from `OUT_DIR`. Nothing built is committed.
//!
//! Needs the `wasm32-unknown-unknown` target of the toolchain (`rust-toolchain.toml` names it,
//! so rustup installs it; otherwise `rustup target add wasm32-unknown-unknown`).

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Environment a build script inherits that must not reach the nested cargo: wrappers (clippy
/// would lint the web crate a second time, for wasm32), flags meant for the host build, and
/// the outer target directory.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("the server crate has no parent directory")?
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for watched in [
        "web/src",
        "web/static",
        "web/Cargo.toml",
        "client-sdk/src",
        "client-sdk/Cargo.toml",
        "proto/src",
        "proto/proto",
        "proto/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let wasm = build_wasm(&root, &out_dir)?;
    let dist = out_dir.join("web");
    if dist.exists() {
        std::fs::remove_dir_all(&dist)?;
    }
    std::fs::create_dir_all(&dist)?;
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)?
        .omit_default_module_path(false)
        .generate(&dist)?;
    for entry in std::fs::read_dir(root.join("web/static"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), dist.join(entry.file_name()))?;
        }
    }
    write_manifest(&dist, &out_dir.join("web_assets.rs"))
}

/// The outer build's target directory (`OUT_DIR` is `<target>/<profile>/build/<pkg>/out`),
/// so every profile and `cargo clippy` share one incremental wasm build.
fn nested_target_dir(out_dir: &Path) -> PathBuf {
    let mut ancestors = out_dir.ancestors();
    let build = ancestors.nth(2);
    match (build, out_dir.ancestors().nth(4)) {
        (Some(b), Some(target)) if b.file_name().is_some_and(|n| n == "build") => {
            target.join("medrelay-web-wasm")
        }
        _ => out_dir.join("medrelay-web-wasm"),
    }
}

fn build_wasm(root: &Path, out_dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()?;
    let libdir = String::from_utf8_lossy(&libdir.stdout).trim().to_owned();
    if libdir.is_empty() || !Path::new(&libdir).exists() {
        return Err(format!(
            "the staff web client needs the {WASM_TARGET} target: run `rustup target add \
             {WASM_TARGET}` (rust-toolchain.toml asks rustup for it)"
        )
        .into());
    }
    let target_dir = nested_target_dir(out_dir);
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--package",
            "medrelay-web",
            "--lib",
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        // Line tables are for native backtraces; in the module they only add size.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    let status = command.status()?;
    if !status.success() {
        return Err(format!("building medrelay-web for {WASM_TARGET} failed ({status})").into());
    }
    Ok(target_dir
        .join(WASM_TARGET)
        .join("release")
        .join("medrelay_web.wasm"))
}

/// Writes the list `src/web_assets.rs` includes: (URL path, content type, bytes).
fn write_manifest(dist: &Path, manifest: &Path) -> Result<(), Box<dyn Error>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dist)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut code = String::from("&[\n");
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("a web asset has a non-UTF-8 name")?;
        let content_type = match path.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("wasm") => "application/wasm",
            Some("svg") => "image/svg+xml",
            Some("ico") => "image/x-icon",
            // TypeScript declarations and anything else are not served.
            _ => continue,
        };
        writeln!(
            code,
            "    (\"/{name}\", \"{content_type}\", include_bytes!({:?}).as_slice()),",
            path.display().to_string()
        )?;
    }
    code.push(']');
    std::fs::write(manifest, code)?;
    Ok(())
}
