//! Group commit: many writers, one flush.
//!
//! sled makes writes durable only when its log is flushed, and it does not coalesce concurrent
//! flushes: four writers that each flush get about as many durable writes per second as one.
//! So the server acknowledges a write only after [`GroupCommit::sync`] returns, and `sync`
//! shares flushes between everyone waiting.
//!
//! The rule that makes this correct: a write is covered by any flush that *starts* after the
//! write was applied. `sync` is called after the write, so it waits for the first flush that
//! starts after the call. While one flush runs, every `sync` that arrives asks for the next one;
//! when the running flush ends, one flush covers them all.
//!
//! [`GroupCommit::sync_then`] also runs an action once the write is durable, on the flusher,
//! before any waiter of that flush hears of it: the relay wakes a send's recipients there, so
//! a recipient waiting on the same flush (for its acknowledgement's answer) finds its new mail
//! already signalled when it wakes, and writes the answer and the deliveries together.
//!
//! Flushes start at least [`MIN_FLUSH_GAP`] apart. At light load a flush carries a message or
//! three, and the relay's CPU goes on the flush and its wake-ups rather than on the messages;
//! a short pause before the next flush lets the writes arriving meanwhile share it (the same
//! idea as PostgreSQL's `commit_delay`). The pause only follows a flush: a write that finds the
//! flusher idle for longer than the gap is flushed at once, and at saturation, where a flush
//! already takes longer than the gap, nothing waits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Something whose writes become durable when it is flushed (the sled database).
pub trait Flush: Send + Sync + 'static {
    /// Makes every write applied before this call durable.
    fn flush(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>>;
}

/// The least time between the starts of two flushes (see the module docs). Measured at 10% of
/// saturation, 1 ms cut the relay's CPU by a third and gave 14-19 messages per flush against 3,
/// for about 2 ms more at p50 (`bench/FINDINGS.md`).
pub const MIN_FLUSH_GAP: Duration = Duration::from_millis(1);

/// What to run once a flush covers a write: the generation it needs, and the action.
type After = (u64, Box<dyn FnOnce() + Send>);

/// Generations of flushes: requested by waiters, started and completed by the flusher.
#[derive(Default)]
struct Generations {
    requested: u64,
    started: u64,
    /// Actions waiting for their generation's flush, in the order they were asked for.
    after: Vec<After>,
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generations")
            .field("requested", &self.requested)
            .field("started", &self.started)
            .field("after", &self.after.len())
            .finish()
    }
}

/// The outcome of the latest completed flush, as seen by waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Completed {
    generation: u64,
    failed: bool,
}

/// Shares one storage flush among every writer waiting for durability.
#[derive(Debug)]
pub struct GroupCommit {
    generations: Mutex<Generations>,
    kick: Arc<tokio::sync::Notify>,
    completed: watch::Sender<Completed>,
    flushes: AtomicU64,
    syncs: AtomicU64,
    flush_us: AtomicU64,
    slowest_flush_us: AtomicU64,
    /// Flushes by duration: `flush_buckets[i]` counts those over the previous bound and at
    /// most `FLUSH_BUCKET_BOUNDS_US[i]`; the last counts those over every bound.
    flush_buckets: [AtomicU64; FLUSH_BUCKETS],
}

/// Upper bounds of the flush-duration histogram, microseconds (1 ms to 2 s).
pub const FLUSH_BUCKET_BOUNDS_US: [u64; 11] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
];
/// Buckets of the flush-duration histogram: one per bound, and one for longer flushes.
pub const FLUSH_BUCKETS: usize = FLUSH_BUCKET_BOUNDS_US.len() + 1;

/// The histogram bucket of a flush that took `us` microseconds.
fn flush_bucket(us: u64) -> usize {
    FLUSH_BUCKET_BOUNDS_US.partition_point(|&bound| bound < us)
}

/// Why a write could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The flush failed; the write may not be durable and must not be acknowledged.
    #[error("storage flush failed; the write was not acknowledged")]
    FlushFailed,
    /// The flusher has stopped (the server is shutting down).
    #[error("storage is shutting down")]
    Stopped,
}

/// Counters for the benchmarks and metrics: how well flushes are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Flushes performed.
    pub flushes: u64,
    /// Calls to `sync` (roughly: acknowledged writes).
    pub syncs: u64,
    /// Microseconds spent flushing, in all.
    pub flush_us: u64,
    /// The longest flush so far, in microseconds.
    pub slowest_flush_us: u64,
    /// Flushes so far by duration, per bucket of [`FLUSH_BUCKET_BOUNDS_US`] (not cumulative;
    /// the last bucket holds those longer than every bound).
    pub flush_buckets: [u64; FLUSH_BUCKETS],
}

