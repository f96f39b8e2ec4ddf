//! Reads a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1, as
//! kubeadm writes it into the kube-proxy ConfigMap) into [`ProxyConfig`].
//!
//! Only the fields lbd's proxy understands are read (SPEC.md): `mode`,
//! `clusterCIDR`, `ipvs.*`, `nodePortAddresses`, `hostnameOverride`,
//! `healthzBindAddress`, `metricsBindAddress`, `clientConnection.kubeconfig`,
//! `masqueradeAll`. kube-proxy has many more; unknown keys are ignored here,
//! unlike in lbd's own file. Empty values and zero durations mean "kube-proxy
//! default", so they leave the value already in [`ProxyConfig`] alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{ProxyConfig, ProxyMode};

#[derive(Debug, thiserror::Error)]
pub enum KubeProxyConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: String,
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Kpc {
    api_version: String,
    kind: String,
    mode: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    masquerade_all: Option<bool>,
    node_port_addresses: Option<Vec<String>>,
    hostname_override: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    client_connection: Option<ClientConnection>,
    ipvs: Option<Ipvs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ClientConnection {
    kubeconfig: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Ipvs {
    scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    strict_arp: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    tcp_timeout: Option<String>,
    tcp_fin_timeout: Option<String>,
    udp_timeout: Option<String>,
}

/// Reads `path` and applies it to `cfg`.
pub fn load(path: &Path, cfg: &mut ProxyConfig) -> Result<(), KubeProxyConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeProxyConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    apply(&text, &path.display().to_string(), cfg)
}

/// Applies the KubeProxyConfiguration in `text` to `cfg`. All-or-nothing:
/// on error `cfg` is unchanged.
pub fn apply(text: &str, path: &str, cfg: &mut ProxyConfig) -> Result<(), KubeProxyConfigError> {
    let kpc: Kpc = serde_saphyr::from_str(text).map_err(|e| KubeProxyConfigError::Yaml {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    let ferr = |field: &'static str, message: String| KubeProxyConfigError::Field {
        path: path.to_string(),
        field,
        message,
    };
    if kpc.kind != "KubeProxyConfiguration" {
        return Err(ferr(
            "kind",
            format!("{:?}, want KubeProxyConfiguration", kpc.kind),
        ));
    }
    if !kpc.api_version.starts_with("kubeproxy.config.k8s.io/") {
        return Err(ferr(
            "apiVersion",
            format!(
                "{:?}, want kubeproxy.config.k8s.io/v1alpha1",
                kpc.api_version
            ),
        ));
    }
    let mut out = cfg.clone();
    match kpc.mode.as_deref().map(str::trim) {
        None | Some("") => {}
        Some("ipvs") => out.mode = ProxyMode::Ipvs,
        Some("nftables") => out.mode = ProxyMode::Nftables,
        Some(other) => {
            return Err(ferr(
                "mode",
                format!("{other:?} is not supported (ipvs or nftables)"),
            ))
        }
    }
    if let Some(c) = kpc.cluster_cidr.as_deref().filter(|s| !s.trim().is_empty()) {
        out.cluster_cidr = c
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<IpNet>()
                    .map_err(|e| ferr("clusterCIDR", format!("{s:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(m) = kpc.masquerade_all {
        out.masquerade_all = m;
    }
    if let Some(list) = kpc.node_port_addresses {
        let mut nets = Vec::new();
        for s in list.iter().map(|s| s.trim()) {
            // "primary" (kube-proxy 1.29+): the node's primary IPs, which is
            // what lbd uses when the list is empty (the Node's addresses).
            if s == "primary" {
                continue;
            }
            nets.push(
                s.parse::<IpNet>()
                    .map_err(|e| ferr("nodePortAddresses", format!("{s:?}: {e}")))?,
            );
        }
        out.node_port_addresses = nets;
    }
    if let Some(h) = kpc.hostname_override.filter(|s| !s.trim().is_empty()) {
        out.hostname_override = Some(h.trim().to_lowercase());
    }
    if let Some(a) = kpc
        .healthz_bind_address
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        out.healthz_bind = Some(bind_address(a, 10256).map_err(|m| ferr("healthzBindAddress", m))?);
    }
    if let Some(a) = kpc
        .metrics_bind_address
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        out.metrics_bind = Some(bind_address(a, 10249).map_err(|m| ferr("metricsBindAddress", m))?);
    }
    if let Some(k) = kpc
        .client_connection
        .and_then(|c| c.kubeconfig)
        .filter(|s| !s.trim().is_empty())
    {
        out.kubeconfig = Some(PathBuf::from(k.trim()));
    }
    if let Some(ipvs) = kpc.ipvs {
        if let Some(s) = ipvs.scheduler.filter(|s| !s.trim().is_empty()) {
            out.ipvs.scheduler = s.trim().to_string();
        }
        if let Some(list) = ipvs.exclude_cidrs {
            out.ipvs.exclude_cidrs = list
                .iter()
                .map(|s| {
                    s.trim()
                        .parse::<IpNet>()
                        .map_err(|e| ferr("ipvs.excludeCIDRs", format!("{s:?}: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(b) = ipvs.strict_arp {
            out.ipvs.strict_arp = b;
        }
        let dur = |field: &'static str,
                   v: &Option<String>|
         -> Result<Option<Duration>, KubeProxyConfigError> {
            match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => match go_duration(s) {
                    Some(d) if d.is_zero() => Ok(None),
                    Some(d) => Ok(Some(d)),
                    None => Err(ferr(field, format!("{s:?} is not a duration"))),
                },
            }
        };
        if let Some(d) = dur("ipvs.syncPeriod", &ipvs.sync_period)? {
            out.ipvs.sync_period = d;
        }
        if let Some(d) = dur("ipvs.minSyncPeriod", &ipvs.min_sync_period)? {
            out.ipvs.min_sync_period = d;
        }
        if let Some(d) = dur("ipvs.tcpTimeout", &ipvs.tcp_timeout)? {
            out.ipvs.tcp_timeout = Some(d);
        }
        if let Some(d) = dur("ipvs.tcpFinTimeout", &ipvs.tcp_fin_timeout)? {
            out.ipvs.tcp_fin_timeout = Some(d);
        }
        if let Some(d) = dur("ipvs.udpTimeout", &ipvs.udp_timeout)? {
            out.ipvs.udp_timeout = Some(d);
        }
    }
    *cfg = out;
    Ok(())
}

/// kube-proxy's bind address forms: `IP:PORT`, `[IPv6]:PORT`, `:PORT`, or a
/// bare IP (default port).
fn bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(p) = s.strip_prefix(':') {
        let port = p.parse::<u16>().map_err(|e| format!("{s:?}: {e}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(format!("{s:?} is not IP:PORT"))
}

/// Go's time.ParseDuration: a sequence of decimal numbers with units
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1m30s`, `0.5s`, `0`.
pub fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpvsConfig;

    fn base() -> ProxyConfig {
        ProxyConfig {
            mode: ProxyMode::Ipvs,
            kube_proxy_config: None,
            kubeconfig: None,
            cluster_cidr: vec![],
            masquerade_all: false,
            node_port_addresses: vec![],
            hostname_override: None,
            ipvs: IpvsConfig {
                scheduler: "rr".into(),
                strict_arp: false,
                exclude_cidrs: vec![],
                sync_period: Duration::from_secs(30),
                min_sync_period: Duration::from_secs(1),
                tcp_timeout: None,
                tcp_fin_timeout: None,
                udp_timeout: None,
            },
            healthz_bind: Some("0.0.0.0:10256".parse().unwrap()),
            metrics_bind: Some("127.0.0.1:10249".parse().unwrap()),
        }
    }

    /// What kubeadm (v1.31) writes into the kube-proxy ConfigMap, with mode
    /// ipvs; many keys lbd does not read.
    const KUBEADM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs:
  - 10.0.0.0/24
  minSyncPeriod: 2s
  scheduler: "wlc"
  strictARP: true
  syncPeriod: 1m0s
  tcpFinTimeout: 0s
  tcpTimeout: 15m
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 0.0.0.0:10249
mode: ipvs
nodePortAddresses:
- 192.168.0.0/16
- primary
oomScoreAdj: null
portRange: ""
showHiddenMetricsForProxy: ""
winkernel:
  enableDSR: false
"#;

    #[test]
    fn kubeadm_config_maps_to_proxy_fields() {
        let mut c = base();
        apply(KUBEADM, "kube-proxy.yaml", &mut c).unwrap();
        assert_eq!(c.mode, ProxyMode::Ipvs);
        assert_eq!(
            c.cluster_cidr,
            vec![
                "10.244.0.0/16".parse::<IpNet>().unwrap(),
                "fd00:10:244::/56".parse().unwrap()
            ]
        );
        assert_eq!(
            c.kubeconfig,
            Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(c.ipvs.scheduler, "wlc");
        assert!(c.ipvs.strict_arp);
        assert_eq!(
            c.ipvs.exclude_cidrs,
            vec!["10.0.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(c.ipvs.sync_period, Duration::from_secs(60));
        assert_eq!(c.ipvs.min_sync_period, Duration::from_secs(2));
        assert_eq!(c.ipvs.tcp_timeout, Some(Duration::from_secs(900)));
        // 0s: kube-proxy's "leave the kernel's value".
        assert_eq!(c.ipvs.udp_timeout, None);
        assert_eq!(
            c.node_port_addresses,
            vec!["192.168.0.0/16".parse::<IpNet>().unwrap()]
        );
        // Empty healthz: kube-proxy's default, which is lbd's too.
        assert_eq!(c.healthz_bind, Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(c.metrics_bind, Some("0.0.0.0:10249".parse().unwrap()));
        assert_eq!(c.hostname_override, None);
    }

    #[test]
    fn errors_leave_the_config_unchanged() {
        let mut c = base();
        let bad = KUBEADM.replace("10.244.0.0/16,", "10.244.0.0/99,");
        let e = apply(&bad, "kp.yaml", &mut c).unwrap_err().to_string();
        assert!(e.starts_with("kp.yaml: clusterCIDR:"), "{e}");
        assert_eq!(c, base());
        let e = apply(
            &KUBEADM.replace("mode: ipvs", "mode: iptables"),
            "kp.yaml",
            &mut c,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mode"), "{e}");
        let e = apply("kind: Pod\napiVersion: v1\n", "kp.yaml", &mut c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("KubeProxyConfiguration"), "{e}");
        let e = apply("kind: [", "kp.yaml", &mut c).unwrap_err().to_string();
        assert!(e.starts_with("kp.yaml: "), "{e}");
        assert_eq!(c, base());
    }

    #[test]
    fn bind_address_forms() {
        assert_eq!(
            bind_address(":10256", 1).unwrap(),
            "0.0.0.0:10256".parse().unwrap()
        );
        assert_eq!(
            bind_address("[::]:10249", 1).unwrap(),
            "[::]:10249".parse().unwrap()
        );
        assert_eq!(
            bind_address("127.0.0.1", 10249).unwrap(),
            "127.0.0.1:10249".parse().unwrap()
        );
        assert!(bind_address("localhost:1", 1).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("-1s"), None);
        assert_eq!(go_duration("1d"), None);
    }
}
