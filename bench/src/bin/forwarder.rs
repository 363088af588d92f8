//! The transport limit: a minimal TLS WebSocket forwarder on the relay's own stack (tokio,
//! rustls with TLS 1.3 only, tokio-tungstenite with the relay's buffer sizes and frame limits),
//! with no authentication, no decoding and no storage. A client connects to
//! `/fwd/<pair>/send` or `/fwd/<pair>/recv`; every binary message from a pair's sender goes
//! to that pair's receiver as it is. Like the relay it sets TCP_NODELAY and flushes once per
//! batch of ready messages (up to 64).
//!
//! Run by `medrelay-bench`; prints `forwarder listening on ADDR` once it accepts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Messages a receiver takes per flush.
const MAX_BATCH: usize = 64;
/// Messages queued between a pair's sender and receiver.
const PAIR_QUEUE: usize = 1024;

#[derive(Debug, Parser)]
#[command(about = "Minimal TLS WebSocket forwarder: the transport limit for medrelay's benchmarks")]
struct Args {
    /// Certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// The same WebSocket settings as the relay (server/src/http.rs and limits.rs).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(medrelay_proto::limits::MAX_FRAME_BYTES))
        .max_frame_size(Some(medrelay_proto::limits::MAX_FRAME_BYTES))
}

/// One pair's queue: the sender side takes a clone of `tx`, the receiver takes `rx` once.
#[derive(Debug)]
struct PairQueue {
    tx: mpsc::Sender<Bytes>,
    rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
}

type Pairs = Arc<Mutex<HashMap<u32, Arc<PairQueue>>>>;

fn pair_queue(pairs: &Pairs, pair: u32) -> Arc<PairQueue> {
    let mut pairs = pairs.lock().unwrap_or_else(|e| e.into_inner());
    pairs
        .entry(pair)
        .or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PAIR_QUEUE);
            Arc::new(PairQueue {
                tx,
                rx: Mutex::new(Some(rx)),
            })
        })
        .clone()
}

fn tls_config(args: &Args) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(&args.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(&args.key)?.as_slice())?
        .ok_or_else(|| anyhow!("no private key in {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Parses `/fwd/<pair>/<send|recv>`.
fn route(path: &str) -> Option<(u32, bool)> {
    let mut parts = path.trim_start_matches('/').split('/');
    if parts.next()? != "fwd" {
        return None;
    }
    let pair = parts.next()?.parse().ok()?;
    match parts.next()? {
        "send" => Some((pair, true)),
        "recv" => Some((pair, false)),
        _ => None,
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    pairs: Pairs,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await?;
    let mut path = String::new();
    // The callback's error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        tls,
        |request: &Request, response: Response| {
            path = request.uri().path().to_owned();
            Ok(response)
        },
        Some(ws_config()),
    )
    .await?;
    let (pair, is_sender) = route(&path).ok_or_else(|| anyhow!("unknown path"))?;
    let queue = pair_queue(&pairs, pair);
    let (mut sink, mut stream) = ws.split();
    if is_sender {
        while let Some(message) = stream.next().await {
            let go_on = match message? {
                Message::Binary(bytes) => queue.tx.send(bytes).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !go_on {
                break;
            }
        }
        Ok(())
    } else {
        let mut rx = queue
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow!("pair {pair} already has a receiver"))?;
        // Read (and drop) whatever the receiver sends, so its close is noticed.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        while let Some(first) = rx.recv().await {
            sink.feed(Message::Binary(first)).await?;
            let mut batch = 1;
            while batch < MAX_BATCH {
                match rx.try_recv() {
                    Ok(bytes) => {
                        sink.feed(Message::Binary(bytes)).await?;
                        batch += 1;
                    }
                    Err(_) => break,
                }
            }
            sink.flush().await?;
        }
        reader.abort();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let acceptor = TlsAcceptor::from(tls_config(&args).context("TLS configuration")?);
    let listener = TcpListener::bind(args.listen).await?;
    println!("forwarder listening on {}", listener.local_addr()?);
    let pairs: Pairs = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let pairs = pairs.clone();
        tokio::spawn(async move {
            // Clients end without TLS close_notify; nothing to report.
            let _ = connection(tcp, acceptor, pairs).await;
        });
    }
}
