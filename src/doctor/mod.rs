//! `lbd doctor`: checks a node before lbd is installed and after: the
//! kernel modules and sysctls the proxy needs, keepalived / haproxy /
//! kube-proxy still running, ports lbd will listen on already taken, the
//! VIP already answering on the LAN, the files the config names. Each
//! finding says how to fix it.
//!
//! [`diagnose`] is pure: the facts about the node are gathered by
//! [`facts::gather`] (the I/O edge: /proc, /sys, an ARP probe) and passed
//! in, so every check is tested with made-up nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::config::{Config, ProxyMode};
use crate::status::StatusReport;

pub mod arp;
pub mod facts;

/// How much a finding matters: problems make `lbd doctor` exit 1; notes
/// are things to know that need no change (a CA that `kubeadm init` has
/// not written yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Problem,
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// What is wrong, one line.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Problem => "PROBLEM",
            Severity::Note => "note   ",
        };
        write!(f, "{tag}  {}\n         fix: {}", self.what, self.fix)
    }
}

/// A process on the node, from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub name: String,
}

/// A socket listening on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub addr: SocketAddr,
    pub udp: bool,
    /// Who holds it, when /proc says.
    pub owner: Option<Process>,
}

/// What an ARP probe for a VIP found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipAnswer {
    /// Nobody answered.
    Silent,
    /// A host with this MAC answered for it.
    AnsweredBy(String),
    /// Not probed, and why (IPv6, no such interface, no permission).
    NotProbed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipProbe {
    pub instance: String,
    pub interface: String,
    pub vip: IpAddr,
    pub answer: VipAnswer,
}

/// Everything `diagnose` looks at, gathered by [`facts::gather`].
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub kernel_release: String,
    /// Loaded or built in (`/proc/modules`, `/sys/module`, modules.builtin).
    pub modules: BTreeSet<String>,
    /// sysctl name -> value; absent: no such key on this kernel.
    pub sysctls: BTreeMap<String, String>,
    pub processes: Vec<Process>,
    pub listening: Vec<Listening>,
    /// Interfaces that exist.
    pub interfaces: BTreeSet<String>,
    /// Addresses configured on this host: (interface, address).
    pub local_addresses: Vec<(String, IpAddr)>,
    pub vip_probes: Vec<VipProbe>,
    /// Paths the config names and whether they exist.
    pub files: BTreeMap<PathBuf, bool>,
    /// `nft` found in PATH.
    pub nft_binary: bool,
    /// What the running lbd answered on its admin socket, if it runs.
    pub status: Option<StatusReport>,
}

/// The processes that do lbd's job: running beside it, they fight it.
const RIVALS: &[(&str, &str)] = &[
    ("keepalived", "holds VIPs with VRRP"),
    ("haproxy", "balances the apiservers"),
    ("kube-proxy", "programs Services"),
    ("kube-vip", "holds the VIP and balances"),
];

/// Every finding for a node that runs (or will run) `config`, problems
/// first. `config_problems`: why the config did not load (then only the
/// node is checked).
pub fn diagnose(
    config: Option<&Config>,
    config_problems: &[String],
    facts: &Facts,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in config_problems {
        out.push(Finding {
            severity: Severity::Problem,
            what: format!("config: {p}"),
            fix: "fix the file at that line (lbd check -c FILE shows every problem)".into(),
        });
    }
    let proxy = config
        .and_then(|c| c.proxy.as_ref())
        .filter(|p| p.mode != ProxyMode::None);
    if let Some(p) = proxy {
        if p.mode == ProxyMode::Ipvs {
            modules(p.ipvs.scheduler.as_str(), facts, &mut out);
            sysctls(p.ipvs.strict_arp, facts, &mut out);
        }
        if p.mode == ProxyMode::Nftables && !facts.nft_binary {
            out.push(Finding {
                severity: Severity::Problem,
                what: "proxy mode nftables: no nft binary in PATH".into(),
                fix: "apt-get install nftables (dnf install nftables), or proxy.mode: ipvs".into(),
            });
        }
    }
    rivals(config, facts, &mut out);
    if let Some(c) = config {
        ports(c, facts, &mut out);
        vips(c, facts, &mut out);
        files(facts, &mut out);
    }
    if let Some(s) = &facts.status {
        for reason in crate::status::client::degraded(s) {
            out.push(Finding {
                severity: Severity::Problem,
                what: format!("the running lbd: {reason}"),
                fix: "lbd status shows the detail (last error of each backend, the proxy's last error)".into(),
            });
        }
    }
    out.sort_by_key(|f| f.severity);
    out
}

