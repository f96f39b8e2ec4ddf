//! Table tests for the desired IPVS state: Services and EndpointSlices as
//! the apiserver serves them (JSON), the computed table compared in full.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use lbd::proxy::desired::{
    compute, node_addresses, node_port_ips, primary_node_ips, DesiredCache, DesiredParams,
    NodeAddresses,
};
use lbd::proxy::model::{
    DesiredState, DestKey, FlowPort, HealthCheck, ObjectKey, Protocol, ServiceKey, VsKind,
};
use lbd::proxy::objects::EndpointSlice;
use serde_json::{json, Value};

fn svc(v: Value) -> Service {
    serde_json::from_value(v).expect("service json")
}
fn slice(v: Value) -> EndpointSlice {
    serde_json::from_value(v).expect("slice json")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(a: &str, port: u16, proto: Protocol) -> ServiceKey {
    ServiceKey {
        addr: ip(a),
        port,
        protocol: proto,
    }
}

fn rs(list: &[&str]) -> BTreeMap<DestKey, u32> {
    list.iter()
        .map(|s| {
            let sa: std::net::SocketAddr = s.parse().unwrap();
            (
                DestKey {
                    addr: sa.ip(),
                    port: sa.port(),
                },
                1,
            )
        })
        .collect()
}

const NODE: &str = "cp1";
const NODE_IPS: [&str; 3] = ["192.168.1.10", "10.0.0.10", "fd00:1::10"];

fn run(services: &[Service], slices: &[EndpointSlice], np: &[&str]) -> DesiredState {
    let node_ips: Vec<IpAddr> = NODE_IPS.iter().map(|s| ip(s)).collect();
    let nets: Vec<IpNet> = np.iter().map(|s| s.parse().unwrap()).collect();
    compute(
        services,
        slices,
        &DesiredParams {
            node_name: NODE,
            node_addresses: &node_ips,
            node_port_addresses: &nets,
            node_port_primary: false,
            primary_ips: &[],
            scheduler: "rr",
            node_zone: None,
        },
    )
}

fn ep(
    addr: &str,
    node: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    term: Option<bool>,
) -> Value {
    let mut cond = serde_json::Map::new();
    if let Some(r) = ready {
        cond.insert("ready".into(), json!(r));
    }
    if let Some(s) = serving {
        cond.insert("serving".into(), json!(s));
    }
    if let Some(t) = term {
        cond.insert("terminating".into(), json!(t));
    }
    json!({"addresses": [addr], "nodeName": node, "conditions": cond})
}

fn eps(
    name: &str,
    slice_name: &str,
    family: &str,
    ports: Value,
    endpoints: Vec<Value>,
) -> EndpointSlice {
    slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": family, "ports": ports, "endpoints": endpoints
    }))
}

fn cluster_svc(name: &str, ip: &str, ports: Value) -> Service {
    svc(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports}
    }))
}

#[test]
fn cluster_ip_tcp_udp_sctp_with_named_ports() {
    let s = cluster_svc(
        "dns",
        "10.96.0.10",
        json!([
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
            {"name": "sig", "port": 3868, "protocol": "SCTP"}
        ]),
    );
    // Ports are matched by name: the slice lists them in another order and
    // with different numbers than the Service's targetPort guesses.
    let e = eps(
        "dns",
        "dns-1",
        "IPv4",
        json!([{"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
               {"name": "dns", "port": 5353, "protocol": "UDP"},
               {"name": "sig", "port": 3868, "protocol": "SCTP"}]),
        vec![
            ep("10.244.1.2", "cp2", Some(true), None, None),
            ep("10.244.1.3", NODE, None, None, None),
        ],
    );
    let d = run(&[s], &[e], &[]);
    assert_eq!(d.services, 1);
    assert_eq!(d.virtual_servers.len(), 3);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.10", 53, Protocol::Udp)].real_servers,
        rs(&["10.244.1.2:5353", "10.244.1.3:5353"])
    );
    assert_eq!(
        d.virtual_servers[&key("10.96.0.10", 53, Protocol::Tcp)].real_servers,
        rs(&["10.244.1.2:5354", "10.244.1.3:5354"])
    );
    assert_eq!(
        d.virtual_servers[&key("10.96.0.10", 3868, Protocol::Sctp)].real_servers,
        rs(&["10.244.1.2:3868", "10.244.1.3:3868"])
    );
    let vs = &d.virtual_servers[&key("10.96.0.10", 53, Protocol::Udp)];
    assert_eq!(vs.vs.scheduler, "rr");
    assert_eq!(vs.vs.persistent, None);
    assert_eq!(vs.kind, VsKind::ClusterIp);
    assert_eq!(vs.service, "default/dns:dns");
    assert_eq!(
        d.bind_addresses.iter().copied().collect::<Vec<_>>(),
        vec![ip("10.96.0.10")]
    );
    assert_eq!(d.real_server_count(), 6);
}

