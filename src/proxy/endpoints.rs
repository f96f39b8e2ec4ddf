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

/// Real servers for one virtual server: same family as the VIP, local ones
/// only under a Local policy, ready ones, or serving+terminating ones when
/// no ready one exists (KEP-1669 "ProxyTerminatingEndpoints").
pub fn select(
    endpoints: &PortEndpoints,
    vip: IpAddr,
    policy: TrafficPolicy,
) -> BTreeMap<DestKey, u32> {
    let local_only = policy == TrafficPolicy::Local;
    let candidates = || {
        endpoints
            .iter()
            .filter(move |(k, e)| k.addr.is_ipv4() == vip.is_ipv4() && (!local_only || e.local))
    };
    let ready: BTreeMap<DestKey, u32> = candidates()
        .filter(|(_, e)| e.ready)
        .map(|(k, _)| (*k, DEFAULT_WEIGHT))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates()
        .filter(|(_, e)| e.serving && e.terminating)
        .map(|(k, _)| (*k, DEFAULT_WEIGHT))
        .collect()
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
        let got = |eps: &PortEndpoints, p| select(eps, vip, p).into_keys().collect::<Vec<_>>();
        assert_eq!(got(&eps, TrafficPolicy::Cluster), vec![dk("10.244.0.1")]);
        // Local: the only local IPv4 endpoint is terminating but serving.
        assert_eq!(got(&eps, TrafficPolicy::Local), vec![dk("10.244.0.2")]);
        eps.insert(dk("10.244.0.2"), ep(false, false, true, true));
        assert!(got(&eps, TrafficPolicy::Local).is_empty());
    }
}