/// What the proxy in IPVS mode needs loaded, as kube-proxy checks it:
/// ip_vs, the scheduler's module, nf_conntrack, and dummy for kube-ipvs0.
fn modules(scheduler: &str, facts: &Facts, out: &mut Vec<Finding>) {
    let sched = format!("ip_vs_{scheduler}");
    let wanted = ["ip_vs", sched.as_str(), "nf_conntrack", "dummy"];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|m| !facts.modules.contains(*m))
        .collect();
    if missing.is_empty() {
        return;
    }
    out.push(Finding {
        severity: Severity::Problem,
        what: format!(
            "kernel modules not loaded: {} (the proxy in IPVS mode needs them; lbd loads none)",
            missing.join(", ")
        ),
        fix: format!(
            "modprobe -a {} and list them in /etc/modules-load.d/lbd.conf",
            missing.join(" ")
        ),
    });
}

fn sysctls(strict_arp: bool, facts: &Facts, out: &mut Vec<Finding>) {
    let wanted = crate::proxy::kernel::sysctl::proxy_sysctls(&facts.kernel_release, strict_arp);
    let mut wrong = Vec::new();
    for s in wanted {
        match facts.sysctls.get(s.name) {
            Some(v) if v == s.value => {}
            // net.ipv4.vs.* appear with ip_vs: the module finding says it.
            None if s.name.starts_with("net.ipv4.vs.") => {}
            Some(v) => wrong.push(format!("{} = {v} (wants {})", s.name, s.value)),
            None => wrong.push(format!("{} is missing (wants {})", s.name, s.value)),
        }
    }
    if wrong.is_empty() {
        return;
    }
    let lines: Vec<String> =
        crate::proxy::kernel::sysctl::proxy_sysctls(&facts.kernel_release, strict_arp)
            .iter()
            .map(|s| format!("{} = {}", s.name, s.value))
            .collect();
    out.push(Finding {
        severity: Severity::Problem,
        what: format!("sysctls: {}", wrong.join("; ")),
        fix: format!(
            "write them to /etc/sysctl.d/90-lbd.conf and run sysctl --system (in a pod lbd cannot set them): {}",
            lines.join(", ")
        ),
    });
}

fn rivals(config: Option<&Config>, facts: &Facts, out: &mut Vec<Finding>) {
    for p in &facts.processes {
        let Some((name, does)) = RIVALS.iter().find(|(n, _)| p.name == *n) else {
            continue;
        };
        // Only a problem where lbd does the same job on this node.
        let same_job = match *name {
            "keepalived" | "kube-vip" => config.is_none_or(|c| c.vrrp.is_some()),
            "haproxy" => config.is_none_or(|c| c.tcplb.is_some()),
            _ => config.is_none_or(|c| c.proxy.as_ref().is_some_and(|p| p.mode != ProxyMode::None)),
        };
        let fix = match *name {
            "kube-proxy" => "delete its pod from this node: kubectl -n kube-system patch ds kube-proxy (docs/kubeadm.md, \"retiring kube-proxy\"), or leave lbd's proxy off here".to_string(),
            n => format!(
                "systemctl disable --now {n}, or move /etc/kubernetes/manifests/{n}.yaml away (docs/migration.md: one node at a time)"
            ),
        };
        out.push(Finding {
            severity: if same_job {
                Severity::Problem
            } else {
                Severity::Note
            },
            what: format!("{name} runs (pid {}): it {does}, as lbd does", p.pid),
            fix,
        });
    }
}

/// Two TCP binds collide on one port when the addresses are the same or one
/// is the wildcard of its family; `[::]` (dual stack) covers IPv4 too.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let covers = |x: IpAddr, y: IpAddr| {
        x == y || (x.is_unspecified() && (x.is_ipv4() == y.is_ipv4() || x.is_ipv6()))
    };
    covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

