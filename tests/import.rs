//! `lbd import` on real-world configs (tests/fixtures/import/README.md):
//! what each key became, the comments for what was not mapped, and that
//! the result passes `lbd check`.
//!
//! The full outputs are golden files beside the inputs;
//! `LBD_BLESS=1 cargo test --test import` rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lbd::config::{Balance, Config, Environment, HealthKind, ProxyMode, TrackTarget, VrrpVersion};
use lbd::import::{import, Source, Sources};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import")
}

fn source(rel: &str) -> Source {
    let p = fixtures().join(rel);
    Source {
        // Shown in comments: relative, so the goldens do not depend on
        // where the repository is.
        path: rel.to_string(),
        text: std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    }
}

/// The output, compared with (or written to) `golden`.
fn imported(sources: &Sources, golden: &str) -> String {
    let out = import(sources).unwrap();
    let path = fixtures().join(golden);
    if std::env::var_os("LBD_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (LBD_BLESS=1 writes it)", path.display()));
    assert_eq!(out, want, "{golden} differs (LBD_BLESS=1 rewrites it)");
    out
}

/// Parsed as lbd reads it, every named file taken to exist.
fn parsed(text: &str) -> Config {
    let env = Environment {
        hostname: "cp1".into(),
        existing_files: None,
    };
    lbd::config::parse(text, "imported.yaml", &env).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn kubeadm_guide() -> Sources {
    let check =
        std::fs::read_to_string(fixtures().join("kubeadm-guide/check_apiserver.sh")).unwrap();
    Sources {
        keepalived: Some(source("kubeadm-guide/keepalived.conf")),
        haproxy: Some(source("kubeadm-guide/haproxy.cfg")),
        kube_proxy: Some(source("kubeadm-guide/kube-proxy.yaml")),
        scripts: BTreeMap::from([(
            "/etc/keepalived/check_apiserver.sh".to_string(),
            Some(check),
        )]),
        ..Default::default()
    }
}

#[test]
fn kubeadm_ha_guide_keepalived_haproxy_and_kube_proxy() {
    let out = imported(&kubeadm_guide(), "kubeadm-guide/lbd.expected.yaml");
    let c = parsed(&out);
    let v = &c.vrrp.as_ref().unwrap().instances[0];
    assert_eq!(v.name, "VI_1");
    assert_eq!(
        (v.interface.as_str(), v.vrid, v.priority),
        ("eth0", 51, 101)
    );
    // keepalived speaks VRRPv2 unless told otherwise: the rollout must
    // interoperate, and the password is the guide's.
    assert_eq!(v.version, VrrpVersion::V2);
    assert_eq!(v.auth_pass, "42");
    assert_eq!(v.virtual_ips, ["10.31.90.0/32".parse().unwrap()]);
    assert_eq!(v.advert_interval, Duration::from_secs(1));
    // check_apiserver.sh curls :8443, the frontend's port: the listener.
    assert_eq!(v.track.len(), 1);
    assert_eq!(v.track[0].target, TrackTarget::Listener("apiserver".into()));
    assert_eq!(v.track[0].weight, -2);

    let l = &c.tcplb.as_ref().unwrap().listeners[0];
    assert_eq!(l.name, "apiserver");
    assert_eq!(l.bind, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(l.balance, Balance::RoundRobin);
    let want: Vec<std::net::SocketAddr> = ["10.31.90.1:6443", "10.31.90.2:6443", "10.31.90.3:6443"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(l.backends, want);
    // option ssl-hello-chk came last: a TLS check, here of /healthz; no CA
    // on the machine that imported it, so unverified as haproxy was.
    assert_eq!(l.health.kind, HealthKind::Https);
    assert_eq!(l.health.path, "/healthz");
    assert!(l.health.tls.insecure_skip_verify);
    assert_eq!(l.health.timeout, Duration::from_secs(10));
    assert_eq!(l.connect_timeout, Duration::from_secs(5));
    assert_eq!(l.retries, 1);

    // kubeadm's kubeconfig lives in kube-proxy's pod: the proxy section is
    // written, commented out, with strictARP and the cluster CIDR kept.
    assert!(c.proxy.is_none());
    for line in [
        "# proxy:",
        "#   mode: ipvs",
        "#   cluster_cidr: [10.244.0.0/16]",
        "#     strict_arp: true",
        "# The KubeProxyConfiguration names /var/lib/kube-proxy/kubeconfig.conf, which is not on this node",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
    // What could not be mapped is said where it was found.
    for needle in [
        "# keepalived.conf:15: state MASTER: lbd starts every node as backup",
        "# keepalived.conf:4: router_id LVS_DEVEL: not node.name",
        "# option ssl-hello-chk (haproxy only checked the TLS hello)",
        "# haproxy.cfg:26: timeout client 20s: lbd sets no idle timeout",
        "# keepalived.conf:27: check_apiserver: interval 3, fall 10, rise 2: the listener's health",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

/// The guide's haproxy.cfg as revised for haproxy 2.x (`http-check
/// connect ssl`, `http-check send meth GET uri /healthz`, `verify none` on
/// each server) instead of `option ssl-hello-chk`.
#[test]
fn kubeadm_ha_guide_haproxy_2_http_check_connect_ssl() {
    let sources = Sources {
        haproxy: Some(source("kubeadm-guide/haproxy-2.4.cfg")),
        ..Default::default()
    };
    let out = imported(&sources, "kubeadm-guide/lbd-haproxy-2.4.expected.yaml");
    let c = parsed(&out);
    let l = &c.tcplb.as_ref().unwrap().listeners[0];
    assert_eq!(l.name, "apiserver");
    assert_eq!(l.bind, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(l.backends.len(), 3);
    // Over TLS, GET /healthz, expecting 200: what haproxy checked.
    assert_eq!(l.health.kind, HealthKind::Https);
    assert_eq!(l.health.path, "/healthz");
    // verify none and no cluster CA where it was imported: unverified, and
    // said so.
    assert!(l.health.tls.insecure_skip_verify);
    assert!(
        out.contains("verify none"),
        "the comment names verify none:\n{out}"
    );
    assert!(c.vrrp.is_none() && c.proxy.is_none());

    // The path is the one `http-check send ... uri` names, not a default.
    let mut other = source("kubeadm-guide/haproxy-2.4.cfg");
    other.text = other.text.replace("uri /healthz", "uri /livez");
    let out = import(&Sources {
        haproxy: Some(other),
        ..Default::default()
    })
    .unwrap();
    let c = parsed(&out);
    assert_eq!(c.tcplb.unwrap().listeners[0].health.path, "/livez", "{out}");
}

#[test]
fn a_cluster_ca_on_the_node_turns_verification_on() {
    let mut s = kubeadm_guide();
    s.cluster_ca = Some("/etc/kubernetes/pki/ca.crt".into());
    let out = import(&s).unwrap();
    let l = &parsed(&out).tcplb.unwrap().listeners[0];
    assert!(!l.health.tls.insecure_skip_verify);
    assert_eq!(
        l.health.tls.ca_file.as_deref(),
        Some(Path::new("/etc/kubernetes/pki/ca.crt"))
    );
    assert_eq!(l.health.tls.server_name.as_deref(), Some("kubernetes"));
}

#[test]
fn a_kubeconfig_on_the_node_turns_the_proxy_on() {
    let mut s = kubeadm_guide();
    s.existing = vec!["/var/lib/kube-proxy/kubeconfig.conf".into()];
    let out = import(&s).unwrap();
    let p = parsed(&out).proxy.unwrap();
    assert_eq!(p.mode, ProxyMode::Ipvs);
    assert_eq!(
        p.kubeconfig.as_deref(),
        Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert!(p.ipvs.strict_arp);
    assert_eq!(p.cluster_cidr, ["10.244.0.0/16".parse().unwrap()]);
}

#[test]
fn kubeasz_master_with_track_process_unicast_and_listen_section() {
    let s = Sources {
        keepalived: Some(source("kubeasz/keepalived-master.conf")),
        haproxy: Some(source("kubeasz/haproxy.cfg")),
        kube_proxy: Some(source("kubeasz/kube-proxy-config.yaml")),
        ..Default::default()
    };
    let out = imported(&s, "kubeasz/lbd-master.expected.yaml");
    let c = parsed(&out);
    let v = &c.vrrp.as_ref().unwrap().instances[0];
    assert_eq!((v.name.as_str(), v.vrid, v.priority), ("VI-01", 222, 120));
    assert_eq!(v.advert_interval, Duration::from_secs(3));
    assert_eq!(
        v.unicast_peers,
        [
            "10.31.90.2".parse::<std::net::IpAddr>().unwrap(),
            "10.31.90.3".parse().unwrap()
        ]
    );
    // vrrp_track_process l4lb (the balancer process): the listener.
    assert_eq!(
        v.track[0].target,
        TrackTarget::Listener("kube_master".into())
    );
    assert_eq!(v.track[0].weight, -60);
    let l = &c.tcplb.as_ref().unwrap().listeners[0];
    assert_eq!(l.name, "kube_master");
    assert_eq!(l.health.kind, HealthKind::Tcp);
    assert_eq!(
        (l.health.interval, l.health.rise, l.health.fall),
        (Duration::from_secs(5), 2, 2)
    );
    assert!(out.contains("#   hostname_override: cp1"), "{out}");
    assert!(out.contains("#   cluster_cidr: [172.20.0.0/16]"), "{out}");
}

#[test]
fn kubeasz_backup_killall_haproxy_script_needs_the_listener() {
    let ka = source("kubeasz/keepalived-backup-haproxy.conf");
    // Alone, there is no listener to track: said, not invented.
    let alone = import(&Sources {
        keepalived: Some(ka.clone()),
        ..Default::default()
    })
    .unwrap();
    let c = parsed(&alone);
    assert!(c.vrrp.as_ref().unwrap().instances[0].track.is_empty());
    assert!(alone.contains("vrrp_script check-haproxy (/usr/bin/killall -0 haproxy) is not mapped: no listener to track"), "{alone}");
    // With haproxy.cfg, `killall -0 haproxy` tracks its listener.
    let s = Sources {
        keepalived: Some(ka),
        haproxy: Some(source("kubeasz/haproxy.cfg")),
        ..Default::default()
    };
    let out = imported(&s, "kubeasz/lbd-backup.expected.yaml");
    let v = &parsed(&out).vrrp.unwrap().instances[0];
    assert_eq!(v.priority, 97);
    assert_eq!(
        v.track[0].target,
        TrackTarget::Listener("kube_master".into())
    );
    assert_eq!(v.track[0].weight, -60);
}

#[test]
fn keepalived_weights_and_words() {
    let conf = "vrrp_script chk {\n  script \"killall -0 haproxy\"\n  weight 20\n}\n\
                vrrp_script fault {\n  script \"pidof haproxy\"\n}\n\
                vrrp_instance v6 {\n  interface eth1\n  virtual_router_id 7\n  priority 100\n  nopreempt\n  advert_int 0.5\n  \
                virtual_ipaddress {\n    fd00::10/64 dev eth1\n  }\n  track_script {\n    chk\n    fault\n  }\n  \
                track_interface {\n    eth1 weight -30\n  }\n  garp_master_repeat 3\n  weird_keyword 1\n}\n";
    let hap = "listen api\n  bind :8443\n  mode tcp\n  server a 10.0.0.1:6443 check\n";
    let out = import(&Sources {
        keepalived: Some(Source {
            path: "k.conf".into(),
            text: conf.into(),
        }),
        haproxy: Some(Source {
            path: "h.cfg".into(),
            text: hap.into(),
        }),
        ..Default::default()
    })
    .unwrap();
    let v = &parsed(&out).vrrp.unwrap().instances[0];
    // IPv6 needs version 3; fractions of a second too.
    assert_eq!(v.version, VrrpVersion::V3);
    assert_eq!(v.advert_interval, Duration::from_millis(500));
    assert!(!v.preempt);
    assert_eq!(v.garp_burst, 3);
    // +20 while succeeding: lbd's base priority holds it, the track takes
    // it away while failing. Weight 0 (FAULT in keepalived): the lowest.
    assert_eq!(v.priority, 120);
    let weights: Vec<(TrackTarget, i32)> = v
        .track
        .iter()
        .map(|t| (t.target.clone(), t.weight))
        .collect();
    assert_eq!(
        weights,
        [
            (TrackTarget::Listener("api".into()), -20),
            (TrackTarget::Listener("api".into()), -253),
            (TrackTarget::Interface("eth1".into()), -30),
        ]
    );
    assert!(out.contains("weird_keyword is not mapped"), "{out}");
}

fn lbd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lbd"))
        .args(args)
        .output()
        .unwrap()
}

/// The command line: reads the files (the track script from beside
/// keepalived.conf), writes lbd.yaml on stdout, and that file passes
/// `lbd check`.
#[test]
fn cli_output_passes_lbd_check() {
    let f = fixtures();
    let arg = |rel: &str| f.join(rel).display().to_string();
    for args in [
        vec![
            "--keepalived".to_string(),
            arg("kubeadm-guide/keepalived.conf"),
            "--haproxy".into(),
            arg("kubeadm-guide/haproxy.cfg"),
            "--kube-proxy".into(),
            arg("kubeadm-guide/kube-proxy.yaml"),
        ],
        vec![
            "--keepalived".into(),
            arg("kubeasz/keepalived-master.conf"),
            "--haproxy".into(),
            arg("kubeasz/haproxy.cfg"),
            "--kube-proxy".into(),
            arg("kubeasz/kube-proxy-config.yaml"),
        ],
        vec!["--haproxy".into(), arg("kubeasz/haproxy.cfg")],
    ] {
        let mut full = vec!["import"];
        full.extend(args.iter().map(String::as_str));
        let out = lbd(&full);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lbd.yaml");
        std::fs::write(&cfg, &out.stdout).unwrap();
        let check = lbd(&["check", "-c", cfg.to_str().unwrap()]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "{}\n{}",
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if args[1].ends_with("kubeadm-guide/keepalived.conf") {
            // The script was found beside keepalived.conf and read.
            assert!(text.contains("- listener: apiserver"), "{text}");
        }
    }
}

#[test]
fn cli_exit_codes() {
    let out = lbd(&["import", "--haproxy", "/nonexistent/haproxy.cfg"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "lbd import: haproxy.cfg /nonexistent/haproxy.cfg: No such file or directory (os error 2)\n"
    );
    let out = lbd(&["import"]);
    assert_eq!(out.status.code(), Some(2));
    // A KubeProxyConfiguration lbd cannot read is an input error, at its
    // line and column.
    let dir = tempfile::tempdir().unwrap();
    let kp = dir.path().join("kp.yaml");
    std::fs::write(
        &kp,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/99\n",
    )
    .unwrap();
    let out = lbd(&["import", "--kube-proxy", kp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}:3:14: clusterCIDR: \"10.0.0.0/99\": invalid IP address syntax\n",
            kp.display()
        )
    );
}
