//! lbd's Service proxy (kube-rs watchers, reflectors, the sync runner)
//! against a real kube-apiserver and etcd (kubernetes v1.37.2, built by
//! bench/kube-peers.sh), with the in-memory kernel (FakeIpvs,
//! FakeAddresses, no firewall). Objects are written through the real API;
//! what the fake kernel holds is compared with what kube-proxy (ipvs) would
//! program for them. Skips, saying why, where the peers cannot be built.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::kube_cluster::{ClusterOptions, KubeCluster};
use support::kube_objects::{canonical, endpoints, ports, slice, Objects};

const NODE: &str = "cp1";
const NODE_IP: &str = "192.168.1.10";

/// The one place that touches the proxy's internals: starting the engine
/// on the in-memory kernel, and reading that kernel as text.
mod proxy {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use lbd::proxy::driver::Runner;
    use lbd::proxy::engine::EngineSettings;
    use lbd::proxy::kernel::ipvs::{FakeIpvs, IpvsCall};
    use lbd::proxy::kernel::{FakeAddresses, FakeSysctls, IpvsDataPlane};
    use lbd::proxy::metrics::ProxyMetrics;
    use lbd::proxy::model::{FwdMethod, Protocol};
    use lbd::proxy::report::ProxyReporter;
    use lbd::proxy::server::ProxyHealth;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    pub struct RunningProxy {
        ipvs: FakeIpvs,
        addrs: FakeAddresses,
        status: ProxyReporter,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    /// The engine with kube-proxy's defaults (rr, no nodePortAddresses)
    /// and short periods: full syncs every 300 ms.
    pub async fn start(kubeconfig_yaml: &str, node: &str) -> RunningProxy {
        // kube's client logs every non-2xx answer at ERROR: the harness's
        // /readyz polling would fill the output.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let (ipvs, addrs) = (FakeIpvs::new(), FakeAddresses::default());
        let status = ProxyReporter::default();
        let engine = Runner {
            settings: EngineSettings {
                node_name: node.into(),
                scheduler: "rr".into(),
                node_port_addresses: vec![],
                node_port_primary: false,
                exclude_cidrs: vec![],
                cluster_cidrs: vec![],
                masquerade_all: false,
                min_sync_period: Duration::from_millis(20),
                sync_period: Duration::from_millis(300),
                drain_timeout: Duration::from_secs(60),
                timeouts: None,
                strict_arp: false,
            },
            plane: Box::new(IpvsDataPlane {
                ipvs: Arc::new(ipvs.clone()),
                addresses: Arc::new(addrs.clone()),
                firewall: None,
                sysctls: Arc::new(FakeSysctls::default()),
                conntrack: None,
            }),
            reporter: status.clone(),
            metrics: ProxyMetrics::new(),
            health: ProxyHealth::new(Duration::from_secs(60)),
        };
        let client = super::support::kube_cluster::client_from_yaml(kubeconfig_yaml).await;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move { engine.run(client, token).await.unwrap() });
        RunningProxy {
            ipvs,
            addrs,
            status,
            stop,
            task,
        }
    }

    impl RunningProxy {
        /// The IPVS table as `ipvsadm -Ln` prints it, sorted, without the
        /// header and counters: `TCP  10.96.0.1:443 rr` per virtual
        /// server (` persistent N` when sticky), `  -> ADDR:PORT Masq W`
        /// per real server.
        pub fn table(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut snap = self.ipvs.snapshot();
            snap.sort_by_key(|(vs, _)| vs.key());
            for (vs, rss) in snap {
                let proto = match vs.protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                    Protocol::Sctp => "SCTP",
                };
                let mut line = format!("{proto}  {} {}", sockaddr(vs.addr, vs.port), vs.scheduler);
                if let Some(t) = vs.persistent {
                    line += &format!(" persistent {t}");
                }
                out.push(line);
                let mut rs: Vec<String> = rss
                    .iter()
                    .map(|r| {
                        let fwd = match r.fwd {
                            FwdMethod::Masq => "Masq",
                            FwdMethod::Local => "Local",
                            FwdMethod::Tunnel => "Tunnel",
                            FwdMethod::Route => "Route",
                            FwdMethod::Bypass => "Bypass",
                        };
                        format!("  -> {} {fwd} {}", sockaddr(r.addr, r.port), r.weight)
                    })
                    .collect();
                rs.sort();
                out.extend(rs);
            }
            out
        }

        /// Addresses bound on kube-ipvs0.
        pub fn addresses(&self) -> BTreeSet<IpAddr> {
            self.addrs.snapshot()
        }

