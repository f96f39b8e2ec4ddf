//! The validated configuration: plain typed values, no I/O, no spans.
//!
//! Produced by [`crate::config::parse`] from the YAML file (see SPEC.md);
//! every subsystem reads only these types.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub node: NodeConfig,
    pub vrrp: Option<VrrpConfig>,
    pub tcplb: Option<TcplbConfig>,
    pub proxy: Option<ProxyConfig>,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeConfig {
    /// Defaults to the host name.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VrrpConfig {
    pub instances: Vec<VrrpInstanceConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VrrpVersion {
    V2,
    V3,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VrrpInstanceConfig {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: VrrpVersion,
    /// 1-254 (255 is reserved for the address owner, which lbd never is).
    pub priority: u8,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// A preempting backup that hears a lower-priority master (for example
    /// one whose tracked listener lost its backends) takes over after its
    /// Skew_Time instead of waiting out Master_Down_Interval as RFC 5798
    /// does.
    pub immediate_preempt: bool,
    /// All of one family; IPv6 only with version 3.
    pub virtual_ips: Vec<IpNet>,
    /// Empty: multicast 224.0.0.18 / ff02::12.
    pub unicast_peers: Vec<IpAddr>,
    /// v2 only, at most 8 bytes (keepalived's PASS); empty: no authentication.
    pub auth_pass: String,
    pub track: Vec<TrackConfig>,
    /// Gratuitous ARPs / unsolicited NAs sent at once on becoming master.
    pub garp_burst: u32,
    /// Period of the gratuitous ARP refresh while master; None: off.
    pub garp_refresh: Option<Duration>,
    /// A second burst this long after becoming master (keepalived's
    /// garp_master_delay); None: off.
    pub garp_master_delay: Option<Duration>,
    /// Command run on every state change as keepalived runs its `notify`:
    /// `CMD INSTANCE NAME STATE PRIORITY` (STATE: MASTER, BACKUP, FAULT,
    /// STOP).
    pub notify: Option<String>,
    /// keepalived's notify_master / notify_backup / notify_fault /
    /// notify_stop: run as written, without arguments added, on entering
    /// that state (stop: when the instance stops).
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    pub notify_stop: Option<String>,
    /// valid_lft of the VIPs: a crashed lbd leaves no VIP behind for longer.
    /// The master renews it well before it runs out.
    pub vip_lifetime: Duration,
    /// After a hand-over on purpose, how long the old master keeps its VIPs
    /// (hidden) for the connections it accepted and the new master sends
    /// their packets on to it; zero: off.
    pub handover_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TrackTarget {
    /// Fails while that tcplb listener has no healthy backend.
    Listener(String),
    /// Fails while that interface's link is down.
    Interface(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackConfig {
    pub target: TrackTarget,
    /// Added to the priority while failing (usually negative).
    pub weight: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcplbConfig {
    pub listeners: Vec<ListenerConfig>,
    /// On SIGTERM: how long established sessions may go on before exit.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Source,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OnBackendDown {
    /// Established sessions go on (haproxy's default).
    Keep,
    /// Established sessions to a backend marked down are closed.
    ShutdownSessions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub balance: Balance,
    pub backends: Vec<SocketAddr>,
    pub health: HealthConfig,
    pub connect_timeout: Duration,
    /// Further backends tried after a failed connect.
    pub retries: u32,
    pub max_connections: u32,
    pub on_backend_down: OnBackendDown,
    /// None: sessions may idle forever (kube watches live for hours).
    pub idle_timeout: Option<Duration>,
    /// A second backend tried beside one whose SYN goes unanswered.
    pub hedge: HedgeConfig,
    /// One log line per session (haproxy's `option tcplog`).
    pub session_log: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HedgeConfig {
    pub enabled: bool,
    /// The hedge delay is 4 x the p90 of recent connects, at least this...
    pub min_delay: Duration,
    /// ...and at most this.
    pub max_delay: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            enabled: true,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(250),
        }
    }
}

/// What real traffic may tell about a backend (haproxy's `observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HealthObserve {
    /// A refused, reset or timed-out connect marks the backend down at once
    /// (`observe layer4` + `on-error mark-down`).
    Layer4,
    /// Only the checks decide.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HealthKind {
    Https,
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub path: String,
    pub expect_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Host header; default: the backend address.
    pub host: Option<String>,
    pub tls: TlsConfig,
    pub observe: HealthObserve,
    /// A backend on the node of a VRRP peer whose adverts stopped is marked
    /// down at once.
    pub vrrp_peer_down: bool,
    /// VRRP peer address -> the address of its node's backends, where they
    /// differ (VRRP on another network than the apiservers).
    pub vrrp_peer_map: BTreeMap<IpAddr, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProxyMode {
    Ipvs,
    Nftables,
    None,
}

/// Where the proxy's kubeconfig comes from, highest precedence first:
/// `lbd run --kubeconfig`, lbd.yaml's `proxy.kubeconfig`, the
/// KubeProxyConfiguration's `clientConnection.kubeconfig`, else the
/// in-cluster service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum KubeconfigSource {
    Flag,
    LbdYaml,
    KubeProxyConfiguration,
    InCluster,
}

impl KubeconfigSource {
    /// For logs and `lbd check`: where the setting was written.
    pub fn describe(self) -> &'static str {
        match self {
            KubeconfigSource::Flag => "--kubeconfig",
            KubeconfigSource::LbdYaml => "proxy.kubeconfig in lbd.yaml",
            KubeconfigSource::KubeProxyConfiguration => {
                "clientConnection.kubeconfig in the KubeProxyConfiguration"
            }
            KubeconfigSource::InCluster => "in-cluster service account",
        }
    }
}

/// The apiserver address the proxy talks to instead of the kubeconfig's
/// server or the in-cluster `KUBERNETES_SERVICE_HOST` (kube-proxy's
/// `--master`). In-cluster, `KUBERNETES_SERVICE_HOST` is the `kubernetes`
/// Service's ClusterIP, which only the proxy itself programs: it cannot be
/// the way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiServer {
    /// `https://HOST:PORT`.
    pub url: String,
    pub from: ApiServerSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ApiServerSource {
    /// `proxy.api_server` in lbd.yaml.
    LbdYaml,
    /// The VIP of this VRRP instance on the port of this tcplb listener
    /// (the one the instance tracks): the control-plane endpoint.
    Vip { instance: String, listener: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyConfig {
    pub mode: ProxyMode,
    pub kube_proxy_config: Option<PathBuf>,
    /// None: in-cluster. The one of highest precedence (see
    /// [`KubeconfigSource`]).
    pub kubeconfig: Option<PathBuf>,
    pub kubeconfig_source: KubeconfigSource,
    /// Kubeconfigs of lower precedence that `kubeconfig` overrides; logged at
    /// start, shown by `lbd check`.
    pub kubeconfig_overridden: Vec<(KubeconfigSource, PathBuf)>,
    /// Overrides the kubeconfig's server; in-cluster, the address to use.
    pub api_server: Option<ApiServer>,
    pub cluster_cidr: Vec<IpNet>,
    pub masquerade_all: bool,
    /// Empty: NodePorts on every local address (loopback and IPv6
    /// link-local aside), as kube-proxy's ipvs mode.
    pub node_port_addresses: Vec<IpNet>,
    /// `nodePortAddresses: [primary]`: NodePorts on the node's primary IPs
    /// only (the Node's first InternalIP, else ExternalIP, per family).
    pub node_port_primary: bool,
    /// Overrides node.name for the Node object and topology.
    pub hostname_override: Option<String>,
    pub ipvs: IpvsConfig,
    pub healthz_bind: Option<SocketAddr>,
    pub metrics_bind: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpvsConfig {
    pub scheduler: String,
    pub strict_arp: bool,
    pub exclude_cidrs: Vec<IpNet>,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    /// IPVS connection timeouts; None leaves the kernel's value.
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// Unix socket, mode 0600.
    pub socket: PathBuf,
    /// TCP listener for /healthz /readyz /metrics /status; None: off.
    pub listen: Option<SocketAddr>,
}
