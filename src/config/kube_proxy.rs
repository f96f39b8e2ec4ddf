//! Reads a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1, as
//! kubeadm writes it into the kube-proxy ConfigMap) into [`ProxyConfig`];
//! [`crate::config::load`] merges the one lbd.yaml names.
//!
//! Only the fields lbd's proxy understands are read (SPEC.md): `mode`,
//! `clusterCIDR`, `ipvs.*`, `nodePortAddresses`, `hostnameOverride`,
//! `healthzBindAddress`, `metricsBindAddress`, `clientConnection.kubeconfig`,
//! `masqueradeAll`. kube-proxy has many more; unknown keys are ignored here,
//! unlike in lbd's own file. Empty values and zero durations mean "kube-proxy
//! default", so they leave the value already in [`ProxyConfig`] alone.
//! Every problem is reported at its line and column, as in lbd.yaml.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::error::Problem;
use super::model::{IpvsConfig, KubeconfigSource, ProxyConfig, ProxyMode};
use super::parse::{Cx, Obj};
use super::yaml::{parse_document, Node, Pos, Value};

/// What is wrong with a value of a KubeProxyConfiguration; the loader
/// reports it at the value's line and column, as a [`Problem`] of the
/// [`crate::config::ConfigError`] beside those of lbd.yaml.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeProxyConfigError {
    #[error("kind: {0:?}, want KubeProxyConfiguration")]
    Kind(String),
    #[error("apiVersion: {0:?}, want kubeproxy.config.k8s.io/v1alpha1")]
    ApiVersion(String),
    #[error("mode: {0:?} is not supported (ipvs or nftables)")]
    Mode(String),
    /// kube-proxy's nftables mode: lbd has no such data plane yet, and a
    /// proxy that starts and programs nothing would blackhole every Service.
    #[error("mode: \"nftables\" is not implemented yet; use ipvs")]
    NftablesNotImplemented,
    #[error("{field}: {value:?}: {source}")]
    Cidr {
        field: &'static str,
        value: String,
        source: ipnet::AddrParseError,
    },
    /// kube-proxy's validation: `primary` only as the whole list.
    #[error("nodePortAddresses: can't use both \"primary\" and CIDRs")]
    PrimaryWithCidrs,
    #[error("{field}: {value:?} is not a duration")]
    Duration { field: &'static str, value: String },
    #[error("{field}: {source}")]
    BindAddress {
        field: &'static str,
        source: BindAddressError,
    },
}

/// A `healthzBindAddress` or `metricsBindAddress` that is none of the forms
/// kube-proxy takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindAddressError {
    #[error("{text:?}: {source}")]
    Port {
        text: String,
        source: std::num::ParseIntError,
    },
    #[error("{0:?} is not IP:PORT")]
    NotIpPort(String),
}

/// What applying a KubeProxyConfiguration did beyond the fields it set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Where its `clientConnection.kubeconfig` is, when that became the
    /// proxy's kubeconfig (lbd.yaml did not name one).
    pub kubeconfig_at: Option<Pos>,
}

/// Applies the KubeProxyConfiguration in `text` (named `path` in messages)
/// to `cfg`. All-or-nothing: on error `cfg` is unchanged, and every problem
/// is returned with its line and column.
///
/// Its `clientConnection.kubeconfig` only counts when lbd.yaml names none:
/// lbd.yaml's `proxy.kubeconfig` is the more specific setting (written for
/// lbd, while the KubeProxyConfiguration was written for kube-proxy, whose
/// kubeadm copy names a path inside kube-proxy's pod). The one not used is
/// recorded in `kubeconfig_overridden`.
pub fn apply(text: &str, path: &str, cfg: &mut ProxyConfig) -> Result<Applied, Vec<Problem>> {
    let root = parse_document(text).map_err(|e| vec![Problem::at(path, e.pos, e.message)])?;
    // Files a KubeProxyConfiguration names are checked by the loader when
    // lbd uses them.
    let any_file = |_: &Path| true;
    let mut cx = Cx::new(path, &any_file);
    let mut out = cfg.clone();
    let mut applied = Applied::default();
    read(&mut cx, &root, &mut out, &mut applied);
    let problems = cx.into_problems();
    if !problems.is_empty() {
        return Err(problems);
    }
    *cfg = out;
    Ok(applied)
}

