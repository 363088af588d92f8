//! [`SealedKeyStore`]: the key-store format of [`FileKeyStore`](super::FileKeyStore) without
//! the file. The state lives in memory and is re-sealed into the same bytes a key-store file
//! holds (Argon2id-derived key, ChaCha20-Poly1305, header as associated data, a generation
//! counter) on every save; the caller persists those bytes where it can (the staff web client:
//! IndexedDB, which a wasm module can only reach asynchronously, through JavaScript).
//!
//! **Durability is the caller's.** A save here only produces new bytes; [`KeyStore`]'s promise
//! that a save is durable when it returns holds once the caller has stored
//! [`SealedKeyStore::take_unsaved`]'s bytes. So a caller must store them before anything that
//! depends on the state leaves the device (a frame encrypted with an advanced session, an ack
//! of a processed message), exactly as the transport saves before it sends.

use rand_core::{CryptoRng, RngCore};

use super::file::{seal, unseal, KdfParams, SALT_LEN};
use super::{DeviceId, KeyStore, StoreState, StoreUpdate};
use crate::error::KeyStoreError;
use crate::identity::DeviceIdentity;
use crate::primitives::AeadKey;
use crate::secret::SecretBytes;
use crate::session::Session;

/// A [`KeyStore`] whose persistence is a byte string the caller stores. Holds the decrypted
/// state and the derived key in memory (both zeroized on drop); `Debug` shows neither.
pub struct SealedKeyStore<R: RngCore + CryptoRng> {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    key: AeadKey,
    state: StoreState,
    generation: u64,
    /// Sealed bytes of the latest state not yet taken by the caller.
    unsaved: Option<Vec<u8>>,
    rng: R,
}

impl<R: RngCore + CryptoRng> core::fmt::Debug for SealedKeyStore<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SealedKeyStore")
            .field("params", &self.params)
            .field("key", &self.key)
            .field("state", &self.state)
            .field("generation", &self.generation)
            .field("unsaved", &self.unsaved.is_some())
            .finish_non_exhaustive()
    }
}

impl<R: RngCore + CryptoRng> SealedKeyStore<R> {
    /// A new, empty store under `passphrase` (the Argon2id derivation runs once, here). Its
    /// first sealed bytes are ready in [`SealedKeyStore::take_unsaved`].
    pub fn create(passphrase: &[u8], params: KdfParams, mut rng: R) -> Result<Self, KeyStoreError> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let key = params.derive(passphrase, &salt)?;
        let mut store = Self {
            params,
            salt,
            key,
            state: StoreState::default(),
            generation: 0,
            unsaved: None,
            rng,
        };
        let state = store.state.clone();
        store.write(&state)?;
        Ok(store)
    }

    /// Opens sealed bytes. A wrong passphrase (or a modified byte) gives
    /// [`KeyStoreError::WrongPassphraseOrCorrupt`].
    pub fn open(bytes: &[u8], passphrase: &[u8], rng: R) -> Result<Self, KeyStoreError> {
        let opened = unseal(bytes, passphrase)?;
        Ok(Self {
            params: opened.params,
            salt: opened.salt,
            key: opened.key,
            state: opened.state,
            generation: opened.generation,
            unsaved: None,
            rng,
        })
    }

    /// The sealed bytes of the latest state, if they changed since the last call: store them
    /// (see the module docs) before anything that depends on the state leaves the device.
    pub fn take_unsaved(&mut self) -> Option<Vec<u8>> {
        self.unsaved.take()
    }

    /// One more than the number of saves since creation (1 for a new store).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Re-seals the state under a new passphrase (new salt).
    pub fn change_passphrase(
        &mut self,
        new_passphrase: &[u8],
        params: KdfParams,
    ) -> Result<(), KeyStoreError> {
        let mut salt = [0u8; SALT_LEN];
        self.rng.fill_bytes(&mut salt);
        let key = params.derive(new_passphrase, &salt)?;
        let old = (self.params, self.salt, self.key.clone());
        (self.params, self.salt, self.key) = (params, salt, key);
        let state = self.state.clone();
        if let Err(e) = self.write(&state) {
            (self.params, self.salt, self.key) = old;
            return Err(e);
        }
        Ok(())
    }

    fn update(&mut self, change: impl FnOnce(&mut StoreState)) -> Result<(), KeyStoreError> {
        let mut next = self.state.clone();
        change(&mut next);
        self.write(&next)?;
        self.state = next;
        Ok(())
    }

    fn write(&mut self, state: &StoreState) -> Result<(), KeyStoreError> {
        let generation = self
            .generation
            .checked_add(1)
            .ok_or(KeyStoreError::Internal)?;
        let (bytes, _nonce) = seal(
            &self.params,
            &self.salt,
            &self.key,
            generation,
            state,
            &mut self.rng,
        )?;
        self.generation = generation;
        self.unsaved = Some(bytes);
        Ok(())
    }
}

impl<R: RngCore + CryptoRng> KeyStore for SealedKeyStore<R> {
    fn load_identity(&self) -> Result<Option<DeviceIdentity>, KeyStoreError> {
        Ok(self.state.identity.clone())
    }

