//! The org archive, offline: the privacy officer's key file, the export file format, and
//! opening an exported item.
//!
//! An export file is JSON lines: first an [`ExportHeader`], then one [`ExportItem`] per
//! archived message, each holding the `SealedBox` (hex) the sender's client sealed to the
//! archive key and the routing data the server kept beside it. Opening checks that the sealed
//! `ArchiveRecord` (conversation, sender user and device) agrees with that routing data, so a
//! server that relabelled an item is caught rather than believed.
//!
//! The secret key file is the 32-byte X25519 secret in hex, mode 0600, never overwritten.

use std::io::Write;
use std::path::Path;

use prost::Message;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::primitives::X25519Secret;
use crate::sealed_box::{self, ArchiveKeyPair};

/// The `format` of an export file's header.
pub const EXPORT_FORMAT: &str = "medrelay-archive-export-v1";

/// The first line of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The org exported (hex id).
    pub org_id: String,
    /// Items stored at or after this time.
    pub since_ms: u64,
    /// When the export was taken (the exporting client's clock).
    pub exported_at_ms: u64,
}

/// One archived message as exported: sealed, with the server's routing data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportItem {
    /// Position in the org archive.
    pub seq: u64,
    /// Conversation (hex id).
    pub conversation_id: String,
    /// The message's server id (hex).
    pub message_id: String,
    /// Sender (hex user id).
    pub sender_user_id: String,
    /// The sender's handle, as the exporting admin's directory knew it.
    pub sender_handle: Option<String>,
    /// Sender's device (hex id).
    pub sender_device_id: String,
    /// When the server accepted the message.
    pub server_time_ms: u64,
    /// The `SealedBox`, hex.
    pub sealed: String,
}

/// An opened archived message: one line of the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenedMessage {
    /// Position in the org archive.
    pub seq: u64,
    /// Conversation (hex id).
    pub conversation_id: String,
    /// The message's server id (hex).
    pub message_id: String,
    /// Sender (hex user id).
    pub sender_user_id: String,
    /// The sender's handle, if the export named it.
    pub sender_handle: Option<String>,
    /// Sender's device (hex id).
    pub sender_device_id: String,
    /// When the server accepted it.
    pub server_time_ms: u64,
    /// The sender's clock when sent.
    pub sent_at_ms: u64,
    /// The message text.
    pub text: String,
}

/// Why an archive operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The item does not open with this key, or was tampered with.
    #[error("item {seq}: {reason}")]
    Item {
        /// The item's position.
        seq: u64,
        /// What went wrong.
        reason: String,
    },
}

/// The fingerprint of an archive key people compare (the privacy officer's against what a
/// client pinned): SHA-256 of the key, first 16 bytes, hex.
pub fn archive_key_fingerprint(key: &medrelay_proto::X25519PublicKey) -> String {
    use sha2::Digest;
    hex::encode(
        sha2::Sha256::digest(key.as_bytes())
            .get(..16)
            .unwrap_or_default(),
    )
}

/// A sent message's `ArchiveRecord` (conversation, sender user and device, the padded content
/// as sent) sealed to the org archive key: what `send.archive_item` carries. Only the privacy
/// officer's offline key opens it. Shared by the native transport and the web client.
pub fn seal_record(
    key: &medrelay_proto::X25519PublicKey,
    sender_user_id: &[u8],
    sender_device_id: &[u8],
    content: &crate::content::Content,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, crate::SealedBoxError> {
    let record = medrelay_proto::e2e::ArchiveRecord {
        conversation_id: content.conversation_id.clone(),
        sender_user_id: medrelay_proto::Bytes::copy_from_slice(sender_user_id),
        sender_device_id: medrelay_proto::Bytes::copy_from_slice(sender_device_id),
        content: Some(content.clone()),
    };
    let plain = Zeroizing::new(record.encode_to_vec());
    sealed_box::seal(key.as_bytes(), &plain, rng)
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Generates an archive key pair, writes its secret to `path` (mode 0600; refuses to
/// overwrite) and returns the public key, hex.
pub fn keygen(path: &Path, rng: &mut (impl RngCore + CryptoRng)) -> Result<String, ArchiveError> {
    let keypair = ArchiveKeyPair::generate(rng);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(parent).map_err(|e| io_error(parent, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            io_error(path, "already exists; refusing to overwrite an archive key")
        } else {
            io_error(path, e)
        }
    })?;
    let hex = Zeroizing::new(hex::encode(keypair.secret().expose_secret()));
    file.write_all(hex.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, e))?;
    Ok(hex::encode(keypair.public_key()))
}

/// Reads the secret key file written by [`keygen`].
pub fn read_key(path: &Path) -> Result<ArchiveKeyPair, ArchiveError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io_error(path, e))?);
    let bytes =
        Zeroizing::new(hex::decode(text.trim()).map_err(|_| io_error(path, "not a hex key"))?);
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| io_error(path, "not a 32-byte key"))?;
    Ok(ArchiveKeyPair::from_secret(X25519Secret::from_bytes(
        secret,
    )))
}

