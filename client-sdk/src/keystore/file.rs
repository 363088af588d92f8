//! [`FileKeyStore`]: the whole key-store state in one file, encrypted under a passphrase.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "MRKS"
//!      4     1  format version (3; 2 is read and rewritten as 3)
//!      5     1  KDF id (1 = Argon2id, version 0x13)
//!      6     4  Argon2 memory cost, KiB (u32 BE)
//!     10     4  Argon2 time cost (u32 BE)
//!     14     4  Argon2 parallelism (u32 BE)
//!     18    16  salt (random, fixed for the file's passphrase)
//!     34     8  generation (u64 BE): 1 for a new file, +1 on every write
//!     42    12  nonce (random, fresh for every write)
//!     54     …  ChaCha20-Poly1305(key, nonce, postcard(state), aad = bytes 0..54)
//! key = Argon2id(passphrase, salt, params) (32 bytes)
//! ```
//!
//! The KDF parameters live in the header so they can be raised later; the header is the AEAD's
//! associated data, so it cannot be changed without detection. Writes are atomic: a temporary
//! file in the same directory (mode 0600 on unix), `fsync`, `rename`, `fsync` of the directory.
//! Nonces are random 96-bit values; a store is rewritten far fewer than the 2^32 times at which
//! a collision would start to matter.
//!
//! **One writer.** Two processes each holding the state in memory would overwrite each other's
//! advanced sessions, and the loser's next send would reuse a message key. So a `FileKeyStore`
//! holds an exclusive OS lock (`flock` / `LockFileEx`, through `File::try_lock`) on a lock file
//! beside the store (`<name>.lock`, mode 0600, never deleted) from open to drop; a second open
//! fails at once with [`KeyStoreError::InUse`]. (The store file itself cannot carry the lock:
//! every write replaces it by a rename.) As defence in depth (a filesystem without locks, a
//! file restored underneath a running process), every write first reads the header on disk and
//! refuses with [`KeyStoreError::ChangedOnDisk`] unless its generation and nonce are exactly
//! those this store last read or wrote.
//!
//! Format version 1 files (no generation; older session and identity layouts) are refused with
//! [`KeyStoreError::UnsupportedVersion`]`(1)`: enrol the device again. Version 2 files (no
//! archived sessions) are read and written back as version 3.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::{DeviceId, KeyStore, StoreState, StoreStateV2, StoreUpdate};
use crate::error::KeyStoreError;
use crate::identity::DeviceIdentity;
use crate::limits::{
    MAX_ARGON2_ITERATIONS, MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_PARALLELISM, MAX_KEYSTORE_FILE_BYTES,
};
use crate::primitives::{self, AeadKey};
use crate::secret::SecretBytes;
use crate::session::Session;

/// The first four bytes of a key-store file.
pub const KEYSTORE_MAGIC: &[u8; 4] = b"MRKS";
/// The file format version this build writes (3: archived sessions kept beside the current
/// one). Version 2 (the same header; a state without archived sessions) is read too.
pub const KEYSTORE_FORMAT_VERSION: u8 = 3;
/// The previous format, read and rewritten as [`KEYSTORE_FORMAT_VERSION`] on the next write.
const KEYSTORE_FORMAT_V2: u8 = 2;
const KDF_ARGON2ID_13: u8 = 1;
pub(super) const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 4 + 1 + 1 + 12 + SALT_LEN + 8 + NONCE_LEN;
/// Appended to the store's file name to name its lock file.
const LOCK_SUFFIX: &str = ".lock";

/// Argon2id cost parameters, stored in the file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Time cost (passes).
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    pub const OWASP: KdfParams = KdfParams {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    fn argon2(&self) -> Result<Argon2<'static>, KeyStoreError> {
        if self.memory_kib > MAX_ARGON2_MEMORY_KIB
            || self.iterations > MAX_ARGON2_ITERATIONS
            || self.parallelism > MAX_ARGON2_PARALLELISM
        {
            return Err(KeyStoreError::InvalidKdfParams);
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|_| KeyStoreError::InvalidKdfParams)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    pub(super) fn derive(
        &self,
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Result<AeadKey, KeyStoreError> {
        let mut key = Zeroizing::new([0u8; 32]);
        self.argon2()?
            .hash_password_into(passphrase, salt, key.as_mut())
            .map_err(|_| KeyStoreError::InvalidKdfParams)?;
        Ok(AeadKey::from_bytes(*key))
    }
}

/// A [`KeyStore`] in one encrypted file. Holds the decrypted state and the derived key in memory
/// (both zeroized on drop) and rewrites the file on every save. One process at a time: it holds
/// an exclusive lock on `<path>.lock` until dropped (see the module docs).
pub struct FileKeyStore<R: RngCore + CryptoRng> {
    path: PathBuf,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    key: AeadKey,
    state: StoreState,
    /// The generation and nonce of the file as this store last read or wrote it.
    on_disk: Option<(u64, [u8; NONCE_LEN])>,
    rng: R,
    /// Held for the store's lifetime; closing it releases the lock.
    _lock: Option<File>,
}

impl<R: RngCore + CryptoRng> core::fmt::Debug for FileKeyStore<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FileKeyStore")
            .field("path", &self.path)
            .field("params", &self.params)
            .field("key", &self.key)
            .field("state", &self.state)
            .field("generation", &self.on_disk.map(|(g, _)| g))
            .finish_non_exhaustive()
    }
}

