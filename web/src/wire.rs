//! Pure glue between the crypto core and the wire, for the browser engine: key conversions and
//! the fan-out decisions.
//!
//! The key conversions and send planning mirror `medrelay_sdk::transport::{convert, plan}`,
//! which sit behind the SDK's `transport` feature (tokio, rustls: nothing that builds for a
//! browser). They are key *encodings* and planning, not cryptography: every signature check,
//! key agreement and encryption is the SDK's. The receive side (session choice, simultaneous
//! initiation, sessions set aside) is shared: `medrelay_sdk::delivery`, re-exported here.

use medrelay_proto::{
    Conversation, DeviceId, DeviceKeys, Ed25519PublicKey, IdentityKeys, MlKemPublicKey,
    OneTimePrekey, PqSignedPrekey, Signature, SignedPrekey, UserId, X25519PublicKey,
};
use medrelay_sdk::identity::{
    OneTimePrekeyPublic, PqPrekeyPublic, PrekeyBundle, PublicDeviceKeys, PublicIdentity,
    SignedPrekeyPublic,
};

use crate::error::EngineError;

// The receive side's shared pure helpers (one implementation with the native transport).
pub use medrelay_sdk::delivery::{keep_existing_session, peer_address, store_device_id};

/// The wire form of a signed X25519 prekey.
pub fn signed_prekey(prekey: &SignedPrekeyPublic) -> SignedPrekey {
    SignedPrekey {
        id: prekey.id,
        public_key: X25519PublicKey::from_array(prekey.public_key),
        signature: Signature::from_array(prekey.signature),
    }
}

/// The wire form of an ML-KEM-768 prekey.
pub fn pq_prekey(prekey: &PqPrekeyPublic) -> Result<PqSignedPrekey, EngineError> {
    Ok(PqSignedPrekey {
        id: prekey.id,
        public_key: MlKemPublicKey::from_bytes(&prekey.public_key)
            .map_err(|_| EngineError::Local("a post-quantum prekey has the wrong length"))?,
        signature: Signature::from_array(prekey.signature),
    })
}

/// The wire form of one-time prekeys.
pub fn one_time_prekeys(prekeys: &[OneTimePrekeyPublic]) -> Vec<OneTimePrekey> {
    prekeys
        .iter()
        .map(|p| OneTimePrekey {
            id: p.id,
            public_key: X25519PublicKey::from_array(p.public_key),
        })
        .collect()
}

/// Everything a device publishes at enrolment, in wire form.
pub fn device_keys(keys: &PublicDeviceKeys) -> Result<DeviceKeys, EngineError> {
    let identity = &keys.identity;
    Ok(DeviceKeys {
        identity: IdentityKeys {
            signing_key: Ed25519PublicKey::from_array(identity.signing_key),
            dh_key: X25519PublicKey::from_array(identity.dh_key),
            dh_signature: Signature::from_array(identity.dh_signature),
        },
        signed_prekey: signed_prekey(&keys.signed_prekey),
        pq_prekey: pq_prekey(&keys.pq_prekey)?,
        one_time_prekeys: one_time_prekeys(&keys.one_time_prekeys),
    })
}

/// A fetched bundle in the crypto core's form ([`Session::initiate`] checks its signatures).
pub fn bundle(wire: &medrelay_proto::PrekeyBundle) -> PrekeyBundle {
    PrekeyBundle {
        identity: PublicIdentity {
            signing_key: wire.identity.signing_key.to_array(),
            dh_key: wire.identity.dh_key.to_array(),
            dh_signature: wire.identity.dh_signature.to_array(),
        },
        signed_prekey: SignedPrekeyPublic {
            id: wire.signed_prekey.id,
            public_key: wire.signed_prekey.public_key.to_array(),
            signature: wire.signed_prekey.signature.to_array(),
        },
        pq_prekey: PqPrekeyPublic {
            id: wire.pq_prekey.id,
            public_key: wire.pq_prekey.public_key.as_bytes().to_vec(),
            signature: wire.pq_prekey.signature.to_array(),
        },
        one_time_prekey: wire.one_time_prekey.map(|o| OneTimePrekeyPublic {
            id: o.id,
            public_key: o.public_key.to_array(),
        }),
    }
}

/// One device a send must carry an envelope for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recipient {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

/// Every current device of every member, the sender's own other devices included, the sending
/// device excluded (protocol "Sending", step 1). Sorted, no device twice.
pub fn recipients(conversation: &Conversation, own_device: &DeviceId) -> Vec<Recipient> {
    let mut out: Vec<Recipient> = conversation
        .members
        .iter()
        .flat_map(|m| {
            m.devices.iter().map(|d| Recipient {
                user: m.user_id,
                device: *d,
            })
        })
        .filter(|r| r.device != *own_device)
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.device == b.device);
    out
}
