//! Tests of frame decoding and encoding: round trips of every kind, every refusal path, the
//! limits, unknown fields, and totality on arbitrary bytes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::limits::*;
use crate::pb::{client_frame::Body as C, server_frame::Body as S};
use crate::testing::*;
use crate::{DeviceId, Envelope, FieldProblem, MessageId, ProtoError, Role};

fn b(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

/// Decodes a raw client frame that must be refused, and returns the refusal.
fn refuse(body: C) -> FrameError {
    decode_client_frame(&raw_client(body)).expect_err("frame must be refused")
}

/// The refused field's path and problem.
fn field_error(e: &FrameError) -> (String, FieldProblem) {
    match e {
        FrameError::InvalidField { field, problem, .. } => (field.to_string(), *problem),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

fn raw_send() -> pb::SendRequest {
    pb::SendRequest {
        conversation_id: b(&[1; 16]),
        client_message_id: b(&[2; 16]),
        envelopes: vec![pb::Envelope {
            recipient_device: b(&[3; 16]),
            ciphertext: b(b"x"),
        }],
        archive_item: Bytes::new(),
    }
}

fn raw_device_keys() -> pb::DeviceKeys {
    device_keys(2).to_pb()
}

fn raw_enroll() -> pb::EnrollRequest {
    pb::EnrollRequest {
        invite_code: "code".into(),
        keys: Some(raw_device_keys()),
        binding: pb::ChannelBinding::TlsExporter.into(),
        origin: String::new(),
        signature: b(&[9; 64]),
        device_label: String::new(),
    }
}

// ------------------------------------------------------------------ round trips

#[test]
fn every_client_request_round_trips() {
    for (i, request) in every_client_request().into_iter().enumerate() {
        let frame = ClientFrame {
            request_id: 1 + i as u64,
            request,
        };
        let bytes = encode_client_frame(&frame);
        assert_eq!(
            decode_client_frame(&bytes),
            Ok(frame.clone()),
            "{}",
            frame.request.name()
        );
        assert_eq!(decode_client_frame_bytes(Bytes::from(bytes)), Ok(frame));
    }
}

#[test]
fn every_server_frame_round_trips() {
    for frame in every_server_frame() {
        let bytes = encode_server_frame(&frame);
        assert_eq!(
            decode_server_frame(&bytes),
            Ok(frame.clone()),
            "{}",
            frame.message.name()
        );
        assert_eq!(decode_server_frame_bytes(Bytes::from(bytes)), Ok(frame));
    }
}

/// The field names of `message`'s `oneof body`, read from `relay.proto` itself, so the
/// fixtures and `name()` are checked against the source of truth rather than against
/// themselves.
fn oneof_fields(message: &str) -> std::collections::BTreeSet<&'static str> {
    const PROTO: &str = include_str!("../proto/medrelay/v1/relay.proto");
    let start = PROTO
        .find(&format!("message {message} {{"))
        .expect("message in relay.proto");
    let body = &PROTO[start..];
    let oneof = &body[body.find("oneof body {").expect("oneof body")..];
    let oneof = &oneof[..oneof.find('}').expect("end of oneof")];
    oneof
        .lines()
        .map(str::trim)
        .filter(|line| line.ends_with(';'))
        .map(|line| line.split_whitespace().nth(1).expect("type name = n;"))
        .collect()
}

#[test]
fn fixtures_cover_every_body_kind() {
    let client: std::collections::BTreeSet<_> = every_client_request()
        .iter()
        .map(ClientRequest::name)
        .collect();
    let client_bodies = oneof_fields("ClientFrame");
    assert_eq!(client_bodies.len(), 40);
    assert_eq!(client, client_bodies, "one fixture per ClientFrame body");
    let server: std::collections::BTreeSet<_> = every_server_frame()
        .iter()
        .map(|f| f.message.name())
        .collect();
    let server_bodies = oneof_fields("ServerFrame");
    assert_eq!(server_bodies.len(), 28);
    assert_eq!(server, server_bodies, "one fixture per ServerFrame body");
}

#[test]
fn only_enroll_auth_and_ping_come_before_auth() {
    for request in every_client_request() {
        let expected = matches!(request.name(), "enroll" | "auth" | "ping");
        assert_eq!(
            request.allowed_before_auth(),
            expected,
            "{}",
            request.name()
        );
    }
}

proptest! {
    #[test]
    fn sends_round_trip(send in arb_send(), request_id in 1u64..) {
        let frame = ClientFrame { request_id, request: ClientRequest::Send(send) };
        prop_assert_eq!(decode_client_frame(&encode_client_frame(&frame)), Ok(frame));
    }

    #[test]
    fn acks_and_fetches_round_trip(
        ids in proptest::collection::btree_set(arb_id::<MessageId>(), 1..=MAX_ACK_IDS),
        users in proptest::collection::btree_set(arb_id::<crate::UserId>(), 1..=MAX_FETCH_USERS),
    ) {
        let ack = ClientFrame {
            request_id: 1,
            request: ClientRequest::Ack(AckRequest { message_ids: ids.into_iter().collect() }),
        };
        prop_assert_eq!(decode_client_frame(&encode_client_frame(&ack)), Ok(ack));
        let fetch = ClientFrame {
            request_id: 2,
            request: ClientRequest::FetchPrekeys(FetchPrekeys {
                user_ids: users.into_iter().collect(),
                devices: Vec::new(),
            }),
        };
        prop_assert_eq!(decode_client_frame(&encode_client_frame(&fetch)), Ok(fetch));
    }

    #[test]
    fn open_conversations_round_trip(
        handles in proptest::collection::btree_set(arb_handle(), 1..=MAX_MEMBERS),
    ) {
        let frame = ClientFrame {
            request_id: 3,
            request: ClientRequest::OpenConversation(OpenConversation {
                handles: handles.into_iter().collect(),
            }),
        };
        prop_assert_eq!(decode_client_frame(&encode_client_frame(&frame)), Ok(frame));
    }

    #[test]
    fn deliveries_and_errors_round_trip(
        delivery in arb_delivery(),
        error in arb_wire_error(),
        request_id in any::<u64>(),
    ) {
        let push = ServerFrame::push(ServerMessage::Delivery(delivery));
        prop_assert_eq!(decode_server_frame(&encode_server_frame(&push)), Ok(push));
        let error = ServerFrame::reply(request_id, ServerMessage::Error(error));
        prop_assert_eq!(decode_server_frame(&encode_server_frame(&error)), Ok(error));
    }

    /// Decoding is total: arbitrary bytes give a frame or an error, never a panic.
    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_client_frame(&bytes);
        let _ = decode_server_frame(&bytes);
    }

    /// Nor on valid frames with a byte changed or cut short, which reach deeper code paths.
    #[test]
    fn decoders_never_panic_on_mutated_frames(
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let requests = every_client_request();
        let request = which.get(&requests).clone();
        let mut client = encode_client_frame(&ClientFrame { request_id: 9, request });
        let servers = every_server_frame();
        let mut server = encode_server_frame(which.get(&servers));
        for bytes in [&mut client, &mut server] {
            let i = at.index(bytes.len());
            if cut { bytes.truncate(i) } else { bytes[i] = byte }
        }
        let _ = decode_client_frame(&client);
        let _ = decode_server_frame(&server);
    }
}

// ------------------------------------------------------------------ frame-level refusals

#[test]
fn oversize_frames_are_refused_before_decoding() {
    let bytes = vec![0u8; MAX_FRAME_BYTES + 1];
    let e = decode_client_frame(&bytes).unwrap_err();
    assert_eq!(
        e,
        FrameError::TooLarge {
            len: MAX_FRAME_BYTES + 1
        }
    );
    assert_eq!(e.code(), ErrorCode::TooLarge);
    assert_eq!(e.request_id(), 0);
    assert_eq!(
        decode_server_frame(&bytes).unwrap_err().code(),
        ErrorCode::TooLarge
    );
}

#[test]
fn a_large_valid_send_under_the_frame_limit_is_accepted() {
    let envelopes = (0..3u8)
        .map(|i| Envelope {
            recipient_device: DeviceId::from([i; 16]),
            ciphertext: Bytes::from(vec![i; MAX_CIPHERTEXT_BYTES]),
        })
        .collect();
    let frame = ClientFrame {
        request_id: 1,
        request: ClientRequest::Send(SendRequest {
            conversation_id: [1; 16].into(),
            client_message_id: [2; 16].into(),
            envelopes,
            archive_item: None,
        }),
    };
    let bytes = encode_client_frame(&frame);
    assert!(bytes.len() <= MAX_FRAME_BYTES);
    assert_eq!(decode_client_frame(&bytes), Ok(frame));
}

#[test]
fn garbage_is_malformed() {
    let e = decode_client_frame(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(e, FrameError::Undecodable);
    assert_eq!(e.code(), ErrorCode::Malformed);
    assert_eq!(
        decode_server_frame(&[0x0a, 0x05, 0x01]).unwrap_err(),
        FrameError::Undecodable
    );
}

#[test]
fn other_versions_are_refused_with_the_request_id() {
    for version in [0, 2, u32::MAX] {
        let bytes = pb::ClientFrame {
            version,
            request_id: 77,
            body: Some(C::Ping(pb::Ping {})),
        }
        .encode_to_vec();
        let e = decode_client_frame(&bytes).unwrap_err();
        assert_eq!(
            e,
            FrameError::UnsupportedVersion {
                version,
                request_id: 77
            }
        );
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
        assert_eq!(e.request_id(), 77);
    }
    let bytes = pb::ServerFrame {
        version: 2,
        request_id: 0,
        body: Some(S::Pong(pb::Pong { server_time_ms: 1 })),
    }
    .encode_to_vec();
    assert_eq!(
        decode_server_frame(&bytes).unwrap_err().code(),
        ErrorCode::UnsupportedVersion
    );
}

#[test]
fn request_id_zero_is_refused_for_client_frames() {
    let bytes = pb::ClientFrame {
        version: 1,
        request_id: 0,
        body: Some(C::Ping(pb::Ping {})),
    }
    .encode_to_vec();
    let e = decode_client_frame(&bytes).unwrap_err();
    assert_eq!(e, FrameError::ZeroRequestId);
    assert_eq!(e.code(), ErrorCode::Malformed);
}

#[test]
fn a_frame_without_a_body_is_malformed() {
    let bytes = pb::ClientFrame {
        version: 1,
        request_id: 5,
        body: None,
    }
    .encode_to_vec();
    let e = decode_client_frame(&bytes).unwrap_err();
    assert_eq!(e, FrameError::MissingBody { request_id: 5 });
    assert_eq!(e.code(), ErrorCode::Malformed);
    assert_eq!(e.request_id(), 5);
}

#[test]
fn a_body_from_a_newer_version_is_a_missing_body() {
    // version 1, request id 5, then field 99 (length-delimited, empty): a body kind this
    // version does not know. Proto3 skips it, so the frame has no body.
    let bytes = [0x08, 0x01, 0x10, 0x05, 0x9a, 0x06, 0x00];
    assert_eq!(
        decode_client_frame(&bytes),
        Err(FrameError::MissingBody { request_id: 5 })
    );
}

#[test]
fn server_pushes_and_answers_carry_the_right_request_id() {
    let challenge = S::Challenge(pb::Challenge {
        nonce: b(&[1; 32]),
        server_time_ms: 0,
    });
    let e = decode_server_frame(&raw_server(3, challenge.clone())).unwrap_err();
    assert_eq!(
        e,
        FrameError::PushWithRequestId {
            request_id: 3,
            body: "challenge"
        }
    );
    assert!(decode_server_frame(&raw_server(0, challenge)).is_ok());

    let pong = S::Pong(pb::Pong { server_time_ms: 1 });
    let e = decode_server_frame(&raw_server(0, pong.clone())).unwrap_err();
    assert_eq!(e, FrameError::ResponseWithoutRequestId { body: "pong" });
    assert_eq!(e.code(), ErrorCode::Malformed);
    assert!(decode_server_frame(&raw_server(8, pong)).is_ok());
}

// ------------------------------------------------------------------ unknown fields

/// Appends an unknown varint field 99 and an unknown length-delimited field 98.
fn with_unknown_fields(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.extend_from_slice(&[0x98, 0x06, 0x2a]); // field 99, varint 42
    bytes.extend_from_slice(&[0x92, 0x06, 0x03, b'a', b'b', b'c']); // field 98, "abc"
    bytes
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    // Top level.
    let frame = ClientFrame {
        request_id: 7,
        request: ClientRequest::Ping,
    };
    let bytes = with_unknown_fields(encode_client_frame(&frame));
    assert_eq!(decode_client_frame(&bytes), Ok(frame));

    // Inside a body: a SendRequest with extra fields, wrapped by hand as field 14.
    let body = with_unknown_fields(raw_send().encode_to_vec());
    let mut bytes = vec![0x08, 0x01, 0x10, 0x07, 0x72];
    prost::encoding::encode_varint(body.len() as u64, &mut bytes);
    bytes.extend_from_slice(&body);
    let decoded = decode_client_frame(&bytes).expect("unknown fields are skipped");
    let expected = decode_client_frame(&raw_client(C::Send(raw_send()))).expect("valid send");
    assert_eq!(decoded, expected);

    // Server frames too.
    let push = ServerFrame::push(ServerMessage::PrekeysLow {
        one_time_prekeys_remaining: 2,
    });
    let bytes = with_unknown_fields(encode_server_frame(&push));
    assert_eq!(decode_server_frame(&bytes), Ok(push));
}

// ------------------------------------------------------------------ field refusals: send

#[test]
fn bad_id_lengths_name_the_field() {
    let e = refuse(C::Send(pb::SendRequest {
        conversation_id: b(&[1; 3]),
        ..raw_send()
    }));
    assert_eq!(
        field_error(&e),
        (
            "send.conversation_id".into(),
            FieldProblem::Invalid(ProtoError::WrongLength {
                expected: 16,
                actual: 3
            })
        )
    );
    assert_eq!(e.code(), ErrorCode::Malformed);
    assert_eq!(e.request_id(), 7);
    assert_eq!(
        e.message(),
        "send.conversation_id must be exactly 16 bytes, got 3"
    );

    let e = refuse(C::Send(pb::SendRequest {
        client_message_id: Bytes::new(),
        ..raw_send()
    }));
    assert_eq!(
        field_error(&e),
        ("send.client_message_id".into(), FieldProblem::Missing)
    );
    assert_eq!(e.message(), "send.client_message_id is missing");

    let mut send = raw_send();
    send.envelopes[0].recipient_device = b(&[1; 17]);
    let (field, _) = field_error(&refuse(C::Send(send)));
    assert_eq!(field, "send.envelopes.recipient_device");
}

#[test]
fn too_many_envelopes_is_limit_exceeded() {
    let mut send = raw_send();
    send.envelopes = (0..=MAX_ENVELOPES_PER_SEND as u8)
        .map(|i| pb::Envelope {
            recipient_device: b(&[i; 16]),
            ciphertext: b(b"x"),
        })
        .collect();
    let e = refuse(C::Send(send));
    assert_eq!(
        field_error(&e),
        (
            "send.envelopes".into(),
            FieldProblem::TooMany {
                max: 64,
                actual: 65
            }
        )
    );
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
}

#[test]
fn oversize_ciphertexts_and_archive_items_are_too_large() {
    let mut send = raw_send();
    send.envelopes[0].ciphertext = Bytes::from(vec![0; MAX_CIPHERTEXT_BYTES + 1]);
    let e = refuse(C::Send(send));
    assert_eq!(field_error(&e).0, "send.envelopes.ciphertext");
    assert_eq!(e.code(), ErrorCode::TooLarge);

    let e = refuse(C::Send(pb::SendRequest {
        archive_item: Bytes::from(vec![0; MAX_ARCHIVE_ITEM_BYTES + 1]),
        ..raw_send()
    }));
    assert_eq!(field_error(&e).0, "send.archive_item");
    assert_eq!(e.code(), ErrorCode::TooLarge);
}

#[test]
fn empty_ciphertexts_and_duplicate_recipients_are_malformed() {
    let mut send = raw_send();
    send.envelopes[0].ciphertext = Bytes::new();
    assert_eq!(
        field_error(&refuse(C::Send(send))),
        ("send.envelopes.ciphertext".into(), FieldProblem::Missing)
    );

    let mut send = raw_send();
    send.envelopes.push(send.envelopes[0].clone());
    let e = refuse(C::Send(send));
    assert_eq!(
        field_error(&e),
        ("send.envelopes".into(), FieldProblem::Duplicate)
    );
    assert_eq!(e.code(), ErrorCode::Malformed);
}

// ------------------------------------------------------------------ field refusals: others

#[test]
fn ack_limits() {
    let ids = |n: usize| {
        (0..n)
            .map(|i| {
                b(&[
                    (i % 256) as u8,
                    (i / 256) as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ])
            })
            .collect()
    };
    assert_eq!(
        field_error(&refuse(C::Ack(pb::AckRequest {
            message_ids: ids(0)
        }))),
        ("ack.message_ids".into(), FieldProblem::Missing)
    );
    let e = refuse(C::Ack(pb::AckRequest {
        message_ids: ids(MAX_ACK_IDS + 1),
    }));
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    let dup = vec![b(&[1; 16]), b(&[1; 16])];
    assert_eq!(
        field_error(&refuse(C::Ack(pb::AckRequest { message_ids: dup }))).1,
        FieldProblem::Duplicate
    );
}

#[test]
fn fetch_limits() {
    let users = |n: u8| (0..n).map(|i| b(&[i; 16])).collect();
    assert_eq!(
        field_error(&refuse(C::FetchPrekeys(pb::FetchPrekeys {
            user_ids: users(0),
            devices: vec![],
        }))),
        ("fetch_prekeys.user_ids".into(), FieldProblem::Missing)
    );
    let e = refuse(C::FetchPrekeys(pb::FetchPrekeys {
        user_ids: users(MAX_FETCH_USERS as u8 + 1),
        devices: vec![],
    }));
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    let e = refuse(C::FetchPrekeys(pb::FetchPrekeys {
        user_ids: users(1),
        devices: users(MAX_FETCH_DEVICES as u8 + 1),
    }));
    assert_eq!(field_error(&e).0, "fetch_prekeys.devices");
}

#[test]
fn bad_handles_are_refused_without_echoing_them() {
    let secret = "Patient Jane Doe";
    let e = refuse(C::OpenConversation(pb::OpenConversation {
        handles: vec!["dr.lee".into(), secret.into()],
    }));
    assert_eq!(
        field_error(&e),
        (
            "open_conversation.handles".into(),
            FieldProblem::Invalid(ProtoError::InvalidHandle)
        )
    );
    assert!(!e.message().contains("Jane"), "{}", e.message());
    assert!(!e.to_wire_error().message.contains("Jane"));

    let e = refuse(C::OpenConversation(pb::OpenConversation {
        handles: (0..=MAX_MEMBERS).map(|i| format!("user{i}")).collect(),
    }));
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
    let e = refuse(C::OpenConversation(pb::OpenConversation {
        handles: vec![],
    }));
    assert_eq!(field_error(&e).1, FieldProblem::Missing);
    let e = refuse(C::OpenConversation(pb::OpenConversation {
        handles: vec!["abc".into(), "abc".into()],
    }));
    assert_eq!(field_error(&e).1, FieldProblem::Duplicate);
}

#[test]
fn prekey_upload_refusals() {
    let e = refuse(C::UploadPrekeys(pb::UploadPrekeys::default()));
    assert_eq!(e.message(), "upload_prekeys must not be empty");
    assert_eq!(e.code(), ErrorCode::Malformed);

    let too_many = one_time_prekeys(MAX_ONE_TIME_PREKEYS_PER_UPLOAD as u32 + 1);
    let e = refuse(C::UploadPrekeys(pb::UploadPrekeys {
        one_time_prekeys: too_many.into_iter().map(OneTimePrekeyExt::raw).collect(),
        ..Default::default()
    }));
    assert_eq!(
        field_error(&e),
        (
            "upload_prekeys.one_time_prekeys".into(),
            FieldProblem::TooMany {
                max: 100,
                actual: 101
            }
        )
    );
    assert_eq!(e.code(), ErrorCode::LimitExceeded);

    let mut dup: Vec<_> = one_time_prekeys(2)
        .into_iter()
        .map(OneTimePrekeyExt::raw)
        .collect();
    dup[1].id = dup[0].id;
    let e = refuse(C::UploadPrekeys(pb::UploadPrekeys {
        one_time_prekeys: dup,
        ..Default::default()
    }));
    assert_eq!(field_error(&e).1, FieldProblem::Duplicate);

    let e = refuse(C::UploadPrekeys(pb::UploadPrekeys {
        pq_prekey: Some(pb::SignedPrekey {
            id: 1,
            public_key: b(&[0; 1183]),
            signature: b(&[0; 64]),
        }),
        ..Default::default()
    }));
    assert_eq!(
        e.message(),
        "upload_prekeys.pq_prekey.public_key must be exactly 1184 bytes, got 1183"
    );
}

/// Raw form of a one-time prekey, for building malformed uploads.
trait OneTimePrekeyExt {
    fn raw(self) -> pb::OneTimePrekey;
}

impl OneTimePrekeyExt for crate::OneTimePrekey {
    fn raw(self) -> pb::OneTimePrekey {
        pb::OneTimePrekey {
            id: self.id,
            public_key: b(self.public_key.as_bytes()),
        }
    }
}

#[test]
fn enrolment_refusals() {
    let cases: Vec<(pb::EnrollRequest, &str, FieldProblem)> = vec![
        (
            pb::EnrollRequest {
                keys: None,
                ..raw_enroll()
            },
            "enroll.keys",
            FieldProblem::Missing,
        ),
        (
            pb::EnrollRequest {
                invite_code: String::new(),
                ..raw_enroll()
            },
            "enroll.invite_code",
            FieldProblem::Missing,
        ),
        (
            pb::EnrollRequest {
                invite_code: "bad code!".into(),
                ..raw_enroll()
            },
            "enroll.invite_code",
            FieldProblem::Invalid(ProtoError::InvalidCharacters),
        ),
        (
            pb::EnrollRequest {
                binding: 0,
                ..raw_enroll()
            },
            "enroll.binding",
            FieldProblem::Missing,
        ),
        (
            pb::EnrollRequest {
                binding: 9,
                ..raw_enroll()
            },
            "enroll.binding",
            FieldProblem::UnknownValue,
        ),
        (
            pb::EnrollRequest {
                origin: "https://x".into(),
                ..raw_enroll()
            },
            "enroll.origin",
            FieldProblem::NotAllowed,
        ),
        (
            pb::EnrollRequest {
                binding: pb::ChannelBinding::Origin.into(),
                ..raw_enroll()
            },
            "enroll.origin",
            FieldProblem::Missing,
        ),
        (
            pb::EnrollRequest {
                signature: b(&[0; 63]),
                ..raw_enroll()
            },
            "enroll.signature",
            FieldProblem::Invalid(ProtoError::WrongLength {
                expected: 64,
                actual: 63,
            }),
        ),
        (
            pb::EnrollRequest {
                device_label: "x".repeat(65),
                ..raw_enroll()
            },
            "enroll.device_label",
            FieldProblem::Invalid(ProtoError::TooLong {
                max: 64,
                actual: 65,
            }),
        ),
        (
            pb::EnrollRequest {
                keys: Some(pb::DeviceKeys {
                    pq_prekey: None,
                    ..raw_device_keys()
                }),
                ..raw_enroll()
            },
            "enroll.keys.pq_prekey",
            FieldProblem::Missing,
        ),
        (
            pb::EnrollRequest {
                keys: Some(pb::DeviceKeys {
                    identity_signing_key: b(&[0; 33]),
                    ..raw_device_keys()
                }),
                ..raw_enroll()
            },
            "enroll.keys.identity_signing_key",
            FieldProblem::Invalid(ProtoError::WrongLength {
                expected: 32,
                actual: 33,
            }),
        ),
    ];
    for (raw, field, problem) in cases {
        let e = refuse(C::Enroll(raw));
        assert_eq!(field_error(&e), (field.to_owned(), problem), "{field}");
    }
    let e = refuse(C::Enroll(pb::EnrollRequest {
        device_label: "x".repeat(65),
        ..raw_enroll()
    }));
    assert_eq!(e.code(), ErrorCode::TooLarge);
}

#[test]
fn auth_refusals() {
    let raw = pb::AuthProof {
        device_id: b(&[1; 16]),
        binding: pb::ChannelBinding::Origin.into(),
        origin: "https://clinic.example".into(),
        signature: b(&[2; 64]),
    };
    assert!(decode_client_frame(&raw_client(C::Auth(raw.clone()))).is_ok());
    let e = refuse(C::Auth(pb::AuthProof {
        origin: "https://a b".into(),
        ..raw.clone()
    }));
    assert_eq!(
        field_error(&e),
        (
            "auth.origin".into(),
            FieldProblem::Invalid(ProtoError::InvalidCharacters)
        )
    );
    let e = refuse(C::Auth(pb::AuthProof {
        device_id: Bytes::new(),
        ..raw
    }));
    assert_eq!(
        field_error(&e),
        ("auth.device_id".into(), FieldProblem::Missing)
    );
}

#[test]
fn invite_refusals() {
    let new_user = pb::CreateInvite {
        kind: pb::InviteKind::NewUser.into(),
        role: pb::Role::Staff.into(),
        handle: "nurse.kim".into(),
    };
    let ok = decode_client_frame(&raw_client(C::CreateInvite(new_user.clone()))).unwrap();
    assert_eq!(
        ok.request,
        ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Staff,
            handle: handle("nurse.kim")
        })
    );
    let cases = [
        (
            pb::CreateInvite {
                kind: 0,
                ..new_user.clone()
            },
            "create_invite.kind",
            FieldProblem::Missing,
        ),
        (
            pb::CreateInvite {
                role: 0,
                ..new_user.clone()
            },
            "create_invite.role",
            FieldProblem::Missing,
        ),
        (
            pb::CreateInvite {
                role: 42,
                ..new_user.clone()
            },
            "create_invite.role",
            FieldProblem::UnknownValue,
        ),
        (
            pb::CreateInvite {
                handle: String::new(),
                ..new_user.clone()
            },
            "create_invite.handle",
            FieldProblem::Missing,
        ),
        (
            pb::CreateInvite {
                kind: pb::InviteKind::NewDevice.into(),
                role: 0,
                ..new_user.clone()
            },
            "create_invite.handle",
            FieldProblem::NotAllowed,
        ),
        (
            pb::CreateInvite {
                kind: pb::InviteKind::NewDevice.into(),
                handle: String::new(),
                ..new_user
            },
            "create_invite.role",
            FieldProblem::NotAllowed,
        ),
    ];
    for (raw, field, problem) in cases {
        assert_eq!(
            field_error(&refuse(C::CreateInvite(raw))),
            (field.to_owned(), problem),
            "{field}"
        );
    }
}

