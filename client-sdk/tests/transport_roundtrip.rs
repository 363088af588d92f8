//! The transport against an in-process relay that speaks the real protocol over real TLS 1.3
//! WebSockets (a certificate from `medrelay-certs`): enrolment and authentication bound to the
//! TLS exporter (the relay verifies every proof against its own exporter value), prekey
//! fetches, client-side fan-out to several devices, `DEVICES_MISMATCH` re-planning, idempotent
//! resends, delivery, ack, and reconnection after the relay drops every connection.
//!
//! The relay here is deliberately small (one conversation holding every user); the end-to-end
//! tests against the real `medrelay` binary live in the workspace's `tests/` crate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::result_large_err
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signature as DalekSignature, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use medrelay_proto::{
    auth_transcript, decode_client_frame_bytes, encode_server_frame, enroll_transcript, AuthOk,
    Binding, Challenge, ClientMessageId, ClientRequest, ConsentState, ConsentText, Conversation,
    ConversationId, Delivery, DeviceId, DeviceKeys, ErrorCode, Handle, Identity, InviteCode,
    InviteCreated, InviteSpec, Member, MessageId, OneTimePrekey, OrgId, Password, PrekeyBundle,
    Role, SecondFactor, SendAccepted, ServerFrame, ServerMessage, TotpCode, UserId, WireError,
    TLS_EXPORTER_LABEL,
};
use medrelay_sdk::transport::{
    Client, ClientOptions, Incoming, ServerConfig, ServerUrl, TransportError,
};
use medrelay_sdk::MemoryKeyStore;
use rand_core::OsRng;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

struct DeviceRecord {
    user: UserId,
    keys: DeviceKeys,
    one_time: Vec<OneTimePrekey>,
}

struct UserRecord {
    handle: Handle,
    role: Role,
}

#[derive(Default)]
struct State {
    invites: HashMap<String, InviteSpecOrDevice>,
    users: HashMap<UserId, UserRecord>,
    devices: HashMap<DeviceId, DeviceRecord>,
    mailboxes: HashMap<DeviceId, Vec<Delivery>>,
    sends: HashMap<(DeviceId, ClientMessageId), (MessageId, u64)>,
    online: HashMap<DeviceId, mpsc::UnboundedSender<Option<ServerFrame>>>,
    /// When set, the next `get_conversation` leaves this device out (a stale view).
    hide_once: Option<DeviceId>,
    mismatches: u32,
    clock: u64,
    /// Staff must log in (password and TOTP) before anything but whoami, login, logout.
    staff_login: bool,
    /// Staff devices with a live login session.
    logged_in: HashSet<DeviceId>,
    /// Requests refused as UNAUTHENTICATED (the client should not have sent them).
    unauthenticated: u32,
    /// Patients who accepted the consent text.
    consented: HashSet<UserId>,
    /// Every delivery made, with its recipient device (for replaying them).
    log: Vec<(DeviceId, Delivery)>,
    /// When set, the next send is refused with `DEVICES_MISMATCH` naming this device stale
    /// (the sender deletes its session with it and starts a new one).
    stale_once: Option<DeviceId>,
    /// When set, the next send's deliveries name this user as the sender (a lying server).
    relabel_once: Option<UserId>,
}

const CONSENT: &str = "Messages about your care.\nNot for emergencies.";
const PASSWORD: &str = "correct horse battery staple";
const TOTP: &str = "123456";

impl State {
    fn needs_login(&self, device: DeviceId) -> bool {
        let role = self.users[&self.devices[&device].user].role;
        self.staff_login && role != Role::Patient && !self.logged_in.contains(&device)
    }
}

enum InviteSpecOrDevice {
    User(Role, Handle),
    Device(UserId),
}

const ORG: OrgId = OrgId::from_array([7; 16]);
const CONVERSATION: ConversationId = ConversationId::from_array([8; 16]);

impl State {
    fn conversation(&mut self) -> Conversation {
        let hide = self.hide_once.take();
        let mut members: Vec<Member> = self
            .users
            .iter()
            .map(|(id, u)| Member {
                user_id: *id,
                handle: u.handle.clone(),
                role: u.role,
                devices: self
                    .devices
                    .iter()
                    .filter(|(d, r)| r.user == *id && Some(**d) != hide)
                    .map(|(d, _)| *d)
                    .collect(),
                consent: if u.role == Role::Patient {
                    ConsentState::Accepted
                } else {
                    ConsentState::NotApplicable
                },
            })
            .collect();
        members.sort_by_key(|m| m.user_id);
        Conversation {
            id: CONVERSATION,
            members,
        }
    }

