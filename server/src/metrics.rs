//! `/metrics`: operational counters in the Prometheus text format. Counts only: no ids, no
//! handles, no addresses, nothing about who talks to whom, so no PHI can reach it.
//!
//! The storage counters show group commit at work (writers that waited for durability per
//! flush); the benchmarks read them to report messages per storage flush.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::group_commit::CommitStats;

/// Where the counters come from.
pub struct Metrics {
    commit_stats: Arc<dyn Fn() -> CommitStats + Send + Sync>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counters read through `commit_stats` (the store's group commit).
    pub fn new(commit_stats: impl Fn() -> CommitStats + Send + Sync + 'static) -> Metrics {
        Metrics {
            commit_stats: Arc::new(commit_stats),
        }
    }

    /// The text exposition, given the live connection count.
    pub fn render(&self, live_connections: usize) -> String {
        let stats = (self.commit_stats)();
        let mut out = String::new();
        let mut counter = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        counter(
            "medrelay_storage_flushes_total",
            "counter",
            "Storage flushes (each makes every write before it durable).",
            stats.flushes,
        );
        counter(
            "medrelay_storage_syncs_total",
            "counter",
            "Writes that waited for durability before being acknowledged.",
            stats.syncs,
        );
        counter(
            "medrelay_connections_live",
            "gauge",
            "WebSocket connections open now.",
            live_connections as u64,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_counters_and_nothing_else() {
        let metrics = Metrics::new(|| CommitStats {
            flushes: 3,
            syncs: 70,
        });
        let text = metrics.render(5);
        assert!(text.contains("\nmedrelay_storage_flushes_total 3\n"));
        assert!(text.contains("\nmedrelay_storage_syncs_total 70\n"));
        assert!(text.contains("\nmedrelay_connections_live 5\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 3);
    }
}
