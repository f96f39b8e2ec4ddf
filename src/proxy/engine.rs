//! The proxy engine, sans-IO: fed the caches' contents and what the kernel
//! holds, it returns the operations that bring the kernel to the desired
//! table, and learns from their results. It never calls the kernel, the
//! apiserver or a clock: the driver ([`super::driver::Syncer`]) carries
//! each [`Step`] to a [`DataPlane`](super::kernel::DataPlane) and answers
//! with a [`Reply`].
//!
//! One sync, in steps:
//! 1. [`Engine::start`]: the desired table is brought up to date, from every
//!    Service (a full sync) or only the changed ones; then, if the kept
//!    view of the kernel is gone or a listing is due, [`Step::ListAll`], else
//!    [`Step::ListRealServers`] for virtual servers with draining real
//!    servers (their connection counters decide the drain);
//! 2. the plan against that view: [`Step::Apply`] with the changes, in order;
//! 3. the nftables table: element changes for a changed-only sync, a whole
//!    render otherwise, only when the table changed ([`Step::Firewall`]);
//! 4. [`Step::Done`] with the [`SyncOutcome`].
//!
//! Between syncs the engine keeps the desired table (patched per Service),
//! the kernel as of the end of the last sync (so a changed-only sync needs no
//! listing; dropped after any failure), the drains in progress, the virtual
//! servers wanted since start (ownership of stale NodePorts) and what the
//! nftables sets hold.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Service;

use super::changes::ChangeCounter;
use super::desired::{DesiredCache, DesiredParams, NodeAddresses};
use super::kernel::nft::{self, NftDocument, NftParams, SetTracker};
use super::kernel::{HostSettings, KernelError, KernelOp, OpCounts, RealServerListing};
use super::model::{DesiredState, Scope, ServiceInputs, ServiceKey, Timeouts};
use super::objects::EndpointSlice;
use super::plan::{plan, Change, DrainTracker, KernelState, Plan, PlanParams};
use super::schedule::ScheduleSettings;
use crate::config::ProxyConfig;

/// Settings of the proxy, from [`ProxyConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    pub node_name: String,
    pub scheduler: String,
    pub node_port_addresses: Vec<ipnet::IpNet>,
    /// nodePortAddresses `primary`: the Node's primary IPs only.
    pub node_port_primary: bool,
    pub exclude_cidrs: Vec<ipnet::IpNet>,
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    pub masquerade_all: bool,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// Longest a removed real server drains at weight 0.
    pub drain_timeout: Duration,
    pub timeouts: Option<Timeouts>,
    /// arp_ignore=1 / arp_announce=2 (kube-proxy's ipvs.strictARP).
    pub strict_arp: bool,
}

impl Default for EngineSettings {
    /// kube-proxy's defaults, no node name.
    fn default() -> Self {
        EngineSettings {
            node_name: String::new(),
            scheduler: "rr".into(),
            node_port_addresses: vec![],
            node_port_primary: false,
            exclude_cidrs: vec![],
            cluster_cidrs: vec![],
            masquerade_all: false,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(15 * 60),
            timeouts: None,
            strict_arp: false,
        }
    }
}

