//! Staff and admin credentials: an argon2id password hash, a TOTP secret (RFC 6238) and
//! single-use recovery codes, and the lockout that grows with repeated failures.
//!
//! Pure functions over [`CredentialsRecord`] and [`LockoutRecord`]; time comes in as an
//! argument (the server's clock). A TOTP code is accepted once only: the last accepted time
//! step is remembered and no code at or before it is accepted again.

use argon2::password_hash::rand_core::OsRng as PasswordRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::TOTP;
use zeroize::Zeroizing;

use crate::store::{CredentialsRecord, LockoutRecord};

/// TOTP time step (RFC 6238 default).
pub const TOTP_STEP_MS: u64 = 30_000;
/// TOTP digits.
pub const TOTP_DIGITS: usize = 6;
/// Time steps accepted either side of now (clock skew between phone and server).
pub const TOTP_SKEW_STEPS: u64 = 1;
/// Bytes of a TOTP secret (160 bits, as RFC 4226 recommends).
pub const TOTP_SECRET_BYTES: usize = 20;
/// Recovery codes issued at setup.
pub const RECOVERY_CODES: usize = 10;
/// Failures before the account locks.
pub const LOCKOUT_THRESHOLD: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const LOCKOUT_BASE_MS: u64 = 30_000;
/// The longest lockout.
pub const LOCKOUT_MAX_MS: u64 = 60 * 60 * 1000;
/// Issuer shown in authenticator apps.
pub const TOTP_ISSUER: &str = "medrelay";

/// argon2id with OWASP's recommended parameters (m = 19 MiB, t = 2, p = 1).
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// What setting up credentials produced: the record to store and what to show the user once.
#[derive(Debug)]
pub struct NewCredentials {
    /// To store.
    pub record: CredentialsRecord,
    /// Base32 TOTP secret, shown once.
    pub totp_secret_base32: Zeroizing<String>,
    /// otpauth:// URI for authenticator apps, shown once.
    pub otpauth_uri: Zeroizing<String>,
    /// Recovery codes, shown once.
    pub recovery_codes: Vec<Zeroizing<String>>,
}

/// Why credentials could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed")]
    Hash,
}

fn totp(secret: &[u8], account: &str) -> TOTP {
    TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP_MS / 1000,
        secret.to_vec(),
        Some(TOTP_ISSUER.to_owned()),
        account.to_owned(),
    )
}

fn recovery_code_hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.trim().to_ascii_lowercase().as_bytes()).into()
}

/// A new password hash.
pub fn hash_password(password: &str) -> Result<String, CredentialsError> {
    let salt = SaltString::generate(&mut PasswordRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CredentialsError::Hash)
}

/// Whether `password` matches the stored hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// New credentials for `account` (shown in authenticator apps) with `password`.
pub fn new_credentials(account: &str, password: &str) -> Result<NewCredentials, CredentialsError> {
    let mut secret = Zeroizing::new([0u8; TOTP_SECRET_BYTES]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut_slice());
    let generator = totp(secret.as_slice(), account);
    let mut recovery_codes = Vec::with_capacity(RECOVERY_CODES);
    let mut recovery_code_hashes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let hex = hex::encode(bytes);
        let code = format!(
            "{}-{}-{}-{}",
            hex.get(0..4).unwrap_or_default(),
            hex.get(4..8).unwrap_or_default(),
            hex.get(8..12).unwrap_or_default(),
            hex.get(12..16).unwrap_or_default()
        );
        recovery_code_hashes.push(recovery_code_hash(&code));
        recovery_codes.push(Zeroizing::new(code));
    }
    Ok(NewCredentials {
        record: CredentialsRecord {
            password_hash: hash_password(password)?,
            totp_secret: secret.to_vec(),
            confirmed: false,
            last_totp_step: 0,
            recovery_code_hashes,
        },
        totp_secret_base32: Zeroizing::new(generator.get_secret_base32()),
        otpauth_uri: Zeroizing::new(generator.get_url()),
        recovery_codes,
    })
}

/// The current TOTP code for a secret at `now_ms` (for tests and tools).
pub fn totp_code(secret: &[u8], now_ms: u64) -> String {
    totp(secret, "x").generate(now_ms / 1000)
}

