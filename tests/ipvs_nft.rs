//! The proxy's nftables table: the rendered JSON, then the real `nft` in a
//! network namespace (root only): the table is accepted, replaced
//! atomically, and its filter really drops what it should on loopback.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use lbd::proxy::kernel::nft::{
    render, render_element_changes, FakeFirewall, Firewall, NftFirewall, NftParams, SetTracker,
    TABLE,
};
use lbd::proxy::model::Protocol;
use lbd::proxy::model::{
    DesiredState, DesiredVs, DestKey, Scope, ServiceKey, VirtualServer, VsKind,
};
use serde_json::Value;

#[allow(clippy::too_many_arguments)]
fn add(
    d: &mut DesiredState,
    a: &str,
    port: u16,
    proto: Protocol,
    kind: VsKind,
    local: bool,
    ranges: &[&str],
    rs: &[(&str, u16)],
) {
    let addr: IpAddr = a.parse().unwrap();
    d.virtual_servers.insert(
        ServiceKey {
            addr,
            port,
            protocol: proto,
        },
        std::sync::Arc::new(DesiredVs {
            vs: VirtualServer::new(addr, port, proto, "rr"),
            kind,
            service: "default/x:".into(),
            local_only: local,
            source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            real_servers: rs
                .iter()
                .map(|(a, p)| {
                    (
                        DestKey {
                            addr: a.parse().unwrap(),
                            port: *p,
                        },
                        1,
                    )
                })
                .collect(),
        }),
    );
    if kind != VsKind::NodePort {
        d.bind_addresses.insert(addr);
    }
}

fn sample() -> DesiredState {
    let mut d = DesiredState::default();
    add(
        &mut d,
        "10.96.0.1",
        443,
        Protocol::Tcp,
        VsKind::ClusterIp,
        false,
        &[],
        &[("10.244.0.5", 6443)],
    );
    add(
        &mut d,
        "10.96.0.10",
        53,
        Protocol::Udp,
        VsKind::ClusterIp,
        false,
        &[],
        &[("10.244.0.6", 53)],
    );
    add(
        &mut d,
        "203.0.113.50",
        80,
        Protocol::Tcp,
        VsKind::LoadBalancer,
        false,
        &["198.51.100.0/24"],
        &[("10.244.0.7", 8080)],
    );
    add(
        &mut d,
        "192.168.1.10",
        30080,
        Protocol::Tcp,
        VsKind::NodePort,
        true,
        &[],
        &[("10.244.0.7", 8080)],
    );
    add(
        &mut d,
        "fd00:96::1",
        443,
        Protocol::Sctp,
        VsKind::ClusterIp,
        false,
        &[],
        &[("fd00:244::5", 6443)],
    );
    d
}

fn cidrs() -> Vec<ipnet::IpNet> {
    vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:244::/56".parse().unwrap(),
    ]
}

