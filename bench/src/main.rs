//! `medrelay-bench`: runs medrelay, the transport-limit forwarder and the peers side by side on
//! this machine and writes `results.json` and `RESULTS.md`. `bench/run` builds and installs
//! everything and calls it; see bench/README.md.

mod client;
mod clinic;
mod extra;
mod load;
mod nats;
mod procfs;
mod report;
mod scenarios;
mod server;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::{json, Value};

use crate::client::Target;
use crate::scenarios::{forwarder_load, relay_load, ExtraPhase, Probe, Rate, RelayFlow, Timing};

/// Appends timed by the disk probe.
const DISK_SYNC_WRITES: u32 = 2000;
/// The low point on the relay's latency curve, as a fraction of saturation (full run only).
const LOW_LOAD: f64 = 0.1;

#[derive(Debug, Parser)]
#[command(about = "medrelay benchmarks: relay, transport limit and peers in one run")]
struct Args {
    /// The `medrelay` server binary.
    #[arg(long, required_unless_present = "report_from")]
    medrelay: Option<PathBuf>,
    /// The `medrelay-forwarder` binary.
    #[arg(long, required_unless_present = "report_from")]
    forwarder: Option<PathBuf>,
    /// Run nothing: write RESULTS.md again from this results.json (with --findings and
    /// --command), for findings written after the run.
    #[arg(long)]
    report_from: Option<PathBuf>,
    /// Where to put data directories, logs and results.
    #[arg(long)]
    out: PathBuf,
    /// Scenario (a) only, short phases: a smoke test.
    #[arg(long)]
    quick: bool,
    /// Patient-staff pairs in the 1:1 scenario.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Messages in flight per pair at saturation.
    #[arg(long, default_value_t = 32)]
    window: u32,
    /// Envelope (ciphertext) size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Measured seconds per phase (warm-up is a third of it).
    #[arg(long)]
    seconds: Option<u64>,
    /// The open-loop phase's rate as a fraction of saturation (the report's "half load" is
    /// 0.5; other values explore the latency curve, and the report then says so).
    #[arg(long, default_value_t = 0.5)]
    open_loop_fraction: f64,
    /// The command line to print in the report.
    #[arg(long, default_value = "bench/run")]
    command: String,
    /// Findings (Markdown) to append to the report.
    #[arg(long)]
    findings: Option<PathBuf>,
    /// Idle authenticated connections for scenarios (d) and (e).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Messages queued for an offline device in scenario (c).
    #[arg(long, default_value_t = 10_000)]
    drain: usize,
    /// The `nats-server` binary (JetStream peer); skipped when absent.
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// A command that runs the Synapse peer and prints its JSON result; skipped when absent.
    #[arg(long)]
    synapse: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("results.json");
    let results = match &args.report_from {
        Some(from) => serde_json::from_slice(&std::fs::read(from)?)
            .with_context(|| format!("{} is not a results.json", from.display()))?,
        None => {
            let results = run(&args).await?;
            std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
            results
        }
    };
    let findings = match &args.findings {
        Some(path) => std::fs::read_to_string(path)?,
        None => String::new(),
    };
    let report_path = args.out.join("RESULTS.md");
    std::fs::write(
        &report_path,
        report::markdown(&results, &args.command, &findings),
    )?;
    if args.report_from.is_some() {
        eprintln!("wrote {}", report_path.display());
    } else {
        eprintln!("wrote {} and {}", path.display(), report_path.display());
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let (Some(medrelay), Some(forwarder_binary)) = (&args.medrelay, &args.forwarder) else {
        anyhow::bail!("--medrelay and --forwarder are needed to run the benchmarks");
    };
    let seconds = args.seconds.unwrap_or(if args.quick { 5 } else { 10 });
    if !(0.01..=1.0).contains(&args.open_loop_fraction) {
        anyhow::bail!("--open-loop-fraction must lie between 0.01 and 1");
    }
    let timing = Timing {
        open_loop_fraction: args.open_loop_fraction,
        warmup: Duration::from_secs(seconds.div_ceil(3).max(2)),
        measure: Duration::from_secs(seconds),
    };
    let payload = Arc::new(load::payload_template(args.payload));
    let work = args.out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // The disk first, while nothing else runs: the floor under every durable acknowledgement.
    let disk = if args.quick {
        Value::Null
    } else {
        let r = extra::disk_sync(&work, DISK_SYNC_WRITES)?;
        eprintln!(
            "[disk] 4 KiB append + fdatasync: p50 {:.3} ms, p99 {:.3} ms",
            r.p50_ms, r.p99_ms
        );
        serde_json::to_value(r)?
    };

    eprintln!("starting medrelay");
    let mut relay = server::Relay::start(medrelay, &work.join("relay/data"))?;
    let target = Target::new(relay.addr, &relay.ca(), "/v1/ws")?;
    let invite = relay
        .admin_invite
        .clone()
        .context("the server printed no admin invite")?;
    eprintln!("setting up the clinic: {} pairs", args.pairs);
    let started = std::time::Instant::now();
    let clinic = clinic::setup(&target, &invite, args.pairs).await?;
    eprintln!("clinic ready in {:.1} s", started.elapsed().as_secs_f64());

    let relay_probe = Probe {
        pids: vec![relay.pid()?],
        metrics: Some(target.clone()),
    };
    let flows: Vec<RelayFlow> = clinic
        .pairs
        .iter()
        .map(|p| RelayFlow {
            sender: p.patient.clone(),
            conversation: p.conversation,
        })
        .collect();
    let receivers: Vec<_> = clinic.pairs.iter().map(|p| p.staff.clone()).collect();
    // The full run adds a point low on the latency curve, where the cores are not busy.
    let low_load = [ExtraPhase {
        name: format!("{:.0}% load", LOW_LOAD * 100.0),
        rate: Rate::OfSaturation(LOW_LOAD),
    }];
    let relay_a = relay_load(
        &target,
        &flows,
        &receivers,
        args.window,
        payload.clone(),
        timing,
        &relay_probe,
        "relay 1:1",
        if args.quick { &[] } else { &low_load },
    )
    .await?;

    let mut skipped: Vec<String> = Vec::new();
    let mut fan_out = Value::Null;
    let mut drain = Value::Null;
    let mut connect = Value::Null;
    if !args.quick {
        match extra::fan_out(
            &target,
            &clinic,
            args.window,
            payload.clone(),
            timing,
            &relay_probe,
        )
        .await
        {
            Ok(r) => fan_out = serde_json::to_value(r)?,
            Err(e) => skipped.push(format!("(b) fan-out failed: {e:#}")),
        }
        eprintln!(
            "[drain] queueing {} messages for an offline device",
            args.drain
        );
        match extra::drain(&target, &clinic, payload.clone(), args.drain).await {
            Ok(r) => {
                eprintln!("[drain] {:.0} msgs/s", r.msgs_per_s);
                drain = serde_json::to_value(r)?
            }
            Err(e) => skipped.push(format!("(c) drain failed: {e:#}")),
        }
        eprintln!("[idle] enrolling {} devices", args.idle_connections);
        let enrolled = extra::enroll_patients(&target, &clinic, args.idle_connections).await;
        match enrolled {
            Ok(devices) => {
                // A fresh process, so the baseline holds no memory of earlier phases.
                relay.restart()?;
                match extra::connect_idle(&target, &devices, relay.pid()?).await {
                    Ok(r) => {
                        eprintln!(
                            "[idle] {} connections, {:.0}/s, {:.0} bytes each",
                            r.connections, r.connects_per_s, r.bytes_per_connection
                        );
                        connect = serde_json::to_value(r)?
                    }
                    Err(e) => skipped.push(format!("(d)/(e) connections failed: {e:#}")),
                }
            }
            Err(e) => skipped.push(format!("(d)/(e) enrolment failed: {e:#}")),
        }
    }
    let crypto = if args.quick {
        Value::Null
    } else {
        serde_json::to_value(extra::crypto()?)?
    };

    eprintln!("starting the forwarder");
    let certs = work.join("relay/data/certs");
    let forwarder = server::Forwarder::start(
        forwarder_binary,
        &certs.join("server.pem"),
        &certs.join("server.key"),
    )?;
    let forwarder_target = Target::new(forwarder.addr, &relay.ca(), "/")?;
    let forwarder_probe = Probe {
        pids: vec![forwarder.pid()?],
        metrics: None,
    };
    // The forwarder also at the relay's own half-load and low-load rates: what the transport
    // and this machine give at the same load, without storage.
    let relay_rates = [
        ExtraPhase {
            name: "the relay's half-load rate".to_owned(),
            rate: Rate::Delivered(relay_a.saturation.delivered_per_s * args.open_loop_fraction),
        },
        ExtraPhase {
            name: format!("the relay's {:.0}% rate", LOW_LOAD * 100.0),
            rate: Rate::Delivered(relay_a.saturation.delivered_per_s * LOW_LOAD),
        },
    ];
    let transport = forwarder_load(
        &forwarder_target,
        &clinic,
        args.window,
        payload.clone(),
        timing,
        &forwarder_probe,
        if args.quick { &[] } else { &relay_rates },
    )
    .await?;
    drop(forwarder);
    relay.stop()?;

    let mut nats = Value::Null;
    if let (false, Some(binary)) = (args.quick, &args.nats_server) {
        eprintln!("starting nats-server (JetStream, file storage)");
        match nats::run(
            binary,
            &work.join("nats"),
            args.pairs,
            args.window,
            payload.clone(),
            timing,
        )
        .await
        {
            Ok(r) => nats = serde_json::to_value(r)?,
            Err(e) => skipped.push(format!("NATS JetStream failed: {e:#}")),
        }
    } else if !args.quick {
        skipped.push("NATS JetStream: no nats-server given".to_owned());
    }
    let mut synapse = Value::Null;
    if let (false, Some(command)) = (args.quick, &args.synapse) {
        eprintln!("running the Synapse peer");
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await?;
        match serde_json::from_slice::<Value>(&output.stdout) {
            Ok(v) if output.status.success() => synapse = v,
            _ => skipped.push(format!(
                "Synapse failed (exit {:?}): {}",
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).trim()
            )),
        }
    } else if !args.quick {
        skipped.push("Synapse: no command given".to_owned());
    }

