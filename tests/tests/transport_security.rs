//! Proves: the server speaks TLS 1.3 only by default (a TLS 1.2-only client is refused), serves
//! `/healthz` on the same port with hardening headers and no PHI, and refuses the WebSocket
//! endpoint to anything but a WebSocket upgrade.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use medrelay_tests::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn roots(server: &Server) -> rustls::RootCertStore {
    let pem = std::fs::read(server.ca_path()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

async fn https_get(server: &Server, path: &str) -> String {
    let config = medrelay_tests::tls_config(&server.ca_path()).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_with_hardening_headers_and_the_websocket_path_wants_an_upgrade() {
    let server = Server::start().unwrap();
    let health = https_get(&server, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let lower = health.to_ascii_lowercase();
    for header in [
        "strict-transport-security:",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "content-security-policy:",
        "frame-ancestors 'none'",
    ] {
        assert!(lower.contains(header), "missing {header}: {health}");
    }
    assert!(health.ends_with("ok\n"));
    let ws = https_get(&server, "/v1/ws").await;
    assert!(ws.starts_with("HTTP/1.1 400"), "{ws}");
    assert!(ws.contains("WebSocket"));
    let missing = https_get(&server, "/etc/passwd").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_client_is_refused_by_default() {
    let server = Server::start().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(&server))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let result = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    assert!(result.is_err(), "a TLS 1.2 handshake succeeded");
    // And a client that speaks no TLS at all gets nothing but a closed connection.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut buffer),
    )
    .await
    .expect("the server kept a plain-text connection open");
    assert!(!String::from_utf8_lossy(&buffer).contains("ok"));
}
