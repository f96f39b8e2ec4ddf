//! The diff between the desired table and what the kernel holds (pure).
//!
//! Produces the minimal ordered list of changes: bind addresses, add/update
//! virtual servers, add/update real servers, then deletions. Removed real
//! servers are drained (weight 0) before they are deleted, as kube-proxy's
//! graceful termination does, but decided from the connection counters the
//! kernel reports at every sync instead of a one-minute poll.
//!
//! Ownership: lbd touches a virtual server only if its address is in the
//! desired set or bound by lbd on kube-ipvs0, and never one inside
//! `exclude_cidrs` that it does not want itself. Everything else in the
//! kernel (another tool's services) is left alone. After a restart the
//! kernel's table is adopted as is: identical entries cause no change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::model::{DesiredState, DesiredVs, Scope};
use super::model::{DestKey, Protocol, RealServer, ServiceKey, VirtualServer};

/// A virtual server as listed from the kernel, real servers with counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelVs {
    pub vs: VirtualServer,
    pub real_servers: BTreeMap<DestKey, RealServer>,
}

/// What the kernel holds: the IPVS table and the addresses on kube-ipvs0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub virtual_servers: BTreeMap<ServiceKey, KernelVs>,
    pub bound_addresses: BTreeSet<IpAddr>,
}

impl KernelState {
    /// From one `IpvsHandle::list_services` and the addresses on kube-ipvs0.
    pub fn from_listing(
        listing: Vec<(VirtualServer, Vec<RealServer>)>,
        bound_addresses: BTreeSet<IpAddr>,
    ) -> Self {
        let virtual_servers = listing
            .into_iter()
            .map(|(vs, rs)| {
                let real_servers = rs.into_iter().map(|r| (r.key(), r)).collect();
                (vs.key(), KernelVs { vs, real_servers })
            })
            .collect();
        KernelState {
            virtual_servers,
            bound_addresses,
        }
    }
}

/// One change to apply, in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    BindAddress(IpAddr),
    AddVirtual(VirtualServer),
    UpdateVirtual(VirtualServer),
    AddReal(ServiceKey, RealServer),
    /// Weight change; weight 0 starts a drain.
    UpdateReal(ServiceKey, RealServer),
    DeleteReal(ServiceKey, DestKey),
    DeleteVirtual(ServiceKey),
    UnbindAddress(IpAddr),
}

/// The apiserver's default --service-node-port-range.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Plan-wide settings.
#[derive(Debug, Clone, Default)]
pub struct PlanParams<'a> {
    /// kube-proxy's ipvs.excludeCIDRs: never cleaned up by us.
    pub exclude_cidrs: &'a [IpNet],
    /// Longest a drained real server with connections is kept at weight 0.
    pub drain_timeout: Duration,
    /// Node addresses that carry NodePorts: a virtual server on one of them
    /// in the NodePort range is ours even when no NodePort is left (node
    /// addresses are never bound on kube-ipvs0).
    pub node_port_ips: &'a [IpAddr],
    /// Virtual servers this process wanted at some point (NodePorts
    /// outside the default range, after the last one went away).
    pub remembered: Option<&'a BTreeSet<ServiceKey>>,
    /// Plan only these virtual servers and addresses (the ones changed
    /// Services can have moved), trusting the rest to match already; None
    /// plans everything. Drains outside the scope are kept as they are.
    pub scope: Option<&'a Scope>,
}

/// State kept across syncs, outside the kernel: when each drain started.
#[derive(Debug, Clone, Default)]
pub struct DrainTracker {
    since: BTreeMap<(ServiceKey, DestKey), Instant>,
}

impl DrainTracker {
    pub fn len(&self) -> usize {
        self.since.len()
    }
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
    /// Virtual servers with a draining real server.
    pub fn services(&self) -> BTreeSet<ServiceKey> {
        self.since.keys().map(|(k, _)| *k).collect()
    }
}

