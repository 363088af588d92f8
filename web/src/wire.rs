//! Pure glue between the crypto core and the wire, for the browser engine: key conversions and
//! the fan-out decisions.
//!
//! The key conversions are the SDK's always-built `medrelay_sdk::convert`. The send planning
//! mirrors `medrelay_sdk::transport::plan`, which sits behind the SDK's `transport` feature
//! (tokio, rustls: nothing that builds for a browser); it is planning, not cryptography: every
//! signature check, key agreement and encryption is the SDK's. The receive side (session choice, simultaneous
//! initiation, sessions set aside) is shared: `medrelay_sdk::delivery`, re-exported here.

use medrelay_proto::{Conversation, DeviceId, DeviceKeys, PqSignedPrekey, UserId};
use medrelay_sdk::identity::{PqPrekeyPublic, PublicDeviceKeys};

use crate::error::EngineError;

// The receive side's shared pure helpers (one implementation with the native transport).
pub use medrelay_sdk::delivery::{keep_existing_session, peer_address, store_device_id};

// The key conversions are the SDK's (one implementation with the native transport).
pub use medrelay_sdk::convert::{bundle, one_time_prekeys, signed_prekey};

/// The wire form of an ML-KEM-768 prekey.
pub fn pq_prekey(prekey: &PqPrekeyPublic) -> Result<PqSignedPrekey, EngineError> {
    medrelay_sdk::convert::pq_prekey(prekey)
        .map_err(|_| EngineError::Local("a post-quantum prekey has the wrong length"))
}

/// Everything a device publishes at enrolment, in wire form.
pub fn device_keys(keys: &PublicDeviceKeys) -> Result<DeviceKeys, EngineError> {
    medrelay_sdk::convert::device_keys(keys)
        .map_err(|_| EngineError::Local("a post-quantum prekey has the wrong length"))
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
