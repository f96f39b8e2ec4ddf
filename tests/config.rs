//! Config parsing and validation: SPEC.md's example, defaults, and broken
//! files that must report every problem at its line and column.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use lbd::config::*;

fn env_with(files: &[&str]) -> Environment {
    Environment {
        hostname: "testhost".into(),
        existing_files: Some(files.iter().map(PathBuf::from).collect::<BTreeSet<_>>()),
    }
}

const SPEC_EXAMPLE: &str = r#"
node:
  name: cp1                      # default: the host name
vrrp:
  instances:
    - name: apiserver
      interface: eth0
      vrid: 51                   # 1-255
      version: 3                 # 3 (RFC 5798, default) or 2 (RFC 3768)
      priority: 100              # 1-254
      advert_interval: 1s        # v3: 10ms steps up to 40.95s; v2: whole seconds
      preempt: true
      preempt_delay: 0s
      virtual_ips: [10.31.90.0/24]        # IPv4 or IPv6 (v3), one family per instance
      unicast_peers: []          # empty: multicast 224.0.0.18 / ff02::12
      auth_pass: ""              # v2 only, <= 8 bytes, as keepalived's PASS
      track:
        - listener: apiserver    # fails while that listener has no healthy backend
          weight: -50            # added to priority while failing
        - interface: eth0        # fails while the link is down
          weight: -50
tcplb:
  listeners:
    - name: apiserver
      bind: 0.0.0.0:8443
      balance: roundrobin        # roundrobin | leastconn | source | random
      backends: [10.31.90.1:6443, 10.31.90.2:6443, 10.31.90.3:6443]
      health:
        type: https              # https | http | tcp
        path: /healthz
        expect_status: 200
        interval: 1s
        timeout: 1s
        rise: 2
        fall: 2
        tls: { ca_file: /etc/kubernetes/pki/ca.crt, server_name: kubernetes, insecure_skip_verify: false }
      connect_timeout: 3s
      retries: 2                 # another backend on connect failure
      max_connections: 20000
proxy:
  mode: ipvs                     # ipvs | nftables | none
  kube_proxy_config: /etc/kubernetes/kube-proxy-config.yaml  # optional: a KubeProxyConfiguration to read
  kubeconfig: /etc/kubernetes/kube-proxy.kubeconfig          # absent: in-cluster
  cluster_cidr: 10.244.0.0/16
  ipvs: { scheduler: rr, strict_arp: false, exclude_cidrs: [], sync_period: 30s, min_sync_period: 1s }
  healthz_bind: 0.0.0.0:10256
  metrics_bind: 127.0.0.1:10249
admin:
  socket: /run/lbd/lbd.sock      # mode 0600; `lbd status` talks here
  listen: 127.0.0.1:9440         # /healthz /readyz /metrics /status
"#;

