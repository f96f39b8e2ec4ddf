//! Probes: one fresh connection per check, as haproxy does, so a backend
//! that stops accepting is noticed.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

use super::state::{ProbeFailure, ProbeOutcome};
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

/// Why one probe failed; its text is the backend's `last_error` in status.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("server_name: {0}")]
    ServerName(rustls::pki_types::InvalidDnsNameError),
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("no TLS configuration")]
    NoTlsConfig,
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    #[error("request: {0}")]
    Request(http::Error),
    #[error("HTTP {got}, expected {expected}")]
    Status { got: u16, expected: u16 },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ProbeError {
    fn failure(&self) -> ProbeFailure {
        match self {
            ProbeError::Connect(_) => ProbeFailure::Connect,
            ProbeError::ServerName(_) | ProbeError::Tls(_) | ProbeError::NoTlsConfig => {
                ProbeFailure::Tls
            }
            ProbeError::Http(_) | ProbeError::Request(_) => ProbeFailure::Http,
            ProbeError::Status { .. } => ProbeFailure::Status,
            ProbeError::Timeout(_) => ProbeFailure::Timeout,
        }
    }
}

/// A prepared check for one listener's backends: the check's settings and,
/// for HTTPS, the TLS client built from the PEM files as they were read.
#[derive(Clone)]
pub struct Probe {
    cfg: HealthConfig,
    tls: Option<TlsClient>,
}

#[derive(Clone)]
struct TlsClient {
    connector: TlsConnector,
    /// The files' bytes, to tell on reload whether any of them changed.
    files: TlsFiles,
    /// TLS files named in the config that do not exist yet (a node before
    /// `kubeadm init` writes /etc/kubernetes/pki): until they all appear the
    /// check is a TCP connect plus a TLS handshake, with no HTTP request,
    /// and verifies the server only if the CA is there already.
    missing: Vec<PathBuf>,
}

impl Probe {
    /// Reads the TLS material (HTTPS checks): the step of a reload that can
    /// fail, done before anything changes. A TLS file that does not exist
    /// (yet) is no error: see [`Probe::waiting_for`].
    pub fn new(cfg: &HealthConfig) -> Result<Self, TlsSetupError> {
        let tls = match cfg.kind {
            HealthKind::Https => {
                let (files, missing) = TlsFiles::read(&cfg.tls)?;
                let client = if missing.is_empty() {
                    files.client_config(&cfg.tls)?
                } else {
                    files.handshake_config()?
                };
                Some(TlsClient {
                    connector: TlsConnector::from(Arc::new(client)),
                    files,
                    missing,
                })
            }
            HealthKind::Http | HealthKind::Tcp => None,
        };
        Ok(Probe {
            cfg: cfg.clone(),
            tls,
        })
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// The TLS files this check waits for (empty: it runs as configured).
    pub fn waiting_for(&self) -> &[PathBuf] {
        self.tls.as_ref().map_or(&[], |t| &t.missing[..])
    }

    /// What a check does now, for status: `tcp`, `http`, `https verified`,
    /// `https (insecure_skip_verify)` or, while TLS files are missing,
    /// `tls-handshake (waiting for FILE, ...)`.
    pub fn mode(&self) -> String {
        match (self.cfg.kind, &self.tls) {
            (HealthKind::Tcp, _) => "tcp".into(),
            (HealthKind::Http, _) => "http".into(),
            (HealthKind::Https, Some(t)) if !t.missing.is_empty() => {
                let files: Vec<String> =
                    t.missing.iter().map(|p| p.display().to_string()).collect();
                format!("tls-handshake (waiting for {})", files.join(", "))
            }
            (HealthKind::Https, _) if self.cfg.tls.insecure_skip_verify => {
                "https (insecure_skip_verify)".into()
            }
            (HealthKind::Https, _) => "https verified".into(),
        }
    }

    /// Same settings and same TLS files' contents: a reload leaves the
    /// running checks alone.
    pub fn same_as(&self, other: &Probe) -> bool {
        self.cfg == other.cfg
            && self.tls.as_ref().map(|t| &t.files) == other.tls.as_ref().map(|t| &t.files)
    }

    /// Runs one check against `addr`, never longer than the timeout; and
    /// how long its TCP connect took when it connected (whatever came
    /// after): the hedge's connect times on a node that carried no traffic
    /// yet.
    pub async fn run_timed(&self, addr: SocketAddr) -> (ProbeOutcome, Option<Duration>) {
        let start = Instant::now();
        let timeout = self.cfg.timeout;
        let mut connected = None;
        let result = tokio::time::timeout(timeout, self.run_inner(addr, &mut connected))
            .await
            .unwrap_or(Err(ProbeError::Timeout(timeout)));
        let latency = start.elapsed();
        let outcome = match result {
            Ok(()) => ProbeOutcome::Up { latency },
            Err(e) => ProbeOutcome::Down {
                reason: e.failure(),
                message: e.to_string(),
                latency,
            },
        };
        (outcome, connected)
    }

    async fn run_inner(
        &self,
        addr: SocketAddr,
        connected: &mut Option<Duration>,
    ) -> Result<(), ProbeError> {
        let start = Instant::now();
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        *connected = Some(start.elapsed());
        let _ = tcp.set_nodelay(true);
        match (self.cfg.kind, &self.tls) {
            (HealthKind::Tcp, _) => Ok(()),
            (HealthKind::Http, _) => self.http_get(tcp, addr).await,
            (HealthKind::Https, Some(tls)) => {
                let name = match &self.cfg.tls.server_name {
                    Some(n) => ServerName::try_from(n.clone()).map_err(ProbeError::ServerName)?,
                    None => ServerName::IpAddress(addr.ip().into()),
                };
                let stream = tls
                    .connector
                    .connect(name, tcp)
                    .await
                    .map_err(ProbeError::Tls)?;
                if !tls.missing.is_empty() {
                    // Bootstrap: the handshake is all that can be checked.
                    return Ok(());
                }
                self.http_get(stream, addr).await
            }
            (HealthKind::Https, None) => Err(ProbeError::NoTlsConfig),
        }
    }

    async fn http_get<S>(&self, stream: S, addr: SocketAddr) -> Result<(), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = self.cfg.host.clone().unwrap_or_else(|| addr.to_string());
        let req = http::Request::get(&self.cfg.path)
            .header(http::header::HOST, host)
            .header(
                http::header::USER_AGENT,
                concat!("lbd-health/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(ProbeError::Request)?;
        let resp = sender.send_request(req).await;
        conn_task.abort();
        let got = resp.map_err(ProbeError::Http)?.status().as_u16();
        let expected = self.cfg.expect_status;
        if got == expected {
            Ok(())
        } else {
            Err(ProbeError::Status { got, expected })
        }
    }
}

/// The PEM files of a TLS check, read once per (re)load.
#[derive(Clone, Default, PartialEq, Eq)]
struct TlsFiles {
    ca: Option<Pem>,
    cert: Option<Pem>,
    key: Option<Pem>,
}

#[derive(Clone, PartialEq, Eq)]
struct Pem {
    path: String,
    bytes: Vec<u8>,
}

impl Pem {
    /// None: the file does not exist (yet).
    fn read(path: &Path) -> Result<Option<Pem>, TlsSetupError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(Pem { path: shown, bytes })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsSetupError::Read {
                path: shown,
                source,
            }),
        }
    }

    fn invalid(&self, e: impl std::fmt::Display) -> TlsSetupError {
        TlsSetupError::Invalid {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// A CA bundle as a root store.
    fn roots(&self) -> Result<RootCertStore, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certs()? {
            roots.add(cert).map_err(|e| self.invalid(e))?;
        }
        Ok(roots)
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| self.invalid(e))?;
        if certs.is_empty() {
            return Err(TlsSetupError::NoCertificate {
                path: self.path.clone(),
            });
        }
        Ok(certs)
    }
}

