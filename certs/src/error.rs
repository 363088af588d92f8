//! Why a certificate could not be minted, loaded or written.

use std::path::PathBuf;

/// A certificate operation failed. Messages never include key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Generating a key or signing a certificate failed (local failure).
    #[error("could not create the {what}: {source}")]
    Generate {
        /// What was being made, e.g. "development CA".
        what: &'static str,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A server certificate was asked for with no hostnames.
    #[error("a server certificate needs at least one hostname or IP address")]
    NoHostnames,
    /// A hostname is neither an IP address nor a plausible DNS name.
    #[error("{hostname:?} is neither an IP address nor a valid DNS name")]
    InvalidHostname {
        /// The rejected name (a hostname, not a secret).
        hostname: String,
    },
    /// The CA certificate PEM could not be parsed.
    #[error("the CA certificate is not a valid PEM certificate")]
    InvalidCaCert,
    /// The CA key PEM could not be parsed. The key is not echoed.
    #[error("the CA private key is not a valid PEM private key")]
    InvalidCaKey,
    /// The CA key is not the key of the CA certificate.
    #[error("the CA private key does not belong to the CA certificate")]
    KeyMismatch,
    /// A file to be written already exists; nothing is overwritten.
    #[error("{} already exists; refusing to overwrite it (move it away or use another directory)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating the directory or writing a file failed.
    #[error("could not write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
