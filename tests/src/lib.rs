//! The harness for medrelay's end-to-end tests: a real `medrelay` process on a temporary data
//! directory, and a raw protocol client (real TLS 1.3, exporter binding, WebSocket, protobuf
//! frames) for the tests that must speak the protocol by hand: forged, replayed, oversized and
//! malformed input. Tests that message like a person does drive the `medrelay-client` CLI.
//!
//! The binaries are the workspace's own: `cargo test --workspace` builds them next to the test
//! executables (the server and SDK packages have integration tests of their own, which makes
//! cargo build their binaries).

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use medrelay_proto::{
    auth_transcript, decode_server_frame, encode_client_frame, enroll_transcript, Binding,
    ChannelBinding, ClientFrame, ClientRequest, DeviceId, DeviceKeys, Ed25519PublicKey,
    EnrollRequest, IdentityKeys, InviteCode, MlKemPublicKey, OneTimePrekey, PqSignedPrekey,
    ServerFrame, ServerMessage, Signature, SignedPrekey, X25519PublicKey,
};
use medrelay_sdk::DeviceIdentity;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a test waits for any single answer before calling the server hung.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of one of the workspace's binaries, built by `cargo test --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the binaries)",
        path.display()
    );
    path
}

/// A running `medrelay serve` on a temporary data directory.
#[derive(Debug)]
pub struct Server {
    /// Holds the data directory and the log file.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The first admin's invite, printed on first start.
    pub admin_invite: Option<String>,
    /// Whether it runs on the injected test clock.
    test_clock: bool,
    /// Further `serve` options.
    extra_args: Vec<String>,
}

impl Server {
    /// Starts a fresh server (first start: initialises the data directory).
    pub fn start() -> anyhow::Result<Server> {
        Self::start_with(&[])
    }

    /// Like [`Server::start`], with further `serve` options.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut server = Server {
            dir,
            child: None,
            port: 0,
            admin_invite: None,
            test_clock: false,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a fresh server on the injected clock: its time moves only by
    /// [`Server::advance_clock`].
    pub fn start_with_test_clock() -> anyhow::Result<Server> {
        Self::start_with_test_clock_and(&[])
    }

    /// Like [`Server::start_with_test_clock`], with further `serve` options.
    pub fn start_with_test_clock_and(args: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut server = Server {
            dir,
            child: None,
            port: 0,
            admin_invite: None,
            test_clock: true,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Makes the server's access-log writes fail (or work again), as a full disk would; only
    /// on the test clock.
    pub fn fail_access_log(&self, failing: bool) -> anyhow::Result<()> {
        let answer = self.admin_request(&format!(
            "{{\"op\":\"fail_access_log\",\"failing\":{failing}}}"
        ))?;
        if answer.get("error").is_some() {
            bail!("the server refused: {answer}");
        }
        Ok(())
    }

    fn admin_request(&self, line: &str) -> anyhow::Result<serde_json::Value> {
        use std::io::Write;
        let mut socket = std::os::unix::net::UnixStream::connect(self.data().join("admin.sock"))?;
        writeln!(socket, "{line}")?;
        let mut answer = String::new();
        BufReader::new(socket).read_line(&mut answer)?;
        Ok(serde_json::from_str(&answer)?)
    }

    /// Moves the server's clock forward; returns its time now.
    pub fn advance_clock(&self, ms: u64) -> anyhow::Result<u64> {
        let answer = self.admin_request(&format!("{{\"op\":\"advance_clock\",\"ms\":{ms}}}"))?;
        answer["now_ms"]
            .as_u64()
            .ok_or_else(|| anyhow!("the server refused to move its clock: {answer}"))
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file (its stderr, at debug level).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The dev CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.data().join("certs/ca.pem")
    }

    /// `wss://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("wss://localhost:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(binary("medrelay"));
        if self.test_clock {
            command.arg("serve").arg("--test-clock");
        } else {
            command.arg("serve");
        }
        command.args(&self.extra_args);
        let mut child = command
            .arg("--data")
            .arg(self.data())
            .arg("--listen")
            // A restart keeps the port, so clients' remembered URLs stay right.
            .arg(format!("127.0.0.1:{}", self.port))
            .env("MEDRELAY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("could not start medrelay")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .context("medrelay did not report listening within 30 s")?;
            if let Some(code) = line.strip_prefix("First admin invite (single use, valid 7 days): ")
            {
                self.admin_invite = Some(code.trim().to_owned());
            }
            if let Some(rest) = line.strip_prefix("medrelay listening on ") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                self.port = addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| anyhow!("unreadable listen line: {line}"))?;
                break;
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server with SIGKILL (no chance to flush or clean up) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for a graceful exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("could not signal the server");
        }
        Ok(child.wait()?)
    }