#[test]
fn spec_example_parses_with_every_value() {
    let env = env_with(&[
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/kube-proxy-config.yaml",
        "/etc/kubernetes/kube-proxy.kubeconfig",
    ]);
    let c = parse(SPEC_EXAMPLE, "lbd.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.node.name, "cp1");
    let v = &c.vrrp.as_ref().unwrap().instances[0];
    assert_eq!(v.name, "apiserver");
    assert_eq!(v.interface, "eth0");
    assert_eq!(v.vrid, 51);
    assert_eq!(v.version, VrrpVersion::V3);
    assert_eq!(v.priority, 100);
    assert_eq!(v.advert_interval, Duration::from_secs(1));
    assert!(v.preempt);
    assert_eq!(v.virtual_ips, vec!["10.31.90.0/24".parse().unwrap()]);
    assert!(v.unicast_peers.is_empty());
    assert_eq!(
        v.track,
        vec![
            TrackConfig {
                target: TrackTarget::Listener("apiserver".into()),
                weight: -50
            },
            TrackConfig {
                target: TrackTarget::Interface("eth0".into()),
                weight: -50
            },
        ]
    );
    assert_eq!(v.vip_lifetime, Duration::from_secs(3));
    let l = &c.tcplb.as_ref().unwrap().listeners[0];
    assert_eq!(l.bind, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(l.balance, Balance::RoundRobin);
    assert_eq!(l.backends.len(), 3);
    assert_eq!(l.health.kind, HealthKind::Https);
    assert_eq!((l.health.rise, l.health.fall), (2, 2));
    assert_eq!(l.health.tls.server_name.as_deref(), Some("kubernetes"));
    assert_eq!(
        l.health.tls.ca_file,
        Some(PathBuf::from("/etc/kubernetes/pki/ca.crt"))
    );
    assert_eq!(l.connect_timeout, Duration::from_secs(3));
    assert_eq!((l.retries, l.max_connections), (2, 20000));
    assert_eq!(l.on_backend_down, OnBackendDown::Keep);
    assert_eq!(l.idle_timeout, None);
    let p = c.proxy.as_ref().unwrap();
    assert_eq!(p.mode, ProxyMode::Ipvs);
    assert_eq!(p.cluster_cidr, vec!["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(p.ipvs.scheduler, "rr");
    assert_eq!(p.ipvs.sync_period, Duration::from_secs(30));
    assert_eq!(p.metrics_bind, Some("127.0.0.1:10249".parse().unwrap()));
    assert_eq!(c.admin.socket, PathBuf::from("/run/lbd/lbd.sock"));
    assert_eq!(c.admin.listen, Some("127.0.0.1:9440".parse().unwrap()));
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(
        "tcplb:\n  listeners:\n    - name: a\n      bind: 127.0.0.1:8443\n      backends: [127.0.0.1:6443]\n",
        "x.yaml",
        &env_with(&[]),
    )
    .unwrap();
    assert_eq!(c.node.name, "testhost");
    assert!(c.vrrp.is_none() && c.proxy.is_none());
    let l = &c.tcplb.unwrap().listeners[0];
    assert_eq!(l.health.kind, HealthKind::Tcp);
    assert_eq!(
        (l.health.interval, l.health.rise, l.health.fall),
        (Duration::from_secs(2), 2, 3)
    );
    assert_eq!(l.balance, Balance::RoundRobin);
    assert_eq!(l.retries, 2);
    // An empty file is a valid config that runs nothing but the admin server.
    let empty = parse("", "e.yaml", &env_with(&[])).unwrap();
    assert!(empty.tcplb.is_none());
}

#[test]
fn every_problem_is_reported_with_line_and_column() {
    let text = "\
vrrp:
  instances:
    - name: vip
      interface: eth0
      vrid: 0
      priority: 300
      advert_interval: 15ms
      virtual_ips: [10.0.0.1/24, fd00::1/64]
      auth_pass: toolongpassword
      track:
        - listener: nosuch
          weight: -50
tcplb:
  listeners:
    - name: api
      bind: 0.0.0.0:99999
      backends: []
      balanse: roundrobin
      connect_timeout: 3
      health: { type: https, interval: 1x, rise: 0 }
";
    let err = parse(text, "bad.yaml", &env_with(&[])).unwrap_err();
    let out = err.to_string();
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        "bad.yaml:5:13: vrid must be between 1 and 255, not 0",
        "bad.yaml:6:17: priority must be between 1 and 254, not 300",
        "bad.yaml:7:24: advert_interval for VRRPv3 must be 10ms to 40.95s in steps of 10ms",
        "bad.yaml:8:20: virtual_ips must all be IPv4 or all IPv6 (one family per instance)",
        "bad.yaml:9:18: auth_pass is only for version 2 (RFC 5798 removed authentication)",
        "bad.yaml:9:18: auth_pass must be at most 8 bytes (keepalived's PASS)",
        "bad.yaml:11:21: track.listener: no tcplb listener is named \"nosuch\"",
        "bad.yaml:16:13: bind: invalid \"0.0.0.0:99999\"",
        "bad.yaml:17:17: backends must name at least one ADDRESS:PORT",
        "bad.yaml:18:7: unknown key \"balanse\" in a listener (did you mean \"balance\"?)",
        "bad.yaml:19:24: connect_timeout needs a unit, as in 1s, 100ms or 1m30s",
        "bad.yaml:20:15: https health checks verify the backend",
        "bad.yaml:20:40: health.interval: invalid duration \"1x\": unknown unit \"x\"",
        "bad.yaml:20:50: health.rise must be between 1 and 1000, not 0",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in:\n{out}"
        );
    }
    assert_eq!(
        lines.len(),
        expect.len(),
        "unexpected extra problems:\n{out}"
    );
}

#[test]
fn syntax_error_has_position() {
    let err = parse("tcplb:\n  listeners: [\n", "s.yaml", &env_with(&[])).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].line >= 2, "{err}");
    assert!(err.to_string().starts_with("s.yaml:"));
}

