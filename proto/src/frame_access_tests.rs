//! Tests of the access-control frames: every validation rule with its exact field path and
//! error code, the login's second-factor exclusivity, redaction of secrets and reasons in
//! `Debug` and in error messages, and unknown-field tolerance inside the new bodies. Round
//! trips of every kind are in `frame_tests.rs`, over the shared fixtures.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use prost::Message;

use super::*;
use crate::limits::*;
use crate::pb::{client_frame::Body as C, server_frame::Body as S};
use crate::testing::*;
use crate::{FieldProblem, ProtoError, RecoveryCode, Role};

fn b(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

/// `n` distinct 16-byte ids.
fn ids(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            b(&id)
        })
        .collect()
}

/// The refused field's path, problem and wire code, for a client body.
fn refused(body: C) -> (String, FieldProblem, ErrorCode) {
    let e = decode_client_frame(&raw_client(body)).expect_err("frame must be refused");
    match &e {
        FrameError::InvalidField { field, problem, .. } => (field.to_string(), *problem, e.code()),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

/// The same for a server body, answering request 1.
fn refused_server(body: S) -> (String, FieldProblem, ErrorCode) {
    let e = decode_server_frame(&raw_server(1, body)).expect_err("frame must be refused");
    match &e {
        FrameError::InvalidField { field, problem, .. } => (field.to_string(), *problem, e.code()),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

/// Decodes a client body that must be accepted.
fn accepted(body: C) -> ClientRequest {
    decode_client_frame(&raw_client(body))
        .expect("frame must be accepted")
        .request
}

fn malformed(field: &str, problem: FieldProblem) -> (String, FieldProblem, ErrorCode) {
    (field.to_owned(), problem, ErrorCode::Malformed)
}

fn invalid(field: &str, error: ProtoError) -> (String, FieldProblem, ErrorCode) {
    malformed(field, FieldProblem::Invalid(error))
}

fn too_many(field: &str, max: usize, actual: usize) -> (String, FieldProblem, ErrorCode) {
    (
        field.to_owned(),
        FieldProblem::TooMany { max, actual },
        ErrorCode::LimitExceeded,
    )
}

const PASSWORD: &str = "correct horse battery staple";
const PASSWORD_LEN: ProtoError = ProtoError::CharacterCount {
    min: MIN_PASSWORD_LEN,
    max: MAX_PASSWORD_LEN,
};

fn raw_login() -> pb::Login {
    pb::Login {
        password: PASSWORD.into(),
        totp_code: "123456".into(),
        recovery_code: String::new(),
    }
}

// ------------------------------------------------------------------ credentials and login

#[test]
fn setup_credentials_refusals() {
    let setup = |password: &str| {
        C::SetupCredentials(pb::SetupCredentials {
            password: password.into(),
        })
    };
    assert_eq!(
        refused(setup("")),
        malformed("setup_credentials.password", FieldProblem::Missing)
    );
    assert_eq!(
        refused(setup(&"x".repeat(MIN_PASSWORD_LEN - 1))),
        invalid("setup_credentials.password", PASSWORD_LEN)
    );
    assert_eq!(
        refused(setup(&"x".repeat(MAX_PASSWORD_LEN + 1))),
        invalid("setup_credentials.password", PASSWORD_LEN)
    );
    assert!(matches!(
        accepted(setup(&"x".repeat(MIN_PASSWORD_LEN))),
        ClientRequest::SetupCredentials { .. }
    ));
}

#[test]
fn login_takes_exactly_one_second_factor() {
    let ClientRequest::Login {
        password,
        second_factor,
    } = accepted(C::Login(raw_login()))
    else {
        panic!("expected a login");
    };
    assert_eq!(password.expose(), PASSWORD);
    assert!(matches!(&second_factor, SecondFactor::Totp(code) if code.expose() == "123456"));

    let with_recovery = pb::Login {
        totp_code: String::new(),
        recovery_code: "ABCD-efgh-2345".into(),
        ..raw_login()
    };
    let ClientRequest::Login { second_factor, .. } = accepted(C::Login(with_recovery)) else {
        panic!("expected a login");
    };
    assert_eq!(
        second_factor,
        SecondFactor::Recovery(RecoveryCode::new("abcd-efgh-2345").unwrap()),
        "recovery codes are lowered on decode"
    );

    let neither = pb::Login {
        totp_code: String::new(),
        ..raw_login()
    };
    assert_eq!(
        refused(C::Login(neither)),
        malformed("login.totp_code", FieldProblem::Missing)
    );

    let both = pb::Login {
        recovery_code: "abcd-efgh-2345".into(),
        ..raw_login()
    };
    let e = decode_client_frame(&raw_client(C::Login(both))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Malformed);
    assert_eq!(
        e.message(),
        "login.recovery_code must not be set together with totp_code"
    );
}

#[test]
fn login_refusals() {
    let cases = [
        (
            pb::Login {
                password: String::new(),
                ..raw_login()
            },
            malformed("login.password", FieldProblem::Missing),
        ),
        (
            pb::Login {
                password: "short".into(),
                ..raw_login()
            },
            invalid("login.password", PASSWORD_LEN),
        ),
        (
            pb::Login {
                totp_code: "12345".into(),
                ..raw_login()
            },
            invalid("login.totp_code", ProtoError::InvalidTotpCode),
        ),
        (
            pb::Login {
                totp_code: "12 456".into(),
                ..raw_login()
            },
            invalid("login.totp_code", ProtoError::InvalidTotpCode),
        ),
        (
            pb::Login {
                totp_code: String::new(),
                recovery_code: "abcd efgh".into(),
                ..raw_login()
            },
            invalid("login.recovery_code", ProtoError::InvalidCharacters),
        ),
        (
            pb::Login {
                totp_code: String::new(),
                recovery_code: "abc-123".into(),
                ..raw_login()
            },
            invalid(
                "login.recovery_code",
                ProtoError::CharacterCount {
                    min: MIN_RECOVERY_CODE_LEN,
                    max: MAX_RECOVERY_CODE_LEN,
                },
            ),
        ),
    ];
    for (raw, expected) in cases {
        assert_eq!(refused(C::Login(raw)), expected);
    }
}

#[test]
fn change_password_refusals() {
    let raw = pb::ChangePassword {
        current_password: PASSWORD.into(),
        new_password: "another long passphrase".into(),
    };
    assert!(matches!(
        accepted(C::ChangePassword(raw.clone())),
        ClientRequest::ChangePassword { .. }
    ));
    assert_eq!(
        refused(C::ChangePassword(pb::ChangePassword {
            current_password: String::new(),
            ..raw.clone()
        })),
        malformed("change_password.current_password", FieldProblem::Missing)
    );
    assert_eq!(
        refused(C::ChangePassword(pb::ChangePassword {
            new_password: "too short".into(),
            ..raw
        })),
        invalid("change_password.new_password", PASSWORD_LEN)
    );
}

/// A refused secret is never echoed, and neither is its length.
#[test]
fn refusals_and_debug_never_show_secrets() {
    let e = decode_client_frame(&raw_client(C::Login(pb::Login {
        password: "hunter2".into(),
        totp_code: "987654".into(),
        recovery_code: String::new(),
    })))
    .unwrap_err();
    let shown = format!("{e} {e:?} {}", e.to_wire_error().message);
    for leak in ["hunter2", "987654", "7 char"] {
        assert!(!shown.contains(leak), "{shown}");
    }

    let frame = decode_client_frame(&raw_client(C::Login(raw_login()))).unwrap();
    let debug = format!("{frame:?} {frame:#?}");
    assert!(!debug.contains("horse"), "{debug}");
    assert!(!debug.contains("123456"), "{debug}");
    assert!(debug.contains("Password(<redacted>)"), "{debug}");

    let setup = every_server_frame()
        .into_iter()
        .find(|f| matches!(f.message, ServerMessage::CredentialsSetup(_)))
        .unwrap();
    let debug = format!("{setup:?}");
    assert!(!debug.contains("JBSWY"), "{debug}");
    assert!(!debug.contains("abcd-efgh"), "{debug}");

    let grant = C::GrantBreakGlass(pb::GrantBreakGlass {
        staff_user_id: b(&[1; 16]),
        patient_user_id: b(&[2; 16]),
        reason: "Jane Doe unresponsive".into(),
        duration_ms: 1000,
    });
    let debug = format!("{:?}", accepted(grant));
    assert!(!debug.contains("Jane"), "{debug}");
    let e = decode_client_frame(&raw_client(C::GrantBreakGlass(pb::GrantBreakGlass {
        staff_user_id: b(&[1; 16]),
        patient_user_id: b(&[2; 16]),
        reason: "Jane Doe\nunresponsive".into(),
        duration_ms: 1000,
    })))
    .unwrap_err();
    assert!(!e.message().contains("Jane"), "{}", e.message());
}

// ------------------------------------------------------------------ users and devices

#[test]
fn user_and_device_refusals() {
    assert_eq!(
        accepted(C::ListDevices(pb::ListDevices { user_id: b(&[]) })),
        ClientRequest::ListDevices { user_id: None }
    );
    assert_eq!(
        refused(C::ListDevices(pb::ListDevices {
            user_id: b(&[1; 15])
        })),
        invalid(
            "list_devices.user_id",
            ProtoError::WrongLength {
                expected: 16,
                actual: 15
            }
        )
    );
    assert_eq!(
        refused(C::RevokeDevice(pb::RevokeDevice { device_id: b(&[]) })),
        malformed("revoke_device.device_id", FieldProblem::Missing)
    );
    assert_eq!(
        refused(C::DeactivateUser(pb::DeactivateUser { user_id: b(&[]) })),
        malformed("deactivate_user.user_id", FieldProblem::Missing)
    );
}

#[test]
fn set_permissions_refusals() {
    let raw = |user_id: Bytes, grants: Vec<i32>| {
        C::SetPermissions(pb::SetPermissions { user_id, grants })
    };
    let manage = pb::Permission::ManageStaff as i32;
    assert_eq!(
        accepted(raw(b(&[1; 16]), vec![manage])),
        ClientRequest::SetPermissions {
            user_id: [1; 16].into(),
            grants: vec![Permission::ManageStaff]
        }
    );
    assert_eq!(
        refused(raw(b(&[]), vec![manage])),
        malformed("set_permissions.user_id", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(b(&[1; 16]), vec![manage, 0])),
        malformed("set_permissions.grants", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(b(&[1; 16]), vec![99])),
        malformed("set_permissions.grants", FieldProblem::UnknownValue)
    );
    assert_eq!(
        refused(raw(b(&[1; 16]), vec![manage, manage])),
        malformed("set_permissions.grants", FieldProblem::Duplicate)
    );
}

// ------------------------------------------------------------------ care teams

#[test]
fn create_team_refusals() {
    let raw = |name: String| C::CreateTeam(pb::CreateTeam { name });
    assert_eq!(
        refused(raw(String::new())),
        malformed("create_team.name", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw("x".repeat(MAX_TEAM_NAME_LEN + 1))),
        invalid(
            "create_team.name",
            ProtoError::CharacterCount {
                min: 1,
                max: MAX_TEAM_NAME_LEN
            }
        )
    );
    assert_eq!(
        refused(raw("Night\tshift".into())),
        invalid("create_team.name", ProtoError::InvalidCharacters)
    );
    assert_eq!(
        refused(raw("   ".into())),
        invalid("create_team.name", ProtoError::Empty)
    );
}

#[test]
fn set_team_members_refusals() {
    let raw = |team_id: Bytes, staff_user_ids: Vec<Bytes>| {
        C::SetTeamMembers(pb::SetTeamMembers {
            team_id,
            staff_user_ids,
        })
    };
    assert!(matches!(
        accepted(raw(b(&[1; 16]), ids(MAX_TEAM_MEMBERS))),
        ClientRequest::SetTeamMembers { staff_user_ids, .. } if staff_user_ids.len() == MAX_TEAM_MEMBERS
    ));
    assert_eq!(
        refused(raw(b(&[]), ids(1))),
        malformed("set_team_members.team_id", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(b(&[1; 16]), ids(MAX_TEAM_MEMBERS + 1))),
        too_many("set_team_members.staff_user_ids", 64, 65)
    );
    let mut dup = ids(2);
    dup.push(dup[0].clone());
    assert_eq!(
        refused(raw(b(&[1; 16]), dup)),
        malformed("set_team_members.staff_user_ids", FieldProblem::Duplicate)
    );
    assert_eq!(
        refused(raw(b(&[1; 16]), vec![b(&[1; 16]), b(&[])])),
        malformed("set_team_members.staff_user_ids", FieldProblem::Missing)
    );
}

#[test]
fn assign_care_refusals() {
    let raw = |patient: Bytes, staff: Vec<Bytes>, teams: Vec<Bytes>| {
        C::AssignCare(pb::AssignCare {
            patient_user_id: patient,
            staff_user_ids: staff,
            team_ids: teams,
        })
    };
    assert!(matches!(
        accepted(raw(b(&[9; 16]), ids(MAX_MEMBERS - 1), ids(MAX_TEAMS_PER_PATIENT))),
        ClientRequest::AssignCare { staff_user_ids, team_ids, .. }
            if staff_user_ids.len() == 15 && team_ids.len() == 8
    ));
    assert_eq!(
        refused(raw(b(&[]), ids(1), ids(1))),
        malformed("assign_care.patient_user_id", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(b(&[9; 16]), ids(MAX_MEMBERS), vec![])),
        too_many("assign_care.staff_user_ids", MAX_MEMBERS - 1, MAX_MEMBERS)
    );
    assert_eq!(
        refused(raw(b(&[9; 16]), vec![], ids(MAX_TEAMS_PER_PATIENT + 1))),
        too_many("assign_care.team_ids", 8, 9)
    );
    assert_eq!(
        refused(raw(b(&[9; 16]), vec![b(&[1; 16]), b(&[1; 16])], vec![])),
        malformed("assign_care.staff_user_ids", FieldProblem::Duplicate)
    );
    assert_eq!(
        refused(raw(b(&[9; 16]), vec![], vec![b(&[1; 16]), b(&[1; 16])])),
        malformed("assign_care.team_ids", FieldProblem::Duplicate)
    );
    assert_eq!(
        refused(raw(b(&[9; 16]), vec![], vec![b(&[1; 3])])).0,
        "assign_care.team_ids"
    );
}

// ------------------------------------------------------------------ policy

#[test]
fn set_session_policy_refusals() {
    const HOUR: u64 = 3_600_000;
    let raw = |idle_timeout_ms, session_lifetime_ms| {
        C::SetSessionPolicy(pb::SetSessionPolicy {
            idle_timeout_ms,
            session_lifetime_ms,
        })
    };
    let idle_range = ProtoError::OutOfRange {
        min: MIN_IDLE_TIMEOUT_MS,
        max: MAX_IDLE_TIMEOUT_MS,
    };
    for (idle, lifetime) in [
        (MIN_IDLE_TIMEOUT_MS, MIN_IDLE_TIMEOUT_MS),
        (MAX_IDLE_TIMEOUT_MS, MAX_SESSION_LIFETIME_MS),
        (HOUR, HOUR),
    ] {
        assert_eq!(
            accepted(raw(idle, lifetime)),
            ClientRequest::SetSessionPolicy {
                idle_timeout_ms: idle,
                session_lifetime_ms: lifetime
            }
        );
    }
    assert_eq!(
        refused(raw(0, HOUR)),
        invalid("set_session_policy.idle_timeout_ms", idle_range)
    );
    assert_eq!(
        refused(raw(MIN_IDLE_TIMEOUT_MS - 1, HOUR)),
        invalid("set_session_policy.idle_timeout_ms", idle_range)
    );
    assert_eq!(
        refused(raw(MAX_IDLE_TIMEOUT_MS + 1, MAX_SESSION_LIFETIME_MS)),
        invalid("set_session_policy.idle_timeout_ms", idle_range)
    );
    assert_eq!(
        refused(raw(HOUR, HOUR - 1)),
        invalid(
            "set_session_policy.session_lifetime_ms",
            ProtoError::OutOfRange {
                min: HOUR,
                max: MAX_SESSION_LIFETIME_MS
            }
        )
    );
    let e = decode_client_frame(&raw_client(raw(HOUR, MAX_SESSION_LIFETIME_MS + 1))).unwrap_err();
    assert_eq!(
        e.message(),
        "set_session_policy.session_lifetime_ms must be between 3600000 and 604800000"
    );
}

fn raw_allow_list(role: Role, cidrs: &[&str]) -> pb::RoleAllowList {
    pb::RoleAllowList {
        role: role.to_pb(),
        cidrs: cidrs.iter().map(|&c| c.to_owned()).collect(),
    }
}

#[test]
fn set_allow_list_refusals() {
    let raw =
        |list: Option<pb::RoleAllowList>| C::SetAllowList(pb::SetAllowList { allow_list: list });
    let ClientRequest::SetAllowList(list) = accepted(raw(Some(raw_allow_list(
        Role::Staff,
        &["10.1.2.3/8", "::ffff:192.0.2.1"],
    )))) else {
        panic!("expected an allow list");
    };
    assert_eq!(list.role, Role::Staff);
    let shown: Vec<_> = list.cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.1/32"], "canonicalised");

    assert_eq!(
        refused(raw(None)),
        malformed("set_allow_list.allow_list", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(Some(pb::RoleAllowList {
            role: 0,
            ..raw_allow_list(Role::Staff, &[])
        }))),
        malformed("set_allow_list.allow_list.role", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(Some(raw_allow_list(Role::Staff, &["10.0.0.0/33"])))),
        invalid("set_allow_list.allow_list.cidrs", ProtoError::InvalidCidr)
    );
    assert_eq!(
        refused(raw(Some(raw_allow_list(Role::Staff, &["10.0.0.0/8", ""])))),
        malformed("set_allow_list.allow_list.cidrs", FieldProblem::Missing)
    );
    assert_eq!(
        refused(raw(Some(raw_allow_list(
            Role::Staff,
            &["10.0.0.0/8", "10.200.0.0/8"]
        )))),
        malformed("set_allow_list.allow_list.cidrs", FieldProblem::Duplicate)
    );
    let many: Vec<String> = (0..=MAX_ALLOW_LIST_CIDRS)
        .map(|i| format!("10.0.{i}.0/24"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        refused(raw(Some(raw_allow_list(Role::Admin, &many)))),
        too_many("set_allow_list.allow_list.cidrs", 64, 65)
    );
    assert!(matches!(
        accepted(raw(Some(raw_allow_list(Role::Admin, &many[..MAX_ALLOW_LIST_CIDRS])))),
        ClientRequest::SetAllowList(list) if list.cidrs.len() == 64
    ));
}

// ------------------------------------------------------------------ consent

#[test]
fn consent_refusals() {
    let set = |text: String| C::SetConsentText(pb::SetConsentText { text });
    assert_eq!(
        refused(set(String::new())),
        malformed("set_consent_text.text", FieldProblem::Missing)
    );
    assert_eq!(
        refused(set("x".repeat(MAX_CONSENT_TEXT_BYTES + 1))),
        (
            "set_consent_text.text".to_owned(),
            FieldProblem::Invalid(ProtoError::TooLong {
                max: MAX_CONSENT_TEXT_BYTES,
                actual: MAX_CONSENT_TEXT_BYTES + 1
            }),
            ErrorCode::TooLarge
        )
    );
    assert_eq!(
        refused(set("I agree\u{0}".into())),
        invalid("set_consent_text.text", ProtoError::InvalidCharacters)
    );

    let accept = |hash: &[u8]| {
        C::AcceptConsent(pb::AcceptConsent {
            text_sha256: b(hash),
        })
    };
    let hash = consent_text().sha256();
    assert_eq!(
        accepted(accept(&hash)),
        ClientRequest::AcceptConsent { text_sha256: hash }
    );
    assert_eq!(
        refused(accept(&[])),
        malformed("accept_consent.text_sha256", FieldProblem::Missing)
    );
    assert_eq!(
        refused(accept(&hash[..31])),
        invalid(
            "accept_consent.text_sha256",
            ProtoError::WrongLength {
                expected: 32,
                actual: 31
            }
        )
    );
}

// ------------------------------------------------------------------ break-glass

#[test]
fn grant_break_glass_refusals() {
    let good = pb::GrantBreakGlass {
        staff_user_id: b(&[1; 16]),
        patient_user_id: b(&[2; 16]),
        reason: "Urgent results, assigned nurse off shift".into(),
        duration_ms: MAX_BREAK_GLASS_MS,
    };
    assert!(matches!(
        accepted(C::GrantBreakGlass(good.clone())),
        ClientRequest::GrantBreakGlass {
            duration_ms: MAX_BREAK_GLASS_MS,
            ..
        }
    ));
    assert!(matches!(
        accepted(C::GrantBreakGlass(pb::GrantBreakGlass {
            duration_ms: 1,
            ..good.clone()
        })),
        ClientRequest::GrantBreakGlass { duration_ms: 1, .. }
    ));
    let duration = ProtoError::OutOfRange {
        min: 1,
        max: MAX_BREAK_GLASS_MS,
    };
    let cases = [
        (
            pb::GrantBreakGlass {
                staff_user_id: b(&[]),
                ..good.clone()
            },
            malformed("grant_break_glass.staff_user_id", FieldProblem::Missing),
        ),
        (
            pb::GrantBreakGlass {
                patient_user_id: b(&[2; 17]),
                ..good.clone()
            },
            invalid(
                "grant_break_glass.patient_user_id",
                ProtoError::WrongLength {
                    expected: 16,
                    actual: 17,
                },
            ),
        ),
        (
            pb::GrantBreakGlass {
                reason: String::new(),
                ..good.clone()
            },
            malformed("grant_break_glass.reason", FieldProblem::Missing),
        ),
        (
            pb::GrantBreakGlass {
                reason: "two\nlines".into(),
                ..good.clone()
            },
            invalid("grant_break_glass.reason", ProtoError::InvalidCharacters),
        ),
        (
            pb::GrantBreakGlass {
                reason: "x".repeat(MAX_REASON_LEN + 1),
                ..good.clone()
            },
            invalid(
                "grant_break_glass.reason",
                ProtoError::CharacterCount {
                    min: 1,
                    max: MAX_REASON_LEN,
                },
            ),
        ),
        (
            pb::GrantBreakGlass {
                duration_ms: 0,
                ..good.clone()
            },
            invalid("grant_break_glass.duration_ms", duration),
        ),
        (
            pb::GrantBreakGlass {
                duration_ms: MAX_BREAK_GLASS_MS + 1,
                ..good
            },
            invalid("grant_break_glass.duration_ms", duration),
        ),
    ];
    for (raw, expected) in cases {
        assert_eq!(refused(C::GrantBreakGlass(raw)), expected);
    }
}

// ------------------------------------------------------------------ server messages

fn fixture<T>(pick: impl Fn(ServerMessage) -> Option<T>) -> T {
    every_server_frame()
        .into_iter()
        .find_map(|f| pick(f.message))
        .expect("fixtures include it")
}

#[test]
fn auth_ok_consent_fields() {
    let patient = fixture(|m| match m {
        ServerMessage::AuthOk(a) if a.consent_required => Some(a.to_pb()),
        _ => None,
    });
    assert_eq!(
        refused_server(S::AuthOk(pb::AuthOk {
            consent_text: String::new(),
            ..patient.clone()
        })),
        malformed("auth_ok.consent_text", FieldProblem::Missing)
    );
    assert_eq!(
        refused_server(S::AuthOk(pb::AuthOk {
            consent_text: "\u{202E}".into(),
            ..patient.clone()
        })),
        invalid("auth_ok.consent_text", ProtoError::InvalidCharacters)
    );
    // A text without the requirement is accepted (e.g. shown for information).
    let ok = decode_server_frame(&raw_server(
        1,
        S::AuthOk(pb::AuthOk {
            consent_required: false,
            ..patient
        }),
    ))
    .unwrap();
    assert!(matches!(ok.message, ServerMessage::AuthOk(a) if a.consent_text.is_some()));
}

#[test]
fn member_consent_is_required() {
    let mut raw = conversation().to_pb();
    raw.members[1].consent = pb::ConsentState::Unspecified.into();
    assert_eq!(
        refused_server(S::Conversation(raw.clone())),
        malformed("conversation.members.consent", FieldProblem::Missing)
    );
    raw.members[1].consent = 42;
    assert_eq!(
        refused_server(S::Conversation(raw)),
        malformed("conversation.members.consent", FieldProblem::UnknownValue)
    );
}

#[test]
fn credentials_setup_refusals() {
    let good = pb::CredentialsSetup {
        totp_secret: "JBSWY3DPEHPK3PXP".into(),
        otpauth_uri: "otpauth://totp/x".into(),
        recovery_codes: vec!["abcd-efgh".into()],
    };
    assert_eq!(
        refused_server(S::CredentialsSetup(pb::CredentialsSetup {
            recovery_codes: vec![],
            ..good.clone()
        })),
        malformed("credentials_setup.recovery_codes", FieldProblem::Missing)
    );
    assert_eq!(
        refused_server(S::CredentialsSetup(pb::CredentialsSetup {
            recovery_codes: vec!["abcd-efgh".into(); MAX_RECOVERY_CODES + 1],
            ..good.clone()
        })),
        too_many("credentials_setup.recovery_codes", 16, 17)
    );
    assert_eq!(
        refused_server(S::CredentialsSetup(pb::CredentialsSetup {
            totp_secret: String::new(),
            ..good.clone()
        })),
        malformed("credentials_setup.totp_secret", FieldProblem::Missing)
    );
    assert_eq!(
        refused_server(S::CredentialsSetup(pb::CredentialsSetup {
            otpauth_uri: "x".repeat(MAX_SECRET_TEXT_BYTES + 1),
            ..good
        })),
        (
            "credentials_setup.otpauth_uri".to_owned(),
            FieldProblem::Invalid(ProtoError::TooLong {
                max: 4096,
                actual: 4097
            }),
            ErrorCode::TooLarge
        )
    );
}

#[test]
fn directory_refusals() {
    let user = fixture(|m| match m {
        ServerMessage::UserList(users) => users.first().map(UserInfo::to_pb),
        _ => None,
    });
    let list = |u: pb::UserInfo| S::UserList(pb::UserList { users: vec![u] });
    assert_eq!(
        refused_server(list(pb::UserInfo {
            permissions: vec![1, 1],
            ..user.clone()
        })),
        malformed("user_list.users.permissions", FieldProblem::Duplicate)
    );
    assert_eq!(
        refused_server(list(pb::UserInfo {
            consent: 0,
            ..user.clone()
        })),
        malformed("user_list.users.consent", FieldProblem::Missing)
    );
    assert_eq!(
        refused_server(list(pb::UserInfo {
            handle: "Jane Doe".into(),
            ..user
        })),
        invalid("user_list.users.handle", ProtoError::InvalidHandle)
    );

    let device = fixture(|m| match m {
        ServerMessage::DeviceList(devices) => devices.first().map(DeviceInfo::to_pb),
        _ => None,
    });
    let list = |d: pb::DeviceInfo| S::DeviceList(pb::DeviceList { devices: vec![d] });
    assert_eq!(
        refused_server(list(pb::DeviceInfo {
            device_id: b(&[]),
            ..device.clone()
        })),
        malformed("device_list.devices.device_id", FieldProblem::Missing)
    );
    assert_eq!(
        refused_server(list(pb::DeviceInfo {
            label: "x".repeat(MAX_DEVICE_LABEL_LEN + 1),
            ..device
        }))
        .0,
        "device_list.devices.label"
    );
}

#[test]
fn team_refusals() {
    let good = team().to_pb();
    assert_eq!(
        refused_server(S::Team(pb::Team {
            staff_user_ids: ids(MAX_TEAM_MEMBERS + 1),
            ..good.clone()
        })),
        too_many("team.staff_user_ids", 64, 65)
    );
    assert_eq!(
        refused_server(S::Team(pb::Team {
            name: String::new(),
            ..good.clone()
        })),
        malformed("team.name", FieldProblem::Missing)
    );
    assert_eq!(
        refused_server(S::TeamList(pb::TeamList {
            teams: vec![
                good.clone(),
                pb::Team {
                    team_id: b(&[1; 4]),
                    ..good
                }
            ]
        }))
        .0,
        "team_list.teams.team_id"
    );
}

#[test]
fn policy_refusals() {
    let good = fixture(|m| match m {
        ServerMessage::Policy(p) if p.consent_text.is_some() => Some(p.to_pb()),
        _ => None,
    });
    assert_eq!(
        refused_server(S::Policy(pb::Policy {
            idle_timeout_ms: 0,
            ..good.clone()
        }))
        .0,
        "policy.idle_timeout_ms"
    );
    assert_eq!(
        refused_server(S::Policy(pb::Policy {
            session_lifetime_ms: good.idle_timeout_ms - 1,
            ..good.clone()
        }))
        .0,
        "policy.session_lifetime_ms"
    );
    assert_eq!(
        refused_server(S::Policy(pb::Policy {
            allow_lists: vec![
                raw_allow_list(Role::Staff, &["10.0.0.0/8"]),
                raw_allow_list(Role::Staff, &[]),
            ],
            ..good.clone()
        })),
        malformed("policy.allow_lists", FieldProblem::Duplicate)
    );
    assert_eq!(
        refused_server(S::Policy(pb::Policy {
            allow_lists: vec![raw_allow_list(Role::Staff, &["10.0.0.0/8 "])],
            ..good.clone()
        })),
        invalid("policy.allow_lists.cidrs", ProtoError::InvalidCidr)
    );
    assert_eq!(
        refused_server(S::Policy(pb::Policy {
            consent_text: " ".into(),
            ..good
        })),
        invalid("policy.consent_text", ProtoError::Empty)
    );
}

#[test]
fn access_control_answers_need_a_request_id() {
    for body in [
        S::Done(pb::Done {}),
        S::LoginOk(pb::LoginOk::default()),
        S::BreakGlassGranted(pb::BreakGlassGranted { expires_at_ms: 1 }),
        S::TeamList(pb::TeamList::default()),
    ] {
        let e = decode_server_frame(&raw_server(0, body)).unwrap_err();
        assert!(
            matches!(e, FrameError::ResponseWithoutRequestId { .. }),
            "{e:?}"
        );
    }
    for frame in every_server_frame() {
        if !matches!(frame.message, ServerMessage::Error(_)) {
            assert_eq!(
                frame.message.is_push_only(),
                matches!(
                    frame.message.name(),
                    "challenge" | "delivery" | "prekeys_low"
                ),
                "{}",
                frame.message.name()
            );
        }
    }
}

// ------------------------------------------------------------------ unknown fields

/// Appends an unknown varint field 99 and an unknown length-delimited field 98.
fn with_unknown_fields(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.extend_from_slice(&[0x98, 0x06, 0x2a]);
    bytes.extend_from_slice(&[0x92, 0x06, 0x03, b'a', b'b', b'c']);
    bytes
}

/// Wraps an encoded body as client frame field `field` (version 1, request id 7).
fn client_frame_with_body(field: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x08, 0x01, 0x10, 0x07];
    prost::encoding::encode_key(
        field,
        prost::encoding::WireType::LengthDelimited,
        &mut bytes,
    );
    prost::encoding::encode_varint(body.len() as u64, &mut bytes);
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn unknown_fields_are_ignored_in_access_control_bodies() {
    // A login (field 31) and an allow list nested two levels down (field 45).
    let login = with_unknown_fields(raw_login().encode_to_vec());
    assert_eq!(
        decode_client_frame(&client_frame_with_body(31, &login)),
        decode_client_frame(&raw_client(C::Login(raw_login())))
    );

    let list = with_unknown_fields(raw_allow_list(Role::Staff, &["10.0.0.0/8"]).encode_to_vec());
    let mut set = Vec::new();
    prost::encoding::bytes::encode(1, &list, &mut set);
    let set = with_unknown_fields(set);
    let decoded = decode_client_frame(&client_frame_with_body(45, &set)).unwrap();
    assert_eq!(
        decoded.request,
        ClientRequest::SetAllowList(RoleAllowList {
            role: Role::Staff,
            cidrs: vec![cidr("10.0.0.0/8")]
        })
    );

    // An empty body kind with extra fields is still that kind.
    let logout = with_unknown_fields(Vec::new());
    assert_eq!(
        decode_client_frame(&client_frame_with_body(32, &logout)).map(|f| f.request),
        Ok(ClientRequest::Logout)
    );
}
