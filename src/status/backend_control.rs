//! `lbd backend drain|enable LISTENER BACKEND` over the admin socket: the
//! request, its handler in the daemon, and the client.
//!
//! `POST /backend/drain` or `POST /backend/enable` with the JSON body
//! `{"listener": "apiserver", "backend": "10.31.90.1:6443"}`; the answer is
//! JSON `{"ok": true, "message": "..."}` with 200, or `"ok": false` with
//! 404 (no such listener or backend) or 400 (a malformed request). Only the
//! unix socket (mode 0600: root) takes it; the TCP `admin.listen` answers
//! 403, since anyone on the node can reach that.
//!
//! A drained backend gets no new sessions; established ones go on (as
//! haproxy's `set server ... state drain`). It takes effect at once, stays
//! drained across reloads while the backend stays in the listener, and ends
//! with `enable` or a restart of lbd. `lbd status` shows it as `DRAINED`;
//! it is operator intent, not a fault, so it does not make the status
//! degraded.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::client::StatusError;

/// Paths this handler answers.
pub const DRAIN_PATH: &str = "/backend/drain";
pub const ENABLE_PATH: &str = "/backend/enable";

/// Which backend of which listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRequest {
    pub listener: String,
    /// `ADDRESS:PORT`, as `lbd status` shows it.
    pub backend: String,
}

/// What the daemon answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlAnswer {
    pub ok: bool,
    pub message: String,
}

/// Drains (`true`) or enables a backend; Ok(whether it was drained before),
/// or why not.
pub type DrainBackend = dyn Fn(&str, &str, bool) -> Result<bool, String> + Send + Sync;

fn answer(status: StatusCode, ok: bool, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ControlAnswer { ok, message }).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Answers `req` if it is one of this handler's paths (None otherwise).
/// `privileged`: it came over the unix socket.
pub async fn handle(
    drain: &DrainBackend,
    req: http::Request<Incoming>,
    privileged: bool,
) -> Result<Response<Full<Bytes>>, http::Request<Incoming>> {
    let want = match req.uri().path() {
        DRAIN_PATH => true,
        ENABLE_PATH => false,
        _ => return Err(req),
    };
    if req.method() != Method::POST {
        return Ok(answer(
            StatusCode::METHOD_NOT_ALLOWED,
            false,
            "POST only".into(),
        ));
    }
    if !privileged {
        return Ok(answer(
            StatusCode::FORBIDDEN,
            false,
            "backend drain/enable is taken on the admin unix socket only".into(),
        ));
    }
    // A request is a few dozen bytes; bound what is read.
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, false, e.to_string())),
    };
    let r: BackendRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                false,
                format!("expected {{\"listener\": ..., \"backend\": ...}}: {e}"),
            ))
        }
    };
    Ok(match drain(&r.listener, &r.backend, want) {
        Ok(was) => {
            let verb = if want { "drained" } else { "enabled" };
            let note = if was == want { " (it already was)" } else { "" };
            answer(
                StatusCode::OK,
                true,
                format!("listener {} backend {} {verb}{note}", r.listener, r.backend),
            )
        }
        Err(e) => answer(StatusCode::NOT_FOUND, false, e),
    })
}

/// The client side: asks the daemon at `socket` to drain or enable.
pub async fn request(
    socket: &Path,
    drain: bool,
    listener: &str,
    backend: &str,
) -> Result<ControlAnswer, StatusError> {
    let body = serde_json::to_vec(&BackendRequest {
        listener: listener.to_string(),
        backend: backend.to_string(),
    })
    .unwrap_or_default();
    let uri = if drain { DRAIN_PATH } else { ENABLE_PATH };
    let (_, bytes) = super::client::request_with(socket, Method::POST, uri, Some(body)).await?;
    serde_json::from_slice::<ControlAnswer>(&bytes).map_err(|e| StatusError::Protocol {
        path: socket.display().to_string(),
        message: format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ),
    })
}
