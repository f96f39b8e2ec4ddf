//! Runs the probes of one listener's backends and publishes what the balancer
//! reads: an immutable snapshot swapped only when a backend flips.

use crate::tcplb::hedge::ConnectTimes;
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
use super::state::{DownReason, HealthState, ProbeOutcome};

/// How often a check waiting for its TLS files looks for them: a stat per
/// file, so an editor's write-then-rename is seen as well as a plain write.
const FILE_POLL: Duration = Duration::from_millis(250);

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
    pub down_reason: Option<DownReason>,
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
    /// Becomes true once every backend has had its first check (and stays).
    first_round: watch::Sender<bool>,
    /// How long connects to these backends took, the checks' and the
    /// sessions': the hedge delay (`tcplb::hedge`). The checks' samples
    /// give a node that carried no traffic yet (a new VRRP master) a LAN
    /// delay at once instead of the cap.
    pub connect_times: Arc<ConnectTimes>,
}

enum Command {
    Update(Vec<SocketAddr>, Box<Probe>),
    MarkDown(SocketAddr, DownReason, String),
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

    /// True once every backend has been checked once (`/readyz`).
    pub fn first_round(&self) -> watch::Receiver<bool> {
        self.first_round.subscribe()
    }

    /// Traffic found `addr` dead: it is marked down at once (see
    /// [`HealthState::mark_down`]); the next snapshot leaves it out.
    pub fn mark_down(&self, addr: SocketAddr, reason: DownReason, message: String) {
        let _ = self.commands.send(Command::MarkDown(addr, reason, message));
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
            first_round: watch::channel(false).0,
            connect_times: Arc::default(),
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
        self.set_probe(probe.clone());
        let _ = self
            .commands
            .send(Command::Update(backends.to_vec(), Box::new(probe)));
    }

    fn set_probe(&self, probe: Probe) {
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = probe;
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
    /// The owner's, for the probers to add their connect times to.
    connect_times: Arc<ConnectTimes>,
    order: Vec<SocketAddr>,
    tracked: BTreeMap<SocketAddr, Tracked>,
    /// Results from a prober of an earlier generation are ignored after a
    /// reload changed its check.
    generation: u64,
    results: mpsc::Sender<ProbeResult>,
    /// The check the probers run.
    probe: Option<Probe>,
    /// The last reason the TLS files that appeared could not be used.
    bootstrap_error: Option<String>,
}

impl Aggregator {
    /// A new backend set or check: unchanged backends keep their state
    /// (with the new thresholds); every prober restarts with the new check.
    fn update(&mut self, backends: Vec<SocketAddr>, probe: Probe) {
        if !probe.waiting_for().is_empty() {
            tracing::warn!(listener = %self.name, check = %probe.mode(),
                "TLS files missing: checking the TLS handshake only until they appear");
        }
        self.probe = Some(probe.clone());
        self.bootstrap_error = None;
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
                self.connect_times.clone(),
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
        let flipped = t.state.observe(&outcome);
        if flipped {
            self.flipped(addr);
        }
        flipped
    }

    /// Traffic found a backend dead; true when that flipped it.
    fn mark_down(&mut self, addr: SocketAddr, reason: DownReason, message: String) -> bool {
        let Some(t) = self.tracked.get_mut(&addr) else {
            return false;
        };
        let flipped = t.state.mark_down(reason, message);
        if flipped {
            self.flipped(addr);
        }
        flipped
    }

    fn flipped(&mut self, addr: SocketAddr) {
        let Some(t) = self.tracked.get_mut(&addr) else {
            return;
        };
        t.since = Instant::now();
        let reason = t.state.down_reason;
        if let Some(r) = reason {
            self.metrics.marked_down(&self.name, addr, r);
        }
        tracing::warn!(
            listener = %self.name, backend = %addr,
            state = if t.state.is_usable() { "UP" } else { "DOWN" },
            reason = reason.map_or("", DownReason::as_str),
            error = t.state.last_error.as_deref().unwrap_or(""),
            "backend health changed"
        );
    }

    /// Whether every backend has had a check (the first round is over).
    fn first_round_done(&self) -> bool {
        self.tracked.values().all(|t| t.state.checks > 0)
    }

    /// While the check waits for TLS files: when they are all there, the
    /// verified check takes over (backends keep their state). Returns the
    /// new check for the owner to show.
    fn look_for_tls_files(&mut self) -> Option<Probe> {
        let probe = self.probe.as_ref()?;
        if probe.waiting_for().is_empty() || !probe.waiting_for().iter().all(|p| p.exists()) {
            return None;
        }
        match Probe::new(probe.config()) {
            Ok(next) if next.waiting_for().is_empty() => {
                tracing::info!(listener = %self.name, check = %next.mode(),
                    "TLS files appeared: checks verify now");
                self.update(self.order.clone(), next.clone());
                Some(next)
            }
            // Gone again in between (an editor's rename): next time.
            Ok(_) => None,
            Err(e) => {
                let e = e.to_string();
                if self.bootstrap_error.as_deref() != Some(&e) {
                    tracing::warn!(listener = %self.name, error = %e,
                        "TLS files appeared but cannot be used yet; still checking the handshake only");
                    self.bootstrap_error = Some(e);
                }
                None
            }
        }
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
    let Some((name, connect_times)) = owner
        .upgrade()
        .map(|o| (o.name.clone(), o.connect_times.clone()))
    else {
        return;
    };
    let (results_tx, mut results) = mpsc::channel::<ProbeResult>(64);
    let mut agg = Aggregator {
        name,
        metrics,
        connect_times,
        order: Vec::new(),
        tracked: BTreeMap::new(),
        generation: 0,
        results: results_tx,
        probe: None,
        bootstrap_error: None,
    };
    let mut file_poll = tokio::time::interval(FILE_POLL);
    file_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let waiting = agg
            .probe
            .as_ref()
            .is_some_and(|p| !p.waiting_for().is_empty());
        let flipped = tokio::select! {
            _ = shutdown.cancelled() => return,
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Update(backends, probe)) => {
                    agg.update(backends, *probe);
                    true
                }
                Some(Command::MarkDown(addr, reason, message)) => agg.mark_down(addr, reason, message),
            },
            Some(result) = results.recv() => agg.observe(result),
            _ = file_poll.tick(), if waiting => match agg.look_for_tls_files() {
                Some(next) => {
                    if let Some(owner) = owner.upgrade() {
                        owner.set_probe(next);
                    }
                    true
                }
                None => false,
            },
        };
        let Some(owner) = owner.upgrade() else { return };
        if flipped {
            agg.publish(&owner);
        } else {
            // Only the details changed.
            agg.publish_details(&owner);
        }
        if !*owner.first_round.borrow() && agg.first_round_done() {
            owner.first_round.send_replace(true);
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
                down_reason: t.state.down_reason,
            })
        })
        .collect()
}

async fn probe_loop(
    addr: SocketAddr,
    probe: Probe,
    connect_times: Arc<ConnectTimes>,
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
        let (outcome, connected) = probe.run_timed(addr).await;
        if let Some(took) = connected {
            connect_times.record(took);
        }
        if results.send((addr, generation, outcome)).await.is_err() {
            return;
        }
    }
}
