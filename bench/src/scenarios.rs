//! The scenarios: how each system is loaded and what is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{Target, Ws};
use crate::clinic::{recipients, Clinic, Device};
use crate::load::{drive, FrameSink, Measured, Phase, Tracker};
use crate::procfs;
use crate::server::{metrics, slowest_flush_between, CommitCounters};
use crate::transport::{
    forwarder_receiver, relay_receiver, relay_sender_replies, SendFrames, WsSink,
};

/// How long phases last.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub measure: Duration,
    /// The open-loop phase's rate as a fraction of the saturation rate (0.5 for the report:
    /// "half load"; other values explore the latency curve).
    pub open_loop_fraction: f64,
}

/// One measured phase, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Sends per second.
    pub sent_per_s: f64,
    /// Server CPU µs per delivered message.
    pub server_cpu_us_per_msg: f64,
    /// Server CPU use, in cores.
    pub server_cores: f64,
    /// Send-to-deliver latency, ms.
    pub p50_ms: f64,
    /// Send-to-deliver latency, ms.
    pub p99_ms: f64,
    /// Send-to-deliver latency, ms.
    pub p999_ms: f64,
    /// Send-to-deliver latency, ms.
    pub max_ms: f64,
    /// Messages made durable per storage flush (relay only).
    pub msgs_per_flush: Option<f64>,
    /// Storage flushes per second (relay only).
    pub flushes_per_s: Option<f64>,
    /// Mean time of one storage flush, ms (relay only).
    pub flush_ms_mean: Option<f64>,
    /// The longest storage flush of the phase, ms (relay only): exact when it was the
    /// server's longest so far, else the upper bound of its bucket in the server's histogram
    /// of flush durations (see `slowest_flush_exact`). Tells a stall in the flush from one
    /// elsewhere.
    pub slowest_flush_ms: Option<f64>,
    /// Whether `slowest_flush_ms` is the flush's own duration or its bucket's upper bound.
    pub slowest_flush_exact: Option<bool>,
    /// Sender flows that fell behind (see `Measured::flows_behind`), and the first few.
    pub flows_behind: usize,
    pub flows_behind_detail: Vec<String>,
}

impl PhaseReport {
    fn from(m: &Measured) -> PhaseReport {
        let round = |x: f64, digits: i32| {
            let f = 10f64.powi(digits);
            (x * f).round() / f
        };
        PhaseReport {
            delivered_per_s: round(m.delivered_per_s, 0),
            sent_per_s: round(m.sent as f64 / m.seconds, 0),
            server_cpu_us_per_msg: round(m.cpu_us_per_msg(), 2),
            server_cores: round(m.server_cpu_us as f64 / 1e6 / m.seconds, 2),
            p50_ms: round(m.latency_ms(0.5), 3),
            p99_ms: round(m.latency_ms(0.99), 3),
            p999_ms: round(m.latency_ms(0.999), 3),
            max_ms: round(m.latency.max() as f64 / 1000.0, 3),
            msgs_per_flush: match (m.syncs, m.flushes) {
                (Some(s), Some(f)) if f > 0 => Some(round(s as f64 / f as f64, 1)),
                _ => None,
            },
            flushes_per_s: m.flushes.map(|f| round(f as f64 / m.seconds, 0)),
            flush_ms_mean: match (m.flush_us, m.flushes) {
                (Some(us), Some(f)) if f > 0 => Some(round(us as f64 / f as f64 / 1000.0, 2)),
                _ => None,
            },
            slowest_flush_ms: m.slowest_flush.map(|(us, _)| round(us as f64 / 1000.0, 2)),
            slowest_flush_exact: m.slowest_flush.map(|(_, exact)| exact),
            flows_behind: m.flows_behind,
            flows_behind_detail: m.flows_behind_detail.clone(),
        }
    }
}

/// The rate of an extra open-loop phase, measured after the half-load one.
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    /// A fraction of the system's own saturation rate.
    OfSaturation(f64),
    /// A delivered rate in msgs/s (another system's, to compare both at the same load).
    Delivered(f64),
}

/// An extra open-loop phase: a point on the latency curve.
#[derive(Debug, Clone)]
pub struct ExtraPhase {
    /// What the report calls it.
    pub name: String,
    /// At what rate.
    pub rate: Rate,
}

/// The figures of one extra open-loop phase.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraReport {
    /// What the report calls it.
    pub name: String,
    /// The rate as a fraction of the system's saturation.
    pub fraction_of_saturation: f64,
    /// The figures.
    pub phase: PhaseReport,
}

