//! Runs the probes of one listener's backends and publishes what the balancer
//! reads: an immutable snapshot swapped only when a backend flips.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check::Probe;
use super::metrics::HealthMetrics;
use super::state::{HealthState, ProbeOutcome};

/// Which backends may be chosen, in config order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthSnapshot {
    pub backends: Vec<(SocketAddr, bool)>,
}

impl HealthSnapshot {
    pub fn any_usable(&self) -> bool {
        self.backends.iter().any(|(_, up)| *up)
    }
    pub fn is_usable(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|(a, up)| *a == addr && *up)
    }
}

/// The last probe's details per backend, for status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendDetail {
    pub addr: SocketAddr,
    pub healthy: Option<bool>,
    pub usable: bool,
    pub since: Instant,
    pub last_error: Option<String>,
    pub last_latency: Option<Duration>,
    pub checks: u64,
    pub failures: u64,
}

/// The health of one listener's backends, shared with the balancer.
pub struct ListenerHealth {
    pub name: String,
    snapshot: ArcSwap<HealthSnapshot>,
    details: ArcSwap<Vec<BackendDetail>>,
    flips: watch::Sender<Arc<HealthSnapshot>>,
    commands: mpsc::UnboundedSender<Command>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The check running now, to tell on reload whether it changed.
    probe: std::sync::Mutex<Probe>,
}

enum Command {
    Update(Vec<SocketAddr>, Probe),
}

impl ListenerHealth {
    /// Lock-free read for the hot path.
    pub fn snapshot(&self) -> Arc<HealthSnapshot> {
        self.snapshot.load_full()
    }
    pub fn details(&self) -> Arc<Vec<BackendDetail>> {
        self.details.load_full()
    }
    /// Wakes on every flip (and on backend-set changes).
    pub fn subscribe(&self) -> watch::Receiver<Arc<HealthSnapshot>> {
        self.flips.subscribe()
    }

