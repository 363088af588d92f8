//! Proves: bad input gets a clear error and changes nothing, and the offending connection pays,
//! never the server: an oversize frame, garbage bytes, a text frame, a frame of the wrong kind
//! and a request out of place each get a clear error while other clients go on being served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{ClientRequest, ErrorCode, ServerMessage};
use medrelay_tests::{now_ms, RawClient, RawDevice, Server};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn expect_error(message: &ServerMessage, code: ErrorCode) -> String {
    match message {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, code, "{e:?}");
            assert!(!e.message.is_empty());
            e.message.clone()
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// An authenticated bystander who must keep being served throughout.
async fn bystander(server: &Server) -> RawClient {
    let mut admin = RawDevice::new();
    let mut conn = admin
        .enroll(server, server.admin_invite.as_deref().unwrap())
        .await
        .unwrap();
    conn.setup_and_login(now_ms()).await.unwrap();
    conn
}

async fn still_served(client: &mut RawClient) {
    match client.request(ClientRequest::WhoAmI).await.unwrap() {
        ServerMessage::Identity(_) => {}
        other => panic!("the bystander was not served: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_is_refused_with_a_clear_error_and_closes_only_that_connection() {
    let server = Server::start().unwrap();
    let mut other = bystander(&server).await;
    let mut client = RawClient::connect_with(
        &server,
        WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None),
    )
    .await
    .unwrap();
    let huge = vec![0u8; medrelay_proto::limits::MAX_FRAME_BYTES + 1];
    client.send_message(Message::binary(huge)).await.unwrap();
    let frames = client.closed_by_server().await.unwrap();
    let error = frames
        .iter()
        .find_map(|f| match &f.message {
            ServerMessage::Error(e) => Some(e.clone()),
            _ => None,
        })
        .expect("an error frame before the close");
    assert_eq!(error.code, ErrorCode::TooLarge);
    assert!(error.message.contains("at most"), "{}", error.message);
    still_served(&mut other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_a_text_frame_and_a_zero_request_id_get_clear_errors() {
    let server = Server::start().unwrap();
    let mut other = bystander(&server).await;
    let mut client = RawClient::connect(&server).await.unwrap();

    client
        .send_message(Message::binary(vec![0xff, 0x00, 0x13, 0x37, 0xde, 0xad]))
        .await
        .unwrap();
    let garbage = client.next_frame().await.unwrap();
    expect_error(&garbage.message, ErrorCode::Malformed);

    client
        .send_message(Message::text("{\"hello\": \"server\"}"))
        .await
        .unwrap();
    let text = client.next_frame().await.unwrap();
    let message = expect_error(&text.message, ErrorCode::Malformed);
    assert!(message.contains("binary"), "{message}");

    // A well-formed protobuf frame with request id 0 (reserved for pushes).
    let zero = medrelay_proto::pb::ClientFrame {
        version: medrelay_proto::limits::PROTOCOL_VERSION,
        request_id: 0,
        body: Some(medrelay_proto::pb::client_frame::Body::Ping(
            medrelay_proto::pb::Ping {},
        )),
    };
    client
        .send_message(Message::binary(prost::Message::encode_to_vec(&zero)))
        .await
        .unwrap();
    expect_error(
        &client.next_frame().await.unwrap().message,
        ErrorCode::Malformed,
    );

    // A frame from a future protocol version.
    let future = medrelay_proto::pb::ClientFrame {
        version: 99,
        request_id: 5,
        body: Some(medrelay_proto::pb::client_frame::Body::Ping(
            medrelay_proto::pb::Ping {},
        )),
    };
    client
        .send_message(Message::binary(prost::Message::encode_to_vec(&future)))
        .await
        .unwrap();
    let answer = client.next_frame().await.unwrap();
    assert_eq!(answer.request_id, 5);
    expect_error(&answer.message, ErrorCode::UnsupportedVersion);

    // The connection itself still works after each error.
    assert!(matches!(
        client.request(ClientRequest::Ping).await.unwrap(),
        ServerMessage::Pong { .. }
    ));
    still_served(&mut other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_the_wrong_kind_is_refused() {
    let server = Server::start().unwrap();
    let mut other = bystander(&server).await;

    // A server frame (a Delivery) sent by a client does not decode as a client frame.
    let mut client = RawClient::connect(&server).await.unwrap();
    let delivery = medrelay_proto::encode_server_frame(&medrelay_proto::ServerFrame::push(
        ServerMessage::Pong { server_time_ms: 1 },
    ));
    client
        .send_message(Message::binary(delivery))
        .await
        .unwrap();
    let answer = client.next_frame().await.unwrap();
    assert!(
        matches!(answer.message, ServerMessage::Error(_)),
        "{answer:?}"
    );

    // Enrolling again on an authenticated connection is out of place.
    let mut device = RawDevice::new();
    let invite = match other
        .request(ClientRequest::CreateInvite(
            medrelay_proto::InviteSpec::NewDevice,
        ))
        .await
        .unwrap()
    {
        ServerMessage::InviteCreated(created) => created.code,
        other => panic!("{other:?}"),
    };
    let mut authed = device.enroll(&server, invite.expose()).await.unwrap();
    let again = device.enroll_request(&authed, "0000-0000").unwrap();
    let answer = authed.request(again).await.unwrap();
    expect_error(&answer, ErrorCode::UnexpectedFrame);
    still_served(&mut authed).await;
    still_served(&mut other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_frames_closes_that_connection_only() {
    let server = Server::start().unwrap();
    let mut other = bystander(&server).await;
    let mut client = RawClient::connect(&server).await.unwrap();
    for _ in 0..64 {
        if client
            .send_message(Message::binary(vec![0xff; 8]))
            .await
            .is_err()
        {
            break;
        }
    }
    client.closed_by_server().await.unwrap();
    still_served(&mut other).await;
}