/// Saturation and half-load results of one system.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The highest sustained rate (every flow's window kept full).
    pub saturation: PhaseReport,
    /// Open loop at half the saturation rate.
    pub half_load: PhaseReport,
    /// Further open-loop phases, if asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<ExtraReport>,
    /// Errors seen (and the first).
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

/// Where the counters of the system under test come from.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Processes whose CPU time counts as the server's.
    pub pids: Vec<u32>,
    /// The relay's `/metrics` (address and TLS), for group-commit counters.
    pub metrics: Option<Target>,
}

impl Probe {
    async fn counters(&self) -> anyhow::Result<Option<CommitCounters>> {
        match &self.metrics {
            Some(target) => Ok(Some(metrics(target.addr, target.tls.clone()).await?)),
            None => Ok(None),
        }
    }
}

/// Runs one phase: warm up, then measure.
pub async fn measure(
    tracker: &Tracker,
    phases: &watch::Sender<Phase>,
    phase: Phase,
    timing: Timing,
    probe: &Probe,
) -> anyhow::Result<Measured> {
    phases.send_replace(phase);
    tokio::time::sleep(timing.warmup).await;
    let commit0 = probe.counters().await?;
    let cpu0 = procfs::sample(&probe.pids)?;
    let delivered0 = tracker.delivered_count();
    let sent0 = tracker.sent_count();
    let flows0 = tracker.flow_sent();
    let flows_at0 = Instant::now();
    tracker.start_recording();
    tokio::time::sleep(timing.measure).await;
    let delivered1 = tracker.delivered_count();
    let sent1 = tracker.sent_count();
    let flows1 = tracker.flow_sent();
    let flows_seconds = flows_at0.elapsed().as_secs_f64();
    let cpu1 = procfs::sample(&probe.pids)?;
    let latency = tracker.stop_recording();
    let commit1 = probe.counters().await?;
    let seconds = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let delivered = delivered1 - delivered0;
    let sent_by_flow: Vec<u64> = flows0
        .iter()
        .zip(&flows1)
        .map(|(before, after)| after - before)
        .collect();
    let floor = behind_floor(phase, flows_seconds, &sent_by_flow);
    let behind: Vec<String> = sent_by_flow
        .iter()
        .enumerate()
        .filter(|(_, sent)| (**sent as f64) < floor)
        .map(|(flow, sent)| {
            format!(
                "flow {flow}: {sent} sent, {}",
                tracker.flow_wait(flow).describe()
            )
        })
        .collect();
    if !behind.is_empty() {
        eprintln!(
            "warning: {} of {} flows fell behind in this phase (first: {})",
            behind.len(),
            flows1.len(),
            behind.first().map_or("", String::as_str)
        );
    }
    Ok(Measured {
        seconds,
        delivered,
        sent: sent1 - sent0,
        delivered_per_s: delivered as f64 / seconds,
        server_cpu_us: cpu1.cpu_us.saturating_sub(cpu0.cpu_us),
        latency,
        flushes: commit0
            .as_ref()
            .zip(commit1.as_ref())
            .map(|(a, b)| b.flushes.saturating_sub(a.flushes)),
        syncs: commit0
            .as_ref()
            .zip(commit1.as_ref())
            .map(|(a, b)| b.syncs.saturating_sub(a.syncs)),
        flush_us: commit0
            .as_ref()
            .zip(commit1.as_ref())
            .map(|(a, b)| b.flush_us.saturating_sub(a.flush_us)),
        slowest_flush: commit0
            .as_ref()
            .zip(commit1.as_ref())
            .and_then(|(a, b)| slowest_flush_between(a, b)),
        flows_behind: behind.len(),
        flows_behind_detail: behind.into_iter().take(5).collect(),
    })
}

/// Fewer sends than this in a phase of `seconds` put a flow behind: under half its share in
/// an open-loop phase (judged only where a share is at least two sends, so a healthy flow's
/// schedule cannot put it there), under half the median flow's sends at saturation.
fn behind_floor(phase: Phase, seconds: f64, sent_by_flow: &[u64]) -> f64 {
    match phase {
        Phase::Rate(per_flow) if per_flow * seconds >= 2.0 => per_flow * seconds / 2.0,
        Phase::Rate(_) => 0.0,
        _ => {
            let mut sorted = sent_by_flow.to_vec();
            sorted.sort_unstable();
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
            (median as f64 / 2.0).max(0.5)
        }
    }
}

