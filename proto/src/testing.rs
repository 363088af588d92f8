//! Test fixtures: one valid value of every request and message, proptest strategies, and raw
//! frame builders for deliberately malformed frames. Fixtures are known valid, so `expect`
//! here states a fact about the fixture, not about input.

#![allow(clippy::expect_used)]

use proptest::collection::vec;
use proptest::prelude::*;

use crate::pb::{self, client_frame, server_frame};
use crate::*;

/// A valid signed X25519 prekey.
pub(crate) fn signed_prekey(id: u32) -> SignedPrekey {
    SignedPrekey {
        id,
        public_key: X25519PublicKey::from([0x21; 32]),
        signature: Signature::from([0x22; 64]),
    }
}

/// A valid ML-KEM prekey.
pub(crate) fn pq_prekey(id: u32) -> PqSignedPrekey {
    PqSignedPrekey {
        id,
        public_key: MlKemPublicKey::from([0x23; 1184]),
        signature: Signature::from([0x24; 64]),
    }
}

/// Valid identity keys.
pub(crate) fn identity_keys() -> IdentityKeys {
    IdentityKeys {
        signing_key: Ed25519PublicKey::from([0x11; 32]),
        dh_key: X25519PublicKey::from([0x12; 32]),
        dh_signature: Signature::from([0x13; 64]),
    }
}

/// `n` one-time prekeys with ids 0..n.
pub(crate) fn one_time_prekeys(n: u32) -> Vec<OneTimePrekey> {
    (0..n)
        .map(|id| OneTimePrekey {
            id,
            public_key: X25519PublicKey::from([0x31; 32]),
        })
        .collect()
}

/// Valid device keys with `n` one-time prekeys.
pub(crate) fn device_keys(n: u32) -> DeviceKeys {
    DeviceKeys {
        identity: identity_keys(),
        signed_prekey: signed_prekey(1),
        pq_prekey: pq_prekey(2),
        one_time_prekeys: one_time_prekeys(n),
    }
}

/// A handle known to be valid.
pub(crate) fn handle(text: &str) -> Handle {
    Handle::new(text).expect("fixture handle is valid")
}

/// A valid conversation with two members.
pub(crate) fn conversation() -> Conversation {
    Conversation {
        id: ConversationId::from([0x41; 16]),
        members: vec![
            Member {
                user_id: UserId::from([0x42; 16]),
                handle: handle("dr.lee"),
                role: Role::Staff,
                devices: vec![DeviceId::from([0x43; 16]), DeviceId::from([0x44; 16])],
                consent: ConsentState::NotApplicable,
            },
            Member {
                user_id: UserId::from([0x45; 16]),
                handle: handle("pat_1"),
                role: Role::Patient,
                devices: vec![DeviceId::from([0x46; 16])],
                consent: ConsentState::Accepted,
            },
        ],
    }
}

/// A password known to be valid.
pub(crate) fn password(text: &str) -> Password {
    Password::new(text).expect("fixture password is valid")
}

/// A consent text known to be valid.
pub(crate) fn consent_text() -> ConsentText {
    ConsentText::new("I agree to receive messages from the clinic.\nI may withdraw at any time.")
        .expect("fixture consent text is valid")
}

/// A CIDR known to be valid.
pub(crate) fn cidr(text: &str) -> Cidr {
    text.parse().expect("fixture CIDR is valid")
}

/// A valid care team with two staff.
pub(crate) fn team() -> Team {
    Team {
        team_id: TeamId::from([0x81; 16]),
        name: TeamName::new("Cardiology nights").expect("fixture team name is valid"),
        staff_user_ids: vec![UserId::from([0x82; 16]), UserId::from([0x83; 16])],
    }
}