#[test]
fn missing_files_and_v2_rules() {
    let text = "\
vrrp:
  instances:
    - name: v
      interface: eth0
      vrid: 7
      version: 2
      advert_interval: 1500ms
      virtual_ips: [fd00::1/64]
      auth_pass: secret
tcplb:
  listeners:
    - name: api
      bind: 0.0.0.0:8443
      backends: [10.0.0.1:6443]
      health:
        type: https
        tls: { ca_file: /nonexistent/ca.crt, cert_file: /c.pem }
";
    let err = parse(text, "v2.yaml", &env_with(&["/c.pem"])).unwrap_err();
    let out = err.to_string();
    for needle in [
        "v2.yaml:7:24: advert_interval for VRRPv2 must be whole seconds",
        "v2.yaml:8:20: IPv6 virtual_ips need version 3",
        "tls.cert_file and tls.key_file go together",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // A TLS file that does not exist yet is not a problem (bootstrap: the
    // CA appears with `kubeadm init`), see tests/tcplb_operations.rs.
    assert!(!out.contains("ca.crt"), "{out}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("5 s").is_err());
}

/// Mangled files (truncations, flipped bytes, spliced lines) give errors,
/// never a panic.
#[test]
fn mangled_configs_never_panic() {
    let env = env_with(&[]);
    let base = SPEC_EXAMPLE.as_bytes();
    let mut rng = fastrand::Rng::with_seed(0x1bd);
    let mut errors = 0;
    for i in 0..3000 {
        let mut bytes = base.to_vec();
        match i % 4 {
            0 => bytes.truncate(rng.usize(..bytes.len())),
            1 => {
                for _ in 0..rng.usize(1..8) {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = b"{}[]:-,#'\"&*!|>%@ \n\t0a"[rng.usize(..22)];
                }
            }
            2 => {
                let lines: Vec<&[u8]> = base.split(|b| *b == b'\n').collect();
                let a = rng.usize(..lines.len());
                let b = rng.usize(..lines.len());
                let mut v = lines.clone();
                v.swap(a, b);
                bytes = v.join(&b'\n');
            }
            _ => {
                let at = rng.usize(..bytes.len());
                bytes.insert(at, rng.u8(..));
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = parse(&text, "m.yaml", &env) {
            errors += 1;
            assert!(!e.problems.is_empty());
            assert!(e.to_string().starts_with("m.yaml:"), "{e}");
        }
    }
    assert!(
        errors > 1000,
        "mangling should mostly break the file ({errors})"
    );
}

const KUBEADM_KPC: &str = "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
healthzBindAddress: \"\"
ipvs:
  scheduler: wlc
  syncPeriod: 1m0s
  minSyncPeriod: 0s
metricsBindAddress: 0.0.0.0:10249
mode: ipvs
";

/// A kubeconfig `load` accepts: a server, a token, its current context.
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\n\
    clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n\
    users:\n- name: u\n  user:\n    token: abc\n\
    contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n";

fn kubeconfig_in(dir: &std::path::Path) -> PathBuf {
    let kc = dir.join("kube-proxy.kubeconfig");
    std::fs::write(&kc, KUBECONFIG).unwrap();
    kc
}

/// The kubeadm KubeProxyConfiguration, naming a kubeconfig in `dir`
/// (kubeadm's own path exists only in kube-proxy's pod).
fn kubeadm_kpc_in(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let kc = kubeconfig_in(dir);
    let kpc = dir.join("kube-proxy.yaml");
    std::fs::write(
        &kpc,
        KUBEADM_KPC.replace(
            "/var/lib/kube-proxy/kubeconfig.conf",
            &kc.display().to_string(),
        ),
    )
    .unwrap();
    (kpc, kc)
}

/// `load` is what `lbd run` sees: the KubeProxyConfiguration's fields
/// override the proxy section's; what it leaves empty or zero, or does not
/// say, stays as lbd.yaml has it.
#[test]
fn load_merges_the_kube_proxy_configuration_over_the_proxy_section() {
    let dir = tempfile::tempdir().unwrap();
    let (kpc, kc) = kubeadm_kpc_in(dir.path());
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  mode: nftables\n  kube_proxy_config: {}\n  cluster_cidr: 10.0.0.0/8\n  \
             masquerade_all: true\n  healthz_bind: 127.0.0.1:10256\n  \
             ipvs: {{scheduler: sh, min_sync_period: 2s, sync_period: 10s}}\n",
            kpc.display()
        ),
    )
    .unwrap();
    let p = load(&cfg).unwrap_or_else(|e| panic!("{e}")).proxy.unwrap();
    assert_eq!(p.kube_proxy_config.as_deref(), Some(kpc.as_path()));
    // From the KubeProxyConfiguration.
    assert_eq!(p.mode, ProxyMode::Ipvs);
    assert_eq!(p.cluster_cidr, ["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(p.kubeconfig, Some(kc));
    assert_eq!(
        p.kubeconfig_source,
        KubeconfigSource::KubeProxyConfiguration
    );
    assert_eq!(p.ipvs.scheduler, "wlc");
    assert_eq!(p.ipvs.sync_period, Duration::from_secs(60));
    assert_eq!(p.metrics_bind, Some("0.0.0.0:10249".parse().unwrap()));
    // Empty, zero or absent there: lbd.yaml's.
    assert_eq!(p.healthz_bind, Some("127.0.0.1:10256".parse().unwrap()));
    assert_eq!(p.ipvs.min_sync_period, Duration::from_secs(2));
    assert!(p.masquerade_all);

    // `parse` is the pure part: it does not read the file.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let files = kpc.display().to_string();
    let unmerged = parse(&text, "lbd.yaml", &env_with(&[&files]))
        .unwrap()
        .proxy
        .unwrap();
    assert_eq!(unmerged.mode, ProxyMode::Nftables);
}

#[test]
fn load_reports_problems_of_both_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let kpc = dir.path().join("kube-proxy.yaml");
    std::fs::write(
        &kpc,
        KUBEADM_KPC
            .replace("mode: ipvs", "mode: userspace")
            .replace("1m0s", "1 minute"),
    )
    .unwrap();
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  kube_proxy_config: {}\n  bogus: 1\n  kubeconfig: {}\nadmin: {{listen: nowhere}}\n",
            kpc.display(),
            kubeconfig_in(dir.path()).display()
        ),
    )
    .unwrap();
    let e = load(&cfg).unwrap_err();
    let (c, k) = (cfg.display().to_string(), kpc.display().to_string());
    assert_eq!(e.path, c);
    let got: Vec<(String, u64, u64)> = e
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.line, p.col))
        .collect();
    assert_eq!(
        got,
        [
            (c.clone(), 3, 3),
            (c.clone(), 5, 17),
            (k.clone(), 9, 15),
            (k.clone(), 12, 7),
        ],
        "{e}"
    );
    assert_eq!(e.to_string().lines().count(), 4, "{e}");
    assert!(e.problems[3]
        .message
        .contains("\"userspace\" is not supported"));
}

