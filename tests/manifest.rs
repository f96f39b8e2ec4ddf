//! `lbd manifest`: the real binary on real files; the output parsed back as
//! a Kubernetes Pod (k8s-openapi types), and the shipped examples kept true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const LBD: &str = env!("CARGO_BIN_EXE_lbd");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn lbd(args: &[&str]) -> Out {
    let o = Command::new(LBD).args(args).output().expect("run lbd");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn manifest(config: &Path, extra: &[&str]) -> Pod {
    let mut args = vec!["manifest", "-c", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = lbd(&args);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    serde_saphyr::from_str::<Pod>(&out.stdout)
        .unwrap_or_else(|e| panic!("not a Pod: {e}\n{}", out.stdout))
}

fn container(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

/// mountPath -> (hostPath, hostPath type, readOnly)
fn mounts(pod: &Pod) -> BTreeMap<String, (String, String, bool)> {
    let spec = pod.spec.as_ref().unwrap();
    let vols = spec.volumes.as_ref().expect("volumes");
    let c = container(pod);
    let mut out = BTreeMap::new();
    for m in c.volume_mounts.as_ref().expect("volumeMounts") {
        let v = vols
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("mount {} has no volume", m.name));
        let hp = v.host_path.as_ref().expect("hostPath volume");
        let name_ok = m.name.len() <= 63
            && m.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !m.name.starts_with('-')
            && !m.name.ends_with('-');
        assert!(name_ok, "volume name {:?} is not a DNS-1123 label", m.name);
        let prev = out.insert(
            m.mount_path.clone(),
            (
                hp.path.clone(),
                hp.type_.clone().unwrap_or_default(),
                m.read_only.unwrap_or(false),
            ),
        );
        assert!(prev.is_none(), "mountPath {} twice", m.mount_path);
    }
    assert_eq!(vols.len(), out.len(), "a volume without a mount");
    out
}

/// A kubeconfig `lbd check` accepts (a token, its current context).
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n\
    users:\n- name: u\n  user:\n    token: abc\n\
    contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\ncurrent-context: c\n";

fn cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let c = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        write(dir, &format!("{name}.crt"), &c.pem()),
        write(dir, &format!("{name}.key"), &key.serialize_pem()),
    )
}

fn assert_security(c: &Container) {
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut add = caps.add.clone().unwrap_or_default();
    add.sort();
    assert_eq!(add, ["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"]);
}

fn http_probe(p: &Probe) -> (String, i32, String) {
    let g = p.http_get.as_ref().expect("httpGet probe");
    let port = match &g.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => panic!("named port {s}"),
    };
    (
        g.host.clone().unwrap_or_default(),
        port,
        g.path.clone().unwrap_or_default(),
    )
}

