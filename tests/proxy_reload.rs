//! The proxy's entry points (`Proxy::start`, `prepare` + `commit`,
//! `report`) against the in-process API server and the in-memory kernel:
//! what a reload changes live, what it restarts, what it refuses, and that
//! a refused reload changes nothing.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lbd::config::{IpvsConfig, KubeconfigSource, ProxyConfig, ProxyMode};
use lbd::proxy::kernel::ipvs::IpvsCall;
use lbd::proxy::kernel::{DataPlane, FakeKernel};
use lbd::proxy::{PlaneFactory, Proxy, ProxyError};
use lbd::status::ProxyDataPlane;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use support::apiserver::{Kind, TestApiServer};
use tokio_util::sync::CancellationToken;

const NODE: &str = "cp1";

fn service(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                    "ports": [{"name": "http", "port": 80}]}})
}

fn slice(svc: &str, addrs: &[&str]) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"name": format!("{svc}-1"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": eps})
}

/// An API server with one Service `svc` on `ip`.
async fn api(svc: &str, ip: &str) -> TestApiServer {
    let api = TestApiServer::start().await;
    api.apply(Kind::Service, service(svc, ip));
    api.apply(Kind::EndpointSlice, slice(svc, &["10.244.1.1"]));
    api.apply(
        Kind::Node,
        json!({"metadata": {"name": NODE},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}}),
    );
    api
}

fn kubeconfig(dir: &Path, name: &str, api: &TestApiServer) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, api.kubeconfig_yaml()).unwrap();
    p
}

fn config(kubeconfig: &Path) -> ProxyConfig {
    ProxyConfig {
        mode: ProxyMode::Ipvs,
        kube_proxy_config: None,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        kubeconfig_source: KubeconfigSource::LbdYaml,
        kubeconfig_overridden: vec![],
        api_server: None,
        cluster_cidr: vec!["10.244.0.0/16".parse().unwrap()],
        masquerade_all: false,
        node_port_addresses: vec![],
        node_port_primary: false,
        hostname_override: None,
        ipvs: IpvsConfig {
            scheduler: "rr".into(),
            strict_arp: false,
            exclude_cidrs: vec![],
            sync_period: Duration::from_secs(1),
            min_sync_period: Duration::from_millis(20),
            tcp_timeout: None,
            tcp_fin_timeout: None,
            udp_timeout: None,
        },
        healthz_bind: None,
        metrics_bind: None,
    }
}

/// The in-memory kernel, and a factory of data planes over it that counts
/// how often the proxy asked for one (once per start of its loop).
fn kernel() -> (FakeKernel, PlaneFactory, Arc<AtomicUsize>) {
    let k = FakeKernel::default();
    let made = Arc::new(AtomicUsize::new(0));
    let (k2, m2) = (k.clone(), made.clone());
    let f: PlaneFactory = Arc::new(move || {
        m2.fetch_add(1, Ordering::SeqCst);
        let p: Box<dyn DataPlane> = Box::new(k2.plane());
        Ok(p)
    });
    (k, f, made)
}

async fn start(cfg: Option<&ProxyConfig>, planes: PlaneFactory) -> (Proxy, CancellationToken) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let stop = CancellationToken::new();
    let p = Proxy::start_with(cfg, NODE, &mut Registry::default(), stop.clone(), planes).await;
    (p, stop)
}

async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Schedulers of the virtual servers on `addr`.
fn schedulers(k: &FakeKernel, addr: &str) -> Vec<String> {
    let a: std::net::IpAddr = addr.parse().unwrap();
    k.ipvs
        .snapshot()
        .into_iter()
        .filter(|(vs, _)| vs.addr == a)
        .map(|(vs, _)| vs.scheduler)
        .collect()
}