#[test]
fn get_and_list_conversation_refusals() {
    let e = refuse(C::GetConversation(pb::GetConversation {
        conversation_id: Bytes::new(),
    }));
    assert_eq!(
        field_error(&e),
        (
            "get_conversation.conversation_id".into(),
            FieldProblem::Missing
        )
    );
    let e = refuse(C::ListConversations(pb::ListConversations {
        after: b(&[1; 5]),
    }));
    assert_eq!(field_error(&e).0, "list_conversations.after");
}

// ------------------------------------------------------------------ server frame refusals

#[test]
fn server_frame_refusals() {
    let e = decode_server_frame(&raw_server(
        0,
        S::Challenge(pb::Challenge {
            nonce: b(&[1; 31]),
            server_time_ms: 0,
        }),
    ))
    .unwrap_err();
    assert_eq!(
        e.message(),
        "challenge.nonce must be exactly 32 bytes, got 31"
    );

    let mut bundle = prekey_bundle(true).to_pb();
    if let Some(keys) = bundle.keys.as_mut() {
        keys.one_time_prekeys.push(keys.one_time_prekeys[0].clone());
    }
    let e = decode_server_frame(&raw_server(
        1,
        S::PrekeyBundles(pb::PrekeyBundles {
            bundles: vec![bundle],
        }),
    ))
    .unwrap_err();
    assert_eq!(
        field_error(&e),
        (
            "prekey_bundles.bundles.keys.one_time_prekeys".into(),
            FieldProblem::TooMany { max: 1, actual: 2 }
        )
    );

    let mut conversation = conversation().to_pb();
    conversation.members[0].role = 0;
    let e = decode_server_frame(&raw_server(1, S::Conversation(conversation))).unwrap_err();
    assert_eq!(field_error(&e).0, "conversation.members.role");

    let e = decode_server_frame(&raw_server(
        1,
        S::Identity(pb::Identity {
            org_name: "x".repeat(MAX_ORG_NAME_LEN + 1),
            ..every_identity()
        }),
    ))
    .unwrap_err();
    assert_eq!(field_error(&e).0, "identity.org_name");

    let e = decode_server_frame(&raw_server(
        0,
        S::Error(pb::Error {
            missing_devices: vec![b(&[1; 4])],
            ..Default::default()
        }),
    ))
    .unwrap_err();
    assert_eq!(field_error(&e).0, "error.missing_devices");
}