    fn save_identity(&mut self, identity: &DeviceIdentity) -> Result<(), KeyStoreError> {
        self.update(|s| s.identity = Some(identity.clone()))
    }

    fn load_session(&self, peer: &DeviceId) -> Result<Option<Session>, KeyStoreError> {
        Ok(self.state.sessions.get(peer).cloned())
    }

    fn save_session(&mut self, peer: &DeviceId, session: &Session) -> Result<(), KeyStoreError> {
        self.update(|s| {
            s.sessions.insert(*peer, session.clone());
        })
    }

    fn delete_session(&mut self, peer: &DeviceId) -> Result<bool, KeyStoreError> {
        if !self.state.sessions.contains_key(peer) && !self.state.archived.contains_key(peer) {
            return Ok(false);
        }
        let had = self.state.sessions.contains_key(peer);
        self.update(|s| {
            s.sessions.remove(peer);
            s.archived.remove(peer);
        })?;
        Ok(had)
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
        self.update(|s| s.profile = Some(SecretBytes::from_slice(profile)))
    }

    fn save_identity_and_session(
        &mut self,
        identity: &DeviceIdentity,
        peer: &DeviceId,
        session: &Session,
    ) -> Result<(), KeyStoreError> {
        self.update(|s| {
            s.identity = Some(identity.clone());
            s.sessions.insert(*peer, session.clone());
        })
    }

    fn apply(&mut self, update: &StoreUpdate<'_>) -> Result<(), KeyStoreError> {
        self.update(|s| update.apply_to(s))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand_core::OsRng;

    use super::*;
    use crate::keystore::FileKeyStore;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn sealed_bytes_round_trip_and_are_the_file_format() {
        let mut store = SealedKeyStore::create(b"correct horse battery", CHEAP, OsRng).unwrap();
        let first = store.take_unsaved().unwrap();
        assert!(store.take_unsaved().is_none(), "taken once");
        store.save_profile(b"profile").unwrap();
        let bytes = store.take_unsaved().unwrap();
        assert_ne!(first, bytes);
        assert_eq!(store.generation(), 2);

        let reopened = SealedKeyStore::open(&bytes, b"correct horse battery", OsRng).unwrap();
        assert_eq!(
            reopened.load_profile().unwrap().unwrap().expose_secret(),
            b"profile"
        );
        assert_eq!(reopened.generation(), 2);

        // The same bytes open as a key-store file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.mrks");
        std::fs::write(&path, &bytes).unwrap();
        let file = FileKeyStore::open(&path, b"correct horse battery", OsRng).unwrap();
        assert_eq!(
            file.load_profile().unwrap().unwrap().expose_secret(),
            b"profile"
        );
    }

    #[test]
    fn wrong_passphrase_and_tampering_are_refused() {
        let mut store = SealedKeyStore::create(b"correct horse battery", CHEAP, OsRng).unwrap();
        let mut bytes = store.take_unsaved().unwrap();
        assert!(matches!(
            SealedKeyStore::open(&bytes, b"wrong passphrase!", OsRng),
            Err(KeyStoreError::WrongPassphraseOrCorrupt)
        ));
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            SealedKeyStore::open(&bytes, b"correct horse battery", OsRng),
            Err(KeyStoreError::WrongPassphraseOrCorrupt)
        ));
    }

    #[test]
    fn changing_the_passphrase_reseals() {
        let mut store = SealedKeyStore::create(b"first passphrase", CHEAP, OsRng).unwrap();
        store.save_profile(b"p").unwrap();
        store
            .change_passphrase(b"second passphrase", CHEAP)
            .unwrap();
        let bytes = store.take_unsaved().unwrap();
        assert!(SealedKeyStore::open(&bytes, b"first passphrase", OsRng).is_err());
        assert!(SealedKeyStore::open(&bytes, b"second passphrase", OsRng).is_ok());
    }

    #[test]
    fn archived_sessions_are_kept_and_deleted_with_the_peer() {
        let alice = crate::DeviceIdentity::generate(&mut OsRng, 0);
        let bob = crate::DeviceIdentity::generate(&mut OsRng, 0);
        let session = Session::initiate(&alice, &bob.prekey_bundle(None), &mut OsRng).unwrap();
        let peer = DeviceId([2; 16]);
        let mut store = SealedKeyStore::create(b"correct horse battery", CHEAP, OsRng).unwrap();
        let aside = [session.clone()];
        store
            .apply(&StoreUpdate {
                sessions: vec![(peer, &session)],
                archived_sessions: vec![(peer, &aside)],
                ..StoreUpdate::default()
            })
            .unwrap();
        let bytes = store.take_unsaved().unwrap();
        let mut reopened = SealedKeyStore::open(&bytes, b"correct horse battery", OsRng).unwrap();
        assert_eq!(reopened.load_archived_sessions(&peer).unwrap().len(), 1);
        assert!(reopened.delete_session(&peer).unwrap());
        assert!(reopened.load_archived_sessions(&peer).unwrap().is_empty());
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut store = SealedKeyStore::create(b"correct horse battery", CHEAP, OsRng).unwrap();
        store.save_profile(b"very secret profile").unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains("very secret"));
        assert!(shown.contains("<redacted>"));
    }
}
