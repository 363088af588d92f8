//! Scenarios (b) to (f): care-team fan-out, draining an offline queue, idle connections and
//! their memory, new connections per second, and the SDK's crypto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use medrelay_proto::{
    decode_server_frame, encode_client_frame, AckRequest, ClientFrame, ClientRequest,
    OpenConversation, Role, ServerMessage,
};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{source_ip, Conn, Target};
use crate::clinic::{invites, recipients, Clinic, Device};
use crate::scenarios::{relay_load, LoadReport, Probe, RelayFlow, Timing};
use crate::transport::SendFrames;

/// Longest time spent enrolling devices for (d) and (e).
const ENROL_TIME_BOUND: Duration = Duration::from_secs(150);

/// Members of a care team besides the sender.
pub const TEAM: usize = 10;

/// (b): groups of 11 staff; one member of each sends, the other ten receive.
pub async fn fan_out(
    target: &Target,
    clinic: &Clinic,
    window: u32,
    payload: Arc<Vec<u8>>,
    timing: Timing,
    probe: &Probe,
) -> anyhow::Result<LoadReport> {
    let groups = clinic.pairs.len() / (TEAM + 1);
    if groups == 0 {
        bail!("fan-out needs at least {} pairs", TEAM + 1);
    }
    let mut flows = Vec::new();
    let mut receivers = Vec::new();
    for g in 0..groups {
        let members = clinic
            .pairs
            .get(g * (TEAM + 1)..(g + 1) * (TEAM + 1))
            .ok_or_else(|| anyhow!("not enough pairs for team {g}"))?;
        let (first, rest) = members
            .split_first()
            .ok_or_else(|| anyhow!("an empty team"))?;
        let sender = first.staff.clone();
        let mut conn = sender.connect(target, true).await?;
        let handles = (1..=TEAM)
            .map(|k| medrelay_proto::Handle::new(format!("staff-{:04}", g * (TEAM + 1) + k)))
            .collect::<Result<Vec<_>, _>>()?;
        let answer = conn
            .request(ClientRequest::OpenConversation(OpenConversation {
                handles,
            }))
            .await?;
        let ServerMessage::Conversation(conversation) = answer else {
            bail!("team conversation refused: {answer:?}");
        };
        conn.close().await;
        flows.push(RelayFlow {
            sender,
            conversation: conversation.id,
        });
        receivers.extend(rest.iter().map(|m| m.staff.clone()));
    }
    // The same number of deliveries in flight per receiver as in (a).
    relay_load(
        target,
        &flows,
        &receivers,
        window * TEAM as u32,
        payload,
        timing,
        probe,
        "relay fan-out to 10",
        &[],
    )
    .await
}

/// (c) results.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    /// Messages queued while the recipient was offline.
    pub queued: usize,
    /// Seconds from connecting to the last delivery.
    pub seconds: f64,
    /// Deliveries per second.
    pub msgs_per_s: f64,
}

