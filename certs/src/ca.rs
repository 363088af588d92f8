//! The development CA and the server certificates it issues (ECDSA P-256, rcgen).

use std::collections::BTreeSet;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::{CertError, SecretPem};

/// The development CA's common name, which clients show when they present it.
pub const CA_COMMON_NAME: &str = "medrelay development CA";

/// How long the development CA is valid: about ten years.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// How long a server certificate is valid: about a year. Re-issue from the CA to renew.
pub const SERVER_VALIDITY_DAYS: i64 = 365;

/// How far `not_before` is backdated, so a client whose clock runs a little behind still
/// accepts a fresh certificate.
const BACKDATE: Duration = Duration::hours(1);

/// The hostnames a development server certificate covers by default.
pub fn default_hostnames() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// A development certificate authority: a self-signed ECDSA P-256 CA that issues server
/// certificates. Clients trust it by its `ca.pem`; its key must stay on the server host.
pub struct DevCa {
    /// The CA as rcgen needs it to sign (name, key identifier, key usages).
    issuer: rcgen::Certificate,
    /// The CA's private key.
    key: KeyPair,
    /// The CA certificate as given to clients: freshly made, or exactly as reloaded.
    cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("common_name", &CA_COMMON_NAME)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Maps an rcgen failure while making `what`.
fn generate_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

impl DevCa {
    /// Mints a new CA: ECDSA P-256, CN [`CA_COMMON_NAME`], valid [`CA_VALIDITY_DAYS`],
    /// basic constraints CA (path length 0: it signs server certificates only), key usage
    /// certificate and CRL signing.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(generate_error("development CA key"))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, CA_COMMON_NAME);
        name.push(DnType::OrganizationName, "medrelay");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let issuer = params
            .self_signed(&key)
            .map_err(generate_error("development CA certificate"))?;
        let cert_pem = issuer.pem();
        Ok(Self {
            issuer,
            key,
            cert_pem,
        })
    }

