//! What the tests that run the real kube-proxy and the real lbd in the
//! VM share (tests/kube_proxy_vm.rs, tests/kube_proxy_bench.rs): the node,
//! the kernel state as text, the KubeProxyConfiguration both read,
//! kube-proxy as a child, waiting for a table to settle, a clean slate.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::kube_cluster::{kube_binaries, KubeCluster};
use super::kube_objects::{canonical_ipvsadm, Objects};

pub const NODE: &str = "cp1";
pub const NODE_IP: &str = "192.168.1.10";
pub const NODE_IP6: &str = "fd00:1::10";

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ipvs_table() -> Vec<String> {
    canonical_ipvsadm(&sh("ipvsadm -Ln"))
}

pub fn kube_ipvs0() -> BTreeSet<String> {
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

/// The node: this VM, in zone-a, with both families' addresses on a dummy
/// link `node0` (for NodePorts: kube-proxy binds them on every local
/// address) and in the Node object.
pub async fn node(o: &Objects) {
    sh(&format!(
        "ip link add node0 type dummy && ip addr add {NODE_IP}/24 dev node0 && \
         ip -6 addr add {NODE_IP6}/64 dev node0 nodad && ip link set node0 up"
    ));
    o.node_with(
        NODE,
        &[NODE_IP, NODE_IP6],
        json!({"topology.kubernetes.io/zone": "zone-a"}),
    )
    .await;
}

pub struct KubeProxy(pub Child);

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The KubeProxyConfiguration both proxies read: kubeadm's shape, ipvs
/// mode, kube-proxy's defaults otherwise, plus the group's `extra` lines.
pub fn write_kube_proxy_config(
    cluster: &KubeCluster,
    group: usize,
    extra: &str,
) -> std::path::PathBuf {
    let kubeconfig = cluster.write_kubeconfig("kube-proxy.kubeconfig", &cluster.kubeconfig_yaml());
    let path = cluster.dir.path().join(format!("kube-proxy-{group}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: ipvs\nclientConnection:\n  kubeconfig: {}\nhostnameOverride: {NODE}\n\
             healthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
             conntrack:\n  maxPerCore: 0\nipvs:\n  scheduler: rr\n{extra}",
            kubeconfig.display()
        ),
    )
    .unwrap();
    path
}

pub fn start_kube_proxy(
    cluster: &KubeCluster,
    config: &std::path::Path,
    group: usize,
) -> KubeProxy {
    let log =
        std::fs::File::create(cluster.dir.path().join(format!("kube-proxy-{group}.log"))).unwrap();
    let child = Command::new(kube_binaries().unwrap().join("kube-proxy"))
        .arg(format!("--config={}", config.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    KubeProxy(child)
}

/// Polls until the table holds at least `min` virtual servers and has not
/// changed for 4 s (both proxies program everything in their first sync,
/// once their informers have synced), or panics after `secs`.
pub async fn settle(what: &str, min: usize, secs: u64) -> Duration {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut last = (Vec::new(), BTreeSet::new());
        let mut same = 0;
        loop {
            let now = (ipvs_table(), kube_ipvs0());
            let vs = now.0.iter().filter(|l| !l.starts_with(' ')).count();
            same = if now == last && vs >= min {
                same + 1
            } else {
                0
            };
            if same >= 4 {
                return start.elapsed();
            }
            last = now;
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for: {what}\n{}",
                sh("ipvsadm -Ln; ip -o addr show dev kube-ipvs0 || true")
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .await
    .unwrap()
}

/// A clean slate between runs: what `kube-proxy --cleanup` does, faster
/// (it takes 18-39 s here and exits 1 after a killed kube-proxy).
pub fn clean_kernel() {
    sh(
        "ipvsadm -C; ip link del kube-ipvs0 2>/dev/null; nft flush ruleset; \
        ipset destroy 2>/dev/null; true",
    );
    assert!(ipvs_table().is_empty());
}
