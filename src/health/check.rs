//! Probes: one fresh connection per check, as haproxy does, so a backend
//! that stops accepting is noticed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::state::ProbeOutcome;
use crate::config::{HealthConfig, HealthKind, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A prepared check for one listener's backends.
#[derive(Clone)]
pub struct Probe {
    kind: HealthKind,
    path: String,
    expect_status: u16,
    timeout: Duration,
    host: Option<String>,
    tls: Option<(TlsConnector, Option<String>)>,
}

impl Probe {
    pub fn new(cfg: &HealthConfig) -> Result<Self, TlsSetupError> {
        let tls = match cfg.kind {
            HealthKind::Https => Some((
                TlsConnector::from(Arc::new(client_config(&cfg.tls)?)),
                cfg.tls.server_name.clone(),
            )),
            _ => None,
        };
        Ok(Probe {
            kind: cfg.kind,
            path: cfg.path.clone(),
            expect_status: cfg.expect_status,
            timeout: cfg.timeout,
            host: cfg.host.clone(),
            tls,
        })
    }

    /// Runs one check against `addr`; never longer than the timeout.
    pub async fn run(&self, addr: SocketAddr) -> ProbeOutcome {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.run_inner(addr)).await;
        let latency = start.elapsed();
        match result {
            Ok(Ok(())) => ProbeOutcome::Up { latency },
            Ok(Err((reason, message))) => ProbeOutcome::Down {
                reason,
                message,
                latency,
            },
            Err(_) => ProbeOutcome::Down {
                reason: "timeout",
                message: format!("no answer within {:?}", self.timeout),
                latency,
            },
        }
    }

    async fn run_inner(&self, addr: SocketAddr) -> Result<(), (&'static str, String)> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ("connect", format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match (&self.kind, &self.tls) {
            (HealthKind::Tcp, _) => Ok(()),
            (HealthKind::Http, _) => self.http_get(tcp, addr).await,
            (HealthKind::Https, Some((connector, server_name))) => {
                let name = match server_name {
                    Some(n) => ServerName::try_from(n.clone())
                        .map_err(|e| ("tls", format!("server_name: {e}")))?,
                    None => ServerName::IpAddress(addr.ip().into()),
                };
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ("tls", format!("TLS: {e}")))?;
                self.http_get(tls, addr).await
            }
            (HealthKind::Https, None) => Err(("tls", "no TLS configuration".into())),
        }
    }

    async fn http_get<S>(&self, stream: S, addr: SocketAddr) -> Result<(), (&'static str, String)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ("http", format!("HTTP: {e}")))?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        let req = http::Request::get(&self.path)
            .header(http::header::HOST, host)
            .header(
                http::header::USER_AGENT,
                concat!("lbd-health/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ("http", format!("request: {e}")))?;
        let resp = sender.send_request(req).await;
        conn_task.abort();
        let resp = resp.map_err(|e| ("http", format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        if status == self.expect_status {
            Ok(())
        } else {
            Err((
                "status",
                format!("HTTP {status}, expected {}", self.expect_status),
            ))
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Builds the rustls client config for health checks (ring provider).
pub fn client_config(tls: &TlsConfig) -> Result<ClientConfig, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Invalid {
            path: String::new(),
            message: e.to_string(),
        })?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &tls.ca_file {
            for cert in certs(ca)? {
                roots.add(cert).map_err(|e| TlsSetupError::Invalid {
                    path: ca.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key_pem = read(key)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsSetupError::Invalid {
                    path: key.display().to_string(),
                    message: e.to_string(),
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsSetupError::Invalid {
                    path: cert.display().to_string(),
                    message: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// `insecure_skip_verify`: haproxy's `check-ssl verify none`. Signatures are
/// still checked so the handshake is a real one; only the chain is not.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
