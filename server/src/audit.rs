//! The audit seam: every decision, allowed or denied, becomes one [`AuditEvent`] through one
//! [`AuditSink`]. Events hold pseudonymous ids only: never message content, keys or handles.
//! The tamper-evident access log ([`crate::access_log::AccessLog`]) implements this trait.

use std::net::IpAddr;

use medrelay_proto::{DeviceId, ErrorCode, OrgId, Role, UserId};

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// The actor's org.
    pub org: OrgId,
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The user's role.
    pub role: Role,
}

/// Whether the request was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was carried out.
    Allowed,
    /// It was refused with this code.
    Denied(ErrorCode),
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Server time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Who (none before authentication).
    pub actor: Option<Actor>,
    /// What: the request kind (`send`, `login`, `revoke_device`, ...).
    pub action: &'static str,
    /// Which objects, as hex ids (conversation, user, device, team).
    pub objects: Vec<String>,
    /// Allowed or denied.
    pub outcome: Outcome,
    /// From where.
    pub source: IpAddr,
}

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("the access log could not record the event: {0}")]
pub struct AuditError(pub String);

/// Where decisions go.
pub trait AuditSink: Send + Sync + std::fmt::Debug + 'static {
    /// Records one event.
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError>;
}
