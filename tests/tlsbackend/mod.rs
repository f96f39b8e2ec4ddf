//! Test peers for the balancer: real TLS backends (certificates made here
//! with rcgen), plain TCP echo backends, and the real `lbd` binary.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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

/// A backend the test controls.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    /// /healthz answers 200 while true, 500 otherwise.
    pub healthy: Arc<AtomicBool>,
    /// Connections accepted (health checks included for HTTPS backends).
    pub accepted: Arc<AtomicU64>,
    /// Open connections now.
    pub open: Arc<AtomicU64>,
    /// Cancels every open connection (the server end closes).
    pub drop_connections: Arc<arc_swap::ArcSwap<CancellationToken>>,
    stop: CancellationToken,
}

impl Backend {
    /// Stops listening (new connects are refused) and closes open ones.
    pub fn stop(&self) {
        self.stop.cancel();
        self.drop_connections.load().cancel();
    }
    /// Stops listening but keeps open connections.
    pub fn stop_listening(&self) {
        self.stop.cancel();
    }
    pub fn close_open_connections(&self) {
        let old = self
            .drop_connections
            .swap(Arc::new(CancellationToken::new()));
        old.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn new_backend(id: &str, addr: SocketAddr) -> Backend {
    Backend {
        id: id.to_string(),
        addr,
        healthy: Arc::new(AtomicBool::new(true)),
        accepted: Arc::new(AtomicU64::new(0)),
        open: Arc::new(AtomicU64::new(0)),
        drop_connections: Arc::new(arc_swap::ArcSwap::from_pointee(CancellationToken::new())),
        stop: CancellationToken::new(),
    }
}

/// An HTTPS "apiserver": `/healthz` (200 or 500), `/whoami` (its id),
/// `/hold` (answers, then keeps the connection open for keep-alive reuse).
pub async fn https_backend(id: &str, pki: &Pki, require_client_cert: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = new_backend(id, listener.local_addr().unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(require_client_cert));
    let (healthy, accepted, open, drops, stop, id) = (
        b.healthy.clone(),
        b.accepted.clone(),
        b.open.clone(),
        b.drop_connections.clone(),
        b.stop.clone(),
        b.id.clone(),
    );
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            accepted.fetch_add(1, Relaxed);
            let (acceptor, healthy, open, id) =
                (acceptor.clone(), healthy.clone(), open.clone(), id.clone());
            let drop_token = drops.load_full();
            tokio::spawn(async move {
                open.fetch_add(1, Relaxed);
                let work = async {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let healthy = healthy.clone();
                        let id = id.clone();
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/healthz" if healthy.load(Relaxed) => (200, "ok".to_string()),
                                "/healthz" => (500, "unhealthy".to_string()),
                                "/whoami" => (200, id),
                                _ => (404, "not found".to_string()),
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                };
                tokio::select! { _ = work => {}, _ = drop_token.cancelled() => {} }
                open.fetch_sub(1, Relaxed);
            });
        }
    });
    b
}

/// A plain TCP backend: sends its id line first when `greet`, then echoes
/// every byte; on EOF from the client it shuts its write side (half-close).
pub async fn echo_backend(id: &str, greet: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = new_backend(id, listener.local_addr().unwrap());
    let (accepted, open, drops, stop, id) = (
        b.accepted.clone(),
        b.open.clone(),
        b.drop_connections.clone(),
        b.stop.clone(),
        b.id.clone(),
    );
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            accepted.fetch_add(1, Relaxed);
            let (open, id) = (open.clone(), id.clone());
            let drop_token = drops.load_full();
            tokio::spawn(async move {
                open.fetch_add(1, Relaxed);
                let work = async {
                    if greet && tcp.write_all(format!("{id}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                };
                tokio::select! { _ = work => {}, _ = drop_token.cancelled() => {} }
                open.fetch_sub(1, Relaxed);
            });
        }
    });
    b
}

/// One HTTPS request on a fresh connection through `addr`; returns status and body.
pub async fn https_get(pki: &Pki, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(pki.client_config())
        .connect(ServerName::try_from("kubernetes").unwrap(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "kubernetes")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads the greeting line of an echo backend through `addr`, from a client
/// bound to `source` (any 127.x address works on loopback).
pub async fn whoami_tcp(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Result<(String, TcpStream), String> {
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|e| e.to_string())?;
    }
    let mut s = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        loop {
            match s.read(&mut byte).await {
                Ok(0) => return Err("closed before greeting".to_string()),
                Ok(_) if byte[0] == b'\n' => return Ok(()),
                Ok(_) => line.push(byte[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "greeting timeout".to_string())??;
    Ok((String::from_utf8_lossy(&line).into_owned(), s))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real daemon, run from a temp dir with its own admin socket.
pub struct Lbd {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

pub fn lbd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lbd")
}

impl Lbd {
    /// Writes `body` (a config without `admin:`) and starts `lbd run`;
    /// returns once the admin socket answers.
    pub async fn start(body: &str) -> Lbd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lbd.sock");
        let config = dir.path().join("lbd.yaml");
        std::fs::write(
            &config,
            format!(
                "{body}\nadmin:\n  socket: {}\n  listen: null\n",
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("lbd.log");
        let child = Command::new(lbd_bin())
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lbd = Lbd {
            child,
            dir,
            config,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while lbd::status::client::fetch(&lbd.socket).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "lbd did not start:\n{}",
                lbd.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lbd
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = lbd::status::client::fetch(&self.socket)
            .await
            .expect("status");
        serde_json::to_value(r).unwrap()
    }

    /// Rewrites the config (keeping the admin section) and sends SIGHUP.
    pub fn reload(&self, body: &str) {
        std::fs::write(
            &self.config,
            format!(
                "{body}\nadmin:\n  socket: {}\n  listen: null\n",
                self.socket.display()
            ),
        )
        .unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
