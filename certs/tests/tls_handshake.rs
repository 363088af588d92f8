//! A server certificate from the development CA completes a real TLS 1.3 handshake (rustls,
//! in memory) with a client that trusts only the CA: for each hostname and IP it names, and
//! after reloading the CA from PEM. Any other name, or another CA, fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use medrelay_certs::{default_hostnames, DevCa, ServerCert};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(cert: &ServerCert) -> Arc<ServerConfig> {
    let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem().as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem().expose_secret().as_bytes()).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Moves records between the two ends until both finish the handshake or one fails; then
/// checks both export the same keying material (what medrelay binds auth proofs to).
fn handshake(ca_pem: &str, cert: &ServerCert, name: &str) -> Result<(), rustls::Error> {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(client_config(ca_pem), server_name)?;
    let mut server = ServerConnection::new(server_config(cert))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            let label = b"EXPORTER-medrelay-auth-v1";
            let a = client.export_keying_material([0u8; 32], label, None)?;
            let b = server.export_keying_material([0u8; 32], label, None)?;
            assert_eq!(a, b);
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn server_cert_verifies_for_every_name_it_carries() {
    let ca = DevCa::generate().unwrap();
    let mut names = default_hostnames();
    names.push("relay.clinic.example".to_owned());
    let cert = ca.issue_server_cert(&names).unwrap();
    for name in &names {
        handshake(ca.cert_pem(), &cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn another_name_is_refused() {
    let ca = DevCa::generate().unwrap();
    let cert = ca.issue_server_cert(&default_hostnames()).unwrap();
    let error = handshake(ca.cert_pem(), &cert, "evil.example").unwrap_err();
    assert!(
        matches!(error, rustls::Error::InvalidCertificate(_)),
        "{error:?}"
    );
    assert!(handshake(ca.cert_pem(), &cert, "10.9.9.9").is_err());
}

#[test]
fn another_ca_is_refused() {
    let ca = DevCa::generate().unwrap();
    let other = DevCa::generate().unwrap();
    let cert = ca.issue_server_cert(&default_hostnames()).unwrap();
    let error = handshake(other.cert_pem(), &cert, "localhost").unwrap_err();
    assert!(
        matches!(error, rustls::Error::InvalidCertificate(_)),
        "{error:?}"
    );
}

#[test]
fn a_reloaded_ca_issues_certs_the_original_ca_pem_verifies() {
    let ca = DevCa::generate().unwrap();
    let reloaded = DevCa::from_pem(ca.cert_pem(), ca.key_pem().expose_secret()).unwrap();
    let cert = reloaded.issue_server_cert(&default_hostnames()).unwrap();
    handshake(ca.cert_pem(), &cert, "localhost").unwrap();
}
