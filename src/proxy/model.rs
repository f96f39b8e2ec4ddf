//! Services and endpoints as lbd sees them, and the table they become:
//! plain values shared by the desired state, the plan, the engine and the
//! data planes. Pure: no I/O, no netlink types.
//!
//! The table is the IPVS one, and the engine's vocabulary for every data
//! plane: virtual servers keyed by (address, port, protocol) for
//! TCP/UDP/SCTP, with their real servers. Firewall-mark services are never
//! created by lbd, so the kernel handle does not report them (they are
//! foreign by construction and therefore never touched).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::objects::EndpointSlice;

/// Transport protocol of a virtual server (`IPVS_SVC_ATTR_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number as carried on the wire (IPPROTO_*).
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Identity of a virtual server in the kernel: what NEW/DEL/GET match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    /// `TCP 10.96.0.1:443` / `TCP [fd00::1]:443`, like `ipvsadm -Ln`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{} {}:{}", self.protocol, a, self.port),
            IpAddr::V6(a) => write!(f, "{} [{}]:{}", self.protocol, a, self.port),
        }
    }
}

/// Service flags other than "persistent" (carried by
/// [`VirtualServer::persistent`]) and "hashed" (kernel-internal state that a
/// dump reports but a request never sets). Bits as in linux/ip_vs.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    /// IP_VS_SVC_F_PERSISTENT: modelled as `persistent: Some(_)`.
    pub const PERSISTENT: u32 = 0x0001;
    /// IP_VS_SVC_F_HASHED: read-only kernel state, stripped when listing.
    pub const HASHED: u32 = 0x0002;
    /// IP_VS_SVC_F_ONEPACKET: one-packet scheduling (UDP).
    pub const ONE_PACKET: u32 = 0x0004;
    /// IP_VS_SVC_F_SCHED1..3: scheduler flags (sh-fallback, sh-port, mh-*).
    pub const SCHED1: u32 = 0x0008;
    pub const SCHED2: u32 = 0x0010;
    pub const SCHED3: u32 = 0x0020;
    /// The bits lbd may set in a request.
    pub const SETTABLE: u32 = Self::ONE_PACKET | Self::SCHED1 | Self::SCHED2 | Self::SCHED3;
}

/// A virtual server (IPVS "service") with its configuration.
///
/// `PartialEq` compares configuration only; every field is configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VirtualServer {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Scheduler name as the kernel knows it: "rr", "wrr", "lc", "sh", ...
    pub scheduler: String,
    /// Persistence timeout in seconds (Service sessionAffinity ClientIP);
    /// `None` when not persistent.
    pub persistent: Option<u32>,
    /// Persistence granularity as a prefix length: 32 (IPv4) or 128 (IPv6)
    /// means per client address. The kernel stores an IPv4 netmask and an
    /// IPv6 prefix length; the codec converts.
    pub netmask: u8,
    pub flags: ServiceFlags,
}

impl VirtualServer {
    /// A non-persistent service with a host-sized netmask and no flags.
    pub fn new(addr: IpAddr, port: u16, protocol: Protocol, scheduler: &str) -> Self {
        VirtualServer {
            addr,
            port,
            protocol,
            scheduler: scheduler.to_string(),
            persistent: None,
            netmask: full_prefix(addr),
            flags: ServiceFlags::default(),
        }
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: self.addr,
            port: self.port,
            protocol: self.protocol,
        }
    }
}

/// 32 for IPv4, 128 for IPv6.
pub fn full_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// How packets reach a real server (IP_VS_CONN_F_FWD_MASK values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum FwdMethod {
    /// NAT (what kube-proxy uses): IP_VS_CONN_F_MASQ = 0.
    #[default]
    Masq,
    /// IP_VS_CONN_F_LOCALNODE = 1 (kernel-chosen for local addresses).
    Local,
    /// IP-in-IP tunnel: IP_VS_CONN_F_TUNNEL = 2.
    Tunnel,
    /// Direct routing: IP_VS_CONN_F_DROUTE = 3.
    Route,
    /// IP_VS_CONN_F_BYPASS = 4 (cache bypass; never set by lbd).
    Bypass,
}

impl FwdMethod {
    pub fn to_raw(self) -> u32 {
        match self {
            FwdMethod::Masq => 0,
            FwdMethod::Local => 1,
            FwdMethod::Tunnel => 2,
            FwdMethod::Route => 3,
            FwdMethod::Bypass => 4,
        }
    }

    /// The kernel masks with IP_VS_CONN_F_FWD_MASK (7); 5..7 do not exist.
    pub fn from_raw(v: u32) -> Option<Self> {
        match v & 0x7 {
            0 => Some(FwdMethod::Masq),
            1 => Some(FwdMethod::Local),
            2 => Some(FwdMethod::Tunnel),
            3 => Some(FwdMethod::Route),
            4 => Some(FwdMethod::Bypass),
            _ => None,
        }
    }
}

/// Identity of a real server within one virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{}:{}", a, self.port),
            IpAddr::V6(a) => write!(f, "[{}]:{}", a, self.port),
        }
    }
}

/// A real server ("destination") of a virtual server.
///
/// The connection counters are kernel state, filled when listing and ignored
/// in requests: compare configurations with [`RealServer::same_config`], not
/// `==`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub fwd: FwdMethod,
    /// Upper/lower connection thresholds; 0 = none.
    pub u_threshold: u32,
    pub l_threshold: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persist_conns: u32,
}

