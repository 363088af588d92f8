//! The `medrelay` command: serve, initialise a data directory, add an org.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};
use medrelay_server::access_log::{self, AccessLog};
use medrelay_server::admin_socket::{self, AdminRequest, AdminResponse};
use medrelay_server::clock::{Clock, ManualClock, SystemClock};
use medrelay_server::datadir::{DataDir, DEFAULT_ORG_NAME};
use medrelay_server::hub::Hub;
use medrelay_server::metrics::Metrics;
use medrelay_server::relay::Relay;
use medrelay_server::server::{self, Context};
use medrelay_server::store::sled_store::SledStore;
use medrelay_server::store::Store;
use medrelay_server::tls;
use tokio::sync::watch;

/// The server allocates and frees many small buffers per message on every worker thread;
/// mimalloc's per-thread heaps cost less for that than the system allocator (measured in
/// bench/FINDINGS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "medrelay",
    version,
    about = "A self-hosted, end-to-end encrypted messaging relay for clinics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. On first start with an empty data directory it initialises it
    /// (org, development certificates, first admin invite).
    Serve {
        /// Data directory.
        #[arg(long, default_value = "./medrelay-data")]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Extra host name or IP address for the development certificate and the allowed
        /// browser origins (repeatable).
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// Name of the first org, on first start.
        #[arg(long, default_value = DEFAULT_ORG_NAME)]
        org: String,
        /// Serve this certificate chain (PEM) instead of the development certificate.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The private key (PEM) of --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Also accept TLS 1.2 (AEAD suites only). TLS 1.3 only by default.
        #[arg(long)]
        tls12: bool,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
        /// The master key file (default: DIR/master.key). Keep it out of the data
        /// directory's backups: a backup with its master key defeats crypto-shredding.
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// How long the access log keeps entries, in days (six years by default).
        #[arg(long, default_value_t = 6 * 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        audit_retention_days: u32,
        /// Minutes of the server's clock between two retention sweeps.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=10_080))]
        sweep_interval_minutes: u64,
        /// Sends one device may make per second, on average (bursts of twice that); more are
        /// refused with RATE_LIMITED. Raise it for an integration that sends in bulk, or for
        /// load tests.
        #[arg(long, default_value_t = medrelay_server::limits::DEFAULT_SENDS_PER_SECOND,
              value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        sends_per_second: u32,
        /// Tests only: run on a clock that moves only when `advance_clock` is sent on the
        /// admin socket.
        #[arg(long, hide = true)]
        test_clock: bool,
    },
    /// Initialise a data directory without serving; prints one JSON object.
    Init {
        /// Data directory (created if missing; must not be initialised already).
        #[arg(long)]
        data: PathBuf,
        /// Name of the first org.
        #[arg(long, default_value = DEFAULT_ORG_NAME)]
        org: String,
        /// Extra host name or IP address for the development certificate (repeatable).
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// The master key file (default: DIR/master.key; created if missing).
        #[arg(long)]
        master_key: Option<PathBuf>,
    },
    /// Manage organisations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// The access log: verify its chain and checkpoints, export it (server stopped).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The org archive, offline, on the privacy officer's machine: make its key pair, open an
    /// export.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Generate the archive key pair: writes the secret key to --out (mode 0600, never
    /// overwritten) and prints the public key for `medrelay-client admin archive enable`.
    Keygen {
        /// Where to write the secret key. Keep it offline; whoever holds it can read the
        /// archive.
        #[arg(long)]
        out: PathBuf,
    },
    /// Open an export (`medrelay-client admin archive export`) with the secret key and print
    /// the transcript as JSON lines, oldest first.
    Open {
        /// The archive secret key (from `medrelay archive keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The export file.
        #[arg(long = "in")]
        input: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; names the first broken entry.
    Verify {
        /// Data directory.
        #[arg(long, default_value = "./medrelay-data")]
        data: PathBuf,
        /// The master key file (default: DIR/master.key).
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// The checkpoint public key recorded when the server was set up (64 hex digits);
        /// default DIR/access-log.pub. Give it: a copy kept off the server is what an
        /// attacker who can write the data directory cannot change.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
    },
    /// Print entries as JSON lines or CSV, optionally filtered.
    Export {
        /// Data directory.
        #[arg(long, default_value = "./medrelay-data")]
        data: PathBuf,
        /// The master key file (default: DIR/master.key).
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only entries at or after this time (ms since the Unix epoch).
        #[arg(long)]
        since_ms: Option<u64>,
        /// Only entries before this time (ms since the Unix epoch).
        #[arg(long)]
        until_ms: Option<u64>,
        /// Only this action (request kind, e.g. `send`, `login`).
        #[arg(long)]
        action: Option<String>,
        /// Only this actor (user id, hex).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Add an org (also while the server runs); prints its first admin invite as JSON.
    Add {
        /// Data directory.
        #[arg(long, default_value = "./medrelay-data")]
        data: PathBuf,
        /// The master key file, when the server is not running (default: DIR/master.key).
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// The org's name.
        name: String,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal who has not set NO_COLOR: a log file or the
    // journal gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("medrelay: could not start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("medrelay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open(data: &DataDir, clock: Arc<dyn Clock>) -> anyhow::Result<(Arc<SledStore>, Relay)> {
    data.create()?;
    let keyring = Arc::new(data.open_keyring()?);
    let store = Arc::new(SledStore::open(&data.db(), keyring)?);
    let relay = Relay::new(store.clone(), clock);
    Ok((store, relay))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data,
            org,
            hostnames,
            master_key,
        } => {
            let data = DataDir::new(data).with_master_key(master_key);
            let (store, relay) = open(&data, Arc::new(SystemClock)).await?;
            let report = data.initialise(&store, &relay, &org, &hostnames).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Audit { command } => audit(command).await,
        Command::Archive { command } => archive(command),
        Command::Org {
            command:
                OrgCommand::Add {
                    data,
                    master_key,
                    name,
                },
        } => {
            let data = DataDir::new(data).with_master_key(master_key);
            let request = AdminRequest::OrgAdd { name: name.clone() };
            let added = match admin_socket::request(&data.admin_socket(), &request).await? {
                Some(AdminResponse::OrgAdded(added)) => added,
                Some(AdminResponse::Error { error }) => bail!("the server refused: {error}"),
                Some(AdminResponse::Clock { .. }) => bail!("unexpected answer from the server"),
                None => {
                    if !data.db().exists() {
                        bail!(
                            "{} is not a medrelay data directory (run `medrelay init --data {}` first)",
                            data.root().display(),
                            data.root().display()
                        );
                    }
                    let (store, relay) = open(&data, Arc::new(SystemClock)).await?;
                    if !store.is_initialised()? {
                        bail!("{} is not initialised", data.root().display());
                    }
                    admin_socket::org_add(&relay, &name)
                        .await
                        .map_err(|e| anyhow!(e))?
                }
            };
            println!("{}", serde_json::to_string(&added)?);
            Ok(())
        }
        Command::Serve {
            data,
            listen,
            hostnames,
            org,
            cert,
            key,
            tls12,
            json_logs,
            master_key,
            audit_retention_days,
            sweep_interval_minutes,
            sends_per_second,
            test_clock,
        } => {
            init_logs(json_logs);
            let data = DataDir::new(data).with_master_key(master_key);
            let manual_clock = test_clock.then(|| ManualClock::new(SystemClock.now_ms()));
            let clock: Arc<dyn Clock> = match &manual_clock {
                Some(manual) => {
                    eprintln!(
                        "medrelay: WARNING: running on a test clock that only moves when told to; \
                         never use --test-clock in production"
                    );
                    Arc::new(manual.clone())
                }
                None => Arc::new(SystemClock),
            };
            let (store, relay) = open(&data, clock.clone()).await?;
            let access_log = AccessLog::open(
                &store,
                access_log::load_or_create_key(data.root())?,
                Some(data.root().join(access_log::HEAD_FILE)),
                clock.now_ms(),
            )?;
            if !store.is_initialised()? {
                let report = data.initialise(&store, &relay, &org, &hostnames).await?;
                println!(
                    "Initialised {} for \"{}\".",
                    data.root().display(),
                    report.org
                );
                println!("Clients trust the development CA in {}", report.ca);
                println!(
                    "First admin invite (single use, valid 7 days): {}",
                    report.admin_invite
                );
            }
            let (cert, key) = match (cert, key) {
                (Some(cert), Some(key)) => (cert, key),
                _ => (data.server_cert(), data.server_key()),
            };
            let tls = tls::server_config(&cert, &key, tls12)?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("could not listen on {listen}"))?;
            let local = listener.local_addr()?;
            let mut origins = Vec::new();
            let port = local.port();
            for host in ["localhost", "127.0.0.1", "[::1]"]
                .into_iter()
                .map(str::to_owned)
                .chain(hostnames.iter().map(|h| {
                    if h.contains(':') {
                        format!("[{h}]")
                    } else {
                        h.clone()
                    }
                }))
            {
                origins.push(format!("https://{host}:{port}"));
            }
            let (shutdown_tx, shutdown_rx) = watch::channel(false);
            let relay = Arc::new(relay);
            let context = Arc::new(Context {
                relay: (*relay).clone(),
                hub: Arc::new(Hub::default()),
                clock: clock.clone(),
                origins,
                shutdown: shutdown_rx,
                live_connections: AtomicUsize::new(0),
                limits: server::Limiters::new(sends_per_second),
                audit: access_log.clone(),
                audit_days: audit_retention_days,
                sweeping: tokio::sync::Mutex::new(()),
                metrics: {
                    let (commit, mail) = (store.clone(), store.clone());
                    Metrics::new(move || commit.commit_stats(), move || mail.mail_stats())
                },
            });
            // Read before anything can move the test clock.
            let sweeps_from_ms = clock.now_ms();
            let admin = admin_socket::bind(&data.admin_socket())
                .with_context(|| format!("could not bind {}", data.admin_socket().display()))?;
            let test_log = manual_clock.is_some().then(|| access_log.clone());
            let admin_task = tokio::spawn(admin_socket::serve(
                admin,
                relay.clone(),
                manual_clock,
                test_log,
            ));
            let sweeper_task = tokio::spawn(server::sweeper(
                context.clone(),
                sweep_interval_minutes * 60_000,
                sweeps_from_ms,
            ));
            println!("medrelay listening on {local} (wss://{local}/v1/ws)");
            tracing::info!(%local, "listening");
            server::serve(listener, tls, context, shutdown_tx, shutdown_signal()).await;
            admin_task.abort();
            sweeper_task.abort();
            // The last entries and a checkpoint over them, durable; then the head file.
            access_log.request_checkpoint();
            store.sync().await?;
            if let Err(error) = access_log.write_head_file() {
                tracing::error!(%error, "could not record the access log's head");
            }
            let _ = std::fs::remove_file(data.admin_socket());
            drop(store);
            Ok(())
        }
    }
}

