//! kube-proxy's service health checks (healthcheck/service_health.go): for
//! each LoadBalancer Service with `externalTrafficPolicy: Local`, an HTTP
//! server on its `healthCheckNodePort` that tells the cloud's load
//! balancer whether this node has a ready local endpoint, so traffic that
//! must stay on the node goes only to nodes that can serve it.
//!
//! The answer (any path): 200 when the Service has at least one ready local
//! endpoint and the proxy is healthy (its syncs keep up), else 503; a JSON
//! body with the Service, `localEndpoints` and `serviceProxyHealthy`, and
//! the count again in `X-Load-Balancing-Endpoint-Weight`. The listeners are
//! opened on the NodePort addresses of the Service's families (the
//! wildcard address of each when `nodePortAddresses` is unset, as
//! kube-proxy's per-family proxiers do) and reconciled after every sync: a Service
//! that is gone, or whose port or addresses changed, is closed; a new one
//! opened; the rest left alone, their counts updated in place. A port that
//! cannot be bound is logged and tried again at the next sync.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::model::{HealthCheck, ObjectKey};
use super::server::{respond, serve, ProxyHealth};

/// One Service's answer, as kube-proxy's `hcHandler` writes it.
pub fn service_health_response(
    service: &ObjectKey,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "service": {"namespace": service.namespace, "name": service.name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    let status = if local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = respond(status, "application/json", body.to_string());
    r.headers_mut().insert(
        "x-load-balancing-endpoint-weight",
        http::HeaderValue::from(local_endpoints),
    );
    r
}

/// Where the health-check ports listen: None = the wildcard address of
/// each of the Service's families (kube-proxy with `nodePortAddresses`
/// unset), else these (those of the Service's families).
pub type ListenAddresses = Option<Vec<IpAddr>>;

struct Instance {
    port: u16,
    addresses: ListenAddresses,
    /// The IPv4 and IPv6 listeners' counts.
    local_endpoints: [Arc<AtomicUsize>; 2],
    stop: CancellationToken,
}

/// The open health-check servers, one per Service.
pub struct ServiceHealthServer {
    health: ProxyHealth,
    instances: BTreeMap<ObjectKey, Instance>,
}

impl ServiceHealthServer {
    pub fn new(health: ProxyHealth) -> Self {
        ServiceHealthServer {
            health,
            instances: BTreeMap::new(),
        }
    }

    /// Makes the open servers match `wanted` (kube-proxy's `SyncServices`
    /// and `SyncEndpoints` in one). Needs a Tokio runtime (the servers are
    /// tasks).
    pub fn sync(&mut self, wanted: &BTreeMap<ObjectKey, HealthCheck>, addresses: &ListenAddresses) {
        self.instances.retain(|key, inst| {
            let keep = wanted
                .get(key)
                .is_some_and(|hc| hc.port == inst.port && inst.addresses == *addresses);
            if !keep {
                tracing::info!(service = %key, port = inst.port, "closing health check");
                inst.stop.cancel();
            }
            keep
        });
        for (key, hc) in wanted {
            if let Some(inst) = self.instances.get(key) {
                for (v6, count) in [false, true].into_iter().zip(&inst.local_endpoints) {
                    count.store(hc.local_endpoints(v6), Ordering::Relaxed);
                }
                continue;
            }
            match self.open(key, hc, addresses) {
                Ok(inst) => {
                    tracing::info!(service = %key, port = hc.port, "opened health check");
                    self.instances.insert(key.clone(), inst);
                }
                Err(e) => tracing::warn!(
                    service = %key, port = hc.port, error = %e,
                    "failed to start health check; trying again at the next sync"
                ),
            }
        }
    }

    /// The Services with an open server and their ports.
    pub fn open_ports(&self) -> Vec<(ObjectKey, u16)> {
        self.instances
            .iter()
            .map(|(k, i)| (k.clone(), i.port))
            .collect()
    }

    /// Closes every server (shutdown).
    pub fn close_all(&mut self) {
        for inst in self.instances.values() {
            inst.stop.cancel();
        }
        self.instances.clear();
    }

    fn open(
        &self,
        key: &ObjectKey,
        hc: &HealthCheck,
        addresses: &ListenAddresses,
    ) -> std::io::Result<Instance> {
        // Every listener first: one that fails closes the others (dropped
        // here), so a retry starts clean.
        let of_family = |ip: &IpAddr| if ip.is_ipv4() { hc.ipv4 } else { hc.ipv6 };
        let wildcards = [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ];
        let listeners = match addresses {
            None => &wildcards[..],
            Some(a) => &a[..],
        }
        .iter()
        .filter(|ip| of_family(ip))
        .map(|ip| bind(SocketAddr::new(*ip, hc.port)))
        .collect::<std::io::Result<Vec<_>>>()?;
        let inst = Instance {
            port: hc.port,
            addresses: addresses.clone(),
            local_endpoints: [false, true]
                .map(|v6| Arc::new(AtomicUsize::new(hc.local_endpoints(v6)))),
            stop: CancellationToken::new(),
        };
        for l in listeners {
            let v6 = l.local_addr()?.is_ipv6();
            let count = inst.local_endpoints[usize::from(v6)].clone();
            let health = self.health.clone();
            let service = key.clone();
            let handler = move |_req: &http::Request<hyper::body::Incoming>| {
                let healthy = health.report(SystemTime::now()).healthy;
                service_health_response(&service, count.load(Ordering::Relaxed), healthy)
            };
            tokio::spawn(serve(l, handler, inst.stop.clone()));
        }
        Ok(inst)
    }
}

impl Drop for ServiceHealthServer {
    fn drop(&mut self) {
        self.close_all();
    }
}

fn listen(socket: socket2::Socket, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    // A port closed a moment ago (a port change back and forth) binds again.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // An IPv6 socket is IPv6 only, even the wildcard: the IPv4 side is
    // its own socket, when the Service has that family.
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    listen(socket, addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn body(r: Response<Full<Bytes>>) -> serde_json::Value {
        use http_body_util::BodyExt;
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    /// kube-proxy's `TestServer` answers: 503 with no local endpoint or an
    /// unhealthy proxy, 200 otherwise; the body names the Service.
    #[tokio::test]
    async fn answers_as_kube_proxy() {
        let svc = ObjectKey::new("ns", "lb");
        for (n, healthy, want) in [
            (0, true, 503),
            (2, true, 200),
            (2, false, 503),
            (0, false, 503),
        ] {
            let r = service_health_response(&svc, n, healthy);
            assert_eq!(r.status().as_u16(), want, "{n} {healthy}");
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            assert_eq!(
                r.headers()["x-load-balancing-endpoint-weight"],
                n.to_string().as_str()
            );
            let v = body(r).await;
            assert_eq!(
                v,
                serde_json::json!({
                    "service": {"namespace": "ns", "name": "lb"},
                    "localEndpoints": n,
                    "serviceProxyHealthy": healthy,
                })
            );
        }
    }

    /// A free loopback port (bound and released).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// One GET over a real connection: status line and body.
    async fn get(port: u16) -> std::io::Result<(u16, String)> {
        let mut s = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
        s.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .map_err(|_| std::io::Error::other("read timed out"))??;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((status, body))
    }

    /// Whether `port` stops answering within a second (a closed server's
    /// task ends at its next poll).
    async fn closes(port: u16) -> bool {
        for _ in 0..50 {
            if get(port).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn wanted(entries: &[(&str, u16, usize)]) -> BTreeMap<ObjectKey, HealthCheck> {
        entries
            .iter()
            .map(|(name, port, n)| {
                (
                    ObjectKey::new("default", name),
                    HealthCheck {
                        port: *port,
                        ipv4: true,
                        ipv6: false,
                        local_v4: *n,
                        local_v6: 0,
                    },
                )
            })
            .collect()
    }

    /// Real listeners on loopback through a Service's life: opened with its
    /// count, the count updated in place (same socket, still answering),
    /// moved when the port changes, closed when the Service goes; the
    /// proxy's own health turns a 200 into a 503.
    #[tokio::test]
    async fn listeners_follow_the_table() {
        let health = ProxyHealth::new(Duration::from_secs(60));
        let mut srv = ServiceHealthServer::new(health.clone());
        let lo: ListenAddresses = Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let (p1, p2) = (free_port(), free_port());

        srv.sync(&wanted(&[("a", p1, 0)]), &lo);
        let (code, b) = get(p1).await.unwrap();
        assert_eq!(code, 503, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["localEndpoints"], 0);
        assert_eq!(v["service"]["name"], "a");

        srv.sync(&wanted(&[("a", p1, 3)]), &lo);
        let (code, b) = get(p1).await.unwrap();
        assert_eq!(code, 200, "{b}");
        assert!(b.contains("\"localEndpoints\":3"), "{b}");

        // A sync that waits too long: unhealthy proxy, 503 with endpoints.
        let long_ago = SystemTime::now() - Duration::from_secs(120);
        health.queued(long_ago);
        let (code, b) = get(p1).await.unwrap();
        assert_eq!(code, 503, "{b}");
        assert!(b.contains("\"serviceProxyHealthy\":false"), "{b}");
        health.updated(SystemTime::now());

        srv.sync(&wanted(&[("a", p2, 3)]), &lo);
        assert_eq!(srv.open_ports(), vec![(ObjectKey::new("default", "a"), p2)]);
        assert_eq!(get(p2).await.unwrap().0, 200);
        assert!(closes(p1).await, "the old port still answers");

        srv.sync(&BTreeMap::new(), &lo);
        assert!(srv.open_ports().is_empty());
        assert!(closes(p2).await, "a removed Service's port still answers");
    }

    /// A port someone else holds: not opened, tried again at the next sync
    /// and opened once it is free.
    #[tokio::test]
    async fn a_busy_port_is_retried() {
        let mut srv = ServiceHealthServer::new(ProxyHealth::new(Duration::from_secs(60)));
        let lo: ListenAddresses = Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        srv.sync(&wanted(&[("a", port, 1)]), &lo);
        assert!(srv.open_ports().is_empty(), "bound over another owner");
        drop(holder);
        srv.sync(&wanted(&[("a", port, 1)]), &lo);
        assert_eq!(srv.open_ports().len(), 1);
        assert_eq!(get(port).await.unwrap().0, 200);
    }

    /// One GET to `ip`:`port`: the status, or None when refused.
    async fn get_at(ip: IpAddr, port: u16) -> Option<u16> {
        let mut s = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await
        .ok()?
        .ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split(' ').nth(1).and_then(|c| c.parse().ok())
    }

    /// nodePortAddresses unset: the wildcard address of each of the
    /// Service's families, and only those (kube-proxy's per-family
    /// proxiers): an IPv4 Service is not answered over IPv6 and the
    /// reverse; a dual-stack one over both.
    #[tokio::test]
    async fn unset_addresses_listen_on_the_services_families() {
        let v6_loopback = std::net::TcpListener::bind("[::1]:0").is_ok();
        if !v6_loopback {
            eprintln!("skipping the IPv6 half: no ::1 here");
        }
        let (v4, v6) = (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        );
        for (ipv4, ipv6) in [(true, false), (false, true), (true, true)] {
            if ipv6 && !v6_loopback {
                continue;
            }
            let mut srv = ServiceHealthServer::new(ProxyHealth::new(Duration::from_secs(60)));
            let port = free_port();
            let hc = HealthCheck {
                port,
                ipv4,
                ipv6,
                local_v4: 1,
                local_v6: 1,
            };
            srv.sync(&[(ObjectKey::new("default", "a"), hc)].into(), &None);
            assert_eq!(srv.open_ports().len(), 1, "{ipv4} {ipv6}");
            assert_eq!(
                get_at(v4, port).await,
                ipv4.then_some(200),
                "v4 {ipv4} {ipv6}"
            );
            if v6_loopback {
                assert_eq!(
                    get_at(v6, port).await,
                    ipv6.then_some(200),
                    "v6 {ipv4} {ipv6}"
                );
            }
        }
    }

    /// A dual-stack Service: each family's listener answers with its own
    /// family's count (kube-proxy's per-family proxiers), and follows it.
    #[tokio::test]
    async fn each_family_answers_its_own_count() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipping: no ::1 here");
            return;
        }
        let (v4, v6) = (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        );
        let mut srv = ServiceHealthServer::new(ProxyHealth::new(Duration::from_secs(60)));
        let port = free_port();
        let key = ObjectKey::new("default", "dual");
        let hc = |local_v4, local_v6| HealthCheck {
            port,
            ipv4: true,
            ipv6: true,
            local_v4,
            local_v6,
        };
        srv.sync(&[(key.clone(), hc(2, 0))].into(), &None);
        assert_eq!(get_at(v4, port).await, Some(200));
        assert_eq!(get_at(v6, port).await, Some(503));
        srv.sync(&[(key, hc(0, 1))].into(), &None);
        assert_eq!(get_at(v4, port).await, Some(503));
        assert_eq!(get_at(v6, port).await, Some(200));
    }
}