#[test]
fn unnamed_port_matches_unnamed_slice_port_only() {
    let s = cluster_svc(
        "web",
        "10.96.0.20",
        json!([{"port": 80, "targetPort": 8080}]),
    );
    let e = eps(
        "web",
        "web-1",
        "IPv4",
        json!([{"name": "other", "port": 9999}, {"port": 8080}]),
        vec![ep("10.244.1.5", "cp2", Some(true), Some(true), Some(false))],
    );
    let d = run(&[s], &[e], &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.20", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.1.5:8080"])
    );
}

#[test]
fn dual_stack_cluster_ips_get_endpoints_of_their_family() {
    let s = svc(json!({
        "metadata": {"name": "ds", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00:96::30"],
                 "ipFamilies": ["IPv4", "IPv6"], "ports": [{"name": "http", "port": 80}]}
    }));
    let v4 = eps(
        "ds",
        "ds-v4",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![ep("10.244.1.6", "cp2", Some(true), None, None)],
    );
    let v6 = eps(
        "ds",
        "ds-v6",
        "IPv6",
        json!([{"name": "http", "port": 8080}]),
        vec![ep("fd00:244::6", "cp2", Some(true), None, None)],
    );
    let d = run(&[s], &[v4, v6], &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.30", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.1.6:8080"])
    );
    assert_eq!(
        d.virtual_servers[&key("fd00:96::30", 80, Protocol::Tcp)].real_servers,
        rs(&["[fd00:244::6]:8080"])
    );
    assert_eq!(d.bind_addresses.len(), 2);
}

#[test]
fn headless_external_name_and_unallocated_are_skipped() {
    let headless = cluster_svc("h", "None", json!([{"port": 80}]));
    let ext = svc(json!({"metadata": {"name": "x", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.invalid", "ports": [{"port": 80}]}}));
    let pending = svc(json!({"metadata": {"name": "p", "namespace": "default"},
        "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}));
    let d = run(&[headless, ext, pending], &[], &[]);
    assert_eq!(d, DesiredState::default());
}

#[test]
fn not_ready_endpoints_are_left_out_and_terminating_used_only_as_fallback() {
    let s = cluster_svc("t", "10.96.0.40", json!([{"port": 80}]));
    let both = eps(
        "t",
        "t-1",
        "IPv4",
        json!([{"port": 80}]),
        vec![
            ep("10.244.0.1", "cp2", Some(true), Some(true), Some(false)),
            ep("10.244.0.2", "cp2", Some(false), Some(true), Some(true)), // terminating, serving
            ep("10.244.0.3", "cp2", Some(false), Some(false), Some(false)), // not ready
        ],
    );
    let d = run(std::slice::from_ref(&s), &[both], &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.40", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.0.1:80"])
    );

    // No ready endpoint left: the serving+terminating one takes the traffic
    // rather than blackholing it; the terminating-not-serving one never does.
    let only_term = eps(
        "t",
        "t-1",
        "IPv4",
        json!([{"port": 80}]),
        vec![
            ep("10.244.0.2", "cp2", Some(false), Some(true), Some(true)),
            ep("10.244.0.4", "cp2", Some(false), Some(false), Some(true)),
            ep("10.244.0.3", "cp2", Some(false), Some(false), Some(false)),
        ],
    );
    let d = run(&[s], &[only_term], &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.40", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.0.2:80"])
    );
}

#[test]
fn endpoints_across_slices_are_merged_and_deduplicated() {
    let s = cluster_svc("m", "10.96.0.41", json!([{"port": 80}]));
    let a = eps(
        "m",
        "m-a",
        "IPv4",
        json!([{"port": 80}]),
        vec![ep("10.244.0.1", "cp2", Some(true), None, None)],
    );
    let b = eps(
        "m",
        "m-b",
        "IPv4",
        json!([{"port": 80}]),
        vec![
            ep("10.244.0.1", "cp2", Some(false), None, None),
            ep("10.244.0.2", "cp2", Some(true), None, None),
        ],
    );
    // A slice of another namespace with the same service name is ignored.
    let mut other = eps(
        "m",
        "m-x",
        "IPv4",
        json!([{"port": 80}]),
        vec![ep("10.244.9.9", "cp2", Some(true), None, None)],
    );
    other.metadata.namespace = Some("kube-system".into());
    let d = run(&[s], &[a, b, other], &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.41", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.0.1:80", "10.244.0.2:80"])
    );
}

fn lb_service(etp: &str, itp: &str) -> Service {
    svc(json!({
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
                 "externalIPs": ["203.0.113.7"],
                 "externalTrafficPolicy": etp, "internalTrafficPolicy": itp,
                 "loadBalancerSourceRanges": ["198.51.100.0/24"],
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.50"}, {"ip": "203.0.113.51", "ipMode": "Proxy"}, {"hostname": "lb.example.invalid"}]}}
    }))
}

fn lb_slices() -> Vec<EndpointSlice> {
    vec![eps(
        "lb",
        "lb-1",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![
            ep("10.244.1.1", NODE, Some(true), None, None),
            ep("10.244.2.1", "cp2", Some(true), None, None),
        ],
    )]
}

#[test]
fn load_balancer_service_gets_every_address_kind() {
    let d = run(&[lb_service("Cluster", "Cluster")], &lb_slices(), &[]);
    let all = rs(&["10.244.1.1:8080", "10.244.2.1:8080"]);
    let expect = [
        (key("10.96.0.50", 80, Protocol::Tcp), VsKind::ClusterIp),
        (key("203.0.113.7", 80, Protocol::Tcp), VsKind::ExternalIp),
        (key("203.0.113.50", 80, Protocol::Tcp), VsKind::LoadBalancer),
        (key("192.168.1.10", 30080, Protocol::Tcp), VsKind::NodePort),
        (key("10.0.0.10", 30080, Protocol::Tcp), VsKind::NodePort),
    ];
    // A single-stack IPv4 Service: nothing on the IPv6 node address
    // (kube-proxy's IPv6 proxier does not know the Service).
    assert_eq!(d.virtual_servers.len(), expect.len());
    for (k, kind) in expect {
        let vs = &d.virtual_servers[&k];
        assert_eq!(vs.kind, kind, "{k}");
        assert_eq!(vs.real_servers, all, "{k}");
        assert!(!vs.local_only);
    }
    assert!(!d
        .virtual_servers
        .contains_key(&key("fd00:1::10", 30080, Protocol::Tcp)));
    assert_eq!(
        d.virtual_servers[&key("203.0.113.50", 80, Protocol::Tcp)].source_ranges,
        vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]
    );
    assert!(d.virtual_servers[&key("10.96.0.50", 80, Protocol::Tcp)]
        .source_ranges
        .is_empty());
    // ipMode Proxy ingress and hostname-only ingress are not captured.
    assert!(!d
        .virtual_servers
        .contains_key(&key("203.0.113.51", 80, Protocol::Tcp)));
    let bound: Vec<IpAddr> = d.bind_addresses.iter().copied().collect();
    assert_eq!(
        bound,
        vec![ip("10.96.0.50"), ip("203.0.113.7"), ip("203.0.113.50")]
    );
}

