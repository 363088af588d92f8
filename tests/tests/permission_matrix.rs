//! Proves: every request kind, tried as every role, has exactly the outcome this table says:
//! allowed, or refused with a specific code. One fresh clinic per role, so one role's changes
//! cannot hide another's outcome.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{
    AckRequest, ClientMessageId, ClientRequest, ConsentText, ConversationId, FetchPrekeys, Handle,
    InviteSpec, ListConversations, MessageId, OneTimePrekey, OpenConversation, Password, Reason,
    Role, RoleAllowList, SecondFactor, SendRequest, ServerMessage, TeamName, TotpCode,
    UploadPrekeys, X25519PublicKey,
};
use medrelay_tests::{now_ms, password, RawClinic, RawDevice, Server, TEST_PASSWORD};

/// The expected outcome per role: "ok" or the error code's wire name.
/// Columns: patient, staff, admin.
const TABLE: &[(&str, [&str; 3])] = &[
    ("ping", ["ok", "ok", "ok"]),
    ("whoami", ["ok", "ok", "ok"]),
    (
        "enroll_again",
        ["UNEXPECTED_FRAME", "UNEXPECTED_FRAME", "UNEXPECTED_FRAME"],
    ),
    ("invite_patient", ["FORBIDDEN", "ok", "ok"]),
    ("invite_staff", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("invite_own_device", ["ok", "ok", "ok"]),
    ("upload_prekeys", ["ok", "ok", "ok"]),
    ("fetch_patient_prekeys", ["ok", "ok", "NOT_FOUND"]),
    ("open_care_conversation", ["ok", "ok", "FORBIDDEN"]),
    ("get_care_conversation", ["ok", "ok", "NOT_FOUND"]),
    ("list_conversations", ["ok", "ok", "ok"]),
    (
        "send_without_envelopes",
        ["DEVICES_MISMATCH", "DEVICES_MISMATCH", "NOT_FOUND"],
    ),
    ("ack", ["ok", "ok", "ok"]),
    (
        "setup_credentials_again",
        ["FORBIDDEN", "FORBIDDEN", "FORBIDDEN"],
    ),
    (
        "login_wrong_code",
        ["FORBIDDEN", "AUTH_FAILED", "AUTH_FAILED"],
    ),
    (
        "change_password_wrong",
        ["FORBIDDEN", "AUTH_FAILED", "AUTH_FAILED"],
    ),
    ("list_users", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("list_own_devices", ["ok", "ok", "ok"]),
    ("list_others_devices", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("revoke_others_device", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("set_permissions", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("create_team", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("set_team_members", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("list_teams", ["FORBIDDEN", "ok", "ok"]),
    ("assign_care", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("get_policy", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("set_session_policy", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("set_allow_list", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("set_consent_text", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("grant_break_glass", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("accept_consent", ["ok", "FORBIDDEN", "FORBIDDEN"]),
    ("withdraw_consent", ["ok", "FORBIDDEN", "FORBIDDEN"]),
    ("deactivate_user", ["FORBIDDEN", "FORBIDDEN", "ok"]),
    ("logout", ["ok", "ok", "ok"]),
];

/// What the requests refer to.
struct Targets {
    care_conversation: ConversationId,
    patient: medrelay_proto::UserId,
    staff: medrelay_proto::UserId,
    spare_user: medrelay_proto::UserId,
    spare_device: medrelay_proto::DeviceId,
    team: medrelay_proto::TeamId,
    consent_sha: [u8; 32],
    partner: &'static str,
}

fn request(
    name: &str,
    t: &Targets,
    device: &RawDevice,
    conn: &medrelay_tests::RawClient,
) -> ClientRequest {
    match name {
        "ping" => ClientRequest::Ping,
        "whoami" => ClientRequest::WhoAmI,
        "enroll_again" => device.enroll_request(conn, "0000-0000").unwrap(),
        "invite_patient" => ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Patient,
            handle: Handle::new("new.patient").unwrap(),
        }),
        "invite_staff" => ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Staff,
            handle: Handle::new("new.staff").unwrap(),
        }),
        "invite_own_device" => ClientRequest::CreateInvite(InviteSpec::NewDevice),
        "upload_prekeys" => ClientRequest::UploadPrekeys(UploadPrekeys {
            one_time_prekeys: vec![OneTimePrekey {
                id: 900_001,
                public_key: X25519PublicKey::from_array([9; 32]),
            }],
            signed_prekey: None,
            pq_prekey: None,
        }),
        "fetch_patient_prekeys" => ClientRequest::FetchPrekeys(FetchPrekeys {
            user_ids: vec![t.patient],
            devices: Vec::new(),
        }),
        "open_care_conversation" => ClientRequest::OpenConversation(OpenConversation {
            handles: vec![Handle::new(t.partner).unwrap()],
        }),
        "get_care_conversation" => ClientRequest::GetConversation {
            conversation_id: t.care_conversation,
        },
        "list_conversations" => ClientRequest::ListConversations(ListConversations { after: None }),
        "send_without_envelopes" => ClientRequest::Send(SendRequest {
            conversation_id: t.care_conversation,
            client_message_id: ClientMessageId::from_array([4; 16]),
            envelopes: Vec::new(),
            archive_item: None,
        }),
        "ack" => ClientRequest::Ack(AckRequest {
            message_ids: vec![MessageId::from_array([5; 16])],
        }),
        "setup_credentials_again" => ClientRequest::SetupCredentials {
            password: password(TEST_PASSWORD),
        },
        "login_wrong_code" => ClientRequest::Login {
            password: password(TEST_PASSWORD),
            second_factor: SecondFactor::Totp(TotpCode::new("000000").unwrap()),
        },
        "change_password_wrong" => ClientRequest::ChangePassword {
            current: Password::new("definitely not it").unwrap(),
            new: Password::new("a brand new password").unwrap(),
        },
        "list_users" => ClientRequest::ListUsers,
        "list_own_devices" => ClientRequest::ListDevices { user_id: None },
        "list_others_devices" => ClientRequest::ListDevices {
            user_id: Some(t.spare_user),
        },
        "revoke_others_device" => ClientRequest::RevokeDevice {
            device_id: t.spare_device,
        },
        "set_permissions" => ClientRequest::SetPermissions {
            user_id: t.staff,
            grants: Vec::new(),
        },
        "create_team" => ClientRequest::CreateTeam {
            name: TeamName::new("Injectables").unwrap(),
        },
        "set_team_members" => ClientRequest::SetTeamMembers {
            team_id: t.team,
            staff_user_ids: vec![t.staff],
        },
        "list_teams" => ClientRequest::ListTeams,
        "assign_care" => ClientRequest::AssignCare {
            patient_user_id: t.patient,
            staff_user_ids: vec![t.staff],
            team_ids: Vec::new(),
        },
        "get_policy" => ClientRequest::GetPolicy,
        "set_session_policy" => ClientRequest::SetSessionPolicy {
            idle_timeout_ms: 15 * 60 * 1000,
            session_lifetime_ms: 12 * 60 * 60 * 1000,
        },
        "set_allow_list" => ClientRequest::SetAllowList(RoleAllowList {
            role: Role::Patient,
            cidrs: Vec::new(),
        }),
        "set_consent_text" => ClientRequest::SetConsentText {
            text: ConsentText::new("We may message you about your care.").unwrap(),
        },
        "grant_break_glass" => ClientRequest::GrantBreakGlass {
            staff_user_id: t.spare_user,
            patient_user_id: t.patient,
            reason: Reason::new("covering a shift").unwrap(),
            duration_ms: 60_000,
        },
        "accept_consent" => ClientRequest::AcceptConsent {
            text_sha256: t.consent_sha,
        },
        "withdraw_consent" => ClientRequest::WithdrawConsent,
        "deactivate_user" => ClientRequest::DeactivateUser {
            user_id: t.spare_user,
        },
        "logout" => ClientRequest::Logout,
        other => panic!("no request for {other}"),
    }
}

fn outcome(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Error(e) => e.code.as_str().to_owned(),
        _ => "ok".to_owned(),
    }
}

async fn run_as(role: usize) -> Vec<String> {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let code = clinic
        .admin
        .conn
        .invite(Role::Staff, "spare")
        .await
        .unwrap();
    let mut spare = RawDevice::new();
    drop(spare.enroll(&server, &code).await.unwrap());
    let spare_user = match clinic
        .admin
        .conn
        .request(ClientRequest::ListUsers)
        .await
        .unwrap()
    {
        ServerMessage::UserList(users) => {
            users
                .iter()
                .find(|u| u.handle.as_str() == "spare")
                .unwrap()
                .user_id
        }
        other => panic!("{other:?}"),
    };
    let team = match clinic
        .admin
        .conn
        .request(ClientRequest::CreateTeam {
            name: TeamName::new("Laser").unwrap(),
        })
        .await
        .unwrap()
    {
        ServerMessage::Team(team) => team.team_id,
        other => panic!("{other:?}"),
    };
    let care_conversation = clinic.care_conversation().await.unwrap().id;
    let consent_sha = clinic
        .patient
        .conn
        .auth_ok
        .as_ref()
        .and_then(|ok| ok.consent_text.as_ref())
        .map(|t| t.sha256())
        .unwrap();
    let targets = Targets {
        care_conversation,
        patient: clinic.patient.user_id,
        staff: clinic.staff.user_id,
        spare_user,
        spare_device: spare.device_id.unwrap(),
        team,
        consent_sha,
        partner: if role == 0 { "dr.lee" } else { "alice" },
    };
    let person = match role {
        0 => &mut clinic.patient,
        1 => &mut clinic.staff,
        _ => &mut clinic.admin,
    };
    let mut mismatches = Vec::new();
    for (name, expected) in TABLE {
        let req = request(name, &targets, &person.device, &person.conn);
        let got = outcome(&person.conn.request(req).await.unwrap());
        let want = expected[role];
        if got != want {
            mismatches.push(format!(
                "{} {name}: expected {want}, got {got}",
                ["patient", "staff", "admin"][role]
            ));
        }
    }
    mismatches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_as_every_role_matches_the_table() {
    let mut mismatches = Vec::new();
    for role in 0..3 {
        mismatches.extend(run_as(role).await);
    }
    assert!(
        mismatches.is_empty(),
        "permission matrix mismatches:\n{}",
        mismatches.join("\n")
    );
    // The table covers every request kind a client can send once authenticated.
    let kinds: std::collections::BTreeSet<&str> = [
        "ping",
        "whoami",
        "enroll",
        "create_invite",
        "upload_prekeys",
        "fetch_prekeys",
        "open_conversation",
        "get_conversation",
        "list_conversations",
        "send",
        "ack",
        "setup_credentials",
        "login",
        "logout",
        "change_password",
        "list_users",
        "list_devices",
        "revoke_device",
        "deactivate_user",
        "set_permissions",
        "create_team",
        "set_team_members",
        "list_teams",
        "assign_care",
        "get_policy",
        "set_session_policy",
        "set_allow_list",
        "set_consent_text",
        "accept_consent",
        "withdraw_consent",
        "grant_break_glass",
    ]
    .into_iter()
    .collect();
    let dummy = Targets {
        care_conversation: ConversationId::from_array([0; 16]),
        patient: medrelay_proto::UserId::from_array([0; 16]),
        staff: medrelay_proto::UserId::from_array([0; 16]),
        spare_user: medrelay_proto::UserId::from_array([0; 16]),
        spare_device: medrelay_proto::DeviceId::from_array([0; 16]),
        team: medrelay_proto::TeamId::from_array([0; 16]),
        consent_sha: [0; 32],
        partner: "alice",
    };
    let server = Server::start().unwrap();
    let conn = medrelay_tests::RawClient::connect(&server).await.unwrap();
    let device = RawDevice::new();
    let covered: std::collections::BTreeSet<&str> = TABLE
        .iter()
        .map(|(name, _)| request(name, &dummy, &device, &conn).name())
        .collect();
    assert_eq!(covered, kinds);
}
