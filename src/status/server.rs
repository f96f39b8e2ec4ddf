//! The admin server: `/healthz`, `/readyz`, `/metrics`, `/status` on the
//! unix socket (0600) and on the optional TCP `admin.listen`; the
//! maintenance requests (`POST /vrrp/release`, ...) on the unix socket
//! only, from root only (SO_PEERCRED), never over TCP; so is `POST
//! /reload` (what `lbd reload` sends), since it changes what the node serves.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use super::backend_control::{self, DrainBackend};
use super::report::StatusReport;

/// What the admin endpoints read.
pub struct AdminState {
    pub report: Box<dyn Fn() -> StatusReport + Send + Sync>,
    pub registry: Arc<Registry>,
    /// `/readyz`: set once every listener has checked each of its backends
    /// once (app.rs); never cleared.
    pub ready: AtomicBool,
    /// `lbd backend drain|enable` (unix socket only).
    pub drain_backend: Box<DrainBackend>,
    /// `lbd vrrp release|resume`.
    pub vrrp: crate::vrrp::VrrpControl,
    /// Where `POST /reload` asks the daemon's main loop to reload; the
    /// answer comes back on the ticket.
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadTicket>>,
}

/// One reload asked over the socket: the outcome goes back on it (the
/// refusal's reason as text).
pub type ReloadTicket = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Who is asking: maintenance requests need root on the unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// On the unix socket, uid 0.
    Root,
    /// On the unix socket, another uid (the socket is 0600: only if its
    /// mode was changed), or over TCP.
    Unprivileged,
}

pub(super) fn text(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// `POST /reload`: the main loop reloads as on SIGHUP (all or nothing) and
/// says how it went: 200 applied, 422 refused (the last good config stays,
/// the reason in the body), 503 if the daemon cannot take it now.
async fn reload(state: &AdminState, caller: Caller) -> Response<Full<Bytes>> {
    let plain = "text/plain";
    let Some(tx) = state.reload.as_ref().filter(|_| caller == Caller::Root) else {
        return text(
            StatusCode::FORBIDDEN,
            plain,
            "reload only on the admin unix socket, as root\n",
        );
    };
    let (ticket, answer) = tokio::sync::oneshot::channel();
    if tx.send(ticket).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, plain, "shutting down\n");
    }
    match answer.await {
        Ok(Ok(())) => text(StatusCode::OK, plain, "reloaded\n"),
        Ok(Err(e)) => text(StatusCode::UNPROCESSABLE_ENTITY, plain, format!("{e}\n")),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, plain, "shutting down\n"),
    }
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
    caller: Caller,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let privileged = caller == Caller::Root;
    let req = match backend_control::handle(&*state.drain_backend, req, privileged).await {
        Ok(resp) => return Ok(resp),
        Err(req) => req,
    };
    if let Some(verb) = req.uri().path().strip_prefix("/vrrp/") {
        return Ok(super::vrrp_control::handle(&state.vrrp, &req, verb, caller).await);
    }
    if req.method() == http::Method::POST && req.uri().path() == "/reload" {
        return Ok(reload(&state, caller).await);
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n",
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "text/plain", "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            }
        }
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n",
                ),
            }
        }
        "/status" => {
            let report = (state.report)();
            match serde_json::to_vec_pretty(&report) {
                Ok(body) => text(StatusCode::OK, "application/json", body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n",
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz /readyz /metrics /status, POST /reload\n",
        ),
    })
}

fn serve_conn<S>(state: Arc<AdminState>, io: S, caller: Caller, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| handle(state.clone(), req, caller));
        // HTTP/1.1 only: curl, the kubelet's probes and `lbd status` speak
        // it, and no HTTP/2 stack is linked in for them (650 KiB of h2).
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
        tokio::select! {
            _ = conn => {}
            _ = shutdown.cancelled() => {}
        }
    });
}

/// Binds the unix socket with mode 0600 (root-only: status can reveal the
/// topology), replacing a stale socket file left by a crash.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // Someone answering there means another lbd runs: don't steal it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running lbd", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Created 0600 from the start: no window where others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve_unix(
    listener: UnixListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    let l = &listener;
    accept_loop(
        || async move {
            l.accept().await.map(|(s, _)| {
                let root = s.peer_cred().is_ok_and(|c| c.uid() == 0);
                (
                    s,
                    if root {
                        Caller::Root
                    } else {
                        Caller::Unprivileged
                    },
                )
            })
        },
        "admin socket",
        state,
        shutdown,
    )
    .await
}

pub async fn serve_tcp(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let l = &listener;
    accept_loop(
        || async move { l.accept().await.map(|(s, _)| (s, Caller::Unprivileged)) },
        "admin listen",
        state,
        shutdown,
    )
    .await
}

/// One accept loop for both kinds of listener.
async fn accept_loop<S, F, Fut>(
    mut accept: F,
    what: &str,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, Caller)>>,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            a = accept() => match a {
                Ok((s, caller)) => serve_conn(state.clone(), s, caller, shutdown.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