        /// Kernel changes made since the last call.
        pub fn take_mutations(&self) -> Vec<String> {
            self.ipvs
                .take_mutations()
                .iter()
                .map(|c| format!("{c:?}"))
                .collect()
        }

        /// Full kernel listings so far (one per full sync).
        pub fn listings(&self) -> usize {
            self.ipvs
                .calls()
                .iter()
                .filter(|c| **c == IpvsCall::ListServices)
                .count()
        }

        pub fn synced(&self) -> bool {
            self.status.report().is_some_and(|s| s.synced)
        }

        pub async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("engine stops")
                .unwrap();
        }
    }

    fn sockaddr(a: IpAddr, port: u16) -> String {
        match a {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        }
    }
}

async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CONVERGE: Duration = Duration::from_secs(20);
/// A watcher backing off after an outage: up to 30 s, doubled by jitter.
const BACKOFF_CONVERGE: Duration = Duration::from_secs(75);

/// Waits until the proxy's table is `want` (ipvsadm -Ln lines, any
/// order and indentation), and shows both if it never is.
async fn table_becomes(p: &proxy::RunningProxy, what: &str, want: &str) {
    table_becomes_within(p, what, want, CONVERGE).await;
}

async fn table_becomes_within(
    p: &proxy::RunningProxy,
    what: &str,
    want: &str,
    timeout: Duration,
) -> Duration {
    let want = canonical(want.lines());
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    loop {
        let got = canonical(p.table());
        if got == want {
            return start.elapsed();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: table never became\n{}\nlast seen:\n{}",
            want.join("\n"),
            got.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addrs(list: &[&str]) -> BTreeSet<std::net::IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// The apiserver's own count of LIST requests for `resource` (from its
/// /metrics): a relist shows here, whatever the client logs.
async fn list_requests(c: &KubeCluster, resource: &str) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = c.client().await.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&format!("resource=\"{resource}\"")) && l.contains("verb=\"LIST\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every Service type through the real API, dual stack, as kube-proxy
/// (ipvs) programs them: ClusterIPs, NodePorts on the node's address,
/// external IPs, a LoadBalancer ingress IP from the status subresource,
/// ClientIP affinity, UDP, and the apiserver's own `kubernetes` Service
/// (no endpoints: its reconciler is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_type_from_the_real_apiserver() {
    let Some(cluster) = KubeCluster::start("every_service_type", ClusterOptions::default()).await
    else {
        return;
    };
    let o = Objects::new(cluster.client().await);
    o.node(NODE, NODE_IP).await;
    o.cluster_ip_service("web", "10.96.0.20", 80, &["10.244.1.1", "10.244.1.2"])
        .await;
    // NodePort, TCP and UDP, the ClusterIP allocated by the apiserver.
    let np = o
        .service(json!({"metadata": {"name": "dns", "namespace": "default"},
            "spec": {"type": "NodePort",
                     "ports": ports(&[("dns", "UDP", 53, 30053), ("dns-tcp", "TCP", 53, 30054)])}}))
        .await;
    let np_ip = np.spec.unwrap().cluster_ip.unwrap();
    assert!(np_ip.starts_with("10.96."), "allocated {np_ip}");
    o.slice(slice(
        "dns",
        "dns-1",
        "IPv4",
        &[("dns", "UDP", 53), ("dns-tcp", "TCP", 53)],
        &["10.244.2.1"],
    ))
    .await;
    // LoadBalancer with an external IP and ClientIP affinity; the ingress
    // IP is the cloud controller's to write: the status subresource.
    o.service(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30",
                 "externalIPs": ["198.51.100.7"], "sessionAffinity": "ClientIP",
                 "ports": ports(&[("https", "TCP", 443, 30443)])}}))
        .await;
    o.load_balancer_ip("lb", "203.0.113.10").await;
    o.slice(slice(
        "lb",
        "lb-1",
        "IPv4",
        &[("https", "TCP", 443)],
        &["10.244.3.1"],
    ))
    .await;
    // Dual stack: one ClusterIP per family, one slice per family.
    o.service(json!({"metadata": {"name": "dual", "namespace": "default"},
        "spec": {"type": "ClusterIP", "ipFamilyPolicy": "RequireDualStack",
                 "clusterIP": "10.96.0.40",
                 "ipFamilies": ["IPv4", "IPv6"],
                 "clusterIPs": ["10.96.0.40", "fd00:10:96::40"],
                 "ports": ports(&[("http", "TCP", 80, 0)])}}))
        .await;
    o.slice(slice(
        "dual",
        "dual-v4",
        "IPv4",
        &[("http", "TCP", 80)],
        &["10.244.4.1"],
    ))
    .await;
    o.slice(slice(
        "dual",
        "dual-v6",
        "IPv6",
        &[("http", "TCP", 80)],
        &["fd00:244::4:1"],
    ))
    .await;

    let p = proxy::start(&cluster.kubeconfig_yaml(), NODE).await;
    let want = format!(
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.1:8080 Masq 1
           -> 10.244.1.2:8080 Masq 1
         TCP  10.96.0.30:443 rr persistent 10800
           -> 10.244.3.1:8443 Masq 1
         TCP  10.96.0.40:80 rr
           -> 10.244.4.1:8080 Masq 1
         TCP  {np_ip}:53 rr
           -> 10.244.2.1:8053 Masq 1
         UDP  {np_ip}:53 rr
           -> 10.244.2.1:8053 Masq 1
         TCP  192.168.1.10:30054 rr
           -> 10.244.2.1:8053 Masq 1
         UDP  192.168.1.10:30053 rr
           -> 10.244.2.1:8053 Masq 1
         TCP  192.168.1.10:30443 rr persistent 10800
           -> 10.244.3.1:8443 Masq 1
         TCP  198.51.100.7:443 rr persistent 10800
           -> 10.244.3.1:8443 Masq 1
         TCP  203.0.113.10:443 rr persistent 10800
           -> 10.244.3.1:8443 Masq 1
         TCP  [fd00:10:96::40]:80 rr
           -> [fd00:244::4:1]:8080 Masq 1"
    );
    table_becomes(&p, "every type", &want).await;
    assert_eq!(
        p.addresses(),
        addrs(&[
            "10.96.0.1",
            "10.96.0.20",
            "10.96.0.30",
            "10.96.0.40",
            &np_ip,
            "198.51.100.7",
            "203.0.113.10",
            "fd00:10:96::40"
        ])
    );
    eventually("status synced", CONVERGE, || p.synced()).await;
    p.stop().await;
}