#[test]
fn external_traffic_policy_local_limits_only_external_addresses() {
    let d = run(&[lb_service("Local", "Cluster")], &lb_slices(), &[]);
    let local = rs(&["10.244.1.1:8080"]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.50", 80, Protocol::Tcp)]
            .real_servers
            .len(),
        2
    );
    for k in [
        key("203.0.113.7", 80, Protocol::Tcp),
        key("203.0.113.50", 80, Protocol::Tcp),
        key("192.168.1.10", 30080, Protocol::Tcp),
    ] {
        assert_eq!(d.virtual_servers[&k].real_servers, local, "{k}");
        assert!(d.virtual_servers[&k].local_only);
    }
}

#[test]
fn internal_traffic_policy_local_limits_only_cluster_ip() {
    let d = run(&[lb_service("Cluster", "Local")], &lb_slices(), &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.50", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.1.1:8080"])
    );
    assert_eq!(
        d.virtual_servers[&key("192.168.1.10", 30080, Protocol::Tcp)]
            .real_servers
            .len(),
        2
    );
}

/// kube-proxy's IPVS `syncEndpoint`: `externalTrafficPolicy: Local` with no
/// local endpoint falls back to the cluster endpoints instead of an empty
/// virtual server (topology_test.go "iTP: Cluster, eTP: Local" with every
/// endpoint remote; ipvs's onlyNodeLocalEndpoints branch).
#[test]
fn local_policy_without_local_endpoint_falls_back_to_cluster_endpoints() {
    let s = lb_service("Local", "Cluster");
    let e = eps(
        "lb",
        "lb-1",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![ep("10.244.2.1", "cp2", Some(true), None, None)],
    );
    let d = run(&[s], &[e], &[]);
    for k in [
        key("192.168.1.10", 30080, Protocol::Tcp),
        key("10.96.0.50", 80, Protocol::Tcp),
    ] {
        let rs: Vec<String> = d.virtual_servers[&k]
            .real_servers
            .keys()
            .map(|d| d.addr.to_string())
            .collect();
        assert_eq!(rs, ["10.244.2.1"], "{k:?}");
    }
    // The Local policy still holds for the firewall (no masquerade of
    // external traffic), as kube-proxy keeps its local sets.
    assert!(d.virtual_servers[&key("192.168.1.10", 30080, Protocol::Tcp)].local_only);
}

/// The same for `internalTrafficPolicy: Local`: on a Service that also takes
/// external traffic the ClusterIP falls back to the cluster endpoints; on a
/// ClusterIP-only Service it stays empty (kube-proxy ipvs
/// `TestTestInternalTrafficPolicyE2E` "internalTrafficPolicy is local with
/// zero local endpoints", topology_test.go "no cluster endpoints for
/// iTP:Local internal-only service").
#[test]
fn test_internal_traffic_policy_e2e() {
    let e = eps(
        "lb",
        "lb-1",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![ep("10.244.2.1", "cp2", Some(true), None, None)],
    );
    let cip = key("10.96.0.50", 80, Protocol::Tcp);
    let d = run(
        &[lb_service("Cluster", "Local")],
        std::slice::from_ref(&e),
        &[],
    );
    assert_eq!(d.virtual_servers[&cip].real_servers.len(), 1);
    let mut internal_only = lb_service("Cluster", "Local");
    let spec = internal_only.spec.as_mut().unwrap();
    spec.type_ = Some("ClusterIP".into());
    spec.external_ips = None;
    for p in spec.ports.iter_mut().flatten() {
        p.node_port = None;
    }
    internal_only.status = None;
    let d = run(&[internal_only], &[e], &[]);
    assert!(d.virtual_servers[&cip].real_servers.is_empty());
    assert_eq!(d.virtual_servers.len(), 1, "{:?}", d.virtual_servers.keys());
}

