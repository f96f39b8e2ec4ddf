//! Issue 15's worker path against a real kube-apiserver (v1.37.2, RBAC on)
//! and real IPVS, in the VM: what `lbd manifest --daemonset` writes is what
//! a worker's lbd needs, and no more than that.
//!
//! The ServiceAccount, ClusterRole and binding of the DaemonSet are created
//! through the API; a token for that ServiceAccount is requested
//! (TokenRequest, as the kubelet's projected volume does) and put where a
//! pod has it, with the cluster's CA; then the real `lbd` binary runs the
//! ConfigMap's lbd.yaml with the in-cluster credentials, with
//! `KUBERNETES_SERVICE_HOST` set to the `kubernetes` Service's ClusterIP
//! that nobody serves here (only the proxy itself would program it). It
//! must be refused until the binding exists (so the test really uses the
//! ServiceAccount's rights), then program the cluster's Services into the
//! kernel through the apiserver's real address (`proxy.api_server`, the
//! manifest's `--api-server`).
//!
//! Runs only in the VM (`VM_TESTS=kube_worker_vm scripts/vm-test.sh`):
//! the guest is a throw-away machine, so the test writes the pod's
//! ServiceAccount directory and owns the IPVS table.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use support::kube_cluster::{ClusterOptions, KubeCluster};
use support::kube_objects::Objects;
use support::lbd::{lbd_bin, Lbd};
use support::proxy_vm::{clean_kernel, node, sh, NODE};

/// Where kube-rs (as client-go) reads a pod's in-cluster credentials.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The DaemonSet's objects, as `lbd manifest --daemonset` writes them.
struct WorkerObjects {
    sa: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    lbd_yaml: String,
}

fn worker_objects(cluster: &KubeCluster) -> WorkerObjects {
    let kc = cluster.write_kubeconfig("admin.kubeconfig", &cluster.kubeconfig_yaml());
    let cfg = cluster.dir.path().join("cp.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node:\n  name: {NODE}\nproxy:\n  mode: ipvs\n  kubeconfig: {}\n  cluster_cidr: 10.244.0.0/16\n",
            kc.display()
        ),
    )
    .unwrap();
    let api = format!("https://{}", cluster.apiserver_addr);
    let out = std::process::Command::new(lbd_bin())
        .args(["manifest", "--daemonset", "-c"])
        .arg(&cfg)
        .args(["--api-server", &api])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lbd manifest --daemonset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = |kind: &str| {
        stdout
            .split("---\n")
            .find(|d| {
                d.contains(&format!("\nkind: {kind}\n"))
                    || d.starts_with(&format!("kind: {kind}\n"))
            })
            .unwrap_or_else(|| panic!("no {kind} in:\n{stdout}"))
            .to_string()
    };
    let cm: ConfigMap = serde_saphyr::from_str(&doc("ConfigMap")).unwrap();
    WorkerObjects {
        sa: serde_saphyr::from_str(&doc("ServiceAccount")).unwrap(),
        role: serde_saphyr::from_str(&doc("ClusterRole")).unwrap(),
        binding: serde_saphyr::from_str(&doc("ClusterRoleBinding")).unwrap(),
        lbd_yaml: cm.data.unwrap()["lbd.yaml"].clone(),
    }
}

/// A token of `sa`, as the kubelet projects one into the pod, written with
/// the cluster's CA and the namespace where in-cluster clients read them.
async fn project_token(client: kube::Client, cluster: &KubeCluster, sa: &ServiceAccount) {
    let ns = sa.metadata.namespace.clone().unwrap();
    let name = sa.metadata.name.clone().unwrap();
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let got = Api::<ServiceAccount>::namespaced(client, &ns)
        .create_token_request(&name, &PostParams::default(), &req)
        .await
        .expect("TokenRequest for the DaemonSet's ServiceAccount");
    let token = got.status.and_then(|s| s.token).expect("a token");
    std::fs::create_dir_all(SA_DIR).unwrap();
    std::fs::write(format!("{SA_DIR}/token"), token).unwrap();
    std::fs::copy(cluster.ca_file(), format!("{SA_DIR}/ca.crt")).unwrap();
    std::fs::write(format!("{SA_DIR}/namespace"), &ns).unwrap();
}

fn table_has(vip: &str, rs: &str) -> bool {
    std::process::Command::new("ipvsadm")
        .args(["-Ln", "-t", vip])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(rs))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_proxies_with_the_daemonsets_service_account_in_cluster() {
    if !support::vm::in_vm("kube_worker_vm") {
        return;
    }
    let Some(cluster) = KubeCluster::start("kube_worker_vm", ClusterOptions::default()).await
    else {
        return;
    };
    let admin = cluster.client().await;
    let o = Objects::new(admin.clone());
    node(&o).await;
    o.cluster_ip_service("web", "10.96.5.5", 80, &["10.250.5.1"])
        .await;
    clean_kernel();

    let w = worker_objects(&cluster);
    // The proxy's config: the apiserver's real address, no kubeconfig.
    assert!(
        w.lbd_yaml
            .contains(&format!("https://{}", cluster.apiserver_addr))
            && !w.lbd_yaml.contains("kubeconfig"),
        "{}",
        w.lbd_yaml
    );
    let sa_ns = w.sa.metadata.namespace.clone().unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), &sa_ns)
        .create(&PostParams::default(), &w.sa)
        .await
        .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &w.role)
        .await
        .unwrap();
    project_token(admin.clone(), &cluster, &w.sa).await;

    // In a pod, KUBERNETES_SERVICE_HOST is the `kubernetes` Service's
    // ClusterIP: here nothing serves it (and nothing routes it), so a
    // proxy that used it would never list anything.
    let lbd = Lbd::start_in(
        &[],
        &["--node-name", NODE],
        &[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ],
        // The pod's admin socket is /run/lbd's; the test's goes in its
        // own directory (Lbd::start_in appends it).
        w.lbd_yaml.split("\nadmin:").next().unwrap(),
    )
    .await;
    let creds = lbd
        .logs()
        .lines()
        .find(|l| l.contains("proxy credentials"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        creds.contains("in-cluster") && creds.contains(&cluster.apiserver_addr.to_string()),
        "the credentials line names the in-cluster token and the real address: {creds:?}\n{}",
        lbd.logs()
    );

    // Without the binding the ServiceAccount may list nothing: refused, and
    // nothing programmed.
    let t = Instant::now();
    while !lbd.logs().contains("forbidden") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no 403 before the binding:\n{}",
            lbd.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!table_has("10.96.5.5:80", "10.250.5.1:8080"));

    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &w.binding)
        .await
        .unwrap();
    let t = Instant::now();
    while !table_has("10.96.5.5:80", "10.250.5.1:8080") {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the Service never reached the kernel with the binding:\n{}\n{}",
            sh("ipvsadm -Ln"),
            lbd.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it follows changes through the watch, with the same rights.
    o.set_endpoints("web-1", support::kube_objects::endpoints(&["10.250.5.2"]))
        .await;
    let t = Instant::now();
    while !table_has("10.96.5.5:80", "10.250.5.2:8080") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "a watched change never reached the kernel:\n{}",
            lbd.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(lbd);
    clean_kernel();
    let _ = std::fs::remove_dir_all(SA_DIR);
}