    fn bundle(&mut self, device: DeviceId) -> PrekeyBundle {
        let d = self.devices.get_mut(&device).unwrap();
        PrekeyBundle {
            user_id: d.user,
            device_id: device,
            identity: d.keys.identity.clone(),
            signed_prekey: d.keys.signed_prekey.clone(),
            pq_prekey: d.keys.pq_prekey.clone(),
            one_time_prekey: d.one_time.pop(),
        }
    }
}

fn verify(
    key: &medrelay_proto::Ed25519PublicKey,
    message: &[u8],
    sig: &medrelay_proto::Signature,
) -> bool {
    VerifyingKey::from_bytes(key.as_bytes())
        .map(|k| {
            k.verify_strict(message, &DalekSignature::from_bytes(sig.as_bytes()))
                .is_ok()
        })
        .unwrap_or(false)
}

fn error(code: ErrorCode, message: &str) -> ServerMessage {
    ServerMessage::Error(WireError::new(code, message))
}

/// Handles one authenticated request; may queue deliveries for other devices.
/// Queues a delivery for a device and pushes it if the device is online.
fn deliver(state: &mut State, recipient: DeviceId, delivery: Delivery) {
    state
        .mailboxes
        .entry(recipient)
        .or_default()
        .push(delivery.clone());
    if let Some(tx) = state.online.get(&recipient) {
        let _ = tx.send(Some(ServerFrame::push(ServerMessage::Delivery(delivery))));
    }
}

