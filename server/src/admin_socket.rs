//! The local admin socket: how `medrelay org add` reaches a running server.
//!
//! sled allows one process per database, so while `medrelay serve` runs, other `medrelay`
//! commands on the same data directory ask it through a Unix socket inside the data directory
//! (mode 0600: only the account that runs the server may use it). One JSON request per line,
//! one JSON answer per line.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::clock::{Clock, ManualClock};
use crate::relay::Relay;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 4096;

/// A request on the admin socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Add an org and return its first admin's invite.
    OrgAdd {
        /// The org's name.
        name: String,
    },
    /// Moves the server's clock forward (only on a server started with `--test-clock`).
    AdvanceClock {
        /// Milliseconds to move.
        ms: u64,
    },
    /// Makes access-log writes fail, or succeed again, as a full disk would (only on a server
    /// started with `--test-clock`): proves the server fails closed.
    FailAccessLog {
        /// Fail (true) or work again (false).
        failing: bool,
    },
}

/// The answer to `org_add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgAdded {
    /// The org's name.
    pub org: String,
    /// The org's id.
    pub org_id: String,
    /// The first admin's one-time invite.
    pub admin_invite: String,
    /// When it expires.
    pub admin_invite_expires_ms: u64,
}

/// An answer on the admin socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdminResponse {
    /// Success.
    OrgAdded(OrgAdded),
    /// The clock after moving it.
    Clock {
        /// Server time now.
        now_ms: u64,
    },
    /// Failure, in plain words.
    Error {
        /// What went wrong.
        error: String,
    },
}

/// Adds an org through the relay and makes it durable.
pub async fn org_add(relay: &Relay, name: &str) -> Result<OrgAdded, String> {
    let (org, invite) = relay.create_org(name).map_err(|e| e.message.clone())?;
    relay.store().sync().await.map_err(|e| e.to_string())?;
    Ok(OrgAdded {
        org: org.name,
        org_id: org.id.to_string(),
        admin_invite: invite.code,
        admin_invite_expires_ms: invite.expires_ms,
    })
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Serves admin requests until the task is dropped. `test_clock` is the server's clock when it
/// runs on an injected one.
pub async fn serve(
    listener: UnixListener,
    relay: Arc<Relay>,
    test_clock: Option<ManualClock>,
    test_log: Option<Arc<crate::access_log::AccessLog>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let relay = relay.clone();
        let test_clock = test_clock.clone();
        let test_log = test_log.clone();
        tokio::spawn(async move {
            if let Err(error) =
                handle(stream, &relay, test_clock.as_ref(), test_log.as_deref()).await
            {
                tracing::debug!(%error, "admin socket request failed");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    relay: &Relay,
    test_clock: Option<&ManualClock>,
    test_log: Option<&crate::access_log::AccessLog>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(AdminRequest::OrgAdd { name }) => match org_add(relay, &name).await {
            Ok(added) => {
                tracing::info!(org = %added.org_id, "organisation added");
                AdminResponse::OrgAdded(added)
            }
            Err(error) => AdminResponse::Error { error },
        },
        Ok(AdminRequest::AdvanceClock { ms }) => match test_clock {
            Some(clock) => {
                clock.advance(ms);
                tracing::warn!(ms, "test clock advanced");
                AdminResponse::Clock {
                    now_ms: clock.now_ms(),
                }
            }
            None => AdminResponse::Error {
                error: "this server runs on the system clock (no --test-clock)".to_owned(),
            },
        },
        Ok(AdminRequest::FailAccessLog { failing }) => match test_log {
            Some(log) => {
                log.set_failing(failing);
                tracing::warn!(failing, "test: access-log writes set to fail");
                AdminResponse::Clock {
                    now_ms: relay.clock.now_ms(),
                }
            }
            None => AdminResponse::Error {
                error: "only a server started with --test-clock takes test faults".to_owned(),
            },
        },
        Err(error) => AdminResponse::Error {
            error: format!("unreadable admin request: {error}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Sends one request to a running server; `Ok(None)` if no server listens.
pub async fn request(
    path: &Path,
    request: &AdminRequest,
) -> std::io::Result<Option<AdminResponse>> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(std::io::Error::other)
}
