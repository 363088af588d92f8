//! An org's access policy: how long staff sessions last, which networks each role may connect
//! from, and the consent text patients accept.

use std::net::IpAddr;

use crate::field::{at_most, in_range, required_text, unique, FieldError, FieldProblem, Within};
use crate::limits::{
    MAX_ALLOW_LIST_CIDRS, MAX_IDLE_TIMEOUT_MS, MAX_SESSION_LIFETIME_MS, MIN_IDLE_TIMEOUT_MS,
};
use crate::{pb, Cidr, ClientRequest, ConsentText, Role};

/// The IP allow-list of one role: the ranges its users may connect from. Empty allows every
/// address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoleAllowList {
    /// The role it applies to.
    pub role: Role,
    /// At most [`MAX_ALLOW_LIST_CIDRS`] ranges, none twice (after canonicalisation, so
    /// `10.1.0.0/8` and `10.0.0.0/8` are the same range).
    pub cidrs: Vec<Cidr>,
}

impl RoleAllowList {
    /// Whether a peer at `address` may connect: the list is empty, or a range holds it.
    pub fn allows(&self, address: &IpAddr) -> bool {
        self.cidrs.is_empty() || self.cidrs.iter().any(|cidr| cidr.contains(address))
    }

    pub(crate) fn to_pb(&self) -> pb::RoleAllowList {
        pb::RoleAllowList {
            role: self.role.to_pb(),
            cidrs: self.cidrs.iter().map(Cidr::to_string).collect(),
        }
    }

    pub(crate) fn from_pb(raw: pb::RoleAllowList) -> Result<Self, FieldError> {
        let role = Role::from_pb("role", raw.role)?;
        at_most("cidrs", raw.cidrs.len(), MAX_ALLOW_LIST_CIDRS)?;
        let cidrs = raw
            .cidrs
            .into_iter()
            .map(|c| required_text("cidrs", c, |c| c.parse()))
            .collect::<Result<Vec<Cidr>, _>>()?;
        unique("cidrs", &cidrs)?;
        Ok(Self { role, cidrs })
    }
}

/// An org's policy, as `get_policy` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Idle time after which a staff session is logged off: [`MIN_IDLE_TIMEOUT_MS`] to
    /// [`MAX_IDLE_TIMEOUT_MS`].
    pub idle_timeout_ms: u64,
    /// How long a staff session lasts whatever the activity: `idle_timeout_ms` to
    /// [`MAX_SESSION_LIFETIME_MS`].
    pub session_lifetime_ms: u64,
    /// The allow-lists set, at most one per role; a role without one may connect from anywhere.
    pub allow_lists: Vec<RoleAllowList>,
    /// The consent text patients must accept, if the org has set one.
    pub consent_text: Option<ConsentText>,
}