#[test]
fn local_terminating_fallback_is_per_locality() {
    // A ready remote endpoint does not prevent the terminating local one
    // from serving Local traffic.
    let s = lb_service("Local", "Cluster");
    let e = eps(
        "lb",
        "lb-1",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![
            ep("10.244.1.1", NODE, Some(false), Some(true), Some(true)),
            ep("10.244.2.1", "cp2", Some(true), None, None),
        ],
    );
    let d = run(&[s], &[e], &[]);
    assert_eq!(
        d.virtual_servers[&key("192.168.1.10", 30080, Protocol::Tcp)].real_servers,
        rs(&["10.244.1.1:8080"])
    );
    assert_eq!(
        d.virtual_servers[&key("10.96.0.50", 80, Protocol::Tcp)].real_servers,
        rs(&["10.244.2.1:8080"])
    );
}

#[test]
fn node_port_addresses_filter_node_ips() {
    let s = svc(json!({
        "metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.60", "clusterIPs": ["10.96.0.60"],
                 "ports": [{"port": 80, "nodePort": 31000, "protocol": "UDP"}]}
    }));
    let d = run(std::slice::from_ref(&s), &[], &["10.0.0.0/8"]);
    let nodeports: Vec<ServiceKey> = d
        .virtual_servers
        .iter()
        .filter(|(_, v)| v.kind == VsKind::NodePort)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(nodeports, vec![key("10.0.0.10", 31000, Protocol::Udp)]);
    // Node addresses never go on kube-ipvs0.
    assert!(!d.bind_addresses.contains(&ip("10.0.0.10")));

    let d = run(&[s], &[], &["192.168.1.0/24", "fd00:1::/64"]);
    let nodeports: Vec<ServiceKey> = d
        .virtual_servers
        .iter()
        .filter(|(_, v)| v.kind == VsKind::NodePort)
        .map(|(k, _)| *k)
        .collect();
    // The selected IPv6 address gets nothing: the Service is IPv4-only.
    assert_eq!(nodeports, vec![key("192.168.1.10", 31000, Protocol::Udp)]);
}

/// kube-proxy ipvs `TestNodePortIPv6` / `TestIPv6Proxier` and the
/// per-family proxiers: a single-stack Service's NodePorts, external IPs and
/// LoadBalancer IPs exist only in its family; a dual-stack one gets both.
#[test]
fn test_node_port_single_stack_stays_in_its_family() {
    let v4 = svc(json!({
        "metadata": {"name": "v4", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.70", "clusterIPs": ["10.96.0.70"],
                 "externalIPs": ["203.0.113.70", "2001:db8::70"],
                 "ports": [{"port": 80, "nodePort": 31070}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.71"}, {"ip": "2001:db8::71"}]}}
    }));
    let mut dual = v4.clone();
    dual.metadata.name = Some("dual".into());
    let spec = dual.spec.as_mut().unwrap();
    spec.cluster_ip = Some("10.96.0.71".into());
    spec.cluster_ips = Some(vec!["10.96.0.71".into(), "fd00:96::71".into()]);
    for p in spec.ports.iter_mut().flatten() {
        p.node_port = Some(31071);
        p.port = 81;
    }
    let alone = run(std::slice::from_ref(&v4), &[], &[]);
    assert!(!alone.bind_addresses.contains(&ip("2001:db8::70")));
    assert!(!alone.bind_addresses.contains(&ip("2001:db8::71")));
    let d = run(&[v4, dual], &[], &[]);
    let addrs = |port: u16| -> Vec<String> {
        d.virtual_servers
            .keys()
            .filter(|k| k.port == port)
            .map(|k| k.addr.to_string())
            .collect()
    };
    assert_eq!(addrs(31070), ["10.0.0.10", "192.168.1.10"]);
    assert_eq!(addrs(80), ["10.96.0.70", "203.0.113.70", "203.0.113.71"]);
    assert_eq!(addrs(31071), ["10.0.0.10", "192.168.1.10", "fd00:1::10"]);
    assert_eq!(
        addrs(81),
        [
            "10.96.0.71",
            "203.0.113.70",
            "203.0.113.71",
            "2001:db8::70",
            "2001:db8::71",
            "fd00:96::71"
        ]
    );
    assert!(d.bind_addresses.contains(&ip("2001:db8::70")));
}

#[test]
fn load_balancer_without_node_ports_has_none() {
    let s = svc(json!({
        "metadata": {"name": "lbn", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.61", "clusterIPs": ["10.96.0.61"],
                 "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}
    }));
    let d = run(&[s], &[], &[]);
    assert_eq!(
        d.virtual_servers.keys().copied().collect::<Vec<_>>(),
        vec![key("10.96.0.61", 80, Protocol::Tcp)]
    );
}

#[test]
fn session_affinity_client_ip_sets_persistence() {
    let mut s = cluster_svc("a", "10.96.0.70", json!([{"port": 80}]));
    s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    let d = run(std::slice::from_ref(&s), &[], &[]);
    let vs = &d.virtual_servers[&key("10.96.0.70", 80, Protocol::Tcp)].vs;
    assert_eq!(vs.persistent, Some(10800));
    // Per client address: the full host netmask, as kube-proxy sets it.
    assert_eq!(vs.netmask, 32);
    s.spec.as_mut().unwrap().session_affinity_config =
        serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 600}})).unwrap();
    let d = run(&[s], &[], &[]);
    assert_eq!(
        d.virtual_servers[&key("10.96.0.70", 80, Protocol::Tcp)]
            .vs
            .persistent,
        Some(600)
    );
}