/// kube-proxy's nftables mode has no lbd data plane yet: `check` refuses
/// it where it is set (lbd.yaml, or the KubeProxyConfiguration that
/// overrides it), instead of a proxy that starts and programs nothing.
#[test]
fn load_refuses_mode_nftables_where_it_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lbd.yaml");
    let kpc = dir.path().join("kube-proxy.yaml");
    let problems = |lbd: &str, kp: &str| -> Vec<String> {
        std::fs::write(&kpc, kp).unwrap();
        std::fs::write(&cfg, lbd.replace("KPC", &kpc.display().to_string())).unwrap();
        // Only the mode's problems: credentials are another test's.
        match load(&cfg) {
            Ok(_) => vec![],
            Err(e) => e
                .problems
                .iter()
                .filter(|p| p.message.contains("mode"))
                .map(|p| {
                    format!(
                        "{}:{}:{}: {}",
                        p.path == kpc.display().to_string(),
                        p.line,
                        p.col,
                        p.message
                    )
                })
                .collect(),
        }
    };
    assert_eq!(
        problems("proxy:\n  mode: nftables\n", KUBEADM_KPC),
        ["false:2:9: proxy.mode: nftables is not implemented yet; use ipvs"]
    );
    // The KubeProxyConfiguration's mode wins, either way.
    let under_kpc = "proxy:\n  mode: nftables\n  kube_proxy_config: KPC\n";
    assert_eq!(problems(under_kpc, KUBEADM_KPC), Vec::<String>::new());
    assert_eq!(
        problems(under_kpc, &KUBEADM_KPC.replace("mode: ipvs", "mode: \"\"")),
        ["false:2:9: proxy.mode: nftables is not implemented yet; use ipvs"]
    );
    assert_eq!(
        problems(
            "proxy:\n  mode: ipvs\n  kube_proxy_config: KPC\n",
            &KUBEADM_KPC.replace("mode: ipvs", "mode: nftables")
        ),
        ["true:12:7: mode: \"nftables\" is not implemented yet; use ipvs"]
    );
}

