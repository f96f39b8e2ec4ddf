//! The sync runner: a bounded-frequency loop (kube-proxy's
//! BoundedFrequencyRunner) that brings the desired table up to date, plans
//! against the kernel and applies the minimal change.
//!
//! Watch events only mark the proxy dirty, naming the Services they
//! touched; a sync between full ones recomputes and plans only those
//! ([`Syncer::sync_changed`]), so one endpoint change costs one Service, not
//! the table. A full sync ([`Syncer::sync`]: every Service checked, every
//! virtual server and address planned) runs first, after a relist, after a
//! failure, when the node's addresses or the settings change, and once per
//! `sync_period`, when it also lists the kernel and so repairs drift made
//! by others ([`Syncer::wants_full`]). A sync runs at most once per
//! `min_sync_period` and at least once per `sync_period`, and sooner while
//! real servers drain or after a failed change. Nothing runs before the
//! Services, EndpointSlices and Node caches have synced once.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::desired::{self, DesiredCache, DesiredParams};
use super::kernel::ipvs::IpvsError;
use super::kernel::nft::{self, NftParams};
use super::kernel::{DataPlane, HostSettings, IpvsDataPlane, KernelError};
use super::kube::{client_from_config, start_watchers, KubeError};
use super::metrics::{OpLabels, ProxyMetrics};
use super::model::ObjectKey;
pub use super::model::ServiceInputs;
use super::model::Timeouts;
use super::plan::{plan, Change, DrainTracker, KernelState, PlanParams};
use super::server::{self, ProxyHealth};
use crate::config::{ProxyConfig, ProxyMode};
use crate::status::ProxyStatus;

