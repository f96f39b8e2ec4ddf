//! The one nftables table lbd owns, `inet lbd-proxy`: masquerade marks,
//! hairpin, loadBalancerSourceRanges and the "service addresses expose only
//! service ports" filter that kube-proxy's IPVS mode builds from iptables
//! chains and ipsets (KUBE-MARK-MASQ, KUBE-LOOP-BACK,
//! KUBE-LOAD-BALANCER-SOURCE-CIDR, KUBE-IPVS-FILTER).
//!
//! The table is rendered in full from the desired state ([`render`], pure)
//! and replaced in one `nft -j -f -` transaction: add (so delete cannot
//! fail), delete, then the new table. Nothing outside our table is touched.
//! The rules depend only on [`NftParams`]; what follows the Services is the
//! sets' elements. A changed-only sync therefore changes elements only
//! ([`SetTracker`]): rendering and replacing the whole table costs O(table)
//! (35-45 ms to render at 10k Services, and nft's own
//! work on ~80k elements), an endpoint change a handful of elements.
//!
//! Hook priorities are chosen around IPVS's own netfilter hooks: IPVS takes
//! locally delivered packets at LOCAL_IN priority 98 (NF_IP_PRI_NAT_SRC - 2)
//! and local output at LOCAL_OUT -98 (NF_IP_PRI_NAT_DST + 2), so our marks
//! and drops run before it (prerouting/output -110, input 0) and the
//! masquerade in postrouting (srcnat, 100) sees the forwarded packet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::proxy::model::{DesiredState, DesiredVs, Scope, VsKind};
use crate::proxy::model::{Protocol, ServiceKey};

pub const TABLE: &str = "lbd-proxy";
pub const FAMILY: &str = "inet";
/// The masquerade mark bit, kube-proxy's own (`--iptables-masquerade-bit` 14),
/// so CNIs that know kube-proxy's mark keep working during a migration.
pub const MASQ_MARK: u32 = 0x4000;

