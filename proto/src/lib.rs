//! medrelay's wire protocol.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate compiles them with
//! prost and converts raw frames into validated domain types. Nothing past this crate handles
//! raw prost types.

/// Raw prost types generated from `relay.proto`. Use the domain types instead.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/medrelay.v1.rs"));
}

/// Raw prost types generated from `e2e.proto`, used by the SDK inside envelopes.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod e2e {
    include!(concat!(env!("OUT_DIR"), "/medrelay.e2e.v1.rs"));
}