/// Two Services and the node, as most scenarios start.
async fn two_services(o: &Objects) {
    o.node(NODE, NODE_IP).await;
    o.cluster_ip_service("web", "10.96.0.20", 80, &["10.244.1.1"])
        .await;
    o.cluster_ip_service("old", "10.96.0.21", 80, &["10.244.2.1"])
        .await;
}

const TWO_SERVICES: &str = "TCP  10.96.0.1:443 rr
    TCP  10.96.0.20:80 rr
      -> 10.244.1.1:8080 Masq 1
    TCP  10.96.0.21:80 rr
      -> 10.244.2.1:8080 Masq 1";

/// Changes made through the API after the first sync reach the table by
/// the watches: endpoints added, made not ready, a Service added, its port
/// changed, a Service deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_changes_reach_the_table() {
    let Some(cluster) = KubeCluster::start("watched_changes", ClusterOptions::default()).await
    else {
        return;
    };
    let o = Objects::new(cluster.client().await);
    two_services(&o).await;
    let p = proxy::start(&cluster.kubeconfig_yaml(), NODE).await;
    table_becomes(&p, "first sync", TWO_SERVICES).await;

    o.set_endpoints("web-1", endpoints(&["10.244.1.1", "10.244.1.2"]))
        .await;
    table_becomes(
        &p,
        "endpoint added",
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.1:8080 Masq 1
           -> 10.244.1.2:8080 Masq 1
         TCP  10.96.0.21:80 rr
           -> 10.244.2.1:8080 Masq 1",
    )
    .await;

    // Not ready (and not serving): no longer a real server. No connections
    // in the fake kernel, so no drain either.
    o.set_endpoints(
        "web-1",
        json!([{"addresses": ["10.244.1.1"], "conditions": {"ready": true}},
               {"addresses": ["10.244.1.2"], "conditions": {"ready": false, "serving": false}}]),
    )
    .await;
    o.cluster_ip_service("api", "10.96.0.22", 80, &["10.244.5.1"])
        .await;
    o.delete_service("old").await;
    table_becomes(
        &p,
        "not ready, added, deleted",
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.1:8080 Masq 1
         TCP  10.96.0.22:80 rr
           -> 10.244.5.1:8080 Masq 1",
    )
    .await;
    assert_eq!(
        p.addresses(),
        addrs(&["10.96.0.1", "10.96.0.20", "10.96.0.22"])
    );

    // A port change: the old virtual server goes, the new one comes.
    o.services
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": ports(&[("http", "TCP", 81, 0)])}})),
        )
        .await
        .unwrap();
    o.slices
        .patch(
            "api-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"ports": [{"name": "http", "protocol": "TCP", "port": 8081}]})),
        )
        .await
        .unwrap();
    table_becomes(
        &p,
        "port changed",
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.1:8080 Masq 1
         TCP  10.96.0.22:81 rr
           -> 10.244.5.1:8081 Masq 1",
    )
    .await;
    p.stop().await;
}

