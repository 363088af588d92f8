//! The server's TLS configuration (rustls): TLS 1.3 only unless TLS 1.2 is asked for, and then
//! only its AEAD suites.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    /// The key file holds no private key.
    #[error("{0} holds no PEM private key")]
    NoKey(String),
    /// rustls refused the configuration (for instance, a key that does not match).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds the server's TLS configuration from PEM files.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    allow_tls12: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert_path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert_path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.display().to_string()));
    }
    let key_pem = zeroize::Zeroizing::new(read(key_path)?);
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: key_path.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key_path.display().to_string()))?;

    let mut provider = provider::default_provider();
    if !allow_tls12 {
        provider
            .cipher_suites
            .retain(|suite| suite.version() == &rustls::version::TLS13);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session tickets: connections are long-lived WebSockets, so resumption saves little,
    // and every connection gets a full handshake and its own exporter secret.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