/// Annotation the EndpointSlice controller sets to when the change that
/// produced this slice version happened (network programming latency).
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("host setup: {0}")]
    Prepare(#[source] KernelError),
    #[error("ipvs: {0}")]
    Ipvs(#[from] IpvsError),
}

/// Settings of the engine, from [`ProxyConfig`].
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub node_name: String,
    pub scheduler: String,
    pub node_port_addresses: Vec<ipnet::IpNet>,
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

impl EngineSettings {
    /// What the data plane applies to the host.
    pub fn host(&self) -> HostSettings {
        HostSettings {
            strict_arp: self.strict_arp,
            timeouts: self.timeouts,
        }
    }

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
    /// Sync again by then even if nothing changes (drains, retries).
    pub recheck_in: Option<Duration>,
    /// This sync listed the whole kernel.
    pub full: bool,
    /// This sync recomputed and planned every Service (not only the
    /// changed ones).
    pub all_services: bool,
    /// A changed-only sync was refused because a full one is due
    /// ([`Syncer::wants_full`]); nothing was done.
    pub full_required: bool,
    /// The nftables ruleset was rendered (the table changed since the last
    /// good render).
    pub nft_rendered: bool,
    /// nftables set elements added or deleted by a changed-only sync
    /// (instead of a render).
    pub nft_element_changes: usize,
    /// From the start of the sync until the IPVS and kube-ipvs0 changes
    /// were applied (the nftables table follows).
    pub ipvs_applied: Option<Duration>,
}

/// The part of a sync that runs on a blocking thread: desired state, kernel
/// listing, plan, apply. Keeps the state that lives between syncs.
pub struct Syncer {
    settings: EngineSettings,
    backends: IpvsDataPlane,
    metrics: ProxyMetrics,
    drains: DrainTracker,
    desired: DesiredCache,
    /// The kernel as of the end of the last sync (listing + applied
    /// changes); None forces a full listing.
    kernel: Option<KernelState>,
    last_full: Option<std::time::Instant>,
    /// Virtual servers wanted since start (ownership of stale NodePorts).
    remembered: BTreeSet<super::model::ServiceKey>,
    /// Digest of the last ruleset nft accepted (the document itself is tens
    /// of MB at 10k Services: not worth keeping to compare against).
    last_ruleset: Option<u64>,
    /// What our nftables sets hold since the last good document; None
    /// forces a whole-table render.
    nft_sets: Option<nft::SetTracker>,
    /// `DesiredCache::version` the nftables table was last rendered from.
    ruleset_version: Option<u64>,
    /// Service -> its slices (name, resourceVersion, trigger time) last
    /// seen, keyed by Service so a changed-only sync compares just the
    /// changed Services' slices; a short list, not a map: a Service has one
    /// slice or a few.
    seen_slices: HashMap<ObjectKey, Vec<SeenSlice>>,
    seen_services: HashMap<ObjectKey, String>,
    first: bool,
}

impl Syncer {
    pub fn new(settings: EngineSettings, backends: IpvsDataPlane, metrics: ProxyMetrics) -> Self {
        Syncer {
            settings,
            backends,
            metrics,
            drains: DrainTracker::default(),
            desired: DesiredCache::default(),
            kernel: None,
            last_full: None,
            remembered: BTreeSet::new(),
            last_ruleset: None,
            nft_sets: None,
            ruleset_version: None,
            seen_slices: HashMap::new(),
            seen_services: HashMap::new(),
            first: true,
        }
    }

    /// Whether the next sync must be a full one ([`Syncer::sync`]): first
    /// sync, `sync_period` elapsed (drift repair by a kernel listing), the
    /// last sync failed (the kept kernel view is dropped), or the node's
    /// addresses or the settings changed (every NodePort can move).
    pub fn wants_full(&self, node: Option<&Node>, now: std::time::Instant) -> bool {
        let node_addrs = node.map(desired::node_addresses).unwrap_or_default();
        self.kernel.is_none()
            || self.last_full_due(now)
            || !self.desired.matches(&self.desired_params(&node_addrs))
    }

    fn last_full_due(&self, now: std::time::Instant) -> bool {
        self.last_full
            .is_none_or(|t| now.saturating_duration_since(t) >= self.settings.sync_period)
    }

    fn desired_params<'a>(&'a self, node_addrs: &'a [IpAddr]) -> DesiredParams<'a> {
        DesiredParams {
            node_name: &self.settings.node_name,
            node_addresses: node_addrs,
            node_port_addresses: &self.settings.node_port_addresses,
            scheduler: &self.settings.scheduler,
        }
    }

    /// One full sync from complete cache contents: every Service is checked
    /// (unchanged ones keep their memoised part of the table) and every
    /// virtual server and address planned. Lists the kernel when
    /// [`Syncer::wants_full`] says so, else plans against the kept view.
    pub fn sync(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        node: Option<&Node>,
        now: std::time::Instant,
    ) -> SyncOutcome {
        self.run(Inputs::All { services, slices }, node, now)
    }

    /// A sync of the given Services only (the ones whose Service or slices
    /// changed since the last sync): their part of the table is recomputed
    /// and only their virtual servers and addresses (plus any draining
    /// ones) are planned, against the kernel view kept from the last sync.
    /// Refused with `full_required` when [`Syncer::wants_full`] holds.
    pub fn sync_changed(
        &mut self,
        changed: &[ServiceInputs],
        node: Option<&Node>,
        now: std::time::Instant,
    ) -> SyncOutcome {
        if self.wants_full(node, now) {
            return SyncOutcome {
                full_required: true,
                recheck_in: Some(Duration::ZERO),
                ..Default::default()
            };
        }
        self.run(Inputs::Changed(changed), node, now)
    }

    fn run(
        &mut self,
        inputs: Inputs<'_>,
        node: Option<&Node>,
        now: std::time::Instant,
    ) -> SyncOutcome {
        let started = std::time::Instant::now();
        let node_addrs = node.map(desired::node_addresses).unwrap_or_default();
        let dparams = DesiredParams {
            node_name: &self.settings.node_name,
            node_addresses: &node_addrs,
            node_port_addresses: &self.settings.node_port_addresses,
            scheduler: &self.settings.scheduler,
        };
        let np_ips = desired::node_port_ips(&dparams);
        let mut scope = match inputs {
            Inputs::All { services, slices } => {
                self.desired.compute(services, slices, &dparams);
                None
            }
            Inputs::Changed(changed) => match self.desired.compute_changed(changed, &dparams) {
                Some(s) => Some(s),
                // sync_changed checked the parameters; should they differ
                // anyway, nothing partial is programmed.
                None => {
                    return SyncOutcome {
                        full_required: true,
                        recheck_in: Some(Duration::ZERO),
                        ..Default::default()
                    }
                }
            },
        };
        let want = self.desired.table();
        let mut out = SyncOutcome {
            services: want.services,
            virtual_servers: want.virtual_servers.len(),
            real_servers: want.real_server_count(),
            all_services: scope.is_none(),
            ..Default::default()
        };
        let metrics = &self.metrics;
        let fail = |out: &mut SyncOutcome, op: &'static str, e: String| {
            out.failed += 1;
            metrics.kernel_errors.get_or_create(&OpLabels { op }).inc();
            tracing::warn!(op, error = %e, "proxy change failed");
            out.first_error.get_or_insert(e);
        };

        // A full listing happens once per sync_period (drift repair), on
        // the first sync and after any failure; the syncs in between plan
        // against the view kept from the last sync, refreshing only virtual
        // servers with draining real servers, whose connection counters
        // decide the drain.
        let list = self.kernel.is_none() || (scope.is_none() && self.last_full_due(now));
        let mut kernel = if list {
            // A failed listing programs nothing (no partial view).
            let listing = match self.backends.list() {
                Ok(l) => l,
                Err(e) => {
                    let op = match e {
                        KernelError::Addresses(_) => "list_addresses",
                        _ => "list_services",
                    };
                    fail(&mut out, op, e.to_string());
                    out.recheck_in = Some(self.settings.min_sync_period);
                    return out;
                }
            };
            if scope.is_none() {
                self.last_full = Some(now);
            }
            listing
        } else {
            let mut k = self.kernel.take().unwrap_or_default();
            for key in self.drains.services() {
                match self.backends.ipvs.list_dests(&key) {
                    Ok(rs) => {
                        if let Some(v) = k.virtual_servers.get_mut(&key) {
                            v.real_servers = rs.into_iter().map(|r| (r.key(), r)).collect();
                        }
                    }
                    Err(e) if e.is_not_found() => {
                        k.virtual_servers.remove(&key);
                    }
                    Err(e) => {
                        fail(&mut out, "list_dests", e.to_string());
                        out.recheck_in = Some(self.settings.min_sync_period);
                        return out;
                    }
                }
            }
            k
        };
        out.full = list;
        // Draining real servers are decided at every sync, whatever changed.
        if let Some(s) = scope.as_mut() {
            s.virtual_servers.extend(self.drains.services());
        }
        let p = plan(
            want,
            &kernel,
            &mut self.drains,
            &PlanParams {
                exclude_cidrs: &self.settings.exclude_cidrs,
                drain_timeout: self.settings.drain_timeout,
                node_port_ips: &np_ips,
                remembered: Some(&self.remembered),
                scope: scope.as_ref(),
            },
            now,
        );
        match &scope {
            None => self.remembered.extend(want.virtual_servers.keys().copied()),
            Some(s) => self.remembered.extend(
                s.virtual_servers
                    .iter()
                    .filter(|k| want.virtual_servers.contains_key(*k))
                    .copied(),
            ),
        }
        out.changes = p.changes.len();
        out.draining = p.draining;
        let results = self.backends.apply(&p.changes);
        for (c, r) in p.changes.iter().zip(results) {
            let op = c.op().as_str();
            match r.map_err(|e| e.to_string()) {
                Ok(()) => {
                    kernel.apply(c);
                    if let Change::DeleteVirtual(k) = c {
                        self.remembered.remove(k);
                    }
                    metrics.kernel_changes.get_or_create(&OpLabels { op }).inc();
                }
                Err(e) => fail(&mut out, op, e),
            }
        }

        out.ipvs_applied = Some(started.elapsed());
        // After a failure the view is unreliable: list again next time.
        self.kernel = (out.failed == 0).then_some(kernel);

        // nftables: a changed-only sync changes only the sets' elements of
        // its scope (the rules depend on the settings alone); anything else,
        // or a change the tracker leaves to a replace, renders the whole
        // table (O(table)), and only when the table changed since the last
        // good render, so syncs that change nothing in it skip it.
        let table_version = self.desired.version();
        let fw = self
            .backends
            .firewall
            .clone()
            .filter(|_| self.ruleset_version != Some(table_version));
        if let Some(fw) = fw {
            let elements = match (&scope, self.nft_sets.as_mut()) {
                (Some(s), Some(t)) => t.update(want, s),
                _ => None,
            };
            match elements {
                Some(ch) if ch.is_empty() => self.ruleset_version = Some(table_version),
                Some(ch) => {
                    out.nft_element_changes = ch.len();
                    match fw.replace(&nft::render_element_changes(&ch)) {
                        Ok(()) => {
                            metrics.nft_applies.inc();
                            self.ruleset_version = Some(table_version);
                            // No longer what the kernel holds: the next
                            // render replaces the table whatever it says.
                            self.last_ruleset = None;
                        }
                        Err(e) => {
                            metrics.nft_errors.inc();
                            self.nft_sets = None;
                            self.last_ruleset = None;
                            self.ruleset_version = None;
                            fail(&mut out, "nft_elements", e.to_string());
                        }
                    }
                }
                None => {
                    out.nft_rendered = true;
                    let ruleset = nft::render(
                        want,
                        &NftParams {
                            cluster_cidrs: &self.settings.cluster_cidrs,
                            masquerade_all: self.settings.masquerade_all,
                        },
                    );
                    let digest = nft::digest(&ruleset);
                    let applied = if self.last_ruleset == Some(digest) {
                        Ok(())
                    } else {
                        fw.replace(&ruleset).inspect(|_| {
                            metrics.nft_applies.inc();
                        })
                    };
                    match applied {
                        Ok(()) => {
                            self.last_ruleset = Some(digest);
                            self.ruleset_version = Some(table_version);
                            self.nft_sets = Some(nft::SetTracker::of(want));
                        }
                        Err(e) => {
                            metrics.nft_errors.inc();
                            self.last_ruleset = None;
                            self.ruleset_version = None;
                            self.nft_sets = None;
                            fail(&mut out, "nft_replace", e.to_string());
                        }
                    }
                }
            }
        }

        let ok = out.failed == 0;
        match inputs {
            Inputs::All { services, slices } => self.count_all(services, slices, ok),
            Inputs::Changed(changed) => self.count_changed(changed, ok),
        }

        // Drains are decided from counters only a later listing shows.
        let mut recheck =
            (p.draining > 0).then_some(self.settings.min_sync_period.max(Duration::from_secs(1)));
        if out.failed > 0 {
            recheck = Some(self.settings.min_sync_period);
        }
        if let Some(d) = p.next_deadline {
            let until = d.saturating_duration_since(now);
            recheck = Some(recheck.map_or(until, |r| r.min(until)));
        }
        out.recheck_in = recheck;
        self.metrics.virtual_servers.set(out.virtual_servers as i64);
        self.metrics.real_servers.set(out.real_servers as i64);
        self.metrics.services.set(out.services as i64);
        self.metrics.draining_real_servers.set(out.draining as i64);
        out
    }

    /// kube-proxy's change counters and network programming latency, from
    /// resourceVersions and trigger times seen since the previous sync,
    /// over every object (full sync).
    fn count_all(&mut self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], ok: bool) {
        let now = SystemTime::now();
        let mut svc_changes = 0u64;
        let mut seen = HashMap::with_capacity(services.len());
        for s in services {
            let key = ObjectKey::of(&s.metadata);
            let rv = s.metadata.resource_version.clone().unwrap_or_default();
            if self.seen_services.get(&key) != Some(&rv) {
                svc_changes += 1;
            }
            seen.insert(key, rv);
        }
        svc_changes += self
            .seen_services
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .count() as u64;
        self.seen_services = seen;

        // Slices no Service name points at are not proxied, nor counted.
        let mut groups: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if let Some(k) = ObjectKey::service_of(s) {
                groups.entry(k).or_default().push(s);
            }
        }
        let gone: Vec<ObjectKey> = self
            .seen_slices
            .keys()
            .filter(|k| !groups.contains_key(*k))
            .cloned()
            .collect();
        let mut ep_changes = 0u64;
        for k in gone {
            ep_changes += self.count_slices(&k, &[], ok, now);
        }
        for (k, g) in groups {
            ep_changes += self.count_slices(&k, &g, ok, now);
        }
        self.record_changes(svc_changes, ep_changes);
    }

    /// The same counters over the changed Services only: every other
    /// object is unchanged by construction of the dirty set.
    fn count_changed(&mut self, changed: &[ServiceInputs], ok: bool) {
        let now = SystemTime::now();
        let (mut svc_changes, mut ep_changes) = (0u64, 0u64);
        for c in changed {
            let prev = match &c.service {
                Some(s) => {
                    let rv = s.metadata.resource_version.clone().unwrap_or_default();
                    let same = self.seen_services.get(&c.key) == Some(&rv);
                    if !same {
                        self.seen_services.insert(c.key.clone(), rv);
                    }
                    !same
                }
                None => self.seen_services.remove(&c.key).is_some(),
            };
            svc_changes += u64::from(prev);
            let slices: Vec<&EndpointSlice> = c.slices.iter().map(|s| &**s).collect();
            ep_changes += self.count_slices(&c.key, &slices, ok, now);
        }
        self.record_changes(svc_changes, ep_changes);
    }

    /// Counts one Service's slices that are new, changed or gone since last
    /// seen, and observes the programming latency of the changed ones.
    fn count_slices(
        &mut self,
        svc: &ObjectKey,
        slices: &[&EndpointSlice],
        ok: bool,
        now: SystemTime,
    ) -> u64 {
        let prev = self.seen_slices.remove(svc).unwrap_or_default();
        let mut next = Vec::with_capacity(slices.len());
        let mut changes = 0u64;
        for s in slices {
            let name = s.metadata.name.clone().unwrap_or_default();
            let rv = s.metadata.resource_version.clone().unwrap_or_default();
            let trig = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                .cloned();
            let p = prev.iter().find(|p| p.name == name);
            if p.map(|p| &p.rv) != Some(&rv) {
                changes += 1;
                // Only changes that happened while we ran: after a restart
                // the old trigger times would measure our downtime.
                if !self.first && ok && p.map(|p| &p.trigger) != Some(&trig) {
                    if let Some(lat) = trig.as_deref().and_then(|t| latency_since(t, now)) {
                        self.metrics.network_programming.observe(lat);
                    }
                }
            }
            next.push(SeenSlice {
                name,
                rv,
                trigger: trig,
            });
        }
        changes += prev
            .iter()
            .filter(|p| !next.iter().any(|n| n.name == p.name))
            .count() as u64;
        if !next.is_empty() {
            self.seen_slices.insert(svc.clone(), next);
        }
        changes
    }

    fn record_changes(&mut self, svc_changes: u64, ep_changes: u64) {
        if !self.first {
            self.metrics.service_changes.inc_by(svc_changes);
            self.metrics.endpoint_changes.inc_by(ep_changes);
        }
        self.first = false;
    }
}

