//! The `tcplb` section: listeners, their backends, health checks and TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::super::model::{
    Balance, HealthConfig, HealthKind, HealthObserve, HedgeConfig, ListenerConfig, OnBackendDown,
    TcplbConfig, TlsConfig,
};
use super::super::yaml::{Node, Pos, Value};
use super::{Cx, FileKind, Obj};

const LISTENER_KEYS: &[&str] = &[
    "name",
    "bind",
    "balance",
    "backends",
    "health",
    "connect_timeout",
    "retries",
    "max_connections",
    "on_backend_down",
    "idle_timeout",
    "hedge",
    "session_log",
];

const HEDGE_KEYS: &[&str] = &["enabled", "min_delay", "max_delay"];

pub(super) const HEALTH_KEYS: &[&str] = &[
    "type",
    "path",
    "expect_status",
    "interval",
    "timeout",
    "rise",
    "fall",
    "host",
    "tls",
    "observe",
    "vrrp_peer_down",
    "vrrp_peer_map",
];

const OBSERVE: &[(&str, HealthObserve)] = &[
    ("layer4", HealthObserve::Layer4),
    ("none", HealthObserve::None),
];

pub(super) const TLS_KEYS: &[&str] = &[
    "ca_file",
    "server_name",
    "insecure_skip_verify",
    "cert_file",
    "key_file",
];

const BALANCE: &[(&str, Balance)] = &[
    ("roundrobin", Balance::RoundRobin),
    ("leastconn", Balance::LeastConn),
    ("source", Balance::Source),
    ("random", Balance::Random),
];

const ON_BACKEND_DOWN: &[(&str, OnBackendDown)] = &[
    ("keep", OnBackendDown::Keep),
    ("shutdown_sessions", OnBackendDown::ShutdownSessions),
];

const HEALTH_KIND: &[(&str, HealthKind)] = &[
    ("https", HealthKind::Https),
    ("http", HealthKind::Http),
    ("tcp", HealthKind::Tcp),
];

