//! Proves: staff and admins need a password and a TOTP code on top of their device key; a
//! wrong password, a wrong code and a correct code used twice are refused; recovery codes work
//! once; repeated failures lock the account with a growing backoff. The server runs on the
//! injected clock, so codes and lockouts are computed at the server's time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use medrelay_proto::{
    ClientRequest, ErrorCode, Password, RecoveryCode, SecondFactor, ServerMessage, TotpCode,
};
use medrelay_tests::{password, totp_at, RawClient, RawDevice, Server, TEST_PASSWORD};

fn login(pw: &str, factor: SecondFactor) -> ClientRequest {
    ClientRequest::Login {
        password: Password::new(pw).unwrap(),
        second_factor: factor,
    }
}

fn totp(code: String) -> SecondFactor {
    SecondFactor::Totp(TotpCode::new(code).unwrap())
}

fn error(message: &ServerMessage) -> (ErrorCode, u64) {
    match message {
        ServerMessage::Error(e) => (e.code, e.retry_after_ms),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_factor_is_needed_and_each_code_works_once() {
    let server = Server::start_with_test_clock().unwrap();
    let mut clock = server.advance_clock(0).unwrap();
    let mut admin = RawDevice::new();
    let mut conn = admin
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .await
        .unwrap();
    let ok = conn.auth_ok.clone().unwrap();
    assert!(ok.credentials_required);
    // Nothing but setting up credentials (and harmless requests) before logging in.
    let answer = conn.request(ClientRequest::ListUsers).await.unwrap();
    assert_eq!(error(&answer).0, ErrorCode::Unauthenticated);

    let setup = match conn
        .request(ClientRequest::SetupCredentials {
            password: password(TEST_PASSWORD),
        })
        .await
        .unwrap()
    {
        ServerMessage::CredentialsSetup(setup) => setup,
        other => panic!("{other:?}"),
    };
    let secret = setup.totp_secret.expose().to_owned();
    assert!(setup
        .otpauth_uri
        .expose()
        .starts_with("otpauth://totp/medrelay"));
    assert_eq!(setup.recovery_codes.len(), 10);

    // Wrong password with a right code; right password with a wrong code.
    let answer = conn
        .request(login(
            "not the password at all",
            totp(totp_at(&secret, clock)),
        ))
        .await
        .unwrap();
    assert_eq!(error(&answer).0, ErrorCode::AuthFailed);
    let wrong = if totp_at(&secret, clock) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let answer = conn
        .request(login(TEST_PASSWORD, totp(wrong.to_owned())))
        .await
        .unwrap();
    assert_eq!(error(&answer).0, ErrorCode::AuthFailed);

    // Right password and code: logged in; the request that was refused now works.
    let code = totp_at(&secret, clock);
    let answer = conn
        .request(login(TEST_PASSWORD, totp(code.clone())))
        .await
        .unwrap();
    assert!(
        matches!(answer, ServerMessage::LoginOk { .. }),
        "{answer:?}"
    );
    assert!(matches!(
        conn.request(ClientRequest::ListUsers).await.unwrap(),
        ServerMessage::UserList(_)
    ));

    // The same code again, on a new connection after logging out: refused.
    assert!(matches!(
        conn.request(ClientRequest::Logout).await.unwrap(),
        ServerMessage::Done
    ));
    let mut again = admin.connect(&server).await.unwrap();
    assert!(again.auth_ok.as_ref().unwrap().login_required);
    let answer = again
        .request(login(TEST_PASSWORD, totp(code)))
        .await
        .unwrap();
    assert_eq!(error(&answer).0, ErrorCode::AuthFailed);

    // A recovery code works once.
    let recovery = setup.recovery_codes[0].expose().to_owned();
    let answer = again
        .request(login(
            TEST_PASSWORD,
            SecondFactor::Recovery(RecoveryCode::new(recovery.clone()).unwrap()),
        ))
        .await
        .unwrap();
    assert!(
        matches!(answer, ServerMessage::LoginOk { .. }),
        "{answer:?}"
    );
    again.request(ClientRequest::Logout).await.unwrap();
    let answer = again
        .request(login(
            TEST_PASSWORD,
            SecondFactor::Recovery(RecoveryCode::new(recovery).unwrap()),
        ))
        .await
        .unwrap();
    assert_eq!(error(&answer).0, ErrorCode::AuthFailed);

    // A fresh code in the next time step works.
    clock = server.advance_clock(30_000).unwrap();
    let answer = again
        .request(login(TEST_PASSWORD, totp(totp_at(&secret, clock))))
        .await
        .unwrap();
    assert!(
        matches!(answer, ServerMessage::LoginOk { .. }),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_account_with_growing_backoff() {
    let server = Server::start_with_test_clock().unwrap();
    let mut clock = server.advance_clock(0).unwrap();
    let mut admin = RawDevice::new();
    let mut conn: RawClient = admin
        .enroll(&server, server.admin_invite.as_deref().unwrap())
        .await
        .unwrap();
    let secret = conn.setup_and_login(clock).await.unwrap();
    conn.request(ClientRequest::Logout).await.unwrap();

    let bad = || login("a wrong password!!", totp("123456".to_owned()));
    for attempt in 1..=4 {
        let answer = conn.request(bad()).await.unwrap();
        assert_eq!(error(&answer).0, ErrorCode::AuthFailed, "attempt {attempt}");
    }
    // The fifth failure locks for 30 s.
    let (code, retry) = error(&conn.request(bad()).await.unwrap());
    assert_eq!((code, retry), (ErrorCode::LockedOut, 30_000));
    // While locked, even the right credentials are refused.
    clock = server.advance_clock(30_000 - 1).unwrap();
    let answer = conn
        .request(login(TEST_PASSWORD, totp(totp_at(&secret, clock))))
        .await
        .unwrap();
    assert_eq!(error(&answer).0, ErrorCode::LockedOut);
    // After the lock, one more failure locks for twice as long.
    server.advance_clock(1).unwrap();
    let (code, retry) = error(&conn.request(bad()).await.unwrap());
    assert_eq!((code, retry), (ErrorCode::LockedOut, 60_000));
    clock = server.advance_clock(60_000).unwrap();
    // The right credentials after the lock: in, and the count starts over.
    let answer = conn
        .request(login(TEST_PASSWORD, totp(totp_at(&secret, clock))))
        .await
        .unwrap();
    assert!(
        matches!(answer, ServerMessage::LoginOk { .. }),
        "{answer:?}"
    );
    conn.request(ClientRequest::Logout).await.unwrap();
    let answer = conn.request(bad()).await.unwrap();
    assert_eq!(error(&answer).0, ErrorCode::AuthFailed);
}
