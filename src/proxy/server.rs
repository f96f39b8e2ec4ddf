//! The proxy's own HTTP endpoints, with kube-proxy's meaning:
//! `healthz_bind` serves `/healthz` and `/livez` (kube-proxy's
//! healthcheck/proxy_health.go: `/livez` 200 unless a queued change has
//! waited longer than the timeout; `/healthz` also 503 when the node is not
//! eligible: unknown, being deleted, or tainted
//! `ToBeDeletedByClusterAutoscaler`, so load balancers drain it first; JSON
//! body with `lastUpdated`, `currentTime`, `healthy` and, on `/healthz`,
//! `nodeEligible`); `metrics_bind` serves `/metrics`
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
    node_eligible: bool,
}

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// kube-proxy's NodeEligible: a Node is known, not being deleted and not
/// tainted for deletion by the cluster autoscaler.
pub fn node_eligible(node: Option<&k8s_openapi::api::core::v1::Node>) -> bool {
    let Some(node) = node else {
        return false;
    };
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    node.metadata.deletion_timestamp.is_none() && !tainted
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
    pub node_eligible: bool,
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
                node_eligible: false,
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

    /// The Node as last seen (None: not seen yet), for `/healthz`.
    pub fn set_node(&self, node: Option<&k8s_openapi::api::core::v1::Node>) {
        self.lock().node_eligible = node_eligible(node);
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
            node_eligible: s.node_eligible,
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

pub(crate) fn respond(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
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

/// Which of kube-proxy's two health answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthPath {
    /// `/healthz`: healthy and the node eligible.
    Healthz,
    /// `/livez`: healthy only.
    Livez,
}

/// The `/healthz` or `/livez` answer, as kube-proxy's handlers write it: a
/// 200 reports `lastUpdated` as now.
pub fn health_response(
    h: &ProxyHealth,
    path: HealthPath,
    now: SystemTime,
) -> Response<Full<Bytes>> {
    let r = h.report(now);
    let ok = r.healthy && (path == HealthPath::Livez || r.node_eligible);
    let last = if ok { Some(now) } else { r.last_updated };
    let mut body = serde_json::json!({
        "lastUpdated": last.map(rfc3339).unwrap_or_default(),
        "currentTime": rfc3339(r.current_time),
        "healthy": r.healthy,
    });
    if path == HealthPath::Healthz {
        body["nodeEligible"] = serde_json::json!(r.node_eligible);
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, "application/json", body.to_string())
}

pub(crate) async fn serve<F>(listener: TcpListener, handler: F, shutdown: CancellationToken)
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
        "/healthz" => health_response(&health, HealthPath::Healthz, SystemTime::now()),
        "/livez" => health_response(&health, HealthPath::Livez, SystemTime::now()),
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
        h.set_node(Some(&node(false, &[])));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        h.updated(t0);
        h.queued(t0);
        for path in [HealthPath::Healthz, HealthPath::Livez] {
            let r = health_response(&h, path, t0 + Duration::from_secs(120));
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            let r = health_response(&h, path, t0 + Duration::from_secs(1));
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        }
    }

    fn node(deleting: bool, taints: &[&str]) -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(serde_json::json!({
            "metadata": if deleting {
                serde_json::json!({"name": "n", "deletionTimestamp": "2026-12-04T00:00:00Z"})
            } else {
                serde_json::json!({"name": "n"})
            },
            "spec": {"taints": taints.iter().map(|k| serde_json::json!({"key": k, "effect": "NoSchedule"})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    async fn body(r: Response<Full<Bytes>>) -> serde_json::Value {
        use http_body_util::BodyExt;
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    /// kube-proxy healthcheck_test.go `TestHealthzServer` / `TestLivezServer`
    /// with node eligibility: `/healthz` is 503 for an unknown node, one
    /// being deleted and one tainted ToBeDeletedByClusterAutoscaler; `/livez`
    /// ignores the node; a 200 reports lastUpdated as now.
    #[tokio::test]
    async fn test_healthz_server_node_eligibility() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        h.updated(t0);
        let now = t0 + Duration::from_secs(5);
        let cases: [(&str, Option<k8s_openapi::api::core::v1::Node>, bool); 5] = [
            ("unknown node", None, false),
            ("eligible", Some(node(false, &[])), true),
            ("being deleted", Some(node(true, &[])), false),
            (
                "autoscaler taint",
                Some(node(false, &[TO_BE_DELETED_TAINT])),
                false,
            ),
            (
                "other taint",
                Some(node(false, &["node.kubernetes.io/unschedulable"])),
                true,
            ),
        ];
        for (name, n, eligible) in cases {
            h.set_node(n.as_ref());
            let r = health_response(&h, HealthPath::Healthz, now);
            let want = if eligible { 200 } else { 503 };
            assert_eq!(r.status().as_u16(), want, "{name}");
            let v = body(r).await;
            assert_eq!(v["nodeEligible"], serde_json::json!(eligible), "{name}");
            assert_eq!(v["healthy"], serde_json::json!(true), "{name}");
            let last = if eligible { rfc3339(now) } else { rfc3339(t0) };
            assert_eq!(v["lastUpdated"], serde_json::json!(last), "{name}");
            let l = health_response(&h, HealthPath::Livez, now);
            assert_eq!(l.status().as_u16(), 200, "{name}: livez");
            assert!(body(l).await.get("nodeEligible").is_none(), "{name}");
        }
    }
}
