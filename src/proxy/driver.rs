//! The I/O edge around the pure engine and schedule.
//!
//! [`Syncer`] runs one sync on the calling (blocking) thread: it carries
//! the engine's steps to the data plane and the answers back, tells the
//! schedule, and records the metrics. [`Runner`] is the async loop: the
//! watchers, the schedule's deadlines, syncs on a blocking thread, the
//! status snapshot, and settings from reloads.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::Client;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::desired::{node_zone, NodeAddresses};
use super::engine::{Engine, EngineSettings, Inputs, Reply, Step, SyncOutcome};
use super::health_check::{ListenAddresses, ServiceHealthServer};
use super::kernel::{DataPlane, HostSettings, KernelError, KernelOp};
use super::kube::{start_watchers, Watched};
use super::metrics::{OpLabels, ProxyMetrics};
use super::model::{FlowPort, ObjectKey, ServiceInputs};
use super::objects::EndpointSlice;
use super::report::{LastSync, ProxyReporter};
use super::schedule::{Decision, Event, Schedule, SyncKind, SyncReport};
use super::server::ProxyHealth;
use super::stale_flows::stale_flows;
use super::ProxyError;
use crate::status::ProxyDataPlane;

/// The proxy's state between syncs: what to program (the engine), when
/// (the schedule) and where (the data plane).
pub struct Syncer {
    engine: Engine,
    schedule: Schedule,
    plane: Box<dyn DataPlane>,
    metrics: ProxyMetrics,
    /// Host settings a reload changed, applied before the next sync (and
    /// again after each until they succeed).
    host: Option<HostSettings>,
    /// The host's addresses (kube-ipvs0's aside) as of the last full
    /// sync, which lists them (None: the data plane does not know them).
    /// Changed-only syncs use these: listing every address costs O(bound
    /// service addresses), the full sync's price, not an endpoint change's.
    host_addresses: Option<Vec<IpAddr>>,
    /// The UDP/SCTP ports as of the last complete conntrack cleanup; the
    /// cleanup runs again when they change, and at every full sync.
    flows_cleaned: Option<BTreeMap<ObjectKey, Arc<Vec<FlowPort>>>>,
}

