//! The sync runner: a bounded-frequency loop (kube-proxy's
//! BoundedFrequencyRunner) that recomputes the desired table from the whole
//! caches, lists the kernel once, plans and applies the minimal change.
//!
//! Watch events only mark the proxy dirty. A sync runs at most once per
//! `min_sync_period` and at least once per `sync_period` (which also repairs
//! drift made by others), and sooner while real servers drain or after a
//! failed change. Nothing runs before the Services, EndpointSlices and Node
//! caches have synced once.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
use super::handle::{IpvsError, IpvsHandle};
use super::kube::{client_from_config, start_watchers, KubeError};
use super::metrics::{OpLabels, ProxyMetrics};
use super::model::Timeouts;
use super::nft::{self, Firewall, NftParams};
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
    #[error("kube-ipvs0: {0}")]
    Addresses(String),
    #[error("ipvs: {0}")]
    Ipvs(#[from] IpvsError),
}

/// The addresses lbd binds on kube-ipvs0 (a dummy link), so the kernel
/// delivers service traffic locally where IPVS picks it up.
pub trait ServiceAddresses: Send + Sync {
    /// Creates the link and sets the sysctls if needed.
    fn prepare(&self) -> Result<(), String>;
    fn list(&self) -> Result<BTreeSet<IpAddr>, String>;
    fn add(&self, addr: IpAddr) -> Result<(), String>;
    fn remove(&self, addr: IpAddr) -> Result<(), String>;
}

/// In-memory kube-ipvs0 for tests and for hosts without a dummy driver.
#[derive(Debug, Clone, Default)]
pub struct FakeAddresses {
    pub addrs: Arc<Mutex<BTreeSet<IpAddr>>>,
}

impl FakeAddresses {
    pub fn snapshot(&self) -> BTreeSet<IpAddr> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServiceAddresses for FakeAddresses {
    fn prepare(&self) -> Result<(), String> {
        Ok(())
    }
    fn list(&self) -> Result<BTreeSet<IpAddr>, String> {
        Ok(self.snapshot())
    }
    fn add(&self, addr: IpAddr) -> Result<(), String> {
        self.addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr);
        Ok(())
    }
    fn remove(&self, addr: IpAddr) -> Result<(), String> {
        self.addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        Ok(())
    }
}

/// kube-ipvs0 through `sys::dummy` (rtnetlink), driven from the sync's
/// blocking thread by entering the runtime the link's connection runs on.
pub struct DummyAddresses {
    rt: tokio::runtime::Handle,
    strict_arp: bool,
    link: Mutex<Option<crate::sys::dummy::DummyLink>>,
}

impl DummyAddresses {
    /// Must be called inside the tokio runtime.
    pub fn new(strict_arp: bool) -> Self {
        DummyAddresses {
            rt: tokio::runtime::Handle::current(),
            strict_arp,
            link: Mutex::new(None),
        }
    }

    fn link(&self) -> Result<crate::sys::dummy::DummyLink, String> {
        use crate::sys::dummy::{connect, DummyLink, KUBE_IPVS0};
        let mut g = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = g.as_ref() {
            return Ok(l.clone());
        }
        let _enter = self.rt.enter();
        let handle = connect().map_err(|e| e.to_string())?;
        let l = self
            .rt
            .block_on(DummyLink::ensure(handle, KUBE_IPVS0))
            .map_err(|e| e.to_string())?;
        *g = Some(l.clone());
        Ok(l)
    }
}