#[test]
fn full_config_mounts_every_named_file_and_probes_admin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, _) = cert(d, "ca");
    let (client_crt, client_key) = cert(d, "client");
    let pki = d.join("pki");
    std::fs::create_dir(&pki).unwrap();
    let (proxy_crt, proxy_key) = cert(&pki, "proxy");
    // A kubeconfig whose current context uses files, the relative ones
    // resolved against its own directory as kubectl does; the other
    // context's file does not exist and must not be mounted.
    let kubeconfig = write(
        &pki,
        "proxy.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: lbd\n\
             clusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: {ca}\n\
             - name: other\n  cluster:\n    server: https://127.0.0.2:6443\n    certificate-authority: /nonexistent/ca.crt\n\
             users:\n- name: u\n  user:\n    client-certificate: proxy.crt\n    client-key: proxy.key\n\
             contexts:\n- name: lbd\n  context:\n    cluster: k\n    user: u\n\
             - name: o\n  context:\n    cluster: other\n    user: u\n",
            ca = ca.display()
        ),
    );
    let kpc = write(
        d,
        "kube-proxy.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n",
    );
    let etc_lbd = d.join("etc-lbd");
    std::fs::create_dir(&etc_lbd).unwrap();
    let config = write(
        &etc_lbd,
        "lbd.yaml",
        &format!(
            "tcplb:\n  listeners:\n    - name: apiserver\n      bind: 0.0.0.0:8443\n      \
             backends: [10.31.90.1:6443]\n      health:\n        type: https\n        \
             tls: {{ ca_file: {ca}, cert_file: {cc}, key_file: {ck} }}\n\
             proxy:\n  mode: ipvs\n  kubeconfig: {kc}\n  kube_proxy_config: {kpc}\n\
             admin:\n  socket: /run/lbd-test/admin.sock\n  listen: 0.0.0.0:9555\n",
            ca = ca.display(),
            cc = client_crt.display(),
            ck = client_key.display(),
            kc = kubeconfig.display(),
            kpc = kpc.display(),
        ),
    );

    let pod = manifest(&config, &["--image", "registry.example/lbd:test"]);
    assert_eq!(pod.metadata.name.as_deref(), Some("lbd"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = container(&pod);
    assert_eq!(c.image.as_deref(), Some("registry.example/lbd:test"));
    // The config at its own path, in its directory mounted whole: an
    // editor's rename-replace is seen, where a file mount keeps the old one.
    assert_eq!(
        c.command.as_deref().unwrap(),
        ["lbd", "run", "-c", config.to_str().unwrap()]
    );
    assert_security(c);
    let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(req["cpu"].0, "100m");
    assert_eq!(req["memory"].0, "64Mi");

    let m = mounts(&pod);
    let file = |host: &Path| (host.display().to_string(), "File".to_string(), true);
    let dir_key = etc_lbd.display().to_string();
    assert_eq!(
        m[&dir_key],
        (dir_key.clone(), "Directory".to_string(), true)
    );

    for f in [
        &ca,
        &client_crt,
        &client_key,
        &kubeconfig,
        &kpc,
        &proxy_crt,
        &proxy_key,
    ] {
        let key = f.display().to_string();
        assert_eq!(m.get(&key), Some(&file(f)), "{key} not mounted: {m:?}");
    }
    assert_eq!(
        m["/run/lbd-test"],
        (
            "/run/lbd-test".to_string(),
            "DirectoryOrCreate".to_string(),
            false
        )
    );
    assert_eq!(
        m["/lib/modules"],
        ("/lib/modules".to_string(), "Directory".to_string(), true)
    );
    assert!(
        !m.keys().any(|k| k.contains("nonexistent")),
        "the kubeconfig's unused context was mounted: {m:?}"
    );
    // config directory + 7 files + socket dir + modules: nothing else.
    assert_eq!(m.len(), 10, "{m:?}");

    // 0.0.0.0 is probed on loopback (hostNetwork: the pod IP is the node's).
    let live = c.liveness_probe.as_ref().expect("livenessProbe");
    assert_eq!(
        http_probe(live),
        ("127.0.0.1".into(), 9555, "/healthz".into())
    );
    let ready = c.readiness_probe.as_ref().expect("readinessProbe");
    assert_eq!(
        http_probe(ready),
        ("127.0.0.1".into(), 9555, "/readyz".into())
    );
}

/// The KubeProxyConfiguration decides, as for `lbd run`: its mode (ipvs ->
/// /lib/modules) and its clientConnection.kubeconfig, whose token file is
/// mounted too.
#[test]
fn kube_proxy_configuration_kubeconfig_and_mode_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = write(d, "token", "abc\n");
    let kc = write(
        d,
        "kp.kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n\
         users:\n- name: u\n  user:\n    tokenFile: token\n\
         contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\ncurrent-context: c\n",
    );
    let kpc = write(
        d,
        "kube-proxy.yaml",
        &format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: ipvs\nclientConnection:\n  kubeconfig: {}\n",
            kc.display()
        ),
    );
    let etc_lbd = d.join("etc-lbd");
    std::fs::create_dir(&etc_lbd).unwrap();
    let config = write(
        &etc_lbd,
        "lbd.yaml",
        &format!(
            "proxy:\n  mode: none\n  kube_proxy_config: {}\n",
            kpc.display()
        ),
    );
    let m = mounts(&manifest(&config, &[]));
    for f in [&kpc, &kc, &token] {
        let key = f.display().to_string();
        assert_eq!(
            m.get(&key),
            Some(&(key.clone(), "File".to_string(), true)),
            "{key} not mounted: {m:?}"
        );
    }
    assert!(
        m.contains_key("/lib/modules"),
        "mode ipvs from the KubeProxyConfiguration: {m:?}"
    );
}

