//! `RESULTS.md` from the results: the machine, the command, the tables, the targets.

use std::fmt::Write as _;

use serde_json::Value;

fn num(value: &Value, digits: usize) -> String {
    match value.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "not measured".to_owned(),
    }
}

/// A figure the system does not have (a forwarder has no storage flushes): a dash.
fn num_or_dash(value: &Value, digits: usize) -> String {
    if value.is_null() {
        "-".to_owned()
    } else {
        num(value, digits)
    }
}

/// The phase's slowest flush: exact, or "≤ bound" when only its histogram bucket is known
/// (older results, without the flag, kept only exact figures).
fn slowest_flush(phase: &Value) -> String {
    let figure = num_or_dash(&phase["slowest_flush_ms"], 1);
    match phase["slowest_flush_exact"].as_bool() {
        Some(false) => format!("≤ {figure}"),
        _ => figure,
    }
}

fn phase_row(out: &mut String, name: &str, phase: &Value) {
    // A phase some sender flows fell behind in measured less load than it names: say so.
    let behind = match phase["flows_behind"].as_u64() {
        Some(n) if n > 0 => format!(
            " ({n} sender flows fell behind, sent {} msgs/s)",
            num(&phase["sent_per_s"], 0)
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "| {name}{behind} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        num(&phase["delivered_per_s"], 0),
        num(&phase["server_cpu_us_per_msg"], 2),
        num(&phase["server_cores"], 2),
        num(&phase["p50_ms"], 3),
        num(&phase["p99_ms"], 3),
        num(&phase["p999_ms"], 3),
        num(&phase["max_ms"], 1),
        num_or_dash(&phase["msgs_per_flush"], 1),
        num_or_dash(&phase["flush_ms_mean"], 2),
        slowest_flush(phase),
    );
}

fn target_row(
    out: &mut String,
    what: &str,
    measured: &Value,
    digits: usize,
    target: &str,
    met: Option<bool>,
) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    };
    let _ = writeln!(
        out,
        "| {what} | {} | {target} | {verdict} |",
        num(measured, digits)
    );
}

