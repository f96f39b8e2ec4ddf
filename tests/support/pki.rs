//! A test PKI made with rcgen: a CA, a server certificate for 127.0.0.1 /
//! "kubernetes" and a client certificate, as PEM files and rustls configs.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA, a server certificate for 127.0.0.1 / "kubernetes", and a client
/// certificate, written as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lbd test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "kubernetes".to_string()])
                .unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["lbd-health".to_string()]).unwrap();
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let client_cert_path = dir.path().join("client.crt");
        std::fs::write(&client_cert_path, client_cert.pem()).unwrap();
        let client_key_path = dir.path().join("client.key");
        std::fs::write(&client_key_path, client_key.serialize_pem()).unwrap();
        Pki {
            ca,
            client_cert: client_cert_path,
            client_key: client_key_path,
            server_chain: vec![server_cert.der().clone()],
            server_key_der: server_key.serialize_der(),
            ca_der: ca_cert.der().clone(),
            dir,
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Self::provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::try_from(self.server_key_der.clone()).unwrap();
        Arc::new(
            builder
                .with_single_cert(self.server_chain.clone(), key)
                .unwrap(),
        )
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Self::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}