#[test]
fn admin_listener_off_probes_over_the_socket_and_no_modules_without_ipvs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "lbd.yaml",
        "proxy:\n  mode: none\nadmin:\n  listen: \"\"\n",
    );
    let pod = manifest(&config, &[]);
    let c = container(&pod);
    assert_eq!(
        c.image.as_deref(),
        Some(format!("localhost/lbd:v{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    // Nothing to say about nft for mode none (nor for ipvs: the default
    // image carries it, the_default_image_needs_no_nft_note).
    let cfg = config.to_str().unwrap();
    let out = lbd(&["manifest", "-c", cfg]);
    assert!(!out.stderr.contains("nft binary"), "stderr: {}", out.stderr);
    assert_security(c);
    for p in [&c.liveness_probe, &c.readiness_probe] {
        let p = p.as_ref().expect("probe");
        assert!(p.http_get.is_none());
        let cmd = p.exec.as_ref().and_then(|e| e.command.clone()).unwrap();
        assert_eq!(
            cmd,
            [
                "lbd",
                "status",
                "--answered",
                "--socket",
                "/run/lbd/lbd.sock"
            ]
        );
    }
    let m = mounts(&pod);
    assert!(m.contains_key("/run/lbd"));
    assert!(!m.contains_key("/lib/modules"), "{m:?}");
    // The config directory and the socket's: the kubeconfig beside
    // lbd.yaml needs no mount of its own.
    assert_eq!(m.len(), 2, "{m:?}");
}

/// A notify command given by absolute path runs inside the pod, so the
/// program is mounted; a bare command name is the image's business.
#[test]
fn vrrp_notify_program_is_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = write(d, "notify.sh", "#!/bin/sh\nlogger \"$@\"\n");
    let etc_lbd = d.join("etc-lbd");
    std::fs::create_dir(&etc_lbd).unwrap();
    let config = write(
        &etc_lbd,
        "lbd.yaml",
        &format!(
            "vrrp:\n  instances:\n    - name: a\n      interface: eth0\n      vrid: 51\n      \
             priority: 100\n      virtual_ips: [10.31.90.0/24]\n      notify: {} --verbose\n    \
             - name: b\n      interface: eth0\n      vrid: 52\n      priority: 100\n      \
             virtual_ips: [10.31.91.0/24]\n      notify: logger -t lbd\n",
            script.display()
        ),
    );
    let m = mounts(&manifest(&config, &[]));
    let key = script.display().to_string();
    assert_eq!(
        m.get(&key),
        Some(&(key.clone(), "File".to_string(), true)),
        "{m:?}"
    );
    // config directory + script + socket dir: `logger` is not a host path.
    assert_eq!(m.len(), 3, "{m:?}");
}

#[test]
fn termination_grace_covers_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "lbd.yaml",
        "tcplb:\n  shutdown_grace: 2m\n  listeners:\n    - name: a\n      bind: 127.0.0.1:8443\n      \
         backends: [127.0.0.1:6443]\n      health: { type: tcp }\n",
    );
    let pod = manifest(&config, &[]);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.termination_grace_period_seconds, Some(125));
    // A VRRP handover grace longer than the default 2 s comes on top.
    let config = write(
        dir.path(),
        "lbd2.yaml",
        "vrrp:\n  instances:\n    - name: v\n      interface: eth0\n      vrid: 51\n      \
         virtual_ips: [10.0.0.100/24]\n      handover_grace: 20s\n\
         tcplb:\n  shutdown_grace: 2m\n  listeners:\n    - name: a\n      bind: 127.0.0.1:8443\n      \
         backends: [127.0.0.1:6443]\n      health: { type: tcp }\n",
    );
    let spec = manifest(&config, &[]).spec.unwrap();
    assert_eq!(spec.termination_grace_period_seconds, Some(143));
}

