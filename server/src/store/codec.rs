//! How records become bytes on disk: versioned, then sealed under a data key.
//!
//! Every value the store writes goes through [`Codec::seal`] and every value it reads through
//! [`Codec::open`]. A sealed value is
//! `[RECORD_VERSION] || key id (u32, big-endian) || nonce (24 bytes) || XChaCha20-Poly1305(
//! postcard(record))`, with the record's kind, the key id and the row's key as associated
//! data: a value copied under another row, or into another kind of record, fails to open. The
//! key id in the clear lets the retention sweeper see a value's epoch without opening it.
//!
//! Version 1 was the same record in postcard without encryption; [`decode_legacy`] reads it
//! only to migrate a data directory written by an earlier release.

use std::sync::Arc;

use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::{Zeroize, Zeroizing};

use super::xchacha;
use super::StoreError;
use crate::keyring::{KeyId, Keyring, Scope};

/// The record format version written today (sealed).
pub const RECORD_VERSION: u8 = 2;
/// The unencrypted format of earlier releases, read only by the migration.
pub const LEGACY_VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 24;
/// Bytes of the Poly1305 tag.
const TAG: usize = 16;
const AAD_LABEL: &[u8] = b"medrelay-record-v2\0";

/// Seals and opens records with the keyring's data keys.
#[derive(Debug, Clone)]
pub struct Codec {
    keyring: Arc<Keyring>,
}

