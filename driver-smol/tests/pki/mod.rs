//! A throwaway PKI for the TLS tests: a CA and a server certificate for `localhost` and
//! 127.0.0.1 signed by it, generated with rcgen and written as PEM files to a temporary
//! directory.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::PathBuf;

use holdwire_smol::rustls::pki_types::CertificateDer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The generated files, removed with the directory when this drops.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM): the root a client must trust.
    pub ca: PathBuf,
    /// The server's certificate chain (PEM, leaf only).
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The CA certificate, parsed.
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    /// A client configuration trusting the system roots and this CA.
    pub fn client_config(&self) -> std::sync::Arc<holdwire_smol::rustls::ClientConfig> {
        holdwire_smol::tls::client_config(std::slice::from_ref(&self.ca_der))
            .expect("client TLS config")
    }
}

/// A new CA and a server certificate for `localhost`, 127.0.0.1 and ::1.
pub fn generate() -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "holdwire test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "holdwire test server");
    let cert = params.signed_by(&key, &issuer).expect("sign the server");

    let dir = tempfile::Builder::new()
        .prefix("hw-pki-")
        .tempdir()
        .expect("temporary directory");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        ca_der: ca_cert.der().clone(),
        dir,
    }
}
