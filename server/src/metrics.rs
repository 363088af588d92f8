//! `/metrics`: operational counters in the Prometheus text format. Counts only: no ids, no
//! handles, no addresses, nothing about who talks to whom, so no PHI can reach it.
//!
//! The storage counters show group commit at work (writers that waited for durability per
//! flush); the benchmarks read them to report messages per storage flush.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::group_commit::{CommitStats, FLUSH_BUCKET_BOUNDS_US};
use crate::store::mail_state::MailStats;

/// Where the counters come from.
pub struct Metrics {
    commit_stats: Arc<dyn Fn() -> CommitStats + Send + Sync>,
    mail_stats: Arc<dyn Fn() -> MailStats + Send + Sync>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counters read through `commit_stats` (the store's group commit) and `mail_stats`
    /// (the mail log).
    pub fn new(
        commit_stats: impl Fn() -> CommitStats + Send + Sync + 'static,
        mail_stats: impl Fn() -> MailStats + Send + Sync + 'static,
    ) -> Metrics {
        Metrics {
            commit_stats: Arc::new(commit_stats),
            mail_stats: Arc::new(mail_stats),
        }
    }

    /// The text exposition, given the live connection count.
    pub fn render(&self, live_connections: usize) -> String {
        let stats = (self.commit_stats)();
        let mail = (self.mail_stats)();
        let mut out = String::new();
        counter(
            &mut out,
            "medrelay_storage_flushes_total",
            "counter",
            "Storage flushes (each makes every write before it durable).",
            stats.flushes,
        );
        counter(
            &mut out,
            "medrelay_storage_syncs_total",
            "counter",
            "Writes that waited for durability before being acknowledged.",
            stats.syncs,
        );
        counter(
            &mut out,
            "medrelay_storage_flush_microseconds_total",
            "counter",
            "Time spent in storage flushes (writing what waits, then syncing).",
            stats.flush_us,
        );
        counter(
            &mut out,
            "medrelay_storage_flush_microseconds_max",
            "gauge",
            "The longest storage flush since the server started.",
            stats.slowest_flush_us,
        );
        flush_histogram(&mut out, &stats);
        counter(
            &mut out,
            "medrelay_mail_waiting_deliveries",
            "gauge",
            "Deliveries waiting for their devices, over all devices.",
            mail.waiting_deliveries,
        );
        counter(
            &mut out,
            "medrelay_mail_log_rows",
            "gauge",
            "Rows of the mail log on disk or being written.",
            mail.groups,
        );
        counter(
            &mut out,
            "medrelay_mail_idempotency_records",
            "gauge",
            "Sends remembered so that a repeated send is not stored twice.",
            mail.idempotency_records,
        );
        counter(
            &mut out,
            "medrelay_mail_cached_bytes",
            "gauge",
            "Bytes of recent ciphertext kept in memory for delivery.",
            mail.cached_bytes,
        );
        counter(
            &mut out,
            "medrelay_connections_live",
            "gauge",
            "WebSocket connections open now.",
            live_connections as u64,
        );
        out
    }
}

/// One counter or gauge in the text format.
fn counter(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Flush durations as a Prometheus histogram (cumulative buckets, in seconds): what a
/// dashboard or the benchmarks diff between two readings to see how long the flushes of that
/// span took, where the longest-ever gauge says nothing once an earlier flush was longer.
fn flush_histogram(out: &mut String, stats: &CommitStats) {
    let name = "medrelay_storage_flush_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Storage flushes by how long they took (waiting for a thread, writing what \
         waits, syncing, then waking those it made durable)."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (bound_us, count) in FLUSH_BUCKET_BOUNDS_US.iter().zip(stats.flush_buckets) {
        cumulative += count;
        let le = *bound_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let total: u64 = stats.flush_buckets.iter().sum();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum {}", stats.flush_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {total}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_counters_and_nothing_else() {
        let metrics = Metrics::new(
            || CommitStats {
                flushes: 3,
                syncs: 70,
                flush_us: 9_000,
                slowest_flush_us: 4_000,
                flush_buckets: [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            },
            || MailStats {
                waiting_sends: 1,
                waiting_deliveries: 2,
                groups: 3,
                idempotency_records: 4,
                cached_bytes: 5,
            },
        );
        let text = metrics.render(5);
        assert!(text.contains("\nmedrelay_storage_flushes_total 3\n"));
        assert!(text.contains("\nmedrelay_storage_syncs_total 70\n"));
        assert!(text.contains("\nmedrelay_storage_flush_microseconds_total 9000\n"));
        assert!(text.contains("\nmedrelay_storage_flush_microseconds_max 4000\n"));
        assert!(text.contains("\nmedrelay_connections_live 5\n"));
        assert!(text.contains("\nmedrelay_mail_log_rows 3\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_bucket{le=\"2\"} 2\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_sum 0.009\n"));
        assert!(text.contains("\nmedrelay_storage_flush_seconds_count 3\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 9 + 14);
    }
}
