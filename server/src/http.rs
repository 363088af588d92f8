//! HTTP on the TLS port: `/healthz`, `/metrics` (counts only, no PHI), the WebSocket upgrade
//! at `/v1/ws`, and the staff web client's embedded files at `/` ([`crate::web_assets`]).
//!
//! hyper parses the request; an upgrade hands the raw TLS stream to tokio-tungstenite with
//! explicit buffer sizes and limits. No response here ever carries PHI.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::connection;
use crate::limits;
use crate::server::Context;
use crate::web_assets;

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/v1/ws";

/// What a connection brought with it from the TLS layer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub addr: SocketAddr,
    /// TLS exporter keying material for this session (channel binding for native clients).
    pub tls_exporter: [u8; 32],
}

/// The WebSocket configuration: explicit buffers (tungstenite allocates the read buffer per
/// connection) and the protocol's frame limit.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(limits::WS_READ_BUFFER_BYTES)
        .write_buffer_size(limits::WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(limits::WS_MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(medrelay_proto::limits::MAX_FRAME_BYTES))
        .max_frame_size(Some(medrelay_proto::limits::MAX_FRAME_BYTES))
}

fn respond(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    add_security_headers(&mut response, "default-src 'none'; frame-ancestors 'none'");
    response
}

/// One of the web client's files, with its policy.
fn asset(asset: web_assets::Asset) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.bytes)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    add_security_headers(&mut response, web_assets::APP_CSP);
    response
}

/// Headers every HTTP response carries, with its Content-Security-Policy.
fn add_security_headers(response: &mut Response<Full<Bytes>>, csp: &'static str) {
    let headers = response.headers_mut();
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
}

fn header_has_token(request: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Routes one HTTP request.
pub async fn route(
    mut request: Request<Incoming>,
    context: Arc<Context>,
    peer: PeerInfo,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path == "/healthz" && request.method() == Method::GET {
        return Ok(respond(StatusCode::OK, "ok\n"));
    }
    if path == "/metrics" && request.method() == Method::GET {
        let text = context
            .metrics
            .render(context.live_connections.load(Ordering::Relaxed));
        let mut response = Response::new(Full::new(Bytes::from(text)));
        add_security_headers(&mut response, "default-src 'none'; frame-ancestors 'none'");
        return Ok(response);
    }
    if request.method() == Method::GET || request.method() == Method::HEAD {
        if let Some(found) = web_assets::find(path) {
            return Ok(asset(found));
        }
    }
    if path != WS_PATH {
        return Ok(respond(StatusCode::NOT_FOUND, "not found\n"));
    }
    let is_upgrade = request.method() == Method::GET
        && header_has_token(&request, header::CONNECTION, "upgrade")
        && header_has_token(&request, header::UPGRADE, "websocket")
        && request
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Ok(respond(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks WebSocket (version 13) only\n",
        ));
    };
    if !is_upgrade {
        return Ok(respond(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks WebSocket (version 13) only\n",
        ));
    }
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config()),
                )
                .await;
                connection::run(ws, context, peer, origin).await;
            }
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let mut response = respond(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}