    let relay_msgs = relay_a.saturation.delivered_per_s;
    let transport_msgs = transport.saturation.delivered_per_s;
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    Ok(json!({
        "quick": args.quick,
        "machine": procfs::machine(),
        "shape": {
            "pairs": args.pairs,
            "window_per_pair": args.window,
            "payload_bytes": args.payload,
            "measure_seconds": seconds,
            "open_loop_fraction": args.open_loop_fraction,
        },
        "relay_msgs_per_s": relay_msgs,
        "transport_msgs_per_s": transport_msgs,
        "relay_vs_transport": ratio(relay_msgs, transport_msgs),
        "p99_ms_half_load": relay_a.half_load.p99_ms,
        "msgs_per_flush": relay_a.saturation.msgs_per_flush,
        // What did not run is null, never a guess; `skipped` says why.
        "bytes_per_idle_connection": connect.get("bytes_per_connection").cloned().unwrap_or(Value::Null),
        "vs_synapse": synapse.get("delivered_per_s").and_then(Value::as_f64).map(|s| ratio(relay_msgs, s)),
        "vs_nats_jetstream": nats.get("delivered_per_s").and_then(Value::as_f64).map(|n| ratio(relay_msgs, n)),
        "server_cpu_us_per_msg": relay_a.saturation.server_cpu_us_per_msg,
        "disk_sync_p99_ms": disk.get("p99_ms").cloned().unwrap_or(Value::Null),
        "skipped": skipped,
        "scenarios": {
            "a_relay_1to1": relay_a,
            "b_fan_out_10": fan_out,
            "c_drain_offline_queue": drain,
            "d_e_idle_connections_and_connects": connect,
            "f_sdk_crypto": crypto,
            "disk_sync": disk,
            "transport_forwarder": transport,
            "peer_nats_jetstream": nats,
            "peer_synapse": synapse,
        },
    }))
}
