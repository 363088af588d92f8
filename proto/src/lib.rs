//! medrelay's wire protocol.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate compiles them with
//! prost and converts raw frames into validated domain types. Nothing past this crate handles
//! raw prost types: the server calls [`decode_client_frame`] and [`encode_server_frame`], the
//! SDK calls [`encode_client_frame`] and [`decode_server_frame`]. `README.md` beside this crate
//! describes the protocol: frames, flows, the auth transcript, error codes and limits.

mod auth;
mod break_glass;
mod care;
mod cidr;
mod consent;
mod conversation;
mod credentials;
mod directory;
mod error;
mod error_code;
mod field;
mod fixed_bytes;
mod frame;
pub mod ids;
mod invite;
mod keys;
pub mod limits;
mod messaging;
mod names;
mod permission;
mod policy;
mod prekeys;
mod retention;
mod role;
mod secret;
mod transcript;

#[cfg(test)]
mod testing;

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

/// The byte buffer type of every opaque payload (ciphertexts, archive items).
pub use prost::bytes::Bytes;

pub use auth::{AuthOk, AuthProof, Challenge, ChannelBinding, EnrollRequest, Identity};
pub use break_glass::Reason;
pub use care::{Team, TeamName};
pub use cidr::Cidr;
pub use consent::{ConsentState, ConsentText};
pub use conversation::{
    Conversation, ConversationList, ListConversations, Member, OpenConversation,
};
pub use credentials::{CredentialsSetup, SecondFactor};
pub use directory::{DeviceInfo, UserInfo};
pub use error::ProtoError;
pub use error_code::{ErrorCode, WireError};
pub use field::{FieldPath, FieldProblem};
pub use frame::{
    decode_client_frame, decode_client_frame_bytes, decode_server_frame, decode_server_frame_bytes,
    encode_client_frame, encode_server_frame, ClientFrame, ClientRequest, FrameError, ServerFrame,
    ServerMessage,
};
pub use ids::{ClientMessageId, ConversationId, DeviceId, MessageId, OrgId, TeamId, UserId};
pub use invite::{InviteCode, InviteCreated, InviteKind, InviteSpec};
pub use keys::{Ed25519PublicKey, MlKemPublicKey, Signature, X25519PublicKey};
pub use messaging::{AckRequest, Delivery, Envelope, SendAccepted, SendRequest};
pub use names::{DeviceLabel, Handle, Origin};
pub use permission::Permission;
pub use policy::{Policy, RoleAllowList};
pub use prekeys::{
    DeviceKeys, FetchPrekeys, IdentityKeys, OneTimePrekey, PqSignedPrekey, PrekeyBundle,
    SignedPrekey, UploadPrekeys,
};
pub use retention::{
    AccessLogEntry, AccessLogFilter, AccessLogPage, AccessLogStatus, ArchiveItem, ArchivePage,
    Retention, SweepReport,
};
pub use role::Role;
pub use secret::{Password, RecoveryCode, SecretText, TotpCode};
pub use transcript::{
    auth_transcript, enroll_transcript, identity_dh_key_signed_message, pq_prekey_signed_message,
    signed_prekey_signed_message, Binding, AUTH_TRANSCRIPT_LABEL, ENROLL_TRANSCRIPT_LABEL,
    IDENTITY_DH_KEY_LABEL, PQ_PREKEY_LABEL, SIGNED_PREKEY_LABEL, TLS_EXPORTER_LABEL,
    TLS_EXPORTER_LEN,
};