impl KernelState {
    /// Updates this view as if `change` had been applied successfully, so
    /// the next sync can plan against it without listing the kernel again.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::BindAddress(a) => {
                self.bound_addresses.insert(*a);
            }
            Change::UnbindAddress(a) => {
                self.bound_addresses.remove(a);
            }
            Change::AddVirtual(vs) | Change::UpdateVirtual(vs) => {
                self.virtual_servers
                    .entry(vs.key())
                    .and_modify(|k| k.vs = vs.clone())
                    .or_insert_with(|| KernelVs {
                        vs: vs.clone(),
                        real_servers: BTreeMap::new(),
                    });
            }
            Change::DeleteVirtual(k) => {
                self.virtual_servers.remove(k);
            }
            Change::AddReal(k, rs) | Change::UpdateReal(k, rs) => {
                if let Some(v) = self.virtual_servers.get_mut(k) {
                    v.real_servers
                        .entry(rs.key())
                        .and_modify(|cur| {
                            // Counters are kernel state; keep what we saw.
                            *cur = RealServer {
                                active_conns: cur.active_conns,
                                inactive_conns: cur.inactive_conns,
                                persist_conns: cur.persist_conns,
                                ..rs.clone()
                            }
                        })
                        .or_insert_with(|| rs.clone());
                }
            }
            Change::DeleteReal(k, d) => {
                if let Some(v) = self.virtual_servers.get_mut(k) {
                    v.real_servers.remove(d);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Real servers still draining after this plan: sync again soon, since
    /// only a later listing tells when their connections are gone.
    pub draining: usize,
    /// Earliest drain bound among them.
    pub next_deadline: Option<Instant>,
}

/// Computes the changes that take `kernel` to `desired`. `drains` is updated
/// as if the plan were applied (the caller applies it or resyncs fully).
pub fn plan(
    desired: &DesiredState,
    kernel: &KernelState,
    drains: &mut DrainTracker,
    params: &PlanParams<'_>,
    now: Instant,
) -> Plan {
    let owner = Ownership {
        desired,
        kernel,
        params,
    };
    let mut b = Builder {
        kernel,
        drains,
        params,
        now,
        binds: Vec::new(),
        add_vs: Vec::new(),
        add_rs: Vec::new(),
        del_rs: Vec::new(),
        del_vs: Vec::new(),
        unbinds: Vec::new(),
        still_draining: BTreeMap::new(),
    };
    match params.scope {
        None => b.everything(desired, &owner),
        Some(scope) => b.scoped(desired, scope, &owner),
    }
    b.finish()
}

/// Which of the kernel's objects are lbd's to change.
struct Ownership<'a> {
    desired: &'a DesiredState,
    kernel: &'a KernelState,
    params: &'a PlanParams<'a>,
}

impl Ownership<'_> {
    fn excluded(&self, a: &IpAddr) -> bool {
        self.params.exclude_cidrs.iter().any(|n| n.contains(a))
    }

    /// Any desired virtual server on this address (keys sort by address
    /// first, so this is one range lookup, not a set of every address).
    fn wanted_addr(&self, a: IpAddr) -> bool {
        let lo = ServiceKey {
            addr: a,
            port: 0,
            protocol: Protocol::Tcp,
        };
        self.desired
            .virtual_servers
            .range(lo..)
            .next()
            .is_some_and(|(k, _)| k.addr == a)
    }

    /// A virtual server lbd may delete: one it wants, or one on an address
    /// it wants or bound, one it wanted since start, or a NodePort on a
    /// node address, never inside `exclude_cidrs`.
    fn ours(&self, k: &ServiceKey) -> bool {
        let p = self.params;
        self.desired.virtual_servers.contains_key(k)
            || ((self.wanted_addr(k.addr)
                || self.kernel.bound_addresses.contains(&k.addr)
                || p.remembered.is_some_and(|r| r.contains(k))
                || (p.node_port_ips.contains(&k.addr) && NODE_PORT_RANGE.contains(&k.port)))
                && !self.excluded(&k.addr))
    }
}

/// The plan being built, by kind of change (they are applied in this
/// order: see [`Builder::finish`]).
struct Builder<'a> {
    kernel: &'a KernelState,
    drains: &'a mut DrainTracker,
    params: &'a PlanParams<'a>,
    now: Instant,
    binds: Vec<Change>,
    add_vs: Vec<Change>,
    add_rs: Vec<Change>,
    del_rs: Vec<Change>,
    del_vs: Vec<Change>,
    unbinds: Vec<Change>,
    still_draining: BTreeMap<(ServiceKey, DestKey), Instant>,
}