impl Policy {
    pub(crate) fn to_pb(&self) -> pb::Policy {
        pb::Policy {
            idle_timeout_ms: self.idle_timeout_ms,
            session_lifetime_ms: self.session_lifetime_ms,
            allow_lists: self.allow_lists.iter().map(RoleAllowList::to_pb).collect(),
            consent_text: self
                .consent_text
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn from_pb(raw: pb::Policy) -> Result<Self, FieldError> {
        check_session_policy(raw.idle_timeout_ms, raw.session_lifetime_ms)?;
        let allow_lists = raw
            .allow_lists
            .into_iter()
            .map(|list| RoleAllowList::from_pb(list).within("allow_lists"))
            .collect::<Result<Vec<_>, _>>()?;
        unique("allow_lists", allow_lists.iter().map(|list| &list.role))?;
        Ok(Self {
            idle_timeout_ms: raw.idle_timeout_ms,
            session_lifetime_ms: raw.session_lifetime_ms,
            allow_lists,
            consent_text: optional_consent_text("consent_text", raw.consent_text)?,
        })
    }
}

/// The session rule: the idle timeout within its range, the lifetime at least the idle
/// timeout and at most [`MAX_SESSION_LIFETIME_MS`].
fn check_session_policy(idle_timeout_ms: u64, session_lifetime_ms: u64) -> Result<(), FieldError> {
    in_range(
        "idle_timeout_ms",
        idle_timeout_ms,
        MIN_IDLE_TIMEOUT_MS..=MAX_IDLE_TIMEOUT_MS,
    )?;
    in_range(
        "session_lifetime_ms",
        session_lifetime_ms,
        idle_timeout_ms..=MAX_SESSION_LIFETIME_MS,
    )?;
    Ok(())
}

/// A consent text field where empty means none.
pub(crate) fn optional_consent_text(
    name: &'static str,
    text: String,
) -> Result<Option<ConsentText>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    ConsentText::new(text)
        .map(Some)
        .map_err(|e| FieldError::new(name, e))
}

/// `set_session_policy`, checked by the session rule.
pub(crate) fn set_session_policy_from_pb(
    raw: pb::SetSessionPolicy,
) -> Result<ClientRequest, FieldError> {
    check_session_policy(raw.idle_timeout_ms, raw.session_lifetime_ms)?;
    Ok(ClientRequest::SetSessionPolicy {
        idle_timeout_ms: raw.idle_timeout_ms,
        session_lifetime_ms: raw.session_lifetime_ms,
    })
}

/// `set_allow_list`: the allow-list is required.
pub(crate) fn set_allow_list_from_pb(raw: pb::SetAllowList) -> Result<ClientRequest, FieldError> {
    let list = raw
        .allow_list
        .ok_or_else(|| FieldError::new("allow_list", FieldProblem::Missing))?;
    Ok(ClientRequest::SetAllowList(
        RoleAllowList::from_pb(list).within("allow_list")?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn allow_lists_allow_what_their_ranges_hold() {
        let list = RoleAllowList {
            role: Role::Staff,
            cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        };
        assert!(list.allows(&"10.2.3.4".parse().unwrap()));
        assert!(list.allows(&"::ffff:10.2.3.4".parse().unwrap()));
        assert!(list.allows(&"2001:db8::5".parse().unwrap()));
        assert!(!list.allows(&"192.0.2.1".parse().unwrap()));
        let open = RoleAllowList {
            role: Role::Admin,
            cidrs: Vec::new(),
        };
        assert!(open.allows(&"192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn allow_list_serde_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let list = RoleAllowList {
            role: Role::Staff,
            cidrs: vec!["10.0.0.0/8".parse()?],
        };
        let json = serde_json::to_string(&list)?;
        assert_eq!(json, r#"{"role":"Staff","cidrs":["10.0.0.0/8"]}"#);
        assert_eq!(serde_json::from_str::<RoleAllowList>(&json)?, list);
        let bin = postcard::to_allocvec(&list)?;
        assert_eq!(postcard::from_bytes::<RoleAllowList>(&bin)?, list);
        Ok(())
    }

    #[test]
    fn session_rule_edges() {
        let ok = |idle, life| check_session_policy(idle, life).is_ok();
        assert!(ok(MIN_IDLE_TIMEOUT_MS, MIN_IDLE_TIMEOUT_MS));
        assert!(ok(MAX_IDLE_TIMEOUT_MS, MAX_SESSION_LIFETIME_MS));
        assert!(ok(15 * 60_000, 12 * 3_600_000));
        assert!(!ok(MIN_IDLE_TIMEOUT_MS - 1, MAX_SESSION_LIFETIME_MS));
        assert!(!ok(MAX_IDLE_TIMEOUT_MS + 1, MAX_SESSION_LIFETIME_MS));
        assert!(!ok(60_000, 59_999));
        assert!(!ok(60_000, MAX_SESSION_LIFETIME_MS + 1));
        assert!(!ok(0, 0));
    }
}
