//! lbd.yaml as the tests write it, one builder per section. The YAML is
//! written out (not serialized from lbd's types) so that the tests read
//! the file format an operator writes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The `admin:` section: the socket in the test's own dir, no TCP listener.
pub fn admin_section(socket: &Path) -> String {
    format!("admin:\n  socket: {}\n  listen: null\n", socket.display())
}

/// `node:` with its name.
pub fn node_section(name: &str) -> String {
    format!("node:\n  name: {name}\n")
}

/// One `tcplb.listeners[]` entry. `backends`: addresses (or test backends,
/// shown as theirs); `health` is the flow mapping of the `health:` key;
/// `extra` more lines of the listener, indented six spaces.
pub fn listener_yaml(
    name: &str,
    bind: SocketAddr,
    backends: &[impl std::fmt::Display],
    balance: &str,
    health: &str,
    extra: &str,
) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    format!(
        "    - name: {name}\n      bind: {bind}\n      balance: {balance}\n      backends: [{}]\n      health: {health}\n{extra}",
        list.join(", ")
    )
}

/// `tcplb:` with these listeners (from [`listener_yaml`]) and, if given, a
/// `shutdown_grace`.
pub fn tcplb_section(shutdown_grace: Option<&str>, listeners: &[String]) -> String {
    let mut s = String::from("tcplb:\n");
    if let Some(g) = shutdown_grace {
        let _ = writeln!(s, "  shutdown_grace: {g}");
    }
    s.push_str("  listeners:\n");
    for l in listeners {
        s.push_str(l);
    }
    s
}

/// One `vrrp.instances[]` entry.
#[derive(Clone)]
pub struct VrrpInstanceYaml {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
    pub priority: u8,
    pub advert_interval: Duration,
    /// None: the default (true).
    pub preempt: Option<bool>,
    /// CIDRs.
    pub virtual_ips: Vec<String>,
    pub unicast_peers: Vec<String>,
    pub vip_lifetime: Option<String>,
    pub auth_pass: Option<String>,
    /// More lines of the instance, indented six spaces.
    pub extra: String,
}

impl VrrpInstanceYaml {
    /// Instance `vip`, VRID 51 on eth0, version 3, 100 ms adverts.
    pub fn new(priority: u8, vip: &str) -> VrrpInstanceYaml {
        VrrpInstanceYaml {
            name: "vip".into(),
            interface: "eth0".into(),
            vrid: 51,
            version: 3,
            priority,
            advert_interval: Duration::from_millis(100),
            preempt: None,
            virtual_ips: vec![vip.to_string()],
            unicast_peers: Vec::new(),
            vip_lifetime: None,
            auth_pass: None,
            extra: String::new(),
        }
    }

    pub fn yaml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "    - name: {}", self.name);
        let _ = writeln!(s, "      interface: {}", self.interface);
        let _ = writeln!(s, "      vrid: {}", self.vrid);
        let _ = writeln!(s, "      version: {}", self.version);
        let _ = writeln!(s, "      priority: {}", self.priority);
        let _ = writeln!(
            s,
            "      advert_interval: {}ms",
            self.advert_interval.as_millis()
        );
        if let Some(p) = self.preempt {
            let _ = writeln!(s, "      preempt: {p}");
        }
        let _ = writeln!(s, "      virtual_ips: [{}]", self.virtual_ips.join(", "));
        if !self.unicast_peers.is_empty() {
            // Quoted: an IPv6 address is not a plain YAML scalar everywhere.
            let peers: Vec<String> = self
                .unicast_peers
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect();
            let _ = writeln!(s, "      unicast_peers: [{}]", peers.join(", "));
        }
        if let Some(l) = &self.vip_lifetime {
            let _ = writeln!(s, "      vip_lifetime: {l}");
        }
        if let Some(p) = &self.auth_pass {
            let _ = writeln!(s, "      auth_pass: \"{p}\"");
        }
        s.push_str(&self.extra);
        s
    }
}

/// `vrrp:` with these instances.
pub fn vrrp_section(instances: &[VrrpInstanceYaml]) -> String {
    let mut s = String::from("vrrp:\n  instances:\n");
    for i in instances {
        s.push_str(&i.yaml());
    }
    s
}
