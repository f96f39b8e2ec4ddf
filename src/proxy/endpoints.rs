//! Which endpoints serve a Service port (pure): the slices' endpoints
//! merged per address, their conditions (ready, serving, terminating), the
//! traffic policies and locality. kube-proxy's `pkg/proxy/topology.go`
//! decides the same, topology hints (zone hints, and node hints of
//! `trafficDistribution: PreferSameNode`) included.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServicePort;

use super::model::{protocol_from_k8s, DestKey, Protocol};
use super::objects::EndpointSlice;

/// Weight of a serving real server; draining ones get 0.
pub const DEFAULT_WEIGHT: u32 = 1;

/// `externalTrafficPolicy` / `internalTrafficPolicy`: which endpoints a
/// Service address sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Every endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

impl TrafficPolicy {
    /// Kubernetes spelling; absent or unknown means Cluster.
    pub fn from_k8s(v: Option<&str>) -> Self {
        match v {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        }
    }
}

/// One endpoint address after merging the slices of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (the slice's `nodeName`).
    pub local: bool,
    /// `hints.forZones`, as it concerns this node's zone.
    pub zone_hint: Hint,
    /// `hints.forNodes`, as it concerns this node.
    pub node_hint: Hint,
}

/// A topology hint of an endpoint, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Hint {
    /// No hint of that kind.
    #[default]
    None,
    /// Hints, none for this node (or its zone).
    Other,
    /// A hint for this node (or its zone).
    Mine,
}

impl Hint {
    fn of<'a>(names: Option<impl Iterator<Item = &'a str>>, mine: Option<&str>) -> Hint {
        let Some(mut names) = names else {
            return Hint::None;
        };
        let mut any = false;
        for n in names.by_ref() {
            any = true;
            if Some(n) == mine {
                return Hint::Mine;
            }
        }
        if any {
            Hint::Other
        } else {
            Hint::None
        }
    }
}

/// Where this proxy runs, for locality and topology hints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Here<'a> {
    pub node_name: &'a str,
    /// The Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<&'a str>,
}

/// Endpoints of one Service port: address:port -> conditions.
pub type PortEndpoints = BTreeMap<DestKey, Endpoint>;

/// Merges every slice's endpoints for one Service port. The endpoint port
/// is the slice port with the Service port's name (and protocol).
pub fn port_endpoints(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    proto: Protocol,
    here: Here<'_>,
) -> PortEndpoints {
    let want_name = port.name.as_deref().unwrap_or("");
    let mut out = PortEndpoints::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue; // FQDN slices are not proxied
        }
        let Some(ep_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == want_name
                    && protocol_from_k8s(p.protocol.as_deref()) == Some(proto)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            // discovery.k8s.io/v1: nil ready/serving mean true, nil
            // terminating means false.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let hints = ep.hints.as_ref();
            let info = Endpoint {
                ready: ready && !terminating,
                serving,
                terminating,
                local: ep.node_name.as_deref() == Some(here.node_name),
                zone_hint: Hint::of(
                    hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|v| v.iter().map(|z| z.name.as_str())),
                    here.zone,
                ),
                node_hint: Hint::of(
                    hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|v| v.iter().map(|n| n.name.as_str())),
                    Some(here.node_name),
                ),
            };
            for &addr in &ep.addresses {
                let key = DestKey {
                    addr,
                    port: ep_port,
                };
                // An address listed twice (slices overlap while the
                // controller moves endpoints) counts as ready if any copy is.
                out.entry(key)
                    .and_modify(|e| {
                        e.ready |= info.ready;
                        e.serving |= info.serving;
                        e.terminating &= info.terminating;
                        e.local |= info.local;
                        e.zone_hint = e.zone_hint.max(info.zone_hint);
                        e.node_hint = e.node_hint.max(info.node_hint);
                    })
                    .or_insert(info);
            }
        }
    }
    out
}

