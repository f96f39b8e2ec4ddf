//! Which endpoints serve a Service port (pure): the slices' endpoints
//! merged per address, their conditions (ready, serving, terminating), the
//! traffic policies and locality. kube-proxy's `pkg/proxy/topology.go`
//! decides the same; topology hints are not read yet (all endpoints of the
//! right family and locality are used).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{protocol_from_k8s, DestKey, Protocol};

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
}

/// Endpoints of one Service port: address:port -> conditions.
pub type PortEndpoints = BTreeMap<DestKey, Endpoint>;

/// Merges every slice's endpoints for one Service port. The endpoint port
/// is the slice port with the Service port's name (and protocol).
pub fn port_endpoints(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    proto: Protocol,
    node_name: &str,
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
            let info = Endpoint {
                ready: ready && !terminating,
                serving,
                terminating,
                local: ep.node_name.as_deref() == Some(node_name),
            };
            for a in &ep.addresses {
                let Ok(addr) = a.parse::<IpAddr>() else {
                    continue;
                };
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
    // Ready ones, else serving+terminating ones (KEP-1669).
    let pick = |only_local: bool| -> BTreeMap<DestKey, u32> {
        let of = || family().filter(move |(_, e)| !only_local || e.local);
        let ready: BTreeMap<DestKey, u32> = of()
            .filter(|(_, e)| e.ready)
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
}