#[test]
fn configured_scheduler_is_used() {
    let s = cluster_svc("w", "10.96.0.80", json!([{"port": 80}]));
    let node_ips: Vec<IpAddr> = vec![];
    let d = compute(
        &[s],
        &[] as &[EndpointSlice],
        &DesiredParams {
            node_name: NODE,
            node_addresses: &node_ips,
            node_port_addresses: &[],
            node_port_primary: false,
            primary_ips: &[],
            scheduler: "wlc",
            node_zone: None,
        },
    );
    assert_eq!(
        d.virtual_servers[&key("10.96.0.80", 80, Protocol::Tcp)]
            .vs
            .scheduler,
        "wlc"
    );
}

#[test]
fn same_inputs_in_any_order_give_the_same_table() {
    let mut services = vec![
        lb_service("Local", "Cluster"),
        cluster_svc("a", "10.96.0.1", json!([{"port": 443}])),
        cluster_svc("b", "10.96.0.2", json!([{"port": 53, "protocol": "UDP"}])),
    ];
    let mut slices = lb_slices();
    slices.push(eps(
        "a",
        "a-1",
        "IPv4",
        json!([{"port": 6443}]),
        vec![ep("192.168.1.10", NODE, Some(true), None, None)],
    ));
    let d1 = run(&services, &slices, &[]);
    services.reverse();
    slices.reverse();
    let d2 = run(&services, &slices, &[]);
    assert_eq!(d1, d2);
    assert_eq!(format!("{d1:?}"), format!("{d2:?}"));
}

/// kube-proxy ipvs with nodePortAddresses unset (`NodeIPs`: every local
/// address but kube-ipvs0's, then loopback and IPv6 link-local dropped),
/// with CIDRs (the local addresses inside them, loopback too when asked),
/// and with `primary` (the Node's primary IPs, when local).
#[test]
fn node_port_ips_follow_kube_proxy_node_port_addresses() {
    let host: Vec<IpAddr> = [
        "127.0.0.1",
        "::1",
        "192.168.1.10",
        "10.0.0.10",
        "172.16.5.1",
        "fe80::1",
        "fd00:1::10",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    let primary = [ip("192.168.1.10"), ip("fd00:1::10")];
    let np = |nets: &[&str], use_primary: bool| -> Vec<IpAddr> {
        let nets: Vec<IpNet> = nets.iter().map(|s| s.parse().unwrap()).collect();
        let mut v = node_port_ips(&DesiredParams {
            node_name: NODE,
            node_addresses: &host,
            primary_ips: &primary,
            node_port_addresses: &nets,
            node_port_primary: use_primary,
            scheduler: "rr",
            node_zone: None,
        });
        v.sort();
        v
    };
    let ips = |l: &[&str]| -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = l.iter().map(|s| ip(s)).collect();
        v.sort();
        v
    };
    // Unset: a secondary interface's 172.16.5.1 too, not only the Node's.
    assert_eq!(
        np(&[], false),
        ips(&["192.168.1.10", "10.0.0.10", "172.16.5.1", "fd00:1::10"])
    );
    assert_eq!(np(&["10.0.0.0/8"], false), ips(&["10.0.0.10"]));
    assert_eq!(
        np(&["127.0.0.0/8", "fd00:1::/64"], false),
        ips(&["127.0.0.1", "fd00:1::10"])
    );
    assert_eq!(np(&[], true), ips(&["192.168.1.10", "fd00:1::10"]));
    // A primary IP that is not on the host serves nothing.
    let only = [ip("192.168.1.99")];
    let none = node_port_ips(&DesiredParams {
        node_name: NODE,
        node_addresses: &host,
        primary_ips: &only,
        node_port_addresses: &[],
        node_port_primary: true,
        scheduler: "rr",
        node_zone: None,
    });
    assert!(none.is_empty(), "{none:?}");
}

