//! Running the systems under test as child processes: the `medrelay` server (on a fresh data
//! directory) and the transport-limit forwarder. Both print one line naming their port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `medrelay serve` process.
#[derive(Debug)]
pub struct Relay {
    binary: PathBuf,
    data: PathBuf,
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
    /// The first admin's invite, printed on first start.
    pub admin_invite: Option<String>,
}

fn wait_for_listening(child: &mut Child) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut invite = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("the server did not report listening within 60 s")?;
        if let Some(code) = line.strip_prefix("First admin invite (single use, valid 7 days): ") {
            invite = Some(code.trim().to_owned());
        }
        if let Some(rest) = line
            .strip_prefix("medrelay listening on ")
            .or_else(|| line.strip_prefix("forwarder listening on "))
        {
            let addr = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("unreadable listen line: {line}"))?;
            return Ok((addr, invite));
        }
    }
}

impl Relay {
    /// Starts `binary serve` on `data` (initialised on first start), logging warnings only to
    /// `data/../server.log` (the benchmark measures the server, not its debug logging).
    pub fn start(binary: &Path, data: &Path) -> anyhow::Result<Relay> {
        let mut relay = Relay {
            binary: binary.to_owned(),
            data: data.to_owned(),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_invite: None,
        };
        relay.spawn()?;
        Ok(relay)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_path = self
            .data
            .parent()
            .unwrap_or(Path::new("."))
            .join("server.log");
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.addr.port()))
            // The fan-out scenario's one sender per team goes past the default 1,000 sends a
            // second per device at saturation: measure the server, not its rate limiter (the
            // limiter still checks every send).
            .arg("--sends-per-second")
            .arg("1000000")
            .env(
                "MEDRELAY_LOG",
                std::env::var("MEDRELAY_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("could not start {}", self.binary.display()))?;
        let (addr, invite) = wait_for_listening(&mut child)?;
        self.addr = addr;
        if invite.is_some() {
            self.admin_invite = invite;
        }
        self.child = Some(child);
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("not running"))
    }

    /// The development CA the server's certificate chains to.
    pub fn ca(&self) -> PathBuf {
        self.data.join("certs/ca.pem")
    }

    /// Stops the server and starts it again on the same data (a fresh process).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.take() {
            terminate(child)?;
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then wait; SIGKILL after 20 s.
fn terminate(mut child: Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("could not signal process {}", child.id());
    }
    for _ in 0..200 {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait()?;
    Ok(())
}

/// The transport-limit forwarder process.
#[derive(Debug)]
pub struct Forwarder {
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
}

