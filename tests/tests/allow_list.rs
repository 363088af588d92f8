//! Proves: per-org, per-role IP allow-lists refuse a connection from outside before
//! authentication completes (127.0.0.2 stands for another network on loopback), while other
//! roles and allowed addresses go on; an admin cannot lock themselves out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::Ipv4Addr;

use medrelay_proto::{Cidr, ClientRequest, ErrorCode, Role, RoleAllowList, ServerMessage};
use medrelay_tests::{now_ms, RawClient, RawClinic, RawDevice, Server};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const OTHER_NETWORK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn set_list(clinic: &mut RawClinic, role: Role, cidrs: &[&str]) -> ServerMessage {
    clinic
        .admin
        .conn
        .request(ClientRequest::SetAllowList(RoleAllowList {
            role,
            cidrs: cidrs.iter().map(|c| c.parse::<Cidr>().unwrap()).collect(),
        }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_from_outside_the_allow_list_is_refused_before_authentication() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let answer = set_list(
        &mut clinic,
        Role::Patient,
        &["127.0.0.1/32", "10.20.0.0/16"],
    )
    .await;
    assert!(matches!(answer, ServerMessage::Done), "{answer:?}");

    // The patient from another network: refused, with a clear error, and closed.
    let mut outside = RawClient::connect_from(&server, WebSocketConfig::default(), OTHER_NETWORK)
        .await
        .unwrap();
    let proof = clinic.patient.device.auth_request(&outside).unwrap();
    match outside.request(proof).await.unwrap() {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert!(e.message.contains("network"), "{}", e.message);
        }
        other => panic!("authenticated from outside the allow-list: {other:?}"),
    }
    outside.closed_by_server().await.unwrap();
    // From an allowed address: in.
    clinic
        .patient
        .device
        .connect_from(&server, Ipv4Addr::LOCALHOST)
        .await
        .unwrap();
    // Staff have no list: they connect from anywhere (and their login carries over).
    let mut staff = clinic
        .staff
        .device
        .connect_from(&server, OTHER_NETWORK)
        .await
        .unwrap();

    // Enrolment from outside is refused too, and the invite stays usable from inside.
    let code = staff.invite(Role::Patient, "bob").await.unwrap();
    let mut bob = RawDevice::new();
    let mut outside = RawClient::connect_from(&server, WebSocketConfig::default(), OTHER_NETWORK)
        .await
        .unwrap();
    let enroll = bob.enroll_request(&outside, &code).unwrap();
    assert!(matches!(
        outside.request(enroll).await.unwrap(),
        ServerMessage::Error(e) if e.code == ErrorCode::Forbidden
    ));
    bob.enroll(&server, &code).await.unwrap();

    // Clearing the list lets the patient in from anywhere again.
    set_list(&mut clinic, Role::Patient, &[]).await;
    clinic
        .patient
        .device
        .connect_from(&server, OTHER_NETWORK)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cannot_lock_out_the_network_they_use() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    let answer = set_list(&mut clinic, Role::Admin, &["10.0.0.0/8"]).await;
    assert!(
        matches!(&answer, ServerMessage::Error(e) if e.code == ErrorCode::Forbidden && e.message.contains("lock you out")),
        "{answer:?}"
    );
    let answer = set_list(&mut clinic, Role::Admin, &["127.0.0.0/8", "::1/128"]).await;
    assert!(matches!(answer, ServerMessage::Done), "{answer:?}");
    // Staff cannot change policy at all.
    let answer = clinic
        .staff
        .conn
        .request(ClientRequest::SetAllowList(RoleAllowList {
            role: Role::Patient,
            cidrs: Vec::new(),
        }))
        .await
        .unwrap();
    assert!(matches!(answer, ServerMessage::Error(e) if e.code == ErrorCode::Forbidden));
}