/// What a Service port asks of its endpoints: kube-proxy's
/// `UsesClusterEndpoints` / `UsesLocalEndpoints` (pkg/proxy/serviceport.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortPolicies {
    pub internal: TrafficPolicy,
    pub external: TrafficPolicy,
    /// A NodePort, an external IP or a LoadBalancer IP (of this family).
    pub externally_accessible: bool,
}

impl PortPolicies {
    /// Cluster endpoints are needed when internal traffic may go anywhere,
    /// or the port takes external traffic at all (an external Local policy
    /// still falls back to them).
    pub fn uses_cluster(&self) -> bool {
        self.internal == TrafficPolicy::Cluster || self.externally_accessible
    }

    /// Local endpoints are needed for an internal Local policy, or an
    /// external Local one on a port that takes external traffic.
    pub fn uses_local(&self) -> bool {
        self.internal == TrafficPolicy::Local
            || (self.external == TrafficPolicy::Local && self.externally_accessible)
    }
}

/// One port's endpoints of one family sorted as kube-proxy's
/// `CategorizeEndpoints` (pkg/proxy/topology.go) does: `cluster` (ready
/// ones, else serving+terminating ones; None when the port does not use
/// cluster endpoints) and `local` (ready local ones, else serving+terminating
/// local ones; None when it does not use local endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized {
    pub cluster: Option<BTreeMap<DestKey, u32>>,
    pub local: Option<BTreeMap<DestKey, u32>>,
}

/// Sorts `endpoints` of `vip`'s family (kube-proxy runs one proxier per
/// family) for a port with these policies.
pub fn categorize(endpoints: &PortEndpoints, vip: IpAddr, policies: &PortPolicies) -> Categorized {
    let family = || {
        endpoints
            .iter()
            .filter(move |(k, _)| k.addr.is_ipv4() == vip.is_ipv4())
    };
    let topology = topology_mode(family().map(|(_, e)| e));
    // Ready ones (of this node or zone when the hints say so, for cluster
    // endpoints), else serving+terminating ones (KEP-1669).
    let pick = |only_local: bool| -> BTreeMap<DestKey, u32> {
        let of = || family().filter(move |(_, e)| !only_local || e.local);
        let ready: BTreeMap<DestKey, u32> = of()
            .filter(|(_, e)| e.ready && (only_local || topology.admits(e)))
            .map(|(k, _)| (*k, DEFAULT_WEIGHT))
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        of().filter(|(_, e)| e.serving && e.terminating)
            .map(|(k, _)| (*k, DEFAULT_WEIGHT))
            .collect()
    };
    Categorized {
        cluster: policies.uses_cluster().then(|| pick(false)),
        local: policies.uses_local().then(|| pick(true)),
    }
}

/// Which topology hints decide the cluster endpoints: kube-proxy's
/// `topologyModeFromHints`. Node hints when every ready endpoint has some
/// and one is for this node, else zone hints when every ready endpoint has
/// some and one is for this zone, else none (all endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    All,
    SameNode,
    SameZone,
}

impl Topology {
    fn admits(self, e: &Endpoint) -> bool {
        match self {
            Topology::All => true,
            Topology::SameNode => e.node_hint == Hint::Mine,
            Topology::SameZone => e.zone_hint == Hint::Mine,
        }
    }
}

fn topology_mode<'a>(endpoints: impl Iterator<Item = &'a Endpoint>) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.filter(|e| e.ready).collect();
    let decides = |h: fn(&Endpoint) -> Hint| {
        !ready.is_empty()
            && ready.iter().all(|e| h(e) != Hint::None)
            && ready.iter().any(|e| h(e) == Hint::Mine)
    };
    if decides(|e| e.node_hint) {
        Topology::SameNode
    } else if decides(|e| e.zone_hint) {
        Topology::SameZone
    } else {
        Topology::All
    }
}