/// `clientConnection.kubeconfig`, below lbd.yaml's and the flag's.
fn take_kubeconfig(out: &mut ProxyConfig, path: PathBuf, at: Pos, applied: &mut Applied) {
    if out.kubeconfig.is_some() {
        out.kubeconfig_overridden
            .push((KubeconfigSource::KubeProxyConfiguration, path));
    } else {
        out.kubeconfig = Some(path);
        out.kubeconfig_source = KubeconfigSource::KubeProxyConfiguration;
        applied.kubeconfig_at = Some(at);
    }
}

fn read(cx: &mut Cx<'_>, root: &Node, out: &mut ProxyConfig, applied: &mut Applied) {
    let Some(mut o) = cx.obj(root, "a KubeProxyConfiguration") else {
        return;
    };
    if !is_kube_proxy_configuration(cx, &mut o) {
        // Another kind of object: its fields mean something else.
        return;
    }
    if let Some((mode, at)) = text(cx, &mut o, "mode") {
        match mode.as_str() {
            "ipvs" => out.mode = ProxyMode::Ipvs,
            "nftables" => report(cx, at, KubeProxyConfigError::NftablesNotImplemented),
            _ => report(cx, at, KubeProxyConfigError::Mode(mode)),
        }
    }
    if let Some((list, at)) = text(cx, &mut o, "clusterCIDR") {
        let nets: Vec<Option<IpNet>> = list
            .split(',')
            .map(|s| cidr(cx, "clusterCIDR", s, at))
            .collect();
        out.cluster_cidr = nets.into_iter().flatten().collect();
    }
    if let Some(b) = o.get("masqueradeAll").and_then(|n| cx.boolean(n)) {
        out.masquerade_all = b;
    }
    if let Some(n) = o.get("nodePortAddresses") {
        // "primary" (kube-proxy 1.29+), valid only alone: the node's
        // primary IPs. Anything else is a list of CIDRs.
        if is_primary(n) {
            out.node_port_primary = true;
            out.node_port_addresses.clear();
        } else {
            out.node_port_addresses = cidr_list(cx, n, "nodePortAddresses", true);
            out.node_port_primary = false;
        }
    }
    if let Some((h, _)) = text(cx, &mut o, "hostnameOverride") {
        out.hostname_override = Some(h.to_lowercase());
    }
    if let Some(a) = bind(cx, &mut o, "healthzBindAddress", 10256) {
        out.healthz_bind = Some(a);
    }
    if let Some(a) = bind(cx, &mut o, "metricsBindAddress", 10249) {
        out.metrics_bind = Some(a);
    }
    if let Some(mut c) = o
        .get("clientConnection")
        .and_then(|n| cx.obj(n, "clientConnection"))
    {
        if let Some((k, at)) = text(cx, &mut c, "kubeconfig") {
            take_kubeconfig(out, PathBuf::from(k), at, applied);
        }
    }
    if let Some(mut i) = o.get("ipvs").and_then(|n| cx.obj(n, "ipvs")) {
        read_ipvs(cx, &mut i, &mut out.ipvs);
    }
}

fn read_ipvs(cx: &mut Cx<'_>, o: &mut Obj<'_>, out: &mut IpvsConfig) {
    if let Some((s, _)) = text(cx, o, "scheduler") {
        out.scheduler = s;
    }
    if let Some(n) = o.get("excludeCIDRs") {
        out.exclude_cidrs = cidr_list(cx, n, "ipvs.excludeCIDRs", false);
    }
    if let Some(b) = o.get("strictARP").and_then(|n| cx.boolean(n)) {
        out.strict_arp = b;
    }
    if let Some(d) = duration(cx, o, "syncPeriod", "ipvs.syncPeriod") {
        out.sync_period = d;
    }
    if let Some(d) = duration(cx, o, "minSyncPeriod", "ipvs.minSyncPeriod") {
        out.min_sync_period = d;
    }
    if let Some(d) = duration(cx, o, "tcpTimeout", "ipvs.tcpTimeout") {
        out.tcp_timeout = Some(d);
    }
    if let Some(d) = duration(cx, o, "tcpFinTimeout", "ipvs.tcpFinTimeout") {
        out.tcp_fin_timeout = Some(d);
    }
    if let Some(d) = duration(cx, o, "udpTimeout", "ipvs.udpTimeout") {
        out.udp_timeout = Some(d);
    }
}

