//! The load engine shared by every system under test: flows (one sender each) with a window of
//! messages in flight, receivers that report deliveries, and two ways to drive the senders:
//! saturation (keep the window full: the highest sustained rate) and open loop at a fixed rate
//! (latency measured from the *scheduled* send time, so a stalled server cannot hide its stall
//! by slowing the load down: no coordinated omission).
//!
//! Each payload starts with a 16-byte header (flow index, sequence, send time); the rest is
//! fixed random bytes standing in for ciphertext, encrypted once ahead of time, so the run
//! measures the server and not client crypto.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngCore;
use tokio::sync::{watch, Semaphore, TryAcquireError};

/// Bytes of the header at the start of every payload.
pub const HEADER_LEN: usize = 16;
/// Most messages a sender writes before one flush.
pub const MAX_SEND_BATCH: usize = 64;

/// What the senders are doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Nothing; wait.
    Idle,
    /// Keep every flow's window full.
    Saturate,
    /// Open loop at this many sends per second per flow.
    Rate(f64),
    /// Stop for good.
    Done,
}

/// Where a sender flow is waiting, for the report of flows that fall behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowWait {
    /// Between phases.
    Idle = 0,
    /// For its next scheduled send time.
    Turn = 1,
    /// For room in its window (deliveries of its earlier sends).
    Window = 2,
    /// For its socket to take a message.
    Write = 3,
    /// For its socket to flush.
    Flush = 4,
    /// It has ended.
    Ended = 5,
}

impl FlowWait {
    fn from_u8(value: u8) -> FlowWait {
        match value {
            1 => FlowWait::Turn,
            2 => FlowWait::Window,
            3 => FlowWait::Write,
            4 => FlowWait::Flush,
            5 => FlowWait::Ended,
            _ => FlowWait::Idle,
        }
    }

    /// What the report says of it.
    pub fn describe(self) -> &'static str {
        match self {
            FlowWait::Idle => "idle",
            FlowWait::Turn => "waiting for its next send time",
            FlowWait::Window => "waiting for room in its window",
            FlowWait::Write => "waiting for its socket to take a message",
            FlowWait::Flush => "waiting for its socket to flush",
            FlowWait::Ended => "ended",
        }
    }
}

/// Counters and latencies shared by senders and receivers.
#[derive(Debug)]
pub struct Tracker {
    epoch: Instant,
    windows: Vec<Semaphore>,
    /// Sends per flow, and where each flow waits now.
    flow_sent: Vec<AtomicU64>,
    flow_wait: Vec<AtomicU8>,
    /// Deliveries a send produces (fan-out); a send takes that many window permits.
    pub fan_out: u32,
    delivered: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    recording: AtomicBool,
    latencies: Mutex<Histogram<u64>>,
}

/// A histogram of latencies in microseconds, 1 µs to 100 s at 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

impl Tracker {
    /// A tracker for `flows` senders, each allowed `window` deliveries in flight, each send
    /// producing `fan_out` deliveries.
    pub fn new(flows: usize, window: u32, fan_out: u32) -> anyhow::Result<Arc<Tracker>> {
        Ok(Arc::new(Tracker {
            epoch: Instant::now(),
            windows: (0..flows)
                .map(|_| Semaphore::new((window * fan_out) as usize))
                .collect(),
            flow_sent: (0..flows).map(|_| AtomicU64::new(0)).collect(),
            flow_wait: (0..flows).map(|_| AtomicU8::new(0)).collect(),
            fan_out,
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            recording: AtomicBool::new(false),
            latencies: Mutex::new(histogram()?),
        }))
    }

    /// Unblocks every sender waiting for its window (at the end of a run).
    pub fn close_windows(&self) {
        for window in &self.windows {
            window.close();
        }
    }

    /// Nanoseconds since the tracker was made (the clock of the payload headers).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant of `ns` on that clock.
    pub fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// A receiver got the payload starting with `header`.
    pub fn delivered(&self, payload: &[u8]) {
        let Some((flow, _seq, sent_ns)) = parse_header(payload) else {
            self.error("a delivery without a benchmark header");
            return;
        };
        if self.recording.load(Ordering::Relaxed) {
            let latency_us = self.now_ns().saturating_sub(sent_ns) / 1000;
            let mut latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            let _ = latencies.record(latency_us.max(1));
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(window) = self.windows.get(flow as usize) {
            window.add_permits(1);
        }
    }

    /// Something went wrong that the run should report (an error answer, a lost connection).
    pub fn error(&self, what: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(what.to_owned());
        }
    }