/// `medrelay audit ...`: offline, on a stopped server's data directory.
async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let data_dir = match &command {
        AuditCommand::Verify {
            data, master_key, ..
        }
        | AuditCommand::Export {
            data, master_key, ..
        } => DataDir::new(data).with_master_key(master_key.clone()),
    };
    if !data_dir.db().exists() {
        bail!(
            "{} is not a medrelay data directory",
            data_dir.root().display()
        );
    }
    if !data_dir.keyring().exists() {
        bail!(
            "{} has no keyring; it is not a medrelay data directory",
            data_dir.root().display()
        );
    }
    let keyring = Arc::new(data_dir.open_keyring()?);
    let store = SledStore::open(&data_dir.db(), keyring)?;
    match command {
        AuditCommand::Verify { public_key, .. } => {
            if !data_dir.root().join("access-log.key").exists() {
                bail!(
                    "{} has no access log yet: `medrelay serve` has not run on it",
                    data_dir.root().display()
                );
            }
            let public_key = match public_key {
                Some(hex_key) => hex::decode(hex_key.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                    .ok_or_else(|| anyhow!("--public-key must be 64 hexadecimal digits"))?,
                None => access_log::load_public_key(data_dir.root())?,
            };
            let head = access_log::read_head(data_dir.root()).map_err(|e| anyhow!(e))?;
            match access_log::verify(store.database(), store.codec(), &public_key, head.as_ref()) {
                Ok(verified) => {
                    println!("{}", serde_json::to_string(&verified)?);
                    Ok(())
                }
                Err(broken) => {
                    println!(
                        "{}",
                        serde_json::json!({"ok": false, "entry": broken.seq, "reason": broken.reason})
                    );
                    bail!("{broken}")
                }
            }
        }
        AuditCommand::Export {
            format,
            since_ms,
            until_ms,
            action,
            actor,
            ..
        } => {
            let mut out = std::io::stdout().lock();
            if matches!(format, ExportFormat::Csv) {
                writeln!(
                    out,
                    "seq,at_ms,org,user,device,role,action,objects,outcome,source,hash"
                )?;
            }
            for entry in access_log::entries(store.database(), store.codec())? {
                let body = &entry.body;
                let keep = since_ms.is_none_or(|s| body.at_ms >= s)
                    && until_ms.is_none_or(|u| body.at_ms < u)
                    && action.as_deref().is_none_or(|a| body.action == a)
                    && actor
                        .as_deref()
                        .is_none_or(|a| body.actor.as_ref().is_some_and(|x| x.1 == a));
                if !keep {
                    continue;
                }
                let (org, user, device, role) = body.actor.clone().unwrap_or_default();
                match format {
                    ExportFormat::Jsonl => writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "seq": body.seq, "at_ms": body.at_ms, "org": org, "user": user,
                            "device": device, "role": role, "action": body.action,
                            "objects": body.objects, "outcome": body.outcome,
                            "source": body.source, "hash": hex::encode(entry.hash),
                        })
                    )?,
                    ExportFormat::Csv => writeln!(
                        out,
                        "{},{},{},{},{},{},{},{},{},{},{}",
                        body.seq,
                        body.at_ms,
                        org,
                        user,
                        device,
                        role,
                        body.action,
                        body.objects.join(" "),
                        body.outcome,
                        body.source,
                        hex::encode(entry.hash)
                    )?,
                }
            }
            Ok(())
        }
    }
}

/// `medrelay archive ...`: offline, on the privacy officer's machine.
fn archive(command: ArchiveCommand) -> anyhow::Result<()> {
    match command {
        ArchiveCommand::Keygen { out } => {
            let public = medrelay_server::archive::keygen(&out)?;
            println!(
                "{}",
                serde_json::json!({ "public_key": public, "secret_key_file": out.display().to_string() })
            );
            eprintln!(
                "medrelay: the archive secret key is in {}; keep it offline. Enable the archive \
                 with: medrelay-client admin archive enable --public-key {public}",
                out.display()
            );
            Ok(())
        }
        ArchiveCommand::Open { key, input } => {
            let mut out = std::io::stdout().lock();
            let report = medrelay_server::archive::open_export(&key, &input, &mut out)?;
            eprintln!(
                "medrelay: opened {} archived messages ({} could not be opened)",
                report.opened, report.failed
            );
            if report.failed > 0 {
                bail!("{} archived messages could not be opened", report.failed);
            }
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