/// (c): a staff device offline, its patient sends `count`; then it connects and drains.
pub async fn drain(
    target: &Target,
    clinic: &Clinic,
    payload: Arc<Vec<u8>>,
    count: usize,
) -> anyhow::Result<DrainReport> {
    let pair = clinic.pairs.first().ok_or_else(|| anyhow!("no pairs"))?;
    let mut conn = pair.patient.connect(target, false).await?;
    let devices = recipients(&mut conn, pair.conversation, pair.patient.id).await?;
    let mut frames = SendFrames::new(pair.conversation, devices, payload, 1 << 30);
    let mut accepted = 0usize;
    let mut seq = 0u32;
    let started = Instant::now();
    while accepted < count {
        // In chunks, each answered before the next, as a client queues a backlog (the bench's
        // server allows far more sends a second than the default; see `server.rs`).
        let chunk = 100.min(count - accepted);
        for _ in 0..chunk {
            seq += 1;
            conn.ws
                .feed(Message::binary(frames.next(0, seq, 0)))
                .await?;
        }
        conn.ws.flush().await?;
        let mut answered = 0;
        while answered < chunk {
            match conn.next_frame().await?.message {
                ServerMessage::SendAccepted(_) => {
                    accepted += 1;
                    answered += 1;
                }
                ServerMessage::Error(error) if error.code.as_str() == "rate_limited" => {
                    answered += 1;
                }
                ServerMessage::Error(error) => bail!("send refused while queueing: {error:?}"),
                _ => {}
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("queueing {count} messages took over 2 minutes");
        }
    }
    conn.close().await;

    let started = Instant::now();
    let conn = pair.staff.connect(target, false).await?;
    let (mut sink, mut stream) = conn.ws.split();
    let mut delivered = 0usize;
    let mut request_id = 1u64 << 40;
    let deadline = started + Duration::from_secs(300);
    while delivered < accepted {
        let next = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .context("the queue did not drain within 5 minutes")?;
        let Some(Ok(Message::Binary(bytes))) = next else {
            continue;
        };
        let frame = decode_server_frame(&bytes)?;
        if let ServerMessage::Delivery(delivery) = frame.message {
            delivered += 1;
            let mut ids = vec![delivery.message_id];
            // Acknowledge in batches as a client would.
            while ids.len() < medrelay_proto::limits::MAX_ACK_IDS {
                match futures_util::FutureExt::now_or_never(stream.next()) {
                    Some(Some(Ok(Message::Binary(bytes)))) => {
                        if let ServerMessage::Delivery(d) = decode_server_frame(&bytes)?.message {
                            delivered += 1;
                            ids.push(d.message_id);
                        }
                    }
                    _ => break,
                }
            }
            request_id += 1;
            sink.send(Message::binary(encode_client_frame(&ClientFrame {
                request_id,
                request: ClientRequest::Ack(AckRequest { message_ids: ids }),
            })))
            .await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = sink.close().await;
    Ok(DrainReport {
        queued: accepted,
        seconds: (seconds * 1000.0).round() / 1000.0,
        msgs_per_s: (accepted as f64 / seconds).round(),
    })
}

/// Enrols `count` patient devices (each from its own loopback address), closing each
/// connection after enrolment. Invites come from the first staff member.
pub async fn enroll_patients(
    target: &Target,
    clinic: &Clinic,
    count: usize,
) -> anyhow::Result<Vec<Device>> {
    let staff = &clinic
        .pairs
        .first()
        .ok_or_else(|| anyhow!("no pairs"))?
        .staff;
    let mut conn = staff.connect(target, true).await?;
    let handles: Vec<String> = (0..count).map(|i| format!("idle-{i:05}")).collect();
    let codes = invites(&mut conn, Role::Patient, &handles).await?;
    conn.close().await;
    let slots = Arc::new(Semaphore::new(32));
    let mut tasks = JoinSet::new();
    // Enrolment is not what is measured: stop enrolling after a time bound and hold as many
    // connections as were enrolled by then (the report gives the count).
    let deadline = Instant::now() + ENROL_TIME_BOUND;
    for (i, code) in codes.into_iter().enumerate() {
        let target = target.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            if Instant::now() > deadline {
                return Ok(None);
            }
            let identity = Arc::new(medrelay_sdk::DeviceIdentity::generate(
                &mut rand_core::OsRng,
                0,
            ));
            let source = source_ip(1000 + i);
            let mut conn = Conn::connect(&target, source, true).await?;
            let id = conn.enroll(&identity, &code).await?;
            conn.close().await;
            Ok::<_, anyhow::Error>(Some(Device {
                identity,
                id,
                source,
            }))
        });
    }
    let mut devices = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        devices.extend(done??);
    }
    Ok(devices)
}

/// (d) and (e) results.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Connections opened and held.
    pub connections: usize,
    /// TLS handshake plus device authentication, per second (64 at a time).
    pub connects_per_s: f64,
    /// Server resident memory before connecting (a freshly started server), bytes.
    pub rss_before: u64,
    /// With every connection open and idle, bytes.
    pub rss_after: u64,
    /// With every connection closed again, bytes: what stays is what the server keeps after
    /// the devices have been seen (sled's page cache holding their records, the record
    /// caches), plus freed memory the allocator has not handed back.
    pub rss_closed: u64,
    /// (after - before) / connections: everything each device's first connection cost, the
    /// warmed caches included (the figure the report quotes).
    pub bytes_per_connection: f64,
    /// (after - closed) / connections: the part closing the connections gave back, a lower
    /// bound on what an open connection holds (the allocator keeps some freed pages).
    pub released_bytes_per_connection: f64,
}

/// Resident memory of a process, bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))?;
    Ok(kb * 1024)
}

