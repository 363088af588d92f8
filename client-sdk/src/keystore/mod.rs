//! Where a device keeps its secrets: the identity and prekey secrets, one session per peer
//! device, and a small opaque profile blob for the application (the CLI's settings).
//!
//! [`KeyStore`] is the seam; [`MemoryKeyStore`] serves tests and [`FileKeyStore`] encrypts the
//! whole state at rest under a passphrase (a browser store can implement the trait later).
//! Every `save_*` is durable when it returns.

mod file;
mod memory;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use file::{FileKeyStore, KdfParams, KEYSTORE_FORMAT_VERSION, KEYSTORE_MAGIC};
pub use memory::MemoryKeyStore;

use crate::error::KeyStoreError;
use crate::identity::DeviceIdentity;
use crate::secret::SecretBytes;
use crate::session::Session;

/// A peer device's id (16 random bytes, as on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 16]);

/// Storage for a device's secret state.
pub trait KeyStore {
    /// This device's identity and prekey secrets, if saved.
    fn load_identity(&self) -> Result<Option<DeviceIdentity>, KeyStoreError>;
    /// Saves the identity and prekey secrets (after generation, rotation, replenishment, or
    /// accepting a session, which consumes a one-time prekey).
    fn save_identity(&mut self, identity: &DeviceIdentity) -> Result<(), KeyStoreError>;
    /// The session with a peer device, if any.
    fn load_session(&self, peer: &DeviceId) -> Result<Option<Session>, KeyStoreError>;
    /// Saves the session with a peer device (after every encrypt and decrypt).
    fn save_session(&mut self, peer: &DeviceId, session: &Session) -> Result<(), KeyStoreError>;
    /// Deletes the session with a peer device; returns whether there was one.
    fn delete_session(&mut self, peer: &DeviceId) -> Result<bool, KeyStoreError>;
    /// The peer devices with a stored session.
    fn session_peers(&self) -> Result<Vec<DeviceId>, KeyStoreError>;
    /// The application's opaque profile blob, if saved.
    fn load_profile(&self) -> Result<Option<SecretBytes>, KeyStoreError>;
    /// Saves the application's opaque profile blob.
    fn save_profile(&mut self, profile: &[u8]) -> Result<(), KeyStoreError>;
    /// Saves the identity and a session together, atomically where the store can: what
    /// [`Session::accept`] requires (the consumed one-time prekey and the new session).
    fn save_identity_and_session(
        &mut self,
        identity: &DeviceIdentity,
        peer: &DeviceId,
        session: &Session,
    ) -> Result<(), KeyStoreError> {
        self.save_session(peer, session)?;
        self.save_identity(identity)
    }
}

/// The whole stored state, as serialised (postcard) inside the encrypted file.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct StoreState {
    pub(crate) identity: Option<DeviceIdentity>,
    pub(crate) sessions: BTreeMap<DeviceId, Session>,
    pub(crate) profile: Option<SecretBytes>,
}

impl core::fmt::Debug for StoreState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoreState")
            .field(
                "identity",
                &self.identity.as_ref().map(|i| i.public_identity()),
            )
            .field("sessions", &self.sessions.len())
            .field("profile", &self.profile)
            .finish()
    }
}