fn ports(c: &Config, facts: &Facts, out: &mut Vec<Finding>) {
    let mut wanted: Vec<(String, SocketAddr)> = Vec::new();
    if let Some(t) = &c.tcplb {
        for l in &t.listeners {
            wanted.push((format!("listener {}", l.name), l.bind));
        }
    }
    if let Some(a) = c.admin.listen {
        wanted.push(("admin.listen".into(), a));
    }
    if let Some(p) = c.proxy.as_ref().filter(|p| p.mode != ProxyMode::None) {
        if let Some(a) = p.healthz_bind {
            wanted.push(("proxy.healthz_bind".into(), a));
        }
        if let Some(a) = p.metrics_bind {
            wanted.push(("proxy.metrics_bind".into(), a));
        }
    }
    for (what, addr) in wanted {
        let taken = facts
            .listening
            .iter()
            .filter(|l| !l.udp && overlaps(l.addr, addr))
            .find(|l| l.owner.as_ref().is_none_or(|o| o.name != "lbd"));
        let Some(l) = taken else { continue };
        let who = match &l.owner {
            Some(o) => format!("{} (pid {})", o.name, o.pid),
            None => "another process".into(),
        };
        out.push(Finding {
            severity: Severity::Problem,
            what: format!("{what} {addr}: {} is taken by {who}", l.addr),
            fix: format!("stop {who} or give {what} another address"),
        });
    }
}

fn vips(c: &Config, facts: &Facts, out: &mut Vec<Finding>) {
    let Some(v) = &c.vrrp else { return };
    for i in &v.instances {
        if !facts.interfaces.contains(&i.interface) {
            out.push(Finding {
                severity: Severity::Problem,
                what: format!("VRRP instance {}: no interface {}", i.name, i.interface),
                fix: "set interface to the one the control-plane nodes share (ip -br link)".into(),
            });
            continue;
        }
        let ours = facts
            .status
            .as_ref()
            .and_then(|s| s.vrrp.iter().find(|r| r.name == i.name));
        let master_here = ours.is_some_and(|r| r.state == crate::vrrp::fsm::State::Master);
        let lbd_runs_it = ours.is_some();
        for net in &i.virtual_ips {
            let vip = net.addr();
            let local = facts
                .local_addresses
                .iter()
                .find(|(_, a)| *a == vip)
                .map(|(dev, _)| dev.clone());
            if let (Some(dev), false) = (&local, master_here) {
                out.push(Finding {
                    severity: Severity::Problem,
                    what: format!(
                        "VIP {vip} is configured on {dev} of this host, but no lbd here holds it as master"
                    ),
                    fix: format!(
                        "remove it (ip addr del {net} dev {dev}) and from netplan/ifcfg, or stop the keepalived that added it"
                    ),
                });
                continue;
            }
            let probe = facts
                .vip_probes
                .iter()
                .find(|p| p.instance == i.name && p.vip == vip);
            match probe.map(|p| &p.answer) {
                Some(VipAnswer::AnsweredBy(mac)) if !lbd_runs_it => out.push(Finding {
                    severity: Severity::Problem,
                    what: format!(
                        "VIP {vip} already answers on {} from {mac}: another host holds it (a keepalived, a static address, another cluster's VRRP)",
                        i.interface
                    ),
                    fix: "find that host (ip neigh | grep MAC on a neighbour) and take the address off it; while migrating from keepalived with the same vrid and version 2 this is expected".into(),
                }),
                Some(VipAnswer::NotProbed(why)) => out.push(Finding {
                    severity: Severity::Note,
                    what: format!("VIP {vip} on {}: not probed ({why})", i.interface),
                    fix: format!("check by hand: arping -D -I {} {vip}", i.interface),
                }),
                _ => {}
            }
        }
    }
}

fn files(facts: &Facts, out: &mut Vec<Finding>) {
    for (path, exists) in &facts.files {
        if !exists {
            out.push(Finding {
                severity: Severity::Note,
                what: format!("{} does not exist yet", path.display()),
                fix: "expected before kubeadm init writes it: lbd checks the apiservers with TLS handshakes until it appears (docs/kubeadm.md)".into(),
            });
        }
    }
}

/// The findings as `lbd doctor` prints them, with a summary line.
pub fn render(findings: &[Finding]) -> String {
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    let notes = findings.len() - problems;
    let mut s = String::new();
    for f in findings {
        s.push_str(&f.to_string());
        s.push('\n');
    }
    s.push_str(&match (problems, notes) {
        (0, 0) => "lbd doctor: nothing found\n".to_string(),
        (0, n) => format!("lbd doctor: no problems, {n} note(s)\n"),
        (p, n) => format!("lbd doctor: {p} problem(s), {n} note(s)\n"),
    });
    s
}
