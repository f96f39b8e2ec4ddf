//! Backends the balancer tests control: HTTPS "apiservers" with a
//! switchable /healthz, and plain TCP echo servers; and clients for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::pki::Pki;

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

/// As its address (what a config lists).
impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
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

/// Accepts until the backend stops; each connection (counted in
/// `accepted` and `open`) runs `handle` until it ends or the backend drops
/// its connections.
fn serve<F, Fut>(listener: TcpListener, b: &Backend, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (accepted, open, drops, stop) = (
        b.accepted.clone(),
        b.open.clone(),
        b.drop_connections.clone(),
        b.stop.clone(),
    );
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            accepted.fetch_add(1, Relaxed);
            let open = open.clone();
            let drop_token = drops.load_full();
            let work = handle(tcp);
            tokio::spawn(async move {
                open.fetch_add(1, Relaxed);
                tokio::select! { _ = work => {}, _ = drop_token.cancelled() => {} }
                open.fetch_sub(1, Relaxed);
            });
        }
    });
}

/// An HTTPS "apiserver": `/healthz` (200 or 500), `/whoami` (its id).
pub async fn https_backend(id: &str, pki: &Pki, require_client_cert: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = new_backend(id, listener.local_addr().unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(require_client_cert));
    let (healthy, id) = (b.healthy.clone(), b.id.clone());
    serve(listener, &b, move |tcp| {
        let (acceptor, healthy, id) = (acceptor.clone(), healthy.clone(), id.clone());
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (healthy, id) = (healthy.clone(), id.clone());
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
        }
    });
    b
}

/// A plain TCP backend: sends its id line first when `greet`, then echoes
/// every byte; on EOF from the client it shuts its write side (half-close).
pub async fn echo_backend(id: &str, greet: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = new_backend(id, listener.local_addr().unwrap());
    let id = b.id.clone();
    serve(listener, &b, move |mut tcp| {
        let id = id.clone();
        async move {
            if greet && tcp.write_all(format!("{id}\n").as_bytes()).await.is_err() {
                return;
            }
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
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
