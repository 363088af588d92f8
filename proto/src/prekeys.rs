//! A device's published keys (PQXDH, Signal spec section 2.2): identity keys, the signed
//! X25519 and ML-KEM-768 prekeys, one-time prekeys; and the requests that upload and fetch
//! them. Signatures are checked by the server on upload and by the SDK on fetch, over the
//! messages in [`crate::transcript`].

use crate::field::{
    at_most, between_one_and, required, required_each, unique, FieldError, FieldProblem, Within,
};
use crate::limits::{MAX_FETCH_DEVICES, MAX_FETCH_USERS, MAX_ONE_TIME_PREKEYS_PER_UPLOAD};
use crate::transcript::{
    identity_dh_key_signed_message, pq_prekey_signed_message, signed_prekey_signed_message,
};
use crate::{
    pb, Bytes, DeviceId, Ed25519PublicKey, MlKemPublicKey, ProtoError, Signature, UserId,
    X25519PublicKey,
};

/// A device's long-term identity: the Ed25519 signing key and the X25519 DH key it vouches for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdentityKeys {
    /// Ed25519 identity signing key; signs everything else the device publishes.
    pub signing_key: Ed25519PublicKey,
    /// X25519 identity DH key.
    pub dh_key: X25519PublicKey,
    /// `signing_key`'s signature over [`Self::dh_signed_message`].
    pub dh_signature: Signature,
}

impl IdentityKeys {
    /// What `dh_signature` must sign.
    pub fn dh_signed_message(&self) -> Vec<u8> {
        identity_dh_key_signed_message(&self.dh_key)
    }
}

/// A medium-term X25519 prekey signed by the identity signing key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedPrekey {
    /// Chosen by the device; names the prekey in a session's first message.
    pub id: u32,
    /// The public key.
    pub public_key: X25519PublicKey,
    /// Signature over [`Self::signed_message`].
    pub signature: Signature,
}

impl SignedPrekey {
    /// What `signature` must sign.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_prekey_signed_message(self.id, &self.public_key)
    }

    fn to_pb(&self) -> pb::SignedPrekey {
        pb::SignedPrekey {
            id: self.id,
            public_key: Bytes::copy_from_slice(self.public_key.as_bytes()),
            signature: Bytes::copy_from_slice(self.signature.as_bytes()),
        }
    }

    fn from_pb(raw: pb::SignedPrekey) -> Result<Self, FieldError> {
        Ok(Self {
            id: raw.id,
            public_key: required("public_key", &raw.public_key, X25519PublicKey::from_bytes)?,
            signature: required("signature", &raw.signature, Signature::from_bytes)?,
        })
    }
}

/// A medium-term ML-KEM-768 prekey signed by the identity signing key (PQXDH's "last resort"
/// PQ prekey).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PqSignedPrekey {
    /// Chosen by the device; names the prekey in a session's first message.
    pub id: u32,
    /// The encapsulation key.
    pub public_key: MlKemPublicKey,
    /// Signature over [`Self::signed_message`].
    pub signature: Signature,
}

impl PqSignedPrekey {
    /// What `signature` must sign.
    pub fn signed_message(&self) -> Vec<u8> {
        pq_prekey_signed_message(self.id, &self.public_key)
    }

    fn to_pb(&self) -> pb::SignedPrekey {
        pb::SignedPrekey {
            id: self.id,
            public_key: Bytes::copy_from_slice(self.public_key.as_bytes()),
            signature: Bytes::copy_from_slice(self.signature.as_bytes()),
        }
    }

    fn from_pb(raw: pb::SignedPrekey) -> Result<Self, FieldError> {
        Ok(Self {
            id: raw.id,
            public_key: required("public_key", &raw.public_key, MlKemPublicKey::from_bytes)?,
            signature: required("signature", &raw.signature, Signature::from_bytes)?,
        })
    }
}

/// A one-time X25519 prekey, handed out once by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OneTimePrekey {
    /// Chosen by the device, unique among its one-time prekeys.
    pub id: u32,
    /// The public key.
    pub public_key: X25519PublicKey,
}

impl OneTimePrekey {
    fn to_pb(self) -> pb::OneTimePrekey {
        pb::OneTimePrekey {
            id: self.id,
            public_key: Bytes::copy_from_slice(self.public_key.as_bytes()),
        }
    }

    fn from_pb(raw: pb::OneTimePrekey) -> Result<Self, FieldError> {
        Ok(Self {
            id: raw.id,
            public_key: required("public_key", &raw.public_key, X25519PublicKey::from_bytes)?,
        })
    }
}

