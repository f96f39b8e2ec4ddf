//! Our sets' elements, typed: what each virtual server and bound address
//! puts in them, what the sets hold after the last good document
//! ([`SetTracker`]), and the element changes a changed-only sync sends
//! instead of a whole render.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::render::{DocWriter, ElemWriter};
use super::{NftDocument, FAMILY, TABLE};
use crate::proxy::model::{DesiredState, DesiredVs, Protocol, Scope, ServiceKey, VsKind};

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Which of our sets an element goes to; the family suffix (`4`/`6`) comes
/// from the virtual server's address, as in [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum SetKind {
    Services,
    ClusterIps,
    External,
    ServiceAddrs,
    LbFiltered,
    LbAllowed,
    Hairpin,
}

impl SetKind {
    pub(super) fn base(self) -> &'static str {
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
    pub(super) kind: SetKind,
    pub(super) v6: bool,
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
    pub(super) fn write_json(&self, out: &mut String) {
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
pub(super) fn vs_elements(k: &ServiceKey, vs: &DesiredVs) -> Vec<SetElement> {
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

pub(super) fn address_element(a: IpAddr) -> SetElement {
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
    /// Each virtual server as its elements were counted: the desired
    /// table's own `Arc`s (shared, not copies), from which the elements
    /// to uncount are derived again when it changes. Keeping the elements
    /// themselves cost ~350 bytes a virtual server.
    per_vs: HashMap<ServiceKey, Arc<DesiredVs>>,
    bound: BTreeSet<IpAddr>,
}

impl SetTracker {
    /// The sets [`render`] fills for `desired`.
    pub fn of(desired: &DesiredState) -> Self {
        let mut t = SetTracker::default();
        for (k, vs) in &desired.virtual_servers {
            for x in vs_elements(k, vs) {
                *t.counts.entry(x).or_default() += 1;
            }
            t.per_vs.insert(*k, Arc::clone(vs));
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
            if let Some(old) = self.per_vs.remove(k) {
                for x in vs_elements(k, &old) {
                    *delta.entry(x).or_default() -= 1;
                }
            }
            if let Some(vs) = desired.virtual_servers.get(k) {
                for x in vs_elements(k, vs) {
                    *delta.entry(x).or_default() += 1;
                }
                self.per_vs.insert(*k, Arc::clone(vs));
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