/// Opens one exported item and checks it against its routing data.
pub fn open_item(
    keypair: &ArchiveKeyPair,
    item: &ExportItem,
) -> Result<OpenedMessage, ArchiveError> {
    let fail = |reason: &str| ArchiveError::Item {
        seq: item.seq,
        reason: reason.to_owned(),
    };
    let sealed = hex::decode(&item.sealed).map_err(|_| fail("the sealed box is not hex"))?;
    let plain = sealed_box::open(keypair, &sealed)
        .map_err(|e| fail(&format!("{e} (wrong archive key, or changed)")))?;
    let record = medrelay_proto::e2e::ArchiveRecord::decode(plain.expose_secret())
        .map_err(|_| fail("the sealed record is malformed"))?;
    let content = record
        .content
        .ok_or_else(|| fail("the sealed record has no content"))?;
    let agrees = hex::encode(&record.conversation_id) == item.conversation_id
        && hex::encode(&content.conversation_id) == item.conversation_id
        && hex::encode(&record.sender_user_id) == item.sender_user_id
        && hex::encode(&record.sender_device_id) == item.sender_device_id;
    if !agrees {
        return Err(fail(
            "the server's routing data does not match what the sender sealed (relabelled)",
        ));
    }
    Ok(OpenedMessage {
        seq: item.seq,
        conversation_id: item.conversation_id.clone(),
        message_id: item.message_id.clone(),
        sender_user_id: item.sender_user_id.clone(),
        sender_handle: item.sender_handle.clone(),
        sender_device_id: item.sender_device_id.clone(),
        server_time_ms: item.server_time_ms,
        sent_at_ms: content.sent_at_ms,
        text: content.text,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prost::bytes::Bytes;
    use rand::rngs::OsRng;

    fn item(keypair_public: &[u8; 32], sender: [u8; 16]) -> ExportItem {
        let content = medrelay_proto::e2e::Content {
            client_message_id: Bytes::from(vec![1; 16]),
            conversation_id: Bytes::from(vec![2; 16]),
            sent_at_ms: 5,
            text: "the archived text".to_owned(),
            padding: Bytes::new(),
        };
        let record = medrelay_proto::e2e::ArchiveRecord {
            conversation_id: Bytes::from(vec![2; 16]),
            sender_user_id: Bytes::from(sender.to_vec()),
            sender_device_id: Bytes::from(vec![4; 16]),
            content: Some(content),
        };
        let sealed = sealed_box::seal(keypair_public, &record.encode_to_vec(), &mut OsRng).unwrap();
        ExportItem {
            seq: 1,
            conversation_id: hex::encode([2; 16]),
            message_id: hex::encode([9; 16]),
            sender_user_id: hex::encode([3; 16]),
            sender_handle: Some("dr.lee".to_owned()),
            sender_device_id: hex::encode([4; 16]),
            server_time_ms: 6,
            sealed: hex::encode(sealed),
        }
    }

    #[test]
    fn keygen_open_and_relabelling_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.key");
        let public = keygen(&path, &mut OsRng).unwrap();
        assert!(keygen(&path, &mut OsRng).is_err(), "never overwritten");
        let keypair = read_key(&path).unwrap();
        assert_eq!(hex::encode(keypair.public_key()), public);
        let good = item(keypair.public_key(), [3; 16]);
        let opened = open_item(&keypair, &good).unwrap();
        assert_eq!(opened.text, "the archived text");
        assert_eq!(opened.sent_at_ms, 5);
        // The server claims another sender than the one sealed inside.
        let relabelled = item(keypair.public_key(), [8; 16]);
        assert!(open_item(&keypair, &relabelled).is_err());
        // Another key opens nothing.
        let other = ArchiveKeyPair::generate(&mut OsRng);
        assert!(open_item(&other, &good).is_err());
    }
}