/// Stops the senders and waits until every message sent has been delivered (or `limit`).
async fn settle(tracker: &Tracker, phases: &watch::Sender<Phase>, limit: Duration) {
    phases.send_replace(Phase::Idle);
    let deadline = Instant::now() + limit;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while tracker.delivered_count() < tracker.sent_count() * u64::from(tracker.fan_out)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = tracker.sent_count() * u64::from(tracker.fan_out);
    if tracker.delivered_count() < expected {
        tracker.error(&format!(
            "{} of {} messages not delivered when the load stopped",
            expected - tracker.delivered_count(),
            expected
        ));
    }
}

/// What [`saturate_then_half`] measured.
struct Phases {
    saturation: Measured,
    half: Measured,
    extra: Vec<(String, f64, Measured)>,
}

/// One open-loop phase at `delivered_per_s`, then settle.
async fn open_loop(
    tracker: &Arc<Tracker>,
    phases: &watch::Sender<Phase>,
    flows: usize,
    delivered_per_s: f64,
    timing: Timing,
    probe: &Probe,
    label: &str,
) -> anyhow::Result<Measured> {
    let sends_per_s = delivered_per_s / f64::from(tracker.fan_out);
    let per_flow = sends_per_s / flows.max(1) as f64;
    eprintln!("[{label}]: {sends_per_s:.0} sends/s");
    let measured = measure(tracker, phases, Phase::Rate(per_flow), timing, probe).await?;
    eprintln!(
        "[{label}]: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
        measured.latency_ms(0.5),
        measured.latency_ms(0.99),
        measured.latency_ms(0.999)
    );
    settle(tracker, phases, Duration::from_secs(30)).await;
    Ok(measured)
}

/// Saturation, then open loop at half of it (the shape every system is measured with), then
/// the `extra` open-loop phases.
async fn saturate_then_half(
    tracker: &Arc<Tracker>,
    phases: &watch::Sender<Phase>,
    flows: usize,
    timing: Timing,
    probe: &Probe,
    label: &str,
    extra: &[ExtraPhase],
) -> anyhow::Result<Phases> {
    eprintln!("[{label}] saturation");
    let saturation = measure(tracker, phases, Phase::Saturate, timing, probe).await?;
    eprintln!(
        "[{label}] saturation: {:.0} delivered/s, {:.2} µs server CPU per message",
        saturation.delivered_per_s,
        saturation.cpu_us_per_msg()
    );
    settle(tracker, phases, Duration::from_secs(30)).await;
    let half_name = if timing.open_loop_fraction == 0.5 {
        "half load".to_owned()
    } else {
        format!("{:.0}% load", timing.open_loop_fraction * 100.0)
    };
    let half = open_loop(
        tracker,
        phases,
        flows,
        saturation.delivered_per_s * timing.open_loop_fraction,
        timing,
        probe,
        &format!("{label} {half_name}"),
    )
    .await?;
    let mut measured = Vec::with_capacity(extra.len());
    for phase in extra {
        let delivered_per_s = match phase.rate {
            Rate::OfSaturation(fraction) => saturation.delivered_per_s * fraction,
            Rate::Delivered(rate) => rate,
        };
        let m = open_loop(
            tracker,
            phases,
            flows,
            delivered_per_s,
            timing,
            probe,
            &format!("{label} {}", phase.name),
        )
        .await?;
        let fraction = delivered_per_s / saturation.delivered_per_s.max(1.0);
        measured.push((phase.name.clone(), fraction, m));
    }
    Ok(Phases {
        saturation,
        half,
        extra: measured,
    })
}

fn report(tracker: &Tracker, measured: &Phases) -> LoadReport {
    let (errors, first_error) = tracker.errors();
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    LoadReport {
        saturation: PhaseReport::from(&measured.saturation),
        half_load: PhaseReport::from(&measured.half),
        extra: measured
            .extra
            .iter()
            .map(|(name, fraction, m)| ExtraReport {
                name: name.clone(),
                fraction_of_saturation: round3(*fraction),
                phase: PhaseReport::from(m),
            })
            .collect(),
        errors,
        first_error,
    }
}

/// Spawns the senders (sinks) and returns a join set yielding nothing useful: they run until
/// [`Phase::Done`].
fn spawn_senders<S: FrameSink>(
    sinks: Vec<S>,
    tracker: &Arc<Tracker>,
    phases: &watch::Receiver<Phase>,
    tasks: &mut JoinSet<()>,
) {
    let flows = sinks.len() as u32;
    for (flow, sink) in sinks.into_iter().enumerate() {
        let tracker = tracker.clone();
        let phases = phases.clone();
        tasks.spawn(async move {
            drop(drive(sink, flow as u32, flows, tracker, phases).await);
        });
    }
}