/// (d) and (e): connect every device (TLS + auth, 64 at a time), hold them idle, measure.
pub async fn connect_idle(
    target: &Target,
    devices: &[Device],
    pid: u32,
) -> anyhow::Result<ConnectReport> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_bytes(pid)?;
    let slots = Arc::new(Semaphore::new(64));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for device in devices {
        let target = target.clone();
        let device = device.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let slot = slots.acquire_owned().await?;
            let conn = device.connect(&target, true).await?;
            drop(slot);
            Ok::<_, anyhow::Error>(conn)
        });
    }
    let mut conns = Vec::with_capacity(devices.len());
    while let Some(done) = tasks.join_next().await {
        conns.push(done??);
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_bytes(pid)?;
    let n = conns.len();
    drop(conns);
    // The server notices each close, ends the connection's task and frees its memory; the
    // allocator hands freed pages back to the system shortly after.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_closed = rss_bytes(pid)?;
    let per = |bytes: u64| (bytes as f64 / n.max(1) as f64).round();
    Ok(ConnectReport {
        connections: n,
        connects_per_s: (n as f64 / seconds).round(),
        rss_before,
        rss_after,
        rss_closed,
        bytes_per_connection: per(rss_after.saturating_sub(rss_before)),
        released_bytes_per_connection: per(rss_after.saturating_sub(rss_closed)),
    })
}

/// (f) results.
#[derive(Debug, Clone, Serialize)]
pub struct CryptoReport {
    /// Encrypt + decrypt of 1 KiB through an established session, µs.
    pub encrypt_decrypt_1kib_us: f64,
    /// Session setup (initiate + accept of the first message), µs.
    pub session_setup_us: f64,
}

/// (f): direct timing of the SDK (the criterion bench `cargo bench -p medrelay-sdk --bench
/// crypto` measures the same with more care).
pub fn crypto() -> anyhow::Result<CryptoReport> {
    use medrelay_sdk::{DeviceIdentity, Session};
    let mut rng = rand::rngs::OsRng;
    let alice_id = DeviceIdentity::generate(&mut rng, 0);
    let mut bob_id = DeviceIdentity::generate(&mut rng, 0);
    let mut alice = Session::initiate(&alice_id, &bob_id.prekey_bundle(Some(1)), &mut rng)?;
    let (mut bob, _) = Session::accept(&mut bob_id, &alice.encrypt(b"hi")?, &mut rng)?;
    alice.decrypt(&bob.encrypt(b"ack")?, &mut rng)?;
    let plaintext = vec![0x42u8; 1024];
    let n = 5000;
    let started = Instant::now();
    for _ in 0..n {
        let wire = alice.encrypt(&plaintext)?;
        bob.decrypt(&wire, &mut rng)?;
    }
    let encrypt_decrypt = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let setups = 100;
    let started = Instant::now();
    for _ in 0..setups {
        let mut bob_id = bob_id.clone();
        let bundle = bob_id.prekey_bundle(Some(1));
        let mut alice = Session::initiate(&alice_id, &bundle, &mut rng)?;
        let first = alice.encrypt(b"hello")?;
        Session::accept(&mut bob_id, &first, &mut rng)?;
    }
    let setup = started.elapsed().as_secs_f64() * 1e6 / f64::from(setups);
    Ok(CryptoReport {
        encrypt_decrypt_1kib_us: (encrypt_decrypt * 100.0).round() / 100.0,
        session_setup_us: (setup * 10.0).round() / 10.0,
    })
}

/// The disk under the data directory: what one durable write costs before any server runs.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// Appends timed.
    pub writes: u32,
    /// Bytes per append.
    pub bytes: usize,
    /// Latency of an append plus `fdatasync`, ms.
    pub p50_ms: f64,
    /// Latency of an append plus `fdatasync`, ms.
    pub p99_ms: f64,
    /// Latency of an append plus `fdatasync`, ms.
    pub p999_ms: f64,
    /// Latency of an append plus `fdatasync`, ms.
    pub max_ms: f64,
}

/// Times `writes` appends of 4 KiB, each followed by `fdatasync`, to a file in `dir`: the
/// floor under any acknowledgement that waits for the disk (the relay's group commit waits
/// for one such sync per flush, plus sled's own writes).
pub fn disk_sync(dir: &std::path::Path, writes: u32) -> anyhow::Result<DiskReport> {
    use std::io::Write as _;
    const BYTES: usize = 4096;
    let path = dir.join("disk-sync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5au8; BYTES];
    let mut latencies = crate::load::histogram()?;
    for _ in 0..writes {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        latencies.record(us.max(1))?;
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(DiskReport {
        writes,
        bytes: BYTES,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: ms(1.0),
    })
}