/// One valid value of every client request, each body kind at least once.
pub(crate) fn every_client_request() -> Vec<ClientRequest> {
    let origin = Origin::new("https://clinic.example:8443").expect("fixture origin is valid");
    vec![
        ClientRequest::Enroll(Box::new(EnrollRequest {
            invite_code: InviteCode::new("ABC-def_123").expect("fixture code is valid"),
            keys: device_keys(3),
            binding: ChannelBinding::TlsExporter,
            signature: Signature::from([0x51; 64]),
            device_label: DeviceLabel::new("front desk").unwrap_or_default(),
        })),
        ClientRequest::Enroll(Box::new(EnrollRequest {
            invite_code: InviteCode::new("x").expect("fixture code is valid"),
            keys: device_keys(0),
            binding: ChannelBinding::Origin(origin.clone()),
            signature: Signature::from([0x52; 64]),
            device_label: DeviceLabel::default(),
        })),
        ClientRequest::Auth(AuthProof {
            device_id: DeviceId::from([0x53; 16]),
            binding: ChannelBinding::TlsExporter,
            signature: Signature::from([0x54; 64]),
        }),
        ClientRequest::Auth(AuthProof {
            device_id: DeviceId::from([0x53; 16]),
            binding: ChannelBinding::Origin(origin),
            signature: Signature::from([0x54; 64]),
        }),
        ClientRequest::UploadPrekeys(UploadPrekeys {
            one_time_prekeys: one_time_prekeys(100),
            signed_prekey: None,
            pq_prekey: None,
        }),
        ClientRequest::UploadPrekeys(UploadPrekeys {
            one_time_prekeys: Vec::new(),
            signed_prekey: Some(signed_prekey(9)),
            pq_prekey: Some(pq_prekey(10)),
        }),
        ClientRequest::FetchPrekeys(FetchPrekeys {
            user_ids: vec![UserId::from([0x55; 16]), UserId::from([0x56; 16])],
            devices: vec![DeviceId::from([0x57; 16])],
        }),
        ClientRequest::Send(SendRequest {
            conversation_id: ConversationId::from([0x58; 16]),
            client_message_id: ClientMessageId::from([0x59; 16]),
            envelopes: vec![
                Envelope {
                    recipient_device: DeviceId::from([0x5a; 16]),
                    ciphertext: Bytes::from_static(b"ciphertext one"),
                },
                Envelope {
                    recipient_device: DeviceId::from([0x5b; 16]),
                    ciphertext: Bytes::from(vec![7; 1000]),
                },
            ],
            archive_item: Some(Bytes::from_static(b"sealed")),
        }),
        ClientRequest::Send(SendRequest {
            conversation_id: ConversationId::from([0x58; 16]),
            client_message_id: ClientMessageId::from([0x59; 16]),
            envelopes: Vec::new(),
            archive_item: None,
        }),
        ClientRequest::Ack(AckRequest {
            message_ids: vec![MessageId::from([0x5c; 16])],
        }),
        ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Admin,
            handle: handle("new.admin"),
        }),
        ClientRequest::CreateInvite(InviteSpec::NewDevice),
        ClientRequest::OpenConversation(OpenConversation {
            handles: vec![handle("dr.lee"), handle("nurse-kim")],
        }),
        ClientRequest::GetConversation {
            conversation_id: ConversationId::from([0x5d; 16]),
        },
        ClientRequest::ListConversations(ListConversations { after: None }),
        ClientRequest::ListConversations(ListConversations {
            after: Some(ConversationId::from([0x5e; 16])),
        }),
        ClientRequest::WhoAmI,
        ClientRequest::Ping,
        ClientRequest::SetupCredentials {
            password: password("correct horse battery staple"),
        },
        ClientRequest::Login {
            password: password("correct horse battery staple"),
            second_factor: SecondFactor::Totp(
                TotpCode::new("012345").expect("fixture code is valid"),
            ),
        },
        ClientRequest::Login {
            password: password("pässwörd-ünïcödé"),
            second_factor: SecondFactor::Recovery(
                RecoveryCode::new("abcd-efgh-2345").expect("fixture code is valid"),
            ),
        },
        ClientRequest::Logout,
        ClientRequest::ChangePassword {
            current: password("correct horse battery staple"),
            new: password("another long passphrase"),
        },
        ClientRequest::ListUsers,
        ClientRequest::ListDevices { user_id: None },
        ClientRequest::ListDevices {
            user_id: Some(UserId::from([0x84; 16])),
        },
        ClientRequest::RevokeDevice {
            device_id: DeviceId::from([0x85; 16]),
        },
        ClientRequest::DeactivateUser {
            user_id: UserId::from([0x86; 16]),
        },
        ClientRequest::SetPermissions {
            user_id: UserId::from([0x87; 16]),
            grants: Permission::ALL.to_vec(),
        },
        ClientRequest::SetPermissions {
            user_id: UserId::from([0x87; 16]),
            grants: Vec::new(),
        },
        ClientRequest::CreateTeam { name: team().name },
        ClientRequest::SetTeamMembers {
            team_id: TeamId::from([0x88; 16]),
            staff_user_ids: vec![UserId::from([0x89; 16]), UserId::from([0x8a; 16])],
        },
        ClientRequest::SetTeamMembers {
            team_id: TeamId::from([0x88; 16]),
            staff_user_ids: Vec::new(),
        },
        ClientRequest::ListTeams,
        ClientRequest::AssignCare {
            patient_user_id: UserId::from([0x8b; 16]),
            staff_user_ids: vec![UserId::from([0x8c; 16])],
            team_ids: vec![TeamId::from([0x8d; 16]), TeamId::from([0x8e; 16])],
        },
        ClientRequest::AssignCare {
            patient_user_id: UserId::from([0x8b; 16]),
            staff_user_ids: Vec::new(),
            team_ids: Vec::new(),
        },
        ClientRequest::GetPolicy,
        ClientRequest::SetSessionPolicy {
            idle_timeout_ms: 15 * 60 * 1000,
            session_lifetime_ms: 12 * 60 * 60 * 1000,
        },
        ClientRequest::SetAllowList(RoleAllowList {
            role: Role::Staff,
            cidrs: vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32"), cidr("192.0.2.7")],
        }),
        ClientRequest::SetAllowList(RoleAllowList {
            role: Role::Admin,
            cidrs: Vec::new(),
        }),
        ClientRequest::SetConsentText {
            text: consent_text(),
        },
        ClientRequest::AcceptConsent {
            text_sha256: consent_text().sha256(),
        },
        ClientRequest::WithdrawConsent,
        ClientRequest::GrantBreakGlass {
            staff_user_id: UserId::from([0x8f; 16]),
            patient_user_id: UserId::from([0x90; 16]),
            reason: Reason::new("Assigned nurse unreachable; urgent results")
                .expect("fixture reason is valid"),
            duration_ms: 4 * 60 * 60 * 1000,
        },
        ClientRequest::GetRetention,
        ClientRequest::SetRetention {
            mail_days: 30,
            archive_days: 2_190,
        },
        ClientRequest::SetHold {
            conversation_id: Some(ConversationId::from([0x91; 16])),
            held: true,
        },
        ClientRequest::SetHold {
            conversation_id: None,
            held: false,
        },
        ClientRequest::SetArchiveKey {
            public_key: Some(X25519PublicKey::from([0x92; 32])),
        },
        ClientRequest::SetArchiveKey { public_key: None },
        ClientRequest::ExportArchive {
            since_ms: 1_700_000_000_000,
            after_seq: 12,
            limit: 64,
        },
        ClientRequest::RunSweep,
        ClientRequest::VerifyAccessLog,
        ClientRequest::ExportAccessLog(AccessLogFilter {
            since_ms: Some(1),
            until_ms: Some(2),
            action: Some("send".to_owned()),
            actor_user_id: Some(UserId::from([0x93; 16])),
            after_seq: 5,
            limit: 256,
        }),
        ClientRequest::ExportAccessLog(AccessLogFilter {
            limit: 1,
            ..AccessLogFilter::default()
        }),
    ]
}

