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

/// The single writer: owns every backend's state, so no locks are needed.
async fn aggregate(
    owner: std::sync::Weak<ListenerHealth>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    metrics: HealthMetrics,
    shutdown: CancellationToken,
) {
    let (results_tx, mut results) = mpsc::channel::<(SocketAddr, u64, ProbeOutcome)>(64);
    let mut order: Vec<SocketAddr> = Vec::new();
    let mut tracked: BTreeMap<SocketAddr, Tracked> = BTreeMap::new();
    // Results from a prober of an earlier generation are ignored after a
    // reload changed its check.
    let mut generation = 0u64;
    let name = match owner.upgrade() {
        Some(o) => o.name.clone(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = commands.recv() => {
                let Some(Command::Update(backends, probe)) = cmd else { break };
                let health = probe.config().clone();
                generation += 1;
                let mut next = BTreeMap::new();
                for (i, addr) in backends.iter().enumerate() {
                    let state = match tracked.remove(addr) {
                        Some(t) => {
                            t.prober.abort();
                            (t.state.with_thresholds(health.rise, health.fall), t.since)
                        }
                        None => {
                            metrics.track(&name, *addr);
                            (HealthState::new(health.rise, health.fall), Instant::now())
                        }
                    };
                    // Spread the first probes over one interval so a listener
                    // with many backends does not probe them all at once.
                    // (At most over one second: the first verdict should not
                    // wait for a long interval.)
                    let spread = health.interval.min(Duration::from_secs(1));
                    let offset = spread.mul_f64(i as f64 / backends.len().max(1) as f64);
                    let prober = tokio::spawn(probe_loop(
                        *addr, probe.clone(), health.interval, offset, generation, results_tx.clone(),
                    ));
                    next.insert(*addr, Tracked { state: state.0, since: state.1, prober });
                }
                for (addr, t) in std::mem::take(&mut tracked) {
                    t.prober.abort();
                    metrics.forget(&name, addr);
                }
                tracked = next;
                order = backends;
            }
            Some((addr, gen, outcome)) = results.recv() => {
                if gen != generation { continue; }
                let Some(t) = tracked.get_mut(&addr) else { continue };
                metrics.observe(&name, addr, &outcome);
                if t.state.observe(&outcome) {
                    t.since = Instant::now();
                    tracing::warn!(
                        listener = %name, backend = %addr,
                        state = if t.state.is_usable() { "UP" } else { "DOWN" },
                        error = t.state.last_error.as_deref().unwrap_or(""),
                        "backend health changed"
                    );
                } else {
                    // Only the details changed.
                    let Some(owner) = owner.upgrade() else { break };
                    owner.details.store(Arc::new(details(&order, &tracked)));
                    continue;
                }
            }
        }
        let Some(owner) = owner.upgrade() else { break };
        let snap = HealthSnapshot {
            backends: order
                .iter()
                .map(|a| (*a, tracked.get(a).is_none_or(|t| t.state.is_usable())))
                .collect(),
        };
        for (addr, up) in &snap.backends {
            metrics.set_up(&name, *addr, *up);
        }
        owner.details.store(Arc::new(details(&order, &tracked)));
        if **owner.snapshot.load() != snap {
            let snap = Arc::new(snap);
            owner.snapshot.store(snap.clone());
            owner.flips.send_replace(snap);
        }
    }
    for t in tracked.values() {
        t.prober.abort();
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