impl EngineSettings {
    pub fn from_config(cfg: &ProxyConfig, node_name: &str) -> Self {
        let secs =
            |d: Option<Duration>| d.map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32);
        let t = Timeouts {
            tcp: secs(cfg.ipvs.tcp_timeout),
            tcp_fin: secs(cfg.ipvs.tcp_fin_timeout),
            udp: secs(cfg.ipvs.udp_timeout),
        };
        EngineSettings {
            node_name: cfg
                .hostname_override
                .clone()
                .unwrap_or_else(|| node_name.to_string()),
            scheduler: if cfg.ipvs.scheduler.is_empty() {
                "rr".into()
            } else {
                cfg.ipvs.scheduler.clone()
            },
            node_port_addresses: cfg.node_port_addresses.clone(),
            node_port_primary: cfg.node_port_primary,
            exclude_cidrs: cfg.ipvs.exclude_cidrs.clone(),
            cluster_cidrs: cfg.cluster_cidr.clone(),
            masquerade_all: cfg.masquerade_all,
            min_sync_period: cfg.ipvs.min_sync_period,
            // A zero period would spin: kube-proxy requires it positive too.
            sync_period: cfg
                .ipvs
                .sync_period
                .max(cfg.ipvs.min_sync_period)
                .max(Duration::from_secs(1)),
            // kube-proxy's graceful termination gives up after 15 minutes.
            drain_timeout: Duration::from_secs(15 * 60),
            timeouts: (t != Timeouts::default()).then_some(t),
            strict_arp: cfg.ipvs.strict_arp,
        }
    }

    /// What the data plane applies to the host.
    pub fn host(&self) -> HostSettings {
        HostSettings {
            strict_arp: self.strict_arp,
            timeouts: self.timeouts,
        }
    }

    /// When to sync.
    pub fn schedule(&self) -> ScheduleSettings {
        ScheduleSettings {
            min_sync_period: self.min_sync_period,
            sync_period: self.sync_period,
        }
    }

    /// The inputs of the desired table besides the caches.
    pub fn desired_params<'a>(
        &'a self,
        node: &'a NodeAddresses,
        node_zone: Option<&'a str>,
    ) -> DesiredParams<'a> {
        DesiredParams {
            node_name: &self.node_name,
            node_addresses: &node.addresses,
            primary_ips: &node.primary,
            node_port_addresses: &self.node_port_addresses,
            node_port_primary: self.node_port_primary,
            scheduler: &self.scheduler,
            node_zone,
        }
    }

    fn nft_params(&self) -> NftParams<'_> {
        NftParams {
            cluster_cidrs: &self.cluster_cidrs,
            masquerade_all: self.masquerade_all,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncOutcome {
    pub services: usize,
    pub virtual_servers: usize,
    pub real_servers: usize,
    pub changes: usize,
    pub failed: usize,
    pub draining: usize,
    pub first_error: Option<String>,
    /// Sync again by then even if nothing changes (drains).
    pub recheck_in: Option<Duration>,
    /// This sync listed the whole kernel.
    pub full: bool,
    /// This sync recomputed and planned every Service (not only the
    /// changed ones).
    pub all_services: bool,
    /// A changed-only sync was refused because a full one is due; nothing
    /// was done.
    pub full_required: bool,
    /// The nftables ruleset was rendered (the table changed since the last
    /// good render).
    pub nft_rendered: bool,
    /// nftables set elements added or deleted by a changed-only sync
    /// (instead of a render).
    pub nft_element_changes: usize,
    /// From the start of the sync until the IPVS and kube-ipvs0 changes
    /// were applied (the nftables table follows). Set by the driver.
    pub ipvs_applied: Option<Duration>,
    /// Operations that succeeded and failed, by kind (metrics).
    pub ops: OpCounts,
    /// Every failed operation with its error, in order (logs).
    pub errors: Vec<(KernelOp, String)>,
    /// Service and EndpointSlice changes this sync took in (kube-proxy's
    /// change counters; 0 on the first sync).
    pub service_changes: u64,
    pub endpoint_changes: u64,
    /// When the changes this sync programmed were triggered, for kube-proxy's
    /// network programming latency; empty unless the sync succeeded.
    pub programmed_triggers: Vec<SystemTime>,
}

impl SyncOutcome {
    /// Counts a failed operation and keeps its error.
    pub fn fail(&mut self, op: KernelOp, e: &KernelError) {
        self.failed += 1;
        self.ops.failed(op);
        let msg = e.to_string();
        self.first_error.get_or_insert_with(|| msg.clone());
        self.errors.push((op, msg));
    }

    /// The outcome of a changed-only sync refused because a full one is due.
    pub fn full_required() -> Self {
        SyncOutcome {
            full_required: true,
            recheck_in: Some(Duration::ZERO),
            ..Default::default()
        }
    }
}

/// What a sync recomputes from.
#[derive(Debug, Clone, Copy)]
pub enum Inputs<'a> {
    /// The whole caches: every Service is checked and planned.
    All {
        services: &'a [Arc<Service>],
        slices: &'a [Arc<EndpointSlice>],
    },
    /// The Services that changed since the last sync.
    Changed(&'a [ServiceInputs]),
}

/// What the engine asks of the kernel next.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// List everything the data plane holds: answer [`Reply::Listed`].
    ListAll,
    /// The real servers (with their counters) of these virtual servers:
    /// answer [`Reply::RealServers`].
    ListRealServers(Vec<ServiceKey>),
    /// Apply these changes in order: answer [`Reply::Applied`], one result
    /// per change.
    Apply(&'a [Change]),
    /// Apply this nftables document: answer [`Reply::Firewall`].
    Firewall(NftDocument),
    /// The sync is over.
    Done(Box<SyncOutcome>),
}

/// The kernel's answer to a [`Step`].
#[derive(Debug)]
pub enum Reply {
    Listed(Result<KernelState, KernelError>),
    /// Per virtual server asked for, its real servers (None: it is gone).
    RealServers(Result<RealServerListing, KernelError>),
    Applied(Vec<Result<(), KernelError>>),
    Firewall(Result<(), KernelError>),
}

/// What the nftables sets hold, as of the last document nft accepted.
#[derive(Debug, Default)]
struct FirewallState {
    /// Digest of the last ruleset nft accepted (the document itself is tens
    /// of MB at 10k Services: not worth keeping to compare against).
    last_ruleset: Option<u64>,
    /// Our sets' elements; None forces a whole-table render.
    sets: Option<SetTracker>,
    /// `DesiredCache::version` the table was last brought up to date with.
    version: Option<u64>,
}

impl FirewallState {
    /// After a failure nothing is known of the table: render it whole.
    fn forget(&mut self) {
        *self = FirewallState::default();
    }
}

/// Which document the firewall step sent.
#[derive(Debug, Clone, Copy)]
enum FirewallDoc {
    Elements,
    Replace { digest: u64 },
}

/// Where a sync in progress is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Listing,
    RealServers,
    Applying,
    Firewall(FirewallDoc),
}