    /// Deliveries so far.
    pub fn delivered_count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sends so far (every flow's).
    pub fn sent_count(&self) -> u64 {
        self.flow_sent
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Sends so far, per flow.
    pub fn flow_sent(&self) -> Vec<u64> {
        self.flow_sent
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Where `flow` waits now.
    pub fn flow_wait(&self, flow: usize) -> FlowWait {
        self.flow_wait.get(flow).map_or(FlowWait::Ended, |w| {
            FlowWait::from_u8(w.load(Ordering::Relaxed))
        })
    }

    fn count_sent(&self, flow: u32, batch: usize) {
        if let Some(n) = self.flow_sent.get(flow as usize) {
            n.fetch_add(batch as u64, Ordering::Relaxed);
        }
    }

    fn waits(&self, flow: u32, wait: FlowWait) {
        if let Some(w) = self.flow_wait.get(flow as usize) {
            w.store(wait as u8, Ordering::Relaxed);
        }
    }

    /// Errors so far, and the first one.
    pub fn errors(&self) -> (u64, Option<String>) {
        (
            self.errors.load(Ordering::Relaxed),
            self.first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Starts recording latencies afresh.
    pub fn start_recording(&self) {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops recording and returns what was recorded.
    pub fn stop_recording(&self) -> Histogram<u64> {
        self.recording.store(false, Ordering::Relaxed);
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Writes the header into `payload`.
pub fn stamp(payload: &mut [u8], flow: u32, seq: u32, sent_ns: u64) {
    let mut header = [0u8; HEADER_LEN];
    for (slot, byte) in header.iter_mut().zip(
        flow.to_be_bytes()
            .into_iter()
            .chain(seq.to_be_bytes())
            .chain(sent_ns.to_be_bytes()),
    ) {
        *slot = byte;
    }
    if let Some(start) = payload.get_mut(..HEADER_LEN) {
        start.copy_from_slice(&header);
    }
}

/// Reads a header: (flow, sequence, send time in ns).
pub fn parse_header(payload: &[u8]) -> Option<(u32, u32, u64)> {
    let header = payload.get(..HEADER_LEN)?;
    Some((
        u32::from_be_bytes(header.get(..4)?.try_into().ok()?),
        u32::from_be_bytes(header.get(4..8)?.try_into().ok()?),
        u64::from_be_bytes(header.get(8..16)?.try_into().ok()?),
    ))
}

/// A payload of `len` random bytes (at least the header), standing in for ciphertext.
pub fn payload_template(len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len.max(HEADER_LEN)];
    rand::rngs::OsRng.fill_bytes(&mut payload);
    payload
}

/// One sender's way of putting a message on the wire.
pub trait FrameSink: Send + 'static {
    /// Queues one message for `flow`, stamped with `seq` and `sent_ns`.
    fn feed(
        &mut self,
        flow: u32,
        seq: u32,
        sent_ns: u64,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Writes everything queued.
    fn flush(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Drives one flow's sender through the phases until [`Phase::Done`]; returns the sink.
pub async fn drive<S: FrameSink>(
    sink: S,
    flow: u32,
    flows: u32,
    tracker: Arc<Tracker>,
    phases: watch::Receiver<Phase>,
) -> S {
    let sink = drive_phases(sink, flow, flows, &tracker, phases).await;
    tracker.waits(flow, FlowWait::Ended);
    sink
}

async fn drive_phases<S: FrameSink>(
    mut sink: S,
    flow: u32,
    flows: u32,
    tracker: &Arc<Tracker>,
    mut phases: watch::Receiver<Phase>,
) -> S {
    let Some(window) = tracker.windows.get(flow as usize) else {
        return sink;
    };
    let permits = tracker.fan_out;
    let mut seq: u32 = 0;
    loop {
        let phase = *phases.borrow_and_update();
        let result: anyhow::Result<()> = match phase {
            Phase::Done => return sink,
            Phase::Idle => {
                tracker.waits(flow, FlowWait::Idle);
                if phases.changed().await.is_err() {
                    return sink;
                }
                Ok(())
            }
            Phase::Saturate => loop {
                tracker.waits(flow, FlowWait::Window);
                tokio::select! {
                    changed = phases.changed() => {
                        if changed.is_err() { return sink; }
                        break Ok(());
                    }
                    permit = window.acquire_many(permits) => {
                        let Ok(permit) = permit else { return sink };
                        permit.forget();
                        tracker.waits(flow, FlowWait::Write);
                        let mut result = sink.feed(flow, seq, tracker.now_ns()).await;
                        seq = seq.wrapping_add(1);
                        let mut batch = 1;
                        while result.is_ok() && batch < MAX_SEND_BATCH {
                            let Ok(permit) = window.try_acquire_many(permits) else { break };
                            permit.forget();
                            result = sink.feed(flow, seq, tracker.now_ns()).await;
                            seq = seq.wrapping_add(1);
                            batch += 1;
                        }
                        tracker.count_sent(flow, batch);
                        if result.is_ok() {
                            tracker.waits(flow, FlowWait::Flush);
                            result = sink.flush().await;
                        }
                        if let Err(error) = result {
                            break Err(error);
                        }
                    }
                }
            },
            Phase::Rate(per_second) => {
                let interval_ns = (1e9 / per_second.max(1e-3)) as u64;
                // Spread the flows over one interval so they do not send in lockstep.
                let mut next_ns =
                    tracker.now_ns() + interval_ns * u64::from(flow) / u64::from(flows.max(1));
                loop {
                    let due = tracker.instant(next_ns);
                    tracker.waits(flow, FlowWait::Turn);
                    tokio::select! {
                        changed = phases.changed() => {
                            if changed.is_err() { return sink; }
                            break Ok(());
                        }
                        () = tokio::time::sleep_until(due.into()) => {}
                    }
                    let mut result = Ok(());
                    let mut batch = 0;
                    let mut unflushed = 0;
                    // Everything due by now goes out in one flush, unless the window fills
                    // first: what is fed is not on the wire until flushed, and only its
                    // delivery makes room, so flush it before waiting for room. (Waiting
                    // with it unflushed, a flow that fell a window behind waited for itself
                    // for the rest of the run.)
                    while next_ns <= tracker.now_ns() && batch < MAX_SEND_BATCH && result.is_ok() {
                        match window.try_acquire_many(permits) {
                            Ok(permit) => permit.forget(),
                            Err(TryAcquireError::Closed) => return sink,
                            Err(TryAcquireError::NoPermits) => {
                                if unflushed > 0 {
                                    tracker.count_sent(flow, unflushed);
                                    unflushed = 0;
                                    tracker.waits(flow, FlowWait::Flush);
                                    result = sink.flush().await;
                                    if result.is_err() {
                                        break;
                                    }
                                }
                                tracker.waits(flow, FlowWait::Window);
                                match window.acquire_many(permits).await {
                                    Ok(permit) => permit.forget(),
                                    Err(_) => return sink,
                                }
                            }
                        }
                        tracker.waits(flow, FlowWait::Write);
                        result = sink.feed(flow, seq, next_ns).await;
                        seq = seq.wrapping_add(1);
                        next_ns += interval_ns;
                        batch += 1;
                        unflushed += 1;
                    }
                    tracker.count_sent(flow, unflushed);
                    if result.is_ok() && unflushed > 0 {
                        tracker.waits(flow, FlowWait::Flush);
                        result = sink.flush().await;
                    }
                    if let Err(error) = result {
                        break Err(error);
                    }
                }
            }
        };
        if let Err(error) = result {
            tracker.error(&format!("sender {flow}: {error}"));
            return sink;
        }
    }
}

/// What one measured phase gave.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Seconds measured.
    pub seconds: f64,
    /// Deliveries in that time.
    pub delivered: u64,
    /// Sends in that time.
    pub sent: u64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Server CPU microseconds in that time.
    pub server_cpu_us: u64,
    /// Send-to-deliver latencies (µs).
    pub latency: Histogram<u64>,
    /// Storage flushes in that time (relay only).
    pub flushes: Option<u64>,
    /// Durability waits in that time (relay only).
    pub syncs: Option<u64>,
    /// Microseconds spent in storage flushes in that time (relay only).
    pub flush_us: Option<u64>,
    /// The longest storage flush of that time, microseconds, and whether that is exact (it
    /// was the server's longest so far) or the upper bound of its histogram bucket; none
    /// when no flush happened (or not the relay).
    pub slowest_flush: Option<(u64, bool)>,
    /// Flows that sent less than half of what the phase asked of them (none at all, at
    /// saturation): how many, and the first few, each with where it waited at the end.
    pub flows_behind: usize,
    pub flows_behind_detail: Vec<String>,
}

impl Measured {
    /// Server CPU per delivered message, µs.
    pub fn cpu_us_per_msg(&self) -> f64 {
        if self.delivered == 0 {
            return 0.0;
        }
        self.server_cpu_us as f64 / self.delivered as f64
    }

    /// Latency quantile in ms.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}