impl GroupCommit {
    /// Starts the flusher task for `target` and returns the shared handle; flushes start at
    /// least [`MIN_FLUSH_GAP`] apart.
    pub fn start(target: Arc<dyn Flush>) -> Arc<Self> {
        Self::start_with_gap(target, MIN_FLUSH_GAP)
    }

    /// Like [`GroupCommit::start`], with flushes starting at least `gap` apart (tests use a
    /// gap of their own).
    fn start_with_gap(target: Arc<dyn Flush>, gap: Duration) -> Arc<Self> {
        let (completed, _) = watch::channel(Completed {
            generation: 0,
            failed: false,
        });
        let commit = Arc::new(GroupCommit {
            generations: Mutex::new(Generations::default()),
            kick: Arc::new(tokio::sync::Notify::new()),
            completed,
            flushes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            flush_us: AtomicU64::new(0),
            slowest_flush_us: AtomicU64::new(0),
            flush_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        let weak = Arc::downgrade(&commit);
        tokio::spawn(async move {
            loop {
                let Some(commit) = weak.upgrade() else { return };
                let Some(generation) = commit.next_generation() else {
                    // `notify_one` stores a permit when nobody waits, so a kick that lands
                    // between the check above and this wait is not lost. Hold no strong
                    // reference while idle, so the task ends with the last handle.
                    let kick = commit.kick.clone();
                    drop(commit);
                    kick.notified().await;
                    continue;
                };
                let started = Instant::now();
                let result = target.flush().await;
                if let Err(error) = &result {
                    tracing::error!(%error, "storage flush failed");
                }
                // The actions this flush covers run before its waiters hear of it; after a
                // failed flush they are dropped, since nothing they follow is durable.
                let covered = commit.take_covered(generation);
                if result.is_ok() {
                    for action in covered {
                        // A panicking action must not take the flusher with it: every
                        // later sync would wait forever.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(action)).is_err() {
                            tracing::error!("an action after a flush panicked; the flush stands");
                        }
                    }
                }
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                commit.flush_us.fetch_add(took, Ordering::Relaxed);
                commit.slowest_flush_us.fetch_max(took, Ordering::Relaxed);
                if let Some(bucket) = commit.flush_buckets.get(flush_bucket(took)) {
                    bucket.fetch_add(1, Ordering::Relaxed);
                }
                commit.flushes.fetch_add(1, Ordering::Relaxed);
                commit.completed.send_replace(Completed {
                    generation,
                    failed: result.is_err(),
                });
                // Writes arriving during the pause ask for the next flush and share it.
                drop(commit);
                tokio::time::sleep_until(started + gap).await;
            }
        });
        commit
    }

    /// Claims the next flush generation if anyone asked for one.
    fn next_generation(&self) -> Option<u64> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if generations.requested > generations.started {
            generations.started += 1;
            Some(generations.started)
        } else {
            None
        }
    }

