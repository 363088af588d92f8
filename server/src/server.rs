//! The listener: accepts TCP, enforces connection limits, runs TLS and HTTP, and shuts down
//! gracefully (stop accepting, close connections, drain, flush).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditEvent, AuditSink};
use crate::clock::Clock;
use crate::http::{self, PeerInfo};
use crate::hub::{CloseReason, Hub};
use crate::limits;
use crate::rate_limit::RateLimiter;
use crate::relay::Relay;

/// Everything a connection needs, shared.
#[derive(Debug)]
pub struct Context {
    /// Request handling over the store.
    pub relay: Relay,
    /// Who is online.
    pub hub: Arc<Hub>,
    /// The server's clock.
    pub clock: Arc<dyn Clock>,
    /// Origins a browser may bind its proof to (`https://host:port`).
    pub origins: Vec<String>,
    /// Flips to true when the server begins shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Live WebSocket connections.
    pub live_connections: AtomicUsize,
    /// Rate limits.
    pub limits: Limiters,
    /// Where every decision goes.
    pub audit: Arc<dyn AuditSink>,
    /// How long the access log keeps entries, in days.
    pub audit_days: u32,
    /// Held by a retention sweep (one at a time); policy changes wait for it.
    pub sweeping: tokio::sync::Mutex<()>,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
}

/// The server's rate limiters.
#[derive(Debug)]
pub struct Limiters {
    /// Authentication and enrolment attempts per IP.
    pub auth: RateLimiter<IpAddr>,
    /// Sends per device.
    pub sends: RateLimiter<medrelay_proto::DeviceId>,
    /// Prekey fetches per device.
    pub fetches: RateLimiter<medrelay_proto::DeviceId>,
}

impl Limiters {
    /// The limiters, with `sends_per_second` per device (bursts of twice that).
    pub fn new(sends_per_second: u32) -> Self {
        Limiters {
            auth: RateLimiter::new(limits::AUTH_RATE),
            sends: RateLimiter::new(limits::send_rate(sends_per_second)),
            fetches: RateLimiter::new(limits::FETCH_RATE),
        }
    }
}

impl Default for Limiters {
    fn default() -> Self {
        Limiters::new(limits::DEFAULT_SENDS_PER_SECOND)
    }
}

impl Context {
    /// Records one event of the server's own (not a request's) through the audit seam.
    pub fn record(&self, event: AuditEvent) {
        if let Err(error) = self.audit.record(&event) {
            tracing::error!(%error, "audit event lost");
        }
    }

    /// Runs one retention sweep (one at a time) and records what it did, in counts, in the
    /// access log: one entry per org, and one for the server-wide access log.
    pub async fn sweep(&self, now_ms: u64) -> Result<crate::retention::SweepOutcome, String> {
        let _one_at_a_time = self.sweeping.lock().await;
        self.audit.ready().map_err(|e| e.to_string())?;
        let store = self.relay.store().clone();
        let result =
            crate::retention::sweep(store, self.audit.clone(), now_ms, self.audit_days).await;
        let source = IpAddr::from([127, 0, 0, 1]);
        match &result {
            Ok(outcome) => {
                for (org, part) in &outcome.orgs {
                    self.audit
                        .record(&AuditEvent {
                            at_ms: now_ms,
                            actor: None,
                            action: "retention_sweep",
                            objects: vec![
                                format!("org={org}"),
                                format!("envelopes_deleted={}", part.counts.envelopes),
                                format!("archive_items_deleted={}", part.counts.archive_items),
                                format!("kept_by_hold={}", part.counts.kept_by_hold),
                                format!("unreadable={}", part.counts.unreadable),
                                format!("keys_shredded={}", part.keys_shredded),
                            ],
                            outcome: crate::audit::Outcome::Allowed,
                            source,
                        })
                        .map_err(|e| e.to_string())?;
                }
                self.audit
                    .record(&AuditEvent {
                        at_ms: now_ms,
                        actor: None,
                        action: "retention_sweep",
                        objects: vec![
                            format!(
                                "access_log_entries_deleted={}",
                                outcome.access_log_entries_deleted
                            ),
                            format!("keys_shredded={}", outcome.access_log_keys_shredded),
                        ],
                        outcome: crate::audit::Outcome::Allowed,
                        source,
                    })
                    .map_err(|e| e.to_string())?;
                tracing::info!(orgs = outcome.orgs.len(), "retention sweep done");
            }
            Err(error) => {
                tracing::error!(%error, "retention sweep failed");
                self.record(AuditEvent {
                    at_ms: now_ms,
                    actor: None,
                    action: "retention_sweep",
                    objects: Vec::new(),
                    outcome: crate::audit::Outcome::Denied(medrelay_proto::ErrorCode::Internal),
                    source,
                });
            }
        }
        result
    }

