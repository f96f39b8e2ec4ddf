//! From YAML text to a validated [`Config`], collecting every problem with
//! its line and column instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::model::*;
use super::yaml::{parse_document, Node, Pos, Value};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub col: u64,
    pub message: String,
}

/// Every problem found in one file, printed as `PATH:LINE:COL: message` lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.path, p.line, p.col, p.message)?;
        }
        Ok(())
    }
}

/// Facts about the machine that defaults and checks depend on, passed in so
/// parsing stays pure and testable.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub hostname: String,
    /// Files that exist (checked by the loader for paths the config names).
    pub existing_files: Option<BTreeSet<PathBuf>>,
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: shown.clone(),
        problems: vec![Problem {
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        }],
    })?;
    let env = Environment {
        hostname: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
        existing_files: None,
    };
    parse_with_file_check(&text, &shown, &env, |p| p.exists())
}

/// Validates `text` (named `path` in messages) without touching the disk.
pub fn parse(text: &str, path: &str, env: &Environment) -> Result<Config, ConfigError> {
    let files = env.existing_files.clone();
    parse_with_file_check(text, path, env, move |p| {
        files.as_ref().is_none_or(|set| set.contains(p))
    })
}

fn parse_with_file_check(
    text: &str,
    path: &str,
    env: &Environment,
    file_exists: impl Fn(&Path) -> bool,
) -> Result<Config, ConfigError> {
    let root = parse_document(text).map_err(|e| ConfigError {
        path: path.to_string(),
        problems: vec![Problem {
            line: e.pos.line,
            col: e.pos.col,
            message: e.message,
        }],
    })?;
    let mut cx = Cx {
        problems: Vec::new(),
        file_exists: &file_exists,
    };
    let config = cx.config(&root, env);
    if cx.problems.is_empty() {
        Ok(config)
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.col));
        Err(ConfigError {
            path: path.to_string(),
            problems: cx.problems,
        })
    }
}

/// Parses `10ms`, `1s`, `1.5s`, `1m30s`, `2h`: a sequence of number + unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let num: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: a unit is needed (ms, s, m, h)"
                ))
            }
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
        };
        total += num * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

struct Cx<'f> {
    problems: Vec<Problem>,
    file_exists: &'f dyn Fn(&Path) -> bool,
}

/// A mapping being read: remembers which keys were used so the rest can be
/// reported as unknown.
struct Obj<'n> {
    pos: Pos,
    entries: &'n [(String, Pos, Node)],
    used: Vec<bool>,
}

impl<'n> Obj<'n> {
    fn get(&mut self, key: &str) -> Option<&'n Node> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        self.used[i] = true;
        let node = &self.entries[i].2;
        // `key:` with nothing after it means "default".
        (!matches!(node.value, Value::Null)).then_some(node)
    }
    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }
}