/// One slice of a Service as last counted.
#[derive(Debug)]
struct SeenSlice {
    name: String,
    rv: String,
    trigger: Option<String>,
}

/// What a sync recomputes from.
enum Inputs<'a> {
    All {
        services: &'a [Arc<Service>],
        slices: &'a [Arc<EndpointSlice>],
    },
    Changed(&'a [ServiceInputs]),
}

fn latency_since(rfc3339: &str, now: SystemTime) -> Option<f64> {
    let ts: k8s_openapi::jiff::Timestamp = rfc3339.parse().ok()?;
    let then = SystemTime::from(ts);
    now.duration_since(then).ok().map(|d| d.as_secs_f64())
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Last sync facts kept by the runner for the status snapshot.
#[derive(Debug, Clone, Default)]
struct LastSync {
    at: Option<Instant>,
    duration: Option<Duration>,
    outcome: SyncOutcome,
}

fn publish(status: &ArcSwap<Option<ProxyStatus>>, ready: bool, last: &LastSync) {
    let s = ProxyStatus {
        mode: "ipvs".into(),
        synced: ready && last.at.is_some() && last.outcome.failed == 0,
        services: last.outcome.services as u64,
        real_servers: last.outcome.real_servers as u64,
        last_sync_seconds_ago: last.at.map(|t| t.elapsed().as_secs()),
        last_sync_duration_ms: last.duration.map(|d| d.as_secs_f64() * 1000.0),
        last_error: last.outcome.first_error.clone(),
    };
    let cur = status.load();
    if cur.as_ref().as_ref() != Some(&s) {
        status.store(Arc::new(Some(s)));
    }
}

/// Everything the engine needs besides the Kubernetes client.
pub struct Engine {
    pub settings: EngineSettings,
    pub backends: IpvsDataPlane,
    pub status: Arc<ArcSwap<Option<ProxyStatus>>>,
    pub metrics: ProxyMetrics,
    pub health: ProxyHealth,
}

impl Engine {
    /// Runs watchers and the sync loop until `shutdown`. The kernel is left
    /// as it is on exit (a restart adopts it).
    pub async fn run(self, client: Client, shutdown: CancellationToken) -> Result<(), ProxyError> {
        let Engine {
            settings,
            backends,
            status,
            metrics,
            health,
        } = self;
        publish(&status, false, &LastSync::default());
        {
            let b = backends.clone();
            let host = settings.host();
            tokio::task::spawn_blocking(move || b.prepare(&host))
                .await
                .map_err(|e| ProxyError::Prepare(KernelError::Unexpected(e.to_string())))?
                .map_err(ProxyError::Prepare)?;
        }

        let dirty = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let watched = start_watchers(
            client,
            &settings.node_name,
            dirty.clone(),
            shutdown.child_token(),
            &mut tasks,
        );
        health.queued(SystemTime::now());
        metrics
            .last_queued_timestamp
            .set(unix_seconds(SystemTime::now()));

        // Nothing is programmed on partial data.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = watched.caches.wait_until_ready() => if r.is_err() { return Ok(()) },
        }
        tracing::info!("proxy caches synced");

        let min = settings.min_sync_period;
        let max = settings.sync_period;
        let mut syncer = Some(Syncer::new(settings, backends, metrics.clone()));
        let mut last = LastSync::default();
        let mut pending = true;
        let mut recheck: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = Instant::now();
            let allowed = last.at.map_or(now, |t| t + min);
            let deadline = if pending {
                allowed
            } else {
                let forced = last.at.map_or(now, |t| t + max);
                recheck.map_or(forced, |r| r.min(forced)).max(allowed)
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = dirty.notified(), if !pending => {
                    pending = true;
                    health.queued(SystemTime::now());
                    metrics.last_queued_timestamp.set(unix_seconds(SystemTime::now()));
                    continue;
                }
                _ = tick.tick() => {
                    publish(&status, true, &last);
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let started = Instant::now();
            let Some(mut s) = syncer.take() else { break };
            let node = watched.caches.node.state().into_iter().next();
            let std_now = started.into_std();
            // Only the changed Services are read and synced, unless
            // everything is due (relist, period, failure, node change).
            let changed = watched.tracker().take();
            let inputs = if changed.all || s.wants_full(node.as_deref(), std_now) {
                None
            } else {
                Some(watched.inputs(&changed.services))
            };
            let (services, slices) = match inputs {
                Some(_) => (Vec::new(), Vec::new()),
                None => (
                    watched.caches.services.state(),
                    watched.caches.slices.state(),
                ),
            };
            let joined = tokio::task::spawn_blocking(move || {
                let o = match inputs {
                    Some(changed) => s.sync_changed(&changed, node.as_deref(), std_now),
                    None => s.sync(&services, &slices, node.as_deref(), std_now),
                };
                (s, o)
            })
            .await;
            let (s, outcome) = match joined {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "proxy sync task failed");
                    break;
                }
            };
            syncer = Some(s);
            if outcome.full_required {
                // Nothing was done (the checks above make this rare): go
                // again at once with everything.
                watched.tracker().mark_all();
                pending = true;
                continue;
            }
            let took = started.elapsed();
            pending = false;
            recheck = outcome.recheck_in.map(|d| Instant::now() + d);
            metrics.syncs.inc();
            metrics.sync_duration.observe(took.as_secs_f64());
            if outcome.failed == 0 {
                metrics
                    .last_sync_timestamp
                    .set(unix_seconds(SystemTime::now()));
                health.updated(SystemTime::now());
                metrics.synced.set(1);
            } else {
                metrics.sync_errors.inc();
            }
            tracing::debug!(
                changes = outcome.changes,
                failed = outcome.failed,
                services = outcome.services,
                real_servers = outcome.real_servers,
                ms = took.as_secs_f64() * 1000.0,
                "proxy sync"
            );
            last = LastSync {
                at: Some(started),
                duration: Some(took),
                outcome,
            };
            publish(&status, true, &last);
        }
        tasks.shutdown().await;
        Ok(())
    }
}