async fn finish(tracker: &Tracker, phases: &watch::Sender<Phase>, mut tasks: JoinSet<()>) {
    phases.send_replace(Phase::Done);
    tracker.close_windows();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut deadline => { tasks.abort_all(); break }
        }
    }
}

/// Flows for a relay load: a sender device, its conversation, the receivers.
#[derive(Debug, Clone)]
pub struct RelayFlow {
    /// Who sends.
    pub sender: Device,
    /// Where.
    pub conversation: medrelay_proto::ConversationId,
}

/// Relay load: `flows` senders (each with `window` sends in flight), `receivers` online,
/// `fan_out` deliveries per send, 1 KiB envelopes.
#[allow(clippy::too_many_arguments)] // each is a different knob of one scenario
pub async fn relay_load(
    target: &Target,
    flows: &[RelayFlow],
    receivers: &[Device],
    window: u32,
    payload: Arc<Vec<u8>>,
    timing: Timing,
    probe: &Probe,
    label: &str,
    extra: &[ExtraPhase],
) -> anyhow::Result<LoadReport> {
    let first = flows.first().ok_or_else(|| anyhow!("no flows"))?;
    let mut conn = first.sender.connect(target, false).await?;
    let fan_out = recipients(&mut conn, first.conversation, first.sender.id)
        .await?
        .len();
    conn.close().await;
    let tracker = Tracker::new(flows.len(), window, fan_out as u32)?;
    let (phases_tx, phases) = watch::channel(Phase::Idle);
    let mut tasks = JoinSet::new();
    for device in receivers {
        let conn = device.connect(target, false).await?;
        let tracker = tracker.clone();
        let phases = phases.clone();
        tasks.spawn(async move {
            relay_receiver(conn.ws, tracker, phases).await;
        });
    }
    let mut sinks = Vec::with_capacity(flows.len());
    for flow in flows {
        let mut conn = flow.sender.connect(target, false).await?;
        let devices = recipients(&mut conn, flow.conversation, flow.sender.id).await?;
        if devices.len() != fan_out {
            bail!("flows must have the same fan-out");
        }
        let (sink, stream) = conn.ws.split();
        let replies_tracker = tracker.clone();
        let replies_phases = phases.clone();
        tasks.spawn(async move {
            drop(relay_sender_replies(stream, replies_tracker, replies_phases).await);
        });
        sinks.push(WsSink {
            sink,
            frames: SendFrames::new(flow.conversation, devices, payload.clone(), 1 << 20),
        });
    }
    spawn_senders(sinks, &tracker, &phases, &mut tasks);
    let result = saturate_then_half(
        &tracker,
        &phases_tx,
        flows.len(),
        timing,
        probe,
        label,
        extra,
    )
    .await;
    finish(&tracker, &phases_tx, tasks).await;
    Ok(report(&tracker, &result?))
}

