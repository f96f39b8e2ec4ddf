//! The `proxy` section and its `ipvs` settings (kube-proxy's, with its
//! defaults).

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::super::model::{
    ApiServer, ApiServerSource, IpvsConfig, KubeconfigSource, ProxyConfig, ProxyMode,
};
use super::super::yaml::{Node, Value};
use super::{Cx, FileKind, FileRef};

const PROXY_KEYS: &[&str] = &[
    "mode",
    "kube_proxy_config",
    "kubeconfig",
    "cluster_cidr",
    "masquerade_all",
    "node_port_addresses",
    "hostname_override",
    "ipvs",
    "healthz_bind",
    "metrics_bind",
    "api_server",
];

pub(super) const IPVS_KEYS: &[&str] = &[
    "scheduler",
    "strict_arp",
    "exclude_cidrs",
    "sync_period",
    "min_sync_period",
    "tcp_timeout",
    "tcp_fin_timeout",
    "udp_timeout",
];

const MODES: &[(&str, ProxyMode)] = &[
    ("ipvs", ProxyMode::Ipvs),
    ("nftables", ProxyMode::Nftables),
    ("none", ProxyMode::None),
];

/// The schedulers the kernel's IPVS ships (ip_vs_*.ko).
const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

impl Cx<'_> {
    pub(super) fn proxy(&mut self, n: &Node) -> ProxyConfig {
        let mut p = default_proxy();
        let Some(mut o) = self.obj(n, "proxy") else {
            return p;
        };
        if let Some(n) = o.get("mode") {
            self.proxy_mode_at = Some(n.pos);
            if let Some(m) = self.choice(n, "proxy.mode", MODES) {
                p.mode = m;
            }
        }
        if let Some(n) = o.get("kube_proxy_config") {
            p.kube_proxy_config = self.file(
                n,
                "proxy.kube_proxy_config",
                FileKind::KubeProxyConfiguration,
            );
            // The loader reads it; a missing one is reported already.
            self.kube_proxy_config = p
                .kube_proxy_config
                .clone()
                .filter(|f| (self.file_exists)(f))
                .map(|path| FileRef { path, at: n.pos });
        }
        if let Some(n) = o.get("kubeconfig") {
            p.kubeconfig = self.file(n, "proxy.kubeconfig", FileKind::Kubeconfig);
            if p.kubeconfig.is_some() {
                p.kubeconfig_source = KubeconfigSource::LbdYaml;
            }
        }
        if let Some(n) = o.get("api_server") {
            p.api_server = self.api_server(n).map(|url| ApiServer {
                url,
                from: ApiServerSource::LbdYaml,
            });
        }
        if let Some(n) = o.get("cluster_cidr") {
            p.cluster_cidr = self.cidr_list(n, "proxy.cluster_cidr");
        }
        if let Some(n) = o.get("masquerade_all") {
            p.masquerade_all = self.boolean(n).unwrap_or(false);
        }
        if let Some(n) = o.get("node_port_addresses") {
            // kube-proxy's `primary`, alone: the node's primary IPs.
            if crate::config::kube_proxy::is_primary(n) {
                p.node_port_primary = true;
            } else {
                p.node_port_addresses = self.cidr_list(n, "proxy.node_port_addresses");
            }
        }
        p.hostname_override = o
            .get("hostname_override")
            .and_then(|n| self.nonempty_string(n, "proxy.hostname_override"));
        if let Some(n) = o.get("ipvs") {
            p.ipvs = self.ipvs(n);
        }
        if o.has("healthz_bind") {
            p.healthz_bind = o
                .get("healthz_bind")
                .and_then(|n| self.socket_addr(n, "proxy.healthz_bind"));
        }
        if o.has("metrics_bind") {
            p.metrics_bind = o
                .get("metrics_bind")
                .and_then(|n| self.socket_addr(n, "proxy.metrics_bind"));
        }
        self.finish(o, "proxy", PROXY_KEYS);
        p
    }

    /// `https://HOST:PORT` (or http), as kube-proxy's `--master`.
    fn api_server(&mut self, n: &Node) -> Option<String> {
        let s = self.nonempty_string(n, "proxy.api_server")?;
        let s = s.trim().trim_end_matches('/').to_string();
        let ok = s
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
            .filter(|u| u.host().is_some_and(|h| !h.is_empty()))
            .filter(|u| {
                u.path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
            });
        if ok.is_none() {
            self.err(
                n.pos,
                format!("proxy.api_server: {s:?} is not a URL like https://10.31.90.0:8443"),
            );
            return None;
        }
        Some(s)
    }

    /// A list of CIDRs, or one string of comma-separated CIDRs as kube-proxy takes.
    fn cidr_list(&mut self, n: &Node, what: &str) -> Vec<IpNet> {
        match &n.value {
            Value::Str(s) => s
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .filter_map(|part| {
                    let node = Node {
                        pos: n.pos,
                        value: Value::Str(part.trim().to_string()),
                    };
                    self.ip_net(&node, what)
                })
                .collect(),
            _ => self.list(n, what, |cx, n| cx.ip_net(n, what)),
        }
    }

    fn ipvs(&mut self, n: &Node) -> IpvsConfig {
        let mut c = default_ipvs();
        let Some(mut o) = self.obj(n, "proxy.ipvs") else {
            return c;
        };
        if let Some(n) = o.get("scheduler") {
            if let Some(s) = self.string(n) {
                if SCHEDULERS.contains(&s.as_str()) {
                    c.scheduler = s;
                } else {
                    self.err(
                        n.pos,
                        format!(
                            "proxy.ipvs.scheduler: {s:?} is not one of {}",
                            SCHEDULERS.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(n) = o.get("strict_arp") {
            c.strict_arp = self.boolean(n).unwrap_or(false);
        }
        if let Some(n) = o.get("exclude_cidrs") {
            c.exclude_cidrs = self.cidr_list(n, "proxy.ipvs.exclude_cidrs");
        }
        if let Some(n) = o.get("sync_period") {
            if let Some(d) = self.positive_duration(n, "proxy.ipvs.sync_period") {
                c.sync_period = d;
            }
        }
        if let Some(n) = o.get("min_sync_period") {
            if let Some(d) = self.duration(n, "proxy.ipvs.min_sync_period") {
                c.min_sync_period = d;
            }
        }
        if c.min_sync_period > c.sync_period {
            self.err(
                o.pos,
                "proxy.ipvs.min_sync_period must not exceed sync_period",
            );
        }
        c.tcp_timeout = o
            .get("tcp_timeout")
            .and_then(|n| self.duration(n, "proxy.ipvs.tcp_timeout"));
        c.tcp_fin_timeout = o
            .get("tcp_fin_timeout")
            .and_then(|n| self.duration(n, "proxy.ipvs.tcp_fin_timeout"));
        c.udp_timeout = o
            .get("udp_timeout")
            .and_then(|n| self.duration(n, "proxy.ipvs.udp_timeout"));
        self.finish(o, "proxy.ipvs", IPVS_KEYS);
        c
    }
}

/// kube-proxy's defaults.
fn default_ipvs() -> IpvsConfig {
    IpvsConfig {
        scheduler: "rr".into(),
        strict_arp: false,
        exclude_cidrs: Vec::new(),
        sync_period: Duration::from_secs(30),
        min_sync_period: Duration::from_secs(1),
        tcp_timeout: None,
        tcp_fin_timeout: None,
        udp_timeout: None,
    }
}

fn default_proxy() -> ProxyConfig {
    ProxyConfig {
        mode: ProxyMode::Ipvs,
        kube_proxy_config: None,
        kubeconfig: None,
        kubeconfig_source: KubeconfigSource::InCluster,
        kubeconfig_overridden: Vec::new(),
        api_server: None,
        cluster_cidr: Vec::new(),
        masquerade_all: false,
        node_port_addresses: Vec::new(),
        node_port_primary: false,
        hostname_override: None,
        ipvs: default_ipvs(),
        healthz_bind: Some(SocketAddr::from(([0, 0, 0, 0], 10256))),
        metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn defaults_are_kube_proxys() {
        let p = check("proxy: {}\n").unwrap().proxy.unwrap();
        assert_eq!(p, default_proxy());
        assert_eq!(p.mode, ProxyMode::Ipvs);
        assert_eq!(p.ipvs.sync_period, Duration::from_secs(30));
        assert_eq!(p.healthz_bind, Some("0.0.0.0:10256".parse().unwrap()));
    }

    #[test]
    fn cidrs_as_a_list_or_comma_separated() {
        let p = check(
            "proxy:\n  cluster_cidr: \"10.244.0.0/16, fd00::/56\"\n  node_port_addresses: [10.0.0.0/8, 10.1.2.3]\n  ipvs:\n    exclude_cidrs: 10.9.0.0/16\n",
        )
        .unwrap()
        .proxy
        .unwrap();
        let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(p.cluster_cidr, nets(&["10.244.0.0/16", "fd00::/56"]));
        // A bare address is one host.
        assert_eq!(p.node_port_addresses, nets(&["10.0.0.0/8", "10.1.2.3/32"]));
        assert_eq!(p.ipvs.exclude_cidrs, nets(&["10.9.0.0/16"]));
        assert!(!p.node_port_primary);
        for primary in ["primary", "[primary]"] {
            let p = check(&format!("proxy:\n  node_port_addresses: {primary}\n"))
                .unwrap()
                .proxy
                .unwrap();
            assert!(p.node_port_primary, "{primary}");
            assert!(p.node_port_addresses.is_empty());
        }
    }

    #[test]
    fn binds_can_be_turned_off() {
        let p = check("proxy:\n  healthz_bind: null\n  metrics_bind:\n")
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!((p.healthz_bind, p.metrics_bind), (None, None));
    }

    #[test]
    fn proxy_problems() {
        assert_eq!(
            problems(
                "proxy:\n  mode: iptables\n  cluster_cidr: 10.244.0.0/99\n  kubeconfig: /kc\n  ipvs:\n    scheduler: fastest\n    sync_period: 1s\n    min_sync_period: 2s\n"
            ),
            [
                "t.yaml:2:9: proxy.mode: \"iptables\" is not one of ipvs, nftables, none",
                "t.yaml:3:17: proxy.cluster_cidr: invalid \"10.244.0.0/99\" (expected ADDRESS/PREFIX)",
                "t.yaml:4:15: proxy.kubeconfig: /kc does not exist",
                "t.yaml:6:5: proxy.ipvs.min_sync_period must not exceed sync_period",
                "t.yaml:6:16: proxy.ipvs.scheduler: \"fastest\" is not one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos",
            ]
        );
    }

    #[test]
    fn ipvs_timeouts() {
        let p =
            check("proxy:\n  ipvs: {tcp_timeout: 15m, tcp_fin_timeout: 30s, udp_timeout: 5m}\n")
                .unwrap()
                .proxy
                .unwrap();
        assert_eq!(p.ipvs.tcp_timeout, Some(Duration::from_secs(900)));
        assert_eq!(p.ipvs.tcp_fin_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.ipvs.udp_timeout, Some(Duration::from_secs(300)));
    }
}
