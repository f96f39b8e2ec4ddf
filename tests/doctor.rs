//! `lbd doctor`: every check against made-up nodes (the facts passed in),
//! the ARP probe against a real neighbour in network namespaces, and the
//! command's output and exit codes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use lbd::config::{Config, Environment};
use lbd::doctor::{diagnose, Facts, Finding, Listening, Process, Severity, VipAnswer, VipProbe};
use support::netns::{require_root, Lab};

fn config(text: &str) -> Config {
    let env = Environment {
        hostname: "cp1".into(),
        existing_files: None,
    };
    lbd::config::parse(text, "lbd.yaml", &env).unwrap_or_else(|e| panic!("{e}"))
}

const CONTROL_PLANE: &str = "vrrp:\n  instances:\n    - name: apiserver\n      interface: eth0\n      vrid: 51\n      \
    virtual_ips: [10.31.90.0/24]\n\
    tcplb:\n  listeners:\n    - name: apiserver\n      bind: 0.0.0.0:8443\n      backends: [10.31.90.1:6443]\n      \
    health: {type: https, tls: {ca_file: /etc/kubernetes/pki/ca.crt}}\n\
    proxy:\n  mode: ipvs\n  kubeconfig: /etc/lbd/proxy.kubeconfig\n";

/// A node where everything is as lbd wants it.
fn healthy_node() -> Facts {
    let sysctls: BTreeMap<String, String> =
        lbd::proxy::kernel::sysctl::proxy_sysctls("6.1.0", false)
            .into_iter()
            .map(|s| (s.name.to_string(), s.value.to_string()))
            .collect();
    Facts {
        kernel_release: "6.1.0".into(),
        modules: ["ip_vs", "ip_vs_rr", "nf_conntrack", "dummy"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        sysctls,
        processes: vec![
            Process {
                pid: 1,
                name: "systemd".into(),
            },
            Process {
                pid: 900,
                name: "kubelet".into(),
            },
        ],
        listening: vec![Listening {
            addr: "0.0.0.0:22".parse().unwrap(),
            udp: false,
            owner: Some(Process {
                pid: 500,
                name: "sshd".into(),
            }),
        }],
        interfaces: ["lo", "eth0"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        local_addresses: vec![("eth0".into(), "10.31.90.1".parse().unwrap())],
        vip_probes: vec![VipProbe {
            instance: "apiserver".into(),
            interface: "eth0".into(),
            vip: "10.31.90.0".parse().unwrap(),
            answer: VipAnswer::Silent,
        }],
        files: BTreeMap::from([(PathBuf::from("/etc/kubernetes/pki/ca.crt"), true)]),
        nft_binary: false,
        status: None,
    }
}

fn problems(f: &[Finding]) -> Vec<&str> {
    f.iter()
        .filter(|f| f.severity == Severity::Problem)
        .map(|f| f.what.as_str())
        .collect()
}

#[test]
fn a_ready_node_has_nothing() {
    let c = config(CONTROL_PLANE);
    assert_eq!(diagnose(Some(&c), &[], &healthy_node()), []);
    assert_eq!(lbd::doctor::render(&[]), "lbd doctor: nothing found\n");
}

#[test]
fn modules_and_sysctls_for_ipvs() {
    let c = config(CONTROL_PLANE);
    let mut n = healthy_node();
    n.modules.remove("ip_vs_rr");
    n.modules.remove("dummy");
    n.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
    let f = diagnose(Some(&c), &[], &n);
    assert_eq!(
        problems(&f),
        [
            "kernel modules not loaded: ip_vs_rr, dummy (the proxy in IPVS mode needs them; lbd loads none)",
            "sysctls: net.ipv4.ip_forward = 0 (wants 1)",
        ]
    );
    assert_eq!(
        f[0].fix,
        "modprobe -a ip_vs_rr dummy and list them in /etc/modules-load.d/lbd.conf"
    );
    assert!(
        f[1].fix.contains("/etc/sysctl.d/90-lbd.conf"),
        "{}",
        f[1].fix
    );
    // The scheduler decides the module; no proxy, no module check.
    let wlc = config(&CONTROL_PLANE.replace("mode: ipvs", "mode: ipvs\n  ipvs: {scheduler: wlc}"));
    assert!(problems(&diagnose(Some(&wlc), &[], &n))[0].contains("ip_vs_wlc"));
    let no_proxy = config(CONTROL_PLANE.split("proxy:").next().unwrap());
    assert_eq!(
        problems(&diagnose(Some(&no_proxy), &[], &n)),
        Vec::<&str>::new()
    );
}

#[test]
fn rivals_ports_and_files() {
    let c = config(CONTROL_PLANE);
    let mut n = healthy_node();
    n.processes.push(Process {
        pid: 41,
        name: "keepalived".into(),
    });
    n.processes.push(Process {
        pid: 42,
        name: "haproxy".into(),
    });
    n.listening.push(Listening {
        addr: "[::]:8443".parse().unwrap(),
        udp: false,
        owner: Some(Process {
            pid: 42,
            name: "haproxy".into(),
        }),
    });
    // lbd itself on its ports is no finding (after install).
    n.listening.push(Listening {
        addr: "0.0.0.0:10256".parse().unwrap(),
        udp: false,
        owner: Some(Process {
            pid: 7,
            name: "lbd".into(),
        }),
    });
    n.listening.push(Listening {
        addr: "127.0.0.1:9440".parse().unwrap(),
        udp: false,
        owner: None,
    });
    n.files
        .insert(PathBuf::from("/etc/kubernetes/pki/ca.crt"), false);
    let f = diagnose(Some(&c), &[], &n);
    assert_eq!(
        problems(&f),
        [
            "keepalived runs (pid 41): it holds VIPs with VRRP, as lbd does",
            "haproxy runs (pid 42): it balances the apiservers, as lbd does",
            "listener apiserver 0.0.0.0:8443: [::]:8443 is taken by haproxy (pid 42)",
            "admin.listen 127.0.0.1:9440: 127.0.0.1:9440 is taken by another process",
        ]
    );
    assert!(
        f[0].fix.starts_with("systemctl disable --now keepalived"),
        "{}",
        f[0].fix
    );
    // Before kubeadm init there is no CA: a note, not a problem.
    let notes: Vec<&Finding> = f.iter().filter(|f| f.severity == Severity::Note).collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        notes[0].what,
        "/etc/kubernetes/pki/ca.crt does not exist yet"
    );
    // kube-proxy where lbd's proxy is off: a note.
    let mut n = healthy_node();
    n.processes.push(Process {
        pid: 43,
        name: "kube-proxy".into(),
    });
    let no_proxy = config(CONTROL_PLANE.split("proxy:").next().unwrap());
    let f = diagnose(Some(&no_proxy), &[], &n);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Note);
    assert!(f[0].fix.contains("kube-proxy"), "{}", f[0].fix);
    assert_eq!(problems(&diagnose(Some(&c), &[], &n)).len(), 1);
}