#[derive(Debug, Clone, Default)]
pub struct NftParams<'a> {
    /// Traffic from outside these ranges to a ClusterIP is masqueraded.
    pub cluster_cidrs: &'a [IpNet],
    /// Masquerade all traffic to services (kube-proxy masqueradeAll).
    pub masquerade_all: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft: {0}")]
    Nft(#[from] nftables::helper::NftablesError),
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
    #[error("nft ruleset does not match the nftables schema: {0}")]
    Schema(#[from] serde_json::Error),
}

/// Applies one `nft -j` document in one transaction: a whole-table
/// replace from [`render`] or element changes from [`render_element_changes`].
pub trait Firewall: Send + Sync {
    fn replace(&self, ruleset: &NftDocument) -> Result<(), NftError>;
}

/// Runs `nft` (optionally wrapped, e.g. `ip netns exec NS nft`).
#[derive(Debug, Clone, Default)]
pub struct NftFirewall {
    /// Program and leading arguments; empty: plain `nft`.
    pub command: Vec<String>,
}

impl Firewall for NftFirewall {
    fn replace(&self, ruleset: &NftDocument) -> Result<(), NftError> {
        use nftables::helper::{apply_ruleset_raw, NftablesError, DEFAULT_ARGS, DEFAULT_NFT};
        // The document goes to nft as text, without a typed copy of it (tens
        // of MB at 10k Services); every document render and
        // render_element_changes make is checked against the crate's schema
        // through FakeFirewall in the tests.
        let text = ruleset.as_str();
        let r = match self.command.split_first() {
            None => apply_ruleset_raw(text, DEFAULT_NFT, DEFAULT_ARGS),
            Some((prog, args)) => apply_ruleset_raw(text, Some(prog.as_str()), args),
        };
        match r {
            Ok(_) => Ok(()),
            // Keep nft's own words: they say which element or hook failed.
            Err(NftablesError::NftFailed { stderr, .. }) => {
                Err(NftError::Rejected(stderr.trim().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// In-memory firewall for tests: keeps every document it was given and the
/// sets' contents as the kernel would hold them after each (a table
/// replace empties and refills them; deleting an element the set does not
/// hold fails the whole document, as it does in the kernel).
#[derive(Debug, Clone, Default)]
pub struct FakeFirewall {
    pub applied: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    sets: std::sync::Arc<std::sync::Mutex<BTreeMap<String, BTreeSet<String>>>>,
}

impl FakeFirewall {
    /// Set name -> its elements (canonical JSON text), empty sets included.
    pub fn sets(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Firewall for FakeFirewall {
    fn replace(&self, doc: &NftDocument) -> Result<(), NftError> {
        let ruleset = &doc.to_value()?;
        let _ = nftables::schema::Nftables::deserialize(ruleset)?;
        let mut sets = self.sets();
        let elems = |o: &Value| -> Vec<String> {
            o["elem"]
                .as_array()
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_default()
        };
        for cmd in ruleset["nftables"].as_array().into_iter().flatten() {
            if let Some(o) = cmd.get("delete") {
                if o.get("table").is_some() {
                    sets.clear();
                } else if let Some(e) = o.get("element") {
                    let set = sets
                        .entry(e["name"].as_str().unwrap_or("").to_string())
                        .or_default();
                    for x in elems(e) {
                        if !set.remove(&x) {
                            return Err(NftError::Rejected(format!(
                                "delete {x}: No such file or directory"
                            )));
                        }
                    }
                }
            } else if let Some(o) = cmd.get("add") {
                let (name, obj) = match (o.get("set"), o.get("element")) {
                    (Some(x), _) | (None, Some(x)) => {
                        (x["name"].as_str().unwrap_or("").to_string(), x)
                    }
                    _ => continue,
                };
                sets.entry(name).or_default().extend(elems(obj));
            }
        }
        *self.sets.lock().unwrap_or_else(|e| e.into_inner()) = sets;
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ruleset.clone());
        Ok(())
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

#[derive(Clone, Copy)]
struct Fam {
    v6: bool,
}

impl Fam {
    fn suffix(self) -> &'static str {
        if self.v6 {
            "6"
        } else {
            "4"
        }
    }
    fn addr_type(self) -> &'static str {
        if self.v6 {
            "ipv6_addr"
        } else {
            "ipv4_addr"
        }
    }
    fn proto(self) -> &'static str {
        if self.v6 {
            "ip6"
        } else {
            "ip"
        }
    }
    fn has(self, a: &IpAddr) -> bool {
        a.is_ipv6() == self.v6
    }
    fn field(self, f: &str) -> Value {
        json!({"payload": {"protocol": self.proto(), "field": f}})
    }
    /// `ip daddr . meta l4proto . th dport`
    fn svc_tuple(self) -> Value {
        json!({"concat": [self.field("daddr"), {"meta": {"key": "l4proto"}},
                          {"payload": {"protocol": "th", "field": "dport"}}]})
    }
}

fn prefix(n: &IpNet) -> Value {
    json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}})
}

/// One `nft -j -f -` document, as the JSON text nft reads. Rendered by
/// streaming: at 10k Services a tree of `serde_json::Value`s for the ~80k
/// set elements cost ~100 MiB, the text ~6 MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftDocument(String);

impl NftDocument {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document parsed (tests, and the fake firewall's checks).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// A document of these commands, each a small JSON object.
    pub fn from_commands(cmds: &[Value]) -> Self {
        let mut w = DocWriter::new();
        for c in cmds {
            w.command(c);
        }
        w.finish()
    }
}

impl std::fmt::Display for NftDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes `{"nftables":[cmd,cmd,...]}` command by command.
struct DocWriter {
    out: String,
    commands: usize,
}

impl DocWriter {
    fn new() -> Self {
        DocWriter {
            out: String::from(r#"{"nftables":["#),
            commands: 0,
        }
    }

    fn separator(&mut self) {
        if self.commands > 0 {
            self.out.push(',');
        }
        self.commands += 1;
    }

    fn command(&mut self, cmd: &Value) {
        self.separator();
        // A Value's text is always valid UTF-8 JSON; Display writes it.
        use std::fmt::Write;
        let _ = write!(self.out, "{cmd}");
    }

    /// `{"add":{"set":{...,"elem":[...]}}}` with the elements written by
    /// `elems` straight into the text, each through `ElemWriter::elem`.
    fn set(
        &mut self,
        name: &str,
        types: &[&str],
        interval: bool,
        elems: impl FnOnce(&mut ElemWriter<'_>),
    ) {
        self.separator();
        let ty = if types.len() == 1 {
            json!(types[0])
        } else {
            json!(types)
        };
        use std::fmt::Write;
        let _ = write!(
            self.out,
            r#"{{"add":{{"set":{{"family":"{FAMILY}","table":"{TABLE}","name":"{name}","type":{ty}"#
        );
        if interval {
            self.out.push_str(r#","flags":["interval"]"#);
        }
        let mark = self.out.len();
        self.out.push_str(r#","elem":["#);
        let mut e = ElemWriter {
            out: &mut self.out,
            count: 0,
        };
        elems(&mut e);
        if e.count == 0 {
            // nft wants no "elem" key rather than an empty list.
            self.out.truncate(mark);
        } else {
            self.out.push(']');
        }
        self.out.push_str("}}}");
    }

    fn finish(mut self) -> NftDocument {
        self.out.push_str("]}");
        NftDocument(self.out)
    }
}

struct ElemWriter<'a> {
    out: &'a mut String,
    count: usize,
}

impl ElemWriter<'_> {
    fn elem(&mut self, x: &SetElement) {
        if self.count > 0 {
            self.out.push(',');
        }
        self.count += 1;
        x.write_json(self.out);
    }

    /// An element that is not a [`SetElement`] (the pod CIDRs).
    fn value(&mut self, v: &Value) {
        if self.count > 0 {
            self.out.push(',');
        }
        self.count += 1;
        use std::fmt::Write;
        let _ = write!(self.out, "{v}");
    }
}

fn chain(name: &str, ty: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name,
        "type": ty, "hook": hook, "prio": prio, "policy": "accept"}}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn set_mark() -> Value {
    json!({"mangle": {"key": {"meta": {"key": "mark"}},
        "value": {"|": [{"meta": {"key": "mark"}}, MASQ_MARK]}}})
}

/// Renders the whole ruleset for `desired`: one document for
/// `nft -j -f -` that atomically replaces our table. The sets hold exactly
/// the elements [`vs_elements`] gives each virtual server (what
/// [`SetTracker`] counts) and the bound addresses.
pub fn render(desired: &DesiredState, params: &NftParams<'_>) -> NftDocument {
    let mut w = DocWriter::new();
    let table = json!({"table": {"family": FAMILY, "name": TABLE}});
    w.command(&json!({"add": table.clone()}));
    w.command(&json!({"delete": table.clone()}));
    w.command(&json!({"add": table}));

    // Per set, its elements in order and each once (a hairpin element is
    // shared by every virtual server with that endpoint).
    let mut by_set: BTreeMap<(SetKind, bool), BTreeSet<SetElement>> = BTreeMap::new();
    for (k, vs) in &desired.virtual_servers {
        for x in vs_elements(k, vs) {
            by_set.entry((x.kind, x.v6)).or_default().insert(x);
        }
    }
    for a in &desired.bind_addresses {
        let x = address_element(*a);
        by_set.entry((x.kind, x.v6)).or_default().insert(x);
    }

    for fam in [Fam { v6: false }, Fam { v6: true }] {
        let sfx = fam.suffix();
        let at = fam.addr_type();
        let svc_types = [at, "inet_proto", "inet_service"];
        let src_types = [at, "inet_proto", "inet_service", at];
        let mut typed = |w: &mut DocWriter, kind: SetKind, types: &[&str], interval: bool| {
            let elems = by_set.remove(&(kind, fam.v6)).unwrap_or_default();
            w.set(&format!("{}{sfx}", kind.base()), types, interval, |e| {
                elems.iter().for_each(|x| e.elem(x))
            });
        };
        typed(&mut w, SetKind::Services, &svc_types, false);
        typed(&mut w, SetKind::ClusterIps, &svc_types, false);
        typed(&mut w, SetKind::External, &svc_types, false);
        typed(&mut w, SetKind::ServiceAddrs, &[at], false);
        w.set(&format!("cluster_cidr{sfx}"), &[at], true, |e| {
            params
                .cluster_cidrs
                .iter()
                .filter(|n| fam.has(&n.addr()))
                .for_each(|n| e.value(&prefix(n)))
        });
        typed(&mut w, SetKind::LbFiltered, &svc_types, false);
        typed(&mut w, SetKind::LbAllowed, &src_types, true);
        typed(&mut w, SetKind::Hairpin, &src_types, false);
    }

    w.command(&chain("prerouting", "filter", "prerouting", -110));
    w.command(&chain("output", "filter", "output", -110));
    w.command(&chain("input", "filter", "input", 0));
    w.command(&chain("postrouting", "nat", "postrouting", 100));

    for fam in [Fam { v6: false }, Fam { v6: true }] {
        let sfx = fam.suffix();
        let at_set = |n: &str| json!(format!("@{n}{sfx}"));
        let has_pods = params.cluster_cidrs.iter().any(|n| fam.has(&n.addr()));
        for c in ["prerouting", "output"] {
            if params.masquerade_all {
                w.command(&rule(
                    c,
                    vec![
                        matches("==", fam.svc_tuple(), at_set("services")),
                        set_mark(),
                    ],
                ));
                continue;
            }
            // NodePort, external IPs and load balancers with the Cluster
            // policy: the reply must come back through this node.
            w.command(&rule(
                c,
                vec![
                    matches("==", fam.svc_tuple(), at_set("external")),
                    set_mark(),
                ],
            ));
            // ClusterIP from outside the pod network (the node itself, or
            // another host routing to it): same reason.
            if has_pods {
                w.command(&rule(
                    c,
                    vec![
                        matches("==", fam.svc_tuple(), at_set("cluster_ips")),
                        matches("!=", fam.field("saddr"), at_set("cluster_cidr")),
                        set_mark(),
                    ],
                ));
            }
        }
        // loadBalancerSourceRanges: clients outside the ranges are dropped
        // before IPVS sees them.
        let src_tuple = json!({"concat": [fam.field("daddr"), {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}}, fam.field("saddr")]});
        w.command(&rule(
            "input",
            vec![
                matches("==", fam.svc_tuple(), at_set("lb_filtered")),
                matches("!=", src_tuple, at_set("lb_allowed")),
                json!({"drop": null}),
            ],
        ));
        // A service address answers only on service ports: new connections
        // to any other port would reach the node's own listeners.
        w.command(&rule(
            "input",
            vec![
                matches("in", json!({"ct": {"key": "state"}}), json!("new")),
                matches(
                    "==",
                    json!({"meta": {"key": "l4proto"}}),
                    json!({"set": ["tcp", "udp", "sctp"]}),
                ),
                matches("==", fam.field("daddr"), at_set("service_addrs")),
                matches("!=", fam.svc_tuple(), at_set("services")),
                json!({"drop": null}),
            ],
        ));
        // Hairpin: a pod reaching itself through its Service must see the
        // node as the source, or its reply would bypass IPVS.
        let hp_tuple = json!({"concat": [fam.field("daddr"), {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}}, fam.field("saddr")]});
        w.command(&rule(
            "postrouting",
            vec![
                matches("==", hp_tuple, at_set("hairpin")),
                json!({"masquerade": null}),
            ],
        ));
    }
    w.command(&rule(
        "postrouting",
        vec![
            matches(
                "==",
                json!({"&": [{"meta": {"key": "mark"}}, MASQ_MARK]}),
                json!(MASQ_MARK),
            ),
            json!({"masquerade": null}),
        ],
    ));
    w.finish()
}

/// The command that removes our table (on `mode: none` or uninstall).
pub fn render_delete() -> NftDocument {
    let table = json!({"table": {"family": FAMILY, "name": TABLE}});
    NftDocument::from_commands(&[json!({"add": table.clone()}), json!({"delete": table})])
}

/// Which of our sets an element goes to; the family suffix (`4`/`6`) comes
/// from the virtual server's address, as in [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SetKind {
    Services,
    ClusterIps,
    External,
    ServiceAddrs,
    LbFiltered,
    LbAllowed,
    Hairpin,
}

impl SetKind {
    fn base(self) -> &'static str {
        match self {
            SetKind::Services => "services",
            SetKind::ClusterIps => "cluster_ips",
            SetKind::External => "external",
            SetKind::ServiceAddrs => "service_addrs",
            SetKind::LbFiltered => "lb_filtered",
            SetKind::LbAllowed => "lb_allowed",
            SetKind::Hairpin => "hairpin",
        }
    }
}

/// One element of one of our sets, typed: only the elements that change are
/// turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetElement {
    kind: SetKind,
    v6: bool,
    addr: IpAddr,
    /// None: a bare address (`service_addrs`).
    proto: Option<Protocol>,
    port: u16,
    range: Option<IpNet>,
}

impl SetElement {
    fn svc(kind: SetKind, k: &ServiceKey) -> Self {
        SetElement {
            kind,
            v6: k.addr.is_ipv6(),
            addr: k.addr,
            proto: Some(k.protocol),
            port: k.port,
            range: None,
        }
    }

    fn set_name(&self) -> String {
        format!("{}{}", self.kind.base(), if self.v6 { "6" } else { "4" })
    }

    /// The element's JSON text. Addresses, protocol names and numbers need
    /// no escaping.
    fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        let a = self.addr;
        let p = self.proto.map(proto_name).unwrap_or("");
        let port = self.port;
        let _ = match (self.kind, &self.range) {
            (SetKind::ServiceAddrs, _) => write!(out, r#""{a}""#),
            (SetKind::Hairpin, _) => write!(out, r#"{{"concat":["{a}","{p}",{port},"{a}"]}}"#),
            (SetKind::LbAllowed, Some(r)) => write!(
                out,
                r#"{{"concat":["{a}","{p}",{port},{{"prefix":{{"addr":"{}","len":{}}}}}]}}"#,
                r.network(),
                r.prefix_len()
            ),
            _ => write!(out, r#"{{"concat":["{a}","{p}",{port}]}}"#),
        };
    }
}

/// The elements one virtual server puts into our sets (the loop in
/// [`render`], typed; `tests/ipvs_nft.rs` checks the two agree).
fn vs_elements(k: &ServiceKey, vs: &DesiredVs) -> Vec<SetElement> {
    let mut v = vec![SetElement::svc(SetKind::Services, k)];
    match vs.kind {
        VsKind::ClusterIp => v.push(SetElement::svc(SetKind::ClusterIps, k)),
        _ if !vs.local_only => v.push(SetElement::svc(SetKind::External, k)),
        _ => {}
    }
    if vs.kind == VsKind::LoadBalancer && !vs.source_ranges.is_empty() {
        v.push(SetElement::svc(SetKind::LbFiltered, k));
        for r in vs
            .source_ranges
            .iter()
            .filter(|r| r.addr().is_ipv6() == k.addr.is_ipv6())
        {
            v.push(SetElement {
                range: Some(*r),
                ..SetElement::svc(SetKind::LbAllowed, k)
            });
        }
    }
    for rs in vs.real_servers.keys() {
        v.push(SetElement {
            kind: SetKind::Hairpin,
            v6: k.addr.is_ipv6(),
            addr: rs.addr,
            proto: Some(k.protocol),
            port: rs.port,
            range: None,
        });
    }
    v
}

fn address_element(a: IpAddr) -> SetElement {
    SetElement {
        kind: SetKind::ServiceAddrs,
        v6: a.is_ipv6(),
        addr: a,
        proto: None,
        port: 0,
        range: None,
    }
}

/// Element changes that bring our sets from one desired table to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChanges {
    pub add: Vec<SetElement>,
    pub delete: Vec<SetElement>,
}

impl ElementChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }
    pub fn len(&self) -> usize {
        self.add.len() + self.delete.len()
    }
}