/// kube-proxy's `GetNodeHostIPs`: the first InternalIP (else ExternalIP)
/// and the first of the other family; NodeAddresses takes the host's
/// listing over the Node object's, and the Node's where there is none.
#[test]
fn primary_ips_and_node_addresses_sources() {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": "cp1"},
        "status": {"addresses": [
            {"type": "ExternalIP", "address": "203.0.113.10"},
            {"type": "InternalIP", "address": "192.168.1.10"},
            {"type": "InternalIP", "address": "192.168.1.11"},
            {"type": "ExternalIP", "address": "2001:db8::10"}]}
    }))
    .unwrap();
    assert_eq!(
        primary_node_ips(&n),
        vec![ip("192.168.1.10"), ip("2001:db8::10")]
    );
    let ext_only: Node = serde_json::from_value(json!({
        "metadata": {"name": "cp1"},
        "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.10"}]}
    }))
    .unwrap();
    assert_eq!(primary_node_ips(&ext_only), vec![ip("203.0.113.10")]);

    let host = [ip("172.16.5.1"), ip("192.168.1.10")];
    let a = NodeAddresses::new(Some(&host), Some(&n));
    assert_eq!(a.addresses, host.to_vec());
    assert_eq!(a.primary, primary_node_ips(&n));
    let b = NodeAddresses::new(None, Some(&n));
    assert_eq!(b.addresses, node_addresses(&n));
    assert_eq!(NodeAddresses::new(None, None), NodeAddresses::default());
}

#[test]
fn node_addresses_come_from_node_status() {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": "cp1"},
        "status": {"addresses": [
            {"type": "Hostname", "address": "cp1"},
            {"type": "InternalIP", "address": "192.168.1.10"},
            {"type": "InternalIP", "address": "fd00:1::10"},
            {"type": "ExternalIP", "address": "203.0.113.10"}]}
    }))
    .unwrap();
    assert_eq!(
        node_addresses(&n),
        vec![ip("192.168.1.10"), ip("203.0.113.10"), ip("fd00:1::10")]
    );
}

#[test]
fn memoised_compute_equals_full_compute_through_changes() {
    use lbd::proxy::desired::DesiredCache;
    let mut services: Vec<Service> = (0..5)
        .map(|i| {
            let mut s = cluster_svc(
                &format!("s{i}"),
                &format!("10.96.1.{i}"),
                json!([{"name": "http", "port": 80, "nodePort": 30000 + i}]),
            );
            s.spec.as_mut().unwrap().type_ = Some("NodePort".into());
            s.metadata.resource_version = Some("1".into());
            s
        })
        .collect();
    let mk = |i: usize, rv: &str, addrs: &[&str]| -> EndpointSlice {
        let list: Vec<Value> = addrs
            .iter()
            .map(|a| ep(a, NODE, Some(true), None, None))
            .collect();
        let mut s = eps(
            &format!("s{i}"),
            &format!("s{i}-a"),
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            list,
        );
        s.metadata.resource_version = Some(rv.into());
        s
    };
    let mut slices: Vec<EndpointSlice> = (0..5)
        .map(|i| mk(i, "1", &["10.244.0.1", "10.244.0.2"]))
        .collect();
    let mut cache = DesiredCache::default();
    let node_ips: Vec<IpAddr> = NODE_IPS.iter().map(|s| ip(s)).collect();
    let mut check = |services: &[Service], slices: &[EndpointSlice], node_ips: &[IpAddr]| {
        let p = DesiredParams {
            node_name: NODE,
            node_addresses: node_ips,
            node_port_addresses: &[],
            node_port_primary: false,
            primary_ips: &[],
            scheduler: "rr",
            node_zone: None,
        };
        let full = compute(services, slices, &p);
        assert_eq!(*cache.compute(services, slices, &p), full);
        full
    };
    let d0 = check(&services, &slices, &node_ips);
    // One endpoint changes (new resourceVersion).
    slices[2] = mk(2, "2", &["10.244.0.1", "10.244.0.9"]);
    let d1 = check(&services, &slices, &node_ips);
    assert_ne!(d0, d1);
    // A Service goes away, another one changes its port.
    services.remove(0);
    services[0].spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
    services[0].metadata.resource_version = Some("2".into());
    check(&services, &slices, &node_ips);
    // A second slice appears for a Service.
    let mut extra = mk(3, "1", &["10.244.0.7"]);
    extra.metadata.name = Some("s3-b".into());
    slices.push(extra);
    check(&services, &slices, &node_ips);
    // Node addresses change: every NodePort follows.
    check(&services, &slices, &node_ips[..1]);
}

/// kube-proxy watches Services with `!service.kubernetes.io/service-proxy-name`
/// (cmd/kube-proxy/app/server.go): one labelled for another proxy is not
/// lbd's either, whatever its value; removing the label brings it back.
#[test]
fn service_proxy_name_label_leaves_the_service_to_its_proxy() {
    let mut s = cluster_svc("other", "10.96.0.80", json!([{"port": 80}]));
    let plain = run(std::slice::from_ref(&s), &[], &[]);
    assert!(plain
        .virtual_servers
        .contains_key(&key("10.96.0.80", 80, Protocol::Tcp)));
    s.metadata.labels = Some(
        [(
            "service.kubernetes.io/service-proxy-name".to_string(),
            "cilium".to_string(),
        )]
        .into(),
    );
    let d = run(&[s], &[], &[]);
    assert!(
        d.virtual_servers.is_empty(),
        "{:?}",
        d.virtual_servers.keys()
    );
    assert!(d.bind_addresses.is_empty());
    assert_eq!(d.services, 0);
}