#[test]
fn the_vip_on_the_lan_or_on_this_host() {
    let c = config(CONTROL_PLANE);
    let mut n = healthy_node();
    n.vip_probes[0].answer = VipAnswer::AnsweredBy("52:54:00:12:34:56".into());
    let f = diagnose(Some(&c), &[], &n);
    assert_eq!(problems(&f).len(), 1);
    assert!(
        f[0].what
            .starts_with("VIP 10.31.90.0 already answers on eth0 from 52:54:00:12:34:56"),
        "{}",
        f[0].what
    );
    // Configured here, and no lbd holds it: a static address or a leftover.
    let mut n = healthy_node();
    n.local_addresses
        .push(("eth0".into(), "10.31.90.0".parse::<IpAddr>().unwrap()));
    n.vip_probes.clear();
    let f = diagnose(Some(&c), &[], &n);
    assert_eq!(
        problems(&f),
        ["VIP 10.31.90.0 is configured on eth0 of this host, but no lbd here holds it as master"]
    );
    assert!(
        f[0].fix
            .starts_with("remove it (ip addr del 10.31.90.0/24 dev eth0)"),
        "{}",
        f[0].fix
    );
    // No such interface.
    let mut n = healthy_node();
    n.interfaces.remove("eth0");
    assert_eq!(
        problems(&diagnose(Some(&c), &[], &n)),
        ["VRRP instance apiserver: no interface eth0"]
    );
    // IPv6 is not probed: said, not hidden.
    let mut n = healthy_node();
    n.vip_probes[0].answer = VipAnswer::NotProbed("IPv6: no neighbour-solicitation probe".into());
    let f = diagnose(Some(&c), &[], &n);
    assert_eq!((f.len(), f[0].severity), (1, Severity::Note));
}

