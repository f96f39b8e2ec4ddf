//! `lbd proxy cleanup-kube-proxy`: what kube-proxy leaves behind that lbd
//! does not use, found and removed only when the operator asks.
//!
//! This module is the pure core: it parses what the tools print
//! (`iptables-save`, `ipset list -n`, `nft -j list tables`) into an
//! [`Inventory`], decides what is kube-proxy's ([`plan`]) and renders the
//! `iptables-restore --noflush` documents that remove it. `edge` runs the
//! tools, IPVS and rtnetlink.
//!
//! Ownership follows kube-proxy's own cleanup code (pkg/proxy/ipvs,
//! pkg/proxy/iptables, pkg/proxy/nftables: `CleanupLeftovers`) and what the
//! kubelet creates (pkg/kubelet/kubelet_network_linux.go). Names are an
//! allow-list, never "every KUBE-*": kube-router, for one, makes
//! `KUBE-NWPLCY-*` chains and `KUBE-SRC-*` sets that are none of ours.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::proxy::model::ServiceKey;

pub mod edge;

/// The chains kube-proxy creates by name, in its ipvs and iptables modes
/// (current and older releases), in tables nat, filter and mangle.
pub const KUBE_PROXY_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-POSTROUTING",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-MARK-MASQ",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-NODEPORTS",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
    "KUBE-PROXY-CANARY",
];

/// The per-Service and per-endpoint chains of kube-proxy's iptables mode
/// (KUBE-XLB- is the older name of KUBE-SVL-).
pub const KUBE_PROXY_CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SVL-",
    "KUBE-XLB-",
];

/// The kubelet's chains: never touched, whatever the table. KUBE-MARK-DROP
/// is only made by old kubelets; an old kube-proxy in ipvs mode also had a
/// nat KUBE-FIREWALL, which stays too (an orphan once KUBE-SERVICES is
/// gone: nothing jumps to it).
pub const KUBELET_CHAINS: &[&str] = &[
    "KUBE-FIREWALL",
    "KUBE-KUBELET-CANARY",
    "KUBE-MARK-DROP",
    "KUBE-IPTABLES-HINT",
];

/// The ipsets of kube-proxy's ipvs mode (pkg/proxy/ipvs: `ipsetInfo`). The
/// IPv6 proxier names its sets `KUBE-6-...` instead of `KUBE-...`.
pub const KUBE_PROXY_IPSETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// The tables kube-proxy writes to; raw and security are never read.
pub const TABLES: &[&str] = &["nat", "filter", "mangle"];

/// kube-proxy's nftables mode table, in families ip and ip6 only.
pub const NFT_TABLE: &str = "kube-proxy";

/// Whether kube-proxy made the chain `name`.
pub fn is_kube_proxy_chain(name: &str) -> bool {
    if KUBELET_CHAINS.contains(&name) {
        return false;
    }
    KUBE_PROXY_CHAINS.contains(&name)
        || KUBE_PROXY_CHAIN_PREFIXES
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len())
}

/// Whether kube-proxy made the ipset `name`.
pub fn is_kube_proxy_ipset(name: &str) -> bool {
    let v4 = match name.strip_prefix("KUBE-6-") {
        Some(rest) => format!("KUBE-{rest}"),
        None => name.to_string(),
    };
    KUBE_PROXY_IPSETS.contains(&v4.as_str())
}

/// IPv4 or IPv6 iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// Which iptables: the nf_tables backend, the legacy (x_tables) one, or
/// the plain name when the system ships no suffixed binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Nft,
    Legacy,
    Default,
}

/// One iptables tool pair (`*-save`, `*-restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tool {
    pub family: Family,
    pub backend: Backend,
}