impl TlsFiles {
    /// The files that exist, and the paths of those that do not.
    fn read(tls: &TlsConfig) -> Result<(TlsFiles, Vec<PathBuf>), TlsSetupError> {
        let mut missing = Vec::new();
        let mut read = |p: &Option<PathBuf>| -> Result<Option<Pem>, TlsSetupError> {
            let Some(p) = p else { return Ok(None) };
            let pem = Pem::read(p)?;
            if pem.is_none() {
                missing.push(p.clone());
            }
            Ok(pem)
        };
        // A CA is not used with insecure_skip_verify, so not read either.
        let ca = if tls.insecure_skip_verify {
            None
        } else {
            read(&tls.ca_file)?
        };
        let (cert, key) = match (&tls.cert_file, &tls.key_file) {
            (Some(_), Some(_)) => (read(&tls.cert_file)?, read(&tls.key_file)?),
            _ => (None, None),
        };
        Ok((TlsFiles { ca, cert, key }, missing))
    }

    /// While files are missing: a client that checks what it can. The CA,
    /// when present, verifies the server; without it any certificate is
    /// accepted (the handshake itself is still checked). No client
    /// certificate is offered.
    fn handshake_config(&self) -> Result<ClientConfig, TlsSetupError> {
        let builder = Self::builder()?;
        Ok(match &self.ca {
            Some(ca) => builder
                .with_root_certificates(ca.roots()?)
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert::new()))
                .with_no_client_auth(),
        })
    }

    fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsSetupError>
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Invalid {
                path: String::new(),
                message: e.to_string(),
            })
    }

    /// The rustls client config for health checks (ring provider).
    fn client_config(&self, tls: &TlsConfig) -> Result<ClientConfig, TlsSetupError> {
        use rustls::pki_types::pem::PemObject;
        let builder = Self::builder()?;
        let builder = if tls.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert::new()))
        } else {
            let roots = match &self.ca {
                Some(ca) => ca.roots()?,
                None => RootCertStore::empty(),
            };
            builder.with_root_certificates(roots)
        };
        Ok(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = cert.certs()?;
                let key_der =
                    PrivateKeyDer::from_pem_slice(&key.bytes).map_err(|e| key.invalid(e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| cert.invalid(e))?
            }
            _ => builder.with_no_client_auth(),
        })
    }
}

/// The rustls client config health checks use (ring provider), for tools
/// that dial like a check does. Here a missing file is an error.
pub fn client_config(tls: &TlsConfig) -> Result<ClientConfig, TlsSetupError> {
    let (files, missing) = TlsFiles::read(tls)?;
    if let Some(p) = missing.first() {
        return Err(TlsSetupError::Read {
            path: p.display().to_string(),
            source: io::ErrorKind::NotFound.into(),
        });
    }
    files.client_config(tls)
}

/// `insecure_skip_verify`: haproxy's `check-ssl verify none`. Signatures are
/// still checked so the handshake is a real one; only the chain is not.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AcceptAnyCert {
    fn new() -> Self {
        AcceptAnyCert {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
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