/// What our sets hold, as of the last document nft accepted: each element
/// with the number of virtual servers (or addresses) that want it. A
/// hairpin element is shared by every virtual server with that endpoint, so
/// it goes only when the last of them does.
#[derive(Debug, Clone, Default)]
pub struct SetTracker {
    counts: HashMap<SetElement, u32>,
    per_vs: HashMap<ServiceKey, Vec<SetElement>>,
    bound: BTreeSet<IpAddr>,
}

impl SetTracker {
    /// The sets [`render`] fills for `desired`.
    pub fn of(desired: &DesiredState) -> Self {
        let mut t = SetTracker::default();
        for (k, vs) in &desired.virtual_servers {
            let e = vs_elements(k, vs);
            for x in &e {
                *t.counts.entry(x.clone()).or_default() += 1;
            }
            t.per_vs.insert(*k, e);
        }
        for a in &desired.bind_addresses {
            t.counts.insert(address_element(*a), 1);
            t.bound.insert(*a);
        }
        t
    }

    /// The element changes for the virtual servers and addresses in `scope`
    /// (everything outside it is unchanged in `desired`), recorded as done.
    /// None when a change touches `lb_allowed`: deleting ranges from an
    /// interval set is left to a whole-table replace, and the tracker must
    /// then be rebuilt with [`SetTracker::of`].
    pub fn update(&mut self, desired: &DesiredState, scope: &Scope) -> Option<ElementChanges> {
        let mut delta: BTreeMap<SetElement, i64> = BTreeMap::new();
        for k in &scope.virtual_servers {
            for x in self.per_vs.remove(k).into_iter().flatten() {
                *delta.entry(x).or_default() -= 1;
            }
            if let Some(vs) = desired.virtual_servers.get(k) {
                let e = vs_elements(k, vs);
                for x in &e {
                    *delta.entry(x.clone()).or_default() += 1;
                }
                self.per_vs.insert(*k, e);
            }
        }
        for a in &scope.addresses {
            let (was, is) = (self.bound.contains(a), desired.bind_addresses.contains(a));
            if was != is {
                *delta.entry(address_element(*a)).or_default() += if is { 1 } else { -1 };
                if is {
                    self.bound.insert(*a);
                } else {
                    self.bound.remove(a);
                }
            }
        }
        let mut ch = ElementChanges::default();
        for (x, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
            let before = i64::from(self.counts.get(&x).copied().unwrap_or(0));
            let after = (before + d).max(0);
            if (before == 0) != (after == 0) && x.kind == SetKind::LbAllowed {
                return None;
            }
            if after == 0 {
                self.counts.remove(&x);
            } else {
                self.counts
                    .insert(x.clone(), u32::try_from(after).unwrap_or(u32::MAX));
            }
            match (before == 0, after == 0) {
                (true, false) => ch.add.push(x),
                (false, true) => ch.delete.push(x),
                _ => {}
            }
        }
        Some(ch)
    }
}

/// One `nft -j -f -` document with the element changes: deletes, then adds,
/// each grouped per set. Empty changes make an empty document.
pub fn render_element_changes(ch: &ElementChanges) -> NftDocument {
    use std::fmt::Write;
    let mut w = DocWriter::new();
    for (verb, elems) in [("delete", &ch.delete), ("add", &ch.add)] {
        let mut by_set: BTreeMap<String, Vec<&SetElement>> = BTreeMap::new();
        for x in elems {
            by_set.entry(x.set_name()).or_default().push(x);
        }
        for (name, elem) in by_set {
            w.separator();
            let _ = write!(
                w.out,
                r#"{{"{verb}":{{"element":{{"family":"{FAMILY}","table":"{TABLE}","name":"{name}","elem":["#
            );
            let mut e = ElemWriter {
                out: &mut w.out,
                count: 0,
            };
            elem.into_iter().for_each(|x| e.elem(x));
            w.out.push_str("]}}}");
        }
    }
    w.finish()
}

/// A digest of a document: equal documents, equal digests, so the last
/// applied one need not be kept.
pub fn digest(doc: &NftDocument) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.0.hash(&mut h);
    h.finish()
}