    /// Verifies the access log, never during a sweep (a trim in progress is not tampering).
    pub async fn verify_access_log(
        &self,
    ) -> Result<medrelay_proto::AccessLogStatus, crate::audit::AuditError> {
        let _one_at_a_time = self.sweeping.lock().await;
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || audit.verify())
            .await
            .map_err(|e| crate::audit::AuditError(e.to_string()))?
    }
}

/// How long before a day begins the sweeper makes its data keys.
const PREPARE_KEYS_AHEAD_MS: u64 = 60 * 60 * 1000;
/// How long the sweeper waits after a failed attempt to make a day's keys.
const PREPARE_KEYS_RETRY: Duration = Duration::from_secs(60);

/// Runs the retention sweeper until `shutdown` flips: a sweep whenever `interval_ms` of the
/// server's clock (which tests drive) has passed since the last one, the first counted from
/// `started_ms`. The caller reads that before spawning the task, so a clock moved the moment
/// the server listens is never taken as the starting point.
pub async fn sweeper(context: Arc<Context>, interval_ms: u64, started_ms: u64) {
    let mut shutdown = context.shutdown.clone();
    let mut last = started_ms;
    let mut prepared_day = None;
    let mut prepare_retry_at: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = context.clock.now_ms();
        // A quiet log gets its checkpoint with this flush, and the head file names it once
        // it is durable.
        if let Err(error) = context.audit.seal_idle(now) {
            tracing::error!(%error, "could not seal the access log's quiet tail");
        }
        match context.relay.store().sync().await {
            Ok(()) => {
                // An atomic file replacement with two fsyncs: off the runtime's workers, which
                // a slow disk would otherwise stall (tens to hundreds of ms under load here).
                let audit = context.audit.clone();
                match tokio::task::spawn_blocking(move || audit.record_head()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "could not record the access log's head");
                    }
                    Err(error) => tracing::error!(%error, "recording the access log's head failed"),
                }
            }
            Err(error) => tracing::error!(%error, "could not flush the access log's tail"),
        }
        // The data keys of the day about to begin (and, at start, of today), made before
        // their first use on a blocking thread: see `Keyring::prepare`. After a failure,
        // the next attempt waits a minute.
        let ahead = crate::keyring::day_of(now.saturating_add(PREPARE_KEYS_AHEAD_MS));
        let retry_due = prepare_retry_at.is_none_or(|at| std::time::Instant::now() >= at);
        if prepared_day != Some(ahead) && retry_due {
            let store = context.relay.store().clone();
            let today = crate::keyring::day_of(now);
            let prepared =
                match tokio::task::spawn_blocking(move || store.prepare_keys(today, ahead)).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(join) => Err(join.to_string()),
                };
            match prepared {
                Ok(created) => {
                    tracing::debug!(created, today, ahead, "data keys ready ahead of the day");
                    prepared_day = Some(ahead);
                    prepare_retry_at = None;
                }
                Err(error) => {
                    tracing::error!(%error, "could not make the day's keys ahead; retrying in a minute");
                    prepare_retry_at = Some(std::time::Instant::now() + PREPARE_KEYS_RETRY);
                }
            }
        }
        if now.saturating_sub(last) < interval_ms {
            continue;
        }
        last = now;
        if let Err(error) = context.sweep(now).await {
            tracing::error!(%error, "retention sweep failed; the next one retries");
        }
    }
}

/// Counts connections per IP address.
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpGuard> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limits::MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            per_ip: self.clone(),
            ip,
        })
    }
}

struct PerIpGuard {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self.per_ip.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves until `shutdown` resolves, then drains and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    context: Arc<Context>,
    shutdown_tx: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits::MAX_CONNECTIONS));
    let per_ip = Arc::new(PerIp::default());
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("connection limit reached; refusing a connection");
            continue;
        };
        let Some(ip_guard) = per_ip.try_acquire(addr.ip()) else {
            tracing::warn!("per-address connection limit reached; refusing a connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let context = context.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ip_guard = ip_guard;
            handle_tcp(stream, addr, acceptor, context).await;
        });
    }
    tracing::info!("shutting down: no longer accepting connections");
    shutdown_tx.send_replace(true);
    context.hub.close_all(CloseReason::Shutdown);
    let deadline = tokio::time::Instant::now() + limits::SHUTDOWN_DRAIN_TIMEOUT;
    while context.live_connections.load(Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(error) = context.relay.store().sync().await {
        tracing::error!(%error, "final flush failed");
    }
    tracing::info!("shutdown complete");
}

async fn handle_tcp(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    context: Arc<Context>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let tls =
        match tokio::time::timeout(limits::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
    let mut tls_exporter = [0u8; 32];
    if let Err(error) = tls.get_ref().1.export_keying_material(
        &mut tls_exporter,
        medrelay_proto::TLS_EXPORTER_LABEL,
        None,
    ) {
        tracing::warn!(%error, "could not derive TLS exporter keying material");
        return;
    }
    let peer = PeerInfo { addr, tls_exporter };
    let service = service_fn(move |request| http::route(request, context.clone(), peer.clone()));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HTTP_HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}