/// Checks a TOTP code at `now_ms`, once only: on success returns the time step it matched,
/// which the caller stores as `last_totp_step`.
pub fn check_totp(record: &CredentialsRecord, code: &str, now_ms: u64) -> Option<u64> {
    let generator = totp(&record.totp_secret, "x");
    let now_step = now_ms / TOTP_STEP_MS;
    let first = now_step.saturating_sub(TOTP_SKEW_STEPS);
    (first..=now_step + TOTP_SKEW_STEPS)
        .filter(|step| *step > record.last_totp_step)
        .find(|step| {
            let expected = generator.generate(step * (TOTP_STEP_MS / 1000));
            bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
        })
}

/// Uses up a recovery code: removes it from the record if it is one of the unused ones.
pub fn use_recovery_code(record: &mut CredentialsRecord, code: &str) -> bool {
    let hash = recovery_code_hash(code);
    match record
        .recovery_code_hashes
        .iter()
        .position(|h| bool::from(h.ct_eq(&hash)))
    {
        Some(index) => {
            record.recovery_code_hashes.remove(index);
            true
        }
        None => false,
    }
}

/// How long until the account may try again, if it is locked at `now_ms`.
pub fn locked_for(lockout: &LockoutRecord, now_ms: u64) -> Option<u64> {
    (lockout.locked_until_ms > now_ms).then(|| lockout.locked_until_ms - now_ms)
}

/// Records a failure; from the threshold on, each failure locks the account for twice as long
/// as the one before (capped).
pub fn record_failure(lockout: &mut LockoutRecord, now_ms: u64) {
    lockout.failures = lockout.failures.saturating_add(1);
    if lockout.failures >= LOCKOUT_THRESHOLD {
        let doublings = (lockout.failures - LOCKOUT_THRESHOLD).min(16);
        let lock = LOCKOUT_BASE_MS
            .saturating_mul(1u64 << doublings)
            .min(LOCKOUT_MAX_MS);
        lockout.locked_until_ms = now_ms.saturating_add(lock);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_totp_code_is_accepted_once_and_only_near_now() {
        let new = new_credentials("dr.lee@clinic", "correct horse battery").unwrap();
        let mut record = new.record;
        let now = 1_800_000_000_000;
        let code = totp_code(&record.totp_secret, now);
        let step = check_totp(&record, &code, now).unwrap();
        record.last_totp_step = step;
        assert_eq!(
            check_totp(&record, &code, now),
            None,
            "replayed code accepted"
        );
        // A code from ten minutes ago is refused.
        let mut fresh = record.clone();
        fresh.last_totp_step = 0;
        let old = totp_code(&fresh.totp_secret, now - 600_000);
        assert_eq!(check_totp(&fresh, &old, now), None);
        assert_eq!(check_totp(&fresh, "000000x", now), None);
        assert!(new.otpauth_uri.starts_with("otpauth://totp/"));
    }

    #[test]
    fn passwords_and_recovery_codes() {
        let new = new_credentials("a", "correct horse battery").unwrap();
        let mut record = new.record;
        assert!(verify_password(
            &record.password_hash,
            "correct horse battery"
        ));
        assert!(!verify_password(
            &record.password_hash,
            "correct horse battery!"
        ));
        assert!(!verify_password("not a phc string", "x"));
        let code = new.recovery_codes[3].to_string();
        assert!(use_recovery_code(&mut record, &code.to_uppercase()));
        assert!(
            !use_recovery_code(&mut record, &code),
            "recovery code used twice"
        );
        assert_eq!(record.recovery_code_hashes.len(), RECOVERY_CODES - 1);
        let debug = format!("{record:?}");
        assert!(!debug.contains(&record.password_hash));
    }

    #[test]
    fn lockout_grows_with_each_failure_past_the_threshold() {
        let mut lockout = LockoutRecord::default();
        let now = 1_000_000;
        for _ in 0..LOCKOUT_THRESHOLD - 1 {
            record_failure(&mut lockout, now);
            assert_eq!(locked_for(&lockout, now), None);
        }
        record_failure(&mut lockout, now);
        assert_eq!(locked_for(&lockout, now), Some(LOCKOUT_BASE_MS));
        record_failure(&mut lockout, now);
        assert_eq!(locked_for(&lockout, now), Some(2 * LOCKOUT_BASE_MS));
        for _ in 0..40 {
            record_failure(&mut lockout, now);
        }
        assert_eq!(locked_for(&lockout, now), Some(LOCKOUT_MAX_MS));
        assert_eq!(locked_for(&lockout, now + LOCKOUT_MAX_MS), None);
    }
}