/// A sync in progress.
#[derive(Debug)]
struct SyncState {
    now: Instant,
    phase: Phase,
    /// None: every virtual server and address is planned.
    scope: Option<Scope>,
    node_port_ips: Vec<IpAddr>,
    /// The kernel as read for this sync, updated with what was applied.
    kernel: KernelState,
    plan: Plan,
    /// The inputs, counted when the sync ends (after the plan's results
    /// are gone: at 10k Services the two together raised the peak).
    counting: Counting,
    out: SyncOutcome,
}

/// What the change counters count, once the sync is over (the inputs are
/// shared pointers: a copy of the lists, not of the objects).
#[derive(Debug)]
enum Counting {
    All(Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>),
    Changed(Vec<ServiceInputs>),
}

/// The engine's state between syncs (see the module's doc).
pub struct Engine {
    settings: EngineSettings,
    /// The data plane has an nftables table to keep.
    firewall: bool,
    desired: DesiredCache,
    drains: DrainTracker,
    /// The kernel as of the end of the last sync; None forces a listing.
    kernel: Option<KernelState>,
    /// Virtual servers wanted since start (ownership of stale NodePorts).
    remembered: BTreeSet<ServiceKey>,
    nft: FirewallState,
    counter: ChangeCounter,
    sync: Option<SyncState>,
    /// The Node's zone label, for topology hints ([`Engine::set_node_zone`]).
    node_zone: Option<String>,
}

impl Engine {
    pub fn new(settings: EngineSettings, firewall: bool) -> Self {
        Engine {
            settings,
            firewall,
            desired: DesiredCache::default(),
            drains: DrainTracker::default(),
            kernel: None,
            remembered: BTreeSet::new(),
            nft: FirewallState::default(),
            counter: ChangeCounter::default(),
            sync: None,
            node_zone: None,
        }
    }