    /// Starts checking `backends` of listener `name` with `probe` (built,
    /// so TLS material read, by the caller before anything changed).
    pub fn spawn(
        name: &str,
        backends: &[SocketAddr],
        probe: Probe,
        metrics: HealthMetrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let initial = HealthSnapshot {
            backends: backends.iter().map(|a| (*a, true)).collect(),
        };
        let (flips, _) = watch::channel(Arc::new(initial.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(ListenerHealth {
            name: name.to_string(),
            snapshot: ArcSwap::from_pointee(initial),
            details: ArcSwap::from_pointee(Vec::new()),
            flips,
            commands: tx,
            task: std::sync::Mutex::new(None),
            probe: std::sync::Mutex::new(probe.clone()),
        });
        let task = tokio::spawn(aggregate(Arc::downgrade(&me), rx, metrics, shutdown));
        *me.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        me.update(backends, probe);
        me
    }

    /// The check running now.
    pub fn probe(&self) -> Probe {
        self.probe.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a reloaded listener: unchanged backends keep their state.
    pub fn update(&self, backends: &[SocketAddr], probe: Probe) {
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = probe.clone();
        let _ = self
            .commands
            .send(Command::Update(backends.to_vec(), probe));
    }

    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Drop for ListenerHealth {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Tracked {
    state: HealthState,
    since: Instant,
    prober: JoinHandle<()>,
}

type ProbeResult = (SocketAddr, u64, ProbeOutcome);

/// The single writer: owns every backend's state, so no locks are needed.
struct Aggregator {
    name: String,
    metrics: HealthMetrics,
    order: Vec<SocketAddr>,
    tracked: BTreeMap<SocketAddr, Tracked>,
    /// Results from a prober of an earlier generation are ignored after a
    /// reload changed its check.
    generation: u64,
    results: mpsc::Sender<ProbeResult>,
}

impl Aggregator {
    /// A new backend set or check: unchanged backends keep their state
    /// (with the new thresholds); every prober restarts with the new check.
    fn update(&mut self, backends: Vec<SocketAddr>, probe: Probe) {
        let health = probe.config().clone();
        self.generation += 1;
        let mut next = BTreeMap::new();
        for (i, addr) in backends.iter().enumerate() {
            let (state, since) = match self.tracked.remove(addr) {
                Some(t) => {
                    t.prober.abort();
                    (t.state.with_thresholds(health.rise, health.fall), t.since)
                }
                None => {
                    self.metrics.track(&self.name, *addr);
                    (HealthState::new(health.rise, health.fall), Instant::now())
                }
            };
            // Spread the first probes over one interval so a listener with
            // many backends does not probe them all at once. (At most over
            // one second: the first verdict should not wait for a long
            // interval.)
            let spread = health.interval.min(Duration::from_secs(1));
            let offset = spread.mul_f64(i as f64 / backends.len().max(1) as f64);
            let prober = tokio::spawn(probe_loop(
                *addr,
                probe.clone(),
                health.interval,
                offset,
                self.generation,
                self.results.clone(),
            ));
            next.insert(
                *addr,
                Tracked {
                    state,
                    since,
                    prober,
                },
            );
        }
        for (addr, t) in std::mem::replace(&mut self.tracked, next) {
            t.prober.abort();
            self.metrics.forget(&self.name, addr);
        }
        self.order = backends;
    }

    /// One probe's result; true when the backend's usable state flipped.
    fn observe(&mut self, (addr, generation, outcome): ProbeResult) -> bool {
        if generation != self.generation {
            return false;
        }
        let Some(t) = self.tracked.get_mut(&addr) else {
            return false;
        };
        self.metrics.observe(&self.name, addr, &outcome);
        if !t.state.observe(&outcome) {
            return false;
        }
        t.since = Instant::now();
        tracing::warn!(
            listener = %self.name, backend = %addr,
            state = if t.state.is_usable() { "UP" } else { "DOWN" },
            error = t.state.last_error.as_deref().unwrap_or(""),
            "backend health changed"
        );
        true
    }

    /// Publishes the details and, when it changed, the snapshot.
    fn publish(&self, owner: &ListenerHealth) {
        let snap = HealthSnapshot {
            backends: self
                .order
                .iter()
                .map(|a| (*a, self.tracked.get(a).is_none_or(|t| t.state.is_usable())))
                .collect(),
        };
        for (addr, up) in &snap.backends {
            self.metrics.set_up(&self.name, *addr, *up);
        }
        self.publish_details(owner);
        if **owner.snapshot.load() != snap {
            let snap = Arc::new(snap);
            owner.snapshot.store(snap.clone());
            owner.flips.send_replace(snap);
        }
    }

    fn publish_details(&self, owner: &ListenerHealth) {
        owner
            .details
            .store(Arc::new(details(&self.order, &self.tracked)));
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        for t in self.tracked.values() {
            t.prober.abort();
        }
    }
}

async fn aggregate(
    owner: std::sync::Weak<ListenerHealth>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    metrics: HealthMetrics,
    shutdown: CancellationToken,
) {
    let Some(name) = owner.upgrade().map(|o| o.name.clone()) else {
        return;
    };
    let (results_tx, mut results) = mpsc::channel::<ProbeResult>(64);
    let mut agg = Aggregator {
        name,
        metrics,
        order: Vec::new(),
        tracked: BTreeMap::new(),
        generation: 0,
        results: results_tx,
    };
    loop {
        let flipped = tokio::select! {
            _ = shutdown.cancelled() => return,
            cmd = commands.recv() => {
                let Some(Command::Update(backends, probe)) = cmd else { return };
                agg.update(backends, probe);
                true
            }
            Some(result) = results.recv() => agg.observe(result),
        };
        let Some(owner) = owner.upgrade() else { return };
        if flipped {
            agg.publish(&owner);
        } else {
            // Only the details changed.
            agg.publish_details(&owner);
        }
    }
}

fn details(order: &[SocketAddr], tracked: &BTreeMap<SocketAddr, Tracked>) -> Vec<BackendDetail> {
    order
        .iter()
        .filter_map(|a| {
            let t = tracked.get(a)?;
            Some(BackendDetail {
                addr: *a,
                healthy: t.state.healthy,
                usable: t.state.is_usable(),
                since: t.since,
                last_error: t.state.last_error.clone(),
                last_latency: t.state.last_latency,
                checks: t.state.checks,
                failures: t.state.failures,
            })
        })
        .collect()
}

async fn probe_loop(
    addr: SocketAddr,
    probe: Probe,
    interval: Duration,
    offset: Duration,
    generation: u64,
    results: mpsc::Sender<(SocketAddr, u64, ProbeOutcome)>,
) {
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(interval);
    // A slow probe must not cause a burst of catch-up probes.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = probe.run(addr).await;
        if results.send((addr, generation, outcome)).await.is_err() {
            return;
        }
    }
}
