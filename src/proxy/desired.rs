//! The desired IPVS table, computed from the whole Service / EndpointSlice /
//! Node caches and the config (pure: no I/O, no clock).
//!
//! Mirrors what kube-proxy's IPVS proxier programs (pkg/proxy/ipvs): one
//! virtual server per Service port on every ClusterIP, external IP,
//! LoadBalancer ingress IP and, for NodePorts, every allowed node address.
//! Everything is kept in `BTreeMap`s so the same inputs always give the same
//! table and the same plan.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::sys::rtnl::is_link_local_v6;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};

use super::endpoints::{port_endpoints, select, Here, PortEndpoints, PortPolicies, TrafficPolicy};
use super::model::{
    protocol_from_k8s, DesiredState, DesiredVs, FlowPort, HealthCheck, ObjectKey, Protocol, Scope,
    ServiceInputs, ServiceKey, VirtualServer, VsKind, SERVICE_PROXY_NAME_LABEL,
};
use super::objects::EndpointSlice;

/// kube-proxy's default for sessionAffinityConfig.clientIP.timeoutSeconds.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Inputs besides the caches.
#[derive(Debug, Clone)]
pub struct DesiredParams<'a> {
    /// This node's name (the EndpointSlice `nodeName` for Local policies).
    pub node_name: &'a str,
    /// The node's addresses ([`NodeAddresses::addresses`]): candidates
    /// for NodePorts, and what makes an external IP the node's own.
    pub node_addresses: &'a [IpAddr],
    /// The Node's primary IPs ([`primary_node_ips`]).
    pub primary_ips: &'a [IpAddr],
    /// kube-proxy's nodePortAddresses CIDRs ([`node_port_ips`]).
    pub node_port_addresses: &'a [IpNet],
    /// nodePortAddresses `primary`: the primary IPs only.
    pub node_port_primary: bool,
    pub scheduler: &'a str,
    /// The Node's `topology.kubernetes.io/zone` (zone topology hints).
    pub node_zone: Option<&'a str>,
}

/// The label kube-proxy reads the node's zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The Node's zone label, for topology hints.
pub fn node_zone(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .map(String::as_str)
        .filter(|z| !z.is_empty())
}

/// What the proxy knows of this node's addresses, from the host and the
/// Node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// Every address on the host's links but kube-ipvs0 (kube-proxy's ipvs
    /// `NodeIPs`), loopback and link-local included; where the data plane
    /// cannot list them, the Node object's InternalIP and ExternalIP
    /// addresses.
    pub addresses: Vec<IpAddr>,
    /// [`primary_node_ips`] of the Node object.
    pub primary: Vec<IpAddr>,
}

impl NodeAddresses {
    /// `host`: the data plane's listing (None: not known); `node`: the
    /// Node object, when the watch has it.
    pub fn new(host: Option<&[IpAddr]>, node: Option<&Node>) -> Self {
        let mut addresses = match (host, node) {
            (Some(h), _) => h.to_vec(),
            (None, Some(n)) => node_addresses(n),
            (None, None) => Vec::new(),
        };
        addresses.sort();
        addresses.dedup();
        NodeAddresses {
            addresses,
            primary: node.map(primary_node_ips).unwrap_or_default(),
        }
    }
}

/// The Node's primary IPs as kube-proxy finds them (`GetNodeHostIPs`):
/// the first InternalIP, else ExternalIP, and the first of the other
/// family after it; loopback ones left out (kube-proxy drops them from
/// `primary`).
pub fn primary_node_ips(node: &Node) -> Vec<IpAddr> {
    let listed = || {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
    };
    let by_type = |t: &'static str| {
        listed()
            .filter(move |a| a.type_ == t)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
    };
    let all: Vec<IpAddr> = by_type("InternalIP").chain(by_type("ExternalIP")).collect();
    let Some(first) = all.first().copied() else {
        return Vec::new();
    };
    let mut out = vec![first];
    out.extend(all.iter().find(|a| a.is_ipv6() != first.is_ipv6()));
    out.retain(|a| !a.is_loopback());
    out
}

