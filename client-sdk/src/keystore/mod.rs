//! Where a device keeps its secrets: the identity and prekey secrets, one session per peer
//! device, and a small opaque profile blob for the application (the CLI's settings).
//!
//! [`KeyStore`] is the seam; [`MemoryKeyStore`] serves tests, [`FileKeyStore`] encrypts the
//! whole state at rest under a passphrase, and [`SealedKeyStore`] writes the same encrypted
//! format to bytes the caller persists (the browser's IndexedDB). Every `save_*` is durable
//! when it returns ([`SealedKeyStore`]: once the caller stored its bytes).

mod file;
mod memory;
mod sealed;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use file::{FileKeyStore, KdfParams, KEYSTORE_FORMAT_VERSION, KEYSTORE_MAGIC};
pub use memory::MemoryKeyStore;
pub use sealed::SealedKeyStore;

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
    /// Earlier sessions with a peer device, set aside but kept (at most
    /// [`crate::limits::MAX_ARCHIVED_SESSIONS`], newest first) to decrypt messages still in
    /// flight under them: when both sides start a session at once, one is set aside. A store
    /// that keeps none returns none (and such messages are then lost).
    fn load_archived_sessions(&self, _peer: &DeviceId) -> Result<Vec<Session>, KeyStoreError> {
        Ok(Vec::new())
    }
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
    /// Saves several changes together, in one atomic write where the store can
    /// ([`FileKeyStore`] and [`MemoryKeyStore`] can). The transport uses it so that a received
    /// message's session step and its "processed" mark, or every session a send advanced,
    /// land together. The default applies the changes one by one.
    fn apply(&mut self, update: &StoreUpdate<'_>) -> Result<(), KeyStoreError> {
        for (peer, session) in &update.sessions {
            self.save_session(peer, session)?;
        }
        for peer in &update.deleted_sessions {
            self.delete_session(peer)?;
        }
        if let Some(identity) = update.identity {
            self.save_identity(identity)?;
        }
        if let Some(profile) = update.profile {
            self.save_profile(profile)?;
        }
        Ok(())
    }
}

/// Changes to save together through [`KeyStore::apply`]. Its `Debug` shows only counts.
#[derive(Default)]
pub struct StoreUpdate<'a> {
    /// The identity, when it changed (a one-time prekey consumed or generated, a rotation).
    pub identity: Option<&'a DeviceIdentity>,
    /// Sessions to save, by peer device.
    pub sessions: Vec<(DeviceId, &'a Session)>,
    /// Sessions to delete, by peer device (with their archived sessions).
    pub deleted_sessions: Vec<DeviceId>,
    /// Replaces a peer device's archived sessions (newest first; empty removes them).
    pub archived_sessions: Vec<(DeviceId, &'a [Session])>,
    /// The profile blob, when it changed.
    pub profile: Option<&'a [u8]>,
}

impl core::fmt::Debug for StoreUpdate<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoreUpdate")
            .field("identity", &self.identity.is_some())
            .field("sessions", &self.sessions.len())
            .field("deleted_sessions", &self.deleted_sessions.len())
            .field("archived_sessions", &self.archived_sessions.len())
            .field("profile_len", &self.profile.map(<[u8]>::len))
            .finish()
    }
}

impl StoreUpdate<'_> {
    /// Applies the update to an in-memory state (shared by the memory and file stores).
    pub(crate) fn apply_to(&self, state: &mut StoreState) {
        for (peer, session) in &self.sessions {
            state.sessions.insert(*peer, (*session).clone());
        }
        for peer in &self.deleted_sessions {
            state.sessions.remove(peer);
            state.archived.remove(peer);
        }
        for (peer, archived) in &self.archived_sessions {
            if archived.is_empty() {
                state.archived.remove(peer);
            } else {
                let kept = archived.len().min(crate::limits::MAX_ARCHIVED_SESSIONS);
                state
                    .archived
                    .insert(*peer, archived.iter().take(kept).cloned().collect());
            }
        }
        if let Some(identity) = self.identity {
            state.identity = Some(identity.clone());
        }
        if let Some(profile) = self.profile {
            state.profile = Some(SecretBytes::from_slice(profile));
        }
    }
}

/// The whole stored state, as serialised (postcard) inside the encrypted file (format 3).
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct StoreState {
    pub(crate) identity: Option<DeviceIdentity>,
    pub(crate) sessions: BTreeMap<DeviceId, Session>,
    pub(crate) profile: Option<SecretBytes>,
    /// Earlier sessions per peer device, newest first.
    pub(crate) archived: BTreeMap<DeviceId, Vec<Session>>,
}

/// The state of format 2 files, read to migrate them.
#[derive(Deserialize)]
pub(crate) struct StoreStateV2 {
    identity: Option<DeviceIdentity>,
    sessions: BTreeMap<DeviceId, Session>,
    profile: Option<SecretBytes>,
}

impl From<StoreStateV2> for StoreState {
    fn from(old: StoreStateV2) -> Self {
        StoreState {
            identity: old.identity,
            sessions: old.sessions,
            profile: old.profile,
            archived: BTreeMap::new(),
        }
    }
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
