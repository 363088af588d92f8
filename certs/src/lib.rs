//! Development certificate tooling: a local CA and the server certificates it issues.
//!
//! medrelay runs TLS by default. For development and first starts, the server mints a
//! development CA ([`DevCa`]) and a server certificate for its hostnames, writes them with
//! [`write_dev_pki`], and clients trust that CA (`--ca ca.pem`). Production uses a certificate
//! from a real CA instead; see `README.md`. Private keys leave this crate only as
//! [`SecretPem`], zeroized on drop and redacted in `Debug`.

mod ca;
mod error;
mod pki_dir;
mod secret;

pub use ca::{
    default_hostnames, DevCa, ServerCert, CA_COMMON_NAME, CA_VALIDITY_DAYS, SERVER_VALIDITY_DAYS,
};
pub use error::CertError;
pub use pki_dir::{
    write_dev_pki, DevPkiPaths, CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE,
};
pub use secret::SecretPem;
