//! Proves: an unauthenticated connection can do nothing but authenticate; a proof is good for
//! its own connection only (a replayed proof fails); invites are single use; a forged proof
//! fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{
    ClientRequest, ErrorCode, InviteSpec, OpenConversation, Role, ServerMessage, Signature,
};
use medrelay_tests::{now_ms, RawClient, RawDevice, Server};

fn error_code(message: &ServerMessage) -> Option<ErrorCode> {
    match message {
        ServerMessage::Error(e) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_can_do_nothing_but_authenticate() {
    let server = Server::start().unwrap();
    let mut client = RawClient::connect(&server).await.unwrap();
    let requests = [
        ClientRequest::WhoAmI,
        ClientRequest::ListConversations(medrelay_proto::ListConversations { after: None }),
        ClientRequest::OpenConversation(OpenConversation {
            handles: vec![medrelay_proto::Handle::new("admin").unwrap()],
        }),
        ClientRequest::CreateInvite(InviteSpec::NewDevice),
        ClientRequest::Ack(medrelay_proto::AckRequest {
            message_ids: vec![medrelay_proto::MessageId::from_array([1; 16])],
        }),
    ];
    for request in requests {
        let name = request.name();
        let answer = client.request(request).await.unwrap();
        assert_eq!(
            error_code(&answer),
            Some(ErrorCode::Unauthenticated),
            "{name} before auth"
        );
    }
    // Ping is allowed, and the connection still accepts a proper enrolment afterwards.
    assert!(matches!(
        client.request(ClientRequest::Ping).await.unwrap(),
        ServerMessage::Pong { .. }
    ));
    let device = RawDevice::new();
    let enroll = device
        .enroll_request(&client, server.admin_invite.as_deref().unwrap())
        .unwrap();
    assert!(matches!(
        client.request(enroll).await.unwrap(),
        ServerMessage::AuthOk(_)
    ));
    match client.request(ClientRequest::WhoAmI).await.unwrap() {
        ServerMessage::Identity(identity) => {
            assert_eq!(identity.role, Role::Admin);
            assert_eq!(identity.handle.as_str(), "admin");
        }
        other => panic!("whoami after enrolment: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_replayed_on_another_connection_fails() {
    let server = Server::start().unwrap();
    let mut device = RawDevice::new();
    drop(
        device
            .enroll(&server, server.admin_invite.as_deref().unwrap())
            .await
            .unwrap(),
    );

    // A proof made for one connection...
    let first = RawClient::connect(&server).await.unwrap();
    let proof = device.auth_request(&first).unwrap();
    // ...sent on another connection (other nonce, other TLS exporter) is refused...
    let mut second = RawClient::connect(&server).await.unwrap();
    let answer = second.request(proof.clone()).await.unwrap();
    assert_eq!(error_code(&answer), Some(ErrorCode::AuthFailed));
    // ...and that connection is closed: the challenge is spent.
    second.closed_by_server().await.unwrap();

    // The device itself still authenticates with a fresh proof.
    let mut fresh = device.connect(&server).await.unwrap();
    assert!(matches!(
        fresh.request(ClientRequest::WhoAmI).await.unwrap(),
        ServerMessage::Identity(_)
    ));
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_proof_and_an_unknown_device_fail_alike() {
    let server = Server::start().unwrap();
    let mut device = RawDevice::new();
    drop(
        device
            .enroll(&server, server.admin_invite.as_deref().unwrap())
            .await
            .unwrap(),
    );
    // Right device id, signature by another key.
    let impostor = RawDevice {
        identity: RawDevice::new().identity,
        device_id: device.device_id,
    };
    let mut client = RawClient::connect(&server).await.unwrap();
    let forged = impostor.auth_request(&client).unwrap();
    let answer = client.request(forged).await.unwrap();
    assert_eq!(error_code(&answer), Some(ErrorCode::AuthFailed));

    // A device id nobody has, with an otherwise well-formed proof.
    let stranger = RawDevice {
        identity: RawDevice::new().identity,
        device_id: Some(medrelay_proto::DeviceId::from_array([9; 16])),
    };
    let mut client = RawClient::connect(&server).await.unwrap();
    let proof = stranger.auth_request(&client).unwrap();
    let unknown = client.request(proof).await.unwrap();
    // Same code and message as the forged proof: nothing tells which devices exist.
    match (&answer, &unknown) {
        (ServerMessage::Error(a), ServerMessage::Error(b)) => {
            assert_eq!(a.code, b.code);
            assert_eq!(a.message, b.message);
        }
        other => panic!("{other:?}"),
    }

    // An all-zero signature is refused too.
    let mut client = RawClient::connect(&server).await.unwrap();
    let mut proof = device.auth_request(&client).unwrap();
    if let ClientRequest::Auth(auth) = &mut proof {
        auth.signature = Signature::from_array([0; 64]);
    }
    assert_eq!(
        error_code(&client.request(proof).await.unwrap()),
        Some(ErrorCode::AuthFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_works_once_and_its_handle_is_fixed_by_the_inviter() {
    let server = Server::start().unwrap();
    let code = server.admin_invite.clone().unwrap();
    let mut admin = RawDevice::new();
    let mut admin_conn = admin.enroll(&server, &code).await.unwrap();
    admin_conn.setup_and_login(now_ms()).await.unwrap();

    // The same code again: refused, on a fresh connection, and nothing is created.
    let mut other = RawDevice::new();
    let error = other.enroll(&server, &code).await.unwrap_err();
    assert!(error.to_string().contains("InviteInvalid"), "{error}");

    // Staff may not be invited by a patient; an admin may invite staff.
    let invite = admin_conn
        .request(ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Staff,
            handle: medrelay_proto::Handle::new("nurse.kim").unwrap(),
        }))
        .await
        .unwrap();
    let ServerMessage::InviteCreated(created) = invite else {
        panic!("{invite:?}")
    };
    let mut staff = RawDevice::new();
    let mut staff_conn = staff.enroll(&server, created.code.expose()).await.unwrap();
    match staff_conn.request(ClientRequest::WhoAmI).await.unwrap() {
        ServerMessage::Identity(identity) => {
            assert_eq!(identity.role, Role::Staff);
            assert_eq!(identity.handle.as_str(), "nurse.kim");
        }
        other => panic!("{other:?}"),
    }
    staff_conn.setup_and_login(now_ms()).await.unwrap();
    // A taken handle cannot be invited again.
    let again = admin_conn
        .request(ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Patient,
            handle: medrelay_proto::Handle::new("nurse.kim").unwrap(),
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&again), Some(ErrorCode::HandleTaken));
    // Staff may invite patients but not admins.
    let up = staff_conn
        .request(ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Admin,
            handle: medrelay_proto::Handle::new("boss").unwrap(),
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&up), Some(ErrorCode::Forbidden));
    let patient = staff_conn
        .request(ClientRequest::CreateInvite(InviteSpec::NewUser {
            role: Role::Patient,
            handle: medrelay_proto::Handle::new("pat.one").unwrap(),
        }))
        .await
        .unwrap();
    assert!(matches!(patient, ServerMessage::InviteCreated(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_proof_is_bound_to_the_servers_origin() {
    use medrelay_proto::{auth_transcript, Binding, ChannelBinding, Origin};
    let server = Server::start().unwrap();
    let mut device = RawDevice::new();
    drop(
        device
            .enroll(&server, server.admin_invite.as_deref().unwrap())
            .await
            .unwrap(),
    );
    let device_id = device.device_id.unwrap();
    let proof = |client: &RawClient, origin: &str| {
        let origin = Origin::new(origin).unwrap();
        let transcript =
            auth_transcript(&client.nonce, &Binding::Origin(origin.clone()), &device_id);
        ClientRequest::Auth(medrelay_proto::AuthProof {
            device_id,
            binding: ChannelBinding::Origin(origin),
            signature: Signature::from_array(
                device.identity.sign_auth_transcript(&transcript).unwrap(),
            ),
        })
    };
    let ours = format!("https://localhost:{}", server.port);
    // Bound to the server's own origin: accepted.
    let mut client = RawClient::connect(&server).await.unwrap();
    let answer = client.request(proof(&client, &ours)).await.unwrap();
    assert!(matches!(answer, ServerMessage::AuthOk(_)), "{answer:?}");
    // Bound to another origin (a phishing page relaying the challenge): refused.
    let mut client = RawClient::connect(&server).await.unwrap();
    let answer = client
        .request(proof(&client, "https://clinic-login.example"))
        .await
        .unwrap();
    assert_eq!(error_code(&answer), Some(ErrorCode::AuthFailed));
    // An origin proof made for one connection, replayed on another: refused.
    let first = RawClient::connect(&server).await.unwrap();
    let replay = proof(&first, &ours);
    let mut second = RawClient::connect(&server).await.unwrap();
    assert_eq!(
        error_code(&second.request(replay).await.unwrap()),
        Some(ErrorCode::AuthFailed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_expires_after_seven_days() {
    let server = Server::start_with_test_clock().unwrap();
    server.advance_clock(7 * 24 * 60 * 60 * 1000).unwrap();
    let mut device = RawDevice::new();
    let error = device
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("InviteInvalid"), "{error}");
}