/// kube-proxy ipvs syncProxyRules: an external IP or LoadBalancer IP that
/// is one of the node's addresses gets its virtual server but is not bound
/// to kube-ipvs0 (`shouldBind := !nodeAddressSet.Has(...)`), so it is not in
/// KUBE-IPVS-IPS either and the filter leaves the node's other ports on it
/// alone. A ClusterIP is always bound.
#[test]
fn external_ip_that_is_a_node_address_is_not_bound() {
    let s = svc(json!({
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.90", "clusterIPs": ["10.96.0.90"],
                 "externalIPs": ["192.168.1.10", "203.0.113.90"],
                 "ports": [{"port": 8443, "nodePort": 31090}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.10"}]}}
    }));
    let d = run(&[s], &[], &[]);
    for (a, port) in [
        ("192.168.1.10", 8443),
        ("203.0.113.90", 8443),
        ("10.0.0.10", 8443),
        ("10.96.0.90", 8443),
    ] {
        assert!(
            d.virtual_servers.contains_key(&key(a, port, Protocol::Tcp)),
            "{a}:{port}"
        );
    }
    let bound: Vec<String> = d.bind_addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(bound, ["10.96.0.90", "203.0.113.90"]);
}

/// Zone hints from the EndpointSlice (`hints.forZones`) and the Node's
/// `topology.kubernetes.io/zone`, through compute: the ClusterIP uses the
/// endpoints hinted for this zone; a zone change recomputes the table
/// (kube-proxy topology_test.go "should use topology since all endpoints
/// have hints ..." and "node in different zone, no endpoint filtering").
#[test]
fn zone_hints_pick_this_zones_endpoints() {
    let s = cluster_svc("hinted", "10.96.0.95", json!([{"port": 80}]));
    let hinted = |addr: &str, zone: &str| {
        let mut e = ep(addr, "cp2", Some(true), None, None);
        e["hints"] = json!({"forZones": [{"name": zone}]});
        e
    };
    let e = eps(
        "hinted",
        "hinted-1",
        "IPv4",
        json!([{"port": 8080}]),
        vec![
            hinted("10.244.1.1", "zone-a"),
            hinted("10.244.2.1", "zone-b"),
        ],
    );
    let node_ips: Vec<IpAddr> = NODE_IPS.iter().map(|s| ip(s)).collect();
    let at = |zone: Option<&'static str>| DesiredParams {
        node_name: NODE,
        node_addresses: &node_ips,
        node_port_addresses: &[],
        node_port_primary: false,
        primary_ips: &[],
        scheduler: "rr",
        node_zone: zone,
    };
    let k = key("10.96.0.95", 80, Protocol::Tcp);
    let real = |d: &DesiredState| -> Vec<String> {
        d.virtual_servers[&k]
            .real_servers
            .keys()
            .map(|d| d.addr.to_string())
            .collect()
    };
    let (svcs, slices) = (vec![s], vec![e]);
    assert_eq!(
        real(&compute(&svcs, &slices, &at(Some("zone-a")))),
        ["10.244.1.1"]
    );
    assert_eq!(
        real(&compute(&svcs, &slices, &at(Some("zone-b")))),
        ["10.244.2.1"]
    );
    let both = ["10.244.1.1", "10.244.2.1"];
    assert_eq!(real(&compute(&svcs, &slices, &at(Some("zone-c")))), both);
    assert_eq!(real(&compute(&svcs, &slices, &at(None))), both);
    // The memoised table follows a zone change too.
    let mut cache = DesiredCache::default();
    cache.compute(&svcs, &slices, &at(Some("zone-a")));
    assert!(!cache.matches(&at(Some("zone-b"))));
    assert_eq!(
        real(cache.compute(&svcs, &slices, &at(Some("zone-b")))),
        ["10.244.2.1"]
    );
}

