//! The conntrack cleanup's kernel side against the real kernel: flows put
//! in a fresh namespace's table with the `conntrack` tool (conntrack-tools,
//! the judge), read and deleted by lbd over ctnetlink, the table read back
//! with `conntrack -L`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use lbd::proxy::kernel::{Conntrack, Flow, NetlinkConntrack};
use lbd::proxy::model::{FlowPort, ObjectKey, Protocol};
use lbd::proxy::stale_flows::stale_flows;
use support::netns::{in_ns, require_root, Lab};

fn have_conntrack_tool(test: &str) -> bool {
    let ok = std::process::Command::new("conntrack")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping {test}: the conntrack tool is missing (apt-get install conntrack; scripts/install-deps.sh)");
    }
    ok
}

/// (protocol, source, destination, source port, port, reply from, zone)
type FlowSpec = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    u16,
    &'static str,
    Option<u16>,
);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[allow(clippy::too_many_arguments)]
/// `conntrack -I` of one flow, with its reply from `reply` (what IPVS's
/// NAT makes of a flow to a Service).
fn insert(
    lab: &Lab,
    ns: &str,
    proto: &str,
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    reply: &str,
    zone: Option<u16>,
) {
    let (sp, dp) = (sport.to_string(), dport.to_string());
    let mut args = vec![
        "conntrack",
        "-I",
        "-p",
        proto,
        "-s",
        src,
        "-d",
        dst,
        "--sport",
        &sp,
        "--dport",
        &dp,
        "-r",
        reply,
        "-q",
        src,
        "--reply-port-src",
        &dp,
        "--reply-port-dst",
        &sp,
        "-t",
        "300",
    ];
    let z;
    if let Some(zone) = zone {
        z = zone.to_string();
        args.extend(["-w", &z]);
    }
    if proto == "tcp" {
        args.extend(["--state", "ESTABLISHED"]);
    }
    if proto == "sctp" {
        args.extend([
            "--state",
            "ESTABLISHED",
            "--orig-vtag",
            "1",
            "--reply-vtag",
            "2",
        ]);
    }
    let out = lab.exec(ns, &args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `conntrack -L` of both families, one line per flow.
fn listed(lab: &Lab, ns: &str) -> String {
    let mut all = String::new();
    for fam in ["ipv4", "ipv6"] {
        let out = lab.exec(ns, &["conntrack", "-L", "-f", fam]);
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

#[test]
fn stale_udp_and_sctp_flows_are_deleted_from_the_kernel_table() {
    let test = "stale_udp_and_sctp_flows_are_deleted_from_the_kernel_table";
    if !require_root(test) || !have_conntrack_tool(test) {
        return;
    }
    let mut lab = Lab::new("ct");
    let ns = lab.add_ns("node");
    // The DNS Service 10.96.0.10:53 (UDP) and fd00:96::10, NodePort 30053;
    // 10.244.1.1 serves, 10.244.1.2 was removed. An SCTP Service on the
    // same address, port 3868, its endpoint 10.244.1.2 gone too.
    let flows: [FlowSpec; 10] = [
        (
            "udp",
            "10.0.0.1",
            "10.96.0.10",
            1001,
            53,
            "10.244.1.1",
            None,
        ),
        (
            "udp",
            "10.0.0.1",
            "10.96.0.10",
            1002,
            53,
            "10.244.1.2",
            None,
        ),
        (
            "udp",
            "10.0.0.2",
            "10.96.0.10",
            1003,
            53,
            "10.244.1.2",
            Some(5),
        ),
        (
            "udp",
            "10.0.0.1",
            "192.168.1.10",
            1004,
            30053,
            "10.244.1.2",
            None,
        ),
        (
            "tcp",
            "10.0.0.1",
            "10.96.0.10",
            1005,
            53,
            "10.244.1.2",
            None,
        ),
        (
            "udp",
            "10.0.0.1",
            "10.96.0.99",
            1006,
            53,
            "10.244.1.2",
            None,
        ),
        (
            "udp",
            "fd00::1",
            "fd00:96::10",
            1007,
            53,
            "fd00:244::2",
            None,
        ),
        (
            "udp",
            "fd00::1",
            "fd00:96::10",
            1008,
            53,
            "fd00:244::1",
            None,
        ),
        (
            "sctp",
            "10.0.0.1",
            "10.96.0.10",
            1009,
            3868,
            "10.244.1.2",
            None,
        ),
        (
            "sctp",
            "10.0.0.1",
            "10.96.0.10",
            1010,
            3868,
            "10.244.1.1",
            None,
        ),
    ];
    for (proto, src, dst, sport, dport, reply, zone) in flows {
        insert(&lab, &ns, proto, src, dst, sport, dport, reply, zone);
    }
    let before = listed(&lab, &ns);
    assert_eq!(before.lines().count(), 10, "{before}");

    let ports: BTreeMap<ObjectKey, Arc<Vec<FlowPort>>> = [(
        ObjectKey::new("kube-system", "dns"),
        Arc::new(vec![
            FlowPort {
                protocol: Protocol::Udp,
                port: 53,
                addresses: vec![ip("10.96.0.10"), ip("fd00:96::10")],
                node_port: Some(30053),
                serving: BTreeSet::from([ip("10.244.1.1"), ip("fd00:244::1")]),
            },
            FlowPort {
                protocol: Protocol::Sctp,
                port: 3868,
                addresses: vec![ip("10.96.0.10")],
                node_port: None,
                serving: BTreeSet::from([ip("10.244.1.1")]),
            },
        ]),
    )]
    .into();
    let (listed_flows, stale, results, again) = in_ns(&ns, move || {
        let ct = NetlinkConntrack::new().expect("ctnetlink socket");
        let flows = ct.list().expect("list");
        let stale = stale_flows(&flows, &ports);
        let results: Vec<String> = ct
            .delete(&stale)
            .into_iter()
            .map(|r| r.map_or_else(|e| e.to_string(), |()| "ok".into()))
            .collect();
        // Deleting what is gone already is done, not an error.
        let again: Vec<bool> = ct.delete(&stale).iter().map(|r| r.is_ok()).collect();
        (flows, stale, results, again)
    });

    // The listing: UDP and SCTP only (TCP is not the cleanup's), fields
    // as put.
    assert_eq!(listed_flows.len(), 9, "{listed_flows:#?}");
    let zoned = Flow {
        protocol: Protocol::Udp,
        orig_src: ip("10.0.0.2"),
        orig_dst: ip("10.96.0.10"),
        orig_src_port: 1003,
        orig_dst_port: 53,
        reply_src: ip("10.244.1.2"),
        zone: 5,
    };
    assert!(listed_flows.contains(&zoned), "{listed_flows:#?}");
    let stale_ports: BTreeSet<u16> = stale.iter().map(|f| f.orig_src_port).collect();
    assert_eq!(stale_ports, BTreeSet::from([1002, 1003, 1004, 1007, 1009]));
    assert!(results.iter().all(|r| r == "ok"), "{results:?}");
    assert!(again.iter().all(|ok| *ok), "{again:?}");

    // The judge: conntrack -L holds exactly the others.
    let after = listed(&lab, &ns);
    for sport in [1001, 1005, 1006, 1008, 1010] {
        assert!(
            after.contains(&format!("sport={sport} ")),
            "flow {sport} kept:\n{after}"
        );
    }
    for sport in [1002, 1003, 1004, 1007, 1009] {
        assert!(
            !after.contains(&format!("sport={sport} ")),
            "flow {sport} deleted:\n{after}"
        );
    }
    assert_eq!(after.lines().count(), 5, "{after}");
}
