//! Writing a development PKI to disk: CA and server certificate and keys, keys created with
//! mode 0600, nothing ever overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{CertError, DevCa};

/// The CA certificate, for clients (`--ca`).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key (mode 0600): issues new server certificates.
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server private key (mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";

/// Mode of certificate files: readable by all, they are public.
#[cfg(unix)]
const CERT_MODE: u32 = 0o644;
/// Mode of private key files: the owner only.
#[cfg(unix)]
const KEY_MODE: u32 = 0o600;
/// Mode of a PKI directory this crate creates.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;

/// Where the four files of a development PKI live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiPaths {
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
}

impl DevPkiPaths {
    /// The paths of the four files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
        }
    }

    /// All four paths.
    pub fn all(&self) -> [&Path; 4] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
        ]
    }

    /// Whether all four files exist (a first start has already minted them).
    pub fn all_exist(&self) -> bool {
        self.all().iter().all(|p| p.exists())
    }
}

/// Mints a development CA and a server certificate for `hostnames`, and writes `ca.pem`,
/// `ca.key`, `server.pem` and `server.key` into `dir` (created with mode 0700 if missing).
/// Key files are created with mode 0600 (on Unix), never chmod-ed afterwards. If any of the
/// four files exists, nothing is written and [`CertError::AlreadyExists`] names it; if a
/// write fails, the files already written are removed.
pub fn write_dev_pki(dir: &Path, hostnames: &[String]) -> Result<DevPkiPaths, CertError> {
    let paths = DevPkiPaths::in_dir(dir);
    for path in paths.all() {
        // symlink_metadata: a dangling symlink counts as existing, and is not followed.
        if fs::symlink_metadata(path).is_ok() {
            return Err(CertError::AlreadyExists {
                path: path.to_owned(),
            });
        }
    }
    let ca = DevCa::generate()?;
    let server = ca.issue_server_cert(hostnames)?;
    create_dir(dir)?;

    let ca_key = ca.key_pem();
    let files: [(&Path, &str, bool); 4] = [
        (&paths.ca_key, ca_key.expose_secret(), true),
        (&paths.ca_cert, ca.cert_pem(), false),
        (&paths.server_key, server.key_pem().expose_secret(), true),
        (&paths.server_cert, server.cert_pem(), false),
    ];
    let mut written: Vec<&Path> = Vec::new();
    for (path, contents, secret) in files {
        if let Err(error) = write_new(path, contents.as_bytes(), secret) {
            for done in written {
                // Best effort: the error returned is what the caller needs to see.
                let _ = fs::remove_file(done);
            }
            return Err(error);
        }
        written.push(path);
    }
    Ok(paths)
}

/// Creates `dir` and its parents if missing.
fn create_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Creates `path`, which must not exist, with the mode for a key or a certificate, and
/// writes `contents` durably.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let io_error = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { KEY_MODE } else { CERT_MODE });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            io_error(source)
        }
    })?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::default_hostnames;

    #[test]
    fn writes_four_files_that_reload() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let paths = write_dev_pki(&pki, &default_hostnames()).unwrap();
        assert_eq!(paths, DevPkiPaths::in_dir(&pki));
        assert!(paths.all_exist());
        let ca = DevCa::from_pem(
            &fs::read_to_string(&paths.ca_cert).unwrap(),
            &fs::read_to_string(&paths.ca_key).unwrap(),
        )
        .unwrap();
        assert!(ca.issue_server_cert(&default_hostnames()).is_ok());
        assert!(fs::read_to_string(&paths.server_cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_mode_0600_and_certs_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_pki(dir.path(), &default_hostnames()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.server_key), 0o600);
        assert_eq!(mode(&paths.ca_cert), 0o644 & !umask());
        assert_eq!(mode(&paths.server_cert), 0o644 & !umask());
    }

    /// The process umask, read from /proc (tests only; certificate modes are masked by it).
    #[cfg(unix)]
    fn umask() -> u32 {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DevPkiPaths::in_dir(dir.path());
        fs::write(&paths.server_key, "keep me").unwrap();
        let error = write_dev_pki(dir.path(), &default_hostnames()).unwrap_err();
        match &error {
            CertError::AlreadyExists { path } => assert_eq!(path, &paths.server_key),
            other => unreachable!("expected AlreadyExists, got {other:?}"),
        }
        assert!(error.to_string().contains("refusing to overwrite"));
        assert_eq!(fs::read_to_string(&paths.server_key).unwrap(), "keep me");
        for path in [&paths.ca_cert, &paths.ca_key, &paths.server_cert] {
            assert!(!path.exists(), "{} was written", path.display());
        }
        // A second run over a complete PKI is refused too.
        let fresh = tempfile::tempdir().unwrap();
        write_dev_pki(fresh.path(), &default_hostnames()).unwrap();
        assert!(matches!(
            write_dev_pki(fresh.path(), &default_hostnames()),
            Err(CertError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn a_bad_hostname_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        assert!(matches!(
            write_dev_pki(&pki, &["not a host".to_owned()]),
            Err(CertError::InvalidHostname { .. })
        ));
        assert!(!pki.exists());
    }
}