/// Reads a batch of at most `max` one-time prekeys with distinct ids.
fn one_time_prekeys(
    raw: Vec<pb::OneTimePrekey>,
    max: usize,
) -> Result<Vec<OneTimePrekey>, FieldError> {
    const NAME: &str = "one_time_prekeys";
    at_most(NAME, raw.len(), max)?;
    let keys = raw
        .into_iter()
        .map(|k| OneTimePrekey::from_pb(k).within(NAME))
        .collect::<Result<Vec<_>, _>>()?;
    unique(NAME, keys.iter().map(|k| &k.id))?;
    Ok(keys)
}

/// Reads a required nested signed prekey.
fn required_message<R, T>(
    name: &'static str,
    raw: Option<R>,
    parse: impl FnOnce(R) -> Result<T, FieldError>,
) -> Result<T, FieldError> {
    let raw = raw.ok_or_else(|| FieldError::new(name, FieldProblem::Missing))?;
    parse(raw).within(name)
}

/// Everything a device publishes at enrolment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceKeys {
    /// The identity keys.
    pub identity: IdentityKeys,
    /// The signed X25519 prekey.
    pub signed_prekey: SignedPrekey,
    /// The signed ML-KEM-768 prekey.
    pub pq_prekey: PqSignedPrekey,
    /// At most [`MAX_ONE_TIME_PREKEYS_PER_UPLOAD`] one-time prekeys with distinct ids.
    pub one_time_prekeys: Vec<OneTimePrekey>,
}

/// Writes the identity, signed and PQ prekeys, and the given one-time prekeys.
fn device_keys_pb(
    identity: &IdentityKeys,
    signed_prekey: &SignedPrekey,
    pq_prekey: &PqSignedPrekey,
    one_time_prekeys: impl Iterator<Item = OneTimePrekey>,
) -> pb::DeviceKeys {
    pb::DeviceKeys {
        identity_signing_key: Bytes::copy_from_slice(identity.signing_key.as_bytes()),
        identity_dh_key: Bytes::copy_from_slice(identity.dh_key.as_bytes()),
        identity_dh_signature: Bytes::copy_from_slice(identity.dh_signature.as_bytes()),
        signed_prekey: Some(signed_prekey.to_pb()),
        pq_prekey: Some(pq_prekey.to_pb()),
        one_time_prekeys: one_time_prekeys.map(OneTimePrekey::to_pb).collect(),
    }
}

/// Reads a `DeviceKeys` allowing at most `max_one_time` one-time prekeys.
fn device_keys_from_pb(raw: pb::DeviceKeys, max_one_time: usize) -> Result<DeviceKeys, FieldError> {
    Ok(DeviceKeys {
        identity: IdentityKeys {
            signing_key: required(
                "identity_signing_key",
                &raw.identity_signing_key,
                Ed25519PublicKey::from_bytes,
            )?,
            dh_key: required(
                "identity_dh_key",
                &raw.identity_dh_key,
                X25519PublicKey::from_bytes,
            )?,
            dh_signature: required(
                "identity_dh_signature",
                &raw.identity_dh_signature,
                Signature::from_bytes,
            )?,
        },
        signed_prekey: required_message("signed_prekey", raw.signed_prekey, SignedPrekey::from_pb)?,
        pq_prekey: required_message("pq_prekey", raw.pq_prekey, PqSignedPrekey::from_pb)?,
        one_time_prekeys: one_time_prekeys(raw.one_time_prekeys, max_one_time)?,
    })
}

impl DeviceKeys {
    pub(crate) fn to_pb(&self) -> pb::DeviceKeys {
        device_keys_pb(
            &self.identity,
            &self.signed_prekey,
            &self.pq_prekey,
            self.one_time_prekeys.iter().copied(),
        )
    }

    pub(crate) fn from_pb(raw: pb::DeviceKeys) -> Result<Self, FieldError> {
        device_keys_from_pb(raw, MAX_ONE_TIME_PREKEYS_PER_UPLOAD)
    }
}

/// Add one-time prekeys, and optionally rotate the signed and PQ prekeys. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPrekeys {
    /// At most [`MAX_ONE_TIME_PREKEYS_PER_UPLOAD`], with distinct ids.
    pub one_time_prekeys: Vec<OneTimePrekey>,
    /// A new signed X25519 prekey, replacing the current one.
    pub signed_prekey: Option<SignedPrekey>,
    /// A new ML-KEM-768 prekey, replacing the current one.
    pub pq_prekey: Option<PqSignedPrekey>,
}

