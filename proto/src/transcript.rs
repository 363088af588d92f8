//! Every byte string a signature covers: the auth and enrolment transcripts, and the
//! signatures on a device's published keys. Client and server must build them identically;
//! `README.md` gives the layouts and the tests below pin them byte for byte.
//!
//! Each starts with its own NUL-terminated label, so a signature made for one purpose can
//! never be taken for another.

use crate::limits::NONCE_LEN;
use crate::{ChannelBinding, DeviceId, Ed25519PublicKey, MlKemPublicKey, Origin, X25519PublicKey};

/// The TLS exporter label (RFC 8446 section 7.5) a native client and the server use to derive
/// the channel binding. No context is passed.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-medrelay-auth-v1";

/// Bytes of TLS exporter keying material in the binding.
pub const TLS_EXPORTER_LEN: usize = 32;

/// First bytes of the transcript an `AuthProof` signs.
pub const AUTH_TRANSCRIPT_LABEL: &[u8] = b"medrelay-auth-v1\0";

/// First bytes of the transcript an `EnrollRequest` signs.
pub const ENROLL_TRANSCRIPT_LABEL: &[u8] = b"medrelay-enroll-v1\0";

/// First bytes of what the identity signing key signs to vouch for the identity DH key.
pub const IDENTITY_DH_KEY_LABEL: &[u8] = b"medrelay-identity-dh-key-v1\0";

/// First bytes of what the identity signing key signs to vouch for a signed X25519 prekey.
pub const SIGNED_PREKEY_LABEL: &[u8] = b"medrelay-signed-prekey-v1\0";

/// First bytes of what the identity signing key signs to vouch for an ML-KEM-768 prekey.
pub const PQ_PREKEY_LABEL: &[u8] = b"medrelay-pq-prekey-v1\0";

/// What a proof is bound to, with its value: the connection's TLS exporter output (native
/// clients) or the server origin the browser talks to.
#[derive(Clone, PartialEq, Eq)]
pub enum Binding {
    /// [`TLS_EXPORTER_LEN`] bytes exported from the TLS session with [`TLS_EXPORTER_LABEL`].
    TlsExporter([u8; TLS_EXPORTER_LEN]),
    /// The origin, exactly as the browser sends it in `AuthProof.origin`.
    Origin(Origin),
}

impl Binding {
    /// The binding kind byte in the transcript: 1 for the TLS exporter, 2 for an origin (the
    /// `ChannelBinding` enum values).
    pub fn kind_byte(&self) -> u8 {
        match self {
            Self::TlsExporter(_) => 1,
            Self::Origin(_) => 2,
        }
    }

    /// What the proof says on the wire about this binding.
    pub fn channel_binding(&self) -> ChannelBinding {
        match self {
            Self::TlsExporter(_) => ChannelBinding::TlsExporter,
            Self::Origin(origin) => ChannelBinding::Origin(origin.clone()),
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            Self::TlsExporter(ekm) => ekm,
            Self::Origin(origin) => origin.as_str().as_bytes(),
        }
    }
}

impl std::fmt::Debug for Binding {
    /// Shows the kind only: exporter output is connection key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TlsExporter(_) => f.write_str("Binding::TlsExporter(<redacted>)"),
            Self::Origin(origin) => write!(f, "Binding::Origin({:?})", origin.as_str()),
        }
    }
}

/// `label || kind (u8) || len (u32 big-endian) || binding value || nonce || subject`.
fn transcript(label: &[u8], nonce: &[u8; NONCE_LEN], binding: &Binding, subject: &[u8]) -> Vec<u8> {
    let value = binding.value();
    // An origin is at most MAX_ORIGIN_LEN bytes and an exporter output 32: both fit a u32.
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(label.len() + 1 + 4 + value.len() + NONCE_LEN + subject.len());
    out.extend_from_slice(label);
    out.push(binding.kind_byte());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(nonce);
    out.extend_from_slice(subject);
    out
}

/// What an `AuthProof` signs, with the device's identity signing key:
/// [`AUTH_TRANSCRIPT_LABEL`] `|| kind || u32-be len || binding value || nonce || device id`.
pub fn auth_transcript(
    nonce: &[u8; NONCE_LEN],
    binding: &Binding,
    device_id: &DeviceId,
) -> Vec<u8> {
    transcript(AUTH_TRANSCRIPT_LABEL, nonce, binding, device_id.as_bytes())
}