/// The `elem` list of one set in a rendered ruleset, as compact strings.
fn elems(v: &Value, name: &str) -> Vec<String> {
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["add"]["set"]["name"] == name)
        .unwrap_or_else(|| panic!("set {name} missing"))["add"]["set"]["elem"]
        .as_array()
        .map(|a| a.iter().map(|e| e.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn render_replaces_only_our_table_in_one_document() {
    let doc = render(
        &sample(),
        &NftParams {
            cluster_cidrs: &cidrs(),
            masquerade_all: false,
        },
    );
    let v = doc.to_value().expect("the streamed text is JSON");
    let cmds = v["nftables"].as_array().unwrap();
    // add (so that delete cannot fail), delete, add: one transaction.
    assert_eq!(
        cmds[0],
        serde_json::json!({"add": {"table": {"family": "inet", "name": TABLE}}})
    );
    assert_eq!(
        cmds[1],
        serde_json::json!({"delete": {"table": {"family": "inet", "name": TABLE}}})
    );
    assert_eq!(cmds[2], cmds[0]);
    for c in cmds {
        let obj = c.as_object().unwrap().values().next().unwrap();
        let inner = obj.as_object().unwrap().values().next().unwrap();
        if let Some(t) = inner.get("table") {
            assert_eq!(t, TABLE, "{c}");
        } else {
            assert_eq!(inner["name"], TABLE, "{c}");
        }
    }
    // The crate's schema types it (what NftFirewall sends).
    FakeFirewall::default().replace(&doc).unwrap();
}

#[test]
fn render_sets_follow_service_kinds_and_policies() {
    let v = render(
        &sample(),
        &NftParams {
            cluster_cidrs: &cidrs(),
            masquerade_all: false,
        },
    )
    .to_value()
    .unwrap();
    assert_eq!(
        elems(&v, "services4"),
        [
            r#"{"concat":["10.96.0.1","tcp",443]}"#,
            r#"{"concat":["10.96.0.10","udp",53]}"#,
            r#"{"concat":["192.168.1.10","tcp",30080]}"#,
            r#"{"concat":["203.0.113.50","tcp",80]}"#,
        ]
    );
    assert_eq!(elems(&v, "cluster_ips4").len(), 2);
    // The Local NodePort keeps client addresses: not in the masquerade set.
    assert_eq!(
        elems(&v, "external4"),
        [r#"{"concat":["203.0.113.50","tcp",80]}"#]
    );
    assert_eq!(
        elems(&v, "service_addrs4"),
        [r#""10.96.0.1""#, r#""10.96.0.10""#, r#""203.0.113.50""#]
    );
    assert_eq!(
        elems(&v, "lb_allowed4"),
        [r#"{"concat":["203.0.113.50","tcp",80,{"prefix":{"addr":"198.51.100.0","len":24}}]}"#]
    );
    assert_eq!(
        elems(&v, "cluster_cidr6"),
        [r#"{"prefix":{"addr":"fd00:244::","len":56}}"#]
    );
    assert_eq!(
        elems(&v, "hairpin6"),
        [r#"{"concat":["fd00:244::5","sctp",6443,"fd00:244::5"]}"#]
    );

    // masqueradeAll marks every service tuple and ignores the pod CIDR.
    let all = render(
        &sample(),
        &NftParams {
            cluster_cidrs: &cidrs(),
            masquerade_all: true,
        },
    );
    let text = all.to_value().unwrap().to_string();
    assert!(
        text.contains(r#""right":"@services4"}},{"mangle""#),
        "{text}"
    );
    assert!(!text.contains(r#""right":"@cluster_cidr4""#));
}

#[test]
fn render_is_deterministic() {
    let p = NftParams {
        cluster_cidrs: &cidrs(),
        masquerade_all: false,
    };
    assert_eq!(
        render(&sample(), &p).to_string(),
        render(&sample().clone(), &p).to_string()
    );
    // No Services: every set is written without an "elem" key (nft refuses
    // an empty list), and the text is still one valid document.
    let empty = render(&DesiredState::default(), &p);
    let v = empty.to_value().expect("JSON");
    let sets: Vec<_> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["add"].get("set"))
        .collect();
    assert_eq!(sets.len(), 16);
    for s in sets {
        let has_pods = s["name"].as_str().unwrap().starts_with("cluster_cidr");
        assert_eq!(s.get("elem").is_some(), has_pods, "{s}");
    }
    FakeFirewall::default().replace(&empty).unwrap();
}

// ---- real nft in a namespace -------------------------------------------

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs root for network namespaces");
            return None;
        }
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("skipping: nft not installed");
            return None;
        }
        let name = format!("lbdt-nft-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }
    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    }
    fn firewall(&self) -> NftFirewall {
        NftFirewall {
            command: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.0.clone(),
                "nft".into(),
            ],
        }
    }
    fn list(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }
    /// Runs the probe (this test binary, test `probe`) inside the namespace:
    /// listen on `listen`, connect to it from `src`. True if connected.
    fn connects(&self, listen: &str, src: &str) -> bool {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(exe)
            .args([
                "--exact",
                "probe",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LBD_NFT_PROBE", format!("{listen} {src}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("PROBE "), "probe did not run: {text}");
        text.contains("PROBE connected")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
#[ignore = "helper: run inside a namespace by the netns tests"]
fn probe() {
    let spec = std::env::var("LBD_NFT_PROBE").expect("LBD_NFT_PROBE");
    let mut it = spec.split(' ');
    let listen: SocketAddr = it.next().unwrap().parse().unwrap();
    let src: IpAddr = it.next().unwrap().parse().unwrap();
    let _l = TcpListener::bind(listen).unwrap();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    let r = sock.connect_timeout(&listen.into(), Duration::from_millis(300));
    let _ = TcpStream::from(sock);
    println!("PROBE {}", if r.is_ok() { "connected" } else { "failed" });
}

#[test]
fn nft_accepts_and_atomically_replaces_the_table() {
    let Some(ns) = Netns::new("replace") else {
        return;
    };
    let fw = ns.firewall();
    // Someone else's table must survive our replacements.
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "nft",
            "add table ip other; add chain ip other c",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let p = NftParams {
        cluster_cidrs: &cidrs(),
        masquerade_all: false,
    };
    fw.replace(&render(&sample(), &p)).unwrap();
    let text = ns.list();
    assert!(text.contains("table inet lbd-proxy"), "{text}");
    assert!(
        text.contains("203.0.113.50 . tcp . 80 . 198.51.100.0/24"),
        "{text}"
    );
    assert!(
        text.contains("meta mark & 0x00004000 == 0x00004000 masquerade"),
        "{text}"
    );

    // Second render without the load balancer: its elements are gone,
    // nothing is duplicated, the foreign table is still there.
    let mut smaller = sample();
    smaller.virtual_servers.retain(|k, _| k.port != 80);
    smaller
        .bind_addresses
        .remove(&"203.0.113.50".parse::<IpAddr>().unwrap());
    fw.replace(&render(&smaller, &p)).unwrap();
    let text = ns.list();
    assert!(!text.contains("203.0.113.50"), "{text}");
    assert_eq!(text.matches("table inet lbd-proxy").count(), 1);
    assert_eq!(text.matches("chain postrouting").count(), 1);
    assert!(text.contains("table ip other"), "{text}");

    // Down to no Services at all: empty sets, the rules stay.
    fw.replace(&render(&DesiredState::default(), &p)).unwrap();
    let text = ns.list();
    assert!(!text.contains("10.96.0.1"), "{text}");
    assert!(text.contains("set services4"), "{text}");
    assert_eq!(text.matches("chain postrouting").count(), 1);
}

/// Our sets' elements as the kernel lists them (`nft -j`), sorted.
fn kernel_sets(ns: &Netns) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "-j", "list", "table", "inet", TABLE,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut sets = std::collections::BTreeMap::new();
    for o in v["nftables"].as_array().unwrap() {
        if let Some(set) = o.get("set") {
            let mut e: Vec<String> = set["elem"]
                .as_array()
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            e.sort();
            sets.insert(set["name"].as_str().unwrap().to_string(), e);
        }
    }
    sets
}

/// A changed-only sync's element changes, applied by the real nft, leave
/// the sets exactly as a whole-table render of the new table: deletes of
/// concatenated elements in both families, a shared hairpin element kept
/// while one of its virtual servers still wants it, new elements added.
#[test]
fn element_changes_leave_the_table_a_render_would() {
    let (Some(a), Some(b)) = (Netns::new("elems-a"), Netns::new("elems-b")) else {
        return;
    };
    let p = NftParams {
        cluster_cidrs: &cidrs(),
        masquerade_all: false,
    };
    let before = sample();
    let mut after = sample();
    // The NodePort goes (its hairpin element is the load balancer's too),
    // the DNS ClusterIP and the IPv6 one go, two new ClusterIPs come.
    after.virtual_servers.retain(|k, _| {
        k.addr != "192.168.1.10".parse::<IpAddr>().unwrap()
            && k.addr != "10.96.0.10".parse::<IpAddr>().unwrap()
            && !k.addr.is_ipv6()
    });
    after
        .bind_addresses
        .retain(|a| *a != "10.96.0.10".parse::<IpAddr>().unwrap() && !a.is_ipv6());
    let svc = VsKind::ClusterIp;
    add(
        &mut after,
        "10.96.0.20",
        80,
        Protocol::Tcp,
        svc,
        false,
        &[],
        &[("10.244.0.8", 8080)],
    );
    add(
        &mut after,
        "fd00:96::2",
        80,
        Protocol::Tcp,
        svc,
        false,
        &[],
        &[("fd00:244::6", 80)],
    );
    let scope = Scope {
        virtual_servers: before
            .virtual_servers
            .keys()
            .chain(after.virtual_servers.keys())
            .copied()
            .collect(),
        addresses: before
            .bind_addresses
            .iter()
            .chain(&after.bind_addresses)
            .copied()
            .collect(),
    };
    let mut tracker = SetTracker::of(&before);
    let ch = tracker
        .update(&after, &scope)
        .expect("no interval-set change");
    let doc = render_element_changes(&ch);
    let text = doc.to_string();
    assert!(
        text.contains(r#""delete":{"element""#) && text.contains("hairpin6"),
        "{text}"
    );
    assert!(text.contains(r#""add":{"element""#), "{text}");
    // Shared with the load balancer: kept.
    assert!(!text.contains("10.244.0.7"), "{text}");

    a.firewall().replace(&render(&before, &p)).unwrap();
    a.firewall().replace(&doc).unwrap();
    b.firewall().replace(&render(&after, &p)).unwrap();
    let (got, want) = (kernel_sets(&a), kernel_sets(&b));
    assert_eq!(got, want);
    assert!(
        want["hairpin4"].iter().any(|e| e.contains("10.244.0.7")),
        "{want:?}"
    );
    assert!(
        want["services6"].iter().any(|e| e.contains("fd00:96::2")),
        "{want:?}"
    );

    // A delete of an element the kernel does not hold fails the whole
    // document, as the sync's fallback to a full render expects.
    assert!(a.firewall().replace(&doc).is_err());
    assert_eq!(kernel_sets(&a), want);
}

#[test]
fn service_addresses_expose_only_service_ports_and_source_ranges_hold() {
    let Some(ns) = Netns::new("filter") else {
        return;
    };
    for a in [
        "10.96.0.1/32",
        "203.0.113.50/32",
        "198.51.100.7/32",
        "192.0.2.9/32",
    ] {
        ns.ip(&["addr", "add", a, "dev", "lo"]);
    }
    // Before our table: everything connects (loopback, no IPVS here).
    assert!(ns.connects("10.96.0.1:22", "10.96.0.1"));
    let p = NftParams {
        cluster_cidrs: &cidrs(),
        masquerade_all: false,
    };
    // Local policy: with Cluster the client address would be masqueraded
    // on loopback (it is locally generated here) before input sees it.
    let mut d = sample();
    for vs in d.virtual_servers.values_mut().map(std::sync::Arc::make_mut) {
        if vs.kind == VsKind::LoadBalancer {
            vs.local_only = true;
        }
    }
    ns.firewall().replace(&render(&d, &p)).unwrap();
    // The service port still answers; the host's other port does not.
    assert!(ns.connects("10.96.0.1:443", "10.96.0.1"));
    assert!(!ns.connects("10.96.0.1:22", "10.96.0.1"));
    // loadBalancerSourceRanges: allowed source in, other source dropped.
    assert!(ns.connects("203.0.113.50:80", "198.51.100.7"));
    assert!(!ns.connects("203.0.113.50:80", "192.0.2.9"));
}

/// `lbd check` / `lbd doctor` ask this before the proxy's first sync finds
/// out: a missing nft is NotRunnable naming the program, a broken one
/// Failed with its status; a working one gives its version line.
#[test]
fn availability_reports_a_missing_or_broken_nft() {
    use lbd::proxy::kernel::nft::{availability, availability_of, NftUnavailable};
    let missing = NftFirewall {
        command: vec!["/nonexistent/nft".into()],
    };
    match availability_of(&missing) {
        Err(e @ NftUnavailable::NotRunnable { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("/nonexistent/nft: cannot run it"), "{msg}");
            assert!(msg.contains("nftables"), "{msg}");
        }
        other => panic!("want NotRunnable, got {other:?}"),
    }
    let broken = NftFirewall {
        command: vec!["false".into()],
    };
    assert!(matches!(
        availability_of(&broken),
        Err(NftUnavailable::Failed { ref program, .. }) if program == "false"
    ));
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("skip: no nft binary on this machine; availability() not checked against it");
        return;
    }
    let v = availability().expect("nft is installed");
    assert!(v.starts_with("nftables v"), "{v}");
}

/// kube-proxy ipvs with no clusterCIDR (its default, no local detector):
/// traffic from a ClusterIP to a service port is marked for masquerade
/// (`KUBE-CLUSTER-IP src,dst`); with a cluster CIDR, traffic to a ClusterIP
/// from outside it instead. The real nft takes both renderings.
#[test]
fn masquerade_without_cluster_cidr_marks_traffic_from_cluster_ips() {
    let marks = |cidrs: &[ipnet::IpNet]| -> Vec<(String, String)> {
        let v = render(
            &sample(),
            &NftParams {
                cluster_cidrs: cidrs,
                masquerade_all: false,
            },
        )
        .to_value()
        .unwrap();
        let mut out = Vec::new();
        for o in v["nftables"].as_array().unwrap() {
            let Some(r) = o.get("add").and_then(|a| a.get("rule")) else {
                continue;
            };
            let chain = r["chain"].as_str().unwrap_or("").to_string();
            let exprs = r["expr"].as_array().unwrap();
            let sets_mark = exprs.iter().any(|e| e.get("mangle").is_some());
            for e in exprs {
                let m = &e["match"];
                if sets_mark && m["right"] == "@cluster_ips4" {
                    let first = &m["left"]["concat"][0]["payload"]["field"];
                    out.push((chain.clone(), first.as_str().unwrap_or("").to_string()));
                }
            }
        }
        out.sort();
        out
    };
    let chains = |field: &str| {
        vec![
            ("output".to_string(), field.to_string()),
            ("prerouting".to_string(), field.to_string()),
        ]
    };
    assert_eq!(marks(&[]), chains("saddr"));
    assert_eq!(marks(&cidrs()), chains("daddr"));

    let Some(ns) = Netns::new("nocidr") else {
        return;
    };
    let p = NftParams {
        cluster_cidrs: &[],
        masquerade_all: false,
    };
    ns.firewall().replace(&render(&sample(), &p)).unwrap();
    let text = ns.list();
    assert!(
        text.contains("ip saddr . meta l4proto . th dport @cluster_ips4"),
        "{text}"
    );
}

/// nft reads the document through /proc/self/fd/0, never `/dev/stdin`: a
/// distroless image or a chroot has no /dev/stdin, and `nft -f -` (what the
/// nftables crate's helpers run) fails there with "Could not open file
/// /dev/stdin". Here nft runs in a mount namespace whose /dev is an empty
/// tmpfs.
#[test]
fn nft_needs_no_dev_stdin() {
    let Some(ns) = Netns::new("nodev") else {
        return;
    };
    let script = "mount -t tmpfs none /dev && test ! -e /dev/stdin && exec nft \"$@\"";
    let fw = NftFirewall {
        command: [
            "ip", "netns", "exec", &ns.0, "unshare", "--mount", "sh", "-c", script, "nft",
        ]
        .map(String::from)
        .to_vec(),
    };
    let p = NftParams {
        cluster_cidrs: &cidrs(),
        masquerade_all: false,
    };
    fw.replace(&render(&sample(), &p))
        .expect("nft applies the table without /dev/stdin");
    let text = ns.list();
    assert!(text.contains("table inet lbd-proxy"), "{text}");
    assert!(text.contains("10.96.0.1"), "{text}");
    // The same wrapper with `-f -`, as the crate runs it, is refused: the
    // namespace really has no /dev/stdin.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "unshare", "--mount", "sh", "-c", script, "nft", "-j", "-f",
            "-",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/dev/stdin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