impl Cx<'_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    fn obj<'n>(&mut self, node: &'n Node, what: &str) -> Option<Obj<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Obj {
                pos: node.pos,
                entries,
                used: vec![false; entries.len()],
            }),
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be a mapping, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn finish(&mut self, obj: Obj<'_>, what: &str, known: &[&str]) {
        let mut seen = BTreeSet::new();
        for ((key, pos, _), used) in obj.entries.iter().zip(&obj.used) {
            if !seen.insert(key.as_str()) {
                self.err(*pos, format!("duplicate key {key:?} in {what}"));
            }
            if !used {
                let hint = closest(key, known)
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                self.err(*pos, format!("unknown key {key:?} in {what}{hint}"));
            }
        }
    }

    fn string(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            other => {
                self.err(node.pos, format!("expected a string, not {}", other.kind()));
                None
            }
        }
    }

    fn nonempty_string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node)?;
        if s.trim().is_empty() {
            self.err(node.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, node: &Node) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(
                    node.pos,
                    format!("expected true or false, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn int_in(&mut self, node: &Node, what: &str, lo: i64, hi: i64) -> Option<i64> {
        match &node.value {
            Value::Int(i) if (lo..=hi).contains(i) => Some(*i),
            Value::Int(i) => {
                self.err(
                    node.pos,
                    format!("{what} must be between {lo} and {hi}, not {i}"),
                );
                None
            }
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be an integer, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let s = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(0) => return Some(Duration::ZERO),
            Value::Int(_) | Value::Float(_) => {
                self.err(
                    node.pos,
                    format!("{what} needs a unit, as in 1s, 100ms or 1m30s"),
                );
                return None;
            }
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be a duration, not {}", other.kind()),
                );
                return None;
            }
        };
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(node.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    fn parsed<T: std::str::FromStr>(
        &mut self,
        node: &Node,
        what: &str,
        example: &str,
    ) -> Option<T> {
        let s = self.string(node)?;
        match s.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(
                    node.pos,
                    format!("{what}: invalid {s:?} (expected {example})"),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, node: &Node, what: &str) -> Option<SocketAddr> {
        self.parsed(node, what, "ADDRESS:PORT, e.g. 0.0.0.0:8443 or [::]:8443")
    }

    /// An address with a prefix; a bare address gets /32 or /128.
    fn ip_net(&mut self, node: &Node, what: &str) -> Option<IpNet> {
        let s = self.string(node)?;
        let s = s.trim();
        if let Ok(n) = s.parse::<IpNet>() {
            return Some(n);
        }
        if let Ok(a) = s.parse::<IpAddr>() {
            return Some(IpNet::from(a));
        }
        self.err(
            node.pos,
            format!("{what}: invalid {s:?} (expected ADDRESS/PREFIX)"),
        );
        None
    }

    fn list<'n, T>(
        &mut self,
        node: &'n Node,
        what: &str,
        mut item: impl FnMut(&mut Self, &'n Node) -> Option<T>,
    ) -> Vec<T> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|n| item(self, n)).collect(),
            // A single value where a list is expected is a common slip.
            other => {
                self.err(
                    node.pos,
                    format!("{what} must be a list, not {}", other.kind()),
                );
                Vec::new()
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node)?;
        if let Some((_, v)) = options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(s.trim()))
        {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        self.err(
            node.pos,
            format!("{what}: {s:?} is not one of {}", names.join(", ")),
        );
        None
    }

    fn file(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        let s = self.nonempty_string(node, what)?;
        let p = PathBuf::from(s);
        if !(self.file_exists)(&p) {
            self.err(node.pos, format!("{what}: {} does not exist", p.display()));
        }
        Some(p)
    }

    // ---- sections ------------------------------------------------------

    fn config(&mut self, root: &Node, env: &Environment) -> Config {
        let mut o = match self.obj(root, "the config file") {
            Some(o) => o,
            None => return default_config(env),
        };
        let node = match o.get("node") {
            Some(n) => self.node_section(n, env),
            None => NodeConfig {
                name: env.hostname.clone(),
            },
        };
        let tcplb = o.get("tcplb").map(|n| self.tcplb(n));
        let listener_names: BTreeSet<String> = tcplb
            .iter()
            .flat_map(|t| t.listeners.iter().map(|l| l.name.clone()))
            .collect();
        let vrrp = o.get("vrrp").map(|n| self.vrrp(n, &listener_names));
        let proxy = o.get("proxy").map(|n| self.proxy(n));
        let admin = match o.get("admin") {
            Some(n) => self.admin(n),
            None => default_admin(),
        };
        self.finish(
            o,
            "the config file",
            &["node", "vrrp", "tcplb", "proxy", "admin"],
        );
        Config {
            node,
            vrrp,
            tcplb,
            proxy,
            admin,
        }
    }

    fn node_section(&mut self, n: &Node, env: &Environment) -> NodeConfig {
        let Some(mut o) = self.obj(n, "node") else {
            return NodeConfig {
                name: env.hostname.clone(),
            };
        };
        let name = o
            .get("name")
            .and_then(|n| self.nonempty_string(n, "node.name"))
            .unwrap_or_else(|| env.hostname.clone());
        self.finish(o, "node", &["name"]);
        NodeConfig { name }
    }

    fn admin(&mut self, n: &Node) -> AdminConfig {
        let mut out = default_admin();
        let Some(mut o) = self.obj(n, "admin") else {
            return out;
        };
        if let Some(n) = o.get("socket") {
            if let Some(s) = self.nonempty_string(n, "admin.socket") {
                out.socket = PathBuf::from(s);
            }
        }
        if o.has("listen") {
            // `listen: null` (or "") turns the TCP listener off.
            out.listen = match o.get("listen") {
                Some(n) if matches!(&n.value, Value::Str(s) if s.is_empty()) => None,
                Some(n) => self.socket_addr(n, "admin.listen"),
                None => None,
            };
        }
        self.finish(o, "admin", &["socket", "listen"]);
        out
    }

    fn vrrp(&mut self, n: &Node, listeners: &BTreeSet<String>) -> VrrpConfig {
        let mut instances = Vec::new();
        let Some(mut o) = self.obj(n, "vrrp") else {
            return VrrpConfig { instances };
        };
        if let Some(list) = o.get("instances") {
            let mut names = BTreeSet::new();
            let mut groups = BTreeMap::new();
            if let Value::Seq(items) = &list.value {
                for item in items {
                    if let Some(inst) = self.vrrp_instance(item, listeners) {
                        if !names.insert(inst.name.clone()) {
                            self.err(
                                item.pos,
                                format!("duplicate VRRP instance name {:?}", inst.name),
                            );
                        }
                        let v6 = inst.virtual_ips.first().is_some_and(|n| n.addr().is_ipv6());
                        let key = (inst.interface.clone(), inst.vrid, v6);
                        if let Some(other) = groups.insert(key, inst.name.clone()) {
                            self.err(
                                item.pos,
                                format!(
                                    "instance {:?} uses the same interface, vrid and address family as {other:?}",
                                    inst.name
                                ),
                            );
                        }
                        instances.push(inst);
                    }
                }
            } else {
                self.err(list.pos, "vrrp.instances must be a list");
            }
        }
        self.finish(o, "vrrp", &["instances"]);
        VrrpConfig { instances }
    }

    fn vrrp_instance(
        &mut self,
        n: &Node,
        listeners: &BTreeSet<String>,
    ) -> Option<VrrpInstanceConfig> {
        let mut o = self.obj(n, "a VRRP instance")?;
        let name = self.required_string(&mut o, "name", "a VRRP instance");
        let interface = self.required_string(&mut o, "interface", "a VRRP instance");
        if let (Some(ifname), Some(node)) = (&interface, o.get("interface")) {
            if ifname.len() > 15 || ifname.contains('/') || ifname.contains(' ') {
                self.err(
                    node.pos,
                    format!("interface {ifname:?} is not a valid interface name"),
                );
            }
        }
        let vrid = match o.get("vrid") {
            Some(n) => self.int_in(n, "vrid", 1, 255).map(|v| v as u8),
            None => {
                self.err(o.pos, "a VRRP instance needs a vrid (1-255)");
                None
            }
        };
        let version = o
            .get("version")
            .and_then(|n| {
                let v = self.int_in(n, "version", 2, 3)?;
                Some(if v == 2 {
                    VrrpVersion::V2
                } else {
                    VrrpVersion::V3
                })
            })
            .unwrap_or(VrrpVersion::V3);
        let priority = o
            .get("priority")
            .and_then(|n| self.int_in(n, "priority", 1, 254))
            .unwrap_or(100) as u8;
        let advert_node = o.get("advert_interval");
        let advert_interval = advert_node
            .and_then(|n| self.duration(n, "advert_interval"))
            .unwrap_or(Duration::from_secs(1));
        if let Some(n) = advert_node {
            let ms = advert_interval.as_millis();
            match version {
                VrrpVersion::V3 => {
                    if !(10..=40_950).contains(&ms)
                        || ms % 10 != 0
                        || advert_interval.subsec_nanos() % 1_000_000 != 0
                    {
                        self.err(
                            n.pos,
                            "advert_interval for VRRPv3 must be 10ms to 40.95s in steps of 10ms",
                        );
                    }
                }
                VrrpVersion::V2 => {
                    if advert_interval.subsec_nanos() != 0
                        || !(1..=255).contains(&advert_interval.as_secs())
                    {
                        self.err(
                            n.pos,
                            "advert_interval for VRRPv2 must be whole seconds from 1s to 255s",
                        );
                    }
                }
            }
        }
        let preempt = o
            .get("preempt")
            .and_then(|n| self.boolean(n))
            .unwrap_or(true);
        let preempt_delay = o
            .get("preempt_delay")
            .and_then(|n| self.duration(n, "preempt_delay"))
            .unwrap_or(Duration::ZERO);
        if let Some(n) = o.get("preempt_delay") {
            if preempt_delay > Duration::from_secs(1000) {
                self.err(n.pos, "preempt_delay must be at most 1000s");
            }
        }
        let immediate_preempt = o
            .get("immediate_preempt")
            .and_then(|n| self.boolean(n))
            .unwrap_or(true);
        let mut virtual_ips = Vec::new();
        match o.get("virtual_ips") {
            Some(list) => {
                virtual_ips = self.list(list, "virtual_ips", |cx, n| cx.ip_net(n, "virtual_ips"));
                if matches!(&list.value, Value::Seq(items) if items.is_empty()) {
                    self.err(list.pos, "virtual_ips must name at least one address");
                }
                let fams: BTreeSet<bool> = virtual_ips.iter().map(|n| n.addr().is_ipv6()).collect();
                if fams.len() > 1 {
                    self.err(
                        list.pos,
                        "virtual_ips must all be IPv4 or all IPv6 (one family per instance)",
                    );
                }
                if fams.contains(&true) && version == VrrpVersion::V2 {
                    self.err(
                        list.pos,
                        "IPv6 virtual_ips need version 3 (VRRPv2 is IPv4 only)",
                    );
                }
                let mut seen = BTreeSet::new();
                for ip in &virtual_ips {
                    if !seen.insert(ip.addr()) {
                        self.err(
                            list.pos,
                            format!("virtual IP {} is listed twice", ip.addr()),
                        );
                    }
                }
            }
            None => self.err(o.pos, "a VRRP instance needs virtual_ips"),
        }
        let vip_v6 = virtual_ips.first().map(|n| n.addr().is_ipv6());
        let unicast_peers = match o.get("unicast_peers") {
            Some(list) => {
                let peers: Vec<IpAddr> = self.list(list, "unicast_peers", |cx, n| {
                    cx.parsed(n, "unicast_peers", "an IP address")
                });
                if let Some(v6) = vip_v6 {
                    if peers.iter().any(|p| p.is_ipv6() != v6) {
                        self.err(
                            list.pos,
                            "unicast_peers must be of the same family as virtual_ips",
                        );
                    }
                }
                peers
            }
            None => Vec::new(),
        };
        let auth_pass = match o.get("auth_pass") {
            Some(n) => {
                let s = self.string(n).unwrap_or_default();
                if version == VrrpVersion::V3 && !s.is_empty() {
                    self.err(
                        n.pos,
                        "auth_pass is only for version 2 (RFC 5798 removed authentication)",
                    );
                }
                if s.len() > 8 {
                    self.err(
                        n.pos,
                        "auth_pass must be at most 8 bytes (keepalived's PASS)",
                    );
                }
                s
            }
            None => String::new(),
        };
        let track = match o.get("track") {
            Some(list) => self.list(list, "track", |cx, n| cx.track(n, listeners)),
            None => Vec::new(),
        };
        let garp_burst = o
            .get("garp_burst")
            .and_then(|n| self.int_in(n, "garp_burst", 0, 100))
            .unwrap_or(5) as u32;
        let garp_refresh = match o.get("garp_refresh") {
            Some(n) => self.duration(n, "garp_refresh").filter(|d| !d.is_zero()),
            None => None,
        };
        let garp_master_delay = match o.get("garp_master_delay") {
            Some(n) => self
                .duration(n, "garp_master_delay")
                .filter(|d| !d.is_zero()),
            None => Some(Duration::from_secs(5)),
        };
        let notify = o
            .get("notify")
            .and_then(|n| self.nonempty_string(n, "notify"));
        // Seconds are the kernel's unit for valid_lft; three adverts' worth
        // lets the master renew it twice before it could lapse.
        let default_lifetime =
            Duration::from_secs((advert_interval.as_secs_f64() * 3.0).ceil().max(2.0) as u64);
        let vip_lifetime = match o.get("vip_lifetime") {
            Some(n) => {
                let d = self.duration(n, "vip_lifetime").unwrap_or(default_lifetime);
                if d.subsec_nanos() != 0 || d < Duration::from_secs(2) {
                    self.err(n.pos, "vip_lifetime must be whole seconds, at least 2s");
                } else if d < advert_interval * 2 {
                    self.err(n.pos, "vip_lifetime must be at least two advert intervals, or the VIP lapses between renewals");
                }
                d
            }
            None => default_lifetime,
        };
        self.finish(
            o,
            "a VRRP instance",
            &[
                "name",
                "interface",
                "vrid",
                "version",
                "priority",
                "advert_interval",
                "preempt",
                "preempt_delay",
                "immediate_preempt",
                "virtual_ips",
                "unicast_peers",
                "auth_pass",
                "track",
                "garp_burst",
                "garp_refresh",
                "garp_master_delay",
                "notify",
                "vip_lifetime",
            ],
        );
        Some(VrrpInstanceConfig {
            name: name?,
            interface: interface?,
            vrid: vrid?,
            version,
            priority,
            advert_interval,
            preempt,
            preempt_delay,
            immediate_preempt,
            virtual_ips,
            unicast_peers,
            auth_pass,
            track,
            garp_burst,
            garp_refresh,
            garp_master_delay,
            notify,
            vip_lifetime,
        })
    }

    fn required_string(&mut self, o: &mut Obj<'_>, key: &str, what: &str) -> Option<String> {
        match o.get(key) {
            Some(n) => self.nonempty_string(n, key),
            None => {
                self.err(o.pos, format!("{what} needs a {key}"));
                None
            }
        }
    }

    fn track(&mut self, n: &Node, listeners: &BTreeSet<String>) -> Option<TrackConfig> {
        let mut o = self.obj(n, "a track entry")?;
        let listener = o.get("listener");
        let interface = o.get("interface");
        let target = match (listener, interface) {
            (Some(l), None) => {
                let name = self.nonempty_string(l, "track.listener")?;
                if !listeners.contains(&name) {
                    self.err(
                        l.pos,
                        format!("track.listener: no tcplb listener is named {name:?}"),
                    );
                }
                Some(TrackTarget::Listener(name))
            }
            (None, Some(i)) => self
                .nonempty_string(i, "track.interface")
                .map(TrackTarget::Interface),
            _ => {
                self.err(
                    n.pos,
                    "a track entry names exactly one of listener or interface",
                );
                None
            }
        };
        let weight = match o.get("weight") {
            Some(w) => self.int_in(w, "track.weight", -253, 253).map(|v| v as i32),
            None => {
                self.err(n.pos, "a track entry needs a weight (e.g. -50)");
                None
            }
        };
        self.finish(o, "a track entry", &["listener", "interface", "weight"]);
        Some(TrackConfig {
            target: target?,
            weight: weight?,
        })
    }

    fn tcplb(&mut self, n: &Node) -> TcplbConfig {
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
            let mut names = BTreeSet::new();
            let mut binds = BTreeMap::new();
            if let Value::Seq(items) = &list.value {
                for item in items {
                    if let Some(l) = self.listener(item) {
                        if !names.insert(l.name.clone()) {
                            self.err(item.pos, format!("duplicate listener name {:?}", l.name));
                        }
                        if let Some(other) = binds.insert(l.bind, l.name.clone()) {
                            self.err(
                                item.pos,
                                format!("listener {:?} binds {} as {other:?} does", l.name, l.bind),
                            );
                        }
                        out.listeners.push(l);
                    }
                }
            } else {
                self.err(list.pos, "tcplb.listeners must be a list");
            }
        }
        self.finish(o, "tcplb", &["listeners", "shutdown_grace"]);
        out
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
            .and_then(|n| {
                self.choice(
                    n,
                    "balance",
                    &[
                        ("roundrobin", Balance::RoundRobin),
                        ("leastconn", Balance::LeastConn),
                        ("source", Balance::Source),
                        ("random", Balance::Random),
                    ],
                )
            })
            .unwrap_or(Balance::RoundRobin);
        let backends = match o.get("backends") {
            Some(list) => {
                let b: Vec<SocketAddr> =
                    self.list(list, "backends", |cx, n| cx.socket_addr(n, "backends"));
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
            None => {
                self.err(o.pos, "a listener needs backends");
                Vec::new()
            }
        };
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
            .and_then(|n| {
                self.choice(
                    n,
                    "on_backend_down",
                    &[
                        ("keep", OnBackendDown::Keep),
                        ("shutdown_sessions", OnBackendDown::ShutdownSessions),
                    ],
                )
            })
            .unwrap_or(OnBackendDown::Keep);
        let idle_timeout = match o.get("idle_timeout") {
            Some(n) => self.duration(n, "idle_timeout").filter(|d| !d.is_zero()),
            None => None,
        };
        self.finish(
            o,
            "a listener",
            &[
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
            ],
        );
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
        })
    }

    fn positive_duration(&mut self, n: &Node, what: &str) -> Option<Duration> {
        let d = self.duration(n, what)?;
        if d.is_zero() {
            self.err(n.pos, format!("{what} must be longer than 0"));
            return None;
        }
        Some(d)
    }

    fn health(&mut self, n: &Node) -> HealthConfig {
        let mut h = default_health();
        let Some(mut o) = self.obj(n, "health") else {
            return h;
        };
        if let Some(n) = o.get("type") {
            if let Some(k) = self.choice(
                n,
                "health.type",
                &[
                    ("https", HealthKind::Https),
                    ("http", HealthKind::Http),
                    ("tcp", HealthKind::Tcp),
                ],
            ) {
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
        if let Some(n) = o.get("host") {
            h.host = self.nonempty_string(n, "health.host");
        }
        let tls_node = o.get("tls");
        if let Some(t) = tls_node {
            h.tls = self.tls(t);
        }
        if h.kind == HealthKind::Https && h.tls.ca_file.is_none() && !h.tls.insecure_skip_verify {
            // Verification stays on: there is no CA to verify with unless told.
            let pos = tls_node.map_or(o.pos, |t| t.pos);
            self.err(
                pos,
                "https health checks verify the backend: set health.tls.ca_file (e.g. /etc/kubernetes/pki/ca.crt) or health.tls.insecure_skip_verify: true",
            );
        }
        if h.kind != HealthKind::Https && tls_node.is_some() {
            self.err(
                tls_node.map_or(o.pos, |t| t.pos),
                "health.tls only applies to type https",
            );
        }
        self.finish(
            o,
            "health",
            &[
                "type",
                "path",
                "expect_status",
                "interval",
                "timeout",
                "rise",
                "fall",
                "host",
                "tls",
            ],
        );
        h
    }

    fn tls(&mut self, n: &Node) -> TlsConfig {
        let mut t = TlsConfig::default();
        let Some(mut o) = self.obj(n, "health.tls") else {
            return t;
        };
        t.ca_file = o.get("ca_file").and_then(|n| self.file(n, "tls.ca_file"));
        t.server_name = o
            .get("server_name")
            .and_then(|n| self.nonempty_string(n, "tls.server_name"));
        if let Some(n) = o.get("insecure_skip_verify") {
            t.insecure_skip_verify = self.boolean(n).unwrap_or(false);
        }
        t.cert_file = o
            .get("cert_file")
            .and_then(|n| self.file(n, "tls.cert_file"));
        t.key_file = o.get("key_file").and_then(|n| self.file(n, "tls.key_file"));
        if t.cert_file.is_some() != t.key_file.is_some() {
            self.err(
                o.pos,
                "tls.cert_file and tls.key_file go together: set both or neither",
            );
        }
        self.finish(
            o,
            "health.tls",
            &[
                "ca_file",
                "server_name",
                "insecure_skip_verify",
                "cert_file",
                "key_file",
            ],
        );
        t
    }

    fn proxy(&mut self, n: &Node) -> ProxyConfig {
        let mut p = default_proxy();
        let Some(mut o) = self.obj(n, "proxy") else {
            return p;
        };
        if let Some(n) = o.get("mode") {
            if let Some(m) = self.choice(
                n,
                "proxy.mode",
                &[
                    ("ipvs", ProxyMode::Ipvs),
                    ("nftables", ProxyMode::Nftables),
                    ("none", ProxyMode::None),
                ],
            ) {
                p.mode = m;
            }
        }
        p.kube_proxy_config = o
            .get("kube_proxy_config")
            .and_then(|n| self.file(n, "proxy.kube_proxy_config"));
        p.kubeconfig = o
            .get("kubeconfig")
            .and_then(|n| self.file(n, "proxy.kubeconfig"));
        if let Some(n) = o.get("cluster_cidr") {
            p.cluster_cidr = self.cidr_list(n, "proxy.cluster_cidr");
        }
        if let Some(n) = o.get("masquerade_all") {
            p.masquerade_all = self.boolean(n).unwrap_or(false);
        }
        if let Some(n) = o.get("node_port_addresses") {
            p.node_port_addresses = self.cidr_list(n, "proxy.node_port_addresses");
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
        self.finish(
            o,
            "proxy",
            &[
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
            ],
        );
        p
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
                const KNOWN: &[&str] = &[
                    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo",
                    "ovf", "twos",
                ];
                if KNOWN.contains(&s.as_str()) {
                    c.scheduler = s;
                } else {
                    self.err(
                        n.pos,
                        format!(
                            "proxy.ipvs.scheduler: {s:?} is not one of {}",
                            KNOWN.join(", ")
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
        self.finish(
            o,
            "proxy.ipvs",
            &[
                "scheduler",
                "strict_arp",
                "exclude_cidrs",
                "sync_period",
                "min_sync_period",
                "tcp_timeout",
                "tcp_fin_timeout",
                "udp_timeout",
            ],
        );
        c
    }
}

/// The known key nearest to a misspelt one, when it is close enough to help.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn default_config(env: &Environment) -> Config {
    Config {
        node: NodeConfig {
            name: env.hostname.clone(),
        },
        vrrp: None,
        tcplb: None,
        proxy: None,
        admin: default_admin(),
    }
}

fn default_admin() -> AdminConfig {
    AdminConfig {
        socket: PathBuf::from("/run/lbd/lbd.sock"),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 9440))),
    }
}

fn default_health() -> HealthConfig {
    // haproxy's `check` defaults: inter 2s, rise 2, fall 3.
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
    }
}

fn default_ipvs() -> IpvsConfig {
    // kube-proxy's defaults.
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
        cluster_cidr: Vec::new(),
        masquerade_all: false,
        node_port_addresses: Vec::new(),
        hostname_override: None,
        ipvs: default_ipvs(),
        healthz_bind: Some(SocketAddr::from(([0, 0, 0, 0], 10256))),
        metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
    }
}