impl Tool {
    /// `iptables`, `ip6tables-legacy`, ...: the program's stem.
    pub fn name(&self) -> &'static str {
        match (self.family, self.backend) {
            (Family::V4, Backend::Nft) => "iptables-nft",
            (Family::V4, Backend::Legacy) => "iptables-legacy",
            (Family::V4, Backend::Default) => "iptables",
            (Family::V6, Backend::Nft) => "ip6tables-nft",
            (Family::V6, Backend::Legacy) => "ip6tables-legacy",
            (Family::V6, Backend::Default) => "ip6tables",
        }
    }
    pub fn save(&self) -> String {
        format!("{}-save", self.name())
    }
    pub fn restore(&self) -> String {
        format!("{}-restore", self.name())
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule of an `iptables-save` dump, as printed (after `-A `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// The rule's specification, exactly as `iptables-save` printed it, so
    /// that `-D CHAIN SPEC` names this very rule.
    pub spec: String,
    /// The `-j`/`-g` target, if any.
    pub target: Option<String>,
    /// The ipsets its `--match-set` matches name.
    pub sets: Vec<String>,
}

/// One table of an `iptables-save` dump.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SavedTable {
    pub name: String,
    /// Every chain, with whether it is built in (has a policy).
    pub chains: Vec<(String, bool)>,
    pub rules: Vec<Rule>,
}

impl SavedTable {
    fn is_builtin(&self, chain: &str) -> bool {
        self.chains.iter().any(|(c, b)| c == chain && *b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {what} outside a table (no `*table` line before it)")]
    OutsideTable { line: usize, what: &'static str },
    #[error("line {line}: cannot parse {text:?}")]
    Line { line: usize, text: String },
    #[error("line {line}: unterminated quote in {text:?}")]
    Quote { line: usize, text: String },
    #[error("table {0} has no COMMIT")]
    NoCommit(String),
    #[error("nft JSON: {0}")]
    Json(String),
}

/// Parses an `iptables-save` dump (any number of tables; comments and
/// counters ignored).
pub fn parse_save(text: &str) -> Result<Vec<SavedTable>, ParseError> {
    let mut tables = Vec::new();
    let mut current: Option<SavedTable> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('*') {
            if let Some(t) = current.take() {
                return Err(ParseError::NoCommit(t.name));
            }
            current = Some(SavedTable {
                name: name.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(table) = current.as_mut() else {
            return Err(ParseError::OutsideTable {
                line,
                what: "a chain, rule or COMMIT",
            });
        };
        if l == "COMMIT" {
            if let Some(t) = current.take() {
                tables.push(t);
            }
        } else if let Some(decl) = l.strip_prefix(':') {
            // `:INPUT ACCEPT [0:0]` (built in) or `:KUBE-SERVICES - [0:0]`.
            let mut it = decl.split_whitespace();
            let (Some(name), Some(policy)) = (it.next(), it.next()) else {
                return Err(ParseError::Line {
                    line,
                    text: raw.to_string(),
                });
            };
            table.chains.push((name.to_string(), policy != "-"));
        } else if let Some(rest) = l.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let tokens = tokenize(spec).ok_or_else(|| ParseError::Quote {
                line,
                text: raw.to_string(),
            })?;
            table.rules.push(Rule {
                chain: chain.to_string(),
                spec: spec.to_string(),
                target: target_of(&tokens),
                sets: sets_of(&tokens),
            });
        } else {
            return Err(ParseError::Line {
                line,
                text: raw.to_string(),
            });
        }
    }
    match current {
        Some(t) => Err(ParseError::NoCommit(t.name)),
        None => Ok(tables),
    }
}

/// Splits a rule as iptables-save quotes it: double quotes group, a
/// backslash escapes the next character. None: an unterminated quote.
fn tokenize(spec: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.extend(chars.next());
                in_token = true;
            }
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if in_token {
        out.push(cur);
    }
    Some(out)
}

fn target_of(tokens: &[String]) -> Option<String> {
    tokens
        .windows(2)
        .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
        .map(|w| w[1].clone())
}

fn sets_of(tokens: &[String]) -> Vec<String> {
    tokens
        .windows(2)
        .filter(|w| w[0] == "--match-set")
        .map(|w| w[1].clone())
        .collect()
}

/// The names `ipset list -n` prints, one a line.
pub fn parse_ipset_names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// One nftables table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NftTable {
    pub family: String,
    pub name: String,
}

impl fmt::Display for NftTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// The tables in `nft -j list tables` output.
pub fn parse_nft_tables(json: &str) -> Result<Vec<NftTable>, ParseError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| ParseError::Json(e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or_else(|| ParseError::Json("no \"nftables\" array".into()))?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("table"))
        .filter_map(|t| {
            Some(NftTable {
                family: t.get("family")?.as_str()?.to_string(),
                name: t.get("name")?.as_str()?.to_string(),
            })
        })
        .collect())
}

