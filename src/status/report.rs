//! The status report: what `lbd status --json` prints and `/status` serves.
//! Fields may be added, never renamed (SPEC.md). Typed values: each
//! serializes to the string SPEC.md shows (an address as `10.31.90.1`, a
//! state as `MASTER`); `tests/status_report.rs` holds the golden JSON.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Balance, TrackTarget};
pub use crate::health::DownReason;
use crate::vrrp::fsm::{Fault, State};

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
    pub state: State,
    pub priority: u8,
    pub effective_priority: u8,
    pub virtual_ips: Vec<IpNet>,
    /// Address of the node advertising as master now (ours or a peer's).
    pub master: Option<IpAddr>,
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
    /// Why the instance is in FAULT (empty otherwise).
    #[serde(default)]
    pub faults: Vec<VrrpFaultStatus>,
    /// Released by `lbd vrrp release`: priority 0 until resumed.
    #[serde(default)]
    pub released: bool,
    /// Handover grace at work (docs/vrrp.md): what this node does for the
    /// connections of a hand-over; None: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpFaultStatus {
    /// link_down, link_gone, no_source_address, vip_failed, vip_foreign,
    /// socket.
    pub reason: Fault,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpPeerStatus {
    pub address: IpAddr,
    pub priority: u8,
    pub advert_interval_ms: u64,
    pub last_heard_seconds_ago: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackStatus {
    /// `listener:NAME` or `interface:NAME`.
    #[serde(with = "track_target")]
    pub target: TrackTarget,
    pub weight: i32,
    pub failing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub bind: SocketAddr,
    pub active_connections: u64,
    pub backends: Vec<BackendStatus>,
    /// As in the config file: roundrobin, leastconn, source, random.
    #[serde(with = "balance", default = "balance::default")]
    pub balance: Balance,
    #[serde(default)]
    pub total_connections: u64,
    #[serde(default)]
    pub refused_no_backend: u64,
    /// Still draining after a reload removed it.
    #[serde(default)]
    pub draining: bool,
    /// What a health check does now: `tcp`, `http`, `https verified`,
    /// `https (insecure_skip_verify)`, or `tls-handshake (waiting for
    /// FILE)` while its TLS files do not exist yet.
    #[serde(default)]
    pub check: String,
    /// Connects that got a second backend beside an unanswered one, and
    /// how many of those the second one won.
    #[serde(default)]
    pub hedged_connects: u64,
    #[serde(default)]
    pub hedge_wins: u64,
    /// The delay after which a connect is hedged now.
    #[serde(default)]
    pub hedge_delay_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: SocketAddr,
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
    /// Why it is down (`check`, `passive`, `hedge`, `peer_gone`); null
    /// while healthy.
    #[serde(default)]
    pub down_reason: Option<DownReason>,
    /// Taken out of rotation by `lbd backend drain`: no new sessions, the
    /// established ones go on. Operator intent, not a fault: it does not
    /// make the listener degraded.
    #[serde(default)]
    pub drained: bool,
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

/// `listener:NAME` / `interface:NAME`, as the config file's `track` reads.
pub fn track_target_name(t: &TrackTarget) -> String {
    match t {
        TrackTarget::Listener(n) => format!("listener:{n}"),
        TrackTarget::Interface(n) => format!("interface:{n}"),
    }
}

/// A balance algorithm by its config-file name.
pub fn balance_name(b: Balance) -> &'static str {
    balance::name(b)
}

mod track_target {
    use super::TrackTarget;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &TrackTarget, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::track_target_name(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TrackTarget, D::Error> {
        let s = String::deserialize(d)?;
        match s.split_once(':') {
            Some(("listener", n)) => Ok(TrackTarget::Listener(n.to_string())),
            Some(("interface", n)) => Ok(TrackTarget::Interface(n.to_string())),
            _ => Err(serde::de::Error::custom(format!(
                "track target {s:?}: expected listener:NAME or interface:NAME"
            ))),
        }
    }
}

mod balance {
    use super::Balance;
    use serde::{Deserialize, Deserializer, Serializer};

    const ALL: [Balance; 4] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::Source,
        Balance::Random,
    ];

    pub fn name(b: Balance) -> &'static str {
        match b {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::Source => "source",
            Balance::Random => "random",
        }
    }

    pub fn serialize<S: Serializer>(b: &Balance, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name(*b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Balance, D::Error> {
        let s = String::deserialize(d)?;
        ALL.into_iter().find(|b| name(*b) == s).ok_or_else(|| {
            serde::de::Error::unknown_variant(&s, &["roundrobin", "leastconn", "source", "random"])
        })
    }

    /// The config file's default, for a report that lacks the field.
    pub fn default() -> Balance {
        Balance::RoundRobin
    }
}
