//! `lbd import`: an lbd.yaml from the configs of what lbd replaces:
//! keepalived.conf (with its track scripts), haproxy.cfg and a
//! KubeProxyConfiguration.
//!
//! Pure: the caller reads the files (and the track scripts keepalived.conf
//! names) and says which files exist on this node; [`import`] maps what it
//! can and writes a comment for everything it could not map or that means
//! something slightly different in lbd. The result passes `lbd check` on
//! the node it was made for: a setting that would not (a kubeconfig that
//! is not on this node) is written as a comment.

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub mod haproxy;
pub mod keepalived;
mod kube_proxy;
mod render;
pub mod script;

pub use haproxy::Facts as HaproxyFacts;

/// One input file: its path (as shown in comments) and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
}

/// Everything `import` reads, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub keepalived: Option<Source>,
    pub haproxy: Option<Source>,
    pub kube_proxy: Option<Source>,
    /// keepalived's track-script command lines -> the program's text
    /// (None: it could not be read).
    pub scripts: BTreeMap<String, Option<String>>,
    /// The cluster CA on this node, when there is one
    /// (`/etc/kubernetes/pki/ca.crt`): health checks verify with it.
    pub cluster_ca: Option<String>,
    /// Which paths exist on this node (the kubeconfig a
    /// KubeProxyConfiguration names).
    pub existing: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    KubeProxy(String),
    #[error("lbd import: give at least one of --keepalived, --haproxy, --kube-proxy")]
    NothingToImport,
}

/// What was understood, before it is written out.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub instances: Vec<VrrpInstance>,
    pub vrrp_notes: Vec<String>,
    pub listeners: Vec<Listener>,
    pub tcplb_notes: Vec<String>,
    pub proxy: Option<render::ProxyDraft>,
    pub proxy_notes: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct VrrpInstance {
    pub name: String,
    pub interface: Option<String>,
    pub vrid: Option<u8>,
    pub version: u8,
    pub priority: u8,
    pub advert_interval: Option<String>,
    pub preempt: Option<bool>,
    pub preempt_delay: Option<String>,
    pub virtual_ips: Vec<String>,
    pub unicast_peers: Vec<String>,
    pub auth_pass: Option<String>,
    pub tracks: Vec<Track>,
    pub notify: Option<String>,
    pub garp_master_delay: Option<String>,
    pub garp_burst: Option<u32>,
    pub garp_refresh: Option<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackOn {
    Listener(String),
    Interface(String),
}

#[derive(Debug, Clone)]
pub struct Track {
    pub on: TrackOn,
    pub weight: i32,
    /// What it replaces, written beside it.
    pub comment: String,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub bind: String,
    pub balance: Option<String>,
    pub backends: Vec<String>,
    pub health: Health,
    pub connect_timeout: Option<String>,
    pub retries: Option<u32>,
    pub max_connections: Option<u32>,
    pub notes: Vec<String>,
}

impl Listener {
    pub fn bind_port(&self) -> Option<u16> {
        self.bind.parse::<SocketAddr>().ok().map(|a| a.port())
    }
    /// The backends' port, when they all share one.
    pub fn backend_port(&self) -> Option<u16> {
        let ports: Vec<u16> = self
            .backends
            .iter()
            .filter_map(|b| b.parse::<SocketAddr>().ok().map(|a| a.port()))
            .collect();
        ports
            .first()
            .copied()
            .filter(|p| ports.iter().all(|q| q == p))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    Tcp,
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// Not https.
    None,
    Verify {
        ca_file: String,
        note: Option<String>,
    },
    /// No CA on this node to verify with: as haproxy's `verify none`.
    Insecure,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub kind: HealthKind,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub tls: TlsChoice,
}

/// The lbd.yaml for `sources`, comments included.
pub fn import(sources: &Sources) -> Result<String, ImportError> {
    if sources.keepalived.is_none() && sources.haproxy.is_none() && sources.kube_proxy.is_none() {
        return Err(ImportError::NothingToImport);
    }
    let mut draft = Draft::default();
    // haproxy first: keepalived's track scripts are mapped onto its
    // listeners.
    if let Some(h) = &sources.haproxy {
        let facts = HaproxyFacts {
            cluster_ca: sources.cluster_ca.clone(),
        };
        haproxy::map(&haproxy::parse(&h.text), &facts, &mut draft);
    }
    if let Some(k) = &sources.keepalived {
        keepalived::map(&keepalived::parse(&k.text), &sources.scripts, &mut draft);
    }
    if let Some(kp) = &sources.kube_proxy {
        kube_proxy::map(kp, &sources.existing, &mut draft).map_err(ImportError::KubeProxy)?;
    }
    Ok(render::render(&draft, sources))
}

/// The track scripts keepalived.conf names: command lines whose program
/// the caller should read for [`Sources::scripts`].
pub fn track_scripts(keepalived_conf: &str) -> Vec<String> {
    keepalived::scripts(&keepalived::parse(keepalived_conf))
        .into_values()
        .collect()
}

/// An input that cannot be read: `lbd import` exits 1.
#[derive(Debug, thiserror::Error)]
#[error("lbd import: {what} {path}: {source}")]
pub struct ReadError {
    pub what: &'static str,
    pub path: String,
    pub source: std::io::Error,
}

/// Where kubeadm keeps the cluster CA.
pub const CLUSTER_CA: &str = "/etc/kubernetes/pki/ca.crt";

/// The I/O edge: reads the inputs, the track scripts keepalived.conf names
/// (from their path, else beside keepalived.conf: a copy taken off the
/// node keeps them together), and looks up which named files are here.
pub fn read_sources(
    keepalived: Option<&std::path::Path>,
    haproxy: Option<&std::path::Path>,
    kube_proxy: Option<&std::path::Path>,
) -> Result<Sources, ReadError> {
    let read = |what: &'static str, p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|text| Source {
                path: p.display().to_string(),
                text,
            })
            .map_err(|source| ReadError {
                what,
                path: p.display().to_string(),
                source,
            })
    };
    let mut s = Sources {
        keepalived: keepalived.map(|p| read("keepalived.conf", p)).transpose()?,
        haproxy: haproxy.map(|p| read("haproxy.cfg", p)).transpose()?,
        kube_proxy: kube_proxy
            .map(|p| read("KubeProxyConfiguration", p))
            .transpose()?,
        ..Default::default()
    };
    if let (Some(k), Some(dir)) = (&s.keepalived, keepalived.and_then(|p| p.parent())) {
        for cmd in track_scripts(&k.text) {
            let program = cmd.split_whitespace().next().unwrap_or("");
            let here = std::path::Path::new(program);
            let beside = here.file_name().map(|n| dir.join(n));
            let text = std::fs::read_to_string(here)
                .ok()
                .or_else(|| beside.and_then(|b| std::fs::read_to_string(b).ok()));
            s.scripts.insert(cmd, text);
        }
    }
    if std::path::Path::new(CLUSTER_CA).is_file() {
        s.cluster_ca = Some(CLUSTER_CA.to_string());
    }
    if let Some(kp) = &s.kube_proxy {
        if let Some(k) = kube_proxy::kubeconfig_path(&kp.text) {
            if std::path::Path::new(&k).is_file() {
                s.existing.push(k);
            }
        }
    }
    Ok(s)
}
