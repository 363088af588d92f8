//! `medrelay archive`: the org archive's offline tools, run on the privacy officer's machine.
//! The server process never sees the archive's secret key; these commands never touch a data
//! directory. The cryptography is the client SDK's ([`medrelay_sdk::archive`]).

use std::io::{BufRead, Write};
use std::path::Path;

use medrelay_sdk::archive::{self, ExportHeader, ExportItem, EXPORT_FORMAT};

/// What opening an export found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Items opened and printed.
    pub opened: u64,
    /// Items that did not open (reported on stderr, by position).
    pub failed: u64,
}

/// Generates the archive key pair; writes the secret to `out` (0600) and returns the public
/// key, hex.
pub fn keygen(out: &Path) -> anyhow::Result<String> {
    Ok(archive::keygen(out, &mut rand::rngs::OsRng)?)
}

/// Opens every item of the export at `input` with the secret key at `key` and writes the
/// transcript to `out` as JSON lines.
pub fn open_export(key: &Path, input: &Path, out: &mut impl Write) -> anyhow::Result<OpenReport> {
    let keypair = archive::read_key(key)?;
    let file =
        std::fs::File::open(input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header: ExportHeader = match lines.next() {
        Some(line) => serde_json::from_str(&line?)
            .map_err(|e| anyhow::anyhow!("{} is not an archive export: {e}", input.display()))?,
        None => anyhow::bail!("{} is empty", input.display()),
    };
    if header.format != EXPORT_FORMAT {
        anyhow::bail!(
            "{} is in format {:?}; this version reads {EXPORT_FORMAT:?}",
            input.display(),
            header.format
        );
    }
    let mut report = OpenReport::default();
    for (number, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let opened = serde_json::from_str::<ExportItem>(&line)
            .map_err(|e| format!("line {}: not an export item: {e}", number + 2))
            .and_then(|item| archive::open_item(&keypair, &item).map_err(|e| e.to_string()));
        match opened {
            Ok(message) => {
                writeln!(out, "{}", serde_json::to_string(&message)?)?;
                report.opened += 1;
            }
            Err(error) => {
                eprintln!("medrelay: {error}");
                report.failed += 1;
            }
        }
    }
    Ok(report)
}