fn handle(state: &mut State, me: DeviceId, request: ClientRequest) -> ServerMessage {
    let my_user = state.devices[&me].user;
    match request {
        ClientRequest::WhoAmI => {
            let u = &state.users[&my_user];
            ServerMessage::Identity(Identity {
                org_id: ORG,
                user_id: my_user,
                device_id: me,
                role: u.role,
                handle: u.handle.clone(),
                org_name: "Test Clinic".into(),
            })
        }
        ClientRequest::CreateInvite(spec) => {
            let code = format!("code{}", state.invites.len() + 1);
            let entry = match spec {
                InviteSpec::NewUser { role, handle } => InviteSpecOrDevice::User(role, handle),
                InviteSpec::NewDevice => InviteSpecOrDevice::Device(my_user),
            };
            state.invites.insert(code.clone(), entry);
            ServerMessage::InviteCreated(InviteCreated {
                code: InviteCode::new(code).unwrap(),
                expires_at_ms: 1,
            })
        }
        ClientRequest::UploadPrekeys(upload) => {
            let d = state.devices.get_mut(&me).unwrap();
            d.one_time.extend(upload.one_time_prekeys);
            ServerMessage::PrekeysUploaded {
                one_time_prekeys_remaining: d.one_time.len() as u32,
            }
        }
        ClientRequest::OpenConversation(_) | ClientRequest::GetConversation { .. } => {
            ServerMessage::Conversation(state.conversation())
        }
        ClientRequest::ListConversations(_) => {
            ServerMessage::ConversationList(medrelay_proto::ConversationList {
                conversations: vec![state.conversation()],
                more: false,
            })
        }
        ClientRequest::FetchPrekeys(fetch) => {
            let wanted: Vec<DeviceId> = state
                .devices
                .iter()
                .filter(|(d, r)| {
                    **d != me
                        && fetch.user_ids.contains(&r.user)
                        && (fetch.devices.is_empty() || fetch.devices.contains(d))
                })
                .map(|(d, _)| *d)
                .collect();
            ServerMessage::PrekeyBundles(wanted.into_iter().map(|d| state.bundle(d)).collect())
        }
        ClientRequest::Send(send) => {
            if let Some((message_id, t)) = state.sends.get(&(me, send.client_message_id)) {
                return ServerMessage::SendAccepted(SendAccepted {
                    message_id: *message_id,
                    server_time_ms: *t,
                    duplicate: true,
                });
            }
            let expected: HashSet<DeviceId> = state
                .devices
                .keys()
                .filter(|d| **d != me)
                .copied()
                .collect();
            let given: HashSet<DeviceId> =
                send.envelopes.iter().map(|e| e.recipient_device).collect();
            if let Some(stale) = state.stale_once.take() {
                state.mismatches += 1;
                return ServerMessage::Error(WireError::devices_mismatch(vec![], vec![stale]));
            }
            if expected != given {
                state.mismatches += 1;
                return ServerMessage::Error(WireError::devices_mismatch(
                    expected.difference(&given).copied().collect(),
                    given.difference(&expected).copied().collect(),
                ));
            }
            state.clock += 1;
            let message_id = MessageId::random(&mut OsRng);
            state
                .sends
                .insert((me, send.client_message_id), (message_id, state.clock));
            let sender_user_id = state.relabel_once.take().unwrap_or(my_user);
            for envelope in send.envelopes {
                let delivery = Delivery {
                    message_id,
                    conversation_id: send.conversation_id,
                    sender_user_id,
                    sender_device_id: me,
                    server_time_ms: state.clock,
                    ciphertext: envelope.ciphertext,
                };
                state
                    .log
                    .push((envelope.recipient_device, delivery.clone()));
                deliver(state, envelope.recipient_device, delivery);
            }
            ServerMessage::SendAccepted(SendAccepted {
                message_id,
                server_time_ms: state.clock,
                duplicate: false,
            })
        }
        ClientRequest::Ack(ack) => {
            let mailbox = state.mailboxes.entry(me).or_default();
            let before = mailbox.len();
            mailbox.retain(|d| !ack.message_ids.contains(&d.message_id));
            ServerMessage::Acked {
                count: (before - mailbox.len()) as u32,
            }
        }
        ClientRequest::Ping => ServerMessage::Pong { server_time_ms: 0 },
        ClientRequest::Auth(_) | ClientRequest::Enroll(_) => {
            error(ErrorCode::UnexpectedFrame, "already authenticated")
        }
        ClientRequest::Login {
            password,
            second_factor,
        } => {
            let right = password.expose() == PASSWORD
                && matches!(&second_factor, SecondFactor::Totp(c) if c.expose() == TOTP);
            if !right {
                return error(ErrorCode::AuthFailed, "wrong password or code");
            }
            state.logged_in.insert(me);
            ServerMessage::LoginOk {
                idle_timeout_ms: 60_000,
                session_expires_at_ms: 99,
            }
        }
        ClientRequest::Logout => {
            state.logged_in.remove(&me);
            ServerMessage::Done
        }
        ClientRequest::AcceptConsent { text_sha256 } => {
            if text_sha256 != ConsentText::new(CONSENT).unwrap().sha256() {
                return error(ErrorCode::Forbidden, "the consent text has changed");
            }
            state.consented.insert(my_user);
            ServerMessage::Done
        }
        other => error(
            ErrorCode::Malformed,
            &format!("{} is not part of this test relay", other.name()),
        ),
    }
}

/// Checks a proof against this connection's nonce and exporter; enrols if asked.
fn authenticate(
    state: &mut State,
    nonce: &[u8; 32],
    exporter: [u8; 32],
    request: ClientRequest,
) -> Result<DeviceId, ServerMessage> {
    let binding = Binding::TlsExporter(exporter);
    match request {
        ClientRequest::Auth(proof) => {
            let device = state
                .devices
                .get(&proof.device_id)
                .ok_or_else(|| error(ErrorCode::AuthFailed, "no"))?;
            let transcript = auth_transcript(nonce, &binding, &proof.device_id);
            if !verify(
                &device.keys.identity.signing_key,
                &transcript,
                &proof.signature,
            ) {
                return Err(error(ErrorCode::AuthFailed, "bad proof"));
            }
            Ok(proof.device_id)
        }
        ClientRequest::Enroll(enroll) => {
            let transcript = enroll_transcript(nonce, &binding, &enroll.keys.identity.signing_key);
            if !verify(
                &enroll.keys.identity.signing_key,
                &transcript,
                &enroll.signature,
            ) {
                return Err(error(ErrorCode::AuthFailed, "bad proof"));
            }
            let invite = state
                .invites
                .remove(enroll.invite_code.expose())
                .ok_or_else(|| error(ErrorCode::InviteInvalid, "unknown invite"))?;
            let user = match invite {
                InviteSpecOrDevice::User(role, handle) => {
                    let id = UserId::random(&mut OsRng);
                    state.users.insert(id, UserRecord { handle, role });
                    id
                }
                InviteSpecOrDevice::Device(user) => user,
            };
            let device = DeviceId::random(&mut OsRng);
            let one_time = enroll.keys.one_time_prekeys.clone();
            state.devices.insert(
                device,
                DeviceRecord {
                    user,
                    keys: enroll.keys,
                    one_time,
                },
            );
            Ok(device)
        }
        _ => Err(error(ErrorCode::Unauthenticated, "auth first")),
    }
}

