//! The console's requests from JSON, and answers to JSON: the page names a request kind and
//! passes its arguments as strings; every value goes through the protocol's validated types,
//! so a bad handle, CIDR or duration is refused here with the protocol's own message, before
//! anything is sent.

use std::str::FromStr;

use medrelay_proto::limits::{
    MAX_ACCESS_LOG_PAGE, MAX_ARCHIVE_DAYS, MAX_AUDIT_TEXT_LEN, MAX_MAIL_DAYS,
};
use medrelay_proto::{
    AccessLogFilter, Cidr, ClientRequest, ConsentText, ConversationId, DeviceId, DeviceLabel,
    Handle, InviteSpec, Password, Permission, Reason, RecoveryCode, Role, RoleAllowList,
    SecondFactor, ServerMessage, TeamId, TeamName, TotpCode, UserId, X25519PublicKey,
};
use medrelay_sdk::archive::archive_key_fingerprint;
use serde_json::{json, Value};

use crate::error::EngineError;

fn field<'a>(args: &'a Value, name: &str) -> Result<&'a str, EngineError> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| EngineError::Invalid(format!("{name} is missing")))
}

fn list<'a>(args: &'a Value, name: &str) -> Result<Vec<&'a str>, EngineError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| EngineError::Invalid(format!("{name} must list strings")))
            })
            .collect(),
        Some(_) => Err(EngineError::Invalid(format!("{name} must be a list"))),
    }
}

fn parse<T: FromStr>(name: &str, text: &str) -> Result<T, EngineError>
where
    T::Err: std::fmt::Display,
{
    T::from_str(text.trim()).map_err(|e| EngineError::Invalid(format!("{name} {e}")))
}

fn number(args: &Value, name: &str) -> Result<u64, EngineError> {
    match args.get(name) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| EngineError::Invalid(format!("{name} must be a whole number")))
}

/// A whole number of days in `1..=max`.
fn days(args: &Value, name: &str, max: u32) -> Result<u32, EngineError> {
    u32::try_from(number(args, name)?)
        .ok()
        .filter(|d| (1..=max).contains(d))
        .ok_or_else(|| EngineError::Invalid(format!("{name} must be between 1 and {max} days")))
}

/// An optional whole number: absent, null or blank is `None`.
fn optional_number(args: &Value, name: &str) -> Result<Option<u64>, EngineError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(_) => number(args, name).map(Some),
    }
}

/// An optional string: absent, null or blank is `None`.
fn optional_text<'a>(args: &'a Value, name: &str) -> Option<&'a str> {
    args.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Parses a role by its wire name (`PATIENT`, `STAFF`, `ADMIN`; any case).
pub fn parse_role(text: &str) -> Result<Role, EngineError> {
    match text.trim().to_ascii_uppercase().as_str() {
        "PATIENT" => Ok(Role::Patient),
        "STAFF" => Ok(Role::Staff),
        "ADMIN" => Ok(Role::Admin),
        _ => Err(EngineError::Invalid(
            "role must be patient, staff or admin".into(),
        )),
    }
}

/// A password under the protocol's rule (checked here, so a short one costs no attempt).
pub fn password(text: &str) -> Result<Password, EngineError> {
    Password::new(text).map_err(|e| EngineError::Invalid(format!("the password {e}")))
}

/// A second factor: six digits are a TOTP code, anything else a recovery code.
pub fn second_factor(code: &str) -> Result<SecondFactor, EngineError> {
    let code = code.trim();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(SecondFactor::Totp(TotpCode::new(code).map_err(|e| {
            EngineError::Invalid(format!("the code {e}"))
        })?))
    } else {
        Ok(SecondFactor::Recovery(RecoveryCode::new(code).map_err(
            |e| EngineError::Invalid(format!("the recovery code {e}")),
        )?))
    }
}