/// A port nothing listens on now.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn healthz(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split(' ').nth(1).and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_change_in_place_without_a_restart() {
    let api = api("web", "10.96.0.20").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&kubeconfig(dir.path(), "kc", &api));
    let (k, planes, made) = kernel();
    let (mut p, stop) = start(Some(&cfg), planes).await;
    eventually("synced", || p.report().is_some_and(|s| s.synced)).await;
    assert_eq!(schedulers(&k, "10.96.0.20"), vec!["rr"]);
    let bound = k.addresses.snapshot();
    k.ipvs.take_mutations();

    cfg.ipvs.scheduler = "wrr".into();
    cfg.ipvs.exclude_cidrs = vec!["10.97.0.0/16".parse().unwrap()];
    cfg.ipvs.strict_arp = true;
    p.apply(Some(&cfg)).await.unwrap();
    eventually("scheduler changed", || {
        schedulers(&k, "10.96.0.20") == vec!["wrr"]
    })
    .await;
    eventually("strict ARP set", || {
        k.sysctls.values().get("net.ipv4.conf.all.arp_ignore") == Some(&"1")
    })
    .await;
    // In place: an update, nothing deleted or added again; the loop and
    // its watchers were not restarted.
    let m = k.ipvs.take_mutations();
    assert!(
        m.iter().all(|c| matches!(c, IpvsCall::UpdateService(_))),
        "{m:?}"
    );
    assert_eq!(made.load(Ordering::SeqCst), 1);
    assert_eq!(k.addresses.snapshot(), bound);
    assert!(p.report().unwrap().synced);

    // The same config again changes nothing.
    p.apply(Some(&cfg)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(k.ipvs.take_mutations(), vec![]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_change_is_refused_and_changes_nothing() {
    let api = api("web", "10.96.0.20").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&kubeconfig(dir.path(), "kc", &api));
    let (k, planes, made) = kernel();
    let (mut p, stop) = start(Some(&cfg), planes).await;
    eventually("synced", || p.report().is_some_and(|s| s.synced)).await;
    let table = k.ipvs.snapshot();

    let mut none = cfg.clone();
    none.mode = ProxyMode::None;
    let mut nft = cfg.clone();
    nft.mode = ProxyMode::Nftables;
    for next in [Some(&none), Some(&nft), None] {
        let e = p.apply(next).await.unwrap_err();
        assert!(
            matches!(e, ProxyError::ModeChange { from: "ipvs", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("restart"), "{e}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(k.ipvs.snapshot(), table);
    assert_eq!(made.load(Ordering::SeqCst), 1);
    let s = p.report().unwrap();
    assert!(s.synced && s.mode == ProxyDataPlane::Ipvs);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_moves_and_a_bind_failure_rejects_the_whole_reload() {
    let api = api("web", "10.96.0.20").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&kubeconfig(dir.path(), "kc", &api));
    let first = free_addr();
    cfg.healthz_bind = Some(first);
    let (k, planes, _) = kernel();
    let (mut p, stop) = start(Some(&cfg), planes).await;
    eventually("synced", || p.report().is_some_and(|s| s.synced)).await;
    assert_eq!(healthz(first).await, Some(200));

    let second = free_addr();
    cfg.healthz_bind = Some(second);
    p.apply(Some(&cfg)).await.unwrap();
    assert_eq!(healthz(second).await, Some(200));
    assert_eq!(healthz(first).await, None, "the old listener is closed");

    // An address someone else holds: the reload is refused as a whole, the
    // scheduler change in it included.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut bad = cfg.clone();
    bad.healthz_bind = Some(taken.local_addr().unwrap());
    bad.ipvs.scheduler = "lc".into();
    let e = p.apply(Some(&bad)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ProxyError::Bind {
                what: "healthz_bind",
                ..
            }
        ),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(schedulers(&k, "10.96.0.20"), vec!["rr"]);
    assert_eq!(healthz(second).await, Some(200));

    cfg.healthz_bind = None;
    p.apply(Some(&cfg)).await.unwrap();
    assert_eq!(healthz(second).await, None);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kubeconfig_restarts_only_the_watchers_and_the_kernel_follows() {
    let one = api("one", "10.96.0.21").await;
    let two = api("two", "10.96.0.22").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&kubeconfig(dir.path(), "one", &one));
    let (k, planes, made) = kernel();
    let (mut p, stop) = start(Some(&cfg), planes).await;
    eventually("one programmed", || {
        !schedulers(&k, "10.96.0.21").is_empty()
    })
    .await;

    // A kubeconfig that cannot be read rejects the reload; the proxy goes
    // on with the old client.
    let mut bad = cfg.clone();
    bad.kubeconfig = Some(dir.path().join("missing"));
    assert!(matches!(
        p.apply(Some(&bad)).await.unwrap_err(),
        ProxyError::Kube(_)
    ));
    assert_eq!(made.load(Ordering::SeqCst), 1);

    cfg.kubeconfig = Some(kubeconfig(dir.path(), "two", &two));
    p.apply(Some(&cfg)).await.unwrap();
    eventually("two's Services replace one's", || {
        !schedulers(&k, "10.96.0.22").is_empty() && schedulers(&k, "10.96.0.21").is_empty()
    })
    .await;
    assert_eq!(made.load(Ordering::SeqCst), 2);
    eventually("synced again", || p.report().is_some_and(|s| s.synced)).await;
    // The new watchers are two's: a change there arrives.
    two.apply(Kind::Service, service("more", "10.96.0.23"));
    eventually("two's new Service", || {
        !schedulers(&k, "10.96.0.23").is_empty()
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_could_not_start_is_started_by_a_reload() {
    let api = api("web", "10.96.0.20").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("not-yet"));
    let (k, planes, _) = kernel();
    let (mut p, stop) = start(Some(&cfg), planes).await;
    let s = p.report().unwrap();
    assert!(!s.synced);
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not-yet")),
        "{s:?}"
    );
    // The same broken config: the reload is not refused for it (the rest
    // of lbd's config must not be held hostage), the status still says why.
    p.apply(Some(&cfg)).await.unwrap();
    assert!(p.report().unwrap().last_error.is_some());

    cfg.kubeconfig = Some(kubeconfig(dir.path(), "kc", &api));
    p.apply(Some(&cfg)).await.unwrap();
    eventually("synced", || p.report().is_some_and(|s| s.synced)).await;
    assert_eq!(schedulers(&k, "10.96.0.20"), vec!["rr"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_reports_nothing_and_nftables_says_why() {
    let (_, planes, made) = kernel();
    let (mut p, _stop) = start(None, planes.clone()).await;
    assert_eq!(p.report(), None);
    p.apply(None).await.unwrap();
    let mut cfg = config(Path::new("/nonexistent"));
    cfg.mode = ProxyMode::Nftables;
    let (p, _stop) = start(Some(&cfg), planes).await;
    let s = p.report().unwrap();
    assert_eq!(s.mode, ProxyDataPlane::Nftables);
    assert_eq!(serde_json::to_value(&s).unwrap()["mode"], json!("nftables"));
    assert!(s.last_error.is_some() && !s.synced);
    assert_eq!(made.load(Ordering::SeqCst), 0);
}

/// One GET on a health-check node port over loopback: the status, or None
/// when nothing listens.
async fn health_check(port: u16) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    Some((code, out))
}

/// The whole loop: a LoadBalancer Service with `externalTrafficPolicy:
/// Local` gets its healthCheckNodePort served (every address with
/// nodePortAddresses unset, so loopback reaches it), 503 while this node
/// has no ready endpoint of it, 200 once it has, and closed when the
/// Service goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_node_port_follows_local_endpoints() {
    let api = api("web", "10.96.0.10").await;
    let port = free_addr().port();
    api.apply(
        Kind::Service,
        json!({"metadata": {"name": "lb", "namespace": "default"},
               "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                        "externalTrafficPolicy": "Local", "healthCheckNodePort": port,
                        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}),
    );
    let remote_only = |addrs: &[(&str, &str)]| {
        let eps: Vec<Value> = addrs
            .iter()
            .map(|(a, n)| json!({"addresses": [a], "nodeName": n, "conditions": {"ready": true}}))
            .collect();
        json!({"metadata": {"name": "lb-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "lb"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": eps})
    };
    api.apply(Kind::EndpointSlice, remote_only(&[("10.244.2.1", "cp2")]));
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), "kc", &api);
    let (_k, planes, _) = kernel();
    let (_p, stop) = start(Some(&config(&kc)), planes).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = health_check(port).await;
        if last.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = last.expect("the health check port never opened");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");

    api.apply(
        Kind::EndpointSlice,
        remote_only(&[("10.244.2.1", "cp2"), ("10.244.1.7", NODE)]),
    );
    let mut seen = None;
    for _ in 0..1000 {
        seen = health_check(port).await;
        if seen.as_ref().is_some_and(|(c, _)| *c == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = seen.expect("the port closed");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\":1"), "{body}");
    assert!(body.contains("\"serviceProxyHealthy\":true"), "{body}");

    api.delete(Kind::Service, "default", "lb");
    let mut closed = false;
    for _ in 0..1000 {
        if health_check(port).await.is_none() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "a deleted Service's health check still answers");
    stop.cancel();
}
