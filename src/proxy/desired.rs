//! The desired IPVS table, computed from the whole Service / EndpointSlice /
//! Node caches and the config (pure: no I/O, no clock).
//!
//! Mirrors what kube-proxy's IPVS proxier programs (pkg/proxy/ipvs): one
//! virtual server per Service port on every ClusterIP, external IP,
//! LoadBalancer ingress IP and, for NodePorts, every allowed node address.
//! Everything is kept in `BTreeMap`s so the same inputs always give the same
//! table and the same plan.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Label that ties an EndpointSlice to its Service (discovery.k8s.io/v1).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default for sessionAffinityConfig.clientIP.timeoutSeconds.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// Weight of a serving real server; draining ones get 0.
pub const DEFAULT_WEIGHT: u32 = 1;

pub use super::model::{DestKey, Protocol, ServiceKey, VirtualServer};

/// Kubernetes spelling of a Service protocol; absent means TCP.
pub fn protocol_from_k8s(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Which kind of Service address a virtual server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VsKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVs {
    /// The virtual server as the kernel should hold it.
    pub vs: VirtualServer,
    pub kind: VsKind,
    /// `namespace/name:port-name`, for logs and metrics.
    pub service: String,
    /// The traffic policy of this address is Local (external or internal).
    pub local_only: bool,
    /// LoadBalancer only: allowed client ranges; empty = everyone.
    pub source_ranges: Vec<IpNet>,
    /// Real servers with their weight.
    pub real_servers: BTreeMap<DestKey, u32>,
}

/// The whole table lbd wants in the kernel plus what goes on kube-ipvs0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Shared with the per-Service cache: a sync clones pointers, not tables.
    pub virtual_servers: BTreeMap<ServiceKey, Arc<DesiredVs>>,
    /// ClusterIPs, external IPs and LoadBalancer IPs bound on kube-ipvs0 so
    /// the kernel delivers their packets locally, where IPVS picks them up.
    pub bind_addresses: BTreeSet<IpAddr>,
    /// Services that contributed at least one virtual server.
    pub services: usize,
}

impl DesiredState {
    pub fn real_server_count(&self) -> usize {
        self.virtual_servers
            .values()
            .map(|v| v.real_servers.len())
            .sum()
    }

    /// Every address used by a desired virtual server (bound or node ones).
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.virtual_servers.keys().map(|k| k.addr).collect()
    }
}

/// Inputs besides the caches.
#[derive(Debug, Clone)]
pub struct DesiredParams<'a> {
    /// This node's name (the EndpointSlice `nodeName` for Local policies).
    pub node_name: &'a str,
    /// Candidate addresses for NodePorts (the node's addresses).
    pub node_addresses: &'a [IpAddr],
    /// kube-proxy's nodePortAddresses; empty = every node address.
    pub node_port_addresses: &'a [IpNet],
    pub scheduler: &'a str,
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

/// One endpoint address after merging the slices of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointInfo {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// Endpoints of one Service port: address:port -> conditions.
type PortEndpoints = BTreeMap<DestKey, EndpointInfo>;

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

/// A Kubernetes object's identity within the cluster: a Service's, or an
/// EndpointSlice's. Ordered like [`compute`] takes Services, so "first
/// writer wins" means the same thing everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Self {
        ObjectKey::new(
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or(""),
        )
    }

    /// The Service an EndpointSlice belongs to (its service-name label).
    pub fn service_of(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some(ObjectKey::new(
            slice.metadata.namespace.as_deref().unwrap_or(""),
            name,
        ))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The current inputs of one Service that changed: the Service itself
/// (None: deleted or not yet created) and every slice labelled for it.
#[derive(Debug, Clone)]
pub struct ServiceInputs {
    pub key: ObjectKey,
    pub service: Option<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
}

/// What a set of Service changes can have changed in the table: the
/// virtual servers and kube-ipvs0 addresses those Services wanted before or
/// want now. Planning only these is enough when everything else already
/// matches the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub virtual_servers: BTreeSet<ServiceKey>,
    pub addresses: BTreeSet<IpAddr>,
}

impl Scope {
    fn add(&mut self, frag: &DesiredState) {
        self.virtual_servers
            .extend(frag.virtual_servers.keys().copied());
        self.addresses.extend(frag.bind_addresses.iter().copied());
    }
}