/// Builds one console request. `kind` is the request's wire name.
pub fn build(kind: &str, args: &Value) -> Result<ClientRequest, EngineError> {
    Ok(match kind {
        "whoami" => ClientRequest::WhoAmI,
        "logout" => ClientRequest::Logout,
        "list_users" => ClientRequest::ListUsers,
        "list_teams" => ClientRequest::ListTeams,
        "get_policy" => ClientRequest::GetPolicy,
        "create_invite" => {
            let role = parse_role(field(args, "role")?)?;
            let handle = Handle::new(field(args, "handle")?.trim())
                .map_err(|e| EngineError::Invalid(format!("handle {e}")))?;
            ClientRequest::CreateInvite(InviteSpec::NewUser { role, handle })
        }
        "create_device_invite" => ClientRequest::CreateInvite(InviteSpec::NewDevice),
        "list_devices" => {
            let user_id = match args.get("user_id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => Some(parse::<UserId>("user_id", id)?),
                _ => None,
            };
            ClientRequest::ListDevices { user_id }
        }
        "revoke_device" => ClientRequest::RevokeDevice {
            device_id: parse::<DeviceId>("device_id", field(args, "device_id")?)?,
        },
        "deactivate_user" => ClientRequest::DeactivateUser {
            user_id: parse::<UserId>("user_id", field(args, "user_id")?)?,
        },
        "set_permissions" => ClientRequest::SetPermissions {
            user_id: parse::<UserId>("user_id", field(args, "user_id")?)?,
            grants: list(args, "grants")?
                .into_iter()
                .map(|p| parse::<Permission>("permission", p))
                .collect::<Result<_, _>>()?,
        },
        "create_team" => ClientRequest::CreateTeam {
            name: TeamName::new(field(args, "name")?.trim())
                .map_err(|e| EngineError::Invalid(format!("team name {e}")))?,
        },
        "set_team_members" => ClientRequest::SetTeamMembers {
            team_id: parse::<TeamId>("team_id", field(args, "team_id")?)?,
            staff_user_ids: ids(args, "staff_user_ids")?,
        },
        "assign_care" => ClientRequest::AssignCare {
            patient_user_id: parse::<UserId>("patient_user_id", field(args, "patient_user_id")?)?,
            staff_user_ids: ids(args, "staff_user_ids")?,
            team_ids: list(args, "team_ids")?
                .into_iter()
                .map(|t| parse::<TeamId>("team_id", t))
                .collect::<Result<_, _>>()?,
        },
        "set_session_policy" => ClientRequest::SetSessionPolicy {
            idle_timeout_ms: number(args, "idle_timeout_ms")?,
            session_lifetime_ms: number(args, "session_lifetime_ms")?,
        },
        "set_allow_list" => ClientRequest::SetAllowList(RoleAllowList {
            role: parse_role(field(args, "role")?)?,
            cidrs: list(args, "cidrs")?
                .into_iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| parse::<Cidr>("CIDR", c))
                .collect::<Result<_, _>>()?,
        }),
        "set_consent_text" => ClientRequest::SetConsentText {
            text: ConsentText::new(field(args, "text")?)
                .map_err(|e| EngineError::Invalid(format!("consent text {e}")))?,
        },
        "grant_break_glass" => ClientRequest::GrantBreakGlass {
            staff_user_id: parse::<UserId>("staff_user_id", field(args, "staff_user_id")?)?,
            patient_user_id: parse::<UserId>("patient_user_id", field(args, "patient_user_id")?)?,
            reason: Reason::new(field(args, "reason")?.trim())
                .map_err(|e| EngineError::Invalid(format!("reason {e}")))?,
            duration_ms: number(args, "duration_ms")?,
        },
        "get_retention" => ClientRequest::GetRetention,
        "set_retention" => ClientRequest::SetRetention {
            mail_days: days(args, "mail_days", MAX_MAIL_DAYS)?,
            archive_days: days(args, "archive_days", MAX_ARCHIVE_DAYS)?,
        },
        "set_hold" => ClientRequest::SetHold {
            conversation_id: optional_text(args, "conversation_id")
                .map(|c| parse::<ConversationId>("conversation_id", c))
                .transpose()?,
            held: args
                .get("held")
                .and_then(Value::as_bool)
                .ok_or_else(|| EngineError::Invalid("held must be true or false".into()))?,
        },
        "set_archive_key" => ClientRequest::SetArchiveKey {
            public_key: optional_text(args, "public_key")
                .map(|k| parse::<X25519PublicKey>("the archive public key", k))
                .transpose()?,
        },
        "run_sweep" => ClientRequest::RunSweep,
        "verify_access_log" => ClientRequest::VerifyAccessLog,
        "export_access_log" => {
            let action = optional_text(args, "action").map(str::to_owned);
            if action
                .as_ref()
                .is_some_and(|a| a.len() > MAX_AUDIT_TEXT_LEN)
            {
                return Err(EngineError::Invalid(format!(
                    "action must be at most {MAX_AUDIT_TEXT_LEN} bytes"
                )));
            }
            let limit = optional_number(args, "limit")?.unwrap_or(MAX_ACCESS_LOG_PAGE as u64);
            let limit = u32::try_from(limit)
                .ok()
                .filter(|l| (1..=MAX_ACCESS_LOG_PAGE as u32).contains(l))
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "limit must be between 1 and {MAX_ACCESS_LOG_PAGE}"
                    ))
                })?;
            ClientRequest::ExportAccessLog(AccessLogFilter {
                since_ms: optional_number(args, "since_ms")?.filter(|t| *t != 0),
                until_ms: optional_number(args, "until_ms")?.filter(|t| *t != 0),
                action,
                actor_user_id: optional_text(args, "actor_user_id")
                    .map(|u| parse::<UserId>("actor_user_id", u))
                    .transpose()?,
                after_seq: optional_number(args, "after_seq")?.unwrap_or(0),
                limit,
            })
        }
        "change_password" => ClientRequest::ChangePassword {
            current: password(field(args, "current")?)?,
            new: password(field(args, "new")?)?,
        },
        other => {
            return Err(EngineError::Invalid(format!(
                "this client does not know the request {other}"
            )))
        }
    })
}

