//! The NATS JetStream peer: Debian's `nats-server` with file storage, one stream per pair,
//! publishers waiting for their acks, consumers acknowledging what they receive, the same
//! 1 KiB payloads and at most `window` messages in flight per pair.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::procfs;
use crate::scenarios::Timing;

/// What one run of the peer measured.
#[derive(Debug, Clone, Serialize)]
pub struct NatsReport {
    /// Consumed (delivered and acknowledged) messages per second at saturation.
    pub delivered_per_s: f64,
    /// nats-server CPU per delivered message, µs.
    pub server_cpu_us_per_msg: f64,
    /// The server's version line.
    pub version: String,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the JetStream load against a fresh `nats-server` storing under `dir`.
pub async fn run(
    binary: &Path,
    dir: &Path,
    pairs: usize,
    window: u32,
    payload: Arc<Vec<u8>>,
    timing: Timing,
) -> anyhow::Result<NatsReport> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let version = Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
        socket.local_addr()?.port()
    };
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let child = Command::new(binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let server = Server(child);
    let pid = server.0.id();
    let url = format!("nats://127.0.0.1:{port}");
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = async_nats::connect(&url).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = client.ok_or_else(|| anyhow!("nats-server did not start"))?;
    let js = jetstream::new(client);
    let delivered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..pairs {
        let name = format!("pair{i}");
        let subject = format!("pair.{i}");
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create stream: {e}"))?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("c{i}")),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create consumer: {e}"))?;
        let window = Arc::new(Semaphore::new(window as usize));
        // Consumer: acknowledge each message, then open the window.
        let (w, d, e) = (window.clone(), delivered.clone(), errors.clone());
        tasks.spawn(async move {
            let Ok(mut messages) = consumer.messages().await else {
                e.fetch_add(1, Ordering::Relaxed);
                return;
            };
            while let Some(Ok(message)) = messages.next().await {
                if message.ack().await.is_err() {
                    e.fetch_add(1, Ordering::Relaxed);
                }
                d.fetch_add(1, Ordering::Relaxed);
                w.add_permits(1);
            }
        });
        // Publisher: one publish per window permit; each ack is awaited.
        let (js, payload, e) = (js.clone(), payload.clone(), errors.clone());
        tasks.spawn(async move {
            loop {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                let body = bytes::Bytes::copy_from_slice(&payload);
                match js.publish(subject.clone(), body).await {
                    Ok(ack) => {
                        let e = e.clone();
                        tokio::spawn(async move {
                            if ack.await.is_err() {
                                e.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(_) => {
                        e.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep(timing.warmup).await;
    let cpu0 = procfs::sample(&[pid])?;
    let d0 = delivered.load(Ordering::Relaxed);
    tokio::time::sleep(timing.measure).await;
    let d1 = delivered.load(Ordering::Relaxed);
    let cpu1 = procfs::sample(&[pid])?;
    tasks.abort_all();
    let seconds = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let n = (d1 - d0).max(1);
    eprintln!(
        "[nats jetstream] {:.0} delivered/s, {} errors",
        n as f64 / seconds,
        errors.load(Ordering::Relaxed)
    );
    drop(server);
    Ok(NatsReport {
        delivered_per_s: (n as f64 / seconds).round(),
        server_cpu_us_per_msg: ((cpu1.cpu_us - cpu0.cpu_us) as f64 / n as f64 * 100.0).round()
            / 100.0,
        version,
    })
}