/// One valid prekey bundle, with or without a one-time prekey.
pub(crate) fn prekey_bundle(with_one_time: bool) -> PrekeyBundle {
    PrekeyBundle {
        user_id: UserId::from([0x61; 16]),
        device_id: DeviceId::from([0x62; 16]),
        identity: identity_keys(),
        signed_prekey: signed_prekey(3),
        pq_prekey: pq_prekey(4),
        one_time_prekey: with_one_time.then_some(OneTimePrekey {
            id: 5,
            public_key: X25519PublicKey::from([0x63; 32]),
        }),
    }
}

/// One valid frame of every server message kind, pushes with request id 0.
pub(crate) fn every_server_frame() -> Vec<ServerFrame> {
    let reply = |m| ServerFrame::reply(42, m);
    vec![
        reply(ServerMessage::Error(WireError::new(
            ErrorCode::Forbidden,
            "you may not do that",
        ))),
        ServerFrame::push(ServerMessage::Error(WireError::new(
            ErrorCode::LoggedOff,
            "session ended",
        ))),
        reply(ServerMessage::Error(
            WireError::devices_mismatch(
                vec![DeviceId::from([1; 16])],
                vec![DeviceId::from([2; 16]), DeviceId::from([3; 16])],
            )
            .with_retry_after(0),
        )),
        reply(ServerMessage::Error(
            WireError::new(ErrorCode::RateLimited, "slow down").with_retry_after(1500),
        )),
        ServerFrame::push(ServerMessage::Challenge(Challenge {
            nonce: [0x71; 32],
            server_time_ms: 1_700_000_000_000,
        })),
        reply(ServerMessage::AuthOk(AuthOk {
            org_id: OrgId::from([0x72; 16]),
            user_id: UserId::from([0x73; 16]),
            device_id: DeviceId::from([0x74; 16]),
            role: Role::Patient,
            handle: handle("pat_1"),
            one_time_prekeys_remaining: 17,
            archive_public_key: Some(X25519PublicKey::from([0x75; 32])),
            credentials_required: false,
            login_required: false,
            consent_required: true,
            consent_text: Some(consent_text()),
        })),
        reply(ServerMessage::AuthOk(AuthOk {
            org_id: OrgId::from([0x72; 16]),
            user_id: UserId::from([0x73; 16]),
            device_id: DeviceId::from([0x74; 16]),
            role: Role::Staff,
            handle: handle("dr.lee"),
            one_time_prekeys_remaining: 0,
            archive_public_key: None,
            credentials_required: true,
            login_required: true,
            consent_required: false,
            consent_text: None,
        })),
        reply(ServerMessage::PrekeysUploaded {
            one_time_prekeys_remaining: 100,
        }),
        reply(ServerMessage::PrekeyBundles(vec![
            prekey_bundle(true),
            prekey_bundle(false),
        ])),
        reply(ServerMessage::PrekeyBundles(Vec::new())),
        reply(ServerMessage::SendAccepted(SendAccepted {
            message_id: MessageId::from([0x76; 16]),
            server_time_ms: 5,
            duplicate: true,
        })),
        reply(ServerMessage::Acked { count: 3 }),
        reply(ServerMessage::InviteCreated(InviteCreated {
            code: InviteCode::new("Zx9-_q").expect("fixture code is valid"),
            expires_at_ms: 99,
        })),
        reply(ServerMessage::Conversation(conversation())),
        reply(ServerMessage::ConversationList(ConversationList {
            conversations: vec![conversation(), conversation()],
            more: true,
        })),
        reply(ServerMessage::ConversationList(ConversationList::default())),
        reply(ServerMessage::Identity(Identity {
            org_id: OrgId::from([0x77; 16]),
            user_id: UserId::from([0x78; 16]),
            device_id: DeviceId::from([0x79; 16]),
            role: Role::Admin,
            handle: handle("admin"),
            org_name: "Lakeside Aesthetics".to_owned(),
        })),
        reply(ServerMessage::Pong { server_time_ms: 12 }),
        ServerFrame::push(ServerMessage::Delivery(Delivery {
            message_id: MessageId::from([0x7a; 16]),
            conversation_id: ConversationId::from([0x7b; 16]),
            sender_user_id: UserId::from([0x7c; 16]),
            sender_device_id: DeviceId::from([0x7d; 16]),
            server_time_ms: 13,
            ciphertext: Bytes::from_static(b"opaque"),
        })),
        ServerFrame::push(ServerMessage::PrekeysLow {
            one_time_prekeys_remaining: 4,
        }),
        reply(ServerMessage::Done),
        reply(ServerMessage::CredentialsSetup(CredentialsSetup {
            totp_secret: secret("JBSWY3DPEHPK3PXP"),
            otpauth_uri: secret(
                "otpauth://totp/medrelay:dr.lee?secret=JBSWY3DPEHPK3PXP&issuer=medrelay",
            ),
            recovery_codes: vec![secret("abcd-efgh-2345"), secret("wxyz-7654-3210")],
        })),
        reply(ServerMessage::LoginOk {
            idle_timeout_ms: 900_000,
            session_expires_at_ms: 1_700_043_200_000,
        }),
        reply(ServerMessage::UserList(vec![
            UserInfo {
                user_id: UserId::from([0x91; 16]),
                handle: handle("dr.lee"),
                role: Role::Staff,
                active: true,
                permissions: vec![
                    Permission::MessageAssignedPatients,
                    Permission::InvitePatients,
                ],
                consent: ConsentState::NotApplicable,
            },
            UserInfo {
                user_id: UserId::from([0x92; 16]),
                handle: handle("pat_1"),
                role: Role::Patient,
                active: false,
                permissions: Vec::new(),
                consent: ConsentState::Withdrawn,
            },
        ])),
        reply(ServerMessage::UserList(Vec::new())),
        reply(ServerMessage::DeviceList(vec![
            DeviceInfo {
                device_id: DeviceId::from([0x93; 16]),
                label: DeviceLabel::new("front desk").unwrap_or_default(),
                created_ms: 1,
                last_seen_ms: 2,
                revoked: false,
            },
            DeviceInfo {
                device_id: DeviceId::from([0x94; 16]),
                label: DeviceLabel::default(),
                created_ms: 3,
                last_seen_ms: 4,
                revoked: true,
            },
        ])),
        reply(ServerMessage::Team(team())),
        reply(ServerMessage::TeamList(vec![
            team(),
            Team {
                staff_user_ids: Vec::new(),
                ..team()
            },
        ])),
        reply(ServerMessage::TeamList(Vec::new())),
        reply(ServerMessage::Policy(Policy {
            idle_timeout_ms: 900_000,
            session_lifetime_ms: 43_200_000,
            allow_lists: vec![
                RoleAllowList {
                    role: Role::Staff,
                    cidrs: vec![cidr("10.0.0.0/8")],
                },
                RoleAllowList {
                    role: Role::Admin,
                    cidrs: vec![cidr("192.0.2.0/24"), cidr("::1")],
                },
            ],
            consent_text: Some(consent_text()),
        })),
        reply(ServerMessage::Policy(Policy {
            idle_timeout_ms: 1_000,
            session_lifetime_ms: 1_000,
            allow_lists: Vec::new(),
            consent_text: None,
        })),
        reply(ServerMessage::BreakGlassGranted {
            expires_at_ms: 1_700_014_400_000,
        }),
        reply(ServerMessage::Retention(Retention {
            mail_days: 30,
            archive_days: 2_190,
            audit_days: 2_190,
            legal_hold: false,
            held_conversations: vec![ConversationId::from([0x94; 16])],
            archive_public_key: Some(X25519PublicKey::from([0x95; 32])),
        })),
        reply(ServerMessage::ArchivePage(ArchivePage {
            items: vec![ArchiveItem {
                seq: 3,
                conversation_id: ConversationId::from([0x96; 16]),
                message_id: MessageId::from([0x97; 16]),
                sender_user_id: UserId::from([0x98; 16]),
                sender_device_id: DeviceId::from([0x99; 16]),
                server_time_ms: 1_700_000_000_000,
                sealed: Bytes::from_static(b"sealed"),
            }],
            done: true,
            next_after_seq: 3,
        })),
        reply(ServerMessage::SweepReport(SweepReport {
            at_ms: 1,
            envelopes_deleted: 2,
            archive_items_deleted: 3,
            access_log_entries_deleted: 4,
            keys_shredded: 5,
            kept_by_hold: 6,
        })),
        reply(ServerMessage::AccessLogStatus(AccessLogStatus {
            entries: 10,
            checkpoints: 1,
            unsealed: 2,
            broken: None,
        })),
        reply(ServerMessage::AccessLogStatus(AccessLogStatus {
            entries: 10,
            checkpoints: 1,
            unsealed: 2,
            broken: Some((4, "changed since it was written".to_owned())),
        })),
        reply(ServerMessage::AccessLogPage(AccessLogPage {
            entries: vec![AccessLogEntry {
                seq: 1,
                at_ms: 2,
                user_id: Some(UserId::from([0x9a; 16])),
                device_id: Some(DeviceId::from([0x9b; 16])),
                role: Some(Role::Admin),
                action: "set_retention".to_owned(),
                objects: vec!["mail_days=30".to_owned()],
                outcome: "allowed".to_owned(),
                source: "127.0.0.1".to_owned(),
                hash: [7; 32],
            }],
            done: false,
            next_after_seq: 1,
        })),
    ]
}

