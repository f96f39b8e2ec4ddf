//! The real kube-proxy (`--proxy-mode=ipvs`, kubernetes v1.37.2) on a real
//! kernel, against a real kube-apiserver and etcd, all inside the VM (the
//! runner copies bench/kube-peers.sh's static binaries into the payload),
//! then lbd's proxy on the same Services on a clean table: the two IPVS
//! tables and kube-ipvs0 address sets, printed and compared.
//!
//! The seed of issue 12's differential test: today it checks that both
//! program the Services below, and prints where they differ (with timings)
//! for the ones known to differ. Runs only in the VM (`VM_TESTS=kube_proxy_vm
//! scripts/vm-test.sh -- --nocapture`); skips elsewhere, and inside when the
//! binaries could not be built (no Go on the host).
//!
//! One test function: the VM is a throw-away machine, so the test owns its
//! root network namespace (kube-proxy needs the apiserver on its loopback).

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::kube_cluster::{kube_binaries, ClusterOptions, KubeCluster};
use support::kube_objects::{canonical_ipvsadm, ports, slice, Objects};

const NODE: &str = "cp1";
const NODE_IP: &str = "192.168.1.10";

fn in_vm() -> bool {
    if std::env::var("LBD_IN_VM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipping: needs IPVS, run inside the VM with VM_TESTS=kube_proxy_vm scripts/vm-test.sh"
    );
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ipvs_table() -> Vec<String> {
    canonical_ipvsadm(&sh("ipvsadm -Ln"))
}

fn kube_ipvs0() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "dev", "kube-ipvs0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "inet" || *w == "inet6")?;
            Some(f.get(i + 1)?.split('/').next()?.to_string())
        })
        .collect()
}

/// The node, and a few Services of the common types with their slices.
async fn objects(o: &Objects) {
    o.node(NODE, NODE_IP).await;
    o.cluster_ip_service("web", "10.96.0.20", 80, &["10.244.1.1", "10.244.1.2"])
        .await;
    o.service(json!({"metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.21",
                 "ports": ports(&[("http", "TCP", 80, 30080)])}}))
        .await;
    o.slice(slice(
        "np",
        "np-1",
        "IPv4",
        &[("http", "TCP", 80)],
        &["10.244.2.1"],
    ))
    .await;
    o.service(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.22",
                 "externalIPs": ["198.51.100.7"], "sessionAffinity": "ClientIP",
                 "ports": ports(&[("http", "TCP", 80, 30081)])}}))
        .await;
    o.slice(slice(
        "lb",
        "lb-1",
        "IPv4",
        &[("http", "TCP", 80)],
        &["10.244.3.1"],
    ))
    .await;
    o.load_balancer_ip("lb", "203.0.113.10").await;
}

/// Bulk Services of one shape: a bigger table, and a figure for how fast
/// the API takes objects in the VM (~3 a second: 200 in ~60-70 s).
const BULK: usize = 20;

async fn bulk(o: &Objects) {
    for i in 0..BULK {
        let ep = format!("10.244.9.{}", i + 1);
        o.cluster_ip_service(
            &format!("bulk-{i}"),
            &format!("10.96.1.{}", i + 1),
            80,
            &[&ep],
        )
        .await;
    }
}

/// The table without the bulk Services (10.96.1.0/24), for the log.
fn named(table: &[String]) -> String {
    let mut out = Vec::new();
    let mut skip = false;
    for l in table {
        if !l.starts_with(' ') {
            skip = l.contains(" 10.96.1.");
        }
        if !skip {
            out.push(l.as_str());
        }
    }
    out.join("\n")
}