/// The desired table kept between syncs and patched per Service: a
/// Service's part (its fragment) is recomputed only when the Service, one of
/// its slices or the node inputs change, so one endpoint change costs one
/// Service, not the table. The table is always equal to [`compute`] on the
/// same inputs (tests/ipvs_desired.rs and tests/ipvs_incremental.rs check
/// it through random changes).
#[derive(Debug, Default)]
pub struct DesiredCache {
    /// node name, node addresses, nodePortAddresses, scheduler
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

type ParamsSig = (String, Vec<IpAddr>, Vec<IpNet>, String);
/// A Service's resourceVersion and its slices' `name=resourceVersion`.
type Stamp = (String, Vec<String>);

fn params_sig(params: &DesiredParams<'_>) -> ParamsSig {
    (
        params.node_name.to_string(),
        params.node_addresses.to_vec(),
        params.node_port_addresses.to_vec(),
        params.scheduler.to_string(),
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
        let old = self.entries.remove(key);
        if let Some(old) = &old {
            if let Some(s) = scope.as_deref_mut() {
                s.add(&old.frag);
            }
            for vk in old.frag.virtual_servers.keys() {
                let Some(claimants) = self.claims.get_mut(vk) else {
                    // Its only claimant goes.
                    self.table.virtual_servers.remove(vk);
                    continue;
                };
                let Ok(pos) = claimants.binary_search(key) else {
                    continue;
                };
                claimants.remove(pos);
                match claimants.first() {
                    None => {
                        self.claims.remove(vk);
                        self.table.virtual_servers.remove(vk);
                    }
                    Some(next) => {
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
                }
            }
            for a in &old.frag.bind_addresses {
                if let Some(n) = self.bind_refs.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        self.bind_refs.remove(a);
                        self.table.bind_addresses.remove(a);
                    }
                }
            }
            self.table.services -= old.frag.services;
        }
        let Some((stamp, frag)) = new else {
            return;
        };
        if let Some(s) = scope {
            s.add(&frag);
        }
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
        self.entries.insert(
            key.clone(),
            CacheEntry {
                stamp,
                frag,
                generation: self.generation,
            },
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
        let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        by_service.entry((ns, name.as_str())).or_default().push(s);
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

/// The node addresses NodePorts are served on.
pub fn node_port_ips(params: &DesiredParams<'_>) -> Vec<IpAddr> {
    params
        .node_addresses
        .iter()
        .copied()
        .filter(|a| {
            params.node_port_addresses.is_empty()
                || params.node_port_addresses.iter().any(|n| n.contains(a))
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
}

fn add_service(
    out: &mut DesiredState,
    svc: &Service,
    slices: &[&EndpointSlice],
    params: &DesiredParams<'_>,
    node_port_ips: &[IpAddr],
) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    // Headless (None) or not yet allocated (""): nothing to proxy, as in
    // kube-proxy's ShouldSkipService.
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
        Some(ips) => cluster_ips.extend(ips.iter().filter_map(|s| s.parse::<IpAddr>().ok())),
        None => cluster_ips.extend(
            spec.cluster_ip
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok()),
        ),
    }
    if cluster_ips.is_empty() {
        return false;
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");

    let persistent_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| parse_net(r.trim()))
        .collect();

    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    let lb_ips: Vec<IpAddr> = if is_lb {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            // ipMode Proxy: the load balancer sends to the node, not to the
            // VIP, so kube-proxy does not capture the VIP locally.
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref().and_then(|s| s.parse().ok()))
            .collect()
    } else {
        Vec::new()
    };
    let has_node_port = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));

    let mut added = false;
    for port in spec.ports.iter().flatten() {
        let Some(proto) = protocol_from_k8s(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            continue;
        };
        if svc_port == 0 {
            continue;
        }
        let endpoints = port_endpoints(slices, port, proto, params.node_name);
        let port_label = format!("{ns}/{name}:{}", port.name.as_deref().unwrap_or(""));
        let mut add = |addr: IpAddr, port_no: u16, kind: VsKind, local_only: bool| {
            let mut vs = VirtualServer::new(addr, port_no, proto, params.scheduler);
            vs.persistent = persistent_timeout;
            let vs = DesiredVs {
                vs,
                kind,
                service: port_label.clone(),
                local_only,
                source_ranges: if kind == VsKind::LoadBalancer {
                    source_ranges.clone()
                } else {
                    Vec::new()
                },
                real_servers: select(&endpoints, addr, local_only),
            };
            // First writer wins on a clash (two Services claiming one
            // external IP and port): deterministic since Services are sorted.
            out.virtual_servers
                .entry(ServiceKey {
                    addr,
                    port: port_no,
                    protocol: proto,
                })
                .or_insert_with(|| Arc::new(vs));
        };
        for ip in &cluster_ips {
            add(*ip, svc_port, VsKind::ClusterIp, internal_local);
            out.bind_addresses.insert(*ip);
        }
        for ip in &external_ips {
            add(*ip, svc_port, VsKind::ExternalIp, external_local);
            out.bind_addresses.insert(*ip);
        }
        for ip in &lb_ips {
            add(*ip, svc_port, VsKind::LoadBalancer, external_local);
            out.bind_addresses.insert(*ip);
        }
        if has_node_port {
            if let Some(np) = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            {
                for ip in node_port_ips {
                    add(*ip, np, VsKind::NodePort, external_local);
                }
            }
        }
        added = true;
    }
    added
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Merges every slice's endpoints for one Service port. The endpoint port
/// is the slice port with the Service port's name (and protocol).
fn port_endpoints(
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
            let info = EndpointInfo {
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
fn select(endpoints: &PortEndpoints, vip: IpAddr, local_only: bool) -> BTreeMap<DestKey, u32> {
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
