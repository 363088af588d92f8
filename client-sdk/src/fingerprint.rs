//! Safety numbers, computed the way Signal's `NumericFingerprintGenerator` computes them.
//!
//! For each party:
//!
//! ```text
//! key  = identity signing key (32) || identity DH key (32)
//! h    = version (u16 BE, 0) || key || stable id
//! repeat FINGERPRINT_ITERATIONS (5200) times: h = SHA-512(h || key)
//! half = the first 30 bytes of h as six 5-byte big-endian integers, each mod 100000, 5 digits
//! ```
//!
//! The two 30-digit halves are sorted and concatenated (60 digits), shown as 12 groups of 5.
//! Both parties get the same number. The stable id is the user id (16 bytes).

use sha2::{Digest, Sha512};

use crate::identity::PublicIdentity;
use crate::limits::FINGERPRINT_ITERATIONS;

/// The fingerprint format version hashed into every half.
pub const FINGERPRINT_VERSION: u16 = 0;

/// A 60-digit safety number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
}

impl SafetyNumber {
    /// The 60 digits, no separators.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The 12 groups of 5 digits.
    pub fn groups(&self) -> Vec<&str> {
        (0..12)
            .filter_map(|i| self.digits.get(i * 5..i * 5 + 5))
            .collect()
    }
}

impl core::fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.groups().join(" "))
    }
}

fn half(stable_id: &[u8], identity: &PublicIdentity) -> String {
    let mut key = [0u8; 64];
    let (a, b) = key.split_at_mut(32);
    a.copy_from_slice(&identity.signing_key);
    b.copy_from_slice(&identity.dh_key);

    let mut hash = Vec::with_capacity(2 + key.len() + stable_id.len());
    hash.extend_from_slice(&FINGERPRINT_VERSION.to_be_bytes());
    hash.extend_from_slice(&key);
    hash.extend_from_slice(stable_id);
    for _ in 0..FINGERPRINT_ITERATIONS {
        let mut h = Sha512::new();
        h.update(&hash);
        h.update(key);
        hash = h.finalize().to_vec();
    }
    hash.chunks_exact(5)
        .take(6)
        .map(|chunk| {
            let value = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", value % 100_000)
        })
        .collect()
}

/// The safety number between a local and a remote identity; identical when computed from the
/// other side.
pub fn safety_number(
    local_stable_id: &[u8],
    local: &PublicIdentity,
    remote_stable_id: &[u8],
    remote: &PublicIdentity,
) -> SafetyNumber {
    let l = half(local_stable_id, local);
    let r = half(remote_stable_id, remote);
    let digits = if l <= r { l + &r } else { r + &l };
    SafetyNumber { digits }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    fn id(b: u8) -> PublicIdentity {
        PublicIdentity {
            signing_key: [b; 32],
            dh_key: [b.wrapping_add(1); 32],
            dh_signature: [0; 64],
        }
    }

    #[test]
    fn symmetric_sixty_digits_and_sensitive_to_keys() {
        let a = safety_number(b"alice-user-id-16", &id(1), b"bob-user-id-0016", &id(2));
        let b = safety_number(b"bob-user-id-0016", &id(2), b"alice-user-id-16", &id(1));
        assert_eq!(a, b);
        assert_eq!(a.digits().len(), 60);
        assert!(a.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(a.groups().len(), 12);
        assert_eq!(a.to_string().len(), 60 + 11);
        let c = safety_number(b"alice-user-id-16", &id(3), b"bob-user-id-0016", &id(2));
        assert_ne!(a, c);
    }
}
