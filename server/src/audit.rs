//! The audit seam: every decision, allowed or denied, becomes one [`AuditEvent`] through one
//! [`AuditSink`]. Events hold pseudonymous ids only: never message content, keys or handles.
//! The tamper-evident access log (hash chain, signed checkpoints) implements this trait.

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

/// Writes events to the structured log (target `audit`).
#[derive(Debug, Default)]
pub struct LogAuditSink;

impl AuditSink for LogAuditSink {
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let outcome = match event.outcome {
            Outcome::Allowed => "allowed",
            Outcome::Denied(code) => code.as_str(),
        };
        let (org, user, device, role) = match &event.actor {
            Some(a) => (
                a.org.to_string(),
                a.user.to_string(),
                a.device.to_string(),
                a.role.as_str(),
            ),
            None => (String::new(), String::new(), String::new(), ""),
        };
        tracing::info!(
            target: "audit",
            at_ms = event.at_ms, org, user, device, role,
            action = event.action, objects = ?event.objects, outcome,
            source = %event.source,
        );
        Ok(())
    }
}