fn aad(kind: &str, key_id: KeyId, row_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + kind.len() + 5 + row_key.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(kind.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(row_key);
    aad
}

/// The data key id a sealed value was written under, read from its header.
pub fn key_id_of(bytes: &[u8]) -> Option<KeyId> {
    match bytes {
        [RECORD_VERSION, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl Codec {
    /// A codec over this keyring.
    pub fn new(keyring: Arc<Keyring>) -> Self {
        Codec { keyring }
    }

    /// The keyring.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Encodes and seals a record stored under `row_key`, with the key of `scope`.
    pub fn seal<T: Serialize>(
        &self,
        kind: &'static str,
        scope: Scope,
        row_key: &[u8],
        record: &T,
    ) -> Result<Vec<u8>, StoreError> {
        // Encoded straight after the header and encrypted where it lies: one allocation.
        let mut out = Vec::with_capacity(HEADER + 256 + TAG);
        out.resize(HEADER, 0);
        let mut out = postcard::to_extend(record, out).map_err(|e| StoreError::Corrupt {
            kind,
            reason: format!("could not encode: {e}"),
        })?;
        self.seal_tail(kind, scope, row_key, &mut out)?;
        Ok(out)
    }

    /// Seals bytes as they are (no record encoding) under `row_key`, with the key of `scope`:
    /// for payloads that are bytes already, such as end-to-end ciphertexts.
    pub fn seal_raw(
        &self,
        kind: &'static str,
        scope: Scope,
        row_key: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.resize(HEADER, 0);
        out.extend_from_slice(plain);
        self.seal_tail(kind, scope, row_key, &mut out)?;
        Ok(out)
    }

    /// Fills in the header of `buffer` and encrypts, in place, what follows it; appends the tag.
    /// On failure the plaintext is wiped.
    fn seal_tail(
        &self,
        kind: &'static str,
        scope: Scope,
        row_key: &[u8],
        buffer: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let fail = |buffer: &mut Vec<u8>, error: StoreError| {
            buffer.zeroize();
            Err(error)
        };
        let (key_id, key) = match self.keyring.key_for(scope) {
            Ok(found) => found,
            Err(e) => return fail(buffer, StoreError::Keyring(e.to_string())),
        };
        let mut nonce = [0u8; 24];
        // A CSPRNG seeded from the OS (ChaCha12, reseeded): random 192-bit nonces, without a
        // system call per record.
        rand::thread_rng().fill_bytes(&mut nonce);
        let Some((header, plain)) = buffer.split_at_mut_checked(HEADER) else {
            return fail(
                buffer,
                StoreError::Keyring("could not seal a record".to_owned()),
            );
        };
        let tag = xchacha::seal_in_place(&key, &nonce, &aad(kind, key_id, row_key), plain);
        let Some(tag) = tag else {
            return fail(
                buffer,
                StoreError::Keyring("could not seal a record".to_owned()),
            );
        };
        for (slot, byte) in header.iter_mut().zip(
            std::iter::once(RECORD_VERSION)
                .chain(key_id.to_be_bytes())
                .chain(nonce),
        ) {
            *slot = byte;
        }
        buffer.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens bytes sealed by [`Codec::seal_raw`] under `row_key`.
    pub fn open_raw(
        &self,
        kind: &'static str,
        row_key: &[u8],
        bytes: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.decrypt(kind, row_key, bytes)
            .map(|plain| plain.to_vec())
    }

    /// Opens a record sealed by [`Codec::seal`] under `row_key`.
    pub fn open<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        row_key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            kind,
            reason: reason.to_owned(),
        };
        let plain = self.decrypt(kind, row_key, bytes)?;
        postcard::from_bytes(&plain).map_err(|e| corrupt(&format!("undecodable body: {e}")))
    }

    /// Authenticates and decrypts a sealed value.
    fn decrypt(
        &self,
        kind: &'static str,
        row_key: &[u8],
        bytes: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            kind,
            reason: reason.to_owned(),
        };
        let Some(key_id) = key_id_of(bytes) else {
            return Err(match bytes.first() {
                None => corrupt("empty value"),
                Some(&LEGACY_VERSION) => corrupt("unencrypted record left from an earlier release"),
                Some(version) => corrupt(&format!("unknown record version {version}")),
            });
        };
        let (nonce, sealed) = bytes
            .get(5..)
            .and_then(|rest| rest.split_first_chunk::<{ xchacha::NONCE_LEN }>())
            .ok_or_else(|| corrupt("truncated value"))?;
        let Some((_, key)) = self.keyring.key(key_id) else {
            return Err(StoreError::Shredded { kind });
        };
        xchacha::open(&key, nonce, &aad(kind, key_id, row_key), sealed)
            .ok_or_else(|| corrupt("does not authenticate (changed, or moved from another row)"))
    }
}

/// Decodes an unencrypted record of an earlier release (`[1] || postcard(record)`).
pub fn decode_legacy<T: DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&LEGACY_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
                kind,
                reason: format!("undecodable body: {e}"),
            })
        }
        _ => Err(StoreError::Corrupt {
            kind,
            reason: "not a legacy record".to_owned(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn codec() -> (tempfile::TempDir, Codec) {
        let dir = tempfile::tempdir().unwrap();
        let keyring =
            Keyring::open(&dir.path().join("keyring"), &dir.path().join("master.key")).unwrap();
        (dir, Codec::new(Arc::new(keyring)))
    }

    #[test]
    fn round_trip_binds_row_and_kind_and_refuses_tampering() {
        let (_dir, codec) = codec();
        let record = (7u32, "a marker".to_owned());
        let bytes = codec
            .seal("test", Scope::Standing, b"row", &record)
            .unwrap();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert!(
            !bytes.windows(8).any(|w| w == b"a marker"),
            "sealed, not plain"
        );
        let back: (u32, String) = codec.open("test", b"row", &bytes).unwrap();
        assert_eq!(back, record);
        assert!(codec
            .open::<(u32, String)>("test", b"other row", &bytes)
            .is_err());
        assert!(codec
            .open::<(u32, String)>("other", b"row", &bytes)
            .is_err());
        for i in 5..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1;
            assert!(codec
                .open::<(u32, String)>("test", b"row", &flipped)
                .is_err());
        }
        assert!(codec.open::<(u32, String)>("test", b"row", &[]).is_err());
        assert!(codec
            .open::<(u32, String)>("test", b"row", &bytes[..10])
            .is_err());
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(codec
            .open::<(u32, String)>("test", b"row", &future)
            .is_err());
    }

    #[test]
    fn a_shredded_key_leaves_the_record_unreadable() {
        let (_dir, codec) = codec();
        let org = medrelay_proto::OrgId::from([1; 16]);
        let bytes = codec
            .seal("test", Scope::Mail { org, day: 3 }, b"row", &1u8)
            .unwrap();
        let id = key_id_of(&bytes).unwrap();
        assert_eq!(codec.keyring().shred(&[id]).unwrap(), 1);
        assert!(matches!(
            codec.open::<u8>("test", b"row", &bytes),
            Err(StoreError::Shredded { .. })
        ));
    }

    #[test]
    fn legacy_records_decode_for_migration_only() {
        let (_dir, codec) = codec();
        let mut legacy = vec![LEGACY_VERSION];
        legacy.extend(postcard::to_allocvec(&5u32).unwrap());
        assert_eq!(decode_legacy::<u32>("test", &legacy).unwrap(), 5);
        assert!(codec.open::<u32>("test", b"row", &legacy).is_err());
    }
}