#[test]
fn config_errors_exit_1_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "bad.yaml",
        "admin:\n  listen: 127.0.0.1:9440\n  bogus: 1\n",
    );
    let out = lbd(&["manifest", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.is_empty());
    let want = format!("{}:3:", config.display());
    assert!(out.stderr.contains(&want), "stderr: {}", out.stderr);

    // A file the kubeconfig names that does not exist: the pod would hang in
    // ContainerCreating, so refuse.
    let kc = write(
        dir.path(),
        "kc",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    \
         certificate-authority: /nonexistent/ca.crt\ncontexts:\n- name: c\n  context:\n    cluster: k\ncurrent-context: c\n",
    );
    let config = write(
        dir.path(),
        "lbd.yaml",
        &format!("proxy:\n  mode: ipvs\n  kubeconfig: {}\n", kc.display()),
    );
    let out = lbd(&["manifest", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("/nonexistent/ca.crt") && out.stderr.contains("does not exist"),
        "stderr: {}",
        out.stderr
    );

    let out = lbd(&["manifest", "-c", "/nonexistent/lbd.yaml"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("/nonexistent/lbd.yaml"));
}

/// packaging/lbd.yaml with its "# " example lines uncommented ("## " lines
/// are prose and dropped).
fn uncommented_example() -> String {
    let text = std::fs::read_to_string(repo().join("packaging/lbd.yaml")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with("##"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| if l == "#" { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_default_config_passes_check() {
    let out = lbd(&[
        "check",
        "-c",
        repo().join("packaging/lbd.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[test]
fn shipped_example_is_complete_and_valid() {
    let text = uncommented_example();
    let env = lbd::config::Environment {
        hostname: "cp1".into(),
        existing_files: None,
    };
    let config = lbd::config::parse(&text, "packaging/lbd.yaml (uncommented)", &env)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(config.vrrp.is_some() && config.tcplb.is_some() && config.proxy.is_some());
}

/// packaging/static-pod/lbd.yaml is `lbd manifest` of the uncommented
/// example; `UPDATE_GOLDEN=1 cargo test --test manifest` rewrites it.
#[test]
fn static_pod_example_is_current() {
    let env = lbd::config::Environment {
        hostname: "cp1".into(),
        existing_files: None,
    };
    let config = lbd::config::parse(&uncommented_example(), "example", &env).unwrap();
    let opts = lbd::manifest::ManifestOptions {
        image: lbd::manifest::default_image(),
        config_path: PathBuf::from("/etc/lbd/lbd.yaml"),
    };
    // As on a node before `kubeadm init`: no cluster CA yet.
    let mut files = lbd::manifest::named_files(&config);
    for f in &mut files {
        f.exists = !f.may_appear_later;
    }
    let pod = lbd::manifest::static_pod(&config, &opts, &files).unwrap();
    let yaml = lbd::manifest::to_yaml(&pod).unwrap();
    let header = "# A ready static pod for one control-plane node: copy it to\n\
                  # /etc/kubernetes/manifests/lbd.yaml next to /etc/lbd/lbd.yaml.\n\
                  # Generated from the example in packaging/lbd.yaml with\n\
                  #     lbd manifest -c /etc/lbd/lbd.yaml > /etc/kubernetes/manifests/lbd.yaml\n\
                  # Regenerate it for your own config the same way.\n";
    let want = format!("{header}{yaml}");
    let path = repo().join("packaging/static-pod/lbd.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have, want,
        "packaging/static-pod/lbd.yaml is stale: UPDATE_GOLDEN=1 cargo test --test manifest"
    );
    // And it is a Pod that carries what the example config names.
    let parsed: Pod = serde_saphyr::from_str(&have).unwrap();
    assert_security(container(&parsed));
    let m = mounts(&parsed);
    assert_eq!(
        m["/etc/lbd"],
        ("/etc/lbd".into(), "Directory".into(), true),
        "{m:?}"
    );
    // The CA kubeadm init writes later: its directory, so it is seen.
    assert_eq!(
        m["/etc/kubernetes/pki"],
        (
            "/etc/kubernetes/pki".into(),
            "DirectoryOrCreate".into(),
            true
        ),
        "{m:?}"
    );
    assert!(
        m.contains_key("/etc/kubernetes/lbd-proxy.kubeconfig"),
        "{m:?}"
    );
    assert!(m.contains_key("/lib/modules"));
}

/// A config straight in /etc would put all of /etc in the pod.
#[test]
fn config_in_etc_is_refused() {
    let env = lbd::config::Environment {
        hostname: "cp1".into(),
        existing_files: None,
    };
    let config = lbd::config::parse("admin: {}\n", "x", &env).unwrap();
    let opts = lbd::manifest::ManifestOptions {
        image: "i".into(),
        config_path: PathBuf::from("/etc/lbd.yaml"),
    };
    let e = lbd::manifest::static_pod(&config, &opts, &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("keep lbd.yaml in a directory of its own"),
        "{e}"
    );
}

mod daemonset {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

    /// The control plane's config: VRRP tracking the balancer, the proxy
    /// with its own kubeconfig and a KubeProxyConfiguration's settings.
    fn control_plane_config(dir: &Path) -> PathBuf {
        let kc = write(dir, "proxy.kubeconfig", KUBECONFIG);
        write(
            dir,
            "lbd.yaml",
            &format!(
                "node:\n  name: cp1\n\
                 vrrp:\n  instances:\n    - name: apiserver\n      interface: eth0\n      vrid: 51\n      \
                 virtual_ips: [10.31.90.0/24]\n      track: [{{listener: apiserver, weight: -50}}]\n\
                 tcplb:\n  listeners:\n    - name: apiserver\n      bind: 0.0.0.0:8443\n      \
                 backends: [10.31.90.1:6443]\n\
                 proxy:\n  mode: ipvs\n  kubeconfig: {}\n  cluster_cidr: 10.244.0.0/16\n  \
                 hostname_override: cp1\n  ipvs: {{scheduler: wlc, strict_arp: true}}\n",
                kc.display()
            ),
        )
    }

    struct Objects {
        sa: ServiceAccount,
        role: ClusterRole,
        binding: ClusterRoleBinding,
        cm: ConfigMap,
        ds: DaemonSet,
    }

    fn render(config: &Path, extra: &[&str]) -> Objects {
        let mut args = vec!["manifest", "--daemonset", "-c", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = lbd(&args);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let docs: Vec<&str> = out.stdout.split("---\n").collect();
        assert_eq!(docs.len(), 5, "{}", out.stdout);
        let parse = |i: usize, kind: &str| {
            assert!(docs[i].contains(&format!("kind: {kind}")), "{}", docs[i]);
            docs[i]
        };
        Objects {
            sa: serde_saphyr::from_str(parse(0, "ServiceAccount")).unwrap(),
            role: serde_saphyr::from_str(parse(1, "ClusterRole")).unwrap(),
            binding: serde_saphyr::from_str(parse(2, "ClusterRoleBinding")).unwrap(),
            cm: serde_saphyr::from_str(parse(3, "ConfigMap")).unwrap(),
            ds: serde_saphyr::from_str(parse(4, "DaemonSet")).unwrap(),
        }
    }

    #[test]
    fn proxy_only_host_network_net_admin_and_off_the_control_planes() {
        let dir = tempfile::tempdir().unwrap();
        let o = render(&control_plane_config(dir.path()), &[]);
        let spec = o.ds.spec.template.spec.as_ref().unwrap();
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.service_account_name.as_deref(), Some("lbd-proxy"));
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        // Never where the static pod proxies: required, on kubeadm's label.
        let na = spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap();
        let terms = &na
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let req = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (req.key.as_str(), req.operator.as_str()),
            ("node-role.kubernetes.io/control-plane", "DoesNotExist")
        );
        // Every worker, whatever its taints (as kube-proxy).
        let tol = spec.tolerations.as_ref().unwrap();
        assert_eq!(tol.len(), 1);
        assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
        assert!(tol[0].key.is_none() && tol[0].effect.is_none());

        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        // The proxy alone: NET_ADMIN and nothing else.
        assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            c.command.as_deref().unwrap(),
            [
                "lbd",
                "run",
                "-c",
                "/etc/lbd/lbd.yaml",
                "--node-name",
                "$(NODE_NAME)"
            ]
        );
        let env = &c.env.as_ref().unwrap()[0];
        assert_eq!(env.name, "NODE_NAME");
        let field = env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "spec.nodeName");
        assert_eq!(
            c.image.as_deref(),
            Some(format!("localhost/lbd:v{}", env!("CARGO_PKG_VERSION")).as_str())
        );
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(
            vols[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("lbd-proxy")
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/etc/lbd", "/run/lbd", "/lib/modules"]);

        assert_eq!(o.sa.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(o.binding.role_ref.name, "lbd-proxy");
        let subject = &o.binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "lbd-proxy", Some("kube-system"))
        );
        let _ = o.role;
    }

    /// The ConfigMap's lbd.yaml is the control plane's proxy section with
    /// in-cluster credentials at the VIP, and passes lbd's own parser.
    #[test]
    fn config_map_is_the_proxy_section_at_the_vip() {
        let dir = tempfile::tempdir().unwrap();
        let o = render(&control_plane_config(dir.path()), &[]);
        let text = &o.cm.data.as_ref().unwrap()["lbd.yaml"];
        let env = lbd::config::Environment {
            hostname: "worker1".into(),
            existing_files: None,
        };
        let c = lbd::config::parse(text, "cm", &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(c.vrrp.is_none() && c.tcplb.is_none());
        let p = c.proxy.unwrap();
        assert_eq!(p.mode, lbd::config::ProxyMode::Ipvs);
        assert_eq!(p.kubeconfig, None, "in-cluster on the workers");
        assert_eq!(
            p.api_server.map(|a| a.url).as_deref(),
            Some("https://10.31.90.0:8443")
        );
        // The control plane node's own name stays there.
        assert_eq!(p.hostname_override, None);
        assert_eq!(p.cluster_cidr, ["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(p.ipvs.scheduler, "wlc");
        assert!(p.ipvs.strict_arp);

        let o = render(
            &control_plane_config(dir.path()),
            &["--api-server", "https://api.example:6443"],
        );
        let text = &o.cm.data.as_ref().unwrap()["lbd.yaml"];
        assert!(
            text.contains("api_server: \"https://api.example:6443\""),
            "{text}"
        );
    }

    /// The ClusterRole grants what src/ipvs/kube.rs (src/proxy/kube.rs once
    /// moved) watches, list and watch only, and nothing it does not use.
    #[test]
    fn rbac_matches_what_the_proxy_watches() {
        let src = ["src/proxy/kube.rs", "src/ipvs/kube.rs"]
            .iter()
            .find_map(|p| std::fs::read_to_string(repo().join(p)).ok())
            .expect("the proxy's kube.rs");
        let used: BTreeMap<&str, (&str, &str)> = [
            ("Api::<Service>", ("", "services")),
            ("Api::<Node>", ("", "nodes")),
            (
                "Api::<EndpointSlice>",
                ("discovery.k8s.io", "endpointslices"),
            ),
            ("Api::<Endpoints>", ("", "endpoints")),
            ("Api::<Event>", ("events.k8s.io", "events")),
        ]
        .into_iter()
        .filter(|(needle, _)| src.contains(needle))
        .collect();
        assert!(
            used.len() >= 3,
            "the proxy watches at least three kinds: {used:?}"
        );
        let rules = lbd::manifest::daemonset::rbac_rules();
        let mut granted = Vec::new();
        for r in &rules {
            assert_eq!(r.verbs, ["list", "watch"], "{r:?}");
            for g in r.api_groups.as_ref().unwrap() {
                for res in r.resources.as_ref().unwrap() {
                    granted.push((g.clone(), res.clone()));
                }
            }
        }
        granted.sort();
        let mut want: Vec<(String, String)> = used
            .values()
            .map(|(g, r)| (g.to_string(), r.to_string()))
            .collect();
        want.sort();
        assert_eq!(granted, want);
        // Nothing written: no recorder, no patch.
        assert!(
            !src.contains("Recorder") && !src.contains(".patch("),
            "the proxy writes now: grant it"
        );
        // What `lbd manifest --daemonset` prints is that list.
        let dir = tempfile::tempdir().unwrap();
        let o = render(&control_plane_config(dir.path()), &[]);
        assert_eq!(o.role.rules.as_deref(), Some(&rules[..]));
    }

    #[test]
    fn without_a_proxy_or_an_address_it_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let c = write(dir.path(), "lbd.yaml", "admin: {}\n");
        let out = lbd(&["manifest", "--daemonset", "-c", c.to_str().unwrap()]);
        assert_eq!(out.code, Some(1));
        assert!(
            out.stderr.contains("has no proxy section"),
            "{}",
            out.stderr
        );
        let kc = write(dir.path(), "kc", KUBECONFIG);
        let c = write(
            dir.path(),
            "lbd.yaml",
            &format!("proxy:\n  kubeconfig: {}\n", kc.display()),
        );
        let out = lbd(&["manifest", "--daemonset", "-c", c.to_str().unwrap()]);
        assert_eq!(out.code, Some(1));
        assert!(
            out.stderr.contains("no apiserver address"),
            "{}",
            out.stderr
        );
        // --api-server is for --daemonset only: a usage error.
        let out = lbd(&[
            "manifest",
            "--api-server",
            "https://x:1",
            "-c",
            c.to_str().unwrap(),
        ]);
        assert_eq!(out.code, Some(2));
    }
}

/// docs/kubeadm.md's lbd.yaml blocks pass lbd's parser: the first alone
/// (VIP and balancer, before `kubeadm init`), then with the proxy section
/// the page appends to it.
#[test]
fn kubeadm_page_configs_parse() {
    let page = std::fs::read_to_string(repo().join("docs/kubeadm.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(l) = lines.next() {
        if l == "```yaml" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push(block.join("\n") + "\n");
        }
    }
    assert_eq!(
        blocks.len(),
        2,
        "the page's lbd.yaml blocks changed: update this test"
    );
    let env = lbd::config::Environment {
        hostname: "cp1".into(),
        existing_files: None,
    };
    let first = lbd::config::parse(&blocks[0], "docs/kubeadm.md block 1", &env)
        .unwrap_or_else(|e| panic!("{e}\n{}", blocks[0]));
    assert!(first.vrrp.is_some() && first.tcplb.is_some() && first.proxy.is_none());
    let both = blocks[0].clone() + &blocks[1];
    let full = lbd::config::parse(&both, "docs/kubeadm.md blocks 1+2", &env)
        .unwrap_or_else(|e| panic!("{e}\n{both}"));
    let proxy = full.proxy.expect("the appended proxy section");
    assert_eq!(
        proxy.kubeconfig.as_deref(),
        Some(Path::new("/etc/lbd/proxy.kubeconfig"))
    );
}

#[test]
fn the_default_image_needs_no_nft_note() {
    // scripts/oci-image.sh puts /usr/sbin/nft and its libraries in the
    // default image (tests/packaging.sh runs it there), so ipvs mode, which
    // programs its masquerade and filter table with nft, works with it.
    let dir = tempfile::tempdir().unwrap();
    let kc = write(dir.path(), "proxy.kubeconfig", KUBECONFIG);
    let config = write(
        dir.path(),
        "lbd.yaml",
        &format!(
            "proxy:\n  mode: ipvs\n  kubeconfig: {}\nadmin:\n  listen: \"\"\n",
            kc.display()
        ),
    );
    let out = lbd(&["manifest", "-c", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains("image: localhost/lbd:v"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("nft"), "stderr: {}", out.stderr);
}
