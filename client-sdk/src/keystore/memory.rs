//! An in-memory [`KeyStore`], for tests and ephemeral clients.

use super::{DeviceId, KeyStore, StoreState, StoreUpdate};
use crate::error::KeyStoreError;
use crate::identity::DeviceIdentity;
use crate::secret::SecretBytes;
use crate::session::Session;

/// A [`KeyStore`] that keeps everything in memory (zeroized on drop).
#[derive(Debug, Default, Clone)]
pub struct MemoryKeyStore {
    state: StoreState,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KeyStore for MemoryKeyStore {
    fn load_identity(&self) -> Result<Option<DeviceIdentity>, KeyStoreError> {
        Ok(self.state.identity.clone())
    }

    fn save_identity(&mut self, identity: &DeviceIdentity) -> Result<(), KeyStoreError> {
        self.state.identity = Some(identity.clone());
        Ok(())
    }

    fn load_session(&self, peer: &DeviceId) -> Result<Option<Session>, KeyStoreError> {
        Ok(self.state.sessions.get(peer).cloned())
    }

    fn save_session(&mut self, peer: &DeviceId, session: &Session) -> Result<(), KeyStoreError> {
        self.state.sessions.insert(*peer, session.clone());
        Ok(())
    }

    fn delete_session(&mut self, peer: &DeviceId) -> Result<bool, KeyStoreError> {
        self.state.archived.remove(peer);
        Ok(self.state.sessions.remove(peer).is_some())
    }

    fn session_peers(&self) -> Result<Vec<DeviceId>, KeyStoreError> {
        Ok(self.state.sessions.keys().copied().collect())
    }

    fn load_archived_sessions(&self, peer: &DeviceId) -> Result<Vec<Session>, KeyStoreError> {
        Ok(self.state.archived.get(peer).cloned().unwrap_or_default())
    }

    fn load_profile(&self) -> Result<Option<SecretBytes>, KeyStoreError> {
        Ok(self.state.profile.clone())
    }

    fn save_profile(&mut self, profile: &[u8]) -> Result<(), KeyStoreError> {
        self.state.profile = Some(SecretBytes::from_slice(profile));
        Ok(())
    }

    fn apply(&mut self, update: &StoreUpdate<'_>) -> Result<(), KeyStoreError> {
        update.apply_to(&mut self.state);
        Ok(())
    }
}