/// Node addresses (InternalIP, ExternalIP) from the Node object.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Computes the full desired table. Services are taken in (namespace, name)
/// order; slices are grouped by their service-name label.
pub fn compute<S, E>(services: &[S], slices: &[E], params: &DesiredParams<'_>) -> DesiredState
where
    S: Borrow<Service>,
    E: Borrow<EndpointSlice>,
{
    let by_service = group_slices(slices);
    let np_ips = node_port_ips(params);
    let mut out = DesiredState::default();
    for svc in sorted_services(services) {
        let frag = fragment(svc, slices_of(&by_service, svc), params, &np_ips);
        merge(&mut out, frag);
    }
    out
}

/// The desired table kept between syncs and patched per Service: a
/// Service's part (its fragment) is recomputed only when the Service, one of
/// its slices or the node inputs change, so one endpoint change costs one
/// Service, not the table. The table is always equal to [`compute`] on the
/// same inputs (tests/ipvs_desired.rs and tests/ipvs_incremental.rs check
/// it through random changes).
#[derive(Debug, Default)]
pub struct DesiredCache {
    /// node name, node addresses, nodePortAddresses, scheduler, zone
    params: Option<ParamsSig>,
    entries: HashMap<ObjectKey, CacheEntry>,
    table: DesiredState,
    /// For a virtual server several Services' fragments have (a clash):
    /// all of them, sorted, the first one owning it (the clash rule of
    /// [`compute`]). Uncontested ones, nearly all, have no entry: their one
    /// claimant is the Service whose fragment holds them, and a map of every
    /// virtual server would cost megabytes at 10k Services.
    claims: HashMap<ServiceKey, Vec<ObjectKey>>,
    /// How many fragments bind each address: shared ClusterIPs/external IPs
    /// stay bound until the last Service wanting them goes.
    bind_refs: HashMap<IpAddr, u32>,
    /// Marks the entries a full pass has seen.
    generation: u64,
    /// Changes whenever the table may have changed (never repeats, also
    /// across a reset), so derived renderings can be skipped when it did not.
    version: u64,
}

type ParamsSig = (
    String,
    Vec<IpAddr>,
    Vec<IpAddr>,
    Vec<IpNet>,
    bool,
    String,
    Option<String>,
);
/// A Service's resourceVersion and its slices' `name=resourceVersion`.
type Stamp = (String, Vec<String>);

fn params_sig(params: &DesiredParams<'_>) -> ParamsSig {
    (
        params.node_name.to_string(),
        params.node_addresses.to_vec(),
        params.primary_ips.to_vec(),
        params.node_port_addresses.to_vec(),
        params.node_port_primary,
        params.scheduler.to_string(),
        params.node_zone.map(str::to_string),
    )
}

#[derive(Debug)]
struct CacheEntry {
    /// None: an object without resourceVersion, recomputed every full pass.
    stamp: Option<Stamp>,
    frag: DesiredState,
    generation: u64,
}

fn stamp_of(svc: &Service, slices: &[&EndpointSlice]) -> Option<Stamp> {
    let rv = svc.metadata.resource_version.clone()?;
    let mut v: Vec<String> = slices
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s.metadata.name.as_deref().unwrap_or(""),
                s.metadata.resource_version.as_deref().unwrap_or("")
            )
        })
        .collect();
    v.sort();
    Some((rv, v))
}

impl DesiredCache {
    /// The table as of the last `compute` / `compute_changed`.
    pub fn table(&self) -> &DesiredState {
        &self.table
    }

    /// A number that differs whenever [`DesiredCache::table`] may differ.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the table was computed with these node inputs and settings;
    /// if not only a full [`DesiredCache::compute`] can bring it up to date.
    pub fn matches(&self, params: &DesiredParams<'_>) -> bool {
        self.params.as_ref() == Some(&params_sig(params))
    }