impl Cx<'_> {
    pub(super) fn tcplb(&mut self, n: &Node) -> TcplbConfig {
        let mut out = TcplbConfig {
            listeners: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
        };
        let Some(mut o) = self.obj(n, "tcplb") else {
            return out;
        };
        if let Some(n) = o.get("shutdown_grace") {
            if let Some(d) = self.duration(n, "shutdown_grace") {
                out.shutdown_grace = d;
            }
        }
        if let Some(list) = o.get("listeners") {
            if let Value::Seq(items) = &list.value {
                out.listeners = self.listeners(items);
            } else {
                self.err(list.pos, "tcplb.listeners must be a list");
            }
        }
        self.finish(o, "tcplb", &["listeners", "shutdown_grace"]);
        out
    }

    /// Every valid listener; names and bind addresses are unique.
    fn listeners(&mut self, items: &[Node]) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        let mut names = BTreeSet::new();
        let mut binds = BTreeMap::new();
        for item in items {
            let Some(l) = self.listener(item) else {
                continue;
            };
            if !names.insert(l.name.clone()) {
                self.err(item.pos, format!("duplicate listener name {:?}", l.name));
            }
            if let Some(other) = binds.insert(l.bind, l.name.clone()) {
                self.err(
                    item.pos,
                    format!("listener {:?} binds {} as {other:?} does", l.name, l.bind),
                );
            }
            listeners.push(l);
        }
        listeners
    }

    fn listener(&mut self, n: &Node) -> Option<ListenerConfig> {
        let mut o = self.obj(n, "a listener")?;
        let name = self.required_string(&mut o, "name", "a listener");
        let bind = match o.get("bind") {
            Some(n) => self.socket_addr(n, "bind"),
            None => {
                self.err(o.pos, "a listener needs a bind address, e.g. 0.0.0.0:8443");
                None
            }
        };
        let balance = o
            .get("balance")
            .and_then(|n| self.choice(n, "balance", BALANCE))
            .unwrap_or(Balance::RoundRobin);
        let backends = self.backends(&mut o);
        let health = match o.get("health") {
            Some(h) => self.health(h),
            None => default_health(),
        };
        let connect_timeout = o
            .get("connect_timeout")
            .and_then(|n| self.positive_duration(n, "connect_timeout"))
            .unwrap_or(Duration::from_secs(3));
        let retries = o
            .get("retries")
            .and_then(|n| self.int_in(n, "retries", 0, 100))
            .unwrap_or(2) as u32;
        let max_connections = o
            .get("max_connections")
            .and_then(|n| self.int_in(n, "max_connections", 1, 10_000_000))
            .unwrap_or(20_000) as u32;
        let on_backend_down = o
            .get("on_backend_down")
            .and_then(|n| self.choice(n, "on_backend_down", ON_BACKEND_DOWN))
            .unwrap_or(OnBackendDown::Keep);
        let idle_timeout = match o.get("idle_timeout") {
            Some(n) => self.duration(n, "idle_timeout").filter(|d| !d.is_zero()),
            None => None,
        };
        let hedge = o
            .get("hedge")
            .map_or_else(HedgeConfig::default, |n| self.hedge(n));
        let session_log = o
            .get("session_log")
            .and_then(|n| self.boolean(n))
            .unwrap_or(false);
        self.finish(o, "a listener", LISTENER_KEYS);
        Some(ListenerConfig {
            name: name?,
            bind: bind?,
            balance,
            backends,
            health,
            connect_timeout,
            retries,
            max_connections,
            on_backend_down,
            idle_timeout,
            hedge,
            session_log,
        })
    }

    /// `hedge: {enabled, min_delay, max_delay}`.
    fn hedge(&mut self, n: &Node) -> HedgeConfig {
        let mut h = HedgeConfig::default();
        let Some(mut o) = self.obj(n, "hedge") else {
            return h;
        };
        if let Some(n) = o.get("enabled") {
            h.enabled = self.boolean(n).unwrap_or(h.enabled);
        }
        if let Some(n) = o.get("min_delay") {
            h.min_delay = self
                .positive_duration(n, "hedge.min_delay")
                .unwrap_or(h.min_delay);
        }
        let max_node = o.get("max_delay");
        if let Some(n) = max_node {
            h.max_delay = self
                .positive_duration(n, "hedge.max_delay")
                .unwrap_or(h.max_delay);
        }
        if h.max_delay < h.min_delay {
            self.err(
                max_node.map_or(o.pos, |n| n.pos),
                "hedge.max_delay must not be shorter than hedge.min_delay",
            );
        }
        self.finish(o, "hedge", HEDGE_KEYS);
        h
    }

    /// At least one, none twice.
    fn backends(&mut self, o: &mut Obj<'_>) -> Vec<SocketAddr> {
        let Some(list) = o.get("backends") else {
            self.err(o.pos, "a listener needs backends");
            return Vec::new();
        };
        let b: Vec<SocketAddr> = self.list(list, "backends", |cx, n| cx.socket_addr(n, "backends"));
        if matches!(&list.value, Value::Seq(items) if items.is_empty()) {
            self.err(list.pos, "backends must name at least one ADDRESS:PORT");
        }
        let mut seen = BTreeSet::new();
        for a in &b {
            if !seen.insert(a) {
                self.err(list.pos, format!("backend {a} is listed twice"));
            }
        }
        b
    }

    fn health(&mut self, n: &Node) -> HealthConfig {
        let mut h = default_health();
        let Some(mut o) = self.obj(n, "health") else {
            return h;
        };
        self.health_check(&mut o, &mut h);
        self.health_timing(&mut o, &mut h);
        if let Some(n) = o.get("host") {
            h.host = self.nonempty_string(n, "health.host");
        }
        self.health_traffic(&mut o, &mut h);
        let tls_node = o.get("tls");
        if let Some(t) = tls_node {
            h.tls = self.tls(t);
        }
        self.health_tls_rules(&h, tls_node, o.pos);
        self.finish(o, "health", HEALTH_KEYS);
        h
    }

    /// What is checked: `type`, `path`, `expect_status`.
    fn health_check(&mut self, o: &mut Obj<'_>, h: &mut HealthConfig) {
        if let Some(n) = o.get("type") {
            if let Some(k) = self.choice(n, "health.type", HEALTH_KIND) {
                h.kind = k;
            }
        }
        if let Some(n) = o.get("path") {
            if let Some(p) = self.string(n) {
                if !p.starts_with('/') || p.contains(char::is_whitespace) {
                    self.err(n.pos, "health.path must start with / and contain no spaces");
                }
                h.path = p;
            }
        }
        if let Some(n) = o.get("expect_status") {
            if let Some(s) = self.int_in(n, "health.expect_status", 100, 599) {
                h.expect_status = s as u16;
            }
        }
    }

    /// How often and how sure: `interval`, `timeout`, `rise`, `fall`.
    fn health_timing(&mut self, o: &mut Obj<'_>, h: &mut HealthConfig) {
        if let Some(n) = o.get("interval") {
            if let Some(d) = self.positive_duration(n, "health.interval") {
                h.interval = d;
            }
        }
        if let Some(n) = o.get("timeout") {
            if let Some(d) = self.positive_duration(n, "health.timeout") {
                h.timeout = d;
            }
        }
        if let Some(n) = o.get("rise") {
            if let Some(v) = self.int_in(n, "health.rise", 1, 1000) {
                h.rise = v as u32;
            }
        }
        if let Some(n) = o.get("fall") {
            if let Some(v) = self.int_in(n, "health.fall", 1, 1000) {
                h.fall = v as u32;
            }
        }
    }

    /// What traffic and VRRP may tell: `observe`, `vrrp_peer_down`,
    /// `vrrp_peer_map`.
    fn health_traffic(&mut self, o: &mut Obj<'_>, h: &mut HealthConfig) {
        if let Some(n) = o.get("observe") {
            if let Some(v) = self.choice(n, "health.observe", OBSERVE) {
                h.observe = v;
            }
        }
        if let Some(n) = o.get("vrrp_peer_down") {
            h.vrrp_peer_down = self.boolean(n).unwrap_or(h.vrrp_peer_down);
        }
        if let Some(n) = o.get("vrrp_peer_map") {
            match &n.value {
                Value::Map(entries) => {
                    for (key, pos, value) in entries {
                        let peer = key.trim().parse::<IpAddr>();
                        let backend =
                            self.parsed::<IpAddr>(value, "vrrp_peer_map", "an IP address");
                        match (peer, backend) {
                            (Ok(p), Some(b)) => {
                                h.vrrp_peer_map.insert(p, b);
                            }
                            (Err(_), _) => self.err(
                                *pos,
                                format!("vrrp_peer_map: invalid {key:?} (expected a VRRP peer's IP address)"),
                            ),
                            _ => {}
                        }
                    }
                }
                other => self.err(
                    n.pos,
                    format!(
                        "health.vrrp_peer_map must be a mapping PEER_IP: BACKEND_IP, not {}",
                        other.kind()
                    ),
                ),
            }
        }
    }

    /// https verifies the backend unless told not to; tls is for https only.
    fn health_tls_rules(&mut self, h: &HealthConfig, tls_node: Option<&Node>, health_at: Pos) {
        let pos = tls_node.map_or(health_at, |t| t.pos);
        if h.kind == HealthKind::Https && h.tls.ca_file.is_none() && !h.tls.insecure_skip_verify {
            // Verification stays on: there is no CA to verify with unless told.
            self.err(
                pos,
                "https health checks verify the backend: set health.tls.ca_file (e.g. /etc/kubernetes/pki/ca.crt) or health.tls.insecure_skip_verify: true",
            );
        }
        if h.kind != HealthKind::Https && tls_node.is_some() {
            self.err(pos, "health.tls only applies to type https");
        }
    }

    fn tls(&mut self, n: &Node) -> TlsConfig {
        let mut t = TlsConfig::default();
        let Some(mut o) = self.obj(n, "health.tls") else {
            return t;
        };
        const MEANWHILE: &str = "until it appears the checks are a TLS handshake without verification, then verified HTTPS (watched, no reload needed)";
        // A client certificate missing while the CA is there (kubeadm
        // writes them at different steps): the handshake still verifies.
        const MEANWHILE_CLIENT: &str = "until it appears the checks are a TLS handshake without a client certificate (verified if tls.ca_file exists), then HTTPS with the client certificate (watched, no reload needed)";
        t.ca_file = o
            .get("ca_file")
            .and_then(|n| self.file_or_later(n, "tls.ca_file", FileKind::CaBundle, MEANWHILE));
        t.server_name = o
            .get("server_name")
            .and_then(|n| self.nonempty_string(n, "tls.server_name"));
        if let Some(n) = o.get("insecure_skip_verify") {
            t.insecure_skip_verify = self.boolean(n).unwrap_or(false);
        }
        t.cert_file = o.get("cert_file").and_then(|n| {
            self.file_or_later(n, "tls.cert_file", FileKind::Certificate, MEANWHILE_CLIENT)
        });
        t.key_file = o.get("key_file").and_then(|n| {
            self.file_or_later(n, "tls.key_file", FileKind::PrivateKey, MEANWHILE_CLIENT)
        });
        self.pair_key_with_certificate(t.key_file.as_deref(), t.cert_file.as_deref());
        if t.cert_file.is_some() != t.key_file.is_some() {
            self.err(
                o.pos,
                "tls.cert_file and tls.key_file go together: set both or neither",
            );
        }
        self.finish(o, "health.tls", TLS_KEYS);
        t
    }
}