fn ids(args: &Value, name: &str) -> Result<Vec<UserId>, EngineError> {
    list(args, name)?
        .into_iter()
        .map(|u| parse::<UserId>(name, u))
        .collect()
}

/// An answer as JSON for the page. Secrets (`credentials_setup`) are handled by the engine,
/// not here; a device label is a device's name, not PHI.
pub fn answer(message: &ServerMessage) -> Value {
    match message {
        ServerMessage::Done => json!({}),
        ServerMessage::Identity(i) => json!({
            "org_id": i.org_id.to_string(), "user_id": i.user_id.to_string(),
            "device_id": i.device_id.to_string(), "role": i.role.as_str(),
            "handle": i.handle.as_str(), "org_name": i.org_name,
        }),
        ServerMessage::InviteCreated(invite) => json!({
            "code": invite.code.expose(), "expires_at_ms": invite.expires_at_ms,
        }),
        ServerMessage::UserList(users) => Value::Array(
            users
                .iter()
                .map(|u| {
                    json!({
                        "user_id": u.user_id.to_string(), "handle": u.handle.as_str(),
                        "role": u.role.as_str(), "active": u.active,
                        "permissions": u.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                        "consent": u.consent.as_str(),
                    })
                })
                .collect(),
        ),
        ServerMessage::DeviceList(devices) => Value::Array(
            devices
                .iter()
                .map(|d| {
                    json!({
                        "device_id": d.device_id.to_string(), "label": d.label.as_str(),
                        "created_ms": d.created_ms, "last_seen_ms": d.last_seen_ms,
                        "revoked": d.revoked,
                    })
                })
                .collect(),
        ),
        ServerMessage::Team(team) => team_json(team),
        ServerMessage::TeamList(teams) => Value::Array(teams.iter().map(team_json).collect()),
        ServerMessage::Policy(p) => json!({
            "idle_timeout_ms": p.idle_timeout_ms,
            "session_lifetime_ms": p.session_lifetime_ms,
            "allow_lists": p.allow_lists.iter().map(|l| json!({
                "role": l.role.as_str(),
                "cidrs": l.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "consent_text": p.consent_text.as_ref().map(ConsentText::as_str),
        }),
        ServerMessage::BreakGlassGranted { expires_at_ms } => {
            json!({ "expires_at_ms": expires_at_ms })
        }
        ServerMessage::Retention(r) => json!({
            "mail_days": r.mail_days,
            "archive_days": r.archive_days,
            "audit_days": r.audit_days,
            "legal_hold": r.legal_hold,
            "held_conversations": r.held_conversations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "archive_public_key": r.archive_public_key.map(|k| k.to_string()),
            "archive_key_fingerprint": r.archive_public_key.as_ref().map(archive_key_fingerprint),
        }),
        ServerMessage::SweepReport(report) => json!({
            "at_ms": report.at_ms,
            "envelopes_deleted": report.envelopes_deleted,
            "archive_items_deleted": report.archive_items_deleted,
            "access_log_entries_deleted": report.access_log_entries_deleted,
            "keys_shredded": report.keys_shredded,
            "kept_by_hold": report.kept_by_hold,
        }),
        ServerMessage::AccessLogStatus(status) => json!({
            "ok": status.broken.is_none(),
            "entries": status.entries,
            "checkpoints": status.checkpoints,
            "unsealed": status.unsealed,
            "broken_entry": status.broken.as_ref().map(|b| b.0),
            "reason": status.broken.as_ref().map(|b| b.1.clone()),
        }),
        ServerMessage::AccessLogPage(page) => json!({
            "entries": page.entries.iter().map(|e| json!({
                "seq": e.seq,
                "at_ms": e.at_ms,
                "user_id": e.user_id.map(|u| u.to_string()),
                "device_id": e.device_id.map(|d| d.to_string()),
                "role": e.role.map(Role::as_str),
                "action": e.action,
                "objects": e.objects,
                "outcome": e.outcome,
                "source": e.source,
                "hash": hex::encode(e.hash),
            })).collect::<Vec<_>>(),
            "done": page.done,
            "next_after_seq": page.next_after_seq,
        }),
        other => json!({ "answer": other.name() }),
    }
}

fn team_json(team: &medrelay_proto::Team) -> Value {
    json!({
        "team_id": team.team_id.to_string(), "name": team.name.as_str(),
        "staff_user_ids": team.staff_user_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// A device label for a browser enrolment (no PHI: it names the kind of device).
pub fn browser_label() -> DeviceLabel {
    DeviceLabel::new("web browser").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn builds_validated_requests_and_refuses_bad_input() {
        let r = build(
            "create_invite",
            &json!({"role": "staff", "handle": "dr.lee"}),
        )
        .unwrap();
        assert!(matches!(
            r,
            ClientRequest::CreateInvite(InviteSpec::NewUser {
                role: Role::Staff,
                ..
            })
        ));
        let e = build(
            "create_invite",
            &json!({"role": "staff", "handle": "Dr Lee"}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("handle must be"), "{e}");
        let r = build(
            "set_allow_list",
            &json!({"role": "STAFF", "cidrs": ["10.0.0.0/8", " ", "::1"]}),
        )
        .unwrap();
        let ClientRequest::SetAllowList(list) = r else {
            panic!()
        };
        assert_eq!(list.cidrs.len(), 2);
        assert!(build(
            "set_allow_list",
            &json!({"role": "STAFF", "cidrs": ["10.0.0.0/33"]})
        )
        .is_err());
        assert!(build(
            "set_session_policy",
            &json!({"idle_timeout_ms": "60000", "session_lifetime_ms": 3600000})
        )
        .is_ok());
        assert!(build("drop_tables", &json!({})).is_err());
    }

    #[test]
    fn builds_the_admin_policy_requests() {
        assert!(matches!(
            build(
                "set_retention",
                &json!({"mail_days": "7", "archive_days": 365})
            )
            .unwrap(),
            ClientRequest::SetRetention {
                mail_days: 7,
                archive_days: 365
            }
        ));
        assert!(build("set_retention", &json!({"mail_days": 0, "archive_days": 1})).is_err());
        assert!(build(
            "set_retention",
            &json!({"mail_days": 3651, "archive_days": 1})
        )
        .is_err());
        assert!(matches!(
            build("set_hold", &json!({"conversation_id": "", "held": true})).unwrap(),
            ClientRequest::SetHold {
                conversation_id: None,
                held: true
            }
        ));
        assert!(build("set_hold", &json!({"conversation_id": "zz", "held": true})).is_err());
        assert!(matches!(
            build("set_archive_key", &json!({"public_key": ""})).unwrap(),
            ClientRequest::SetArchiveKey { public_key: None }
        ));
        assert!(matches!(
            build("set_archive_key", &json!({"public_key": "ab".repeat(32)})).unwrap(),
            ClientRequest::SetArchiveKey {
                public_key: Some(_)
            }
        ));
        assert!(build("set_archive_key", &json!({"public_key": "abcd"})).is_err());
        let ClientRequest::ExportAccessLog(filter) = build(
            "export_access_log",
            &json!({"since_ms": "", "until_ms": 5, "action": "set_retention", "after_seq": 9}),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(filter.since_ms, None);
        assert_eq!(filter.until_ms, Some(5));
        assert_eq!(filter.action.as_deref(), Some("set_retention"));
        assert_eq!(filter.after_seq, 9);
        assert_eq!(filter.limit as usize, MAX_ACCESS_LOG_PAGE);
        assert!(build("export_access_log", &json!({"limit": 257})).is_err());
    }

    #[test]
    fn second_factor_tells_totp_from_recovery_codes() {
        assert!(matches!(
            second_factor("123456").unwrap(),
            SecondFactor::Totp(_)
        ));
        assert!(matches!(
            second_factor("abcd-efgh-1234").unwrap(),
            SecondFactor::Recovery(_)
        ));
        assert!(second_factor("12").is_err());
    }
}
