//! The one nftables table lbd owns, `inet lbd-proxy`: masquerade marks,
//! hairpin, loadBalancerSourceRanges and the "service addresses expose only
//! service ports" filter that kube-proxy's IPVS mode builds from iptables
//! chains and ipsets (KUBE-MARK-MASQ, KUBE-LOOP-BACK,
//! KUBE-LOAD-BALANCER-SOURCE-CIDR, KUBE-IPVS-FILTER).
//!
//! The table is rendered in full from the desired state ([`render`], pure)
//! and replaced in one `nft -j -f -` transaction: add (so delete cannot
//! fail), delete, then the new table. Nothing outside our table is touched.
//!
//! Hook priorities are chosen around IPVS's own netfilter hooks: IPVS takes
//! locally delivered packets at LOCAL_IN priority 98 (NF_IP_PRI_NAT_SRC - 2)
//! and local output at LOCAL_OUT -98 (NF_IP_PRI_NAT_DST + 2), so our marks
//! and drops run before it (prerouting/output -110, input 0) and the
//! masquerade in postrouting (srcnat, 100) sees the forwarded packet.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};

use super::desired::{DesiredState, VsKind};
use super::model::Protocol;

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

/// Replaces our table in one transaction.
pub trait Firewall: Send + Sync {
    fn replace(&self, ruleset: &Value) -> Result<(), NftError>;
}

/// Runs `nft` (optionally wrapped, e.g. `ip netns exec NS nft`).
#[derive(Debug, Clone, Default)]
pub struct NftFirewall {
    /// Program and leading arguments; empty: plain `nft`.
    pub command: Vec<String>,
}