/// kube-proxy's `NeedsHealthCheck` and `LocalReadyEndpoints`: only a
/// LoadBalancer with `externalTrafficPolicy: Local` and a
/// healthCheckNodePort gets a health check; its count is of distinct ready
/// local addresses over all its ports (10.244.1.1:8080 and :8443 are one),
/// terminating and other nodes' endpoints left out.
#[test]
fn health_check_node_port_for_local_load_balancers_only() {
    let with_hc = |name: &str, ty: &str, etp: &str, hc: Option<u16>| {
        let mut spec = json!({
            "type": ty, "clusterIP": "10.96.0.60", "clusterIPs": ["10.96.0.60"],
            "externalTrafficPolicy": etp,
            "ports": [{"name": "http", "port": 80, "nodePort": 30081},
                      {"name": "https", "port": 443, "nodePort": 30443}]
        });
        if let Some(p) = hc {
            spec["healthCheckNodePort"] = json!(p);
        }
        svc(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.60"}]}}
        }))
    };
    let slices_for = |name: &str| {
        eps(
            name,
            &format!("{name}-1"),
            "IPv4",
            json!([{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]),
            vec![
                ep("10.244.1.1", NODE, Some(true), None, None),
                ep("10.244.1.2", NODE, Some(true), None, None),
                ep("10.244.1.3", NODE, Some(false), Some(true), Some(true)),
                ep("10.244.2.1", "cp2", Some(true), None, None),
            ],
        )
    };
    let services = [
        with_hc("local-lb", "LoadBalancer", "Local", Some(32000)),
        with_hc("cluster-lb", "LoadBalancer", "Cluster", None),
        with_hc("local-np", "NodePort", "Local", None),
        with_hc("local-lb-no-port", "LoadBalancer", "Local", None),
    ];
    let slices: Vec<_> = services
        .iter()
        .map(|s| slices_for(s.metadata.name.as_deref().unwrap()))
        .collect();
    let d = run(&services, &slices, &[]);
    let hcs: Vec<_> = d.health_checks.iter().collect();
    assert_eq!(
        hcs,
        vec![(
            &ObjectKey::new("default", "local-lb"),
            &HealthCheck {
                port: 32000,
                ipv4: true,
                ipv6: false,
                local_v4: 2,
                local_v6: 0,
            }
        )]
    );

    // No local endpoint: still served (a 503 tells the cloud to skip us).
    let only_remote = eps(
        "local-lb",
        "local-lb-1",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![ep("10.244.2.1", "cp2", Some(true), None, None)],
    );
    let d = run(&services[..1], &[only_remote], &[]);
    assert_eq!(
        d.health_checks[&ObjectKey::new("default", "local-lb")].local_v4,
        0
    );

    // A Service left to another proxy has no health check here either.
    let mut other = services[0].clone();
    other.metadata.labels = Some(
        [(
            "service.kubernetes.io/service-proxy-name".to_string(),
            "other".to_string(),
        )]
        .into(),
    );
    let d = run(&[other], &slices[..1], &[]);
    assert!(d.health_checks.is_empty());
}

/// A dual-stack load balancer: each family's listener answers with that
/// family's local endpoints (kube-proxy's per-family proxiers each count
/// their own family's slices), not the sum.
#[test]
fn dual_stack_health_checks_count_each_family_apart() {
    let s = svc(json!({
        "metadata": {"name": "dual", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.70",
                 "clusterIPs": ["10.96.0.70", "fd00:10:96::70"],
                 "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": 32070,
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30070}]}
    }));
    let v4 = eps(
        "dual",
        "dual-v4",
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        vec![
            ep("10.244.7.1", NODE, Some(true), None, None),
            ep("10.244.7.2", NODE, Some(true), None, None),
            ep("10.244.7.3", NODE, Some(true), None, None),
        ],
    );
    let v6 = eps(
        "dual",
        "dual-v6",
        "IPv6",
        json!([{"name": "http", "port": 8080}]),
        vec![
            ep("fd00:244::7:1", NODE, Some(true), None, None),
            ep("fd00:244::7:2", "cp2", Some(true), None, None),
        ],
    );
    let d = run(&[s], &[v4, v6], &[]);
    let hc = &d.health_checks[&ObjectKey::new("default", "dual")];
    assert_eq!((hc.ipv4, hc.ipv6), (true, true));
    assert_eq!(
        (hc.local_endpoints(false), hc.local_endpoints(true)),
        (3, 1)
    );
}

/// What the conntrack cleanup is given: each UDP/SCTP port of a Service
/// with every address clients send to and its serving endpoints (ready, or
/// terminating but serving; not the not-serving ones), whatever the
/// traffic policy selected for this node; TCP ports are not its business.
#[test]
fn flow_ports_list_udp_and_sctp_ports_with_their_serving_endpoints() {
    let s = svc(json!({
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "externalIPs": ["203.0.113.10"], "externalTrafficPolicy": "Local",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30054}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}}
    }));
    let sl = eps(
        "dns",
        "dns-1",
        "IPv4",
        json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
               {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}]),
        vec![
            ep("10.244.1.1", NODE, Some(true), None, None),
            ep("10.244.2.1", "cp2", Some(true), None, None),
            ep("10.244.2.2", "cp2", Some(false), Some(true), Some(true)),
            ep("10.244.2.3", "cp2", Some(false), Some(false), Some(true)),
        ],
    );
    let d = run(&[s], &[sl], &[]);
    let ports = &d.flow_ports[&ObjectKey::new("default", "dns")];
    assert_eq!(
        **ports,
        vec![FlowPort {
            protocol: Protocol::Udp,
            port: 53,
            addresses: vec![ip("10.96.0.10"), ip("203.0.113.10"), ip("203.0.113.11")],
            node_port: Some(30053),
            serving: [ip("10.244.1.1"), ip("10.244.2.1"), ip("10.244.2.2")].into(),
        }]
    );
    let tcp_only = cluster_svc("web", "10.96.0.20", json!([{"name": "http", "port": 80}]));
    assert!(run(&[tcp_only], &[], &[]).flow_ports.is_empty());
}