    /// Reloads a CA from its certificate and private key (as written by [`crate::write_dev_pki`])
    /// to issue more server certificates. Refuses a key that is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| CertError::InvalidCaKey)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| CertError::InvalidCaCert)?;
        // The certificate's DER holds its SubjectPublicKeyInfo verbatim.
        let spki = key.public_key_der();
        if !der
            .windows(spki.len())
            .any(|window| window == spki.as_slice())
        {
            return Err(CertError::KeyMismatch);
        }
        let params =
            CertificateParams::from_ca_cert_der(&der).map_err(|_| CertError::InvalidCaCert)?;
        let issuer = params
            .self_signed(&key)
            .map_err(generate_error("reloaded CA"))?;
        Ok(Self {
            issuer,
            key,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate in PEM: public, handed to clients (`--ca ca.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> SecretPem {
        SecretPem::new(self.key.serialize_pem())
    }

    /// Issues a server certificate for `hostnames`: each entry that parses as an IP address
    /// becomes an IP SAN, every other a DNS SAN (duplicates dropped); the first is also the
    /// common name. ECDSA P-256 with a fresh key, valid [`SERVER_VALIDITY_DAYS`], extended key
    /// usage server authentication.
    pub fn issue_server_cert(&self, hostnames: &[String]) -> Result<ServerCert, CertError> {
        let first = hostnames.first().ok_or(CertError::NoHostnames)?;
        let mut seen = BTreeSet::new();
        let mut subject_alt_names = Vec::new();
        for hostname in hostnames {
            if seen.insert(hostname.as_str()) {
                subject_alt_names.push(subject_alt_name(hostname)?);
            }
        }
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error("server key"))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, first.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(SERVER_VALIDITY_DAYS);
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(generate_error("server certificate"))?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: SecretPem::new(key.serialize_pem()),
        })
    }
}

/// An IP SAN for an address, a DNS SAN for a valid DNS name, an error otherwise.
fn subject_alt_name(hostname: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = hostname.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || CertError::InvalidHostname {
        hostname: hostname.to_owned(),
    };
    rustls_pki_types::DnsName::try_from(hostname).map_err(|_| invalid())?;
    hostname
        .to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| invalid())
}

/// A server certificate and its private key, issued by a [`DevCa`].
#[derive(Debug)]
pub struct ServerCert {
    cert_pem: String,
    key_pem: SecretPem,
}

impl ServerCert {
    /// The server certificate in PEM (the leaf only; clients hold the CA).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The server's private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> &SecretPem {
        &self.key_pem
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Reads a certificate's parameters back (rcgen's parser works for any certificate).
    fn parse(pem: &str) -> CertificateParams {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        CertificateParams::from_ca_cert_der(&der).unwrap()
    }

    #[test]
    fn ca_is_a_ten_year_p256_ca() {
        let ca = DevCa::generate().unwrap();
        let params = parse(ca.cert_pem());
        assert!(matches!(params.is_ca, IsCa::Ca(_)));
        assert!(params.key_usages.contains(&KeyUsagePurpose::KeyCertSign));
        let cn = params.distinguished_name.get(&DnType::CommonName).unwrap();
        assert_eq!(cn, &rcgen::DnValue::Utf8String(CA_COMMON_NAME.to_owned()));
        let years = (params.not_after - params.not_before).whole_days() / 365;
        assert_eq!(years, 10);
        assert!(ca
            .key_pem()
            .expose_secret()
            .starts_with(concat!("-----BEGIN ", "PRIVATE KEY-----")));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn server_cert_has_the_sans_and_server_auth() {
        let ca = DevCa::generate().unwrap();
        let names: Vec<String> = [
            "relay.clinic.example",
            "10.0.0.7",
            "localhost",
            "::1",
            "localhost",
        ]
        .map(str::to_owned)
        .to_vec();
        let server = ca.issue_server_cert(&names).unwrap();
        let params = parse(server.cert_pem());
        assert_eq!(
            params.subject_alt_names,
            vec![
                SanType::DnsName("relay.clinic.example".to_owned().try_into().unwrap()),
                SanType::IpAddress("10.0.0.7".parse().unwrap()),
                SanType::DnsName("localhost".to_owned().try_into().unwrap()),
                SanType::IpAddress("::1".parse().unwrap()),
            ]
        );
        assert_eq!(
            params.extended_key_usages,
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        );
        assert!(!matches!(params.is_ca, IsCa::Ca(_)));
        let days = (params.not_after - params.not_before).whole_days();
        assert_eq!(days, SERVER_VALIDITY_DAYS);
        assert_eq!(format!("{:?}", server.key_pem()), "SecretPem(<redacted>)");
    }

    #[test]
    fn bad_hostname_lists_are_refused() {
        let ca = DevCa::generate().unwrap();
        assert!(matches!(
            ca.issue_server_cert(&[]),
            Err(CertError::NoHostnames)
        ));
        for bad in ["", "has space.example", "bad..dots", "ünïcode.example"] {
            let result = ca.issue_server_cert(&[bad.to_owned()]);
            assert!(
                matches!(result, Err(CertError::InvalidHostname { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn defaults_cover_loopback() {
        assert_eq!(default_hostnames(), ["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn reloading_keeps_the_ca_and_checks_the_key() {
        let ca = DevCa::generate().unwrap();
        let reloaded = DevCa::from_pem(ca.cert_pem(), ca.key_pem().expose_secret()).unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        assert!(reloaded.issue_server_cert(&default_hostnames()).is_ok());

        let other = DevCa::generate().unwrap();
        assert!(matches!(
            DevCa::from_pem(ca.cert_pem(), other.key_pem().expose_secret()),
            Err(CertError::KeyMismatch)
        ));
        assert!(matches!(
            DevCa::from_pem("not a pem", ca.key_pem().expose_secret()),
            Err(CertError::InvalidCaCert)
        ));
        assert!(matches!(
            DevCa::from_pem(ca.cert_pem(), "not a key"),
            Err(CertError::InvalidCaKey)
        ));
    }
}
