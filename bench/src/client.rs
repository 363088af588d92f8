//! A protocol client for the load generator: real TLS 1.3 with exporter binding, WebSocket,
//! protobuf frames from `medrelay-proto`, the device's Ed25519 proof. It pipelines requests
//! (setting up a clinic of hundreds of people one round trip at a time would be slow) and
//! splits into halves for the load phases.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use medrelay_proto::{
    auth_transcript, decode_server_frame, encode_client_frame, enroll_transcript, AuthOk, Binding,
    ChannelBinding, ClientFrame, ClientRequest, DeviceId, EnrollRequest, InviteCode, ServerFrame,
    ServerMessage, Signature,
};
use medrelay_sdk::DeviceIdentity;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The WebSocket over TLS over TCP that every client here speaks.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long setup waits for one answer before calling the server hung.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server is and how to trust it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's address (loopback).
    pub addr: SocketAddr,
    /// The client TLS configuration (trusting the server's dev CA, TLS 1.3 only).
    pub tls: Arc<rustls::ClientConfig>,
    /// The URL path of the WebSocket endpoint.
    pub path: String,
}

impl Target {
    /// A target trusting the PEM CA at `ca`.
    pub fn new(addr: SocketAddr, ca: &std::path::Path, path: &str) -> anyhow::Result<Target> {
        Ok(Target {
            addr,
            tls: medrelay_tests::tls_config(ca)?,
            path: path.to_owned(),
        })
    }
}

/// The read buffer of a connection that carries load. tungstenite zeroes the whole free part
/// of its read buffer before every read (128 KiB by default), including reads that find
/// nothing: at the relay's half load `memset` was 18% of the load generator's samples (3% with
/// this size), CPU taken from the server it shares the cores with. 16 KiB still takes a dozen
/// 1 KiB deliveries per read.
const LOAD_READ_BUFFER_BYTES: usize = 16 * 1024;

/// The client-side WebSocket configuration: small buffers for idle connections, larger ones
/// for load.
pub fn ws_config(small: bool) -> WebSocketConfig {
    let config = WebSocketConfig::default()
        .max_message_size(Some(medrelay_proto::limits::MAX_FRAME_BYTES))
        .max_frame_size(Some(medrelay_proto::limits::MAX_FRAME_BYTES));
    if small {
        config.read_buffer_size(4096).write_buffer_size(0)
    } else {
        config.read_buffer_size(LOAD_READ_BUFFER_BYTES)
    }
}

/// Opens TCP (from `source`, a loopback address: the server's per-address limits count
/// 127.0.0.2 as another host), TLS and the WebSocket upgrade. Returns the socket and the TLS
/// exporter secret.
pub async fn open(
    target: &Target,
    source: Ipv4Addr,
    small: bool,
) -> anyhow::Result<(Ws, [u8; 32])> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(target.tls.clone());
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let tls = connector.connect(name, tcp).await?;
    let mut exporter = [0u8; 32];
    tls.get_ref().1.export_keying_material(
        &mut exporter,
        medrelay_proto::TLS_EXPORTER_LABEL,
        None,
    )?;
    let url = format!("wss://localhost:{}{}", target.addr.port(), target.path);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url.into_client_request()?,
        tls,
        Some(ws_config(small)),
    )
    .await?;
    Ok((ws, exporter))
}

/// An open connection to the relay that has read its challenge.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub ws: Ws,
    exporter: [u8; 32],
    nonce: [u8; 32],
    next_request_id: u64,
    /// What the server said when this connection authenticated.
    pub auth_ok: Option<AuthOk>,
}

impl Conn {
    /// Connects and reads the challenge.
    pub async fn connect(target: &Target, source: Ipv4Addr, small: bool) -> anyhow::Result<Conn> {
        let (ws, exporter) = open(target, source, small).await?;
        let mut conn = Conn {
            ws,
            exporter,
            nonce: [0; 32],
            next_request_id: 1,
            auth_ok: None,
        };
        match conn.next_frame().await?.message {
            ServerMessage::Challenge(challenge) => conn.nonce = challenge.nonce,
            other => bail!("expected a challenge first, got {}", other.name()),
        }
        Ok(conn)
    }

    fn binding(&self) -> Binding {
        Binding::TlsExporter(self.exporter)
    }

    /// The next server frame.
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