impl<R: RngCore + CryptoRng> FileKeyStore<R> {
    /// Creates a new, empty store at `path` with [`KdfParams::OWASP`]. Fails with
    /// [`KeyStoreError::AlreadyExists`] rather than overwrite a file.
    pub fn create(
        path: impl AsRef<Path>,
        passphrase: &[u8],
        rng: R,
    ) -> Result<Self, KeyStoreError> {
        Self::create_with_params(path, passphrase, KdfParams::OWASP, rng)
    }

    /// Creates a new, empty store with the given KDF parameters (cheaper ones for tests).
    pub fn create_with_params(
        path: impl AsRef<Path>,
        passphrase: &[u8],
        params: KdfParams,
        mut rng: R,
    ) -> Result<Self, KeyStoreError> {
        let path = path.as_ref().to_path_buf();
        // Lock first, so two creators cannot both find no file.
        let lock = acquire_lock(&path)?;
        if path.try_exists()? {
            return Err(KeyStoreError::AlreadyExists);
        }
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let key = params.derive(passphrase, &salt)?;
        let mut store = Self {
            path,
            params,
            salt,
            key,
            state: StoreState::default(),
            on_disk: None,
            rng,
            _lock: lock,
        };
        let state = store.state.clone();
        store.write(&state)?;
        Ok(store)
    }

    /// Opens an existing store. A wrong passphrase (or a modified file) gives
    /// [`KeyStoreError::WrongPassphraseOrCorrupt`]; a missing file [`KeyStoreError::NotFound`];
    /// a store another `FileKeyStore` (in any process) has open [`KeyStoreError::InUse`], at
    /// once, before the passphrase is tried.
    pub fn open(path: impl AsRef<Path>, passphrase: &[u8], rng: R) -> Result<Self, KeyStoreError> {
        let path = path.as_ref().to_path_buf();
        let not_found = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => KeyStoreError::NotFound,
            _ => KeyStoreError::Io(e),
        };
        // Checked before locking, so a wrong path leaves no lock file behind.
        fs::metadata(&path).map_err(not_found)?;
        let lock = acquire_lock(&path)?;
        let len = fs::metadata(&path).map_err(not_found)?.len();
        if len > MAX_KEYSTORE_FILE_BYTES {
            return Err(KeyStoreError::NotAKeyStore);
        }
        let bytes = fs::read(&path).map_err(not_found)?;
        let opened = unseal(&bytes, passphrase)?;
        Ok(Self {
            path,
            params: opened.params,
            salt: opened.salt,
            key: opened.key,
            state: opened.state,
            on_disk: Some((opened.generation, opened.nonce)),
            rng,
            _lock: lock,
        })
    }

    /// The file's generation as this store last read or wrote it (1 for a new file, one more
    /// per write).
    pub fn generation(&self) -> u64 {
        self.on_disk.map_or(0, |(g, _)| g)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The KDF parameters in use.
    pub fn kdf_params(&self) -> KdfParams {
        self.params
    }

    /// Re-encrypts the store under a new passphrase (new salt, possibly new parameters).
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

    /// Applies `change` to a copy of the state, writes it, and keeps it only if the write
    /// succeeded.
    fn update(&mut self, change: impl FnOnce(&mut StoreState)) -> Result<(), KeyStoreError> {
        let mut next = self.state.clone();
        change(&mut next);
        self.write(&next)?;
        self.state = next;
        Ok(())
    }

    /// Refuses unless the file on disk is the one this store last read or wrote (none, for a
    /// store being created).
    fn check_on_disk(&self) -> Result<(), KeyStoreError> {
        let found = read_disk_header(&self.path)?;
        if found == self.on_disk {
            return Ok(());
        }
        Err(KeyStoreError::ChangedOnDisk {
            on_disk: found.map_or(0, |(g, _)| g),
            loaded: self.generation(),
        })
    }

    fn write(&mut self, state: &StoreState) -> Result<(), KeyStoreError> {
        self.check_on_disk()?;
        let generation = self
            .generation()
            .checked_add(1)
            .ok_or(KeyStoreError::Internal)?;
        let (file, nonce) = seal(
            &self.params,
            &self.salt,
            &self.key,
            generation,
            state,
            &mut self.rng,
        )?;
        let mut suffix = [0u8; 8];
        self.rng.fill_bytes(&mut suffix);
        atomic_write(&self.path, &file, &hex::encode(suffix))?;
        self.on_disk = Some((generation, nonce));
        Ok(())
    }
}