/// Renders the report.
pub fn markdown(results: &Value, command: &str, findings: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# medrelay benchmark results\n");
    let _ = writeln!(
        out,
        "Written by `bench/run` from `bench/results.json` (same run). The machine may be shared \
         with other work while the figures are taken, so they are noisy: rerun `bench/run` on \
         a quiet machine for figures to quote. Ratios, measured side by side in one run, hold \
         better than absolute numbers.\n"
    );
    let _ = writeln!(
        out,
        "- Machine: {}",
        results["machine"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "- Command: `{command}`");
    let shape = &results["shape"];
    let _ = writeln!(
        out,
        "- Load: {} pairs, at most {} messages in flight per pair at saturation, {}-byte \
         envelopes, {} s measured per phase after a warm-up; load generator and servers share \
         the cores.\n",
        shape["pairs"], shape["window_per_pair"], shape["payload_bytes"], shape["measure_seconds"]
    );
    if let Some(fraction) = shape["open_loop_fraction"].as_f64().filter(|f| *f != 0.5) {
        let _ = writeln!(
            out,
            "- **The open-loop phases ran at {:.0}% of saturation, not half: the \"half load\" \
             figures below are at that rate.**\n",
            fraction * 100.0
        );
    }

    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(out, "| figure | measured | target | |\n|---|---:|---|---|");
    let ge = |v: &Value, t: f64| v.as_f64().map(|x| x >= t);
    let le = |v: &Value, t: f64| v.as_f64().map(|x| x <= t);
    target_row(
        &mut out,
        "relay / transport limit (delivered msgs/s)",
        &results["relay_vs_transport"],
        3,
        ">= 0.5",
        ge(&results["relay_vs_transport"], 0.5),
    );
    target_row(
        &mut out,
        "relay / NATS JetStream (durable msgs/s)",
        &results["vs_nats_jetstream"],
        3,
        ">= 1",
        ge(&results["vs_nats_jetstream"], 1.0),
    );
    target_row(
        &mut out,
        "server CPU per delivered message (µs)",
        &results["server_cpu_us_per_msg"],
        2,
        "<= 10",
        le(&results["server_cpu_us_per_msg"], 10.0),
    );
    target_row(
        &mut out,
        "relay / Synapse (delivered msgs/s)",
        &results["vs_synapse"],
        0,
        ">= 1000",
        ge(&results["vs_synapse"], 1000.0),
    );
    target_row(
        &mut out,
        "p99 send-to-deliver at half load (ms)",
        &results["p99_ms_half_load"],
        3,
        "<= 5",
        le(&results["p99_ms_half_load"], 5.0),
    );
    target_row(
        &mut out,
        "server memory per idle authenticated connection (bytes)",
        &results["bytes_per_idle_connection"],
        0,
        "<= 32768",
        le(&results["bytes_per_idle_connection"], 32768.0),
    );
    target_row(
        &mut out,
        "messages per storage flush at saturation",
        &results["msgs_per_flush"],
        1,
        ">= 20",
        ge(&results["msgs_per_flush"], 20.0),
    );

    let _ = writeln!(out, "\n## Throughput and latency\n");
    let _ = writeln!(
        out,
        "\"max ms\" is the phase's slowest message; \"slowest flush ms\" its longest storage \
         flush (exact when it was the server's longest so far, else \"≤\" the bound of its \
         bucket in the server's histogram of flush durations), so a stall can be told to be in \
         the flush or elsewhere.\n"
    );
    let _ = writeln!(
        out,
        "| system, phase | delivered msgs/s | server CPU µs/msg | server cores | p50 ms | p99 ms | p99.9 ms | max ms | msgs/flush | ms/flush | slowest flush ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let scenarios = &results["scenarios"];
    for (key, name) in [
        ("a_relay_1to1", "(a) relay 1:1"),
        ("b_fan_out_10", "(b) relay fan-out to 10 devices"),
        ("transport_forwarder", "transport limit (forwarder)"),
    ] {
        let s = &scenarios[key];
        if s.is_null() {
            continue;
        }
        phase_row(&mut out, &format!("{name}, saturation"), &s["saturation"]);
        phase_row(
            &mut out,
            &format!("{name}, half load (open loop)"),
            &s["half_load"],
        );
        for extra in s["extra"].as_array().into_iter().flatten() {
            let what = extra["name"].as_str().unwrap_or("?");
            let percent = format!(
                "{:.0}%",
                extra["fraction_of_saturation"].as_f64().unwrap_or(0.0) * 100.0
            );
            let name = if what.contains(&percent) {
                format!("{name}, open loop at {what}")
            } else {
                format!("{name}, open loop at {what} ({percent} of its saturation)")
            };
            phase_row(&mut out, &name, &extra["phase"]);
        }
    }
    for (key, name) in [
        (
            "peer_nats_jetstream",
            "NATS JetStream, file store, acked publish (saturation)",
        ),
        ("peer_synapse", "Synapse on SQLite, send then /sync"),
    ] {
        let s = &scenarios[key];
        let _ = writeln!(
            out,
            "| {name} | {} | {} | | | | | | | | |",
            num(&s["delivered_per_s"], 1),
            num(&s["server_cpu_us_per_msg"], 2)
        );
    }
    let _ = writeln!(out, "\n## Other scenarios\n");
    let c = &scenarios["c_drain_offline_queue"];
    let _ = writeln!(
        out,
        "- (c) drain an offline queue: {} messages in {} s, {} msgs/s",
        num(&c["queued"], 0),
        num(&c["seconds"], 3),
        num(&c["msgs_per_s"], 0)
    );
    let d = &scenarios["d_e_idle_connections_and_connects"];
    let _ = writeln!(
        out,
        "- (d) idle authenticated connections: {} held; server RSS {} bytes freshly started, \
         {} with every connection open: {} bytes per connection (each device's first \
         connection, so this includes warming sled's page cache and the record caches with \
         the device's records); {} bytes after they closed, so closing gave back {} bytes per \
         connection (a lower bound on what an open connection holds)",
        num(&d["connections"], 0),
        num(&d["rss_before"], 0),
        num(&d["rss_after"], 0),
        num(&d["bytes_per_connection"], 0),
        num(&d["rss_closed"], 0),
        num(&d["released_bytes_per_connection"], 0)
    );
    let _ = writeln!(
        out,
        "- (e) new connections (TLS 1.3 handshake + device authentication, 64 at a time): {} \
         per second",
        num(&d["connects_per_s"], 0)
    );
    let disk = &scenarios["disk_sync"];
    if !disk.is_null() {
        let _ = writeln!(
            out,
            "- The disk under the data directory, before any server ran: {} appends of {} bytes, \
             each followed by `fdatasync`: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms. A \
             durable acknowledgement waits for at least one such sync (the group commit's), so \
             this is a floor under the relay's send-to-deliver latency.",
            num(&disk["writes"], 0),
            num(&disk["bytes"], 0),
            num(&disk["p50_ms"], 3),
            num(&disk["p99_ms"], 3),
            num(&disk["p999_ms"], 3),
            num(&disk["max_ms"], 3)
        );
    }
    let f = &scenarios["f_sdk_crypto"];
    let _ = writeln!(
        out,
        "- (f) SDK crypto (direct timing): encrypt + decrypt 1 KiB {} µs, session setup {} µs",
        num(&f["encrypt_decrypt_1kib_us"], 2),
        num(&f["session_setup_us"], 1)
    );
    for (key, name) in [("peer_nats_jetstream", "NATS"), ("peer_synapse", "Synapse")] {
        if let Some(v) = scenarios
            .get(key)
            .and_then(|s| s.get("version"))
            .and_then(Value::as_str)
        {
            let _ = writeln!(out, "- {name} version: {v}");
        }
    }
    if let Some(skipped) = results["skipped"].as_array() {
        for reason in skipped {
            let _ = writeln!(out, "- Not measured: {}", reason.as_str().unwrap_or("?"));
        }
    }
    let _ = writeln!(out, "\nErrors during the run:\n");
    for (key, s) in scenarios.as_object().into_iter().flatten() {
        if s.get("errors").is_none() {
            continue;
        }
        let _ = writeln!(
            out,
            "- {key}: {} ({})",
            s["errors"],
            s["first_error"].as_str().unwrap_or("none")
        );
    }
    let _ = writeln!(out, "\n## Findings\n\n{findings}");
    out
}