/// `kind` and `apiVersion` say this is a KubeProxyConfiguration.
fn is_kube_proxy_configuration(cx: &mut Cx<'_>, o: &mut Obj<'_>) -> bool {
    let mut field = |cx: &mut Cx<'_>, key: &str| match o.get(key) {
        Some(n) => (cx.string(n).unwrap_or_default(), n.pos),
        None => (String::new(), o.pos),
    };
    let (kind, kind_at) = field(cx, "kind");
    let (api_version, api_version_at) = field(cx, "apiVersion");
    let mut ok = true;
    if kind != "KubeProxyConfiguration" {
        report(cx, kind_at, KubeProxyConfigError::Kind(kind));
        ok = false;
    }
    if !api_version.starts_with("kubeproxy.config.k8s.io/") {
        report(
            cx,
            api_version_at,
            KubeProxyConfigError::ApiVersion(api_version),
        );
        ok = false;
    }
    ok
}

fn report(cx: &mut Cx<'_>, at: Pos, e: KubeProxyConfigError) {
    cx.err(at, e.to_string());
}

/// A string value, trimmed; empty means "kube-proxy's default", as absent.
fn text(cx: &mut Cx<'_>, o: &mut Obj<'_>, key: &str) -> Option<(String, Pos)> {
    let n = o.get(key)?;
    let s = cx.string(n)?;
    let s = s.trim();
    (!s.is_empty()).then(|| (s.to_string(), n.pos))
}

fn cidr(cx: &mut Cx<'_>, field: &'static str, s: &str, at: Pos) -> Option<IpNet> {
    let value = s.trim();
    match value.parse::<IpNet>() {
        Ok(net) => Some(net),
        Err(source) => {
            let value = value.to_string();
            report(
                cx,
                at,
                KubeProxyConfigError::Cidr {
                    field,
                    value,
                    source,
                },
            );
            None
        }
    }
}

/// A list of CIDRs, without the keywords in `skip`.
/// `[primary]` (or the string itself): kube-proxy's nodePortAddresses
/// special value.
pub(crate) fn is_primary(n: &Node) -> bool {
    match &n.value {
        Value::Str(s) => s.trim() == "primary",
        Value::Seq(items) => {
            items.len() == 1 && matches!(&items[0].value, Value::Str(s) if s.trim() == "primary")
        }
        _ => false,
    }
}

/// A list of CIDRs. `primary_allowed_alone`: an entry `primary` there
/// (nodePortAddresses, where it is valid only as the whole list) gets
/// kube-proxy's message instead of a CIDR syntax error.
fn cidr_list(
    cx: &mut Cx<'_>,
    n: &Node,
    field: &'static str,
    primary_allowed_alone: bool,
) -> Vec<IpNet> {
    let items = cx.list(n, field, |cx, item| {
        let s = cx.string(item)?;
        if primary_allowed_alone && s.trim() == "primary" {
            report(cx, item.pos, KubeProxyConfigError::PrimaryWithCidrs);
            return Some(None);
        }
        Some(cidr(cx, field, &s, item.pos))
    });
    items.into_iter().flatten().collect()
}

fn bind(cx: &mut Cx<'_>, o: &mut Obj<'_>, field: &'static str, port: u16) -> Option<SocketAddr> {
    let (s, at) = text(cx, o, field)?;
    match bind_address(&s, port) {
        Ok(a) => Some(a),
        Err(source) => {
            report(cx, at, KubeProxyConfigError::BindAddress { field, source });
            None
        }
    }
}