/// Encrypts `state` into the key-store format (header, then the AEAD ciphertext with the
/// header as associated data) under a fresh random nonce. Shared by [`FileKeyStore`] and
/// [`super::SealedKeyStore`], so both write the same bytes.
pub(super) fn seal(
    params: &KdfParams,
    salt: &[u8; SALT_LEN],
    key: &AeadKey,
    generation: u64,
    state: &StoreState,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Vec<u8>, [u8; NONCE_LEN]), KeyStoreError> {
    let plaintext =
        Zeroizing::new(postcard::to_allocvec(state).map_err(|_| KeyStoreError::StateEncode)?);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
    out.extend_from_slice(KEYSTORE_MAGIC);
    out.push(KEYSTORE_FORMAT_VERSION);
    out.push(KDF_ARGON2ID_13);
    out.extend_from_slice(&params.memory_kib.to_be_bytes());
    out.extend_from_slice(&params.iterations.to_be_bytes());
    out.extend_from_slice(&params.parallelism.to_be_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&nonce);
    let ciphertext = primitives::aead_seal(key, &nonce, &out, &plaintext)
        .map_err(|_| KeyStoreError::Internal)?;
    out.extend_from_slice(&ciphertext);
    Ok((out, nonce))
}

/// What [`unseal`] recovers from key-store bytes.
pub(super) struct Unsealed {
    pub(super) params: KdfParams,
    pub(super) salt: [u8; SALT_LEN],
    pub(super) key: AeadKey,
    pub(super) generation: u64,
    pub(super) nonce: [u8; NONCE_LEN],
    pub(super) state: StoreState,
}

/// Derives the key from `passphrase` and the header's parameters, and decrypts key-store
/// bytes. A wrong passphrase or any modified byte is [`KeyStoreError::WrongPassphraseOrCorrupt`].
pub(super) fn unseal(bytes: &[u8], passphrase: &[u8]) -> Result<Unsealed, KeyStoreError> {
    if bytes.len() as u64 > MAX_KEYSTORE_FILE_BYTES {
        return Err(KeyStoreError::NotAKeyStore);
    }
    let (header, ciphertext) = parse_header(bytes)?;
    let key = header.params.derive(passphrase, &header.salt)?;
    let aad = bytes.get(..HEADER_LEN).ok_or(KeyStoreError::NotAKeyStore)?;
    let plaintext = primitives::aead_open(&key, &header.nonce, aad, ciphertext)
        .map_err(|_| KeyStoreError::WrongPassphraseOrCorrupt)?;
    let state: StoreState = if header.version == KEYSTORE_FORMAT_V2 {
        postcard::from_bytes::<StoreStateV2>(plaintext.expose_secret())
            .map(StoreState::from)
            .map_err(|_| KeyStoreError::StateDecode)?
    } else {
        postcard::from_bytes(plaintext.expose_secret()).map_err(|_| KeyStoreError::StateDecode)?
    };
    Ok(Unsealed {
        params: header.params,
        salt: header.salt,
        key,
        generation: header.generation,
        nonce: header.nonce,
        state,
    })
}

/// Opens (creating, mode 0600) `<path>.lock` and takes an exclusive lock on it without
/// waiting. `None` when the filesystem does not support locks at all (the generation check
/// still guards every write).
fn acquire_lock(path: &Path) -> Result<Option<File>, KeyStoreError> {
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?
        .to_os_string();
    name.push(LOCK_SUFFIX);
    let lock_path = path.with_file_name(name);
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(KeyStoreError::InUse),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(None)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(KeyStoreError::Io(e)),
    }
}

/// The generation and nonce in the header of the file at `path` now; `None` if there is no
/// file. Anything that is not a current-format header counts as a change.
fn read_disk_header(path: &Path) -> Result<Option<(u64, [u8; NONCE_LEN])>, KeyStoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + 16);
    file.take((HEADER_LEN + 16) as u64)
        .read_to_end(&mut bytes)?;
    match parse_header(&bytes) {
        Ok((h, _)) => Ok(Some((h.generation, h.nonce))),
        Err(_) => Ok(Some((0, [0; NONCE_LEN]))),
    }
}