impl UploadPrekeys {
    pub(crate) fn to_pb(&self) -> pb::UploadPrekeys {
        pb::UploadPrekeys {
            one_time_prekeys: self.one_time_prekeys.iter().map(|k| k.to_pb()).collect(),
            signed_prekey: self.signed_prekey.as_ref().map(SignedPrekey::to_pb),
            pq_prekey: self.pq_prekey.as_ref().map(PqSignedPrekey::to_pb),
        }
    }

    /// Reads the body; an upload with nothing in it is refused as empty.
    pub(crate) fn from_pb(raw: pb::UploadPrekeys) -> Result<Self, FieldError> {
        if raw.one_time_prekeys.is_empty() && raw.signed_prekey.is_none() && raw.pq_prekey.is_none()
        {
            return Err(FieldError::whole(ProtoError::Empty));
        }
        Ok(Self {
            one_time_prekeys: one_time_prekeys(
                raw.one_time_prekeys,
                MAX_ONE_TIME_PREKEYS_PER_UPLOAD,
            )?,
            signed_prekey: raw
                .signed_prekey
                .map(|k| SignedPrekey::from_pb(k).within("signed_prekey"))
                .transpose()?,
            pq_prekey: raw
                .pq_prekey
                .map(|k| PqSignedPrekey::from_pb(k).within("pq_prekey"))
                .transpose()?,
        })
    }
}

/// Ask for the prekey bundles of every current device of the given users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPrekeys {
    /// 1 to [`MAX_FETCH_USERS`] distinct users; each must share a conversation with the
    /// caller, or be the caller.
    pub user_ids: Vec<UserId>,
    /// If not empty, only these devices (at most [`MAX_FETCH_DEVICES`], distinct).
    pub devices: Vec<DeviceId>,
}

impl FetchPrekeys {
    pub(crate) fn to_pb(&self) -> pb::FetchPrekeys {
        pb::FetchPrekeys {
            user_ids: self
                .user_ids
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
            devices: self
                .devices
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
        }
    }

    pub(crate) fn from_pb(raw: pb::FetchPrekeys) -> Result<Self, FieldError> {
        between_one_and("user_ids", raw.user_ids.len(), MAX_FETCH_USERS)?;
        at_most("devices", raw.devices.len(), MAX_FETCH_DEVICES)?;
        let user_ids = required_each("user_ids", &raw.user_ids, UserId::from_bytes)?;
        let devices = required_each("devices", &raw.devices, DeviceId::from_bytes)?;
        unique("user_ids", &user_ids)?;
        unique("devices", &devices)?;
        Ok(Self { user_ids, devices })
    }
}

/// What one device publishes for session setup, as handed to a peer. The one-time prekey is
/// handed out once; when none is left PQXDH runs without it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrekeyBundle {
    /// The device's user.
    pub user_id: UserId,
    /// The device.
    pub device_id: DeviceId,
    /// Its identity keys.
    pub identity: IdentityKeys,
    /// Its current signed X25519 prekey.
    pub signed_prekey: SignedPrekey,
    /// Its current ML-KEM-768 prekey.
    pub pq_prekey: PqSignedPrekey,
    /// One of its one-time prekeys, if any is left.
    pub one_time_prekey: Option<OneTimePrekey>,
}

impl PrekeyBundle {
    pub(crate) fn to_pb(&self) -> pb::PrekeyBundle {
        pb::PrekeyBundle {
            user_id: Bytes::copy_from_slice(self.user_id.as_bytes()),
            device_id: Bytes::copy_from_slice(self.device_id.as_bytes()),
            keys: Some(device_keys_pb(
                &self.identity,
                &self.signed_prekey,
                &self.pq_prekey,
                self.one_time_prekey.into_iter(),
            )),
        }
    }

    pub(crate) fn from_pb(raw: pb::PrekeyBundle) -> Result<Self, FieldError> {
        let user_id = required("user_id", &raw.user_id, UserId::from_bytes)?;
        let device_id = required("device_id", &raw.device_id, DeviceId::from_bytes)?;
        let keys = required_message("keys", raw.keys, |keys| device_keys_from_pb(keys, 1))?;
        Ok(Self {
            user_id,
            device_id,
            identity: keys.identity,
            signed_prekey: keys.signed_prekey,
            pq_prekey: keys.pq_prekey,
            one_time_prekey: keys.one_time_prekeys.into_iter().next(),
        })
    }
}