async fn serve_connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    state: Arc<Mutex<State>>,
) {
    let exporter = stream
        .get_ref()
        .1
        .export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)
        .unwrap();
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let nonce: [u8; 32] = rand_core::RngCore::next_u64(&mut OsRng)
        .to_be_bytes()
        .repeat(4)
        .try_into()
        .unwrap();
    let send = |frame: ServerFrame| Message::binary(encode_server_frame(&frame));
    ws.send(send(ServerFrame::push(ServerMessage::Challenge(
        Challenge {
            nonce,
            server_time_ms: 0,
        },
    ))))
    .await
    .unwrap();
    let Some(Ok(Message::Binary(first))) = ws.next().await else {
        return;
    };
    let frame = decode_client_frame_bytes(first).unwrap();
    let result = authenticate(&mut state.lock().unwrap(), &nonce, exporter, frame.request);
    let me = match result {
        Ok(device) => device,
        Err(refusal) => {
            let _ = ws
                .send(send(ServerFrame::reply(frame.request_id, refusal)))
                .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (auth_ok, backlog) = {
        let mut s = state.lock().unwrap();
        s.online.insert(me, tx);
        let user = s.devices[&me].user;
        let u = &s.users[&user];
        let ok = AuthOk {
            org_id: ORG,
            user_id: user,
            device_id: me,
            role: u.role,
            handle: u.handle.clone(),
            one_time_prekeys_remaining: s.devices[&me].one_time.len() as u32,
            archive_public_key: None,
            credentials_required: false,
            login_required: false,
            consent_required: u.role == Role::Patient && !s.consented.contains(&user),
            consent_text: (u.role == Role::Patient).then(|| ConsentText::new(CONSENT).unwrap()),
        };
        let needs_login = s.needs_login(me);
        let ok = AuthOk {
            login_required: needs_login,
            ..ok
        };
        (ok, s.mailboxes.get(&me).cloned().unwrap_or_default())
    };
    ws.send(send(ServerFrame::reply(
        frame.request_id,
        ServerMessage::AuthOk(auth_ok),
    )))
    .await
    .unwrap();
    for d in backlog {
        ws.send(send(ServerFrame::push(ServerMessage::Delivery(d))))
            .await
            .unwrap();
    }
    loop {
        tokio::select! {
            pushed = rx.recv() => match pushed {
                Some(Some(frame)) => { if ws.send(send(frame)).await.is_err() { return; } }
                // Told to drop the connection.
                _ => return,
            },
            incoming = ws.next() => {
                let Some(Ok(Message::Binary(bytes))) = incoming else { return };
                let frame = decode_client_frame_bytes(bytes).unwrap();
                let answer = {
                    let mut s = state.lock().unwrap();
                    let before_login = matches!(
                        frame.request,
                        ClientRequest::Ping
                            | ClientRequest::WhoAmI
                            | ClientRequest::Login { .. }
                            | ClientRequest::Logout
                            | ClientRequest::SetupCredentials { .. }
                    );
                    if s.needs_login(me) && !before_login {
                        s.unauthenticated += 1;
                        error(ErrorCode::Unauthenticated, "log in first")
                    } else {
                        handle(&mut s, me, frame.request)
                    }
                };
                if ws.send(send(ServerFrame::reply(frame.request_id, answer))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Starts the relay; returns its URL and CA PEM.
async fn start_relay(state: Arc<Mutex<State>>) -> ServerConfig {
    let ca = medrelay_certs::DevCa::generate().unwrap();
    let cert = ca
        .issue_server_cert(&medrelay_certs::default_hostnames())
        .unwrap();
    let certs = rustls_pemfile::certs(&mut cert.cert_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut cert.key_pem().expose_secret().as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve_connection(tls, state).await;
                }
            });
        }
    });
    ServerConfig {
        url: ServerUrl::parse(&format!("wss://localhost:{port}")).unwrap(),
        ca_pem: ca.cert_pem().to_owned(),
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

async fn enroll(server: &ServerConfig, code: &str) -> Client<MemoryKeyStore> {
    Client::enroll(
        server.clone(),
        options(),
        MemoryKeyStore::new(),
        InviteCode::new(code).unwrap(),
        medrelay_proto::DeviceLabel::new("test").unwrap(),
    )
    .await
    .unwrap()
}

async fn expect_message(
    client: &mut Client<MemoryKeyStore>,
) -> medrelay_sdk::transport::ReceivedMessage {
    match client.recv(Duration::from_secs(5)).await.unwrap() {
        Some(Incoming::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn enrol_send_receive_ack_mismatch_duplicate_and_reconnect() {
    let state = Arc::new(Mutex::new(State::default()));
    state.lock().unwrap().invites.insert(
        "first".into(),
        InviteSpecOrDevice::User(Role::Staff, Handle::new("dr.jones").unwrap()),
    );
    let server = start_relay(state.clone()).await;

    let mut staff = enroll(&server, "first").await;
    assert_eq!(staff.whoami().await.unwrap().handle.as_str(), "dr.jones");
    let invite = staff
        .create_invite(InviteSpec::NewUser {
            role: Role::Patient,
            handle: Handle::new("pat.smith").unwrap(),
        })
        .await
        .unwrap();
    let mut patient = enroll(&server, invite.code.expose()).await;
    let device_invite = staff.create_invite(InviteSpec::NewDevice).await.unwrap();
    let mut staff_phone = enroll(&server, device_invite.code.expose()).await;

    // Patient to staff: fan-out to both staff devices, with new sessions for each.
    let conversation = patient
        .open_conversation(&[Handle::new("dr.jones").unwrap()])
        .await
        .unwrap();
    let receipt = patient
        .send_text(conversation.id, "hello doctor", None)
        .await
        .unwrap();
    assert!(!receipt.duplicate);
    for device in [&mut staff, &mut staff_phone] {
        let m = expect_message(device).await;
        assert_eq!(m.text, "hello doctor");
        assert_eq!(m.message_id, receipt.message_id);
        assert_eq!(
            m.from_handle.as_ref().map(Handle::as_str),
            Some("pat.smith")
        );
        assert_eq!(device.ack(&[m.message_id]).await.unwrap(), 1);
    }

    // Resending with the same client message id is idempotent.
    let again = patient
        .send_text(
            conversation.id,
            "hello doctor",
            Some(receipt.client_message_id),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, receipt.message_id);

    // A stale conversation view: the send leaves a device out, the relay answers
    // DEVICES_MISMATCH, the client re-plans and succeeds.
    let phone_id = staff_phone.profile().device_id;
    state.lock().unwrap().hide_once = Some(phone_id);
    let reply = staff
        .send_text(conversation.id, "results are fine", None)
        .await
        .unwrap();
    assert_eq!(state.lock().unwrap().mismatches, 1);
    let m = expect_message(&mut patient).await;
    assert_eq!(
        (m.text.as_str(), m.message_id),
        ("results are fine", reply.message_id)
    );
    // The staff's other device gets its copy too (its own user's message).
    let copy = expect_message(&mut staff_phone).await;
    assert_eq!(copy.text, "results are fine");
    assert_eq!(
        copy.from_handle.as_ref().map(Handle::as_str),
        Some("dr.jones")
    );
    // Not acked yet: after a reconnection it is delivered again and returned again (pending).
    patient.ack(&[m.message_id]).await.unwrap();

    // The relay drops every connection; the clients reconnect on their next operation.
    for tx in state.lock().unwrap().online.values() {
        let _ = tx.send(None);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = patient
        .send_text(conversation.id, "after the drop", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    assert_eq!(
        (m.text.as_str(), m.message_id),
        ("after the drop", r.message_id)
    );
    staff.ack(&[m.message_id]).await.unwrap();

    // The phone never acked its copy: redelivered after reconnecting, returned again.
    let again = expect_message(&mut staff_phone).await;
    assert_eq!(again.message_id, copy.message_id);
    staff_phone.ack(&[again.message_id]).await.unwrap();
    let next = expect_message(&mut staff_phone).await;
    assert_eq!(next.text, "after the drop");
    staff_phone.ack(&[next.message_id]).await.unwrap();
    assert!(staff_phone
        .recv(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());

    // Safety numbers agree from both sides.
    let patient_user = patient.profile().user_id;
    let staff_user = staff.profile().user_id;
    let from_staff = staff.safety_numbers(patient_user).await.unwrap();
    let from_patient = patient.safety_numbers(staff_user).await.unwrap();
    let staff_device = staff.profile().device_id;
    let theirs = from_patient
        .iter()
        .find(|n| n.device_id == staff_device)
        .unwrap();
    assert_eq!(from_staff.len(), 1);
    assert_eq!(from_staff[0].number, theirs.number);
}

#[tokio::test]
async fn refusals_carry_the_servers_code() {
    let state = Arc::new(Mutex::new(State::default()));
    let server = start_relay(state).await;
    let err = Client::enroll(
        server,
        options(),
        MemoryKeyStore::new(),
        InviteCode::new("nope").unwrap(),
        medrelay_proto::DeviceLabel::new("").unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InviteInvalid), "{err}");
}

#[tokio::test]
async fn a_wrong_ca_fails_the_tls_handshake() {
    let state = Arc::new(Mutex::new(State::default()));
    let mut server = start_relay(state).await;
    server.ca_pem = medrelay_certs::DevCa::generate()
        .unwrap()
        .cert_pem()
        .to_owned();
    let err = Client::enroll(
        server,
        options(),
        MemoryKeyStore::new(),
        InviteCode::new("x").unwrap(),
        medrelay_proto::DeviceLabel::new("").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");
}

/// Pushes LOGGED_OFF to a device, then drops its connection, as the server does.
fn log_off(state: &Mutex<State>, device: DeviceId, end_session: bool) {
    let mut s = state.lock().unwrap();
    if end_session {
        s.logged_in.remove(&device);
    }
    let tx = s.online[&device].clone();
    let notice = WireError::new(ErrorCode::LoggedOff, "you were logged off");
    let _ = tx.send(Some(ServerFrame::push(ServerMessage::Error(notice))));
    let _ = tx.send(None);
}

#[tokio::test]
async fn staff_login_consent_and_logoff_end_without_looping() {
    let state = Arc::new(Mutex::new(State {
        staff_login: true,
        ..State::default()
    }));
    state.lock().unwrap().invites.insert(
        "first".into(),
        InviteSpecOrDevice::User(Role::Staff, Handle::new("dr.jones").unwrap()),
    );
    let server = start_relay(state.clone()).await;
    let mut staff = enroll(&server, "first").await;
    assert!(staff.login_required());
    assert!(!staff.credentials_required());

    // Before the login: whoami goes through; anything else fails locally, unsent.
    assert_eq!(staff.whoami().await.unwrap().handle.as_str(), "dr.jones");
    let err = staff.list_conversations().await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::LoginRequired {
                credentials_required: false
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    assert_eq!(state.lock().unwrap().unauthenticated, 0);
    assert!(staff.recv(Duration::from_secs(5)).await.is_err());

    // A wrong password is the server's AUTH_FAILED, sent once.
    let password = || Password::new(PASSWORD).unwrap();
    let totp = || SecondFactor::Totp(TotpCode::new(TOTP).unwrap());
    let err = staff
        .login(Password::new("not the password").unwrap(), totp())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuthFailed), "{err}");
    let session = staff.login(password(), totp()).await.unwrap();
    assert_eq!(session.idle_timeout_ms, 60_000);
    assert_eq!(session.session_expires_at_ms, 99);
    assert!(!staff.login_required());

    // A patient must accept the consent text the server showed.
    let invite = staff
        .create_invite(InviteSpec::NewUser {
            role: Role::Patient,
            handle: Handle::new("pat.smith").unwrap(),
        })
        .await
        .unwrap();
    let mut patient = enroll(&server, invite.code.expose()).await;
    assert!(patient.consent_required());
    assert_eq!(
        patient.consent_text().map(ConsentText::as_str),
        Some(CONSENT)
    );
    patient.accept_consent().await.unwrap();
    assert!(!patient.consent_required());
    let members = patient
        .open_conversation(&[Handle::new("dr.jones").unwrap()])
        .await
        .unwrap()
        .members;
    assert!(members
        .iter()
        .any(|m| m.role == Role::Patient && m.consent == ConsentState::Accepted));
    let conversation = members_conversation(&mut staff).await;

    // A LOGGED_OFF that leaves no session to resume (a restart, a replaced connection): the
    // client reconnects and goes on.
    let patient_device = patient.profile().device_id;
    log_off(&state, patient_device, false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    staff
        .send_text(conversation, "still there?", None)
        .await
        .unwrap();
    let m = expect_message(&mut patient).await;
    assert_eq!(m.text, "still there?");
    patient.ack(&[m.message_id]).await.unwrap();

    // A real logoff: recv surfaces it at once instead of reconnecting in a loop, and what
    // needs a session then fails locally until the next login.
    let staff_device = staff.profile().device_id;
    log_off(&state, staff_device, true);
    let started = std::time::Instant::now();
    let err = staff.recv(Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, TransportError::LoggedOff(_)), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::LoggedOff));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(staff.login_required());
    let err = staff.list_conversations().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    assert_eq!(state.lock().unwrap().unauthenticated, 0);

    // Logging in again resumes; logging out ends it.
    staff.login(password(), totp()).await.unwrap();
    assert_eq!(staff.list_conversations().await.unwrap().len(), 1);
    staff.logout().await.unwrap();
    assert!(staff.login_required());
    assert!(staff.list_conversations().await.is_err());
}

async fn members_conversation(client: &mut Client<MemoryKeyStore>) -> ConversationId {
    client.list_conversations().await.unwrap()[0].id
}

/// A staff member and a patient, enrolled, and their conversation.
async fn staff_and_patient(
    state: &Arc<Mutex<State>>,
) -> (
    Client<MemoryKeyStore>,
    Client<MemoryKeyStore>,
    ConversationId,
) {
    state.lock().unwrap().invites.insert(
        "first".into(),
        InviteSpecOrDevice::User(Role::Staff, Handle::new("dr.jones").unwrap()),
    );
    let server = start_relay(state.clone()).await;
    let mut staff = enroll(&server, "first").await;
    let invite = staff
        .create_invite(InviteSpec::NewUser {
            role: Role::Patient,
            handle: Handle::new("pat.smith").unwrap(),
        })
        .await
        .unwrap();
    let mut patient = enroll(&server, invite.code.expose()).await;
    let conversation = patient
        .open_conversation(&[Handle::new("dr.jones").unwrap()])
        .await
        .unwrap()
        .id;
    (staff, patient, conversation)
}

async fn expect_undecryptable(
    client: &mut Client<MemoryKeyStore>,
) -> medrelay_sdk::transport::UndecryptableMessage {
    match client.recv(Duration::from_secs(5)).await.unwrap() {
        Some(Incoming::Undecryptable(u)) => u,
        other => panic!("expected an undecryptable delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn a_replayed_old_prekey_message_is_refused_and_the_live_session_kept() {
    let state = Arc::new(Mutex::new(State::default()));
    let (mut staff, mut patient, conversation) = staff_and_patient(&state).await;
    let staff_device = staff.profile().device_id;
    // The staff device's one-time prekeys are gone: the patient's session uses none, so only
    // the signed and PQ prekeys (still held) protect its first message.
    state
        .lock()
        .unwrap()
        .devices
        .get_mut(&staff_device)
        .unwrap()
        .one_time
        .clear();
    patient
        .send_text(conversation, "an old message", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    assert_eq!(m.text, "an old message");
    staff.ack(&[m.message_id]).await.unwrap();
    let recorded = state.lock().unwrap().log.last().unwrap().1.clone();
    assert!(matches!(
        medrelay_sdk::session::inspect(&recorded.ciphertext).unwrap(),
        medrelay_sdk::IncomingKind::Prekey { .. }
    ));
    staff.send_text(conversation, "reply", None).await.unwrap();
    let r = expect_message(&mut patient).await;
    patient.ack(&[r.message_id]).await.unwrap();

    // The patient's device starts a new session (its old one deleted after a refusal): the
    // staff device replaces its session with the genuinely new one.
    state.lock().unwrap().stale_once = Some(staff_device);
    patient
        .send_text(conversation, "a new session", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    assert_eq!(m.text, "a new session");
    staff.ack(&[m.message_id]).await.unwrap();

    // The server re-delivers the very first prekey message under a new id: refused, acked,
    // never shown again, and the live session is untouched.
    let replay = Delivery {
        message_id: MessageId::random(&mut OsRng),
        ..recorded
    };
    let replay_id = replay.message_id;
    deliver(&mut state.lock().unwrap(), staff_device, replay);
    let u = expect_undecryptable(&mut staff).await;
    assert_eq!(u.message_id, replay_id);
    assert!(state.lock().unwrap().mailboxes[&staff_device].is_empty());
    patient
        .send_text(conversation, "on the live session", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    assert_eq!(m.text, "on the live session");
    staff.ack(&[m.message_id]).await.unwrap();
    // And the live session works the other way too.
    staff.send_text(conversation, "got it", None).await.unwrap();
    assert_eq!(expect_message(&mut patient).await.text, "got it");
}

#[tokio::test]
async fn a_message_resent_under_its_client_message_id_is_shown_once() {
    let state = Arc::new(Mutex::new(State::default()));
    let (mut staff, mut patient, conversation) = staff_and_patient(&state).await;
    let staff_device = staff.profile().device_id;
    let receipt = patient
        .send_text(conversation, "take 2 tablets", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    staff.ack(&[m.message_id]).await.unwrap();

    // A server that forgets it already accepted this client message id delivers the re-sent
    // (freshly encrypted, so decryptable) copy under a new message id.
    state.lock().unwrap().sends.clear();
    let again = patient
        .send_text(
            conversation,
            "take 2 tablets",
            Some(receipt.client_message_id),
        )
        .await
        .unwrap();
    assert!(!again.duplicate);
    assert_ne!(again.message_id, receipt.message_id);
    assert!(staff
        .recv(Duration::from_millis(500))
        .await
        .unwrap()
        .is_none());
    assert!(
        state.lock().unwrap().mailboxes[&staff_device].is_empty(),
        "acked"
    );
    // Later messages still arrive.
    patient
        .send_text(conversation, "with water", None)
        .await
        .unwrap();
    assert_eq!(expect_message(&mut staff).await.text, "with water");
}

#[tokio::test]
async fn a_delivery_naming_another_sender_user_than_its_session_is_refused() {
    let state = Arc::new(Mutex::new(State::default()));
    let (mut staff, mut patient, conversation) = staff_and_patient(&state).await;
    let staff_device = staff.profile().device_id;
    let patient_user = patient.profile().user_id;
    let staff_user = staff.profile().user_id;
    patient
        .send_text(conversation, "hello", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    assert_eq!(m.sender_user_id, patient_user);
    staff.ack(&[m.message_id]).await.unwrap();
    let patient_device = convert_device(&patient.profile().device_id);
    let session = medrelay_sdk::KeyStore::load_session(staff.store(), &patient_device)
        .unwrap()
        .unwrap();
    assert_eq!(
        session.peer().map(|p| p.user_id),
        Some(*patient_user.as_bytes())
    );

    // The server labels the patient's device's next message as another user's (here the
    // staff member's own): the session says whose device that is.
    state.lock().unwrap().relabel_once = Some(staff_user);
    patient
        .send_text(conversation, "I am your colleague", None)
        .await
        .unwrap();
    let u = expect_undecryptable(&mut staff).await;
    assert_eq!(u.sender_user_id, staff_user);
    assert!(state.lock().unwrap().mailboxes[&staff_device].is_empty());

    // Correctly labelled messages go on decrypting.
    patient
        .send_text(conversation, "still me", None)
        .await
        .unwrap();
    let m = expect_message(&mut staff).await;
    assert_eq!(
        (m.text.as_str(), m.sender_user_id),
        ("still me", patient_user)
    );
}

fn convert_device(id: &DeviceId) -> medrelay_sdk::DeviceId {
    medrelay_sdk::DeviceId(*id.as_bytes())
}
