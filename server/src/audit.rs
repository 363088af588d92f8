//! The audit seam: every decision, allowed or denied, becomes one [`AuditEvent`] through one
//! [`AuditSink`]. Events hold pseudonymous ids only: never message content, keys or handles.
//! The tamper-evident access log ([`crate::access_log::AccessLog`]) implements this trait.

use std::net::IpAddr;

use medrelay_proto::{
    AccessLogFilter, AccessLogPage, AccessLogStatus, DeviceId, ErrorCode, OrgId, Role, UserId,
};

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
    /// Records one event. A sink that fails to record must refuse [`AuditSink::ready`] from
    /// then on: the server fails closed.
    fn record(&self, event: &AuditEvent) -> Result<(), AuditError>;

    /// Records one event of a request that changed records outside the mail log, and puts
    /// it in the database at once: that change is already in the database, and the next
    /// flush, whichever starts first, must not make it durable without its entry.
    fn record_now(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.record(event)
    }

    /// Whether events can be recorded now; requests are refused, unchanged, when not.
    fn ready(&self) -> Result<(), AuditError> {
        Ok(())
    }

    /// Asks for a checkpoint over entries left unsealed while the log was quiet (called
    /// about once a second, before a flush of the store).
    fn seal_idle(&self, _now_ms: u64) -> Result<(), AuditError> {
        Ok(())
    }

    /// Records the latest durable checkpoint outside the database (after that flush).
    fn record_head(&self) -> Result<(), AuditError> {
        Ok(())
    }

    /// Verifies the chain and checkpoints now.
    fn verify(&self) -> Result<AccessLogStatus, AuditError> {
        Err(AuditError(
            "this access log cannot be verified online".to_owned(),
        ))
    }

    /// One page of the entries an org may see, filtered.
    fn export(&self, _org: &OrgId, _filter: &AccessLogFilter) -> Result<AccessLogPage, AuditError> {
        Err(AuditError(
            "this access log cannot be exported online".to_owned(),
        ))
    }

    /// Removes entries older than `before_ms` (retention); returns how many, and the epoch
    /// keys nothing needs any more.
    fn expire_before(
        &self,
        _before_ms: u64,
        _now_ms: u64,
    ) -> Result<(u64, Vec<crate::keyring::KeyId>), AuditError> {
        Ok((0, Vec::new()))
    }
}