/// haproxy's `check` defaults: inter 2s, rise 2, fall 3.
fn default_health() -> HealthConfig {
    HealthConfig {
        kind: HealthKind::Tcp,
        path: "/healthz".into(),
        expect_status: 200,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
        host: None,
        tls: TlsConfig::default(),
        observe: HealthObserve::Layer4,
        vrrp_peer_down: true,
        vrrp_peer_map: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::*;
    use super::*;

    fn listener(extra: &str) -> String {
        format!("tcplb:\n  listeners:\n    - name: api\n      bind: 0.0.0.0:8443\n      backends: [10.0.0.1:6443]\n{extra}")
    }

    #[test]
    fn listener_defaults_and_choices() {
        let c = check(&listener(
            "      balance: LeastConn\n      on_backend_down: shutdown_sessions\n      idle_timeout: 0s\n",
        ))
        .unwrap();
        let t = c.tcplb.unwrap();
        assert_eq!(t.shutdown_grace, Duration::from_secs(30));
        let l = &t.listeners[0];
        assert_eq!(l.balance, Balance::LeastConn);
        assert_eq!(l.on_backend_down, OnBackendDown::ShutdownSessions);
        // 0s: no idle timeout, as when absent.
        assert_eq!(l.idle_timeout, None);
        assert_eq!(
            (l.connect_timeout, l.retries, l.max_connections),
            (Duration::from_secs(3), 2, 20_000)
        );
        assert_eq!(l.health, default_health());
    }

    #[test]
    fn listener_problems() {
        assert_eq!(
            problems("tcplb:\n  listeners:\n    - name: api\n"),
            [
                "t.yaml:3:7: a listener needs a bind address, e.g. 0.0.0.0:8443",
                "t.yaml:3:7: a listener needs backends",
            ]
        );
        assert_eq!(
            problems(
                &listener("      balance: fastest\n      connect_timeout: 0s\n")
                    .replace("[10.0.0.1:6443]", "[10.0.0.1:6443, 10.0.0.1:6443]")
            ),
            [
                "t.yaml:5:17: backend 10.0.0.1:6443 is listed twice",
                "t.yaml:6:16: balance: \"fastest\" is not one of roundrobin, leastconn, source, random",
                "t.yaml:7:24: connect_timeout must be longer than 0",
            ]
        );
        assert_eq!(
            problems("tcplb:\n  listeners: {}\n"),
            ["t.yaml:2:14: tcplb.listeners must be a list"]
        );
    }

    #[test]
    fn listeners_are_unique_by_name_and_bind() {
        let text =
            "tcplb:\n  listeners:\n    - {name: a, bind: 0.0.0.0:1, backends: [10.0.0.1:1]}\n    \
                    - {name: a, bind: 0.0.0.0:2, backends: [10.0.0.1:1]}\n    \
                    - {name: b, bind: 0.0.0.0:1, backends: [10.0.0.1:1]}\n";
        assert_eq!(
            problems(text),
            [
                "t.yaml:4:7: duplicate listener name \"a\"",
                "t.yaml:5:7: listener \"b\" binds 0.0.0.0:1 as \"a\" does",
            ]
        );
    }

    #[test]
    fn health_settings() {
        let c = check(&listener(
            "      health:\n        type: http\n        path: /livez\n        expect_status: 204\n        interval: 500ms\n        timeout: 200ms\n        rise: 1\n        fall: 5\n        host: api.local\n",
        ))
        .unwrap();
        let h = &c.tcplb.unwrap().listeners[0].health;
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!((h.path.as_str(), h.expect_status), ("/livez", 204));
        assert_eq!(
            (h.interval, h.timeout, h.rise, h.fall),
            (Duration::from_millis(500), Duration::from_millis(200), 1, 5)
        );
        assert_eq!(h.host.as_deref(), Some("api.local"));
    }

    #[test]
    fn health_and_tls_rules() {
        assert_eq!(
            problems(&listener(
                "      health:\n        type: tcp\n        path: healthz\n        tls: {insecure_skip_verify: true}\n"
            )),
            [
                "t.yaml:8:15: health.path must start with / and contain no spaces",
                "t.yaml:9:14: health.tls only applies to type https",
            ]
        );
        assert_eq!(
            problems(&listener("      health: {type: https}\n")),
            ["t.yaml:6:15: https health checks verify the backend: set health.tls.ca_file (e.g. /etc/kubernetes/pki/ca.crt) or health.tls.insecure_skip_verify: true"]
        );
        let c = check(&listener(
            "      health: {type: https, tls: {insecure_skip_verify: true, server_name: kubernetes}}\n",
        ))
        .unwrap();
        let tls = &c.tcplb.unwrap().listeners[0].health.tls;
        assert!(tls.insecure_skip_verify);
        assert_eq!(tls.server_name.as_deref(), Some("kubernetes"));
        assert_eq!(
            problems(&listener(
                "      health: {type: https, tls: {ca_file: /ca.crt, key_file: /k.pem}}\n"
            )),
            ["t.yaml:6:34: tls.cert_file and tls.key_file go together: set both or neither"]
        );
    }
}