impl RealServer {
    /// A masquerading real server with no thresholds.
    pub fn new(addr: IpAddr, port: u16, weight: u32) -> Self {
        RealServer {
            addr,
            port,
            weight,
            fwd: FwdMethod::Masq,
            u_threshold: 0,
            l_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persist_conns: 0,
        }
    }

    pub fn key(&self) -> DestKey {
        DestKey {
            addr: self.addr,
            port: self.port,
        }
    }

    /// Same configuration (what a SET_DEST would change), counters ignored.
    pub fn same_config(&self, other: &RealServer) -> bool {
        self.addr == other.addr
            && self.port == other.port
            && self.weight == other.weight
            && self.fwd == other.fwd
            && self.u_threshold == other.u_threshold
            && self.l_threshold == other.l_threshold
    }
}

/// Connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`).
/// In a set request 0 means "leave unchanged", as in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// What GET_INFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpvsInfo {
    /// Encoded as the kernel does: (major << 16) | (minor << 8) | patch.
    pub version: u32,
    pub conn_table_size: u32,
}

impl IpvsInfo {
    /// "1.2.1"
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}.{}",
            (self.version >> 16) & 0xff,
            (self.version >> 8) & 0xff,
            self.version & 0xff
        )
    }
}

// ----------------------------------------------- Services, as lbd sees them --

/// Label that ties an EndpointSlice to its Service (discovery.k8s.io/v1).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Service carrying this label belongs to another proxy (kube-proxy
/// watches Services with `!service.kubernetes.io/service-proxy-name`).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The EndpointSlices of headless Services carry it; kube-proxy does not
/// watch them (DNS serves those Services).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Kubernetes spelling of a Service protocol; absent means TCP.
pub fn protocol_from_k8s(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A Kubernetes object's identity within the cluster: a Service's, or an
/// EndpointSlice's. Ordered like `desired::compute` takes Services, so "first
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
        let name = slice.service_name.as_deref()?;
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
    /// What `frag` wants, added to the scope.
    pub(crate) fn add(&mut self, frag: &DesiredState) {
        self.virtual_servers
            .extend(frag.virtual_servers.keys().copied());
        self.addresses.extend(frag.bind_addresses.iter().copied());
    }
}

// ------------------------------------------------- the table they become --

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
    /// kube-proxy's service health checks: the LoadBalancer Services with
    /// `externalTrafficPolicy: Local` and a `healthCheckNodePort`, so an
    /// external load balancer sends only to nodes with a local endpoint.
    pub health_checks: BTreeMap<ObjectKey, HealthCheck>,
    /// The UDP and SCTP ports of each Service, for the conntrack cleanup.
    pub flow_ports: BTreeMap<ObjectKey, Arc<Vec<FlowPort>>>,
}

/// A UDP or SCTP Service port as kube-proxy's conntrack cleanup
/// (`conntrack.CleanStaleEntries`) sees it: where clients send to, and
/// which endpoints may answer. A flow to these addresses (or NodePort)
/// whose reply comes from anything else is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPort {
    pub protocol: Protocol,
    pub port: u16,
    /// ClusterIPs, external IPs and LoadBalancer IPs, both families.
    pub addresses: Vec<IpAddr>,
    pub node_port: Option<u16>,
    /// Addresses of the serving endpoints (ready, or terminating and still
    /// serving), whether or not this node sends to them.
    pub serving: BTreeSet<IpAddr>,
}

/// One Service's health-check node port and what it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// The Service's IP families (its ClusterIPs'): kube-proxy runs one
    /// proxier per family, and each listens on its own family only.
    pub ipv4: bool,
    pub ipv6: bool,
    /// Distinct ready local endpoint addresses over all the Service's
    /// ports (kube-proxy's `LocalReadyEndpoints`), per family: each
    /// family's proxier counts its own family's endpoints, so a dual-stack
    /// Service answers each family with that family's count.
    pub local_v4: usize,
    pub local_v6: usize,
}

impl HealthCheck {
    /// The count a listener of this family answers with.
    pub fn local_endpoints(&self, v6: bool) -> usize {
        if v6 {
            self.local_v6
        } else {
            self.local_v4
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_round_trip() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::from_number(1), None);
    }

    #[test]
    fn fwd_method_raw_round_trip() {
        for f in [
            FwdMethod::Masq,
            FwdMethod::Local,
            FwdMethod::Tunnel,
            FwdMethod::Route,
            FwdMethod::Bypass,
        ] {
            assert_eq!(FwdMethod::from_raw(f.to_raw()), Some(f));
        }
        assert_eq!(FwdMethod::from_raw(5), None);
    }

    #[test]
    fn same_config_ignores_counters() {
        let a = RealServer::new("10.0.0.2".parse().unwrap(), 80, 1);
        let mut b = a.clone();
        b.active_conns = 7;
        assert!(a.same_config(&b));
        assert_ne!(a, b);
        b.weight = 0;
        assert!(!a.same_config(&b));
    }

    #[test]
    fn display_like_ipvsadm() {
        let k = ServiceKey {
            addr: "fd00::1".parse().unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
        };
        assert_eq!(k.to_string(), "TCP [fd00::1]:443");
        let v = IpvsInfo {
            version: 0x010201,
            conn_table_size: 4096,
        };
        assert_eq!(v.version_string(), "1.2.1");
    }
}
