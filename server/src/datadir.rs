//! The data directory: its layout and its one-time initialisation.
//!
//! ```text
//! DIR/                 mode 0700
//!   db/                the sled database
//!   certs/ca.pem       the dev CA certificate (give it to clients with --ca)
//!   certs/ca.key       the dev CA key (0600)
//!   certs/server.pem   the server certificate
//!   certs/server.key   the server key (0600)
//!   master.key         the master key wrapping every data key (0600); better kept elsewhere
//!                      (`--master-key`), and never in the same backup as `db/`
//!   keyring            the data keys, wrapped (0600); deleting one crypto-shreds its records
//!   access-log.key     the access log's checkpoint signing key (0600)
//!   access-log.pub     its public half, for `medrelay audit verify`
//!   admin.sock         local admin socket while the server runs (0600)
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::relay::Relay;
use crate::store::sled_store::SledStore;
use crate::store::StoreError;

/// The org name used when none is given.
pub const DEFAULT_ORG_NAME: &str = "My Clinic";

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    master_key: Option<PathBuf>,
}

/// What initialisation created; printed as JSON by `medrelay init`.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The org's name.
    pub org: String,
    /// The org's id.
    pub org_id: String,
    /// The first admin's one-time invite code.
    pub admin_invite: String,
    /// When the invite expires, ms since the Unix epoch.
    pub admin_invite_expires_ms: u64,
    /// The dev CA certificate clients must trust.
    pub ca: String,
}

/// Why initialisation failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory was initialised before; nothing was changed.
    #[error("{0} is already initialised; nothing was changed (use `medrelay serve --data {0}`)")]
    AlreadyInitialised(String),
    /// A file or directory could not be created.
    #[error("could not prepare {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The certificates could not be minted.
    #[error("could not create the development certificates: {0}")]
    Certs(#[from] medrelay_certs::CertError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay refused (should not happen on a fresh directory).
    #[error("could not create the organisation: {0}")]
    Relay(String),
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir {
            root: root.into(),
            master_key: None,
        }
    }

    /// The same directory, with its master key read from `path` (when given) instead of
    /// `DIR/master.key`.
    pub fn with_master_key(mut self, path: Option<PathBuf>) -> Self {
        self.master_key = path;
        self
    }

    /// The master key file.
    pub fn master_key(&self) -> PathBuf {
        self.master_key
            .clone()
            .unwrap_or_else(|| self.root.join("master.key"))
    }

    /// The keyring file.
    pub fn keyring(&self) -> PathBuf {
        self.root.join("keyring")
    }

    /// Opens the keyring (creating it and the master key in a fresh directory).
    pub fn open_keyring(&self) -> Result<crate::keyring::Keyring, crate::keyring::KeyringError> {
        crate::keyring::Keyring::open(&self.keyring(), &self.master_key())
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sled database.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    /// The certificate directory.
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// The dev CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.certs().join("ca.pem")
    }

    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.certs().join("server.pem")
    }

    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.certs().join("server.key")
    }

    /// The local admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    /// Creates the directory with mode 0700 if it does not exist.
    pub fn create(&self) -> Result<(), InitError> {
        let io = |source| InitError::Io {
            path: self.root.display().to_string(),
            source,
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.root).map_err(io)
    }

    /// Initialises an opened, empty store: the first org, the dev certificates and the first
    /// admin's invite. Refuses, changing nothing, if the store was initialised before.
    pub async fn initialise(
        &self,
        store: &SledStore,
        relay: &Relay,
        org_name: &str,
        hostnames: &[String],
    ) -> Result<InitReport, InitError> {
        if store.is_initialised()? {
            return Err(InitError::AlreadyInitialised(
                self.root.display().to_string(),
            ));
        }
        // An earlier, interrupted initialisation may have left certificates but never marked
        // the store; those were never used, so start them afresh.
        let certs = self.certs();
        if certs.exists() {
            std::fs::remove_dir_all(&certs).map_err(|source| InitError::Io {
                path: certs.display().to_string(),
                source,
            })?;
        }
        let mut hosts = medrelay_certs::default_hostnames();
        for host in hostnames {
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
        medrelay_certs::write_dev_pki(&certs, &hosts)?;
        let (org, invite) = relay
            .create_org(org_name)
            .map_err(|e| InitError::Relay(e.to_string()))?;
        store.mark_initialised(&org.id)?;
        relay.store().sync().await?;
        Ok(InitReport {
            org: org.name,
            org_id: org.id.to_string(),
            admin_invite: invite.code,
            admin_invite_expires_ms: invite.expires_ms,
            ca: self.ca_cert().display().to_string(),
        })
    }
}