/// An inclusive port range (`--node-port-range 30000-32767`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    /// kube-apiserver's default --service-node-port-range.
    fn default() -> Self {
        PortRange {
            first: 30000,
            last: 32767,
        }
    }
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 30000-32767"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("{s:?}: port {p:?}: {e}"))
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(format!("{s:?}: the first port is above the last"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// IPVS as `--ipvs` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsInventory {
    pub services: Vec<ServiceKey>,
    /// kube-ipvs0's addresses; None when there is no such link.
    pub link: Option<Vec<IpAddr>>,
    /// The addresses on every other link (NodePorts listen on them).
    pub host: Vec<IpAddr>,
}

/// Everything the tools listed. A tool that is absent or failed is not
/// here (the edge reports it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    pub iptables: Vec<(Tool, Vec<SavedTable>)>,
    /// None: the ipset tool is absent.
    pub ipsets: Option<Vec<String>>,
    pub nft: Vec<NftTable>,
    /// None: IPVS not asked for (no `--ipvs`) or not listed.
    pub ipvs: Option<IpvsInventory>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanOptions {
    pub ipvs: bool,
    pub node_ports: PortRange,
}

/// The rules and chains of one table, removed in one `iptables-restore
/// --noflush` transaction: all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCleanup {
    pub tool: Tool,
    pub table: String,
    /// Rules of built-in chains that jump to a chain below.
    pub jumps: Vec<Rule>,
    pub chains: Vec<String>,
}

impl TableCleanup {
    /// The `iptables-restore --noflush` input: the jumps deleted by their
    /// exact text, then every chain flushed (so none still jumps to
    /// another), then deleted.
    pub fn document(&self) -> String {
        let mut doc = format!("*{}\n", self.table);
        for r in &self.jumps {
            doc.push_str(&format!("-D {} {}\n", r.chain, r.spec));
        }
        for c in &self.chains {
            doc.push_str(&format!("-F {c}\n"));
        }
        for c in &self.chains {
            doc.push_str(&format!("-X {c}\n"));
        }
        doc.push_str("COMMIT\n");
        doc
    }

    /// One line per thing removed.
    pub fn items(&self) -> Vec<String> {
        let at = format!("{} {}", self.tool, self.table);
        self.jumps
            .iter()
            .map(|r| format!("{at}: rule -A {} {}", r.chain, r.spec))
            .chain(self.chains.iter().map(|c| format!("{at}: chain {c}")))
            .collect()
    }
}

/// One step of the cleanup, in the order [`plan`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Iptables(TableCleanup),
    DestroyIpset(String),
    DeleteNftTable(NftTable),
    DeleteIpvsService(ServiceKey),
    DeleteLink(String),
}

impl Action {
    /// One line per thing the action removes.
    pub fn items(&self) -> Vec<String> {
        match self {
            Action::Iptables(t) => t.items(),
            Action::DestroyIpset(s) => vec![format!("ipset {s}")],
            Action::DeleteNftTable(t) => vec![format!("nft table {t}")],
            Action::DeleteIpvsService(k) => vec![format!("ipvs service {k}")],
            Action::DeleteLink(l) => vec![format!("link {l}")],
        }
    }
}

/// What to do, and what was found but left on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Why a kube-proxy object stays (someone else still uses it).
    pub kept: Vec<String>,
}

impl Plan {
    /// How many things the actions remove.
    pub fn count(&self) -> usize {
        self.actions.iter().map(|a| a.items().len()).sum()
    }
}

