//! A PEM-encoded private key: zeroized when dropped, never shown by `Debug`.

use zeroize::Zeroizing;

/// A private key in PEM. Its memory is wiped on drop; `Debug` prints `SecretPem(<redacted>)`.
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    /// Wraps a PEM string, taking ownership so no copy is left behind.
    pub(crate) fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text. Write it only to a file with mode 0600; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secret = SecretPem::new(concat!("-----BEGIN ", "PRIVATE KEY-----\nAAAA\n").to_owned());
        assert_eq!(format!("{secret:?}"), "SecretPem(<redacted>)");
        assert!(secret.expose_secret().contains("AAAA"));
    }
}