/// The 410 path: while lbd is cut off (the Gate), a Service is deleted and
/// a slice changed, then etcd's history is compacted. With the watch cache
/// off every watch is served by etcd, so lbd's resumed watches get 410
/// Expired (HTTP 200 and an ERROR event) and must relist: the delete is
/// never seen as an event, only as an absence in the new list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_compaction_drops_what_was_deleted() {
    let opts = ClusterOptions {
        watch_cache: false,
        ..Default::default()
    };
    let Some(cluster) = KubeCluster::start("relist_after_compaction", opts).await else {
        return;
    };
    let o = Objects::new(cluster.client().await);
    two_services(&o).await;
    let p = proxy::start(&cluster.gated_kubeconfig_yaml(), NODE).await;
    table_becomes(&p, "first sync", TWO_SERVICES).await;
    let old_rv = cluster.etcd_revision();
    let lists_before = list_requests(&cluster, "services").await;

    cluster.gate.cut();
    o.delete_service("old").await;
    o.set_endpoints("web-1", endpoints(&["10.244.1.5"])).await;
    let compacted = cluster.compact();
    assert!(compacted > old_rv);
    // The precondition, seen by a plain client: a watch from lbd's last
    // resourceVersion is now answered with 410 Expired.
    let watch = http::Request::get(format!(
        "/api/v1/services?watch=true&resourceVersion={old_rv}&timeoutSeconds=1"
    ))
    .body(Vec::new())
    .unwrap();
    let answer = cluster.client().await.request_text(watch).await.unwrap();
    assert!(
        answer.contains("\"ERROR\"") && answer.contains("\"code\":410"),
        "{answer}"
    );
    // During the cut the table stays as it was, syncs go on.
    let listings = p.listings();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(p.listings() > listings, "periodic syncs stopped");
    table_becomes(&p, "cut off: unchanged", TWO_SERVICES).await;

    cluster.gate.restore();
    table_becomes(
        &p,
        "relisted",
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.5:8080 Masq 1",
    )
    .await;
    assert_eq!(p.addresses(), addrs(&["10.96.0.1", "10.96.0.20"]));
    assert!(
        list_requests(&cluster, "services").await > lists_before,
        "the Services were never listed again"
    );
    p.stop().await;
}

/// The apiserver goes away (SIGTERM: its watches end) and comes back:
/// during the outage the table is left as it is, nothing deleted, while
/// periodic syncs keep running from the caches. An object deleted while it
/// was down (in etcd, as another apiserver would) is removed once it is
/// back, and later changes are watched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_keeps_the_table_and_catches_up() {
    let Some(mut cluster) =
        KubeCluster::start("apiserver_restart", ClusterOptions::default()).await
    else {
        return;
    };
    let o = Objects::new(cluster.client().await);
    two_services(&o).await;
    let p = proxy::start(&cluster.kubeconfig_yaml(), NODE).await;
    table_becomes(&p, "first sync", TWO_SERVICES).await;
    eventually("synced", CONVERGE, || p.synced()).await;
    let before = p.addresses();
    p.take_mutations();

    let t = std::time::Instant::now();
    cluster.stop_apiserver();
    eprintln!("apiserver stopped in {:?}", t.elapsed());
    let listings = p.listings();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(p.listings() >= listings + 2, "periodic syncs stopped");
    assert_eq!(p.take_mutations(), Vec::<String>::new());
    assert_eq!(canonical(p.table()), canonical(TWO_SERVICES.lines()));
    assert_eq!(p.addresses(), before);

    // Deleted while no apiserver runs: no watch event will ever say so.
    assert_eq!(
        cluster.etcd_delete("/registry/services/specs/default/old"),
        1
    );
    assert_eq!(
        cluster.etcd_delete("/registry/endpointslices/default/old-1"),
        1
    );
    cluster.start_apiserver().await;
    // Each watcher retries with kube-rs's default backoff (0.8 s doubling
    // to 30 s, jittered, like client-go's reflector): after an outage of a
    // few seconds the last watcher may come back tens of seconds later.
    let took = table_becomes_within(
        &p,
        "after restart",
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.1:8080 Masq 1",
        BACKOFF_CONVERGE,
    )
    .await;
    eprintln!(
        "apiserver ready {:?} after its start, table caught up {took:?} later",
        cluster.last_start
    );
    assert_eq!(p.addresses(), addrs(&["10.96.0.1", "10.96.0.20"]));

    // Watching again.
    let o = Objects::new(cluster.client().await);
    o.set_endpoints("web-1", endpoints(&["10.244.1.7"])).await;
    table_becomes(
        &p,
        "watched after restart",
        "TCP  10.96.0.1:443 rr
         TCP  10.96.0.20:80 rr
           -> 10.244.1.7:8080 Masq 1",
    )
    .await;
    p.stop().await;
}

