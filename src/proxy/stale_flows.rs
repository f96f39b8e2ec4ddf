//! Which tracked UDP and SCTP flows are stale, as kube-proxy's
//! `conntrack.CleanStaleEntries` decides (pure: flows in, flows to delete
//! out).
//!
//! A flow whose original destination is a Service address and port
//! (ClusterIP, external IP, LoadBalancer IP), or whose destination port is
//! one of the Service's NodePorts, is stale when its reply comes from an
//! address that is not a serving endpoint of that port: the endpoint was
//! removed, or the flow was tracked before the Service had endpoints (its
//! reply source is then the Service address itself, and every later packet
//! would follow that entry instead of reaching IPVS). kube-proxy does UDP
//! only; lbd does SCTP too, whose associations are tracked the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::kernel::Flow;
use super::model::{FlowPort, ObjectKey, Protocol};

/// The flows of `flows` to delete, given every Service's UDP/SCTP ports.
pub fn stale_flows(flows: &[Flow], ports: &BTreeMap<ObjectKey, Arc<Vec<FlowPort>>>) -> Vec<Flow> {
    let mut by_address: HashMap<(Protocol, IpAddr, u16), &BTreeSet<IpAddr>> = HashMap::new();
    let mut by_node_port: HashMap<(Protocol, u16), &BTreeSet<IpAddr>> = HashMap::new();
    for p in ports.values().flat_map(|v| v.iter()) {
        for a in &p.addresses {
            by_address.insert((p.protocol, *a, p.port), &p.serving);
        }
        if let Some(np) = p.node_port {
            by_node_port.insert((p.protocol, np), &p.serving);
        }
    }
    flows
        .iter()
        .filter(|f| {
            let to_address = by_address
                .get(&(f.protocol, f.orig_dst, f.orig_dst_port))
                .is_some_and(|serving| !serving.contains(&f.reply_src));
            let to_node_port = by_node_port
                .get(&(f.protocol, f.orig_dst_port))
                .is_some_and(|serving| !serving.contains(&f.reply_src));
            to_address || to_node_port
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn flow(proto: Protocol, dst: &str, dport: u16, reply: &str) -> Flow {
        Flow {
            protocol: proto,
            orig_src: ip("10.0.0.1"),
            orig_dst: ip(dst),
            orig_src_port: 40000,
            orig_dst_port: dport,
            reply_src: ip(reply),
            zone: 0,
        }
    }

    fn ports(list: Vec<FlowPort>) -> BTreeMap<ObjectKey, Arc<Vec<FlowPort>>> {
        [(ObjectKey::new("default", "dns"), Arc::new(list))].into()
    }

    fn dns(serving: &[&str]) -> FlowPort {
        FlowPort {
            protocol: Protocol::Udp,
            port: 53,
            addresses: vec![ip("10.96.0.10"), ip("203.0.113.10")],
            node_port: Some(30053),
            serving: serving.iter().map(|s| ip(s)).collect(),
        }
    }

    /// kube-proxy's conntrack cleanup cases: a flow to a removed endpoint
    /// (by ClusterIP, external IP or NodePort) is deleted, one to a serving
    /// endpoint kept, one tracked before the Service had endpoints (reply
    /// from the ClusterIP itself) deleted; other ports, other protocols
    /// and addresses that are no Service's are left alone.
    #[test]
    fn test_clean_stale_entries() {
        let table = ports(vec![dns(&["10.244.1.1", "10.244.2.2"])]);
        let cases = [
            (
                "serving endpoint",
                flow(Protocol::Udp, "10.96.0.10", 53, "10.244.1.1"),
                false,
            ),
            (
                "removed endpoint",
                flow(Protocol::Udp, "10.96.0.10", 53, "10.244.9.9"),
                true,
            ),
            (
                "external IP, removed",
                flow(Protocol::Udp, "203.0.113.10", 53, "10.244.9.9"),
                true,
            ),
            (
                "no NAT yet",
                flow(Protocol::Udp, "10.96.0.10", 53, "10.96.0.10"),
                true,
            ),
            (
                "NodePort, removed",
                flow(Protocol::Udp, "192.168.1.10", 30053, "10.244.9.9"),
                true,
            ),
            (
                "NodePort, serving",
                flow(Protocol::Udp, "192.168.1.10", 30053, "10.244.2.2"),
                false,
            ),
            (
                "other port",
                flow(Protocol::Udp, "10.96.0.10", 54, "10.244.9.9"),
                false,
            ),
            (
                "other protocol",
                flow(Protocol::Sctp, "10.96.0.10", 53, "10.244.9.9"),
                false,
            ),
            (
                "not a service",
                flow(Protocol::Udp, "10.96.0.99", 53, "10.244.9.9"),
                false,
            ),
        ];
        let flows: Vec<Flow> = cases.iter().map(|(_, f, _)| *f).collect();
        let stale = stale_flows(&flows, &table);
        for (name, f, want) in cases {
            assert_eq!(stale.contains(&f), want, "{name}");
        }
    }

    /// No serving endpoint at all: every flow to the Service goes, so the
    /// next packet meets IPVS (and its reject) instead of a dead pod.
    #[test]
    fn no_endpoints_deletes_every_flow_to_the_service() {
        let table = ports(vec![dns(&[])]);
        let flows = [
            flow(Protocol::Udp, "10.96.0.10", 53, "10.244.1.1"),
            flow(Protocol::Udp, "192.168.1.10", 30053, "10.244.1.1"),
        ];
        assert_eq!(stale_flows(&flows, &table), flows.to_vec());
    }

    #[test]
    fn sctp_ports_are_cleaned_too() {
        let mut p = dns(&["10.244.1.1"]);
        p.protocol = Protocol::Sctp;
        let table = ports(vec![p]);
        let gone = flow(Protocol::Sctp, "10.96.0.10", 53, "10.244.3.3");
        let kept = flow(Protocol::Sctp, "10.96.0.10", 53, "10.244.1.1");
        assert_eq!(stale_flows(&[gone, kept], &table), vec![gone]);
    }
}