    /// Brings the table up to date with the whole caches (every Service
    /// checked, unchanged ones kept) and returns it.
    pub fn compute<S, E>(
        &mut self,
        services: &[S],
        slices: &[E],
        params: &DesiredParams<'_>,
    ) -> &DesiredState
    where
        S: Borrow<Service>,
        E: Borrow<EndpointSlice>,
    {
        if !self.matches(params) {
            *self = DesiredCache {
                params: Some(params_sig(params)),
                version: self.version + 1,
                ..Default::default()
            };
        }
        self.generation += 1;
        let generation = self.generation;
        let by_service = group_slices(slices);
        let np_ips = node_port_ips(params);
        for svc in services {
            let svc: &Service = svc.borrow();
            let svc_slices = slices_of(&by_service, svc);
            let key = ObjectKey::of(&svc.metadata);
            let stamp = stamp_of(svc, svc_slices);
            if let Some(e) = self.entries.get_mut(&key) {
                if stamp.is_some() && e.stamp == stamp {
                    e.generation = generation;
                    continue;
                }
            }
            let frag = fragment(svc, svc_slices, params, &np_ips);
            self.replace(&key, Some((stamp, frag)), None);
        }
        // Deleted Services: entries no Service of this pass refreshed.
        let gone: Vec<ObjectKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.generation != generation)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.replace(&k, None, None);
        }
        &self.table
    }

    /// Patches the table for the given Services only and returns what that
    /// can have changed. None when the node inputs or settings changed
    /// since the last pass: then only [`DesiredCache::compute`] will do.
    pub fn compute_changed(
        &mut self,
        changed: &[ServiceInputs],
        params: &DesiredParams<'_>,
    ) -> Option<Scope> {
        if !self.matches(params) {
            return None;
        }
        let np_ips = node_port_ips(params);
        let mut scope = Scope::default();
        for c in changed {
            let mut slices: Vec<&EndpointSlice> = c.slices.iter().map(|s| &**s).collect();
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let new = c.service.as_deref().map(|svc| {
                let stamp = stamp_of(svc, &slices);
                (stamp, fragment(svc, &slices, params, &np_ips))
            });
            self.replace(&c.key, new, Some(&mut scope));
        }
        Some(scope)
    }

    /// Swaps one Service's fragment for `new` (None: the Service is gone),
    /// keeping the table, the claims and the address counts consistent.
    fn replace(
        &mut self,
        key: &ObjectKey,
        new: Option<(Option<Stamp>, DesiredState)>,
        mut scope: Option<&mut Scope>,
    ) {
        self.version += 1;
        if let Some(old) = self.entries.remove(key) {
            if let Some(s) = scope.as_deref_mut() {
                s.add(&old.frag);
            }
            self.withdraw(key, &old.frag);
        }
        let Some((stamp, frag)) = new else {
            return;
        };
        if let Some(s) = scope {
            s.add(&frag);
        }
        self.claim(key, &frag);
        self.entries.insert(
            key.clone(),
            CacheEntry {
                stamp,
                frag,
                generation: self.generation,
            },
        );
    }

    /// Takes `key`'s old fragment out of the table: what only it wanted
    /// goes, a virtual server it owned on a clash passes to the next
    /// claimant, a shared address stays bound while others want it.
    fn withdraw(&mut self, key: &ObjectKey, frag: &DesiredState) {
        for vk in frag.virtual_servers.keys() {
            let Some(claimants) = self.claims.get_mut(vk) else {
                // Its only claimant goes.
                self.table.virtual_servers.remove(vk);
                continue;
            };
            let Ok(pos) = claimants.binary_search(key) else {
                continue;
            };
            claimants.remove(pos);
            let Some(next) = claimants.first() else {
                self.claims.remove(vk);
                self.table.virtual_servers.remove(vk);
                continue;
            };
            // The owner went: the next Service in order takes over.
            if pos == 0 {
                if let Some(nv) = self
                    .entries
                    .get(next)
                    .and_then(|e| e.frag.virtual_servers.get(vk))
                {
                    self.table.virtual_servers.insert(*vk, Arc::clone(nv));
                }
            }
            if claimants.len() == 1 {
                self.claims.remove(vk);
            }
        }
        for a in &frag.bind_addresses {
            if let Some(n) = self.bind_refs.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.bind_refs.remove(a);
                    self.table.bind_addresses.remove(a);
                }
            }
        }
        self.table.services -= frag.services;
        for k in frag.health_checks.keys() {
            self.table.health_checks.remove(k);
        }
        for k in frag.flow_ports.keys() {
            self.table.flow_ports.remove(k);
        }
    }

    /// Puts `key`'s new fragment in the table: a virtual server another
    /// Service holds too becomes a clash, owned by the first in order.
    fn claim(&mut self, key: &ObjectKey, frag: &DesiredState) {
        for (vk, v) in &frag.virtual_servers {
            if let Some(claimants) = self.claims.get_mut(vk) {
                let pos = match claimants.binary_search(key) {
                    Ok(p) | Err(p) => p,
                };
                claimants.insert(pos, key.clone());
                if pos == 0 {
                    self.table.virtual_servers.insert(*vk, Arc::clone(v));
                }
                continue;
            }
            let owner = self
                .table
                .virtual_servers
                .get(vk)
                .and_then(|cur| self.owner_of(vk, cur));
            match owner {
                // A new clash: both claimants are recorded from now on.
                Some(owner) => {
                    let mine = owner > *key;
                    let mut claimants = vec![owner, key.clone()];
                    claimants.sort();
                    self.claims.insert(*vk, claimants);
                    if mine {
                        self.table.virtual_servers.insert(*vk, Arc::clone(v));
                    }
                }
                None => {
                    self.table.virtual_servers.insert(*vk, Arc::clone(v));
                }
            }
        }
        for a in &frag.bind_addresses {
            *self.bind_refs.entry(*a).or_default() += 1;
            self.table.bind_addresses.insert(*a);
        }
        self.table.services += frag.services;
        self.table
            .health_checks
            .extend(frag.health_checks.iter().map(|(k, v)| (k.clone(), *v)));
        self.table.flow_ports.extend(
            frag.flow_ports
                .iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v))),
        );
    }
}

