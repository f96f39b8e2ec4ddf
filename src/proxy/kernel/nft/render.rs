//! The whole `inet lbd-proxy` table rendered from the desired state (pure),
//! streamed as JSON text: the sets with their elements, the chains, the
//! rules of each family.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};

use super::sets::{address_element, vs_elements, SetElement, SetKind};
use super::{NftDocument, NftParams, FAMILY, MASQ_MARK, TABLE};
use crate::proxy::model::DesiredState;

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
    /// `ip saddr . meta l4proto . th dport`: a service address as the source
    fn src_svc_tuple(self) -> Value {
        json!({"concat": [self.field("saddr"), {"meta": {"key": "l4proto"}},
                          {"payload": {"protocol": "th", "field": "dport"}}]})
    }
    /// `ip daddr . meta l4proto . th dport . ip saddr`
    fn src_tuple(self) -> Value {
        json!({"concat": [self.field("daddr"), {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}}, self.field("saddr")]})
    }
    /// `@NAME4` / `@NAME6`
    fn set_ref(self, name: &str) -> Value {
        json!(format!("@{name}{}", self.suffix()))
    }
}

fn prefix(n: &IpNet) -> Value {
    json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}})
}

/// Writes `{"nftables":[cmd,cmd,...]}` command by command.
pub(super) struct DocWriter {
    pub(super) out: String,
    commands: usize,
}

impl DocWriter {
    pub(super) fn new() -> Self {
        DocWriter {
            out: String::from(r#"{"nftables":["#),
            commands: 0,
        }
    }

    pub(super) fn separator(&mut self) {
        if self.commands > 0 {
            self.out.push(',');
        }
        self.commands += 1;
    }

    pub(super) fn command(&mut self, cmd: &Value) {
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

    pub(super) fn finish(mut self) -> NftDocument {
        self.out.push_str("]}");
        NftDocument(self.out)
    }
}

pub(super) struct ElemWriter<'a> {
    pub(super) out: &'a mut String,
    pub(super) count: usize,
}

impl ElemWriter<'_> {
    pub(super) fn elem(&mut self, x: &SetElement) {
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
    let mut by_set = elements_by_set(desired);
    for fam in FAMILIES {
        sets(&mut w, fam, &mut by_set, params);
    }
    w.command(&chain("prerouting", "filter", "prerouting", -110));
    w.command(&chain("output", "filter", "output", -110));
    w.command(&chain("input", "filter", "input", 0));
    w.command(&chain("postrouting", "nat", "postrouting", 100));
    for fam in FAMILIES {
        mark_rules(&mut w, fam, params);
        filter_rules(&mut w, fam);
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

const FAMILIES: [Fam; 2] = [Fam { v6: false }, Fam { v6: true }];

/// Per set (kind, IPv6), its elements in order and each once (a hairpin
/// element is shared by every virtual server with that endpoint).
fn elements_by_set(desired: &DesiredState) -> BTreeMap<(SetKind, bool), BTreeSet<SetElement>> {
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
    by_set
}

/// The sets of one family, with their elements.
fn sets(
    w: &mut DocWriter,
    fam: Fam,
    by_set: &mut BTreeMap<(SetKind, bool), BTreeSet<SetElement>>,
    params: &NftParams<'_>,
) {
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
    typed(w, SetKind::Services, &svc_types, false);
    typed(w, SetKind::ClusterIps, &svc_types, false);
    typed(w, SetKind::External, &svc_types, false);
    typed(w, SetKind::ServiceAddrs, &[at], false);
    w.set(&format!("cluster_cidr{sfx}"), &[at], true, |e| {
        params
            .cluster_cidrs
            .iter()
            .filter(|n| fam.has(&n.addr()))
            .for_each(|n| e.value(&prefix(n)))
    });
    typed(w, SetKind::LbFiltered, &svc_types, false);
    typed(w, SetKind::LbAllowed, &src_types, true);
    typed(w, SetKind::Hairpin, &src_types, false);
}

/// The masquerade marks of one family, in prerouting and output.
fn mark_rules(w: &mut DocWriter, fam: Fam, params: &NftParams<'_>) {
    let has_pods = params.cluster_cidrs.iter().any(|n| fam.has(&n.addr()));
    for c in ["prerouting", "output"] {
        if params.masquerade_all {
            w.command(&rule(
                c,
                vec![
                    matches("==", fam.svc_tuple(), fam.set_ref("services")),
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
                matches("==", fam.svc_tuple(), fam.set_ref("external")),
                set_mark(),
            ],
        ));
        // ClusterIP from outside the pod network (the node itself, or
        // another host routing to it): same reason.
        if has_pods {
            w.command(&rule(
                c,
                vec![
                    matches("==", fam.svc_tuple(), fam.set_ref("cluster_ips")),
                    matches("!=", fam.field("saddr"), fam.set_ref("cluster_cidr")),
                    set_mark(),
                ],
            ));
        } else {
            // No cluster CIDR (kube-proxy's default: no local detector):
            // kube-proxy ipvs marks traffic whose source is a ClusterIP
            // sending to a service port (`--match-set KUBE-CLUSTER-IP
            // src,dst`): the node picks a kube-ipvs0 address as the source
            // of its own connections to a VIP, and the reply could not come
            // back to it unmasqueraded.
            w.command(&rule(
                c,
                vec![
                    matches("==", fam.src_svc_tuple(), fam.set_ref("cluster_ips")),
                    set_mark(),
                ],
            ));
        }
    }
}

/// Source ranges, the service-address filter and hairpin masquerade of one
/// family.
fn filter_rules(w: &mut DocWriter, fam: Fam) {
    // loadBalancerSourceRanges: clients outside the ranges are dropped
    // before IPVS sees them.
    w.command(&rule(
        "input",
        vec![
            matches("==", fam.svc_tuple(), fam.set_ref("lb_filtered")),
            matches("!=", fam.src_tuple(), fam.set_ref("lb_allowed")),
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
            matches("==", fam.field("daddr"), fam.set_ref("service_addrs")),
            matches("!=", fam.svc_tuple(), fam.set_ref("services")),
            json!({"drop": null}),
        ],
    ));
    // Hairpin: a pod reaching itself through its Service must see the
    // node as the source, or its reply would bypass IPVS.
    w.command(&rule(
        "postrouting",
        vec![
            matches("==", fam.src_tuple(), fam.set_ref("hairpin")),
            json!({"masquerade": null}),
        ],
    ));
}

/// The command that removes our table (on `mode: none` or uninstall).
pub fn render_delete() -> NftDocument {
    let table = json!({"table": {"family": FAMILY, "name": TABLE}});
    NftDocument::from_commands(&[json!({"add": table.clone()}), json!({"delete": table})])
}