impl Syncer {
    pub fn new(
        settings: EngineSettings,
        plane: impl DataPlane + 'static,
        metrics: ProxyMetrics,
    ) -> Self {
        Syncer {
            schedule: Schedule::new(settings.schedule()),
            engine: Engine::new(settings, plane.has_firewall()),
            plane: Box::new(plane),
            metrics,
            host: None,
            host_addresses: None,
            flows_cleaned: None,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Feeds the schedule (watch events, readiness).
    pub fn on(&mut self, now: Instant, event: Event) {
        self.schedule.on(now, event);
    }

    /// New settings (a reload): the next sync is a full one.
    pub fn set_settings(&mut self, settings: EngineSettings, now: Instant) {
        if settings == *self.engine.settings() {
            return;
        }
        if settings.host() != self.engine.settings().host() {
            self.host = Some(settings.host());
        }
        self.schedule.set_settings(settings.schedule());
        self.schedule.on(now, Event::FullRequested);
        self.engine.set_settings(settings);
    }

    /// Whether the next sync must be a full one ([`Syncer::sync`]): the
    /// schedule's reasons (first sync, `sync_period` elapsed, relist, new
    /// settings) or the engine's (no kept view of the kernel after a
    /// failure, the node's addresses changed).
    pub fn wants_full(&self, node: Option<&Node>, now: Instant) -> bool {
        self.schedule.full_due(now) || self.engine.needs_full(&self.node_addresses(node))
    }

    /// Where the health-check node ports listen: everywhere with
    /// `nodePortAddresses` unset (kube-proxy's MatchAll), else on the
    /// selected NodePort addresses.
    pub fn health_check_addresses(&self, node: Option<&Node>) -> ListenAddresses {
        let settings = self.engine.settings();
        if settings.node_port_addresses.is_empty() && !settings.node_port_primary {
            return None;
        }
        let addrs = self.node_addresses(node);
        let params = settings.desired_params(&addrs, None);
        Some(super::desired::node_port_ips(&params))
    }

    /// The node addresses the next sync plans with.
    fn node_addresses(&self, node: Option<&Node>) -> NodeAddresses {
        NodeAddresses::new(self.host_addresses.as_deref(), node)
    }

    /// Lists the host's addresses again (each full sync: a VIP that came or
    /// went, a new interface address); a failed listing keeps the last.
    fn refresh_host_addresses(&mut self) {
        match self.plane.host_addresses() {
            Ok(a) => self.host_addresses = a,
            Err(e) => {
                tracing::warn!(error = %e, "listing the host's addresses failed; NodePorts keep the last ones")
            }
        }
    }

    /// One full sync from complete cache contents: every Service is checked
    /// (unchanged ones keep their memoised part of the table) and every
    /// virtual server and address planned. Lists the kernel when the
    /// schedule says a listing is due, else plans against the kept view.
    pub fn sync(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        node: Option<&Node>,
        now: Instant,
    ) -> SyncOutcome {
        self.engine.set_node_zone(node.and_then(node_zone));
        self.refresh_host_addresses();
        self.run(Inputs::All { services, slices }, node, now)
    }

    /// A sync of the given Services only (the ones whose Service or slices
    /// changed since the last sync), against the kernel view kept from the
    /// last sync. Refused with `full_required` when
    /// [`Syncer::wants_full`] holds.
    pub fn sync_changed(
        &mut self,
        changed: &[ServiceInputs],
        node: Option<&Node>,
        now: Instant,
    ) -> SyncOutcome {
        self.engine.set_node_zone(node.and_then(node_zone));
        if self.wants_full(node, now) {
            self.schedule.on(now, Event::FullRequested);
            return SyncOutcome::full_required();
        }
        self.run(Inputs::Changed(changed), node, now)
    }

    fn run(&mut self, inputs: Inputs<'_>, node: Option<&Node>, now: Instant) -> SyncOutcome {
        let started = Instant::now();
        let kind = match inputs {
            Inputs::All { .. } => SyncKind::Full,
            Inputs::Changed(_) => SyncKind::Changed,
        };
        let host = self.prepare_host();
        let list = self.schedule.listing_due(now);
        let node_addresses = self.node_addresses(node);
        let mut out = drive(
            &mut self.engine,
            &*self.plane,
            inputs,
            &node_addresses,
            list,
            now,
        );
        if let Err(e) = host {
            out.fail(KernelOp::Prepare, &e);
        }
        if out.full_required {
            self.schedule.on(now, Event::FullRequested);
            return out;
        }
        self.clean_flows(kind == SyncKind::Full, &mut out);
        let took = started.elapsed();
        self.schedule.on(
            now + took,
            Event::Synced(SyncReport {
                started: now,
                kind,
                failed: out.failed,
                listed: out.full,
                recheck_in: out.recheck_in,
            }),
        );
        self.record(&out, took);
        if kind == SyncKind::Full {
            // A full sync's transient plan and listings would otherwise
            // stay resident until the next one.
            crate::sys::memory::release_free_heap();
        }
        out
    }

    /// kube-proxy's conntrack cleanup after the kernel is programmed: UDP
    /// and SCTP flows still pointing at endpoints that are gone are
    /// deleted, so their clients reach a live one at the next packet.
    /// Failures are counted and logged but do not fail the sync (the
    /// table is right; the flows are retried next time), as kube-proxy.
    fn clean_flows(&mut self, full: bool, out: &mut SyncOutcome) {
        let ports = &self.engine.table().flow_ports;
        if !full && self.flows_cleaned.as_ref() == Some(ports) {
            return;
        }
        if ports.is_empty() {
            self.flows_cleaned = Some(BTreeMap::new());
            return;
        }
        let flows = match self.plane.list_flows() {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                out.ops.failed(KernelOp::ListFlows);
                out.errors.push((KernelOp::ListFlows, e.to_string()));
                return;
            }
        };
        out.ops.ok(KernelOp::ListFlows);
        let stale = stale_flows(&flows, ports);
        let mut complete = true;
        for (f, r) in stale.iter().zip(self.plane.delete_flows(&stale)) {
            match r {
                Ok(()) => {
                    tracing::debug!(flow = %f, "stale conntrack entry deleted");
                    out.ops.ok(KernelOp::DeleteFlow);
                }
                Err(e) => {
                    complete = false;
                    out.ops.failed(KernelOp::DeleteFlow);
                    out.errors.push((KernelOp::DeleteFlow, e.to_string()));
                }
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                deleted = stale.len(),
                of = flows.len(),
                "stale UDP/SCTP conntrack entries"
            );
        }
        self.flows_cleaned = complete.then(|| ports.clone());
    }

    /// Applies host settings a reload changed; kept for the next sync if
    /// they fail.
    fn prepare_host(&mut self) -> Result<(), KernelError> {
        let Some(host) = self.host.take() else {
            return Ok(());
        };
        let r = self.plane.prepare(&host);
        if r.is_err() {
            self.host = Some(host);
        }
        r
    }

    /// Metrics and logs of one sync.
    fn record(&self, out: &SyncOutcome, took: Duration) {
        let m = &self.metrics;
        for op in out.ops.kinds() {
            let (ok, failed) = out.ops.get(op);
            if op.is_nft() {
                m.nft_applies.inc_by(ok);
                m.nft_errors.inc_by(failed);
            } else if op.is_change() {
                m.kernel_changes.get_or_create(&OpLabels { op }).inc_by(ok);
            }
            m.kernel_errors
                .get_or_create(&OpLabels { op })
                .inc_by(failed);
        }
        for (op, e) in &out.errors {
            tracing::warn!(op = op.as_str(), error = %e, "proxy change failed");
        }
        m.service_changes.inc_by(out.service_changes);
        m.endpoint_changes.inc_by(out.endpoint_changes);
        let wall = SystemTime::now();
        for t in &out.programmed_triggers {
            if let Ok(lat) = wall.duration_since(*t) {
                m.network_programming.observe(lat.as_secs_f64());
            }
        }
        m.virtual_servers.set(out.virtual_servers as i64);
        m.real_servers.set(out.real_servers as i64);
        m.services.set(out.services as i64);
        m.draining_real_servers.set(out.draining as i64);
        m.syncs.inc();
        m.sync_duration.observe(took.as_secs_f64());
        if out.failed == 0 {
            m.last_sync_timestamp.set(unix_seconds(wall));
            m.synced.set(1);
        } else {
            m.sync_errors.inc();
        }
    }
}

/// One sync: the engine's steps carried to the data plane until it is done.
pub(crate) fn drive(
    engine: &mut Engine,
    plane: &dyn DataPlane,
    inputs: Inputs<'_>,
    node: &NodeAddresses,
    list: bool,
    now: Instant,
) -> SyncOutcome {
    let started = Instant::now();
    let mut applied = None;
    let mut step = engine.start(inputs, node, list, now);
    let mut out = loop {
        let reply = match step {
            Step::ListAll => Reply::Listed(plane.list()),
            Step::ListRealServers(keys) => Reply::RealServers(plane.list_real_servers(&keys)),
            Step::Apply(changes) => {
                let r = plane.apply(changes);
                applied = Some(started.elapsed());
                Reply::Applied(r)
            }
            Step::Firewall(doc) => {
                applied.get_or_insert(started.elapsed());
                Reply::Firewall(plane.apply_firewall(&doc))
            }
            Step::Done(out) => break *out,
        };
        step = engine.resume(reply);
    };
    out.ipvs_applied = applied.or_else(|| (!out.full_required).then(|| started.elapsed()));
    out
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A change is waiting to be synced.
fn queued(health: &ProxyHealth, metrics: &ProxyMetrics) {
    let now = SystemTime::now();
    health.queued(now);
    metrics.last_queued_timestamp.set(unix_seconds(now));
}

/// Everything the proxy's loop needs besides the Kubernetes client.
pub struct Runner {
    pub settings: EngineSettings,
    pub plane: Box<dyn DataPlane>,
    pub reporter: ProxyReporter,
    pub metrics: ProxyMetrics,
    pub health: ProxyHealth,
}

impl Runner {
    /// Runs watchers and the sync loop until `shutdown`. The kernel is left
    /// as it is on exit (a restart adopts it).
    pub async fn run(self, client: Client, shutdown: CancellationToken) -> Result<(), ProxyError> {
        let (_keep, updates) = mpsc::unbounded_channel();
        self.run_with_updates(client, updates, shutdown).await
    }

    /// [`Runner::run`], taking new settings (reloads) from `updates`.
    pub async fn run_with_updates(
        self,
        client: Client,
        mut updates: mpsc::UnboundedReceiver<EngineSettings>,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        let Runner {
            settings,
            plane,
            reporter,
            metrics,
            health,
        } = self;
        reporter.starting(ProxyDataPlane::Ipvs);
        let host = settings.host();
        let (plane, prepared) = tokio::task::spawn_blocking(move || {
            let r = plane.prepare(&host);
            (plane, r)
        })
        .await
        .map_err(|e| ProxyError::Task(e.to_string()))?;
        prepared.map_err(ProxyError::Prepare)?;

        let dirty = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let watched = start_watchers(
            client,
            &settings.node_name,
            dirty.clone(),
            shutdown.child_token(),
            &mut tasks,
        );
        let mut lp = SyncLoop {
            syncer: Some(Syncer::new(settings, plane, metrics.clone())),
            watched,
            dirty,
            reporter,
            metrics,
            health_checks: ServiceHealthServer::new(health.clone()),
            health,
        };
        queued(&lp.health, &lp.metrics);
        let r = lp.run(&mut updates, &shutdown).await;
        lp.health_checks.close_all();
        tasks.shutdown().await;
        r
    }
}

/// The loop's state: the syncer is away on a blocking thread during a sync.
struct SyncLoop {
    syncer: Option<Syncer>,
    watched: Watched,
    dirty: Arc<Notify>,
    reporter: ProxyReporter,
    metrics: ProxyMetrics,
    health: ProxyHealth,
    health_checks: ServiceHealthServer,
}

impl SyncLoop {
    /// Until `shutdown` (Ok) or until the loop cannot go on.
    async fn run(
        &mut self,
        updates: &mut mpsc::UnboundedReceiver<EngineSettings>,
        shutdown: &CancellationToken,
    ) -> Result<(), ProxyError> {
        loop {
            let Some(s) = self.syncer.as_ref() else {
                return Err(ProxyError::Task("the syncer was lost".into()));
            };
            match s.schedule().decide(Instant::now()) {
                Decision::Sync(kind) => self.sync(kind).await?,
                Decision::Wait(until) => {
                    if !self.wait(until, updates, shutdown).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits for the next event or deadline; false on shutdown.
    async fn wait(
        &mut self,
        until: Option<Instant>,
        updates: &mut mpsc::UnboundedReceiver<EngineSettings>,
        shutdown: &CancellationToken,
    ) -> Result<bool, ProxyError> {
        let Some(s) = self.syncer.as_mut() else {
            return Err(ProxyError::Task("the syncer was lost".into()));
        };
        let (ready, pending) = (s.schedule().ready(), s.schedule().pending());
        let sleep = async {
            match until {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            // Nothing is programmed on partial data.
            r = self.watched.caches.wait_until_ready(), if !ready => {
                if r.is_err() {
                    return Err(ProxyError::Task("the watch stores closed".into()));
                }
                tracing::info!("proxy caches synced");
                s.on(Instant::now(), Event::CachesReady);
            }
            _ = self.dirty.notified(), if !pending => {
                s.on(Instant::now(), Event::Changed);
                queued(&self.health, &self.metrics);
            }
            Some(settings) = updates.recv() => {
                tracing::info!("proxy settings changed: a full sync follows");
                s.set_settings(settings, Instant::now());
            }
            _ = sleep => {}
        }
        Ok(true)
    }

    /// One sync on a blocking thread.
    async fn sync(&mut self, kind: SyncKind) -> Result<(), ProxyError> {
        let Some(s) = self.syncer.take() else {
            return Err(ProxyError::Task("the syncer was lost".into()));
        };
        let started = Instant::now();
        let node = self.watched.caches.node.state().into_iter().next();
        self.health.set_node(node.as_deref());
        // Only the changed Services are read and synced, unless everything
        // is due (relist, period, failure, node change).
        let changed = self.watched.tracker().take();
        let full = kind == SyncKind::Full || changed.all || s.wants_full(node.as_deref(), started);
        let inputs = (!full).then(|| self.watched.inputs(&changed.services));
        let (services, slices) = match inputs {
            Some(_) => (Vec::new(), Vec::new()),
            None => (
                self.watched.caches.services.state(),
                self.watched.caches.slices.state(),
            ),
        };
        let joined = tokio::task::spawn_blocking(move || {
            let mut s = s;
            let o = match inputs {
                Some(changed) => s.sync_changed(&changed, node.as_deref(), started),
                None => s.sync(&services, &slices, node.as_deref(), started),
            };
            (s, o)
        })
        .await;
        let (s, outcome) = joined.map_err(|e| ProxyError::Task(format!("sync: {e}")))?;
        if !outcome.full_required {
            let node = self.watched.caches.node.state().into_iter().next();
            let at = s.health_check_addresses(node.as_deref());
            self.health_checks
                .sync(&s.engine().table().health_checks, &at);
        }
        self.syncer = Some(s);
        if outcome.full_required {
            // Nothing was done (the checks above make this rare): go again
            // at once with everything.
            self.watched.tracker().mark_all();
            return Ok(());
        }
        let took = started.elapsed();
        if outcome.failed == 0 {
            self.health.updated(SystemTime::now());
        }
        tracing::debug!(
            changes = outcome.changes,
            failed = outcome.failed,
            services = outcome.services,
            real_servers = outcome.real_servers,
            ms = took.as_secs_f64() * 1000.0,
            "proxy sync"
        );
        self.reporter.synced(LastSync {
            at: started,
            duration: took,
            services: outcome.services,
            real_servers: outcome.real_servers,
            failed: outcome.failed,
            first_error: outcome.first_error,
        });
        Ok(())
    }
}