/// What an `EnrollRequest` signs, with the new device's identity signing key. The device has
/// no id yet, so its identity signing key takes the id's place:
/// [`ENROLL_TRANSCRIPT_LABEL`] `|| kind || u32-be len || binding value || nonce ||
/// identity signing key`.
pub fn enroll_transcript(
    nonce: &[u8; NONCE_LEN],
    binding: &Binding,
    identity_signing_key: &Ed25519PublicKey,
) -> Vec<u8> {
    transcript(
        ENROLL_TRANSCRIPT_LABEL,
        nonce,
        binding,
        identity_signing_key.as_bytes(),
    )
}

/// What `DeviceKeys.identity_dh_signature` signs: [`IDENTITY_DH_KEY_LABEL`] `|| key`.
pub fn identity_dh_key_signed_message(identity_dh_key: &X25519PublicKey) -> Vec<u8> {
    [IDENTITY_DH_KEY_LABEL, identity_dh_key.as_bytes()].concat()
}

/// What a signed X25519 prekey's signature signs:
/// [`SIGNED_PREKEY_LABEL`] `|| id (u32 big-endian) || key`.
pub fn signed_prekey_signed_message(id: u32, public_key: &X25519PublicKey) -> Vec<u8> {
    [
        SIGNED_PREKEY_LABEL,
        &id.to_be_bytes(),
        public_key.as_bytes(),
    ]
    .concat()
}

/// What an ML-KEM-768 prekey's signature signs:
/// [`PQ_PREKEY_LABEL`] `|| id (u32 big-endian) || key`.
pub fn pq_prekey_signed_message(id: u32, public_key: &MlKemPublicKey) -> Vec<u8> {
    [PQ_PREKEY_LABEL, &id.to_be_bytes(), public_key.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_transcript_layout_with_tls_exporter() {
        let t = auth_transcript(
            &[0xaa; 32],
            &Binding::TlsExporter([0xbb; 32]),
            &DeviceId::from([0xcc; 16]),
        );
        let mut expected = b"medrelay-auth-v1\0".to_vec();
        expected.push(1);
        expected.extend_from_slice(&[0, 0, 0, 32]);
        expected.extend_from_slice(&[0xbb; 32]);
        expected.extend_from_slice(&[0xaa; 32]);
        expected.extend_from_slice(&[0xcc; 16]);
        assert_eq!(t, expected);
        assert_eq!(t.len(), 17 + 1 + 4 + 32 + 32 + 16);
    }

    #[test]
    fn auth_transcript_layout_with_origin() -> Result<(), crate::ProtoError> {
        let origin = Origin::new("https://c.example")?;
        let t = auth_transcript(&[1; 32], &Binding::Origin(origin), &DeviceId::from([2; 16]));
        let hex = hex::encode(&t);
        // label, kind 2, length 17, the origin, nonce, device id.
        let expected = format!(
            "{}02{}{}{}{}",
            hex::encode(b"medrelay-auth-v1\0"),
            "00000011",
            hex::encode(b"https://c.example"),
            "01".repeat(32),
            "02".repeat(16)
        );
        assert_eq!(hex, expected);
        Ok(())
    }

    #[test]
    fn enroll_transcript_differs_from_auth_by_label_and_subject() {
        let binding = Binding::TlsExporter([5; 32]);
        let key = Ed25519PublicKey::from([6; 32]);
        let t = enroll_transcript(&[7; 32], &binding, &key);
        assert!(t.starts_with(b"medrelay-enroll-v1\0\x01\x00\x00\x00\x20"));
        assert!(t.ends_with(&[6; 32]));
        assert_eq!(t.len(), 19 + 1 + 4 + 32 + 32 + 32);
    }

    #[test]
    fn key_signature_messages() {
        let key = X25519PublicKey::from([9; 32]);
        assert_eq!(
            identity_dh_key_signed_message(&key),
            [b"medrelay-identity-dh-key-v1\0".as_slice(), &[9; 32]].concat()
        );
        assert_eq!(
            signed_prekey_signed_message(0x0102_0304, &key),
            [
                b"medrelay-signed-prekey-v1\0".as_slice(),
                &[1, 2, 3, 4],
                &[9; 32]
            ]
            .concat()
        );
        let pq = MlKemPublicKey::from([8; 1184]);
        let m = pq_prekey_signed_message(7, &pq);
        assert!(m.starts_with(b"medrelay-pq-prekey-v1\0\0\0\0\x07"));
        assert_eq!(m.len(), 22 + 4 + 1184);
    }

    #[test]
    fn binding_debug_hides_exporter_output() {
        let shown = format!("{:?}", Binding::TlsExporter([0xab; 32]));
        assert!(!shown.contains("abab"), "{shown}");
    }
}