/// The entry point for `app.rs`: builds the client from `cfg`, starts the
/// healthz and metrics servers when configured, and runs until `shutdown`.
/// `metrics` is registered by the caller in lbd's admin registry if wanted
/// (`ProxyMetrics::register_lbd`); the metrics_bind server gets its own
/// registry with kube-proxy's names and lbd's.
pub async fn run_proxy(
    cfg: ProxyConfig,
    node_name: String,
    backends: IpvsDataPlane,
    status: Arc<ArcSwap<Option<ProxyStatus>>>,
    metrics: ProxyMetrics,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    if cfg.mode != ProxyMode::Ipvs {
        // nftables mode is not implemented by this engine; none: nothing.
        return Ok(());
    }
    // Our own token: ending the engine stops our servers, not the daemon.
    let shutdown = shutdown.child_token();
    let settings = EngineSettings::from_config(&cfg, &node_name);
    let health = ProxyHealth::new(settings.sync_period * 2);
    let mut servers = JoinSet::new();
    if let Some(addr) = cfg.healthz_bind {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                what: "healthz_bind",
                addr,
                source,
            })?;
        servers.spawn(server::serve_healthz(
            l,
            health.clone(),
            shutdown.child_token(),
        ));
    }
    if let Some(addr) = cfg.metrics_bind {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                what: "metrics_bind",
                addr,
                source,
            })?;
        let mut reg = prometheus_client::registry::Registry::default();
        metrics.register_kube_proxy(&mut reg);
        metrics.register_lbd(&mut reg);
        servers.spawn(server::serve_metrics(
            l,
            Arc::new(reg),
            health.clone(),
            shutdown.child_token(),
        ));
    }
    let client = client_from_config(&cfg).await?;
    let engine = Engine {
        settings,
        backends,
        status,
        metrics,
        health,
    };
    let r = engine.run(client, shutdown.clone()).await;
    shutdown.cancel();
    servers.shutdown().await;
    r
}
