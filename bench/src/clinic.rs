//! Setting up a clinic on a fresh relay over the real protocol: an admin and staff who log in
//! with password and TOTP, patients in their care who accept the consent text, one care
//! conversation per patient.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use medrelay_proto::{
    ClientRequest, ConversationId, DeviceId, Handle, InviteSpec, OpenConversation, Role,
    ServerMessage,
};
use medrelay_sdk::DeviceIdentity;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{expect_ok, setup_and_login, source_ip, Conn, Target};

/// Setup connections opened at once.
const SETUP_CONCURRENCY: usize = 8;
/// Requests pipelined on one connection before reading answers (below the server's
/// `MAX_PENDING_ACKS_PER_CONNECTION`).
const PIPELINE_CHUNK: usize = 200;

/// An enrolled device and whom it belongs to.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its keys.
    pub identity: Arc<DeviceIdentity>,
    /// Its id.
    pub id: DeviceId,
    /// The loopback address it connects from.
    pub source: Ipv4Addr,
}

impl Device {
    /// Opens an authenticated connection.
    pub async fn connect(&self, target: &Target, small: bool) -> anyhow::Result<Conn> {
        let mut conn = Conn::connect(target, self.source, small).await?;
        conn.authenticate(&self.identity, self.id).await?;
        Ok(conn)
    }
}

/// A patient and the staff member caring for them, with their conversation.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The patient's device (the sender in the 1:1 scenario).
    pub patient: Device,
    /// The staff member's device (the receiver).
    pub staff: Device,
    /// The patient's care conversation.
    pub conversation: ConversationId,
}

/// The clinic.
#[derive(Debug)]
pub struct Clinic {
    /// Patient-staff pairs.
    pub pairs: Vec<Pair>,
}

fn handle(text: &str) -> anyhow::Result<Handle> {
    Ok(Handle::new(text)?)
}

/// Creates invites for new users, pipelined.
pub async fn invites(
    conn: &mut Conn,
    role: Role,
    handles: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut codes = Vec::with_capacity(handles.len());
    for chunk in handles.chunks(PIPELINE_CHUNK) {
        let requests = chunk
            .iter()
            .map(|h| {
                Ok(ClientRequest::CreateInvite(InviteSpec::NewUser {
                    role,
                    handle: handle(h)?,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for answer in conn.pipeline(requests).await? {
            match answer {
                ServerMessage::InviteCreated(created) => {
                    codes.push(created.code.expose().to_owned())
                }
                other => bail!("invite refused: {other:?}"),
            }
        }
    }
    Ok(codes)
}

async fn enroll(target: &Target, code: &str, source: Ipv4Addr) -> anyhow::Result<(Device, Conn)> {
    let identity = Arc::new(DeviceIdentity::generate(&mut rand_core::OsRng, 0));
    let mut conn = Conn::connect(target, source, true).await?;
    let id = conn.enroll(&identity, code).await?;
    Ok((
        Device {
            identity,
            id,
            source,
        },
        conn,
    ))
}

/// Sets up the admin, `pairs` staff members each with one patient in their care, and the
/// patients' conversations.
pub async fn setup(target: &Target, admin_invite: &str, pairs: usize) -> anyhow::Result<Clinic> {
    let now = medrelay_tests::now_ms();
    let (_admin, mut admin_conn) = enroll(target, admin_invite, source_ip(0)).await?;
    setup_and_login(&mut admin_conn, now).await?;
    let staff_handles: Vec<String> = (0..pairs).map(|i| format!("staff-{i:04}")).collect();
    let staff_codes = invites(&mut admin_conn, Role::Staff, &staff_handles).await?;

    let slots = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (i, code) in staff_codes.into_iter().enumerate() {
        let target = target.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            // Staff on 127.0.1.x, patients on 127.0.2.x and beyond.
            let (staff, mut conn) = enroll(&target, &code, source_ip(1 + i)).await?;
            setup_and_login(&mut conn, now).await?;
            let patient_code = invites(&mut conn, Role::Patient, &[format!("patient-{i:04}")])
                .await?
                .pop()
                .ok_or_else(|| anyhow!("no invite"))?;
            conn.close().await;
            let (patient, mut conn) =
                enroll(&target, &patient_code, source_ip(1 + pairs + i)).await?;
            let text = conn
                .auth_ok
                .as_ref()
                .and_then(|ok| ok.consent_text.clone())
                .ok_or_else(|| anyhow!("no consent text shown to a patient"))?;
            let answer = conn
                .request(ClientRequest::AcceptConsent {
                    text_sha256: text.sha256(),
                })
                .await?;
            expect_ok(&answer, "consent")?;
            let answer = conn
                .request(ClientRequest::OpenConversation(OpenConversation {
                    handles: vec![handle(&format!("staff-{i:04}"))?],
                }))
                .await?;
            let ServerMessage::Conversation(conversation) = answer else {
                bail!("open conversation refused: {answer:?}");
            };
            conn.close().await;
            Ok::<_, anyhow::Error>((
                i,
                Pair {
                    patient,
                    staff,
                    conversation: conversation.id,
                },
            ))
        });
    }
    let mut made = Vec::with_capacity(pairs);
    while let Some(done) = tasks.join_next().await {
        made.push(done??);
    }
    made.sort_by_key(|(i, _)| *i);
    admin_conn.close().await;
    Ok(Clinic {
        pairs: made.into_iter().map(|(_, p)| p).collect(),
    })
}

/// The devices a send in `conversation` must carry envelopes for, as `who` sees them.
pub async fn recipients(
    conn: &mut Conn,
    conversation: ConversationId,
    me: DeviceId,
) -> anyhow::Result<Vec<DeviceId>> {
    match conn
        .request(ClientRequest::GetConversation {
            conversation_id: conversation,
        })
        .await?
    {
        ServerMessage::Conversation(c) => Ok(c
            .members
            .iter()
            .flat_map(|m| m.devices.iter().copied())
            .filter(|d| *d != me)
            .collect()),
        other => bail!("get conversation refused: {other:?}"),
    }
}