#[test]
fn load_without_a_file_says_so_without_a_position() {
    let e = load(std::path::Path::new("/nonexistent/lbd.yaml")).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!((e.problems[0].line, e.problems[0].col), (0, 0));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/lbd.yaml: cannot read: "),
        "{e}"
    );
}

/// Mangled KubeProxyConfigurations give positioned problems, never a
/// panic, and never half-apply.
#[test]
fn mangled_kube_proxy_configurations_never_panic() {
    let base_cfg = parse("proxy: {}\n", "b.yaml", &env_with(&[]))
        .unwrap()
        .proxy
        .unwrap();
    let base = KUBEADM_KPC.as_bytes();
    let mut rng = fastrand::Rng::with_seed(0x6b70);
    let mut errors = 0;
    for i in 0..2000 {
        let mut bytes = base.to_vec();
        match i % 3 {
            0 => bytes.truncate(rng.usize(..bytes.len())),
            1 => {
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = b"{}[]:-,#'\"&*!|>%@ \n\t0a/."[rng.usize(..24)];
                }
            }
            _ => {
                let at = rng.usize(..bytes.len());
                bytes.insert(at, rng.u8(..));
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut p = base_cfg.clone();
        if let Err(problems) = kube_proxy::apply(&text, "k.yaml", &mut p) {
            errors += 1;
            assert!(!problems.is_empty());
            assert_eq!(p, base_cfg, "a failed apply changed the config");
            for pr in &problems {
                assert!(pr.to_string().starts_with("k.yaml:"), "{pr}");
            }
        }
    }
    assert!(
        errors > 500,
        "mangling should often break the file ({errors})"
    );
}