impl ServiceAddresses for DummyAddresses {
    fn prepare(&self) -> Result<(), String> {
        use crate::sys::dummy::{ensure_sysctls, kernel_release, proxy_sysctls};
        self.link()?;
        let changed = ensure_sysctls(&proxy_sysctls(&kernel_release(), self.strict_arp))
            .map_err(|e| e.to_string())?;
        if !changed.is_empty() {
            tracing::info!(?changed, "proxy sysctls set");
        }
        Ok(())
    }
    fn list(&self) -> Result<BTreeSet<IpAddr>, String> {
        let l = self.link()?;
        let v = self.rt.block_on(l.addresses()).map_err(|e| e.to_string())?;
        Ok(v.into_iter().collect())
    }
    fn add(&self, addr: IpAddr) -> Result<(), String> {
        let l = self.link()?;
        self.rt
            .block_on(l.bind(addr))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn remove(&self, addr: IpAddr) -> Result<(), String> {
        let l = self.link()?;
        self.rt
            .block_on(l.unbind(addr))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The kernel-facing parts the engine drives.
#[derive(Clone)]
pub struct ProxyBackends {
    pub ipvs: Arc<dyn IpvsHandle>,
    pub addresses: Arc<dyn ServiceAddresses>,
    /// None: no nftables table (masquerade left to someone else).
    pub firewall: Option<Arc<dyn Firewall>>,
}

impl ProxyBackends {
    /// The real kernel: IPVS over generic netlink, kube-ipvs0 over
    /// rtnetlink, the nftables table through `nft`. Call inside the runtime.
    pub fn kernel(cfg: &ProxyConfig) -> Result<Self, ProxyError> {
        Ok(ProxyBackends {
            ipvs: Arc::new(super::netlink::NetlinkIpvs::new()?),
            addresses: Arc::new(DummyAddresses::new(cfg.ipvs.strict_arp)),
            firewall: Some(Arc::new(nft::NftFirewall::default())),
        })
    }
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
    /// From the start of the sync until the IPVS and kube-ipvs0 changes
    /// were applied (the nftables table follows).
    pub ipvs_applied: Option<Duration>,
}

/// The part of a sync that runs on a blocking thread: desired state, kernel
/// listing, plan, apply. Keeps the state that lives between syncs.
pub struct Syncer {
    settings: EngineSettings,
    backends: ProxyBackends,
    metrics: ProxyMetrics,
    drains: DrainTracker,
    desired: DesiredCache,
    /// The kernel as of the end of the last sync (listing + applied
    /// changes); None forces a full listing.
    kernel: Option<KernelState>,
    last_full: Option<std::time::Instant>,
    /// Virtual servers wanted since start (ownership of stale NodePorts).
    remembered: BTreeSet<super::model::ServiceKey>,
    last_ruleset: Option<serde_json::Value>,
    /// Slice (namespace/name) -> (resourceVersion, trigger time) last seen.
    seen_slices: HashMap<String, (String, Option<String>)>,
    seen_services: HashMap<String, String>,
    first: bool,
}

impl Syncer {
    pub fn new(settings: EngineSettings, backends: ProxyBackends, metrics: ProxyMetrics) -> Self {
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
            seen_slices: HashMap::new(),
            seen_services: HashMap::new(),
            first: true,
        }
    }

    /// One full sync from complete cache contents.
    pub fn sync(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
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
        let want = self.desired.compute(services, slices, &dparams);
        let np_ips = desired::node_port_ips(&dparams);
        let mut out = SyncOutcome {
            services: want.services,
            virtual_servers: want.virtual_servers.len(),
            real_servers: want.real_server_count(),
            ..Default::default()
        };
        let fail = |out: &mut SyncOutcome, op: &'static str, e: String| {
            out.failed += 1;
            self.metrics
                .kernel_errors
                .get_or_create(&OpLabels { op })
                .inc();
            tracing::warn!(op, error = %e, "proxy change failed");
            out.first_error.get_or_insert(e);
        };

        // A full sync lists the kernel once (first sync, every
        // sync_period to repair drift by others, after any failure); the
        // ones in between plan against the view kept from the last sync,
        // refreshing only virtual servers with draining real servers, whose
        // connection counters decide the drain.
        let full = self.kernel.is_none()
            || self
                .last_full
                .is_none_or(|t| now.saturating_duration_since(t) >= self.settings.sync_period);
        let mut kernel = if full {
            // A failed listing programs nothing (no partial view).
            let listing = match self.backends.ipvs.list_services() {
                Ok(l) => l,
                Err(e) => {
                    fail(&mut out, "list_services", e.to_string());
                    out.recheck_in = Some(self.settings.min_sync_period);
                    return out;
                }
            };
            let bound = match self.backends.addresses.list() {
                Ok(b) => b,
                Err(e) => {
                    fail(&mut out, "list_addresses", e);
                    out.recheck_in = Some(self.settings.min_sync_period);
                    return out;
                }
            };
            self.last_full = Some(now);
            KernelState::from_listing(listing, bound)
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
        out.full = full;
        let p = plan(
            &want,
            &kernel,
            &mut self.drains,
            &PlanParams {
                exclude_cidrs: &self.settings.exclude_cidrs,
                drain_timeout: self.settings.drain_timeout,
                node_port_ips: &np_ips,
                remembered: Some(&self.remembered),
            },
            now,
        );
        self.remembered.extend(want.virtual_servers.keys().copied());
        out.changes = p.changes.len();
        out.draining = p.draining;
        for c in &p.changes {
            let (op, r) = self.apply(c);
            match r {
                Ok(()) => {
                    kernel.apply(c);
                    if let Change::DeleteVirtual(k) = c {
                        self.remembered.remove(k);
                    }
                    self.metrics
                        .kernel_changes
                        .get_or_create(&OpLabels { op })
                        .inc();
                }
                Err(e) => fail(&mut out, op, e),
            }
        }

        out.ipvs_applied = Some(started.elapsed());
        // After a failure the view is unreliable: list again next time.
        self.kernel = (out.failed == 0).then_some(kernel);

        if let Some(fw) = &self.backends.firewall {
            let ruleset = nft::render(
                &want,
                &NftParams {
                    cluster_cidrs: &self.settings.cluster_cidrs,
                    masquerade_all: self.settings.masquerade_all,
                },
            );
            if self.last_ruleset.as_ref() != Some(&ruleset) {
                match fw.replace(&ruleset) {
                    Ok(()) => {
                        self.metrics.nft_applies.inc();
                        self.last_ruleset = Some(ruleset);
                    }
                    Err(e) => {
                        self.metrics.nft_errors.inc();
                        self.last_ruleset = None;
                        fail(&mut out, "nft_replace", e.to_string());
                    }
                }
            }
        }

        self.count_changes(services, slices, out.failed == 0);

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

    fn apply(&self, c: &Change) -> (&'static str, Result<(), String>) {
        let ipvs = &self.backends.ipvs;
        let s = |r: Result<(), IpvsError>| r.map_err(|e| e.to_string());
        match c {
            Change::BindAddress(a) => ("bind_address", self.backends.addresses.add(*a)),
            Change::UnbindAddress(a) => ("unbind_address", self.backends.addresses.remove(*a)),
            Change::AddVirtual(vs) => (
                "add_service",
                s(match ipvs.add_service(vs) {
                    // Someone added it between list and add: make it ours.
                    Err(e) if e.is_exists() => ipvs.update_service(vs),
                    r => r,
                }),
            ),
            Change::UpdateVirtual(vs) => ("update_service", s(ipvs.update_service(vs))),
            Change::DeleteVirtual(k) => (
                "delete_service",
                s(ipvs.delete_service(k).or_else(ignore_not_found)),
            ),
            Change::AddReal(k, rs) => (
                "add_dest",
                s(match ipvs.add_dest(k, rs) {
                    Err(e) if e.is_exists() => ipvs.update_dest(k, rs),
                    r => r,
                }),
            ),
            Change::UpdateReal(k, rs) => ("update_dest", s(ipvs.update_dest(k, rs))),
            Change::DeleteReal(k, d) => (
                "delete_dest",
                s(ipvs.delete_dest(k, d).or_else(ignore_not_found)),
            ),
        }
    }

    /// kube-proxy's change counters and network programming latency, from
    /// resourceVersions and trigger times seen since the previous sync.
    fn count_changes(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        ok: bool,
    ) {
        let now = SystemTime::now();
        let mut svc_changes = 0u64;
        let mut seen = HashMap::with_capacity(services.len());
        for s in services {
            let key = obj_key(&s.metadata);
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

        let mut ep_changes = 0u64;
        let mut seen = HashMap::with_capacity(slices.len());
        for s in slices {
            let key = obj_key(&s.metadata);
            let rv = s.metadata.resource_version.clone().unwrap_or_default();
            let trig = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                .cloned();
            let prev = self.seen_slices.get(&key);
            if prev.map(|p| &p.0) != Some(&rv) {
                ep_changes += 1;
                // Only changes that happened while we ran: after a restart
                // the old trigger times would measure our downtime.
                if !self.first && ok && prev.map(|p| &p.1) != Some(&trig) {
                    if let Some(lat) = trig.as_deref().and_then(|t| latency_since(t, now)) {
                        self.metrics.network_programming.observe(lat);
                    }
                }
            }
            seen.insert(key, (rv, trig));
        }
        ep_changes += self
            .seen_slices
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .count() as u64;
        self.seen_slices = seen;
        if !self.first {
            self.metrics.service_changes.inc_by(svc_changes);
            self.metrics.endpoint_changes.inc_by(ep_changes);
        }
        self.first = false;
    }
}

fn ignore_not_found(e: IpvsError) -> Result<(), IpvsError> {
    if e.is_not_found() {
        Ok(())
    } else {
        Err(e)
    }
}

fn obj_key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
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
    pub backends: ProxyBackends,
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
            let t = settings.timeouts;
            tokio::task::spawn_blocking(move || -> Result<(), ProxyError> {
                b.addresses.prepare().map_err(ProxyError::Addresses)?;
                if let Some(t) = t {
                    b.ipvs.set_timeouts(&t)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| ProxyError::Addresses(e.to_string()))??;
        }

        let dirty = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let caches = start_watchers(
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
            r = caches.wait_until_ready() => if r.is_err() { return Ok(()) },
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
            let services = caches.services.state();
            let slices = caches.slices.state();
            let node = caches.node.state().into_iter().next();
            let std_now = started.into_std();
            let joined = tokio::task::spawn_blocking(move || {
                let o = s.sync(&services, &slices, node.as_deref(), std_now);
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
    backends: ProxyBackends,
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
