//! Opening a connection: TCP (TCP_NODELAY), TLS 1.3 (rustls, ring) trusting the given CA,
//! ALPN `http/1.1`, SNI from the URL host, the TLS exporter for channel binding, then the
//! WebSocket upgrade at `/v1/ws` with explicit buffer and size limits.

use std::sync::Arc;
use std::time::Duration;

use medrelay_proto::{limits::MAX_FRAME_BYTES, TLS_EXPORTER_LABEL, TLS_EXPORTER_LEN};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use super::{ServerUrl, TransportError};

/// WebSocket read buffer.
pub const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
/// WebSocket write buffer before a write goes to the socket.
pub const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most bytes left buffered for writing before the connection fails.
pub const WS_MAX_WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// The WebSocket stream the connection actor owns.
pub(crate) type WsStream = WebSocketStream<TlsStream<TcpStream>>;

/// The WebSocket limits: small buffers, messages and frames capped at the protocol's frame size.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// A rustls client configuration trusting exactly the CA certificates in `ca_pem`, TLS 1.3
/// only, ALPN `http/1.1`. A CA PEM is required: the platform's trust store is not used yet.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, TransportError> {
    let mut roots = RootCertStore::empty();
    let mut found = 0usize;
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| TransportError::InvalidCa(format!("unreadable PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TransportError::InvalidCa(format!("not a usable CA certificate: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(TransportError::InvalidCa(
            "no certificate in the CA file; pass the server's CA certificate (e.g. DATA/certs/ca.pem): \
             this client does not use the platform trust store"
                .into(),
        ));
    }
    let provider = rustls::crypto::ring::default_provider();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::InvalidCa(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connects, completes TLS and the WebSocket upgrade, and returns the stream with the TLS
/// exporter value the authentication proof binds to.
pub(crate) async fn open(
    url: &ServerUrl,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<(WsStream, [u8; TLS_EXPORTER_LEN]), TransportError> {
    let work = async {
        let tcp = TcpStream::connect(url.authority())
            .await
            .map_err(|e| TransportError::Connect(format!("TCP connect to {url} failed: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| TransportError::Connect(format!("TCP_NODELAY: {e}")))?;
        let name = ServerName::try_from(url.host().to_owned()).map_err(|_| {
            TransportError::InvalidUrl(format!("{} is not a valid TLS server name", url.host()))
        })?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                TransportError::Connect(format!("TLS handshake with {url} failed: {e}"))
            })?;
        let exporter = stream
            .get_ref()
            .1
            .export_keying_material([0u8; TLS_EXPORTER_LEN], TLS_EXPORTER_LABEL, None)
            .map_err(|e| TransportError::Connect(format!("TLS exporter unavailable: {e}")))?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            url.websocket_url(),
            stream,
            Some(ws_config()),
        )
        .await
        .map_err(|e| TransportError::Connect(format!("WebSocket upgrade at {url} failed: {e}")))?;
        Ok((ws, exporter))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        TransportError::Connect(format!("connecting to {url} timed out after {timeout:?}"))
    })?
}