/// The kubeadm order (docs/kubeadm.md) with a real apiserver behind lbd's
/// balancer: lbd starts first, with the cluster CA not written yet and no
/// apiserver up; the apiserver comes up and passes the TLS-handshake check;
/// the CA appears and the checks become verified HTTPS `/healthz`, with no
/// restart; a Kubernetes client works through lbd's listener (the
/// control-plane endpoint); the apiserver going away takes it out of
/// rotation and its return puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_fronts_a_real_apiserver_started_after_it() {
    use support::lbd::{backend_of, eventually, free_port, Lbd};
    let Some(mut cluster) =
        KubeCluster::start("balancer_fronts_apiserver", ClusterOptions::default()).await
    else {
        return;
    };
    cluster.stop_apiserver();
    let pending = tempfile::tempdir().unwrap();
    let ca = pending.path().join("ca.crt");
    let api = cluster.apiserver_addr.to_string();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let mut lbd = Lbd::start(&format!(
        "tcplb:\n  listeners:\n    - name: apiserver\n      bind: {endpoint}\n      \
         backends: [{api}]\n      health: {{type: https, path: /healthz, interval: 200ms, \
         timeout: 2s, rise: 1, fall: 1, tls: {{ca_file: {}, server_name: kubernetes}}}}\n",
        ca.display()
    ))
    .await;
    let waiting = format!("tls-handshake (waiting for {})", ca.display());
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["check"], waiting.as_str(), "{st}");
    eventually(
        Duration::from_secs(10),
        "the absent apiserver down",
        || async { backend_of(&lbd.status().await, 0, &api)["healthy"] == false },
    )
    .await;

    // kubeadm init starts the apiserver: the handshake check passes it.
    cluster.start_apiserver().await;
    eventually(
        Duration::from_secs(10),
        "the apiserver up by handshake",
        || async { backend_of(&lbd.status().await, 0, &api)["healthy"] == true },
    )
    .await;
    // ... and writes the CA (a rename into place, as kubeadm's writes).
    let tmp = pending.path().join("ca.crt.tmp");
    std::fs::copy(cluster.ca_file(), &tmp).unwrap();
    std::fs::rename(&tmp, &ca).unwrap();
    eventually(
        Duration::from_secs(10),
        "verified HTTPS /healthz",
        || async {
            let st = lbd.status().await;
            st["tcplb"][0]["check"] == "https verified"
                && backend_of(&st, 0, &api)["healthy"] == true
        },
    )
    .await;

    // A client of the control-plane endpoint: through lbd to the apiserver.
    let yaml = cluster
        .kubeconfig_yaml()
        .replace(&format!("https://{api}"), &format!("https://{endpoint}"));
    assert!(yaml.contains(&endpoint), "{yaml}");
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let list = namespaces.list(&Default::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("default")),
        "namespaces through lbd: {:?}",
        list.items
            .iter()
            .map(|n| n.metadata.name.clone())
            .collect::<Vec<_>>()
    );

    // The apiserver stops: out of rotation; back: in again, same lbd.
    cluster.stop_apiserver();
    eventually(
        Duration::from_secs(10),
        "the stopped apiserver down",
        || async { backend_of(&lbd.status().await, 0, &api)["healthy"] == false },
    )
    .await;
    cluster.start_apiserver().await;
    eventually(Duration::from_secs(10), "the apiserver back up", || async {
        backend_of(&lbd.status().await, 0, &api)["healthy"] == true
    })
    .await;
    assert!(lbd.wait_exit(Duration::ZERO).is_none(), "lbd exited");
    assert_eq!(lbd.status().await["tcplb"][0]["check"], "https verified");
}
