//! How records become bytes on disk: one version byte, then the record in postcard.
//!
//! Every value the store writes goes through [`encode`] and every value it reads through
//! [`decode`], so encryption at rest (per-epoch keys) has exactly one place to go.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The record format version written today.
pub const RECORD_VERSION: u8 = 1;

/// Encodes a record as `[RECORD_VERSION] || postcard(record)`.
pub fn encode<T: Serialize>(kind: &'static str, record: &T) -> Result<Vec<u8>, StoreError> {
    let out = vec![RECORD_VERSION];
    postcard::to_extend(record, out).map_err(|e| StoreError::Corrupt {
        kind,
        reason: format!("could not encode: {e}"),
    })
}

/// Decodes a record written by [`encode`], refusing unknown versions.
pub fn decode<T: DeserializeOwned>(kind: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
                kind,
                reason: format!("undecodable body: {e}"),
            })
        }
        Some((version, _)) => Err(StoreError::Corrupt {
            kind,
            reason: format!("unknown record version {version}"),
        }),
        None => Err(StoreError::Corrupt {
            kind,
            reason: "empty value".to_owned(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_checks() {
        let bytes = encode("test", &(7u32, "x".to_owned())).unwrap();
        assert_eq!(bytes.first(), Some(&RECORD_VERSION));
        let back: (u32, String) = decode("test", &bytes).unwrap();
        assert_eq!(back, (7, "x".to_owned()));
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(decode::<(u32, String)>("test", &future).is_err());
        assert!(decode::<(u32, String)>("test", &[]).is_err());
        assert!(decode::<(u32, String)>("test", &[RECORD_VERSION, 0xff]).is_err());
    }
}