#[test]
fn config_problems_are_findings() {
    let f = diagnose(
        None,
        &["lbd.yaml:3:7: unknown key \"advert_int\"".to_string()],
        &healthy_node(),
    );
    assert_eq!(
        problems(&f),
        ["config: lbd.yaml:3:7: unknown key \"advert_int\""]
    );
}

/// After install doctor asks the running lbd too (`Facts.status`): each
/// reason `lbd status` would exit 3 for is a finding; a healthy answer
/// adds none.
#[test]
fn the_running_lbds_degraded_reasons_are_findings() {
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/status/report.json");
    let report: lbd::status::StatusReport =
        serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    let c = config(CONTROL_PLANE);
    let mut n = healthy_node();
    n.status = Some(report.clone());
    let f = diagnose(Some(&c), &[], &n);
    assert_eq!(
        problems(&f),
        [
            "the running lbd: VRRP instance v6 is in FAULT (vip_foreign: fd00:db8::100/64 \
             configured on eth1 by someone else (lbd never touches it))",
            "the running lbd: listener apiserver: 1 of 2 backends down ([fd00:db8::2]:6443)",
        ]
    );
    assert!(
        f[0].fix.starts_with("lbd status shows the detail"),
        "{}",
        f[0].fix
    );

    let mut healthy = report;
    healthy.vrrp[1].state = lbd::vrrp::fsm::State::Backup;
    healthy.tcplb[0].backends[1].healthy = true;
    n.status = Some(healthy);
    assert_eq!(diagnose(Some(&c), &[], &n), []);
}

fn lbd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
        .args(args)
        .output()
        .unwrap()
}

/// `lbd doctor -c cfg` in namespace `ns`: exit code and output.
fn doctor_in(lab: &Lab, ns: &str, cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = lab.exec(
        ns,
        &[
            env!("CARGO_BIN_EXE_lbd"),
            "doctor",
            "-c",
            cfg.to_str().unwrap(),
        ],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The ARP probe, as arping -D: on the instance's interface only, for the
/// VIP only. A neighbour that holds the VIP answers with its MAC; once it
/// lets go, nobody does.
#[test]
fn arp_probe_finds_the_neighbour_holding_the_vip() {
    if !require_root("arp_probe_finds_the_neighbour_holding_the_vip") {
        return;
    }
    let mut lab = Lab::new("doctor");
    let a = lab.add_ns("a");
    let b = lab.add_ns("b");
    lab.attach(&a, "eth0", &["10.77.0.1/24"]);
    lab.attach(&b, "eth0", &["10.77.0.2/24", "10.77.0.100/24"]);
    let b_mac = lab
        .sh(&b, &["cat", "/sys/class/net/eth0/address"])
        .trim()
        .to_string();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "vrrp:\n  instances:\n    - name: v\n      interface: eth0\n      vrid: 51\n      virtual_ips: [10.77.0.100/24]\nadmin:\n  socket: {}\n  listen: \"\"\n",
            dir.path().join("lbd.sock").display()
        ),
    )
    .unwrap();
    let run = || doctor_in(&lab, &a, &cfg);
    let (code, out) = run();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "VIP 10.77.0.100 already answers on eth0 from {b_mac}"
        )),
        "{out}"
    );
    lab.sh(&b, &["ip", "addr", "del", "10.77.0.100/24", "dev", "eth0"]);
    let (_, out) = run();
    assert!(!out.contains("VIP 10.77.0.100"), "{out}");
    // The probe asked for the VIP only: B's own address draws no finding.
    assert!(!out.contains("10.77.0.2"), "{out}");
}