impl Firewall for NftFirewall {
    fn replace(&self, ruleset: &Value) -> Result<(), NftError> {
        // Through the crate's schema: a ruleset it cannot type is a bug here.
        use nftables::helper::NftablesError;
        let typed: nftables::schema::Nftables<'_> = serde_json::from_value(ruleset.clone())?;
        let r = match self.command.split_first() {
            None => nftables::helper::apply_ruleset(&typed),
            Some((prog, args)) => {
                nftables::helper::apply_ruleset_with_args(&typed, Some(prog.as_str()), args)
            }
        };
        match r {
            Ok(()) => Ok(()),
            // Keep nft's own words: they say which element or hook failed.
            Err(NftablesError::NftFailed { stderr, .. }) => {
                Err(NftError::Rejected(stderr.trim().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// In-memory firewall for tests: keeps every ruleset it was given.
#[derive(Debug, Clone, Default)]
pub struct FakeFirewall {
    pub applied: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Firewall for FakeFirewall {
    fn replace(&self, ruleset: &Value) -> Result<(), NftError> {
        let _: nftables::schema::Nftables<'_> = serde_json::from_value(ruleset.clone())?;
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

fn set(name: String, types: &[&str], interval: bool, elems: Vec<Value>) -> Value {
    let ty: Value = if types.len() == 1 {
        json!(types[0])
    } else {
        json!(types)
    };
    let mut s = json!({"family": FAMILY, "table": TABLE, "name": name, "type": ty});
    if interval {
        s["flags"] = json!(["interval"]);
    }
    if !elems.is_empty() {
        s["elem"] = Value::Array(elems);
    }
    json!({"add": {"set": s}})
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

/// Renders the whole ruleset for `desired`: one JSON document for
/// `nft -j -f -` that atomically replaces our table.
pub fn render(desired: &DesiredState, params: &NftParams<'_>) -> Value {
    let table = json!({"table": {"family": FAMILY, "name": TABLE}});
    let mut cmds = vec![
        json!({"add": table.clone()}),
        json!({"delete": table.clone()}),
        json!({"add": table}),
    ];

    for fam in [Fam { v6: false }, Fam { v6: true }] {
        let sfx = fam.suffix();
        let tuple = |a: &IpAddr, p: Protocol, port: u16| json!({"concat": [a.to_string(), proto_name(p), port]});
        let mut all = Vec::new();
        let mut cluster = Vec::new();
        let mut external = Vec::new();
        let mut lb_filtered = Vec::new();
        let mut lb_allowed = Vec::new();
        let mut hairpin = BTreeSet::new();
        for (k, vs) in desired
            .virtual_servers
            .iter()
            .filter(|(k, _)| fam.has(&k.addr))
        {
            let t = tuple(&k.addr, k.protocol, k.port);
            all.push(t.clone());
            match vs.kind {
                VsKind::ClusterIp => cluster.push(t.clone()),
                // Local policy keeps the client address (the point of it).
                _ if !vs.local_only => external.push(t.clone()),
                _ => {}
            }
            if vs.kind == VsKind::LoadBalancer && !vs.source_ranges.is_empty() {
                lb_filtered.push(t.clone());
                for r in vs.source_ranges.iter().filter(|r| fam.has(&r.addr())) {
                    lb_allowed.push(json!({"concat": [k.addr.to_string(),
                        proto_name(k.protocol), k.port, prefix(r)]}));
                }
            }
            for rs in vs.real_servers.keys() {
                hairpin.insert((rs.addr, k.protocol, rs.port));
            }
        }
        let bound: Vec<Value> = desired
            .bind_addresses
            .iter()
            .filter(|a| fam.has(a))
            .map(|a| json!(a.to_string()))
            .collect();
        let pods: Vec<Value> = params
            .cluster_cidrs
            .iter()
            .filter(|n| fam.has(&n.addr()))
            .map(prefix)
            .collect();
        let hairpin: Vec<Value> = hairpin
            .into_iter()
            .map(|(a, p, port)| json!({"concat": [a.to_string(), proto_name(p), port, a.to_string()]}))
            .collect();

        let at = fam.addr_type();
        let svc_types = [at, "inet_proto", "inet_service"];
        cmds.push(set(format!("services{sfx}"), &svc_types, false, all));
        cmds.push(set(format!("cluster_ips{sfx}"), &svc_types, false, cluster));
        cmds.push(set(format!("external{sfx}"), &svc_types, false, external));
        cmds.push(set(format!("service_addrs{sfx}"), &[at], false, bound));
        cmds.push(set(format!("cluster_cidr{sfx}"), &[at], true, pods));
        cmds.push(set(
            format!("lb_filtered{sfx}"),
            &svc_types,
            false,
            lb_filtered,
        ));
        cmds.push(set(
            format!("lb_allowed{sfx}"),
            &[at, "inet_proto", "inet_service", at],
            true,
            lb_allowed,
        ));
        cmds.push(set(
            format!("hairpin{sfx}"),
            &[at, "inet_proto", "inet_service", at],
            false,
            hairpin,
        ));
    }

    cmds.push(chain("prerouting", "filter", "prerouting", -110));
    cmds.push(chain("output", "filter", "output", -110));
    cmds.push(chain("input", "filter", "input", 0));
    cmds.push(chain("postrouting", "nat", "postrouting", 100));

    for fam in [Fam { v6: false }, Fam { v6: true }] {
        let sfx = fam.suffix();
        let at_set = |n: &str| json!(format!("@{n}{sfx}"));
        let has_pods = params.cluster_cidrs.iter().any(|n| fam.has(&n.addr()));
        for c in ["prerouting", "output"] {
            if params.masquerade_all {
                cmds.push(rule(
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
            cmds.push(rule(
                c,
                vec![
                    matches("==", fam.svc_tuple(), at_set("external")),
                    set_mark(),
                ],
            ));
            // ClusterIP from outside the pod network (the node itself, or
            // another host routing to it): same reason.
            if has_pods {
                cmds.push(rule(
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
        cmds.push(rule(
            "input",
            vec![
                matches("==", fam.svc_tuple(), at_set("lb_filtered")),
                matches("!=", src_tuple, at_set("lb_allowed")),
                json!({"drop": null}),
            ],
        ));
        // A service address answers only on service ports: new connections
        // to any other port would reach the node's own listeners.
        cmds.push(rule(
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
        cmds.push(rule(
            "postrouting",
            vec![
                matches("==", hp_tuple, at_set("hairpin")),
                json!({"masquerade": null}),
            ],
        ));
    }
    cmds.push(rule(
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

    json!({"nftables": cmds})
}

/// The command that removes our table (on `mode: none` or uninstall).
pub fn render_delete() -> Value {
    let table = json!({"table": {"family": FAMILY, "name": TABLE}});
    json!({"nftables": [{"add": table.clone()}, {"delete": table}]})
}