impl DesiredCache {
    /// The Service whose fragment put `current` in the table for `vk`.
    fn owner_of(&self, vk: &ServiceKey, current: &Arc<DesiredVs>) -> Option<ObjectKey> {
        let holds = |e: &CacheEntry| {
            e.frag
                .virtual_servers
                .get(vk)
                .is_some_and(|v| Arc::ptr_eq(v, current))
        };
        // Its label names it ("namespace/name:port": a namespace has no
        // '/', a Service name no ':'); the scan only guards odd names.
        if let Some((ns, rest)) = current.service.split_once('/') {
            if let Some((name, _)) = rest.split_once(':') {
                let k = ObjectKey::new(ns, name);
                if self.entries.get(&k).is_some_and(holds) {
                    return Some(k);
                }
            }
        }
        self.entries
            .iter()
            .find(|(_, e)| holds(e))
            .map(|(k, _)| k.clone())
    }
}

fn group_slices<E: Borrow<EndpointSlice>>(
    slices: &[E],
) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let s: &EndpointSlice = s.borrow();
        let Some(name) = s.service_name.as_deref() else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        by_service.entry((ns, name)).or_default().push(s);
    }
    // Slice order must not matter (merging is order-sensitive on clashes).
    for v in by_service.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    by_service
}

fn slices_of<'a>(
    by_service: &'a HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    svc: &'a Service,
) -> &'a [&'a EndpointSlice] {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    by_service
        .get(&(ns, name))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The node addresses NodePorts are served on, as kube-proxy's ipvs mode
/// picks them (pkg/proxy/util NodePortAddresses, ipvs `NodeIPs`): with
/// nodePortAddresses unset, every node address but loopback and IPv6
/// link-local; with CIDRs, the node addresses inside one (loopback too, if
/// asked for); with `primary`, the primary IPs that are node addresses.
pub fn node_port_ips(params: &DesiredParams<'_>) -> Vec<IpAddr> {
    params
        .node_addresses
        .iter()
        .copied()
        .filter(|a| {
            if params.node_port_primary {
                params.primary_ips.contains(a)
            } else if params.node_port_addresses.is_empty() {
                !a.is_loopback() && !is_link_local_v6(a)
            } else {
                params.node_port_addresses.iter().any(|n| n.contains(a))
            }
        })
        .collect()
}

fn sorted_services<S: Borrow<Service>>(services: &[S]) -> Vec<&Service> {
    let mut sorted: Vec<&Service> = services.iter().map(|s| s.borrow()).collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    sorted
}

/// One Service's part of the table.
fn fragment(
    svc: &Service,
    slices: &[&EndpointSlice],
    params: &DesiredParams<'_>,
    np_ips: &[IpAddr],
) -> DesiredState {
    let mut frag = DesiredState::default();
    if add_service(&mut frag, svc, slices, params, np_ips) {
        frag.services = 1;
    }
    frag
}

/// First writer wins on a clash (two Services claiming one external IP and
/// port): deterministic since Services are merged in sorted order.
fn merge(out: &mut DesiredState, frag: DesiredState) {
    for (k, v) in frag.virtual_servers {
        out.virtual_servers.entry(k).or_insert(v);
    }
    out.bind_addresses.extend(frag.bind_addresses);
    out.services += frag.services;
    out.health_checks.extend(frag.health_checks);
    out.flow_ports.extend(frag.flow_ports);
}

/// What a Service's spec says about the addresses it is reachable on, read
/// once for all its ports.
struct ServiceAddresses {
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    has_node_port: bool,
    /// sessionAffinity ClientIP: the persistence timeout.
    persistent: Option<u32>,
    external_policy: TrafficPolicy,
    internal_policy: TrafficPolicy,
    /// loadBalancerSourceRanges; empty = everyone.
    source_ranges: Vec<IpNet>,
    /// kube-proxy's `NeedsHealthCheck`: a LoadBalancer with
    /// externalTrafficPolicy Local, and its healthCheckNodePort.
    health_check_port: Option<u16>,
}

impl ServiceAddresses {
    /// Whether the Service has a ClusterIP of `ip`'s family.
    fn has_family(&self, ip: IpAddr) -> bool {
        self.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4())
    }

    /// None for what kube-proxy's ShouldSkipService skips: no spec,
    /// ExternalName, headless (None) or not yet allocated (""); and what
    /// kube-proxy never sees: a Service labelled for another proxy.
    fn of(svc: &Service) -> Option<Self> {
        let labels = svc.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
            return None;
        }
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let parse_all = |v: Option<&Vec<String>>| -> Vec<IpAddr> {
            v.into_iter()
                .flatten()
                .filter_map(|s| s.parse().ok())
                .collect()
        };
        let cluster_ips = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
            Some(ips) => parse_all(Some(ips)),
            None => spec
                .cluster_ip
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        if cluster_ips.is_empty() {
            return None;
        }
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
        // kube-proxy runs one proxier per family, and a Service exists for a
        // family's proxier only with a ClusterIP of that family; that proxier
        // drops external and LoadBalancer IPs of the other family. So a
        // single-stack Service gets nothing on the other family.
        let ips = |v: Vec<IpAddr>| -> Vec<IpAddr> {
            v.into_iter()
                .filter(|ip| cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()))
                .collect()
        };
        let external_ips = ips(parse_all(spec.external_ips.as_ref()));
        let lb_ips = if is_lb {
            ips(lb_ingress_ips(svc))
        } else {
            Vec::new()
        };
        Some(ServiceAddresses {
            cluster_ips,
            external_ips,
            lb_ips,
            has_node_port: matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")),
            persistent: (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            }),
            external_policy: TrafficPolicy::from_k8s(spec.external_traffic_policy.as_deref()),
            internal_policy: TrafficPolicy::from_k8s(spec.internal_traffic_policy.as_deref()),
            health_check_port: spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| {
                    *p != 0
                        && is_lb
                        && TrafficPolicy::from_k8s(spec.external_traffic_policy.as_deref())
                            == TrafficPolicy::Local
                }),
            source_ranges: spec
                .load_balancer_source_ranges
                .iter()
                .flatten()
                .filter_map(|r| parse_net(r.trim()))
                .collect(),
        })
    }
}

