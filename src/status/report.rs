//! The status report: what `lbd status --json` prints and `/status` serves.
//! Fields may be added, never renamed (SPEC.md).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub vrrp: Vec<VrrpInstanceStatus>,
    pub tcplb: Vec<ListenerStatus>,
    pub proxy: Option<ProxyStatus>,
    /// Set while the last reload failed: why, and the config still in use.
    #[serde(default)]
    pub config: ConfigStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub path: String,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The last failed reload's problems, cleared by a good one.
    pub last_reload_error: Option<String>,
    pub last_reload_seconds_ago: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpInstanceStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// INIT, BACKUP, MASTER or FAULT.
    pub state: String,
    pub priority: u8,
    pub effective_priority: u8,
    pub virtual_ips: Vec<String>,
    /// Address of the node advertising as master now (ours or a peer's).
    pub master: Option<String>,
    pub transitions: u64,
    pub since_seconds: u64,
    #[serde(default)]
    pub version: u8,
    #[serde(default)]
    pub advert_interval_ms: u64,
    #[serde(default)]
    pub peers: Vec<VrrpPeerStatus>,
    #[serde(default)]
    pub tracks: Vec<TrackStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpPeerStatus {
    pub address: String,
    pub priority: u8,
    pub advert_interval_ms: u64,
    pub last_heard_seconds_ago: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackStatus {
    /// `listener:NAME` or `interface:NAME`.
    pub target: String,
    pub weight: i32,
    pub failing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub bind: String,
    pub active_connections: u64,
    pub backends: Vec<BackendStatus>,
    #[serde(default)]
    pub balance: String,
    #[serde(default)]
    pub total_connections: u64,
    #[serde(default)]
    pub refused_no_backend: u64,
    /// Still draining after a reload removed it.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    pub healthy: bool,
    pub active_connections: u64,
    pub last_error: Option<String>,
    /// Seconds since the health state last flipped (or since the check started).
    #[serde(default)]
    pub since_seconds: u64,
    #[serde(default)]
    pub last_check_latency_ms: Option<f64>,
    #[serde(default)]
    pub total_connections: u64,
}

/// The data plane the Service proxy runs, as the status names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyDataPlane {
    Ipvs,
    Nftables,
}

impl std::fmt::Display for ProxyDataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyDataPlane::Ipvs => "ipvs",
            ProxyDataPlane::Nftables => "nftables",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub mode: ProxyDataPlane,
    pub synced: bool,
    pub services: u64,
    pub real_servers: u64,
    pub last_sync_seconds_ago: Option<u64>,
    pub last_sync_duration_ms: Option<f64>,
    #[serde(default)]
    pub last_error: Option<String>,
}