struct KubeProxy(Child);

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kube-proxy as kubeadm configures it, ipvs mode, kube-proxy's defaults
/// otherwise (nodePortAddresses unset, no clusterCIDR).
fn start_kube_proxy(cluster: &KubeCluster) -> KubeProxy {
    let kubeconfig = cluster.write_kubeconfig("kube-proxy.kubeconfig", &cluster.kubeconfig_yaml());
    let config = cluster.dir.path().join("kube-proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: ipvs\nclientConnection:\n  kubeconfig: {}\nhostnameOverride: {NODE}\n\
             healthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
             conntrack:\n  maxPerCore: 0\nipvs:\n  scheduler: rr\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(cluster.dir.path().join("kube-proxy.log")).unwrap();
    let child = Command::new(kube_binaries().unwrap().join("kube-proxy"))
        .arg(format!("--config={}", config.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    KubeProxy(child)
}

/// Polls until `f` holds twice in a row 1 s apart (a table that stopped
/// changing), or panics with `what` after `secs`.
fn settle(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let mut held = false;
    loop {
        let now = f();
        if now && held {
            return start.elapsed();
        }
        held = now;
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for: {what}\n{}",
            sh("ipvsadm -Ln; ip -o addr show dev kube-ipvs0 || true")
        );
        std::thread::sleep(Duration::from_millis(if now { 1000 } else { 200 }));
    }
}

/// lbd's engine on the real kernel (NetlinkIpvs, kube-ipvs0), no nftables:
/// the one place here that touches the proxy's internals.
async fn run_lbd_until_settled(cluster: &KubeCluster, want_vs: usize) -> Duration {
    use lbd::proxy::driver::Runner;
    use lbd::proxy::engine::EngineSettings;
    use lbd::proxy::kernel::ipvs::NetlinkIpvs;
    use lbd::proxy::kernel::{DummyAddresses, IpvsDataPlane, ProcSysctls};
    use lbd::proxy::metrics::ProxyMetrics;
    use lbd::proxy::server::ProxyHealth;
    use tokio_util::sync::CancellationToken;
    let engine = Runner {
        settings: EngineSettings {
            node_name: NODE.into(),
            scheduler: "rr".into(),
            node_port_addresses: vec![],
            exclude_cidrs: vec![],
            cluster_cidrs: vec![],
            masquerade_all: false,
            min_sync_period: Duration::ZERO,
            sync_period: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            timeouts: None,
            strict_arp: false,
        },
        plane: Box::new(IpvsDataPlane {
            ipvs: Arc::new(NetlinkIpvs::new().unwrap()),
            addresses: Arc::new(DummyAddresses::new()),
            firewall: None,
            sysctls: Arc::new(ProcSysctls),
        }),
        reporter: Default::default(),
        metrics: ProxyMetrics::new(),
        health: ProxyHealth::new(Duration::from_secs(60)),
    };
    let client = cluster.client().await;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { engine.run(client, token).await.unwrap() });
    let took = tokio::task::spawn_blocking(move || {
        settle("lbd programmed", 120, || {
            ipvs_table().iter().filter(|l| !l.starts_with(' ')).count() >= want_vs
        })
    })
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_and_lbd_program_the_same_services() {
    if !in_vm() {
        return;
    }
    let boot = Instant::now();
    let Some(cluster) = KubeCluster::start("kube_proxy_vm", ClusterOptions::default()).await else {
        return;
    };
    eprintln!(
        "timing: etcd + kube-apiserver ready in {:?}",
        boot.elapsed()
    );
    // The node's address, for NodePorts (kube-proxy: every local address).
    sh(&format!(
        "ip link add node0 type dummy && ip addr add {NODE_IP}/24 dev node0 && ip link set node0 up"
    ));
    let t = Instant::now();
    let o = Objects::new(cluster.client().await);
    objects(&o).await;
    eprintln!("timing: objects created in {:?}", t.elapsed());
    // How fast the API takes objects here (for sizing benchmarks): BULK
    // more ClusterIP Services with one endpoint each, a slice each.
    let t = Instant::now();
    bulk(&o).await;
    eprintln!(
        "timing: {BULK} Services + {BULK} EndpointSlices created in {:?}",
        t.elapsed()
    );
    let want_vs = 8 + BULK;

    // kube-proxy: 4 ClusterIPs (with `kubernetes`), 2 NodePorts, the
    // external IP and the load balancer IP.
    let t = Instant::now();
    let kp = start_kube_proxy(&cluster);
    let kp_took = tokio::task::spawn_blocking(move || {
        settle("kube-proxy programmed", 300, || {
            ipvs_table().iter().filter(|l| !l.starts_with(' ')).count() >= want_vs
        })
    })
    .await
    .unwrap();
    let kp_table = ipvs_table();
    let kp_addrs = kube_ipvs0();
    eprintln!(
        "timing: kube-proxy started and settled in {:?} (table stable {:?})",
        t.elapsed(),
        kp_took
    );
    eprintln!("kube-proxy ipvsadm -Ln:\n{}", named(&kp_table));
    eprintln!("kube-proxy kube-ipvs0: {kp_addrs:?}");
    drop(kp);
    // What a migration does: kube-proxy's own cleanup, then a clean table.
    let t = Instant::now();
    let out = Command::new(kube_binaries().unwrap().join("kube-proxy"))
        .args(["--cleanup", "--proxy-mode=ipvs"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let err: Vec<&str> = err.lines().rev().take(5).collect();
    eprintln!(
        "timing: kube-proxy --cleanup {:?} ({}); last lines: {err:#?}",
        t.elapsed(),
        out.status
    );
    sh("ipvsadm -C; ip link del kube-ipvs0 2>/dev/null || true");
    assert!(ipvs_table().is_empty());

    let t = Instant::now();
    let lbd_took = run_lbd_until_settled(&cluster, want_vs).await;
    let lbd_table = ipvs_table();
    let lbd_addrs = kube_ipvs0();
    eprintln!(
        "timing: lbd settled in {:?} (table stable {lbd_took:?})",
        t.elapsed()
    );
    eprintln!("lbd ipvsadm -Ln:\n{}", named(&lbd_table));
    eprintln!("lbd kube-ipvs0: {lbd_addrs:?}");

    let only_kp: Vec<&String> = kp_table.iter().filter(|l| !lbd_table.contains(l)).collect();
    let only_lbd: Vec<&String> = lbd_table.iter().filter(|l| !kp_table.contains(l)).collect();
    eprintln!("only kube-proxy: {only_kp:?}\nonly lbd: {only_lbd:?}");
    for vs in [
        "TCP 10.96.0.20:80 rr",
        "TCP 10.96.0.21:80 rr",
        "TCP 192.168.1.10:30080 rr",
        "TCP 198.51.100.7:80 rr persistent 10800",
        "TCP 203.0.113.10:80 rr persistent 10800",
    ] {
        assert!(kp_table.iter().any(|l| l == vs), "kube-proxy lacks {vs}");
        assert!(lbd_table.iter().any(|l| l == vs), "lbd lacks {vs}");
    }
    assert_eq!(kp_addrs, lbd_addrs, "kube-ipvs0 differs");
    assert_eq!(kp_table, lbd_table, "IPVS tables differ");
    eprintln!("timing: whole test {:?}", boot.elapsed());
}
