//! Conversions between the crypto core's key types and the wire's validated types. Pure, and
//! always built: the native transport and the browser engine share them.

use medrelay_proto::{
    DeviceKeys, Ed25519PublicKey, IdentityKeys, MlKemPublicKey, OneTimePrekey, PqSignedPrekey,
    Signature, SignedPrekey, X25519PublicKey,
};

use crate::identity::{
    OneTimePrekeyPublic, PqPrekeyPublic, PrekeyBundle, PublicDeviceKeys, PublicIdentity,
    SignedPrekeyPublic,
};
use medrelay_proto::ProtoError;

pub use crate::delivery::store_device_id;

/// The wire form of an identity.
pub fn identity_keys(identity: &PublicIdentity) -> IdentityKeys {
    IdentityKeys {
        signing_key: Ed25519PublicKey::from_array(identity.signing_key),
        dh_key: X25519PublicKey::from_array(identity.dh_key),
        dh_signature: Signature::from_array(identity.dh_signature),
    }
}

/// The wire form of a signed X25519 prekey.
pub fn signed_prekey(prekey: &SignedPrekeyPublic) -> SignedPrekey {
    SignedPrekey {
        id: prekey.id,
        public_key: X25519PublicKey::from_array(prekey.public_key),
        signature: Signature::from_array(prekey.signature),
    }
}

/// The wire form of an ML-KEM-768 prekey.
pub fn pq_prekey(prekey: &PqPrekeyPublic) -> Result<PqSignedPrekey, ProtoError> {
    Ok(PqSignedPrekey {
        id: prekey.id,
        public_key: MlKemPublicKey::from_bytes(&prekey.public_key)?,
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
pub fn device_keys(keys: &PublicDeviceKeys) -> Result<DeviceKeys, ProtoError> {
    Ok(DeviceKeys {
        identity: identity_keys(&keys.identity),
        signed_prekey: signed_prekey(&keys.signed_prekey),
        pq_prekey: pq_prekey(&keys.pq_prekey)?,
        one_time_prekeys: one_time_prekeys(&keys.one_time_prekeys),
    })
}

/// A fetched bundle in the crypto core's form (its signatures are checked by
/// [`Session::initiate`](crate::Session::initiate)).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::DeviceIdentity;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn device_keys_round_trip_into_a_verifying_bundle() {
        let mut rng = StdRng::seed_from_u64(7);
        let device = DeviceIdentity::generate(&mut rng, 0);
        let keys = device_keys(&device.public_keys()).unwrap();
        assert_eq!(keys.one_time_prekeys.len(), 100);
        let wire = medrelay_proto::PrekeyBundle {
            user_id: medrelay_proto::UserId::from_array([1; 16]),
            device_id: medrelay_proto::DeviceId::from_array([2; 16]),
            identity: keys.identity.clone(),
            signed_prekey: keys.signed_prekey.clone(),
            pq_prekey: keys.pq_prekey.clone(),
            one_time_prekey: keys.one_time_prekeys.first().copied(),
        };
        let b = bundle(&wire);
        b.verify().unwrap();
        assert_eq!(b, device.prekey_bundle(Some(1)));
    }
}