#[test]
fn cli_usage_and_a_missing_config() {
    let out = lbd(&["doctor", "-c", "/nonexistent/lbd.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PROBLEM  config: /nonexistent/lbd.yaml: cannot read"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().starts_with("lbd doctor: "),
        "{text}"
    );
}

/// What `lbd doctor` gathers itself, not made-up facts: a real haproxy
/// holding the balancer's port in a network namespace is found by /proc
/// (its process, and the socket traced to it), the CA that kubeadm has not
/// written yet is a note, and once haproxy is gone so are its findings.
#[test]
fn a_real_haproxy_on_the_balancers_port_is_found() {
    if !require_root("a_real_haproxy_on_the_balancers_port_is_found") {
        return;
    }
    let Some(haproxy) = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipping: haproxy not installed (scripts/install-deps.sh installs it)");
        return;
    };
    let mut lab = Lab::new("doctorp");
    let a = lab.add_ns("a");
    lab.attach(&a, "eth0", &["10.77.1.1/24"]);
    let dir = tempfile::tempdir().unwrap();
    let hcfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        "global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  \
         timeout server 5s\nfrontend apiserver\n  bind 0.0.0.0:8443\n  default_backend b\n\
         backend b\n  server s1 10.77.1.1:6443\n",
    )
    .unwrap();
    let h = lab.spawn(&a, haproxy, &["-db", "-f", hcfg.to_str().unwrap()], None);
    let hpid = lab.child(h).id();
    let ca = dir.path().join("pki/ca.crt");
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tcplb:\n  listeners:\n    - name: apiserver\n      bind: 0.0.0.0:8443\n      \
             backends: [10.77.1.1:6443]\n      health: {{type: https, tls: {{ca_file: {}}}}}\n\
             admin:\n  socket: {}\n  listen: \"\"\n",
            ca.display(),
            dir.path().join("lbd.sock").display()
        ),
    )
    .unwrap();
    let run = |lab: &Lab| doctor_in(lab, &a, &cfg);
    // haproxy binds its port a moment after it starts.
    let port_line = format!("0.0.0.0:8443 is taken by haproxy (pid {hpid})");
    let mut seen = (None, String::new());
    for _ in 0..50 {
        seen = run(&lab);
        if seen.1.contains(&port_line) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, out) = seen;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("listener apiserver 0.0.0.0:8443: {port_line}")),
        "{out}"
    );
    assert!(out.contains(&format!("haproxy runs (pid {hpid})")), "{out}");
    assert!(
        out.contains(&format!("{} does not exist yet", ca.display())),
        "{out}"
    );

    lab.signal(h, "TERM");
    assert!(lab
        .wait_exit(h, std::time::Duration::from_secs(5))
        .is_some());
    let (_, out) = run(&lab);
    assert!(!out.contains(&format!("pid {hpid}")), "{out}");
    assert!(!out.contains("8443 is taken"), "{out}");
    // The file appears: no note about it any more.
    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    std::fs::write(&ca, "not checked by doctor's presence test\n").unwrap();
    let (_, out) = run(&lab);
    assert!(!out.contains("does not exist yet"), "{out}");
}