    /// The Node's zone for topology hints; a change makes the next sync a
    /// full one ([`Engine::needs_full`]), as every Service's endpoints may
    /// change.
    pub fn set_node_zone(&mut self, zone: Option<&str>) {
        if self.node_zone.as_deref() != zone {
            self.node_zone = zone.map(str::to_string);
        }
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// New settings (a reload). The next sync must be a full one
    /// ([`Engine::needs_full`] says so when the table's inputs changed; a
    /// change of the plan's or the firewall's settings needs one too: the
    /// caller's schedule asks for it).
    pub fn set_settings(&mut self, settings: EngineSettings) {
        if settings.nft_params() != self.settings.nft_params() {
            // The rules themselves change: a whole render, whatever the
            // table's version.
            self.nft.forget();
        }
        self.settings = settings;
    }

    /// The desired table as of the last sync.
    pub fn table(&self) -> &DesiredState {
        self.desired.table()
    }

    /// Whether only a full sync will do, for the engine's own reasons: no
    /// kept view of the kernel (first sync, or the last one failed), or the
    /// node's addresses or the settings the table depends on changed
    /// (every NodePort can move).
    pub fn needs_full(&self, node_addresses: &NodeAddresses) -> bool {
        self.kernel.is_none()
            || !self.desired.matches(
                &self
                    .settings
                    .desired_params(node_addresses, self.node_zone.as_deref()),
            )
    }

    /// Starts a sync: brings the desired table up to date with `inputs` and
    /// says what to read from the kernel. `list_kernel` asks a full sync to
    /// list the kernel even with a kept view (the periodic drift repair).
    /// A changed-only sync the engine cannot do ([`Engine::needs_full`]) is
    /// refused at once with [`SyncOutcome::full_required`].
    pub fn start(
        &mut self,
        inputs: Inputs<'_>,
        node_addresses: &NodeAddresses,
        list_kernel: bool,
        now: Instant,
    ) -> Step<'_> {
        if matches!(inputs, Inputs::Changed(_)) && self.needs_full(node_addresses) {
            return Step::Done(Box::new(SyncOutcome::full_required()));
        }
        let params = self
            .settings
            .desired_params(node_addresses, self.node_zone.as_deref());
        let node_port_ips = super::desired::node_port_ips(&params);
        let (scope, counting) = match inputs {
            Inputs::All { services, slices } => {
                self.desired.compute(services, slices, &params);
                (None, Counting::All(services.to_vec(), slices.to_vec()))
            }
            Inputs::Changed(changed) => match self.desired.compute_changed(changed, &params) {
                Some(s) => (Some(s), Counting::Changed(changed.to_vec())),
                // Checked above; should they differ anyway, nothing partial
                // is programmed.
                None => return Step::Done(Box::new(SyncOutcome::full_required())),
            },
        };
        let want = self.desired.table();
        let out = SyncOutcome {
            services: want.services,
            virtual_servers: want.virtual_servers.len(),
            real_servers: want.real_server_count(),
            all_services: scope.is_none(),
            ..Default::default()
        };
        let list = self.kernel.is_none() || (scope.is_none() && list_kernel);
        self.sync = Some(SyncState {
            now,
            phase: Phase::Listing,
            scope,
            node_port_ips,
            kernel: self.kernel.take().unwrap_or_default(),
            plan: Plan::default(),
            counting,
            out,
        });
        if list {
            return Step::ListAll;
        }
        // A changed-only (or unlisted full) sync plans against the kept
        // view, refreshing only the virtual servers whose drains the
        // connection counters decide.
        let draining: Vec<ServiceKey> = self.drains.services().into_iter().collect();
        if draining.is_empty() {
            return self.plan_step();
        }
        if let Some(s) = self.sync.as_mut() {
            s.phase = Phase::RealServers;
        }
        Step::ListRealServers(draining)
    }