/// Forwarder load: the same frames, the same pairs, no authentication or storage.
pub async fn forwarder_load(
    target: &Target,
    clinic: &Clinic,
    window: u32,
    payload: Arc<Vec<u8>>,
    timing: Timing,
    probe: &Probe,
    extra: &[ExtraPhase],
) -> anyhow::Result<LoadReport> {
    let pairs = clinic.pairs.len();
    let tracker = Tracker::new(pairs, window, 1)?;
    let (phases_tx, phases) = watch::channel(Phase::Idle);
    let mut tasks = JoinSet::new();
    let mut sinks = Vec::with_capacity(pairs);
    for (i, pair) in clinic.pairs.iter().enumerate() {
        let mut path_target = target.clone();
        path_target.path = format!("/fwd/{i}/recv");
        let (ws, _) = crate::client::open(&path_target, pair.staff.source, false).await?;
        let tracker_r = tracker.clone();
        let phases_r = phases.clone();
        tasks.spawn(async move {
            drop(forwarder_receiver(ws, tracker_r, phases_r).await);
        });
        path_target.path = format!("/fwd/{i}/send");
        let (ws, _): (Ws, _) =
            crate::client::open(&path_target, pair.patient.source, false).await?;
        let (sink, stream) = ws.split();
        // Nothing comes back on a sender's socket; keep the half alive until the end.
        let mut phases_s = phases.clone();
        tasks.spawn(async move {
            let _stream = stream;
            while phases_s.changed().await.is_ok() {
                if *phases_s.borrow() == Phase::Done {
                    break;
                }
            }
        });
        sinks.push(WsSink {
            sink,
            frames: SendFrames::new(
                pair.conversation,
                vec![pair.staff.id],
                payload.clone(),
                1 << 20,
            ),
        });
    }
    spawn_senders(sinks, &tracker, &phases, &mut tasks);
    let result = saturate_then_half(
        &tracker,
        &phases_tx,
        pairs,
        timing,
        probe,
        "forwarder",
        extra,
    )
    .await;
    finish(&tracker, &phases_tx, tasks).await;
    Ok(report(&tracker, &result?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::load::stamp;

    /// When a test sink "delivers" what it is given.
    #[derive(PartialEq)]
    enum Delivers {
        /// As soon as it is fed.
        AtOnce,
        /// When it is flushed, as a socket does.
        OnFlush,
        /// Never: the sink takes nothing.
        Never,
    }

    struct TestSink {
        tracker: Arc<Tracker>,
        delivers: Delivers,
        fed: Vec<Vec<u8>>,
    }

    impl TestSink {
        fn new(tracker: &Arc<Tracker>, delivers: Delivers) -> TestSink {
            TestSink {
                tracker: tracker.clone(),
                delivers,
                fed: Vec::new(),
            }
        }
    }

    impl FrameSink for TestSink {
        async fn feed(&mut self, flow: u32, seq: u32, sent_ns: u64) -> anyhow::Result<()> {
            if self.delivers == Delivers::Never {
                std::future::pending::<()>().await;
            }
            let mut payload = vec![0u8; 32];
            stamp(&mut payload, flow, seq, sent_ns);
            if self.delivers == Delivers::AtOnce {
                self.tracker.delivered(&payload);
            } else {
                self.fed.push(payload);
            }
            Ok(())
        }

        async fn flush(&mut self) -> anyhow::Result<()> {
            for payload in self.fed.drain(..) {
                self.tracker.delivered(&payload);
            }
            Ok(())
        }
    }

    fn probe_and_timing() -> (Probe, Timing) {
        let probe = Probe {
            pids: vec![std::process::id()],
            metrics: None,
        };
        let timing = Timing {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(300),
            open_loop_fraction: 0.5,
        };
        (probe, timing)
    }

    #[tokio::test]
    async fn a_flow_a_window_behind_flushes_what_it_fed_before_waiting_for_room() {
        // A window of 4 and a send due every 50 µs: each wake of the flow finds more sends
        // due than its window holds, and only a flush delivers (and so makes room).
        let tracker = Tracker::new(1, 4, 1).unwrap();
        let (phases_tx, phases) = watch::channel(Phase::Idle);
        let mut tasks = JoinSet::new();
        spawn_senders(
            vec![TestSink::new(&tracker, Delivers::OnFlush)],
            &tracker,
            &phases,
            &mut tasks,
        );
        let (probe, timing) = probe_and_timing();
        let measured = measure(&tracker, &phases_tx, Phase::Rate(20_000.0), timing, &probe)
            .await
            .unwrap();
        assert_eq!(
            measured.flows_behind, 0,
            "{:?}",
            measured.flows_behind_detail
        );
        assert!(measured.sent >= 3_000, "sent {}", measured.sent);
        phases_tx.send_replace(Phase::Done);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn a_flow_that_stops_sending_is_reported_with_where_it_waits() {
        let tracker = Tracker::new(3, 4, 1).unwrap();
        let (phases_tx, phases) = watch::channel(Phase::Idle);
        let sinks = (0..3)
            .map(|flow| {
                let delivers = if flow == 1 {
                    Delivers::Never
                } else {
                    Delivers::AtOnce
                };
                TestSink::new(&tracker, delivers)
            })
            .collect();
        let mut tasks = JoinSet::new();
        spawn_senders(sinks, &tracker, &phases, &mut tasks);
        let (probe, timing) = probe_and_timing();
        let measured = measure(&tracker, &phases_tx, Phase::Rate(200.0), timing, &probe)
            .await
            .unwrap();
        assert_eq!(
            measured.flows_behind, 1,
            "{:?}",
            measured.flows_behind_detail
        );
        let detail = measured.flows_behind_detail.first().unwrap();
        assert!(
            detail.starts_with("flow 1: 0 sent") && detail.contains("socket to take a message"),
            "{detail}"
        );
        // The stuck flow never returns from its write: stop the tasks rather than wait.
        phases_tx.send_replace(Phase::Done);
        tasks.shutdown().await;
    }
}