/// The LoadBalancer ingress IPs captured locally. With ipMode Proxy the
/// load balancer sends to the node, not to the VIP, so kube-proxy does not
/// capture the VIP.
fn lb_ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref().and_then(|s| s.parse().ok()))
        .collect()
}

/// Adds one Service's virtual servers and bound addresses to `out`;
/// false if it has none (skipped, or no port lbd proxies).
fn add_service(
    out: &mut DesiredState,
    svc: &Service,
    slices: &[&EndpointSlice],
    params: &DesiredParams<'_>,
    node_port_ips: &[IpAddr],
) -> bool {
    let Some(addrs) = ServiceAddresses::of(svc) else {
        return false;
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let mut added = false;
    // Counted by address, as kube-proxy does: 10.0.0.1:80 and
    // 10.0.0.1:443 are one endpoint; terminating ones are not ready.
    let mut local_ready: BTreeSet<IpAddr> = BTreeSet::new();
    let mut flow_ports = Vec::new();
    for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
        let Some(proto) = protocol_from_k8s(port.protocol.as_deref()) else {
            continue;
        };
        let Some(svc_port) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            continue;
        };
        let node_port = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0 && addrs.has_node_port);
        let ctx = PortContext {
            addrs: &addrs,
            node_port,
            proto,
            label: format!("{ns}/{name}:{}", port.name.as_deref().unwrap_or("")),
            endpoints: port_endpoints(
                slices,
                port,
                proto,
                Here {
                    node_name: params.node_name,
                    zone: params.node_zone,
                },
            ),
            scheduler: params.scheduler,
        };
        local_ready.extend(
            ctx.endpoints
                .iter()
                .filter(|(_, e)| e.local && e.ready)
                .map(|(k, _)| k.addr),
        );
        if matches!(proto, Protocol::Udp | Protocol::Sctp) {
            flow_ports.push(FlowPort {
                protocol: proto,
                port: svc_port,
                addresses: addrs
                    .cluster_ips
                    .iter()
                    .chain(&addrs.external_ips)
                    .chain(&addrs.lb_ips)
                    .copied()
                    .collect(),
                node_port: ctx.node_port,
                serving: ctx
                    .endpoints
                    .iter()
                    .filter(|(_, e)| e.serving)
                    .map(|(k, _)| k.addr)
                    .collect(),
            });
        }
        for (ips, kind, policy) in [
            (&addrs.cluster_ips, VsKind::ClusterIp, addrs.internal_policy),
            (
                &addrs.external_ips,
                VsKind::ExternalIp,
                addrs.external_policy,
            ),
            (&addrs.lb_ips, VsKind::LoadBalancer, addrs.external_policy),
        ] {
            for ip in ips {
                ctx.add(out, *ip, svc_port, kind, policy);
                // An external or LoadBalancer IP that is already one of the
                // node's addresses is not bound to kube-ipvs0, and so not in
                // the service-address filter either: binding it would make
                // the filter refuse the node's other ports on it (SSH,
                // :6443). kube-proxy ipvs: shouldBind = !nodeAddressSet.Has.
                let node_owned = kind != VsKind::ClusterIp && params.node_addresses.contains(ip);
                if !node_owned {
                    out.bind_addresses.insert(*ip);
                }
            }
        }
        if let Some(np) = ctx.node_port {
            let of_family = node_port_ips.iter().filter(|ip| addrs.has_family(**ip));
            for ip in of_family {
                ctx.add(out, *ip, np, VsKind::NodePort, addrs.external_policy);
            }
        }
        added = true;
    }
    if !flow_ports.is_empty() {
        out.flow_ports
            .insert(ObjectKey::new(ns, name), Arc::new(flow_ports));
    }
    if let Some(port) = addrs.health_check_port.filter(|_| added) {
        out.health_checks.insert(
            ObjectKey::new(ns, name),
            HealthCheck {
                port,
                ipv4: addrs.cluster_ips.iter().any(IpAddr::is_ipv4),
                ipv6: addrs.cluster_ips.iter().any(IpAddr::is_ipv6),
                local_v4: local_ready.iter().filter(|a| a.is_ipv4()).count(),
                local_v6: local_ready.iter().filter(|a| a.is_ipv6()).count(),
            },
        );
    }
    added
}