/// A secret text known to be valid.
fn secret(text: &str) -> SecretText {
    SecretText::new(text).expect("fixture secret is valid")
}

/// Encodes a raw client frame (version 1, request id 7) around `body`, for malformed-frame
/// tests that need what the domain types cannot express.
pub(crate) fn raw_client(body: client_frame::Body) -> Vec<u8> {
    use prost::Message;
    pb::ClientFrame {
        version: 1,
        request_id: 7,
        body: Some(body),
    }
    .encode_to_vec()
}

/// Encodes a raw server frame around `body`.
pub(crate) fn raw_server(request_id: u64, body: server_frame::Body) -> Vec<u8> {
    use prost::Message;
    pb::ServerFrame {
        version: 1,
        request_id,
        body: Some(body),
    }
    .encode_to_vec()
}

/// Any id of type `T`.
pub(crate) fn arb_id<T: From<[u8; 16]> + std::fmt::Debug>() -> impl Strategy<Value = T> {
    any::<[u8; 16]>().prop_map(T::from)
}

/// Any valid handle.
pub(crate) fn arb_handle() -> impl Strategy<Value = Handle> {
    "[a-z0-9._-]{3,64}".prop_filter_map("valid handle", |s| Handle::new(s).ok())
}

/// Any opaque payload of 1 to `max` bytes.
pub(crate) fn arb_payload(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..=max).prop_map(Bytes::from)
}