    /// Takes the kernel's answer to the last step and returns the next one.
    pub fn resume(&mut self, reply: Reply) -> Step<'_> {
        let Some(sync) = self.sync.as_mut() else {
            return Step::Done(Box::default());
        };
        match (sync.phase, reply) {
            (Phase::Listing, Reply::Listed(r)) => match r {
                Ok(k) => {
                    sync.kernel = k;
                    sync.out.full = true;
                    self.plan_step()
                }
                Err(e) => {
                    // A failed listing programs nothing (no partial view).
                    sync.out.fail(listing_op(&e), &e);
                    self.done()
                }
            },
            (Phase::RealServers, Reply::RealServers(r)) => match r {
                Ok(listed) => {
                    for (key, rs) in listed {
                        match rs {
                            Some(rs) => {
                                if let Some(v) = sync.kernel.virtual_servers.get_mut(&key) {
                                    v.real_servers = rs.into_iter().map(|r| (r.key(), r)).collect();
                                }
                            }
                            None => {
                                sync.kernel.virtual_servers.remove(&key);
                            }
                        }
                    }
                    self.plan_step()
                }
                Err(e) => {
                    sync.out.fail(KernelOp::ListDests, &e);
                    self.done()
                }
            },
            (Phase::Applying, Reply::Applied(results)) => self.applied(results),
            (Phase::Firewall(doc), Reply::Firewall(r)) => {
                self.firewall_applied(doc, r);
                self.done()
            }
            // A reply to a step that was not asked: the driver's bug; the
            // sync ends with nothing more applied and the view dropped.
            (_, reply) => {
                let e = KernelError::Unexpected(format!("{reply:?}"));
                sync.out.fail(KernelOp::Apply, &e);
                self.done()
            }
        }
    }

    /// Plans against the view read for this sync.
    fn plan_step(&mut self) -> Step<'_> {
        let Some(sync) = self.sync.as_mut() else {
            return Step::Done(Box::default());
        };
        let want = self.desired.table();
        // Draining real servers are decided at every sync, whatever changed.
        if let Some(s) = sync.scope.as_mut() {
            s.virtual_servers.extend(self.drains.services());
        }
        let p = plan(
            want,
            &sync.kernel,
            &mut self.drains,
            &PlanParams {
                exclude_cidrs: &self.settings.exclude_cidrs,
                drain_timeout: self.settings.drain_timeout,
                node_port_ips: &sync.node_port_ips,
                remembered: Some(&self.remembered),
                scope: sync.scope.as_ref(),
            },
            sync.now,
        );
        match &sync.scope {
            None => self.remembered.extend(want.virtual_servers.keys().copied()),
            Some(s) => self.remembered.extend(
                s.virtual_servers
                    .iter()
                    .filter(|k| want.virtual_servers.contains_key(*k))
                    .copied(),
            ),
        }
        sync.out.changes = p.changes.len();
        sync.out.draining = p.draining;
        sync.plan = p;
        sync.phase = Phase::Applying;
        if sync.plan.changes.is_empty() {
            return self.applied(Vec::new());
        }
        match self.sync.as_ref() {
            Some(s) => Step::Apply(&s.plan.changes),
            None => Step::Done(Box::default()),
        }
    }

    /// Learns from the changes' results, then moves on to nftables.
    fn applied(&mut self, results: Vec<Result<(), KernelError>>) -> Step<'_> {
        let Some(sync) = self.sync.as_mut() else {
            return Step::Done(Box::default());
        };
        let mut results = results.into_iter();
        for c in &sync.plan.changes {
            let op = c.op();
            match results.next().unwrap_or(Err(KernelError::NoResult { op })) {
                Ok(()) => {
                    sync.kernel.apply(c);
                    if let Change::DeleteVirtual(k) = c {
                        self.remembered.remove(k);
                    }
                    sync.out.ops.ok(op);
                }
                Err(e) => sync.out.fail(op, &e),
            }
        }
        // After a failure the view is unreliable: the next sync lists.
        if sync.out.failed == 0 {
            self.kernel = Some(std::mem::take(&mut sync.kernel));
        }
        self.firewall_step()
    }

    /// The nftables step: a changed-only sync changes only the sets'
    /// elements of its scope (the rules depend on the settings alone);
    /// anything else, or a change the tracker leaves to a replace, renders
    /// the whole table (O(table)), and only when the table changed since the
    /// last good render, so syncs that change nothing in it skip it.
    fn firewall_step(&mut self) -> Step<'_> {
        let version = self.desired.version();
        let Some(sync) = self.sync.as_mut() else {
            return Step::Done(Box::default());
        };
        if !self.firewall || self.nft.version == Some(version) {
            return self.done();
        }
        let want = self.desired.table();
        let elements = match (&sync.scope, self.nft.sets.as_mut()) {
            (Some(s), Some(t)) => t.update(want, s),
            _ => None,
        };
        match elements {
            Some(ch) if ch.is_empty() => {
                self.nft.version = Some(version);
                self.done()
            }
            Some(ch) => {
                sync.out.nft_element_changes = ch.len();
                sync.phase = Phase::Firewall(FirewallDoc::Elements);
                Step::Firewall(nft::render_element_changes(&ch))
            }
            None => {
                sync.out.nft_rendered = true;
                let doc = nft::render(want, &self.settings.nft_params());
                let digest = nft::digest(&doc);
                if self.nft.last_ruleset == Some(digest) {
                    // What nft holds already.
                    self.nft.version = Some(version);
                    self.nft.sets = Some(SetTracker::of(want));
                    return self.done();
                }
                sync.phase = Phase::Firewall(FirewallDoc::Replace { digest });
                Step::Firewall(doc)
            }
        }
    }

    fn firewall_applied(&mut self, doc: FirewallDoc, r: Result<(), KernelError>) {
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        let op = match doc {
            FirewallDoc::Elements => KernelOp::NftElements,
            FirewallDoc::Replace { .. } => KernelOp::NftReplace,
        };
        if let Err(e) = r {
            sync.out.fail(op, &e);
            self.nft.forget();
            return;
        }
        sync.out.ops.ok(op);
        self.nft.version = Some(self.desired.version());
        match doc {
            // No longer what the last render said: the next render replaces
            // the table whatever its digest.
            FirewallDoc::Elements => self.nft.last_ruleset = None,
            FirewallDoc::Replace { digest } => {
                self.nft.last_ruleset = Some(digest);
                self.nft.sets = Some(SetTracker::of(self.desired.table()));
            }
        }
    }

    /// Ends the sync.
    fn done(&mut self) -> Step<'_> {
        let Some(sync) = self.sync.take() else {
            return Step::Done(Box::default());
        };
        let SyncState {
            now,
            plan,
            counting,
            mut out,
            ..
        } = sync;
        let counted = match counting {
            Counting::All(services, slices) => self.counter.count_all(&services, &slices),
            Counting::Changed(changed) => self.counter.count_changed(&changed),
        };
        out.service_changes = counted.services;
        out.endpoint_changes = counted.endpoints;
        if out.failed == 0 {
            out.programmed_triggers = counted.triggers;
        }
        // Drains are decided from counters only a later listing shows.
        let mut recheck = (plan.draining > 0)
            .then_some(self.settings.min_sync_period.max(Duration::from_secs(1)));
        if let Some(d) = plan.next_deadline {
            let until = d.saturating_duration_since(now);
            recheck = Some(recheck.map_or(until, |r| r.min(until)));
        }
        out.recheck_in = recheck;
        Step::Done(Box::new(out))
    }
}