impl Builder<'_> {
    /// Every desired and every kernel object.
    fn everything(&mut self, desired: &DesiredState, owner: &Ownership<'_>) {
        let kernel = self.kernel;
        for a in desired.bind_addresses.difference(&kernel.bound_addresses) {
            self.binds.push(Change::BindAddress(*a));
        }
        for (key, want) in &desired.virtual_servers {
            self.virtual_server(key, want);
        }
        for key in kernel.virtual_servers.keys() {
            if !desired.virtual_servers.contains_key(key) && owner.ours(key) {
                self.del_vs.push(Change::DeleteVirtual(*key));
            }
        }
        for a in kernel.bound_addresses.difference(&desired.bind_addresses) {
            if !owner.excluded(a) {
                self.unbinds.push(Change::UnbindAddress(*a));
            }
        }
    }

    /// The same decisions as [`Builder::everything`], for the scope's keys
    /// only (in the same order, so a scoped plan is the full plan's
    /// restriction).
    fn scoped(&mut self, desired: &DesiredState, scope: &Scope, owner: &Ownership<'_>) {
        let kernel = self.kernel;
        for a in &scope.addresses {
            if desired.bind_addresses.contains(a) && !kernel.bound_addresses.contains(a) {
                self.binds.push(Change::BindAddress(*a));
            }
        }
        for key in &scope.virtual_servers {
            if let Some(want) = desired.virtual_servers.get(key) {
                self.virtual_server(key, want);
            }
        }
        for key in &scope.virtual_servers {
            if kernel.virtual_servers.contains_key(key)
                && !desired.virtual_servers.contains_key(key)
                && owner.ours(key)
            {
                self.del_vs.push(Change::DeleteVirtual(*key));
            }
        }
        for a in &scope.addresses {
            if kernel.bound_addresses.contains(a)
                && !desired.bind_addresses.contains(a)
                && !owner.excluded(a)
            {
                self.unbinds.push(Change::UnbindAddress(*a));
            }
        }
    }

    /// One wanted virtual server and its real servers.
    fn virtual_server(&mut self, key: &ServiceKey, want: &DesiredVs) {
        let have = self.kernel.virtual_servers.get(key);
        match have {
            None => self.add_vs.push(Change::AddVirtual(want.vs.clone())),
            Some(h) if h.vs != want.vs => self.add_vs.push(Change::UpdateVirtual(want.vs.clone())),
            Some(_) => {}
        }
        let empty = BTreeMap::new();
        let have_rs = have.map(|h| &h.real_servers).unwrap_or(&empty);
        for (rs, weight) in &want.real_servers {
            let want_rs = RealServer::new(rs.addr, rs.port, *weight);
            match have_rs.get(rs) {
                None => self.add_rs.push(Change::AddReal(*key, want_rs)),
                // Also brings back a real server we were draining.
                Some(h) if !h.same_config(&want_rs) => {
                    self.add_rs.push(Change::UpdateReal(*key, want_rs))
                }
                Some(_) => {}
            }
        }
        for (rs, h) in have_rs {
            if !want.real_servers.contains_key(rs) {
                self.removed_real_server(key, rs, h);
            }
        }
    }

    /// A real server no longer wanted: drained at weight 0 until IPVS shows
    /// no connection or the drain bound passes, then deleted.
    fn removed_real_server(&mut self, key: &ServiceKey, rs: &DestKey, h: &RealServer) {
        // UDP has no connection end to wait for: an entry would only keep
        // sending datagrams to a gone endpoint. kube-proxy deletes UDP and
        // SCTP real servers at once (IsRsGracefulTerminationNeeded), and
        // so does lbd.
        if matches!(key.protocol, Protocol::Udp | Protocol::Sctp) {
            self.del_rs.push(Change::DeleteReal(*key, *rs));
            return;
        }
        let since = *self.drains.since.get(&(*key, *rs)).unwrap_or(&self.now);
        if h.weight != 0 {
            // Same configuration at weight 0; counters are not config.
            let drained = RealServer {
                weight: 0,
                active_conns: 0,
                inactive_conns: 0,
                persist_conns: 0,
                ..h.clone()
            };
            self.del_rs.push(Change::UpdateReal(*key, drained));
            self.still_draining.insert((*key, *rs), since);
        } else if h.active_conns + h.inactive_conns == 0
            || self.now.saturating_duration_since(since) >= self.params.drain_timeout
        {
            self.del_rs.push(Change::DeleteReal(*key, *rs));
        } else {
            self.still_draining.insert((*key, *rs), since);
        }
    }

    /// The changes in their order, and the drains as if they were applied.
    fn finish(self) -> Plan {
        match self.params.scope {
            None => self.drains.since = self.still_draining,
            Some(scope) => {
                self.drains
                    .since
                    .retain(|(k, _), _| !scope.virtual_servers.contains(k));
                self.drains.since.extend(self.still_draining);
            }
        }
        let next_deadline = self
            .drains
            .since
            .values()
            .map(|s| *s + self.params.drain_timeout)
            .min();
        let mut changes = self.binds;
        changes.extend(self.add_vs);
        changes.extend(self.add_rs);
        changes.extend(self.del_rs);
        changes.extend(self.del_vs);
        changes.extend(self.unbinds);
        Plan {
            changes,
            draining: self.drains.since.len(),
            next_deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{DesiredVs, VsKind};
    use std::sync::Arc;

    fn vk(a: &str, port: u16, proto: Protocol) -> ServiceKey {
        ServiceKey {
            addr: a.parse().unwrap(),
            port,
            protocol: proto,
        }
    }
    fn rk(a: &str, port: u16) -> DestKey {
        DestKey {
            addr: a.parse().unwrap(),
            port,
        }
    }
    fn vs(k: ServiceKey) -> VirtualServer {
        VirtualServer::new(k.addr, k.port, k.protocol, "rr")
    }
    fn rsv(k: DestKey, w: u32) -> RealServer {
        RealServer::new(k.addr, k.port, w)
    }
    fn dvs(k: ServiceKey, rs: &[DestKey]) -> Arc<DesiredVs> {
        Arc::new(DesiredVs {
            vs: vs(k),
            kind: VsKind::ClusterIp,
            service: "default/x:".into(),
            local_only: false,
            source_ranges: vec![],
            real_servers: rs.iter().map(|r| (*r, 1)).collect(),
        })
    }
    fn kvs(k: ServiceKey, rs: &[(DestKey, u32, u32)]) -> KernelVs {
        KernelVs {
            vs: vs(k),
            real_servers: rs
                .iter()
                .map(|(r, w, c)| {
                    let mut x = rsv(*r, *w);
                    x.active_conns = *c;
                    (*r, x)
                })
                .collect(),
        }
    }
    const BOUND: Duration = Duration::from_secs(60);
    fn params() -> PlanParams<'static> {
        PlanParams {
            exclude_cidrs: &[],
            drain_timeout: BOUND,
            ..Default::default()
        }
    }

    /// A plan with no drains in progress, now.
    fn fresh(d: &DesiredState, k: &KernelState) -> Plan {
        plan(
            d,
            k,
            &mut DrainTracker::default(),
            &params(),
            Instant::now(),
        )
    }

    /// Applies a plan to a kernel state the way the kernel would.
    fn apply(k: &mut KernelState, p: &Plan) {
        for c in &p.changes {
            k.apply(c);
        }
    }

    fn one_service() -> DesiredState {
        let mut d = DesiredState::default();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        d.virtual_servers
            .insert(v, dvs(v, &[rk("10.244.0.1", 8080), rk("10.244.0.2", 8080)]));
        d.bind_addresses.insert("10.96.0.1".parse().unwrap());
        d
    }

    /// `one_service`, planned and applied to an empty kernel.
    fn programmed() -> (DesiredState, KernelState, DrainTracker, Instant) {
        let d = one_service();
        let mut k = KernelState::default();
        let mut t = DrainTracker::default();
        let now = Instant::now();
        let p0 = plan(&d, &k, &mut t, &params(), now);
        apply(&mut k, &p0);
        (d, k, t, now)
    }

    /// What `one_service` puts in the kernel, with these active
    /// connections on its two real servers.
    fn kernel_of_one_service(conns: [u32; 2]) -> KernelState {
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        let mut k = KernelState::default();
        let rs = [
            (rk("10.244.0.1", 8080), 1, conns[0]),
            (rk("10.244.0.2", 8080), 1, conns[1]),
        ];
        k.virtual_servers.insert(v, kvs(v, &rs));
        k.bound_addresses.insert(v.addr);
        k
    }

    #[test]
    fn from_empty_kernel_binds_then_adds_in_order() {
        let d = one_service();
        let p = plan(
            &d,
            &KernelState::default(),
            &mut DrainTracker::default(),
            &params(),
            Instant::now(),
        );
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        assert_eq!(
            p.changes,
            vec![
                Change::BindAddress("10.96.0.1".parse().unwrap()),
                Change::AddVirtual(vs(v)),
                Change::AddReal(v, rsv(rk("10.244.0.1", 8080), 1)),
                Change::AddReal(v, rsv(rk("10.244.0.2", 8080), 1)),
            ]
        );
    }

    #[test]
    fn applied_plan_converges_and_second_plan_is_empty() {
        let d = one_service();
        let mut k = KernelState::default();
        let mut t = DrainTracker::default();
        let now = Instant::now();
        let p = plan(&d, &k, &mut t, &params(), now);
        apply(&mut k, &p);
        let p2 = plan(&d, &k, &mut t, &params(), now);
        assert_eq!(p2, Plan::default());
    }

    #[test]
    fn adopted_identical_table_is_kept_without_change() {
        // After a restart (no flush) the kernel already holds our table with
        // live connections: nothing is re-added or reset.
        let d = one_service();
        let k = kernel_of_one_service([5, 3]);
        let p = fresh(&d, &k);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
    }

    #[test]
    fn one_endpoint_change_is_one_change() {
        let (mut d, k, mut t, now) = programmed();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        Arc::make_mut(d.virtual_servers.get_mut(&v).unwrap())
            .real_servers
            .insert(rk("10.244.0.3", 8080), 1);
        let p = plan(&d, &k, &mut t, &params(), now);
        assert_eq!(
            p.changes,
            vec![Change::AddReal(v, rsv(rk("10.244.0.3", 8080), 1))]
        );
    }

    #[test]
    fn scheduler_or_affinity_change_updates_in_place() {
        let mut d = one_service();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        let k = kernel_of_one_service([0, 0]);
        let mut s2 = vs(v);
        s2.persistent = Some(10800);
        Arc::make_mut(d.virtual_servers.get_mut(&v).unwrap()).vs = s2.clone();
        let p = fresh(&d, &k);
        assert_eq!(p.changes, vec![Change::UpdateVirtual(s2)]);
    }

    #[test]
    fn removed_tcp_real_server_drains_then_goes_when_idle() {
        let mut d = one_service();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        let gone = rk("10.244.0.2", 8080);
        let mut k = KernelState::default();
        k.virtual_servers
            .insert(v, kvs(v, &[(rk("10.244.0.1", 8080), 1, 0), (gone, 1, 2)]));
        k.bound_addresses.insert(v.addr);
        Arc::make_mut(d.virtual_servers.get_mut(&v).unwrap())
            .real_servers
            .remove(&gone);
        let mut t = DrainTracker::default();
        let t0 = Instant::now();

        let p = plan(&d, &k, &mut t, &params(), t0);
        assert_eq!(p.changes, vec![Change::UpdateReal(v, rsv(gone, 0))]);
        assert_eq!(p.draining, 1);
        assert_eq!(p.next_deadline, Some(t0 + BOUND));
        apply(&mut k, &p);

        // Connections still open: nothing to do, still draining.
        let p = plan(&d, &k, &mut t, &params(), t0 + Duration::from_secs(5));
        assert!(p.changes.is_empty());
        assert_eq!(p.draining, 1);

        // Connections gone: deleted.
        k.virtual_servers
            .get_mut(&v)
            .unwrap()
            .real_servers
            .get_mut(&gone)
            .unwrap()
            .active_conns = 0;
        let p = plan(&d, &k, &mut t, &params(), t0 + Duration::from_secs(6));
        assert_eq!(p.changes, vec![Change::DeleteReal(v, gone)]);
        assert_eq!(p.draining, 0);
        assert!(t.is_empty());
    }

    #[test]
    fn drain_bound_deletes_even_with_connections() {
        let mut d = one_service();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        let gone = rk("10.244.0.2", 8080);
        let mut k = KernelState::default();
        k.virtual_servers
            .insert(v, kvs(v, &[(rk("10.244.0.1", 8080), 1, 0), (gone, 1, 9)]));
        Arc::make_mut(d.virtual_servers.get_mut(&v).unwrap())
            .real_servers
            .remove(&gone);
        let mut t = DrainTracker::default();
        let t0 = Instant::now();
        let p0 = plan(&d, &k, &mut t, &params(), t0);
        apply(&mut k, &p0);
        let p = plan(
            &d,
            &k,
            &mut t,
            &params(),
            t0 + BOUND - Duration::from_millis(1),
        );
        assert!(p
            .changes
            .iter()
            .all(|c| !matches!(c, Change::DeleteReal(..))));
        let p = plan(&d, &k, &mut t, &params(), t0 + BOUND);
        assert!(p.changes.contains(&Change::DeleteReal(v, gone)));
    }

    #[test]
    fn draining_real_server_that_comes_back_is_restored() {
        let d = one_service();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        let back = rk("10.244.0.2", 8080);
        let mut k = KernelState::default();
        k.virtual_servers
            .insert(v, kvs(v, &[(rk("10.244.0.1", 8080), 1, 0), (back, 0, 4)]));
        k.bound_addresses.insert(v.addr);
        let mut t = DrainTracker::default();
        let p = plan(&d, &k, &mut t, &params(), Instant::now());
        assert_eq!(p.changes, vec![Change::UpdateReal(v, rsv(back, 1))]);
        assert!(t.is_empty());
    }

    /// kube-proxy's IsRsGracefulTerminationNeeded: UDP and SCTP real
    /// servers go at once, with connections or not; TCP drains.
    #[test]
    fn udp_and_sctp_real_servers_are_deleted_at_once() {
        for (proto, drained) in [
            (Protocol::Udp, false),
            (Protocol::Sctp, false),
            (Protocol::Tcp, true),
        ] {
            let v = vk("10.96.0.10", 53, proto);
            let mut d = DesiredState::default();
            d.virtual_servers.insert(v, dvs(v, &[rk("10.244.0.1", 53)]));
            let mut k = KernelState::default();
            k.virtual_servers.insert(
                v,
                kvs(
                    v,
                    &[(rk("10.244.0.1", 53), 1, 0), (rk("10.244.0.9", 53), 1, 7)],
                ),
            );
            let p = fresh(&d, &k);
            if drained {
                assert_eq!(p.draining, 1, "{proto}");
                assert!(
                    !p.changes
                        .contains(&Change::DeleteReal(v, rk("10.244.0.9", 53))),
                    "{proto}"
                );
            } else {
                assert_eq!(
                    p.changes,
                    vec![Change::DeleteReal(v, rk("10.244.0.9", 53))],
                    "{proto}"
                );
                assert_eq!(p.draining, 0, "{proto}");
            }
        }
    }

    #[test]
    fn foreign_virtual_servers_are_untouched() {
        let d = one_service();
        let mut k = KernelState::default();
        // Another tool's service on an address we neither want nor bound.
        k.virtual_servers.insert(
            vk("192.0.2.1", 80, Protocol::Tcp),
            kvs(
                vk("192.0.2.1", 80, Protocol::Tcp),
                &[(rk("192.0.2.2", 80), 1, 0)],
            ),
        );
        // A stale one of ours: its address is still bound on kube-ipvs0.
        k.virtual_servers.insert(
            vk("10.96.0.99", 80, Protocol::Tcp),
            kvs(vk("10.96.0.99", 80, Protocol::Tcp), &[]),
        );
        k.bound_addresses.insert("10.96.0.99".parse().unwrap());
        // Another port on an address we want is ours too.
        k.virtual_servers.insert(
            vk("10.96.0.1", 81, Protocol::Tcp),
            kvs(vk("10.96.0.1", 81, Protocol::Tcp), &[]),
        );
        let p = fresh(&d, &k);
        let deletes: Vec<&Change> = p
            .changes
            .iter()
            .filter(|c| matches!(c, Change::DeleteVirtual(_) | Change::UnbindAddress(_)))
            .collect();
        assert_eq!(
            deletes,
            vec![
                &Change::DeleteVirtual(vk("10.96.0.1", 81, Protocol::Tcp)),
                &Change::DeleteVirtual(vk("10.96.0.99", 80, Protocol::Tcp)),
                &Change::UnbindAddress("10.96.0.99".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn exclude_cidrs_are_never_cleaned_up() {
        let d = DesiredState::default();
        let mut k = KernelState::default();
        k.virtual_servers.insert(
            vk("10.96.0.99", 80, Protocol::Tcp),
            kvs(vk("10.96.0.99", 80, Protocol::Tcp), &[]),
        );
        k.virtual_servers.insert(
            vk("10.97.0.1", 80, Protocol::Tcp),
            kvs(vk("10.97.0.1", 80, Protocol::Tcp), &[]),
        );
        k.bound_addresses.insert("10.96.0.99".parse().unwrap());
        k.bound_addresses.insert("10.97.0.1".parse().unwrap());
        let excl: Vec<IpNet> = vec!["10.96.0.0/16".parse().unwrap()];
        let p = plan(
            &d,
            &k,
            &mut DrainTracker::default(),
            &PlanParams {
                exclude_cidrs: &excl,
                drain_timeout: BOUND,
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(
            p.changes,
            vec![
                Change::DeleteVirtual(vk("10.97.0.1", 80, Protocol::Tcp)),
                Change::UnbindAddress("10.97.0.1".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn removed_service_is_deleted_and_unbound_after_everything_else() {
        let (mut d, k, mut t, now) = programmed();
        let v2 = vk("10.96.0.2", 53, Protocol::Udp);
        d.virtual_servers.clear();
        d.bind_addresses.clear();
        d.virtual_servers.insert(v2, dvs(v2, &[]));
        d.bind_addresses.insert(v2.addr);
        let p = plan(&d, &k, &mut t, &params(), now);
        assert_eq!(
            p.changes,
            vec![
                Change::BindAddress(v2.addr),
                Change::AddVirtual(vs(v2)),
                Change::DeleteVirtual(vk("10.96.0.1", 80, Protocol::Tcp)),
                Change::UnbindAddress("10.96.0.1".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn stale_node_ports_on_node_addresses_are_ours() {
        let d = DesiredState::default();
        let node: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap()];
        let mut k = KernelState::default();
        // Our NodePort whose Service is gone (node addresses are not bound).
        k.virtual_servers.insert(
            vk("192.168.1.10", 30080, Protocol::Tcp),
            kvs(vk("192.168.1.10", 30080, Protocol::Tcp), &[]),
        );
        // Another tool's service on the node address, outside the range.
        k.virtual_servers.insert(
            vk("192.168.1.10", 80, Protocol::Tcp),
            kvs(vk("192.168.1.10", 80, Protocol::Tcp), &[]),
        );
        // Outside the range but remembered as one we wanted.
        k.virtual_servers.insert(
            vk("192.168.1.10", 8443, Protocol::Tcp),
            kvs(vk("192.168.1.10", 8443, Protocol::Tcp), &[]),
        );
        let remembered = BTreeSet::from([vk("192.168.1.10", 8443, Protocol::Tcp)]);
        let p = plan(
            &d,
            &k,
            &mut DrainTracker::default(),
            &PlanParams {
                drain_timeout: BOUND,
                node_port_ips: &node,
                remembered: Some(&remembered),
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(
            p.changes,
            vec![
                Change::DeleteVirtual(vk("192.168.1.10", 8443, Protocol::Tcp)),
                Change::DeleteVirtual(vk("192.168.1.10", 30080, Protocol::Tcp)),
            ]
        );
    }

    #[test]
    fn scoped_plan_touches_only_its_scope_and_keeps_other_drains() {
        let d = one_service();
        let v = vk("10.96.0.1", 80, Protocol::Tcp);
        let other = vk("10.96.0.2", 80, Protocol::Tcp);
        let draining = rk("10.244.0.9", 8080);
        let mut k = KernelState::default();
        k.virtual_servers
            .insert(v, kvs(v, &[(rk("10.244.0.1", 8080), 1, 0)]));
        k.bound_addresses.insert(v.addr);
        // Out of scope: a stale virtual server with a draining real server.
        k.virtual_servers
            .insert(other, kvs(other, &[(draining, 0, 3)]));
        k.bound_addresses.insert(other.addr);
        let t0 = Instant::now();
        let mut t = DrainTracker::default();
        t.since.insert((other, draining), t0);
        let scope = Scope {
            virtual_servers: BTreeSet::from([v]),
            addresses: BTreeSet::from([v.addr]),
        };
        let p = plan(
            &d,
            &k,
            &mut t,
            &PlanParams {
                scope: Some(&scope),
                ..params()
            },
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            p.changes,
            vec![Change::AddReal(v, rsv(rk("10.244.0.2", 8080), 1))]
        );
        assert_eq!(p.draining, 1);
        assert_eq!(p.next_deadline, Some(t0 + BOUND));
        // The full plan cleans up what the scope left alone.
        let p = plan(&d, &k, &mut t, &params(), t0 + Duration::from_secs(1));
        assert!(p.changes.contains(&Change::DeleteVirtual(other)));
        assert!(p.changes.contains(&Change::UnbindAddress(other.addr)));
        assert!(t.is_empty());
    }
}