/// Real servers for one virtual server of a port, as kube-proxy's IPVS
/// `syncEndpoint` picks them: under a Local `policy` the local endpoints,
/// and when there is none the cluster ones (kube-proxy's IPVS mode falls
/// back rather than leaving the virtual server empty, both for
/// `externalTrafficPolicy: Local` and for `internalTrafficPolicy: Local` on
/// a port that also takes external traffic); under Cluster the cluster
/// ones. An internal-only port with `internalTrafficPolicy: Local` and no
/// local endpoint has none.
pub fn select(
    endpoints: &PortEndpoints,
    vip: IpAddr,
    policies: &PortPolicies,
    policy: TrafficPolicy,
) -> BTreeMap<DestKey, u32> {
    let c = categorize(endpoints, vip, policies);
    if policy == TrafficPolicy::Local {
        if let Some(local) = c.local.filter(|l| !l.is_empty()) {
            return local;
        }
    }
    c.cluster.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ready: bool, serving: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            ready,
            serving,
            terminating,
            local,
            zone_hint: Hint::None,
            node_hint: Hint::None,
        }
    }

    fn dk(a: &str) -> DestKey {
        DestKey {
            addr: a.parse().unwrap(),
            port: 8080,
        }
    }

    #[test]
    fn policies_read_as_kubernetes_spells_them() {
        assert_eq!(TrafficPolicy::from_k8s(Some("Local")), TrafficPolicy::Local);
        assert_eq!(
            TrafficPolicy::from_k8s(Some("Cluster")),
            TrafficPolicy::Cluster
        );
        assert_eq!(TrafficPolicy::from_k8s(None), TrafficPolicy::Cluster);
    }

    #[test]
    fn ready_first_then_serving_terminating_same_family_and_locality() {
        let vip = "10.96.0.1".parse().unwrap();
        let mut eps = PortEndpoints::new();
        eps.insert(dk("10.244.0.1"), ep(true, true, false, false));
        eps.insert(dk("10.244.0.2"), ep(false, true, true, true));
        eps.insert(dk("fd00::1"), ep(true, true, false, true));
        let got = |eps: &PortEndpoints, p| {
            let pol = PortPolicies {
                internal: p,
                ..Default::default()
            };
            select(eps, vip, &pol, p).into_keys().collect::<Vec<_>>()
        };
        assert_eq!(got(&eps, TrafficPolicy::Cluster), vec![dk("10.244.0.1")]);
        // Local: the only local IPv4 endpoint is terminating but serving.
        assert_eq!(got(&eps, TrafficPolicy::Local), vec![dk("10.244.0.2")]);
        eps.insert(dk("10.244.0.2"), ep(false, false, true, true));
        assert!(got(&eps, TrafficPolicy::Local).is_empty());
    }

    /// kube-proxy's pkg/proxy/topology_test.go `TestCategorizeEndpoints`,
    /// the cases without topology hints: (name, internal Local, external
    /// Local, externally accessible, endpoints (addr, ready, serving,
    /// terminating, local), want cluster, want local).
    #[test]
    fn test_categorize_endpoints() {
        type Case<'a> = (
            &'a str,
            bool,
            bool,
            bool,
            Vec<(&'a str, bool, bool, bool, bool)>,
            Option<&'a [&'a str]>,
            Option<&'a [&'a str]>,
        );
        const R: (bool, bool, bool) = (true, true, false);
        const NR: (bool, bool, bool) = (false, false, false);
        const T: (bool, bool, bool) = (false, true, true);
        let e = |a, (r, s, t): (bool, bool, bool), l| (a, r, s, t, l);
        let cases: Vec<Case> = vec![
            (
                "internalTrafficPolicy: Local, with empty endpoints",
                true,
                false,
                false,
                vec![],
                None,
                Some(&[]),
            ),
            (
                "internalTrafficPolicy: Local, but all endpoints are remote",
                true,
                false,
                false,
                vec![e("10.0.0.0", R, false), e("10.0.0.1", R, false)],
                None,
                Some(&[]),
            ),
            (
                "internalTrafficPolicy: Local, all endpoints are local",
                true,
                false,
                false,
                vec![e("10.0.0.0", R, true), e("10.0.0.1", R, true)],
                None,
                Some(&["10.0.0.0", "10.0.0.1"]),
            ),
            (
                "internalTrafficPolicy: Local, some endpoints are local",
                true,
                false,
                false,
                vec![e("10.0.0.0", R, true), e("10.0.0.1", R, false)],
                None,
                Some(&["10.0.0.0"]),
            ),
            (
                "Cluster traffic policy, endpoints not Ready",
                false,
                false,
                false,
                vec![e("10.0.0.0", NR, false), e("10.0.0.1", NR, false)],
                Some(&[]),
                None,
            ),
            (
                "Cluster traffic policy, some endpoints are Ready",
                false,
                false,
                false,
                vec![e("10.0.0.0", NR, false), e("10.0.0.1", R, false)],
                Some(&["10.0.0.1"]),
                None,
            ),
            (
                "Cluster traffic policy, all endpoints are terminating",
                false,
                false,
                false,
                vec![e("10.0.0.0", T, true), e("10.0.0.1", T, false)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                None,
            ),
            (
                "iTP: Local, eTP: Cluster, some endpoints local",
                true,
                false,
                true,
                vec![e("10.0.0.0", R, true), e("10.0.0.1", R, false)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                Some(&["10.0.0.0"]),
            ),
            (
                "iTP: Cluster, eTP: Local, some endpoints local",
                false,
                true,
                true,
                vec![e("10.0.0.0", R, true), e("10.0.0.1", R, false)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                Some(&["10.0.0.0"]),
            ),
            (
                "iTP: Local, eTP: Local, some endpoints local",
                true,
                true,
                true,
                vec![e("10.0.0.0", R, true), e("10.0.0.1", R, false)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                Some(&["10.0.0.0"]),
            ),
            (
                "iTP: Local, eTP: Local, all endpoints remote",
                true,
                true,
                true,
                vec![e("10.0.0.0", R, false), e("10.0.0.1", R, false)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                Some(&[]),
            ),
            (
                "iTP: Local, eTP: Local, all endpoints remote and terminating",
                true,
                true,
                true,
                vec![e("10.0.0.0", T, false), e("10.0.0.1", T, false)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                Some(&[]),
            ),
            (
                "iTP: Cluster, eTP: Local, with terminating endpoints",
                false,
                true,
                true,
                vec![
                    e("10.0.0.0", R, false),
                    e("10.0.0.1", NR, true),
                    e("10.0.0.2", T, true),
                    e("10.0.0.3", T, false),
                ],
                Some(&["10.0.0.0"]),
                Some(&["10.0.0.2"]),
            ),
            (
                "externalTrafficPolicy ignored if not externally accessible",
                false,
                true,
                false,
                vec![e("10.0.0.0", R, false), e("10.0.0.1", R, true)],
                Some(&["10.0.0.0", "10.0.0.1"]),
                None,
            ),
            (
                "no cluster endpoints for iTP:Local internal-only service",
                true,
                false,
                false,
                vec![e("10.0.0.0", R, false), e("10.0.0.1", R, true)],
                None,
                Some(&["10.0.0.1"]),
            ),
            (
                "empty endpoints when no service endpoints exist",
                false,
                false,
                false,
                vec![],
                Some(&[]),
                None,
            ),
            (
                "single endpoint not ready, not serving, not terminating",
                false,
                false,
                false,
                vec![e("10.0.0.0", NR, false)],
                Some(&[]),
                None,
            ),
        ];
        let vip: IpAddr = "172.30.0.1".parse().unwrap();
        let keys = |v: Option<BTreeMap<DestKey, u32>>| {
            v.map(|m| {
                m.into_keys()
                    .map(|k| k.addr.to_string())
                    .collect::<Vec<_>>()
            })
        };
        let want =
            |v: Option<&[&str]>| v.map(|a| a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        for (name, itp, etp, ext, eps, cluster, local) in cases {
            let mut m = PortEndpoints::new();
            for (a, r, s, t, l) in eps {
                m.insert(dk(a), ep(r, s, t, l));
            }
            let pol = |local: bool| {
                if local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                }
            };
            let p = PortPolicies {
                internal: pol(itp),
                external: pol(etp),
                externally_accessible: ext,
            };
            let c = categorize(&m, vip, &p);
            assert_eq!(keys(c.cluster), want(cluster), "{name}: cluster");
            assert_eq!(keys(c.local), want(local), "{name}: local");
        }
    }

    /// kube-proxy's ipvs proxier_test.go `TestOnlyLocalNodePorts` /
    /// `TestOnlyLocalExternalIPs` / `TestOnlyLocalLoadBalancing` and
    /// topology_test.go's "iTP: Local, eTP: Local, all endpoints remote":
    /// the IPVS `syncEndpoint` falls back to the cluster endpoints when a
    /// Local policy finds no local one, except for an internal-only port.
    #[test]
    fn test_only_local_falls_back_to_cluster_endpoints() {
        let vip: IpAddr = "10.20.30.41".parse().unwrap();
        let mut remote = PortEndpoints::new();
        remote.insert(dk("10.180.0.1"), ep(true, true, false, false));
        let mut mixed = remote.clone();
        mixed.insert(dk("10.180.2.1"), ep(true, true, false, true));
        let local = TrafficPolicy::Local;
        let ext = PortPolicies {
            internal: TrafficPolicy::Cluster,
            external: local,
            externally_accessible: true,
        };
        let got = |m: &PortEndpoints, p: &PortPolicies, pol| {
            select(m, vip, p, pol)
                .into_keys()
                .map(|k| k.addr.to_string())
                .collect::<Vec<_>>()
        };
        // eTP Local, a local endpoint: only it.
        assert_eq!(got(&mixed, &ext, local), ["10.180.2.1"]);
        // eTP Local, none local: every cluster endpoint, not an empty server.
        assert_eq!(got(&remote, &ext, local), ["10.180.0.1"]);
        // iTP Local on a NodePort Service: the ClusterIP falls back too.
        let itp_ext = PortPolicies {
            internal: local,
            external: TrafficPolicy::Cluster,
            externally_accessible: true,
        };
        assert_eq!(got(&remote, &itp_ext, local), ["10.180.0.1"]);
        // iTP Local, ClusterIP only: nothing (kube-proxy drops the traffic).
        let itp_only = PortPolicies {
            internal: local,
            ..Default::default()
        };
        assert!(got(&remote, &itp_only, local).is_empty());
        // The other family's endpoints never serve this VIP.
        let mut v6 = PortEndpoints::new();
        v6.insert(dk("fd00::1"), ep(true, true, false, true));
        assert!(got(&v6, &ext, local).is_empty());
    }

    /// kube-proxy's topology_test.go `TestCategorizeEndpoints`, the cases
    /// with topology hints (PreferSameTrafficDistribution is GA and locked on
    /// in v1.37, so its "feature gate disabled" case does not apply): (name,
    /// node, zone, iTP Local, eTP Local, endpoints (addr, zone hints, node
    /// hints, ready, local), want cluster, want local).
    #[test]
    fn test_categorize_endpoints_topology_hints() {
        type Ep<'a> = (&'a str, &'a [&'a str], &'a [&'a str], bool, bool);
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            bool,
            bool,
            Vec<Ep<'a>>,
            &'a [&'a str],
            Option<&'a [&'a str]>,
        );
        let four = |z: [&'static [&'static str]; 4], local: [bool; 4]| -> Vec<Ep<'static>> {
            ["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]
                .into_iter()
                .zip(z)
                .zip(local)
                .map(|((a, z), l)| (a, z, &[][..], true, l))
                .collect()
        };
        let abca: [&'static [&'static str]; 4] =
            [&["zone-a"], &["zone-b"], &["zone-c"], &["zone-a"]];
        let nodes: [&'static [&'static str]; 4] =
            [&["node-1"], &["node-2"], &["node-3"], &["node-4"]];
        let with_nodes = |mut v: Vec<Ep<'static>>| {
            for (e, n) in v.iter_mut().zip(nodes) {
                e.2 = n;
            }
            v
        };
        let none = [false; 4];
        let cases: Vec<Case> = vec![
            ("should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
                "n", Some("zone-a"), false, false, four(abca, none), &["10.1.2.3", "10.1.2.6"], None),
            ("externalTrafficPolicy: Local, topology ignored for Local endpoints",
                "n", Some("zone-a"), false, true, four(abca, [true, true, false, false]),
                &["10.1.2.3", "10.1.2.6"], Some(&["10.1.2.3", "10.1.2.4"])),
            ("internalTrafficPolicy: Local, topology ignored for Local endpoints",
                "n", Some("zone-a"), true, false, four(abca, [true, true, false, false]),
                &["10.1.2.3", "10.1.2.6"], Some(&["10.1.2.3", "10.1.2.4"])),
            ("empty node labels", "n", None, false, false,
                vec![("10.1.2.3", &["zone-a"], &[], true, false)], &["10.1.2.3"], None),
            ("node in different zone, no endpoint filtering", "n", Some("zone-b"), false, false,
                vec![("10.1.2.3", &["zone-a"], &[], true, false)], &["10.1.2.3"], None),
            ("unready endpoint", "n", Some("zone-a"), false, false,
                { let mut v = four(abca, none); v[3].3 = false; v }, &["10.1.2.3"], None),
            ("only unready endpoints in same zone (should not filter)", "n", Some("zone-a"), false, false,
                { let mut v = four(abca, none); v[0].3 = false; v[3].3 = false; v },
                &["10.1.2.4", "10.1.2.5"], None),
            ("missing hints, no filtering applied", "n", Some("zone-a"), false, false,
                four([&["zone-a"], &["zone-b"], &[], &["zone-a"]], none),
                &["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"], None),
            ("multiple hints per endpoint, filtering includes any endpoint with zone included",
                "n", Some("zone-c"), false, false,
                four([&["zone-a", "zone-b", "zone-c"], &["zone-b", "zone-c"], &["zone-b", "zone-d"], &["zone-c"]], none),
                &["10.1.2.3", "10.1.2.4", "10.1.2.6"], None),
            ("PreferSameNode available", "node-1", Some("zone-a"), false, false,
                with_nodes(four(abca, none)), &["10.1.2.3"], None),
            ("PreferSameNode ignored if some endpoints unhinted", "node-1", Some("zone-a"), false, false,
                { let mut v = with_nodes(four(abca, none)); v[1].1 = &[]; v[1].2 = &[]; v },
                &["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"], None),
            ("PreferSameNode falls back to PreferSameZone if no endpoint for node", "node-0", Some("zone-a"), false, false,
                with_nodes(four(abca, none)), &["10.1.2.3", "10.1.2.6"], None),
        ];
        let vip: IpAddr = "172.30.0.1".parse().unwrap();
        for (name, node, zone, itp, etp, eps, cluster, local) in cases {
            let mut m = PortEndpoints::new();
            for (a, zones, nodes, ready, is_local) in eps {
                let mut e = ep(ready, ready, false, is_local);
                let hint =
                    |v: &[&str], mine| Hint::of((!v.is_empty()).then(|| v.iter().copied()), mine);
                e.zone_hint = hint(zones, zone);
                e.node_hint = hint(nodes, Some(node));
                m.insert(dk(a), e);
            }
            let pol = |l: bool| {
                if l {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                }
            };
            let p = PortPolicies {
                internal: pol(itp),
                external: pol(etp),
                externally_accessible: itp || etp,
            };
            let c = categorize(&m, vip, &p);
            let keys = |v: Option<BTreeMap<DestKey, u32>>| {
                v.map(|m| {
                    m.into_keys()
                        .map(|k| k.addr.to_string())
                        .collect::<Vec<_>>()
                })
            };
            let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            assert_eq!(keys(c.cluster), Some(want(cluster)), "{name}: cluster");
            assert_eq!(keys(c.local), local.map(want), "{name}: local");
        }
    }
}