fn every_identity() -> pb::Identity {
    every_server_frame()
        .into_iter()
        .find_map(|f| match f.message {
            ServerMessage::Identity(i) => Some(i.to_pb()),
            _ => None,
        })
        .expect("fixtures include an identity")
}

#[test]
fn unknown_error_codes_decode_as_unknown() {
    let frame = raw_server(
        4,
        S::Error(pb::Error {
            code: 999,
            message: "from the future".into(),
            ..Default::default()
        }),
    );
    let ServerMessage::Error(e) = decode_server_frame(&frame).unwrap().message else {
        panic!("expected an error");
    };
    assert_eq!(e.code, ErrorCode::Unknown);
    assert_eq!(e.message, "from the future");
}

#[test]
fn frame_errors_become_wire_errors() {
    let e = refuse(C::Send(pb::SendRequest {
        conversation_id: Bytes::new(),
        ..raw_send()
    }));
    let wire = WireError::from(&e);
    assert_eq!(wire.code, ErrorCode::Malformed);
    assert_eq!(wire.message, "send.conversation_id is missing");
    let reply = ServerFrame::reply(e.request_id(), ServerMessage::Error(wire));
    assert_eq!(reply.request_id, 7);
    assert_eq!(decode_server_frame(&encode_server_frame(&reply)), Ok(reply));
}
