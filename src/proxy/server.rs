//! The proxy's own HTTP endpoints, with kube-proxy's meaning:
//! `healthz_bind` serves `/healthz` and `/livez` (200 while the last sync is
//! recent or nothing waits to be synced, 503 otherwise, JSON body with
//! `lastUpdated` and `currentTime`); `metrics_bind` serves `/metrics`
//! (Prometheus text), `/healthz` and `/proxyMode`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct HealthState {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    timeout: Duration,
}

/// kube-proxy's ProxierHealthServer: a sync queued and not done within
/// `timeout` (2 x sync_period, as kube-proxy) makes the proxy unhealthy.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    state: Arc<Mutex<HealthState>>,
}

/// What `/healthz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            state: Arc::new(Mutex::new(HealthState {
                last_updated: None,
                oldest_pending: None,
                timeout,
            })),
        }
    }

    /// A new timeout (a reload changed sync_period), for every clone.
    pub fn set_timeout(&self, timeout: Duration) {
        self.lock().timeout = timeout;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change is waiting to be synced (the oldest one counts).
    pub fn queued(&self, at: SystemTime) {
        self.lock().oldest_pending.get_or_insert(at);
    }

    /// A sync completed: everything queued before it is programmed.
    pub fn updated(&self, at: SystemTime) {
        let mut s = self.lock();
        s.last_updated = Some(at);
        s.oldest_pending = None;
    }

    pub fn report(&self, now: SystemTime) -> HealthReport {
        let s = self.lock();
        let healthy = match s.oldest_pending {
            None => true,
            Some(p) => now.duration_since(p).unwrap_or_default() < s.timeout,
        };
        HealthReport {
            healthy,
            last_updated: s.last_updated,
            current_time: now,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn respond(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// The `/healthz` and `/livez` answer.
pub fn health_response(h: &ProxyHealth, now: SystemTime) -> Response<Full<Bytes>> {
    let r = h.report(now);
    let body = serde_json::json!({
        "lastUpdated": r.last_updated.map(rfc3339).unwrap_or_default(),
        "currentTime": rfc3339(r.current_time),
        "nodeEligible": true,
    });
    let status = if r.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, "application/json", body.to_string())
}

async fn serve<F>(listener: TcpListener, handler: F, shutdown: CancellationToken)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            // A stopped server accepts nothing more, even what waits.
            biased;
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let h = handler.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = h(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// kube-proxy's healthz port (10256).
pub async fn serve_healthz(
    listener: TcpListener,
    health: ProxyHealth,
    shutdown: CancellationToken,
) {
    let handler = move |req: &Request<Incoming>| match req.uri().path() {
        "/healthz" | "/livez" => health_response(&health, SystemTime::now()),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        ),
    };
    serve(listener, handler, shutdown).await
}

/// kube-proxy's metrics port (10249).
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    _health: ProxyHealth,
    shutdown: CancellationToken,
) {
    let handler = move |req: &Request<Incoming>| match req.uri().path() {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok".into()),
        "/proxyMode" => respond(StatusCode::OK, "text/plain", "ipvs".into()),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        ),
    };
    serve(listener, handler, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_until_a_queued_change_waits_longer_than_the_timeout() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(h.report(t0).healthy, "nothing pending");
        h.queued(t0);
        assert!(h.report(t0 + Duration::from_secs(59)).healthy);
        // A later queue does not reset the oldest pending change.
        h.queued(t0 + Duration::from_secs(30));
        assert!(!h.report(t0 + Duration::from_secs(60)).healthy);
        h.updated(t0 + Duration::from_secs(61));
        let r = h.report(t0 + Duration::from_secs(500));
        assert!(r.healthy, "synced, nothing pending");
        assert_eq!(r.last_updated, Some(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn health_body_is_kube_proxy_json() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        h.updated(t0);
        h.queued(t0);
        let r = health_response(&h, t0 + Duration::from_secs(120));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = health_response(&h, t0 + Duration::from_secs(1));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
