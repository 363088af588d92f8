//! Proves: each one-time prekey is handed out exactly once, also under concurrent fetches from
//! several connections, and the owner is told when its supply runs low.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use medrelay_proto::{ClientRequest, FetchPrekeys, Role, ServerMessage};
use medrelay_tests::{now_ms, RawClinic, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetches_never_share_a_one_time_prekey() {
    let server = Server::start().unwrap();
    let mut clinic = RawClinic::new(&server, now_ms()).await.unwrap();
    // Eight staff members on the patient's care team fetch the patient's bundle at once.
    let mut staff = Vec::new();
    for i in 0..8 {
        let code = clinic
            .admin
            .conn
            .invite(Role::Staff, &format!("nurse.{i}"))
            .await
            .unwrap();
        staff.push(
            RawClinic::staff_member(&server, &code, now_ms())
                .await
                .unwrap(),
        );
    }
    let mut ids = vec![clinic.staff.user_id];
    ids.extend(staff.iter().map(|s| s.user_id));
    let answer = clinic
        .admin
        .conn
        .request(ClientRequest::AssignCare {
            patient_user_id: clinic.patient.user_id,
            staff_user_ids: ids,
            team_ids: Vec::new(),
        })
        .await
        .unwrap();
    assert!(matches!(answer, ServerMessage::Done), "{answer:?}");

    let patient = clinic.patient.user_id;
    let mut tasks = Vec::new();
    for mut person in staff {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                match person
                    .conn
                    .request(ClientRequest::FetchPrekeys(FetchPrekeys {
                        user_ids: vec![patient],
                        devices: Vec::new(),
                    }))
                    .await
                    .unwrap()
                {
                    ServerMessage::PrekeyBundles(bundles) => got.extend(
                        bundles
                            .iter()
                            .filter_map(|b| b.one_time_prekey.map(|k| k.id)),
                    ),
                    other => panic!("{other:?}"),
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<u32> = all.iter().copied().collect();
    assert_eq!(all.len(), 80, "every fetch got a one-time prekey");
    assert_eq!(
        unique.len(),
        all.len(),
        "a one-time prekey was handed out twice"
    );

    // The patient's device was told its supply is running low (100 uploaded, 80 taken).
    let mut low = None;
    while let Some(frame) = clinic
        .patient
        .conn
        .next_frame_within(std::time::Duration::from_millis(800))
        .await
        .unwrap()
    {
        if let ServerMessage::PrekeysLow {
            one_time_prekeys_remaining,
        } = frame.message
        {
            low = Some(one_time_prekeys_remaining);
        }
    }
    assert_eq!(low, Some(20));
}