/// One Service port, as each of its virtual servers is built from it.
struct PortContext<'a> {
    addrs: &'a ServiceAddresses,
    /// The port's NodePort, if its Service type has them.
    node_port: Option<u16>,
    proto: Protocol,
    /// `namespace/name:port-name`.
    label: String,
    endpoints: PortEndpoints,
    scheduler: &'a str,
}

impl PortContext<'_> {
    /// The port's policies as `addr`'s family sees them: kube-proxy's
    /// proxier of that family only knows its family's external and
    /// LoadBalancer IPs.
    fn policies(&self, addr: IpAddr) -> PortPolicies {
        let same = |ips: &[IpAddr]| ips.iter().any(|ip| ip.is_ipv4() == addr.is_ipv4());
        PortPolicies {
            internal: self.addrs.internal_policy,
            external: self.addrs.external_policy,
            externally_accessible: self.node_port.is_some()
                || same(&self.addrs.external_ips)
                || same(&self.addrs.lb_ips),
        }
    }

    /// First writer wins on a clash (two Services claiming one external IP
    /// and port): deterministic since Services are sorted.
    fn add(
        &self,
        out: &mut DesiredState,
        addr: IpAddr,
        port: u16,
        kind: VsKind,
        policy: TrafficPolicy,
    ) {
        let key = ServiceKey {
            addr,
            port,
            protocol: self.proto,
        };
        out.virtual_servers.entry(key).or_insert_with(|| {
            let mut vs = VirtualServer::new(addr, port, self.proto, self.scheduler);
            vs.persistent = self.addrs.persistent;
            Arc::new(DesiredVs {
                vs,
                kind,
                service: self.label.clone(),
                local_only: policy == TrafficPolicy::Local,
                source_ranges: if kind == VsKind::LoadBalancer {
                    self.addrs.source_ranges.clone()
                } else {
                    Vec::new()
                },
                real_servers: select(&self.endpoints, addr, &self.policies(addr), policy),
            })
        });
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}