    /// Takes the actions a flush of `generation` covers.
    fn take_covered(&self, generation: u64) -> Vec<Box<dyn FnOnce() + Send>> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if generations.after.is_empty() {
            return Vec::new();
        }
        let (covered, later) = std::mem::take(&mut generations.after)
            .into_iter()
            .partition::<Vec<_>, _>(|(need, _)| *need <= generation);
        generations.after = later;
        covered.into_iter().map(|(_, action)| action).collect()
    }

    /// Returns once every write applied before this call is durable.
    pub async fn sync(&self) -> Result<(), SyncError> {
        self.sync_inner(None).await
    }

    /// Like [`GroupCommit::sync`], and runs `after` once the write is durable: on the flusher,
    /// before this call or any other waiting on the same flush returns. If the flush fails,
    /// `after` is dropped without running. Every waiter of the flush waits for it: keep it
    /// quick (waking tasks, not work).
    pub async fn sync_then(&self, after: Box<dyn FnOnce() + Send>) -> Result<(), SyncError> {
        self.sync_inner(Some(after)).await
    }

    async fn sync_inner(&self, after: Option<Box<dyn FnOnce() + Send>>) -> Result<(), SyncError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let need = {
            let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
            let need = generations.started + 1;
            generations.requested = generations.requested.max(need);
            if let Some(after) = after {
                generations.after.push((need, after));
            }
            need
        };
        let mut completed = self.completed.subscribe();
        self.kick.notify_one();
        let outcome = completed
            .wait_for(|c| c.generation >= need)
            .await
            .map_err(|_| SyncError::Stopped)?;
        // A failed flush at or after our generation means we cannot promise durability.
        if outcome.failed {
            return Err(SyncError::FlushFailed);
        }
        Ok(())
    }

    /// How many flushes served how many syncs so far.
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            flush_us: self.flush_us.load(Ordering::Relaxed),
            slowest_flush_us: self.slowest_flush_us.load(Ordering::Relaxed),
            flush_buckets: std::array::from_fn(|i| {
                self.flush_buckets
                    .get(i)
                    .map_or(0, |bucket| bucket.load(Ordering::Relaxed))
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A flush target that records which writes each flush covered, and when each began.
    struct Recorder {
        applied: AtomicU64,
        durable: AtomicU64,
        fail: AtomicBool,
        takes: Duration,
        starts: Mutex<Vec<Instant>>,
    }

    impl Flush for Recorder {
        fn flush(&self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
            Box::pin(async move {
                self.starts.lock().unwrap().push(Instant::now());
                let snapshot = self.applied.load(Ordering::SeqCst);
                tokio::time::sleep(self.takes).await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err(io::Error::other("disk gone"));
                }
                self.durable.fetch_max(snapshot, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    /// A target whose flushes take 5 ms, longer than the gap: the gap never waits.
    fn recorder() -> Arc<Recorder> {
        recorder_taking(Duration::from_millis(5))
    }

    fn recorder_taking(takes: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            applied: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            fail: AtomicBool::new(false),
            takes,
            starts: Mutex::new(Vec::new()),
        })
    }

    const GAP: Duration = Duration::from_millis(10);
    const QUICK_FLUSH: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn flushes_start_at_least_the_gap_apart() {
        let target = recorder_taking(QUICK_FLUSH);
        let commit = GroupCommit::start_with_gap(target.clone(), GAP);
        for i in 1..=4 {
            target.applied.fetch_add(1, Ordering::SeqCst);
            commit.sync().await.unwrap();
            assert_eq!(target.durable.load(Ordering::SeqCst), i);
        }
        let starts = target.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 4);
        for (earlier, later) in starts.iter().zip(starts.iter().skip(1)) {
            let apart = *later - *earlier;
            assert!(apart >= GAP, "flushes started {apart:?} apart");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_arriving_during_the_gap_share_the_next_flush() {
        let target = recorder_taking(QUICK_FLUSH);
        let commit = GroupCommit::start_with_gap(target.clone(), GAP);
        commit.sync().await.unwrap();
        // One write right after the flush, one 5 ms later: without the gap each would get a
        // flush of its own; with it, both wait for the flush at 10 ms.
        let at_once = tokio::spawn({
            let commit = commit.clone();
            async move { commit.sync().await }
        });
        let later = tokio::spawn({
            let commit = commit.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                commit.sync().await
            }
        });
        at_once.await.unwrap().unwrap();
        later.await.unwrap().unwrap();
        assert_eq!(commit.stats().flushes, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_after_an_idle_spell_is_flushed_at_once() {
        let target = recorder_taking(QUICK_FLUSH);
        let commit = GroupCommit::start_with_gap(target.clone(), GAP);
        commit.sync().await.unwrap();
        tokio::time::sleep(GAP * 3).await;
        let asked = Instant::now();
        commit.sync().await.unwrap();
        assert_eq!(
            asked.elapsed(),
            QUICK_FLUSH,
            "the lone write waited for a gap"
        );
    }

    #[tokio::test]
    async fn every_synced_write_is_durable_and_flushes_are_shared() {
        let target = recorder();
        let commit = GroupCommit::start(target.clone());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let commit = commit.clone();
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mine = target.applied.fetch_add(1, Ordering::SeqCst) + 1;
                commit.sync().await.unwrap();
                assert!(target.durable.load(Ordering::SeqCst) >= mine);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stats = commit.stats();
        assert_eq!(stats.syncs, 200);
        assert!(
            stats.flushes < 50,
            "200 concurrent syncs took {} flushes",
            stats.flushes
        );
    }

    #[test]
    fn flush_bucket_bounds_rise() {
        let bounds = FLUSH_BUCKET_BOUNDS_US.iter();
        assert!(bounds.clone().zip(bounds.skip(1)).all(|(a, b)| a < b));
    }

    #[test]
    fn flush_buckets_hold_their_upper_bound() {
        assert_eq!(flush_bucket(0), 0);
        assert_eq!(flush_bucket(1_000), 0);
        assert_eq!(flush_bucket(1_001), 1);
        assert_eq!(flush_bucket(50_000), 5);
        assert_eq!(flush_bucket(2_000_000), FLUSH_BUCKETS - 2);
        assert_eq!(flush_bucket(2_000_001), FLUSH_BUCKETS - 1);
        assert_eq!(flush_bucket(u64::MAX), FLUSH_BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_flush_is_counted_in_the_bucket_of_its_duration() {
        let commit = GroupCommit::start_with_gap(recorder_taking(Duration::from_millis(30)), GAP);
        commit.sync().await.unwrap();
        commit.sync().await.unwrap();
        let stats = commit.stats();
        // 30 ms lies over the 20 ms bound and within the 50 ms one.
        let mut expected = [0; FLUSH_BUCKETS];
        expected[5] = 2;
        assert_eq!(stats.flush_buckets, expected);
        assert_eq!(stats.slowest_flush_us, 30_000);
    }

    #[tokio::test]
    async fn a_failed_flush_is_reported_to_its_waiters() {
        let target = recorder();
        target.fail.store(true, Ordering::SeqCst);
        let commit = GroupCommit::start(target.clone());
        assert!(matches!(commit.sync().await, Err(SyncError::FlushFailed)));
        target.fail.store(false, Ordering::SeqCst);
        commit.sync().await.unwrap();
    }

    #[tokio::test]
    async fn sequential_syncs_each_get_a_flush() {
        let target = recorder();
        let commit = GroupCommit::start(target.clone());
        for i in 1..=3 {
            target.applied.fetch_add(1, Ordering::SeqCst);
            commit.sync().await.unwrap();
            assert_eq!(target.durable.load(Ordering::SeqCst), i);
        }
        assert_eq!(commit.stats().flushes, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_action_runs_once_its_write_is_durable_before_any_waiter_returns() {
        let target = recorder();
        let commit = GroupCommit::start(target.clone());
        let seen = Arc::new(AtomicU64::new(0));
        let early = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (commit, target) = (commit.clone(), target.clone());
            let (seen, early) = (seen.clone(), early.clone());
            tasks.push(tokio::spawn(async move {
                let mine = target.applied.fetch_add(1, Ordering::SeqCst) + 1;
                let (durable, actions) = (target.clone(), seen.clone());
                commit
                    .sync_then(Box::new(move || {
                        if durable.durable.load(Ordering::SeqCst) < mine {
                            early.fetch_add(1, Ordering::SeqCst);
                        }
                        actions.fetch_add(1, Ordering::SeqCst);
                    }))
                    .await
                    .unwrap();
                mine
            }));
        }
        // Each action ran, after its write was durable, by the time its own sync returned.
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(seen.load(Ordering::SeqCst), 50);
        assert_eq!(
            early.load(Ordering::SeqCst),
            0,
            "actions ran before their write was durable"
        );

        // And one waiter on the same flush as an action sees it done.
        let action_ran = Arc::new(AtomicBool::new(false));
        let flag = action_ran.clone();
        // The action is slow, so a waiter woken before it ran would see it unfinished.
        let with_action = commit.sync_then(Box::new(move || {
            std::thread::sleep(Duration::from_millis(30));
            flag.store(true, Ordering::SeqCst);
        }));
        let plain = commit.sync();
        let (a, b) = tokio::join!(with_action, async {
            plain.await.unwrap();
            action_ran.load(Ordering::SeqCst)
        });
        a.unwrap();
        assert!(
            b,
            "a waiter of the same flush returned before the action ran"
        );
    }

    #[tokio::test]
    async fn a_failed_flush_drops_its_actions() {
        let target = recorder();
        target.fail.store(true, Ordering::SeqCst);
        let commit = GroupCommit::start(target.clone());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let result = commit
            .sync_then(Box::new(move || flag.store(true, Ordering::SeqCst)))
            .await;
        assert!(matches!(result, Err(SyncError::FlushFailed)));
        target.fail.store(false, Ordering::SeqCst);
        commit.sync().await.unwrap();
        assert!(
            !ran.load(Ordering::SeqCst),
            "an action ran after a failed flush"
        );
    }

    #[tokio::test]
    #[allow(clippy::panic)] // the action under test panics on purpose
    async fn a_panicking_action_does_not_stop_the_flusher() {
        let target = recorder();
        let commit = GroupCommit::start(target.clone());
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            commit.sync_then(Box::new(|| panic!("an action that fails"))),
        )
        .await;
        assert!(matches!(result, Ok(Ok(()))), "the flush itself succeeded");
        let later = tokio::time::timeout(Duration::from_secs(5), commit.sync()).await;
        assert!(
            matches!(later, Ok(Ok(()))),
            "the flusher stopped after a panic"
        );
    }
}