struct FileHeader {
    version: u8,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    generation: u64,
    nonce: [u8; NONCE_LEN],
}

fn parse_header(bytes: &[u8]) -> Result<(FileHeader, &[u8]), KeyStoreError> {
    if bytes.len() < HEADER_LEN + 16 {
        return Err(KeyStoreError::NotAKeyStore);
    }
    let (header, ciphertext) = bytes.split_at(HEADER_LEN);
    let (magic, rest) = header.split_at(4);
    if magic != KEYSTORE_MAGIC {
        return Err(KeyStoreError::NotAKeyStore);
    }
    let (version_kdf, rest) = rest.split_at(2);
    let version = version_kdf.first().copied().unwrap_or_default();
    if let [version, kdf] = version_kdf {
        if *version != KEYSTORE_FORMAT_VERSION && *version != KEYSTORE_FORMAT_V2 {
            return Err(KeyStoreError::UnsupportedVersion(*version));
        }
        if *kdf != KDF_ARGON2ID_13 {
            return Err(KeyStoreError::InvalidKdfParams);
        }
    }
    let (m, rest) = rest.split_at(4);
    let (t, rest) = rest.split_at(4);
    let (p, rest) = rest.split_at(4);
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (generation, nonce) = rest.split_at(8);
    let u32_be = |b: &[u8]| -> Result<u32, KeyStoreError> {
        <[u8; 4]>::try_from(b)
            .map(u32::from_be_bytes)
            .map_err(|_| KeyStoreError::NotAKeyStore)
    };
    Ok((
        FileHeader {
            version,
            params: KdfParams {
                memory_kib: u32_be(m)?,
                iterations: u32_be(t)?,
                parallelism: u32_be(p)?,
            },
            salt: salt.try_into().map_err(|_| KeyStoreError::NotAKeyStore)?,
            generation: <[u8; 8]>::try_from(generation)
                .map(u64::from_be_bytes)
                .map_err(|_| KeyStoreError::NotAKeyStore)?,
            nonce: nonce.try_into().map_err(|_| KeyStoreError::NotAKeyStore)?,
        },
        ciphertext,
    ))
}

/// Writes `data` to `path` atomically: temp file in the same directory (0600 on unix), fsync,
/// rename over `path`, fsync the directory.
fn atomic_write(path: &Path, data: &[u8], suffix: &str) -> Result<(), KeyStoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{suffix}"));
    let tmp = dir.join(tmp_name);

    let result = (|| -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(KeyStoreError::Io)
}

impl<R: RngCore + CryptoRng> KeyStore for FileKeyStore<R> {
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
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rand_core::OsRng;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn a_format_2_file_is_read_and_written_back_as_format_3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.mrks");
        let mut store = FileKeyStore::create_with_params(&path, b"pw", CHEAP, OsRng).unwrap();
        store.save_profile(b"kept").unwrap();
        // Rewrite the file as format 2 would have: the same header, a state without archives.
        let old_state = (
            store.state.identity.clone(),
            store.state.sessions.clone(),
            store.state.profile.clone(),
        );
        let plaintext = postcard::to_allocvec(&old_state).unwrap();
        let mut file = fs::read(&path).unwrap();
        file.truncate(HEADER_LEN);
        file[4] = KEYSTORE_FORMAT_V2;
        let nonce: [u8; NONCE_LEN] = file[HEADER_LEN - NONCE_LEN..].try_into().unwrap();
        let sealed = primitives::aead_seal(&store.key, &nonce, &file, &plaintext).unwrap();
        file.extend_from_slice(&sealed);
        drop(store);
        fs::write(&path, &file).unwrap();

        let mut reopened = FileKeyStore::open(&path, b"pw", OsRng).unwrap();
        assert_eq!(
            reopened.load_profile().unwrap().unwrap().expose_secret(),
            b"kept"
        );
        assert!(reopened
            .load_archived_sessions(&DeviceId([1; 16]))
            .unwrap()
            .is_empty());
        reopened.save_profile(b"again").unwrap();
        assert_eq!(fs::read(&path).unwrap()[4], KEYSTORE_FORMAT_VERSION);
        drop(reopened);
        let again = FileKeyStore::open(&path, b"pw", OsRng).unwrap();
        assert_eq!(
            again.load_profile().unwrap().unwrap().expose_secret(),
            b"again"
        );
    }
}
