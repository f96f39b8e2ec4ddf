//! The draft written out as lbd.yaml: only what differs from lbd's
//! defaults or is required, each key with what it came from when that
//! helps, and a `#` comment for everything not mapped.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{format_duration, KubeconfigSource, ProxyConfig, ProxyMode};

use super::{Draft, HealthKind, Listener, Sources, TlsChoice, TrackOn, VrrpInstance};

/// The proxy section to write.
#[derive(Debug, Clone)]
pub struct ProxyDraft {
    pub config: ProxyConfig,
    /// A kubeconfig the KubeProxyConfiguration names that is not on this
    /// node (kubeadm's lives in kube-proxy's pod).
    pub kubeconfig_elsewhere: Option<String>,
}

/// A YAML scalar: plain when that reads back as the same string, else
/// double-quoted (JSON strings are YAML).
fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-@".contains(c))
        && !s.starts_with(['-', '.', '@'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

fn comments(out: &mut String, indent: &str, notes: &[String]) {
    for n in notes {
        let _ = writeln!(out, "{indent}# {n}");
    }
}

pub(super) fn render(d: &Draft, sources: &Sources) -> String {
    let mut out = String::new();
    let from: Vec<String> = [
        sources
            .keepalived
            .as_ref()
            .map(|s| format!("keepalived.conf {}", s.path)),
        sources
            .haproxy
            .as_ref()
            .map(|s| format!("haproxy.cfg {}", s.path)),
        sources
            .kube_proxy
            .as_ref()
            .map(|s| format!("KubeProxyConfiguration {}", s.path)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _ = writeln!(
        out,
        "# lbd.yaml written by `lbd import` from {}.",
        from.join(", ")
    );
    let _ = writeln!(
        out,
        "# Review it, then `lbd check -c FILE`. Comments say what was not mapped or\n# means something else in lbd (docs/migration.md maps every key)."
    );
    vrrp(&mut out, d);
    tcplb(&mut out, d);
    proxy(&mut out, d);
    out
}

fn vrrp(out: &mut String, d: &Draft) {
    if d.instances.is_empty() && d.vrrp_notes.is_empty() {
        return;
    }
    let _ = writeln!(out, "vrrp:");
    comments(out, "  ", &d.vrrp_notes);
    let valid: Vec<&VrrpInstance> = d
        .instances
        .iter()
        .filter(|i| i.interface.is_some() && i.vrid.is_some() && !i.virtual_ips.is_empty())
        .collect();
    for i in d
        .instances
        .iter()
        .filter(|i| !valid.iter().any(|v| std::ptr::eq(*v, *i)))
    {
        let _ = writeln!(
            out,
            "  # vrrp_instance {} is not mapped: it needs an interface, a virtual_router_id and a virtual_ipaddress",
            i.name
        );
    }
    if valid.is_empty() {
        let _ = writeln!(out, "  instances: []");
        return;
    }
    let _ = writeln!(out, "  instances:");
    for i in valid {
        instance(out, i);
    }
}

fn instance(out: &mut String, i: &VrrpInstance) {
    let p = "      ";
    let _ = writeln!(out, "    - name: {}", q(&i.name));
    comments(out, p, &i.notes);
    let _ = writeln!(
        out,
        "{p}interface: {}",
        q(i.interface.as_deref().unwrap_or(""))
    );
    let _ = writeln!(out, "{p}vrid: {}", i.vrid.unwrap_or(1));
    if i.version == 2 {
        let _ = writeln!(
            out,
            "{p}version: 2                 # keepalived's default; 3 once every node runs lbd"
        );
    }
    let _ = writeln!(out, "{p}priority: {}", i.priority);
    if let Some(a) = &i.advert_interval {
        let _ = writeln!(out, "{p}advert_interval: {a}");
    }
    if let Some(pr) = i.preempt {
        let _ = writeln!(out, "{p}preempt: {pr}");
    }
    if let Some(pd) = &i.preempt_delay {
        let _ = writeln!(out, "{p}preempt_delay: {pd}");
    }
    let vips: Vec<String> = i.virtual_ips.iter().map(|v| q(v)).collect();
    let _ = writeln!(out, "{p}virtual_ips: [{}]", vips.join(", "));
    if !i.unicast_peers.is_empty() {
        let peers: Vec<String> = i.unicast_peers.iter().map(|v| q(v)).collect();
        let _ = writeln!(out, "{p}unicast_peers: [{}]", peers.join(", "));
    }
    if let Some(a) = &i.auth_pass {
        if i.version == 2 {
            let _ = writeln!(
                out,
                "{p}auth_pass: {}",
                serde_json::to_string(a).unwrap_or_default()
            );
        } else {
            let _ = writeln!(
                out,
                "{p}# authentication: VRRP version 3 has none; left out"
            );
        }
    }
    if let Some(n) = &i.notify {
        let _ = writeln!(out, "{p}notify: {}", q(n));
    }
    if let Some(g) = i.garp_burst {
        let _ = writeln!(out, "{p}garp_burst: {g}");
    }
    if let Some(g) = &i.garp_master_delay {
        let _ = writeln!(out, "{p}garp_master_delay: {g}");
    }
    if let Some(g) = i.garp_refresh.as_ref().filter(|g| *g != "0s") {
        let _ = writeln!(out, "{p}garp_refresh: {g}");
    }
    if !i.tracks.is_empty() {
        let _ = writeln!(out, "{p}track:");
        for t in &i.tracks {
            let (k, v) = match &t.on {
                TrackOn::Listener(l) => ("listener", l),
                TrackOn::Interface(n) => ("interface", n),
            };
            let _ = writeln!(out, "{p}  - {k}: {}   # {}", q(v), t.comment);
            let _ = writeln!(out, "{p}    weight: {}", t.weight);
        }
    }
}

fn tcplb(out: &mut String, d: &Draft) {
    if d.listeners.is_empty() && d.tcplb_notes.is_empty() {
        return;
    }
    let _ = writeln!(out, "tcplb:");
    comments(out, "  ", &d.tcplb_notes);
    let valid: Vec<&Listener> = d
        .listeners
        .iter()
        .filter(|l| !l.backends.is_empty())
        .collect();
    for l in d.listeners.iter().filter(|l| l.backends.is_empty()) {
        let _ = writeln!(out, "  # {} is not mapped: no server lbd can use", l.name);
    }
    if valid.is_empty() {
        let _ = writeln!(out, "  listeners: []");
        return;
    }
    let _ = writeln!(out, "  listeners:");
    for l in valid {
        listener(out, l);
    }
}

fn listener(out: &mut String, l: &Listener) {
    let p = "      ";
    let _ = writeln!(out, "    - name: {}", q(&l.name));
    comments(out, p, &l.notes);
    let _ = writeln!(out, "{p}bind: {}", q(&l.bind));
    if let Some(b) = &l.balance {
        let _ = writeln!(out, "{p}balance: {b}");
    }
    let _ = writeln!(out, "{p}backends:");
    for b in &l.backends {
        let _ = writeln!(out, "{p}  - {}", q(b));
    }
    let h = &l.health;
    let _ = writeln!(out, "{p}health:");
    let kind = match h.kind {
        HealthKind::Tcp => "tcp",
        HealthKind::Http => "http",
        HealthKind::Https => "https",
    };
    let _ = writeln!(out, "{p}  type: {kind}");
    if let Some(path) = &h.path {
        let _ = writeln!(out, "{p}  path: {}", q(path));
    }
    if let Some(s) = h.expect_status {
        let _ = writeln!(out, "{p}  expect_status: {s}");
    }
    for (k, v) in [("interval", &h.interval), ("timeout", &h.timeout)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{p}  {k}: {v}");
        }
    }
    for (k, v) in [("rise", h.rise), ("fall", h.fall)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{p}  {k}: {v}");
        }
    }
    match &h.tls {
        TlsChoice::None => {}
        TlsChoice::Verify { ca_file, note } => {
            if let Some(n) = note {
                let _ = writeln!(out, "{p}  # {n}");
            }
            let _ = writeln!(out, "{p}  tls:");
            let _ = writeln!(out, "{p}    ca_file: {}", q(ca_file));
            let _ = writeln!(
                out,
                "{p}    server_name: kubernetes   # a name every apiserver certificate carries"
            );
        }
        TlsChoice::Insecure => {
            let _ = writeln!(
                out,
                "{p}  # No cluster CA on this node yet: as haproxy's verify none. Once\n{p}  # /etc/kubernetes/pki/ca.crt exists, use ca_file: /etc/kubernetes/pki/ca.crt\n{p}  # and server_name: kubernetes instead."
            );
            let _ = writeln!(out, "{p}  tls:");
            let _ = writeln!(out, "{p}    insecure_skip_verify: true");
        }
    }
    if let Some(c) = &l.connect_timeout {
        let _ = writeln!(out, "{p}connect_timeout: {c}");
    }
    if let Some(r) = l.retries {
        let _ = writeln!(out, "{p}retries: {r}");
    }
    if let Some(m) = l.max_connections {
        let _ = writeln!(out, "{p}max_connections: {m}");
    }
}

fn nets(v: &[ipnet::IpNet]) -> String {
    let s: Vec<String> = v.iter().map(|n| q(&n.to_string())).collect();
    format!("[{}]", s.join(", "))
}

fn proxy(out: &mut String, d: &Draft) {
    let Some(pd) = &d.proxy else {
        return;
    };
    let c = &pd.config;
    let mut body = String::new();
    let p = "  ";
    let mode = match c.mode {
        ProxyMode::Ipvs => "ipvs",
        ProxyMode::Nftables => "nftables",
        ProxyMode::None => "none",
    };
    let _ = writeln!(body, "{p}mode: {mode}");
    if let Some(k) = &c.kubeconfig {
        let from = match c.kubeconfig_source {
            KubeconfigSource::KubeProxyConfiguration => "   # clientConnection.kubeconfig",
            _ => "",
        };
        let _ = writeln!(body, "{p}kubeconfig: {}{from}", q(&k.display().to_string()));
    }
    if !c.cluster_cidr.is_empty() {
        let _ = writeln!(body, "{p}cluster_cidr: {}", nets(&c.cluster_cidr));
    }
    if c.masquerade_all {
        let _ = writeln!(body, "{p}masquerade_all: true");
    }
    if c.node_port_primary {
        let _ = writeln!(body, "{p}node_port_addresses: primary");
    } else if !c.node_port_addresses.is_empty() {
        let _ = writeln!(
            body,
            "{p}node_port_addresses: {}",
            nets(&c.node_port_addresses)
        );
    }
    if let Some(h) = &c.hostname_override {
        let _ = writeln!(body, "{p}hostname_override: {}", q(h));
    }
    let i = &c.ipvs;
    let mut ipvs = Vec::new();
    if i.scheduler != "rr" {
        ipvs.push(format!("scheduler: {}", q(&i.scheduler)));
    }
    if i.strict_arp {
        ipvs.push("strict_arp: true".into());
    }
    if !i.exclude_cidrs.is_empty() {
        ipvs.push(format!("exclude_cidrs: {}", nets(&i.exclude_cidrs)));
    }
    if i.sync_period != Duration::from_secs(30) {
        ipvs.push(format!("sync_period: {}", format_duration(i.sync_period)));
    }
    if i.min_sync_period != Duration::from_secs(1) {
        ipvs.push(format!(
            "min_sync_period: {}",
            format_duration(i.min_sync_period)
        ));
    }
    for (k, v) in [
        ("tcp_timeout", i.tcp_timeout),
        ("tcp_fin_timeout", i.tcp_fin_timeout),
        ("udp_timeout", i.udp_timeout),
    ] {
        if let Some(v) = v {
            ipvs.push(format!("{k}: {}", format_duration(v)));
        }
    }
    if !ipvs.is_empty() {
        let _ = writeln!(body, "{p}ipvs:");
        for line in ipvs {
            let _ = writeln!(body, "{p}  {line}");
        }
    }
    for (k, v, default) in [
        ("healthz_bind", c.healthz_bind, "0.0.0.0:10256"),
        ("metrics_bind", c.metrics_bind, "127.0.0.1:10249"),
    ] {
        match v {
            Some(a) if a.to_string() != default => {
                let _ = writeln!(body, "{p}{k}: {}", q(&a.to_string()));
            }
            None => {
                let _ = writeln!(body, "{p}{k}: null");
            }
            _ => {}
        }
    }
    match (&c.kubeconfig, &pd.kubeconfig_elsewhere) {
        (Some(_), _) => {
            let _ = writeln!(out, "proxy:");
            comments(out, p, &d.proxy_notes);
            out.push_str(&body);
        }
        (None, elsewhere) => {
            // In-cluster credentials exist only in a pod with a service
            // account: on this node the section would not start.
            let _ = writeln!(
                out,
                "# The proxy section below is off: it needs a kubeconfig on this node."
            );
            if let Some(e) = elsewhere {
                let _ = writeln!(
                    out,
                    "# The KubeProxyConfiguration names {e}, which is not on this node\n# (kubeadm's kube-proxy reads its kubeconfig inside its pod)."
                );
            }
            let _ = writeln!(
                out,
                "# Make one for lbd (docs/install.md, \"The proxy's kubeconfig\"), then uncomment\n# the section and set proxy.kubeconfig."
            );
            let _ = writeln!(out, "# proxy:");
            comments(out, "#   ", &d.proxy_notes);
            for line in body.lines() {
                let _ = writeln!(out, "# {line}");
            }
            let _ = writeln!(out, "#   kubeconfig: /etc/kubernetes/lbd-proxy.kubeconfig");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_only_when_needed() {
        assert_eq!(q("eth0"), "eth0");
        assert_eq!(q("10.0.0.1/32"), "10.0.0.1/32");
        assert_eq!(q("0.0.0.0:8443"), "\"0.0.0.0:8443\"");
        assert_eq!(q("42"), "\"42\"");
        assert_eq!(q("yes"), "\"yes\"");
        assert_eq!(q("a b"), "\"a b\"");
    }
}