    /// Starts the server again on the same data directory (after kill9 or terminate).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Stops the server with SIGTERM (it drains and flushes) and starts it again.
    pub fn restart_gracefully(&mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!("the server exited with {status} on SIGTERM");
        }
        self.spawn()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Adds an org through `medrelay org add` and returns its first admin invite.
    pub fn add_org(&self, name: &str) -> anyhow::Result<String> {
        let out = Command::new(binary("medrelay"))
            .args(["org", "add", "--data"])
            .arg(self.data())
            .arg(name)
            .output()?;
        if !out.status.success() {
            bail!("org add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let added: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        added["admin_invite"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no admin_invite in {added}"))
    }

    /// Every file under the data directory, for scanning.
    pub fn data_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut stack = vec![self.data()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A rustls client configuration trusting the server's dev CA.
pub fn tls_config(ca_pem: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A protocol client speaking raw frames, for tests that must misbehave on purpose.
#[derive(Debug)]
pub struct RawClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    /// The TLS exporter secret of this connection.
    pub exporter: [u8; 32],
    /// The challenge nonce the server sent.
    pub nonce: [u8; 32],
    next_request_id: u64,
    /// Frames pushed by the server while waiting for an answer.
    pub pushed: Vec<ServerFrame>,
    /// What the server said when this connection authenticated.
    pub auth_ok: Option<medrelay_proto::AuthOk>,
}

impl RawClient {
    /// Connects to the server, upgrades to WebSocket and reads the challenge.
    pub async fn connect(server: &Server) -> anyhow::Result<RawClient> {
        Self::connect_with(server, WebSocketConfig::default()).await
    }

    /// Connects with a given WebSocket configuration (e.g. to send oversized frames).
    pub async fn connect_with(
        server: &Server,
        config: WebSocketConfig,
    ) -> anyhow::Result<RawClient> {
        Self::connect_from(server, config, std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Connects from a given loopback source address (127.0.0.2 and beyond are other hosts
    /// as far as the server's allow-lists are concerned).
    pub async fn connect_from(
        server: &Server,
        config: WebSocketConfig,
        source: std::net::Ipv4Addr,
    ) -> anyhow::Result<RawClient> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from((source, 0)))?;
        let tcp = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], server.port)))
            .await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(tls_config(&server.ca_path())?);
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(name, tcp).await?;
        let mut exporter = [0u8; 32];
        tls.get_ref().1.export_keying_material(
            &mut exporter,
            medrelay_proto::TLS_EXPORTER_LABEL,
            None,
        )?;
        let request = format!("wss://localhost:{}/v1/ws", server.port).into_client_request()?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(config)).await?;
        let mut client = RawClient {
            ws,
            exporter,
            nonce: [0; 32],
            next_request_id: 1,
            pushed: Vec::new(),
            auth_ok: None,
        };
        match client.next_frame().await?.message {
            ServerMessage::Challenge(challenge) => client.nonce = challenge.nonce,
            other => bail!("expected a challenge first, got {}", other.name()),
        }
        Ok(client)
    }

    /// Sends raw WebSocket message.
    pub async fn send_message(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// Sends a request and returns its request id.
    pub async fn send(&mut self, request: ClientRequest) -> anyhow::Result<u64> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let bytes = encode_client_frame(&ClientFrame {
            request_id,
            request,
        });
        self.ws.send(Message::binary(bytes)).await?;
        Ok(request_id)
    }

    /// The next server frame, or an error naming a close or a time-out.
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            let message = tokio::time::timeout(ANSWER_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame from the server within {ANSWER_TIMEOUT:?}"))?;
            match message {
                Some(Ok(Message::Binary(bytes))) => return Ok(decode_server_frame(&bytes)?),
                Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(error)) => bail!("connection failed: {error}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// The next server frame if one arrives within `wait`; `None` if none does.
    pub async fn next_frame_within(
        &mut self,
        wait: Duration,
    ) -> anyhow::Result<Option<ServerFrame>> {
        match tokio::time::timeout(wait, self.next_frame()).await {
            Ok(frame) => frame.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Every delivery pushed until none arrives for `quiet`, including those already set
    /// aside while waiting for answers.
    pub async fn drain_deliveries(
        &mut self,
        quiet: Duration,
    ) -> anyhow::Result<Vec<medrelay_proto::Delivery>> {
        let mut deliveries: Vec<_> = std::mem::take(&mut self.pushed)
            .into_iter()
            .filter_map(|f| match f.message {
                ServerMessage::Delivery(d) => Some(d),
                _ => None,
            })
            .collect();
        while let Some(frame) = self.next_frame_within(quiet).await? {
            if let ServerMessage::Delivery(d) = frame.message {
                deliveries.push(d);
            }
        }
        Ok(deliveries)
    }

    /// Whether the server closes the connection within the answer time-out (reading and
    /// discarding frames until then); returns the frames seen before the close.
    pub async fn closed_by_server(&mut self) -> anyhow::Result<Vec<ServerFrame>> {
        let mut seen = Vec::new();
        loop {
            let message = tokio::time::timeout(ANSWER_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| anyhow!("the server kept the connection open"))?;
            match message {
                Some(Ok(Message::Binary(bytes))) => seen.push(decode_server_frame(&bytes)?),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(seen),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends a request and waits for its answer, keeping pushes aside.
    pub async fn request(&mut self, request: ClientRequest) -> anyhow::Result<ServerMessage> {
        let id = self.send(request).await?;
        loop {
            let frame = self.next_frame().await?;
            if frame.request_id == id {
                return Ok(frame.message);
            }
            self.pushed.push(frame);
        }
    }

    /// The TLS exporter binding of this connection.
    pub fn binding(&self) -> Binding {
        Binding::TlsExporter(self.exporter)
    }
}

/// The proto form of an SDK device's public keys, as uploaded at enrolment.
pub fn device_keys(identity: &DeviceIdentity) -> anyhow::Result<DeviceKeys> {
    let keys = identity.public_keys();
    Ok(DeviceKeys {
        identity: IdentityKeys {
            signing_key: Ed25519PublicKey::from_array(keys.identity.signing_key),
            dh_key: X25519PublicKey::from_array(keys.identity.dh_key),
            dh_signature: Signature::from_array(keys.identity.dh_signature),
        },
        signed_prekey: SignedPrekey {
            id: keys.signed_prekey.id,
            public_key: X25519PublicKey::from_array(keys.signed_prekey.public_key),
            signature: Signature::from_array(keys.signed_prekey.signature),
        },
        pq_prekey: PqSignedPrekey {
            id: keys.pq_prekey.id,
            public_key: MlKemPublicKey::from_bytes(&keys.pq_prekey.public_key)?,
            signature: Signature::from_array(keys.pq_prekey.signature),
        },
        one_time_prekeys: keys
            .one_time_prekeys
            .iter()
            .map(|k| OneTimePrekey {
                id: k.id,
                public_key: X25519PublicKey::from_array(k.public_key),
            })
            .collect(),
    })
}

/// A device driven by hand: an SDK identity and, once enrolled, its id.
#[derive(Debug)]
pub struct RawDevice {
    /// The device's keys.
    pub identity: DeviceIdentity,
    /// Its id, once enrolled.
    pub device_id: Option<DeviceId>,
}

impl RawDevice {
    /// A new device with fresh keys.
    pub fn new() -> RawDevice {
        RawDevice {
            identity: DeviceIdentity::generate(&mut rand_core::OsRng, 0),
            device_id: None,
        }
    }

    /// The enrolment request for `client`'s connection.
    pub fn enroll_request(&self, client: &RawClient, code: &str) -> anyhow::Result<ClientRequest> {
        let keys = device_keys(&self.identity)?;
        let transcript =
            enroll_transcript(&client.nonce, &client.binding(), &keys.identity.signing_key);
        let signature = Signature::from_array(self.identity.sign_auth_transcript(&transcript)?);
        Ok(ClientRequest::Enroll(Box::new(EnrollRequest {
            invite_code: InviteCode::new(code)?,
            keys,
            binding: ChannelBinding::TlsExporter,
            signature,
            device_label: medrelay_proto::DeviceLabel::new("test device")?,
        })))
    }

    /// Enrols with `code` on a new connection; returns the authenticated connection.
    pub async fn enroll(&mut self, server: &Server, code: &str) -> anyhow::Result<RawClient> {
        let mut client = RawClient::connect(server).await?;
        let request = self.enroll_request(&client, code)?;
        match client.request(request).await? {
            ServerMessage::AuthOk(ok) => {
                self.device_id = Some(ok.device_id);
                client.auth_ok = Some(ok);
                Ok(client)
            }
            ServerMessage::Error(error) => bail!("enrolment refused: {error:?}"),
            other => bail!("unexpected answer to enroll: {}", other.name()),
        }
    }

    /// The auth proof for `client`'s connection.
    pub fn auth_request(&self, client: &RawClient) -> anyhow::Result<ClientRequest> {
        let device_id = self.device_id.ok_or_else(|| anyhow!("not enrolled"))?;
        let transcript = auth_transcript(&client.nonce, &client.binding(), &device_id);
        let signature = Signature::from_array(self.identity.sign_auth_transcript(&transcript)?);
        Ok(ClientRequest::Auth(medrelay_proto::AuthProof {
            device_id,
            binding: ChannelBinding::TlsExporter,
            signature,
        }))
    }

    /// Authenticates on a new connection.
    pub async fn connect(&self, server: &Server) -> anyhow::Result<RawClient> {
        self.connect_from(server, std::net::Ipv4Addr::LOCALHOST)
            .await
    }

    /// Authenticates on a new connection from a given loopback address.
    pub async fn connect_from(
        &self,
        server: &Server,
        source: std::net::Ipv4Addr,
    ) -> anyhow::Result<RawClient> {
        let mut client =
            RawClient::connect_from(server, WebSocketConfig::default(), source).await?;
        let request = self.auth_request(&client)?;
        match client.request(request).await? {
            ServerMessage::AuthOk(ok) => {
                client.auth_ok = Some(ok);
                Ok(client)
            }
            ServerMessage::Error(error) => bail!("authentication refused: {error:?}"),
            other => bail!("unexpected answer to auth: {}", other.name()),
        }
    }
}

impl Default for RawDevice {
    fn default() -> Self {
        Self::new()
    }
}

/// A person's `medrelay-client` profile: a home directory and a passphrase.
#[derive(Debug)]
pub struct Cli {
    home: tempfile::TempDir,
}

impl Cli {
    /// A new, empty profile.
    pub fn new() -> Cli {
        Cli {
            home: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The profile directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The command, ready to run with this profile (no terminal, passphrase from the env).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("medrelay-client"));
        command
            .arg("--home")
            .arg(self.home.path())
            .args(args)
            .env("MEDRELAY_PASSPHRASE", "correct horse battery staple")
            .env("MEDRELAY_PASSWORD", TEST_PASSWORD)
            .env("MEDRELAY_TEST_WEAK_KDF", "1")
            .stdin(Stdio::null());
        command
    }

    /// Runs a command; its stdout on success, its stderr as the error otherwise.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args).output()?;
        if out.status.success() {
            Ok(String::from_utf8(out.stdout)?)
        } else {
            bail!(
                "medrelay-client {} failed: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }

    /// Runs a command that prints one JSON object.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.run(args)?;
        Ok(serde_json::from_str(out.trim())?)
    }

    /// Runs a command that prints JSON lines.
    pub fn json_lines(&self, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        self.run(args)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    /// Enrols this profile on `server` with `code`.
    pub fn enroll(&self, server: &Server, code: &str) -> anyhow::Result<serde_json::Value> {
        let url = server.url();
        let ca = server.ca_path().display().to_string();
        self.json(&["enroll", "--server", &url, "--ca", &ca, "--code", code])
    }

    /// Creates an invite and returns its code.
    pub fn invite(&self, role: &str, handle: &str) -> anyhow::Result<String> {
        Ok(self
            .run(&["invite", "--role", role, "--handle", handle])?
            .trim()
            .to_owned())
    }

    /// Staff and admins: sets up password and TOTP, then logs in; returns the TOTP secret.
    pub fn setup_and_login(&self) -> anyhow::Result<String> {
        let setup = self.json(&["setup-credentials"])?;
        let secret = setup["totp_secret"]
            .as_str()
            .ok_or_else(|| anyhow!("no totp_secret in {setup}"))?
            .to_owned();
        self.login(&secret, now_ms())?;
        Ok(secret)
    }

    /// Logs in with the TOTP code of `at_ms` (each code works once per account: a second
    /// device of the same account logging in within 30 s uses the next step's code).
    pub fn login(&self, secret: &str, at_ms: u64) -> anyhow::Result<()> {
        self.json(&["login", "--totp", &totp_at(secret, at_ms)])
            .map(|_| ())
    }

    /// Patients: accepts the clinic's consent text.
    pub fn accept_consent(&self) -> anyhow::Result<()> {
        let answer = self.json(&["consent", "accept"])?;
        if answer["state"] != "accepted" {
            bail!("consent not accepted: {answer}");
        }
        Ok(())
    }

    /// Sends `text` to `handle`.
    pub fn send(&self, handle: &str, text: &str) -> anyhow::Result<serde_json::Value> {
        self.json(&["send", "--to", handle, text])
    }

    /// Receives what is waiting (waiting up to `wait` seconds for the first message).
    pub fn recv(&self, wait: u32) -> anyhow::Result<Vec<serde_json::Value>> {
        self.json_lines(&["recv", "--wait", &wait.to_string()])
    }
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

/// The password every test staff member and admin uses.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// The TOTP code for a base32 secret at a given time (ms since the epoch).
pub fn totp_at(secret_base32: &str, now_ms: u64) -> String {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_owned())
        .to_bytes()
        .expect("a base32 TOTP secret");
    totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        30,
        secret,
        None,
        String::new(),
    )
    .generate(now_ms / 1000)
}

/// Milliseconds since the epoch by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A password for the protocol.
pub fn password(text: &str) -> medrelay_proto::Password {
    medrelay_proto::Password::new(text).expect("a valid password")
}

impl RawClient {
    /// Staff and admins, right after enrolment: sets up credentials and logs in with a TOTP
    /// code for `server_now_ms`. Returns the base32 TOTP secret.
    pub async fn setup_and_login(&mut self, server_now_ms: u64) -> anyhow::Result<String> {
        let setup = self
            .request(ClientRequest::SetupCredentials {
                password: password(TEST_PASSWORD),
            })
            .await?;
        let ServerMessage::CredentialsSetup(setup) = setup else {
            bail!("setup refused: {setup:?}");
        };
        let secret = setup.totp_secret.expose().to_owned();
        self.login(&secret, server_now_ms).await?;
        Ok(secret)
    }

    /// Logs in with the test password and the TOTP code of `server_now_ms`.
    pub async fn login(&mut self, secret: &str, server_now_ms: u64) -> anyhow::Result<()> {
        let code = medrelay_proto::TotpCode::new(totp_at(secret, server_now_ms))?;
        match self
            .request(ClientRequest::Login {
                password: password(TEST_PASSWORD),
                second_factor: medrelay_proto::SecondFactor::Totp(code),
            })
            .await?
        {
            ServerMessage::LoginOk { .. } => Ok(()),
            other => bail!("login refused: {other:?}"),
        }
    }

    /// A patient accepts the consent text the server showed at authentication.
    pub async fn accept_consent(&mut self) -> anyhow::Result<()> {
        let text = self
            .auth_ok
            .as_ref()
            .and_then(|ok| ok.consent_text.clone())
            .ok_or_else(|| anyhow!("no consent text was shown"))?;
        match self
            .request(ClientRequest::AcceptConsent {
                text_sha256: text.sha256(),
            })
            .await?
        {
            ServerMessage::Done => Ok(()),
            other => bail!("consent refused: {other:?}"),
        }
    }

    /// Creates an invite for a new user and returns its code.
    pub async fn invite(
        &mut self,
        role: medrelay_proto::Role,
        handle: &str,
    ) -> anyhow::Result<String> {
        match self
            .request(ClientRequest::CreateInvite(
                medrelay_proto::InviteSpec::NewUser {
                    role,
                    handle: medrelay_proto::Handle::new(handle)?,
                },
            ))
            .await?
        {
            ServerMessage::InviteCreated(created) => Ok(created.code.expose().to_owned()),
            other => bail!("invite refused: {other:?}"),
        }
    }

    /// The caller's user id.
    pub async fn user_id(&mut self) -> anyhow::Result<medrelay_proto::UserId> {
        match self.request(ClientRequest::WhoAmI).await? {
            ServerMessage::Identity(identity) => Ok(identity.user_id),
            other => bail!("whoami refused: {other:?}"),
        }
    }
}

/// One person in a [`RawClinic`]: their device, a live connection, and (staff, admins) the
/// TOTP secret.
#[derive(Debug)]
pub struct Person {
    /// The device.
    pub device: RawDevice,
    /// A live, authenticated (and logged-in or consenting) connection.
    pub conn: RawClient,
    /// The TOTP secret, for staff and admins.
    pub totp_secret: Option<String>,
    /// The user id.
    pub user_id: medrelay_proto::UserId,
}

/// A clinic spoken to over raw frames: a logged-in admin, a logged-in staff member
/// (`dr.lee`) and a consenting patient (`alice`) invited by (so in the care of) the staff
/// member.
#[derive(Debug)]
pub struct RawClinic {
    /// The admin.
    pub admin: Person,
    /// The staff member.
    pub staff: Person,
    /// The patient.
    pub patient: Person,
}

impl RawClinic {
    /// Sets it up on `server`, whose clock reads `server_now_ms` (use [`now_ms`] unless it
    /// runs on the test clock).
    pub async fn new(server: &Server, server_now_ms: u64) -> anyhow::Result<RawClinic> {
        let admin = Self::staff_member(
            server,
            server
                .admin_invite
                .as_deref()
                .ok_or_else(|| anyhow!("no invite"))?,
            server_now_ms,
        )
        .await?;
        let mut admin = admin;
        let code = admin
            .conn
            .invite(medrelay_proto::Role::Staff, "dr.lee")
            .await?;
        let mut staff = Self::staff_member(server, &code, server_now_ms).await?;
        let code = staff
            .conn
            .invite(medrelay_proto::Role::Patient, "alice")
            .await?;
        let patient = Self::patient(server, &code).await?;
        Ok(RawClinic {
            admin,
            staff,
            patient,
        })
    }

    /// The patient opens (or finds) their conversation with their care team (`dr.lee`).
    pub async fn care_conversation(&mut self) -> anyhow::Result<medrelay_proto::Conversation> {
        let request = ClientRequest::OpenConversation(medrelay_proto::OpenConversation {
            handles: vec![medrelay_proto::Handle::new("dr.lee")?],
        });
        match self.patient.conn.request(request).await? {
            ServerMessage::Conversation(conversation) => Ok(conversation),
            other => Err(anyhow!("expected the conversation, got {other:?}")),
        }
    }

    /// Enrols a staff member or admin with `code`, sets up credentials and logs in.
    pub async fn staff_member(
        server: &Server,
        code: &str,
        server_now_ms: u64,
    ) -> anyhow::Result<Person> {
        let mut device = RawDevice::new();
        let mut conn = device.enroll(server, code).await?;
        let secret = conn.setup_and_login(server_now_ms).await?;
        let user_id = conn.user_id().await?;
        Ok(Person {
            device,
            conn,
            totp_secret: Some(secret),
            user_id,
        })
    }

    /// Enrols a patient with `code` and accepts the consent text.
    pub async fn patient(server: &Server, code: &str) -> anyhow::Result<Person> {
        let mut device = RawDevice::new();
        let mut conn = device.enroll(server, code).await?;
        conn.accept_consent().await?;
        let user_id = conn.user_id().await?;
        Ok(Person {
            device,
            conn,
            totp_secret: None,
            user_id,
        })
    }
}