/// Which listing an error of [`Step::ListAll`] comes from.
fn listing_op(e: &KernelError) -> KernelOp {
    match e {
        KernelError::Addresses(_) => KernelOp::ListAddresses,
        _ => KernelOp::ListServices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::driver::drive;
    use crate::proxy::kernel::ipvs::IpvsCall;
    use crate::proxy::kernel::{DataPlane, FakeKernel, ServiceAddresses};
    use crate::proxy::model::{DestKey, ObjectKey, Protocol, RealServer, VirtualServer};
    use serde_json::json;

    fn settings() -> EngineSettings {
        EngineSettings {
            node_name: "cp1".into(),
            exclude_cidrs: vec!["10.97.0.0/16".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            drain_timeout: Duration::from_secs(60),
            ..Default::default()
        }
    }

    fn svc(name: &str, ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip],
                         "ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        )
    }

    fn eps(svc: &str, rv: &str, addrs: &[&str]) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> = addrs
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                             "resourceVersion": rv,
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": endpoints}))
            .unwrap(),
        )
    }

    /// Three Services, two endpoints each.
    fn world() -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
        let names = [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")];
        (
            names.iter().map(|(n, ip)| svc(n, ip)).collect(),
            names
                .iter()
                .map(|(n, _)| eps(n, "1", &["10.244.1.1", "10.244.1.2"]))
                .collect(),
        )
    }

    fn full(
        e: &mut Engine,
        plane: &dyn DataPlane,
        w: &(Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>),
        list: bool,
        now: Instant,
    ) -> SyncOutcome {
        let inputs = Inputs::All {
            services: &w.0,
            slices: &w.1,
        };
        drive(e, plane, inputs, &NodeAddresses::default(), list, now)
    }

    fn key(a: &str) -> ServiceKey {
        ServiceKey {
            addr: a.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    /// The keys of the virtual servers a mutation touches.
    fn touched(c: &IpvsCall) -> Option<ServiceKey> {
        match c {
            IpvsCall::AddService(v) | IpvsCall::UpdateService(v) => Some(v.key()),
            IpvsCall::DeleteService(k)
            | IpvsCall::AddDest(k, _)
            | IpvsCall::UpdateDest(k, _)
            | IpvsCall::DeleteDest(k, _) => Some(*k),
            _ => None,
        }
    }

    #[test]
    fn a_restart_adopts_the_kernels_table_with_no_change() {
        let k = FakeKernel::default();
        let plane = k.plane();
        let w = world();
        let t0 = Instant::now();
        let o = full(&mut Engine::new(settings(), true), &plane, &w, true, t0);
        assert_eq!((o.failed, o.changes), (0, 3 + 3 * 2 + 3), "{o:?}");
        // Connections live in the kernel meanwhile.
        assert!(k.ipvs.set_conns(
            &key("10.96.0.1"),
            &DestKey {
                addr: "10.244.1.1".parse().unwrap(),
                port: 8080
            },
            5,
            1
        ));
        let table = k.ipvs.snapshot();
        let (bound, sets) = (k.addresses.snapshot(), k.firewall.sets());
        k.ipvs.take_mutations();

        // lbd restarts: a new engine, the same kernel.
        let mut e = Engine::new(settings(), true);
        assert!(e.needs_full(&NodeAddresses::default()));
        let o = full(&mut e, &plane, &w, true, t0 + Duration::from_secs(5));
        assert_eq!((o.failed, o.changes), (0, 0), "{o:?}");
        assert!(o.full && o.all_services);
        assert_eq!(k.ipvs.take_mutations(), vec![]);
        assert_eq!(k.ipvs.snapshot(), table);
        assert_eq!(k.addresses.snapshot(), bound);
        // nft does not know what our table holds: it is replaced once,
        // atomically, with the same elements.
        assert_eq!(k.firewall.sets(), sets);
    }

    #[test]
    fn an_apiserver_outage_changes_nothing() {
        // During an outage the caches keep their last content: the
        // periodic full syncs see the same inputs and list the kernel.
        let k = FakeKernel::default();
        let plane = k.plane();
        let w = world();
        let mut e = Engine::new(settings(), true);
        let t0 = Instant::now();
        assert_eq!(full(&mut e, &plane, &w, true, t0).failed, 0);
        k.ipvs.take_mutations();
        let documents = k.firewall.applied.lock().unwrap().len();
        for i in 1..=4 {
            let o = full(&mut e, &plane, &w, true, t0 + Duration::from_secs(30 * i));
            assert_eq!((o.failed, o.changes), (0, 0), "{o:?}");
            assert!(o.full && !o.nft_rendered);
            // Nothing counted as changed either.
            assert_eq!((o.service_changes, o.endpoint_changes), (0, 0));
        }
        assert_eq!(k.ipvs.take_mutations(), vec![]);
        assert_eq!(k.firewall.applied.lock().unwrap().len(), documents);
    }

    #[test]
    fn only_owned_objects_are_touched() {
        let k = FakeKernel::default();
        // Another tool's virtual server, and one inside exclude_cidrs.
        let foreign = VirtualServer::new("192.0.2.1".parse().unwrap(), 80, Protocol::Tcp, "wlc");
        let rs = RealServer::new("192.0.2.2".parse().unwrap(), 80, 3);
        k.ipvs.insert_foreign(foreign.clone(), vec![rs.clone()]);
        let excluded = VirtualServer::new("10.97.0.5".parse().unwrap(), 80, Protocol::Tcp, "rr");
        k.ipvs.insert_foreign(excluded.clone(), vec![]);
        k.addresses.add("10.97.0.5".parse().unwrap()).unwrap();
        // A stale one of ours (its address is bound on kube-ipvs0).
        let stale = VirtualServer::new("10.96.0.99".parse().unwrap(), 80, Protocol::Tcp, "rr");
        k.ipvs.insert_foreign(stale.clone(), vec![]);
        k.addresses.add("10.96.0.99".parse().unwrap()).unwrap();
        let plane = k.plane();
        let mut e = Engine::new(settings(), true);
        let t0 = Instant::now();
        let mut w = world();
        assert_eq!(full(&mut e, &plane, &w, true, t0).failed, 0);
        // A Service goes, through a changed-only sync.
        w.0.retain(|s| s.metadata.name.as_deref() != Some("c"));
        let changed = [ServiceInputs {
            key: ObjectKey::new("default", "c"),
            service: None,
            slices: vec![w.1[2].clone()],
        }];
        let o = drive(
            &mut e,
            &plane,
            Inputs::Changed(&changed),
            &NodeAddresses::default(),
            false,
            t0,
        );
        // Its virtual server (real servers go with it) and its address.
        assert_eq!((o.failed, o.changes), (0, 2), "{o:?}");
        // Both syncs' calls.
        let mutations = k.ipvs.take_mutations();
        for c in &mutations {
            let t = touched(c).unwrap();
            assert!(t != foreign.key() && t != excluded.key(), "{c:?}");
        }
        assert!(mutations.contains(&IpvsCall::DeleteService(stale.key())));
        let table = k.ipvs.snapshot();
        assert!(table.contains(&(foreign, vec![rs])));
        assert!(table.iter().any(|(v, _)| *v == excluded));
        let bound = k.addresses.snapshot();
        assert!(bound.contains(&"10.97.0.5".parse().unwrap()));
        assert!(!bound.contains(&"10.96.0.99".parse().unwrap()));
        assert!(!bound.contains(&"10.96.0.3".parse().unwrap()));
    }

    #[test]
    fn a_partial_failure_leaves_the_rest_applied_and_the_next_full_sync_converges() {
        let k = FakeKernel::default();
        let plane = k.plane();
        let w = world();
        let mut e = Engine::new(settings(), true);
        let t0 = Instant::now();
        // The first IPVS change (a's virtual server) fails: its two real
        // servers fail behind it, everything else is applied.
        k.ipvs.fail_next(libc::ENOMEM);
        let o = full(&mut e, &plane, &w, true, t0);
        assert_eq!((o.changes, o.failed), (12, 3), "{o:?}");
        assert_eq!(o.ops.get(KernelOp::AddService), (2, 1));
        assert_eq!(o.ops.get(KernelOp::AddDest), (4, 2));
        assert_eq!(o.errors.len(), 3);
        assert!(o.first_error.as_deref().unwrap().contains("add_service"));
        assert!(o.programmed_triggers.is_empty());
        let table = k.ipvs.snapshot();
        assert_eq!(table.len(), 2);
        assert!(table.iter().all(|(_, rs)| rs.len() == 2));
        assert_eq!(k.addresses.snapshot().len(), 3);
        // The view is gone: a changed-only sync is refused...
        assert!(e.needs_full(&NodeAddresses::default()));
        let step = e.start(Inputs::Changed(&[]), &NodeAddresses::default(), false, t0);
        assert!(matches!(step, Step::Done(o) if o.full_required));
        // ... and the full one lists the kernel and adds only what is missing.
        k.ipvs.take_mutations();
        let o = full(&mut e, &plane, &w, false, t0 + Duration::from_secs(1));
        assert_eq!((o.failed, o.changes), (0, 3), "{o:?}");
        assert!(o.full);
        assert_eq!(k.ipvs.take_mutations().len(), 3);
        assert_eq!(k.ipvs.snapshot().len(), 3);
    }

    #[test]
    fn a_changed_only_sync_reads_nothing_from_the_kernel() {
        let k = FakeKernel::default();
        let plane = k.plane();
        let mut w = world();
        let mut e = Engine::new(settings(), true);
        let t0 = Instant::now();
        assert_eq!(full(&mut e, &plane, &w, true, t0).failed, 0);
        // b gains an endpoint.
        w.1[1] = eps("b", "2", &["10.244.1.1", "10.244.1.2", "10.244.1.3"]);
        let changed = [ServiceInputs {
            key: ObjectKey::new("default", "b"),
            service: Some(w.0[1].clone()),
            slices: vec![w.1[1].clone()],
        }];
        let step = e.start(
            Inputs::Changed(&changed),
            &NodeAddresses::default(),
            true,
            t0,
        );
        let want = [Change::AddReal(
            key("10.96.0.2"),
            RealServer::new("10.244.1.3".parse().unwrap(), 8080, 1),
        )];
        assert_eq!(step, Step::Apply(&want));
        let step = e.resume(Reply::Applied(plane.apply(&want)));
        let Step::Firewall(doc) = step else {
            panic!("{step:?}");
        };
        // One hairpin element, not the table.
        assert!(doc.as_str().contains(r#""add":{"element""#), "{doc}");
        let step = e.resume(Reply::Firewall(plane.apply_firewall(&doc)));
        let Step::Done(o) = step else {
            panic!("{step:?}");
        };
        assert_eq!((o.failed, o.changes, o.nft_element_changes), (0, 1, 1));
        assert!(!o.full && !o.all_services);
        assert_eq!(o.endpoint_changes, 1);
    }
}