/// A Go duration; zero means "kube-proxy's default", as absent.
fn duration(cx: &mut Cx<'_>, o: &mut Obj<'_>, key: &str, field: &'static str) -> Option<Duration> {
    let (s, at) = text(cx, o, key)?;
    match go_duration(&s) {
        Some(d) => (!d.is_zero()).then_some(d),
        None => {
            report(cx, at, KubeProxyConfigError::Duration { field, value: s });
            None
        }
    }
}

/// kube-proxy's bind address forms: `IP:PORT`, `[IPv6]:PORT`, `:PORT`, or a
/// bare IP (default port).
fn bind_address(s: &str, default_port: u16) -> Result<SocketAddr, BindAddressError> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(p) = s.strip_prefix(':') {
        let port = p.parse::<u16>().map_err(|source| BindAddressError::Port {
            text: s.to_string(),
            source,
        })?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(BindAddressError::NotIpPort(s.to_string()))
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
            kubeconfig_source: KubeconfigSource::InCluster,
            kubeconfig_overridden: vec![],
            api_server: None,
            cluster_cidr: vec![],
            masquerade_all: false,
            node_port_addresses: vec![],
            node_port_primary: false,
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
        assert!(!c.masquerade_all);
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
        assert!(!c.node_port_primary);
    }

    /// kube-proxy 1.29+: `primary` alone is the node's primary IPs; beside
    /// CIDRs it is invalid (kube-proxy's validation says the same).
    #[test]
    fn node_port_addresses_primary() {
        let kp = |list: &str| {
            format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnodePortAddresses: {list}\n")
        };
        let mut c = base();
        c.node_port_addresses = vec!["10.0.0.0/8".parse().unwrap()];
        apply(&kp("[primary]"), "kp.yaml", &mut c).unwrap();
        assert!(c.node_port_primary);
        assert!(c.node_port_addresses.is_empty());
        let bad = kp("[10.0.0.0/8, primary]");
        let at = pos_of(&bad, "primary]");
        assert_eq!(
            problems(&bad),
            [format!(
                "kp.yaml:{at}: nodePortAddresses: can't use both \"primary\" and CIDRs"
            )]
        );
    }

    /// The problems as the loader prints them.
    fn problems(text: &str) -> Vec<String> {
        let mut c = base();
        let e = apply(text, "kp.yaml", &mut c).unwrap_err();
        assert_eq!(c, base(), "a failed apply changes nothing");
        e.iter().map(|p| p.to_string()).collect()
    }

    /// The line and column of the first `needle` in `text`, 1-based.
    fn pos_of(text: &str, needle: &str) -> String {
        let at = text.find(needle).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{line}:{col}")
    }

    #[test]
    fn errors_leave_the_config_unchanged_and_say_where() {
        let bad = KUBEADM.replace("10.244.0.0/16,", "10.244.0.0/99,");
        let at = pos_of(&bad, "10.244.0.0/99");
        assert_eq!(
            problems(&bad),
            [format!(
                "kp.yaml:{at}: clusterCIDR: \"10.244.0.0/99\": invalid IP address syntax"
            )]
        );
        let bad = KUBEADM.replace("mode: ipvs", "mode: iptables");
        let at = pos_of(&bad, "iptables\n");
        assert_eq!(
            problems(&bad),
            [format!(
                "kp.yaml:{at}: mode: \"iptables\" is not supported (ipvs or nftables)"
            )]
        );
        let e = problems("kind: [");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("kp.yaml:1:"), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_at_its_value() {
        let bad = KUBEADM
            .replace("- 192.168.0.0/16", "- 192.168.0.0/33")
            .replace("tcpTimeout: 15m", "tcpTimeout: 15 minutes")
            .replace(
                "metricsBindAddress: 0.0.0.0:10249",
                "metricsBindAddress: localhost:10249",
            )
            .replace("healthzBindAddress: \"\"", "healthzBindAddress: \":http\"")
            .replace("strictARP: true", "strictARP: \"yes\"")
            .replace(
                "excludeCIDRs:\n  - 10.0.0.0/24",
                "excludeCIDRs: 10.0.0.0/24",
            );
        let at = |needle| pos_of(&bad, needle);
        assert_eq!(
            problems(&bad),
            [
                format!(
                    "kp.yaml:{}: healthzBindAddress: \":http\": invalid digit found in string",
                    at("\":http\"")
                ),
                format!(
                    "kp.yaml:{}: ipvs.excludeCIDRs must be a list, not a string",
                    at("10.0.0.0/24")
                ),
                format!(
                    "kp.yaml:{}: expected true or false, not a string",
                    at("\"yes\"")
                ),
                format!(
                    "kp.yaml:{}: ipvs.tcpTimeout: \"15 minutes\" is not a duration",
                    at("15 minutes")
                ),
                format!(
                    "kp.yaml:{}: metricsBindAddress: \"localhost:10249\" is not IP:PORT",
                    at("localhost:10249")
                ),
                format!(
                    "kp.yaml:{}: nodePortAddresses: \"192.168.0.0/33\": invalid IP address syntax",
                    at("192.168.0.0/33")
                ),
            ]
        );
    }

    #[test]
    fn another_kind_of_object_is_not_read() {
        assert_eq!(
            problems("apiVersion: v1\nkind: Pod\nmode: bogus\n"),
            [
                "kp.yaml:1:13: apiVersion: \"v1\", want kubeproxy.config.k8s.io/v1alpha1",
                "kp.yaml:2:7: kind: \"Pod\", want KubeProxyConfiguration",
            ]
        );
        // Missing: reported at the document.
        assert_eq!(
            problems("mode: ipvs\n"),
            [
                "kp.yaml:1:1: kind: \"\", want KubeProxyConfiguration",
                "kp.yaml:1:1: apiVersion: \"\", want kubeproxy.config.k8s.io/v1alpha1",
            ]
        );
        assert_eq!(
            problems("[a]\n"),
            ["kp.yaml:1:1: a KubeProxyConfiguration must be a mapping, not a list"]
        );
    }

    #[test]
    fn empty_and_zero_values_keep_what_lbd_yaml_says() {
        let mut c = base();
        c.mode = ProxyMode::Nftables;
        c.ipvs.scheduler = "sh".into();
        c.ipvs.sync_period = Duration::from_secs(10);
        c.kubeconfig = Some(PathBuf::from("/lbd.kubeconfig"));
        let want = c.clone();
        apply(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: \"\"\nclusterCIDR: \"\"\nclientConnection:\n  kubeconfig: \"\"\n\
             ipvs:\n  scheduler: \"\"\n  syncPeriod: 0s\nnodePortAddresses: null\n",
            "kp.yaml",
            &mut c,
        )
        .unwrap();
        assert_eq!(c, want);
    }

    /// lbd.yaml's kubeconfig wins; the KubeProxyConfiguration's is kept
    /// only as the one it overrides, or used, with its position, when
    /// lbd.yaml names none.
    #[test]
    fn lbd_yaml_kubeconfig_wins_over_the_kube_proxy_configurations() {
        let kpc = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                   clientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n";
        let mut c = base();
        c.kubeconfig = Some(PathBuf::from("/etc/kubernetes/lbd.kubeconfig"));
        c.kubeconfig_source = KubeconfigSource::LbdYaml;
        let applied = apply(kpc, "kp.yaml", &mut c).unwrap();
        assert_eq!(applied.kubeconfig_at, None);
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kubernetes/lbd.kubeconfig"))
        );
        assert_eq!(c.kubeconfig_source, KubeconfigSource::LbdYaml);
        assert_eq!(
            c.kubeconfig_overridden,
            [(
                KubeconfigSource::KubeProxyConfiguration,
                PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf")
            )]
        );

        let mut c = base();
        let applied = apply(kpc, "kp.yaml", &mut c).unwrap();
        assert_eq!(applied.kubeconfig_at, Some(Pos { line: 4, col: 15 }));
        assert_eq!(
            c.kubeconfig_source,
            KubeconfigSource::KubeProxyConfiguration
        );
        assert!(c.kubeconfig_overridden.is_empty());
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
        assert_eq!(
            bind_address("localhost:1", 1),
            Err(BindAddressError::NotIpPort("localhost:1".into()))
        );
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