/// The cleanup of `inv`: jump rules, then chains (per table, one
/// transaction), then ipsets (only unreferenced once the rules are gone),
/// then nft tables, then (with `ipvs`) IPVS services and kube-ipvs0.
pub fn plan(inv: &Inventory, opts: &PlanOptions) -> Plan {
    let mut out = Plan::default();
    // Sets still matched by a rule that stays: destroying them would fail
    // (the kernel refuses a set in use) and break that rule's owner.
    let mut used_sets = BTreeSet::new();
    for (tool, tables) in &inv.iptables {
        for t in tables.iter().filter(|t| TABLES.contains(&t.name.as_str())) {
            let (cleanup, kept) = plan_table(*tool, t);
            for r in &t.rules {
                let removed = cleanup.chains.contains(&r.chain) || cleanup.jumps.contains(r);
                if !removed {
                    used_sets.extend(r.sets.iter().cloned());
                }
            }
            out.kept.extend(kept);
            if !cleanup.jumps.is_empty() || !cleanup.chains.is_empty() {
                out.actions.push(Action::Iptables(cleanup));
            }
        }
    }
    for s in inv.ipsets.iter().flatten() {
        if !is_kube_proxy_ipset(s) {
            continue;
        }
        if used_sets.contains(s) {
            out.kept
                .push(format!("ipset {s}: still matched by a rule that stays"));
        } else {
            out.actions.push(Action::DestroyIpset(s.clone()));
        }
    }
    for t in &inv.nft {
        if t.name == NFT_TABLE && (t.family == "ip" || t.family == "ip6") {
            out.actions.push(Action::DeleteNftTable(t.clone()));
        }
    }
    if let (true, Some(ipvs)) = (opts.ipvs, &inv.ipvs) {
        let link: &[IpAddr] = ipvs.link.as_deref().unwrap_or(&[]);
        for k in &ipvs.services {
            let service_ip = link.contains(&k.addr);
            let node_port = ipvs.host.contains(&k.addr) && opts.node_ports.contains(k.port);
            if service_ip || node_port {
                out.actions.push(Action::DeleteIpvsService(*k));
            }
        }
        if ipvs.link.is_some() {
            out.actions.push(Action::DeleteLink(
                crate::proxy::kernel::dummy::KUBE_IPVS0.to_string(),
            ));
        }
    }
    out
}

/// The cleanup of one table and the kube-proxy chains it keeps because a
/// chain that stays (a user's, the kubelet's) still jumps to them: deleting
/// them would fail the whole transaction.
fn plan_table(tool: Tool, t: &SavedTable) -> (TableCleanup, Vec<String>) {
    let mut remove: BTreeSet<&str> = t
        .chains
        .iter()
        .filter(|(c, builtin)| !builtin && is_kube_proxy_chain(c))
        .map(|(c, _)| c.as_str())
        .collect();
    let mut kept = Vec::new();
    // Each round keeps at least one more chain or stops: bounded by the
    // number of chains.
    for _ in 0..=t.chains.len() {
        let mut changed = false;
        for r in &t.rules {
            if t.is_builtin(&r.chain) || remove.contains(r.chain.as_str()) {
                continue;
            }
            let Some(target) = r.target.as_deref() else {
                continue;
            };
            if remove.remove(target) {
                kept.push(format!(
                    "{tool} {}: chain {target}: still jumped to from chain {}",
                    t.name, r.chain
                ));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let jumps = t
        .rules
        .iter()
        .filter(|r| t.is_builtin(&r.chain))
        .filter(|r| r.target.as_deref().is_some_and(|x| remove.contains(x)))
        .cloned()
        .collect();
    // In dump order, so the document reads like the table.
    let chains = t
        .chains
        .iter()
        .filter(|(c, _)| remove.contains(c.as_str()))
        .map(|(c, _)| c.clone())
        .collect();
    (
        TableCleanup {
            tool,
            table: t.name.clone(),
            jumps,
            chains,
        },
        kept,
    )
}

/// Whether a process of this command name (`/proc/PID/comm`) is kube-proxy.
pub fn is_kube_proxy_comm(comm: &str) -> bool {
    comm.trim_end() == "kube-proxy"
}

#[cfg(test)]
mod tests;
