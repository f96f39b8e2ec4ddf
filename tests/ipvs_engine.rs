//! The whole proxy engine (kube-rs client, watchers and reflectors, the sync
//! runner) against the in-process API server and the in-memory IPVS.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lbd::proxy::driver::Runner;
use lbd::proxy::engine::EngineSettings;
use lbd::proxy::kernel::ipvs::{FakeIpvs, IpvsCall};
use lbd::proxy::kernel::nft::FakeFirewall;
use lbd::proxy::kernel::{
    Conntrack, FakeAddresses, FakeConntrack, FakeSysctls, Flow, IpvsDataPlane,
};
use lbd::proxy::metrics::ProxyMetrics;
use lbd::proxy::model::{DestKey, Protocol, RealServer, ServiceKey, VirtualServer};
use lbd::proxy::report::ProxyReporter;
use lbd::proxy::server::ProxyHealth;
use lbd::status::ProxyStatus;
use serde_json::{json, Value};
use support::apiserver::{Kind, TestApiServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NODE: &str = "cp1";

fn service(name: &str, ip: &str, ports: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports}})
}

fn slice(svc: &str, name: &str, port: u16, addrs: &[&str]) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "nodeName": "cp2", "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": eps})
}

fn node() -> Value {
    json!({"metadata": {"name": NODE},
           "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}})
}

fn settings() -> EngineSettings {
    EngineSettings {
        node_name: NODE.into(),
        scheduler: "rr".into(),
        node_port_addresses: vec![],
        node_port_primary: false,
        exclude_cidrs: vec![],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        masquerade_all: false,
        min_sync_period: Duration::from_millis(20),
        sync_period: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(60),
        timeouts: None,
        strict_arp: false,
    }
}

struct Running {
    status: ProxyReporter,
    metrics: ProxyMetrics,
    health: ProxyHealth,
    stop: CancellationToken,
    task: JoinHandle<()>,
    firewall: FakeFirewall,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("engine stops")
            .unwrap();
    }
    fn status(&self) -> Option<ProxyStatus> {
        self.status.report()
    }
}

async fn client(api: &TestApiServer) -> kube::Client {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let kc = kube::config::Kubeconfig::from_yaml(&api.kubeconfig_yaml()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn start(
    api: &TestApiServer,
    ipvs: &FakeIpvs,
    addrs: &FakeAddresses,
    s: EngineSettings,
) -> Running {
    start_with_conntrack(api, ipvs, addrs, s, None).await
}

async fn start_with_conntrack(
    api: &TestApiServer,
    ipvs: &FakeIpvs,
    addrs: &FakeAddresses,
    s: EngineSettings,
    conntrack: Option<FakeConntrack>,
) -> Running {
    let status = ProxyReporter::default();
    let firewall = FakeFirewall::default();
    let metrics = ProxyMetrics::new();
    let health = ProxyHealth::new(Duration::from_secs(60));
    let engine = Runner {
        settings: s,
        plane: Box::new(IpvsDataPlane {
            ipvs: Arc::new(ipvs.clone()),
            addresses: Arc::new(addrs.clone()),
            firewall: Some(Arc::new(firewall.clone())),
            sysctls: Arc::new(FakeSysctls::default()),
            conntrack: conntrack.map(|c| Arc::new(c) as Arc<dyn Conntrack>),
        }),
        reporter: status.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let stop = CancellationToken::new();
    let c = client(api).await;
    let token = stop.clone();
    let task = tokio::spawn(async move { engine.run(c, token).await.unwrap() });
    Running {
        status,
        metrics,
        health,
        stop,
        task,
        firewall,
    }
}

fn key(a: &str, port: u16) -> ServiceKey {
    ServiceKey {
        addr: a.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
    }
}

/// Real servers of one virtual server in the fake kernel: (addr:port, weight).
fn dests(ipvs: &FakeIpvs, k: ServiceKey) -> Option<Vec<(String, u32)>> {
    ipvs.snapshot()
        .into_iter()
        .find(|(vs, _)| vs.key() == k)
        .map(|(_, rs)| rs.iter().map(|r| (r.key().to_string(), r.weight)).collect())
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if f() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_programmed_before_both_caches_synced() {
    let api = TestApiServer::start().await;
    api.apply(
        Kind::Service,
        service("web", "10.96.0.20", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1", "10.244.1.2"]),
    );
    api.apply(Kind::Node, node());
    api.hold(Kind::EndpointSlice);
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    let run = start(&api, &ipvs, &addrs, settings()).await;

    // Services listed, slices not yet: not even a kernel listing happens.
    eventually("services listed", || {
        api.counters.lists.load(Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ipvs.calls().is_empty(), "{:?}", ipvs.calls());
    assert!(addrs.snapshot().is_empty());
    assert_eq!(run.status().map(|s| s.synced), Some(false));

    api.release(Kind::EndpointSlice);
    let k = key("10.96.0.20", 80);
    eventually("table programmed", || {
        dests(&ipvs, k).is_some_and(|d| d.len() == 2)
    })
    .await;
    assert_eq!(
        dests(&ipvs, k).unwrap(),
        vec![
            ("10.244.1.1:8080".to_string(), 1),
            ("10.244.1.2:8080".to_string(), 1)
        ]
    );
    assert_eq!(addrs.snapshot(), BTreeSet::from([ip("10.96.0.20")]));
    eventually("status synced", || {
        run.status()
            .is_some_and(|s| s.synced && s.services == 1 && s.real_servers == 2)
    })
    .await;
    // The nftables table was rendered from the same state.
    let rulesets = run.firewall.applied.lock().unwrap().clone();
    assert!(rulesets
        .last()
        .unwrap()
        .to_string()
        .contains(r#"["10.96.0.20","tcp",80]"#));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_are_reflected_with_minimal_calls() {
    let api = TestApiServer::start().await;
    api.apply(
        Kind::Service,
        service("web", "10.96.0.20", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1"]),
    );
    api.apply(Kind::Node, node());
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    let run = start(&api, &ipvs, &addrs, settings()).await;
    let k = key("10.96.0.20", 80);
    eventually("first endpoint", || {
        dests(&ipvs, k).is_some_and(|d| d.len() == 1)
    })
    .await;
    ipvs.take_mutations();

    // One endpoint added: exactly one add_dest.
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1", "10.244.1.2"]),
    );
    eventually("second endpoint", || {
        dests(&ipvs, k).is_some_and(|d| d.len() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        ipvs.take_mutations(),
        vec![IpvsCall::AddDest(
            k,
            RealServer::new(ip("10.244.1.2"), 8080, 1)
        )]
    );

    // One removed while it has open connections: weight 0, kept.
    let gone = DestKey {
        addr: ip("10.244.1.1"),
        port: 8080,
    };
    assert!(ipvs.set_conns(&k, &gone, 2, 0));
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.2"]),
    );
    eventually("draining at weight 0", || {
        dests(&ipvs, k).is_some_and(|d| d.contains(&("10.244.1.1:8080".to_string(), 0)))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        dests(&ipvs, k)
            .unwrap()
            .contains(&("10.244.1.1:8080".to_string(), 0)),
        "deleted while busy"
    );
    // Connections end: deleted at the next recheck.
    ipvs.set_conns(&k, &gone, 0, 0);
    eventually("drained real server deleted", || {
        dests(&ipvs, k).is_some_and(|d| d == vec![("10.244.1.2:8080".to_string(), 1)])
    })
    .await;

    // Service deleted: virtual server and address gone.
    api.delete(Kind::Service, "default", "web");
    eventually("service removed", || {
        dests(&ipvs, k).is_none() && addrs.snapshot().is_empty()
    })
    .await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_relists_and_converges() {
    let api = TestApiServer::start().await;
    api.apply(
        Kind::Service,
        service("web", "10.96.0.20", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::Service,
        service("old", "10.96.0.21", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1"]),
    );
    api.apply(Kind::Node, node());
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    let run = start(&api, &ipvs, &addrs, settings()).await;
    eventually("synced", || dests(&ipvs, key("10.96.0.21", 80)).is_some()).await;

    // While the watches are down, changes happen and history is compacted:
    // the resumed watches get 410 Expired and the watchers relist. The
    // delete of "old" is never seen as an event, only as its absence.
    api.cut();
    api.delete(Kind::Service, "default", "old");
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.5"]),
    );
    api.compact();
    api.restore();
    eventually("relisted state programmed", || {
        dests(&ipvs, key("10.96.0.21", 80)).is_none()
            && dests(&ipvs, key("10.96.0.20", 80)) == Some(vec![("10.244.1.5:8080".to_string(), 1)])
    })
    .await;
    assert!(
        api.counters.expired.load(Ordering::SeqCst) >= 1,
        "no 410 was served"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_outage_changes_nothing_then_resyncs() {
    let api = TestApiServer::start().await;
    api.apply(
        Kind::Service,
        service("web", "10.96.0.20", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1", "10.244.1.2"]),
    );
    api.apply(Kind::Node, node());
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    let run = start(&api, &ipvs, &addrs, settings()).await;
    let k = key("10.96.0.20", 80);
    eventually("synced", || dests(&ipvs, k).is_some_and(|d| d.len() == 2)).await;
    let before = ipvs.snapshot();
    ipvs.take_mutations();

    api.cut();
    let syncs_before = ipvs
        .calls()
        .iter()
        .filter(|c| **c == IpvsCall::ListServices)
        .count();
    // Several forced resyncs (sync_period 300 ms) run from the kept caches.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let syncs = ipvs
        .calls()
        .iter()
        .filter(|c| **c == IpvsCall::ListServices)
        .count();
    assert!(syncs >= syncs_before + 2, "periodic syncs stopped: {syncs}");
    assert!(
        api.counters.dropped_connections.load(Ordering::SeqCst) >= 1,
        "client never retried"
    );
    assert_eq!(ipvs.take_mutations(), vec![]);
    assert_eq!(ipvs.snapshot(), before);
    assert_eq!(addrs.snapshot(), BTreeSet::from([ip("10.96.0.20")]));

    // Back: the watch resumes and what changed meanwhile is applied.
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.2", "10.244.1.3"]),
    );
    api.restore();
    eventually("resynced", || {
        dests(&ipvs, k)
            == Some(vec![
                ("10.244.1.2:8080".to_string(), 1),
                ("10.244.1.3:8080".to_string(), 1),
            ])
    })
    .await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_the_kernel_table_and_leaves_foreign_services() {
    let api = TestApiServer::start().await;
    api.apply(
        Kind::Service,
        service("web", "10.96.0.20", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1"]),
    );
    api.apply(Kind::Node, node());
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    let foreign = VirtualServer::new(ip("192.0.2.1"), 80, Protocol::Tcp, "wlc");
    ipvs.insert_foreign(
        foreign.clone(),
        vec![RealServer::new(ip("192.0.2.2"), 80, 3)],
    );
    let run = start(&api, &ipvs, &addrs, settings()).await;
    let k = key("10.96.0.20", 80);
    eventually("synced", || dests(&ipvs, k).is_some()).await;
    run.stop().await;
    let table = ipvs.snapshot();
    ipvs.take_mutations();

    // A new engine on the same kernel: no flush, nothing re-added.
    let run = start(&api, &ipvs, &addrs, settings()).await;
    eventually("second engine synced", || {
        run.status().is_some_and(|s| s.synced)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ipvs.take_mutations(), vec![]);
    assert_eq!(ipvs.snapshot(), table);
    assert_eq!(
        dests(&ipvs, foreign.key()),
        Some(vec![("192.0.2.2:80".to_string(), 3)])
    );
    run.stop().await;
}

/// One HTTP/1.1 GET over a fresh connection: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_ports_speak_kube_proxy() {
    use lbd::proxy::server::{serve_healthz, serve_metrics};
    let api = TestApiServer::start().await;
    api.apply(
        Kind::Service,
        service("web", "10.96.0.20", json!([{"name": "http", "port": 80}])),
    );
    api.apply(
        Kind::EndpointSlice,
        slice("web", "web-1", 8080, &["10.244.1.1"]),
    );
    api.apply(Kind::Node, node());
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    let run = start(&api, &ipvs, &addrs, settings()).await;
    let stop = CancellationToken::new();
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ha, ma) = (hl.local_addr().unwrap(), ml.local_addr().unwrap());
    tokio::spawn(serve_healthz(hl, run.health.clone(), stop.clone()));
    let mut reg = prometheus_client::registry::Registry::default();
    run.metrics.register_kube_proxy(&mut reg);
    run.metrics.register_lbd(&mut reg);
    tokio::spawn(serve_metrics(
        ml,
        Arc::new(reg),
        run.health.clone(),
        stop.clone(),
    ));
    eventually("synced", || run.status().is_some_and(|s| s.synced)).await;

    for path in ["/healthz", "/livez"] {
        let (code, body) = http_get(ha, path).await;
        assert_eq!(code, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["lastUpdated"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{body}"
        );
        assert!(
            v["currentTime"].as_str().is_some_and(|s| !s.is_empty()),
            "{body}"
        );
    }
    assert_eq!(http_get(ha, "/nope").await.0, 404);
    let (code, text) = http_get(ma, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds_bucket",
        "lbd_proxy_real_servers 1",
        "lbd_proxy_synced 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let syncs: f64 = text
        .lines()
        .find(|l| l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(syncs >= 1.0);
    assert_eq!(http_get(ma, "/proxyMode").await, (200, "ipvs".to_string()));

    // A change queued and never synced for longer than the health timeout
    // (the engine stopped, the node still "thinks" it proxies): 503.
    run.stop().await;
    let h = ProxyHealth::new(Duration::from_millis(50));
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ha = hl.local_addr().unwrap();
    tokio::spawn(serve_healthz(hl, h.clone(), stop.clone()));
    h.queued(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(http_get(ha, "/healthz").await.0, 503);
    stop.cancel();
}

/// Between full syncs, changes reach the kernel through the watchers'
/// change tracker and changed-only syncs: an endpoint change, a slice
/// relabelled to another Service (both Services follow) and a deleted
/// Service, with no kernel listing and calls for those Services only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_between_full_syncs_touch_only_their_services() {
    let api = TestApiServer::start().await;
    for (name, ip) in [
        ("a", "10.96.0.31"),
        ("b", "10.96.0.32"),
        ("c", "10.96.0.33"),
    ] {
        api.apply(
            Kind::Service,
            service(name, ip, json!([{"name": "http", "port": 80}])),
        );
        api.apply(
            Kind::EndpointSlice,
            slice(name, &format!("{name}-1"), 8080, &["10.244.3.1"]),
        );
    }
    api.apply(Kind::Node, node());
    let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
    // No periodic full sync during the test.
    let s = EngineSettings {
        sync_period: Duration::from_secs(600),
        ..settings()
    };
    let run = start(&api, &ipvs, &addrs, s).await;
    let (ka, kb, kc) = (
        key("10.96.0.31", 80),
        key("10.96.0.32", 80),
        key("10.96.0.33", 80),
    );
    eventually("programmed", || {
        [ka, kb, kc]
            .iter()
            .all(|k| dests(&ipvs, *k).is_some_and(|d| d.len() == 1))
    })
    .await;
    ipvs.clear_calls();

    // b's endpoints change: b's kernel calls only, and no listing.
    api.apply(
        Kind::EndpointSlice,
        slice("b", "b-1", 8080, &["10.244.3.1", "10.244.3.2"]),
    );
    eventually("b has two", || {
        dests(&ipvs, kb).is_some_and(|d| d.len() == 2)
    })
    .await;

    // c's slice is relabelled to a: c loses its endpoint, a gains one.
    let mut moved = slice("a", "c-1", 8080, &["10.244.3.9"]);
    moved["metadata"]["name"] = json!("c-1");
    api.apply(Kind::EndpointSlice, moved);
    eventually("slice moved", || {
        dests(&ipvs, ka).is_some_and(|d| d.len() == 2)
            && dests(&ipvs, kc).is_some_and(|d| d.iter().all(|(_, w)| *w == 0))
    })
    .await;

    // a is deleted: its virtual server and ClusterIP go, b's and c's stay.
    assert!(api.delete(Kind::Service, "default", "a"));
    eventually("a gone", || {
        dests(&ipvs, ka).is_none() && !addrs.snapshot().contains(&ip("10.96.0.31"))
    })
    .await;
    let calls = ipvs.calls();
    assert!(
        !calls.contains(&IpvsCall::ListServices),
        "a listing between full syncs: {calls:?}"
    );
    for c in &calls {
        let k = match c {
            IpvsCall::AddDest(k, _)
            | IpvsCall::UpdateDest(k, _)
            | IpvsCall::DeleteDest(k, _)
            | IpvsCall::ListDests(k)
            | IpvsCall::DeleteService(k) => *k,
            IpvsCall::AddService(v) | IpvsCall::UpdateService(v) => v.key(),
            other => panic!("unexpected call {other:?}"),
        };
        assert!([ka, kb, kc].contains(&k), "{c:?}");
    }
    assert!(addrs.snapshot().contains(&ip("10.96.0.32")));
    assert!(addrs.snapshot().contains(&ip("10.96.0.33")));
    run.stop().await;
}

/// kube-proxy's stale UDP flow cleanup through the whole loop: a DNS
/// Service loses an endpoint; the tracked flow to it is deleted once the
/// kernel is programmed, the flow to the endpoint that stays is kept, and
/// so are TCP flows and flows to other addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_to_a_removed_endpoint_are_deleted() {
    let api = TestApiServer::start().await;
    api.apply(Kind::Node, node());
    api.apply(
        Kind::Service,
        service(
            "dns",
            "10.96.0.10",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
        ),
    );
    let dns_slice = |addrs: &[&str]| {
        let eps: Vec<Value> = addrs
            .iter()
            .map(|a| json!({"addresses": [a], "nodeName": "cp2", "conditions": {"ready": true}}))
            .collect();
        json!({"metadata": {"name": "dns-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "dns"}},
               "addressType": "IPv4", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
               "endpoints": eps})
    };
    api.apply(
        Kind::EndpointSlice,
        dns_slice(&["10.244.1.1", "10.244.1.2"]),
    );
    let ct = FakeConntrack::default();
    let flow = |proto: Protocol, sport: u16, dst: &str, reply: &str| Flow {
        protocol: proto,
        orig_src: ip("10.0.0.1"),
        orig_dst: ip(dst),
        orig_src_port: sport,
        orig_dst_port: 53,
        reply_src: ip(reply),
        zone: 0,
    };
    let to_kept = flow(Protocol::Udp, 1001, "10.96.0.10", "10.244.1.1");
    let to_removed = flow(Protocol::Udp, 1002, "10.96.0.10", "10.244.1.2");
    let tcp = flow(Protocol::Tcp, 1003, "10.96.0.10", "10.244.1.2");
    let elsewhere = flow(Protocol::Udp, 1004, "10.96.0.99", "10.244.1.2");
    for f in [to_kept, to_removed, tcp, elsewhere] {
        ct.insert(f);
    }
    let ipvs = FakeIpvs::default();
    let addrs = FakeAddresses::default();
    let r = start_with_conntrack(&api, &ipvs, &addrs, settings(), Some(ct.clone())).await;
    let k = ServiceKey {
        addr: ip("10.96.0.10"),
        port: 53,
        protocol: Protocol::Udp,
    };
    eventually("both endpoints programmed", || {
        dests(&ipvs, k).is_some_and(|d| d.len() == 2)
    })
    .await;
    assert_eq!(ct.flows().len(), 4, "nothing is stale while both serve");

    api.apply(Kind::EndpointSlice, dns_slice(&["10.244.1.1"]));
    eventually("the removed endpoint's flow deleted", || {
        !ct.flows().contains(&to_removed)
    })
    .await;
    assert_eq!(dests(&ipvs, k).map(|d| d.len()), Some(1));
    let left: BTreeSet<Flow> = ct.flows().into_iter().collect();
    assert_eq!(left, BTreeSet::from([to_kept, tcp, elsewhere]));
    r.stop().await;
}