impl Forwarder {
    /// Starts `binary` with the relay's certificate and key (same TLS stack, same certificate).
    pub fn start(binary: &Path, cert: &Path, key: &Path) -> anyhow::Result<Forwarder> {
        let mut child = Command::new(binary)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let (addr, _) = wait_for_listening(&mut child)?;
        Ok(Forwarder {
            child: Some(child),
            addr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("not running"))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Storage group-commit counters as the server reports them at `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct CommitCounters {
    /// Storage flushes so far.
    pub flushes: u64,
    /// Writers that waited for durability so far.
    pub syncs: u64,
    /// Microseconds spent in flushes so far.
    pub flush_us: u64,
    /// The longest flush so far, microseconds.
    pub slowest_flush_us: u64,
    /// Flushes so far by duration: (upper bound in µs, or `u64::MAX` for the last bucket;
    /// flushes at most that long), cumulative, in the order of the bounds.
    pub flush_buckets: Vec<(u64, u64)>,
}

/// Reads `/metrics` over HTTPS.
pub async fn metrics(
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<CommitCounters> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut stream = connector.connect(name, tcp).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    // hyper closes after answering `Connection: close`; a missing TLS close_notify is fine.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body)).await;
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .ok_or_else(|| anyhow!("/metrics has no {name}"))?
            .parse()
            .map_err(|e| anyhow!("/metrics {name}: {e}"))
    };
    Ok(CommitCounters {
        flushes: value("medrelay_storage_flushes_total ")?,
        syncs: value("medrelay_storage_syncs_total ")?,
        flush_us: value("medrelay_storage_flush_microseconds_total ")?,
        slowest_flush_us: value("medrelay_storage_flush_microseconds_max ")?,
        flush_buckets: flush_buckets(&text)?,
    })
}

/// The cumulative buckets of `medrelay_storage_flush_seconds` in a `/metrics` text.
fn flush_buckets(text: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut buckets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("medrelay_storage_flush_seconds_bucket{le=\"") else {
            continue;
        };
        let (le, count) = rest
            .split_once("\"} ")
            .ok_or_else(|| anyhow!("/metrics: unreadable bucket line {line:?}"))?;
        let bound_us = if le == "+Inf" {
            u64::MAX
        } else {
            let seconds: f64 = le
                .parse()
                .map_err(|e| anyhow!("/metrics bucket {le:?}: {e}"))?;
            (seconds * 1e6).round() as u64
        };
        let count = count
            .trim()
            .parse()
            .map_err(|e| anyhow!("/metrics bucket {le:?}: {e}"))?;
        buckets.push((bound_us, count));
    }
    if buckets.is_empty() {
        return Err(anyhow!(
            "/metrics has no medrelay_storage_flush_seconds histogram"
        ));
    }
    Ok(buckets)
}

/// The longest flush between two readings: exact when it was the server's longest so far
/// (the gauge rose), else the upper bound of the highest histogram bucket that gained a
/// flush (`(µs, exact)`); none when no flush happened.
pub fn slowest_flush_between(
    before: &CommitCounters,
    after: &CommitCounters,
) -> Option<(u64, bool)> {
    if after.slowest_flush_us > before.slowest_flush_us {
        return Some((after.slowest_flush_us, true));
    }
    let gained = |i: usize| {
        let now = after.flush_buckets.get(i).map_or(0, |b| b.1);
        let then = before.flush_buckets.get(i).map_or(0, |b| b.1);
        now.saturating_sub(then)
    };
    let total = gained(after.flush_buckets.len().checked_sub(1)?);
    if total == 0 {
        return None;
    }
    // Cumulative counts: the first bucket that gained them all bounds the slowest flush, and
    // so does the longest flush so far, which it did not beat.
    (0..after.flush_buckets.len())
        .find(|&i| gained(i) == total)
        .and_then(|i| after.flush_buckets.get(i))
        .map(|&(bound, _)| (bound.min(before.slowest_flush_us), false))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const METRICS: &str = "\
medrelay_storage_flush_microseconds_max 30000
medrelay_storage_flush_seconds_bucket{le=\"0.001\"} 4
medrelay_storage_flush_seconds_bucket{le=\"0.02\"} 9
medrelay_storage_flush_seconds_bucket{le=\"0.05\"} 10
medrelay_storage_flush_seconds_bucket{le=\"+Inf\"} 10
";

    fn counters(text: &str) -> CommitCounters {
        CommitCounters {
            slowest_flush_us: 30_000,
            flush_buckets: flush_buckets(text).unwrap(),
            ..CommitCounters::default()
        }
    }

    #[test]
    fn reads_the_flush_histogram() {
        assert_eq!(
            flush_buckets(METRICS).unwrap(),
            vec![(1_000, 4), (20_000, 9), (50_000, 10), (u64::MAX, 10)]
        );
        assert!(flush_buckets("medrelay_storage_flushes_total 3\n").is_err());
    }

    #[test]
    fn the_slowest_flush_is_bounded_by_the_highest_bucket_that_gained() {
        let before = counters(METRICS);
        // Two more flushes: one within 1 ms, one within 20 ms.
        let after = counters(
            &METRICS
                .replace("} 4", "} 5")
                .replace("} 9", "} 11")
                .replace("} 10", "} 12"),
        );
        assert_eq!(
            slowest_flush_between(&before, &after),
            Some((20_000, false))
        );
        assert_eq!(slowest_flush_between(&before, &before), None);
        // A flush past the last bound, when the record (30 ms) did not rise: the record bounds
        // it.
        let past = counters(&METRICS.replace("\"+Inf\"} 10", "\"+Inf\"} 11"));
        assert_eq!(slowest_flush_between(&before, &past), Some((30_000, false)));
        // A new longest flush is known exactly.
        let longer = CommitCounters {
            slowest_flush_us: 70_000,
            ..counters(&METRICS.replace("} 10", "} 11"))
        };
        assert_eq!(
            slowest_flush_between(&before, &longer),
            Some((70_000, true))
        );
    }
}