    /// Sends several requests at once and returns their answers in order (pushes skipped).
    pub async fn pipeline(
        &mut self,
        requests: Vec<ClientRequest>,
    ) -> anyhow::Result<Vec<ServerMessage>> {
        let first = self.next_request_id;
        let count = requests.len() as u64;
        for request in requests {
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            let bytes = encode_client_frame(&ClientFrame {
                request_id,
                request,
            });
            self.ws.feed(Message::binary(bytes)).await?;
        }
        self.ws.flush().await?;
        let mut answers: Vec<Option<ServerMessage>> = (0..count).map(|_| None).collect();
        let mut missing = count;
        while missing > 0 {
            let frame = self.next_frame().await?;
            if frame.request_id >= first && frame.request_id < first + count {
                let slot = answers
                    .get_mut((frame.request_id - first) as usize)
                    .ok_or_else(|| anyhow!("answer out of range"))?;
                if slot.replace(frame.message).is_none() {
                    missing -= 1;
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| anyhow!("missing answer")))
            .collect()
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, request: ClientRequest) -> anyhow::Result<ServerMessage> {
        self.pipeline(vec![request])
            .await?
            .pop()
            .ok_or_else(|| anyhow!("no answer"))
    }

    /// Enrols `identity` with an invite code on this connection; returns the device id.
    pub async fn enroll(
        &mut self,
        identity: &DeviceIdentity,
        code: &str,
    ) -> anyhow::Result<DeviceId> {
        let keys = medrelay_tests::device_keys(identity)?;
        let transcript =
            enroll_transcript(&self.nonce, &self.binding(), &keys.identity.signing_key);
        let signature = Signature::from_array(identity.sign_auth_transcript(&transcript)?);
        let request = ClientRequest::Enroll(Box::new(EnrollRequest {
            invite_code: InviteCode::new(code)?,
            keys,
            binding: ChannelBinding::TlsExporter,
            signature,
            device_label: medrelay_proto::DeviceLabel::new("bench device")?,
        }));
        match self.request(request).await? {
            ServerMessage::AuthOk(ok) => {
                let id = ok.device_id;
                self.auth_ok = Some(ok);
                Ok(id)
            }
            other => bail!("enrolment refused: {other:?}"),
        }
    }

    /// Proves possession of `device`'s key on this connection.
    pub async fn authenticate(
        &mut self,
        identity: &DeviceIdentity,
        device: DeviceId,
    ) -> anyhow::Result<()> {
        let transcript = auth_transcript(&self.nonce, &self.binding(), &device);
        let signature = Signature::from_array(identity.sign_auth_transcript(&transcript)?);
        let request = ClientRequest::Auth(medrelay_proto::AuthProof {
            device_id: device,
            binding: ChannelBinding::TlsExporter,
            signature,
        });
        match self.request(request).await? {
            ServerMessage::AuthOk(ok) => {
                if ok.login_required || ok.credentials_required {
                    bail!("the device must log in again; the benchmark expects a live session");
                }
                self.auth_ok = Some(ok);
                Ok(())
            }
            other => bail!("authentication refused: {other:?}"),
        }
    }

    /// Closes politely (best effort).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Checks that an answer is not an error.
pub fn expect_ok(answer: &ServerMessage, what: &str) -> anyhow::Result<()> {
    if let ServerMessage::Error(error) = answer {
        bail!("{what} refused: {error:?}");
    }
    Ok(())
}

/// Source addresses for connections: 127.0.<n/250+1>.<n%250+1>, so per-address limits on
/// authentication attempts see many hosts, as they would in a clinic.
pub fn source_ip(n: usize) -> Ipv4Addr {
    let n = n % 62_500;
    Ipv4Addr::new(127, 0, (n / 250 + 1) as u8, (n % 250 + 1) as u8)
}

/// The password and TOTP login for staff and admins (on the clinic's clock `now_ms`).
pub async fn setup_and_login(conn: &mut Conn, now_ms: u64) -> anyhow::Result<String> {
    let setup = conn
        .request(ClientRequest::SetupCredentials {
            password: medrelay_tests::password(medrelay_tests::TEST_PASSWORD),
        })
        .await?;
    let ServerMessage::CredentialsSetup(setup) = setup else {
        bail!("setup refused: {setup:?}");
    };
    let secret = setup.totp_secret.expose().to_owned();
    let code = medrelay_proto::TotpCode::new(medrelay_tests::totp_at(&secret, now_ms))?;
    let answer = conn
        .request(ClientRequest::Login {
            password: medrelay_tests::password(medrelay_tests::TEST_PASSWORD),
            second_factor: medrelay_proto::SecondFactor::Totp(code),
        })
        .await
        .context("login")?;
    match answer {
        ServerMessage::LoginOk { .. } => Ok(secret),
        other => bail!("login refused: {other:?}"),
    }
}