/// Any valid send (distinct recipients).
pub(crate) fn arb_send() -> impl Strategy<Value = SendRequest> {
    (
        arb_id(),
        arb_id(),
        proptest::collection::btree_map(arb_id::<DeviceId>(), arb_payload(512), 0..=8),
        proptest::option::of(arb_payload(512)),
    )
        .prop_map(
            |(conversation_id, client_message_id, envelopes, archive_item)| SendRequest {
                conversation_id,
                client_message_id,
                envelopes: envelopes
                    .into_iter()
                    .map(|(recipient_device, ciphertext)| Envelope {
                        recipient_device,
                        ciphertext,
                    })
                    .collect(),
                archive_item,
            },
        )
}

/// Any valid delivery.
pub(crate) fn arb_delivery() -> impl Strategy<Value = Delivery> {
    (
        arb_id(),
        arb_id(),
        arb_id(),
        arb_id(),
        any::<u64>(),
        arb_payload(1024),
    )
        .prop_map(
            |(
                message_id,
                conversation_id,
                sender_user_id,
                sender_device_id,
                server_time_ms,
                ciphertext,
            )| {
                Delivery {
                    message_id,
                    conversation_id,
                    sender_user_id,
                    sender_device_id,
                    server_time_ms,
                    ciphertext,
                }
            },
        )
}

/// Any wire error with a known code.
pub(crate) fn arb_wire_error() -> impl Strategy<Value = WireError> {
    (
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        ".{0,80}",
        vec(arb_id::<DeviceId>(), 0..4),
        vec(arb_id::<DeviceId>(), 0..4),
        any::<u64>(),
    )
        .prop_map(
            |(code, message, missing_devices, stale_devices, retry_after_ms)| WireError {
                code,
                message,
                missing_devices,
                stale_devices,
                retry_after_ms,
            },
        )
}
