//! The balancer's lifecycle, as app.rs drives it: start from the `tcplb`
//! section; reload in two steps, [`Balancer::prepare`] (every step that can
//! fail: binding new sockets, reading TLS material; nothing visible
//! changes) then [`Balancer::commit`] (cannot fail); [`Balancer::report`];
//! [`Balancer::drain`] on shutdown. Which listeners start, stay or retire is
//! decided by the pure [`plan`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use std::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::forward::CopyMode;
use super::listener::{bind, DrainError, Listener};
use super::metrics::TcplbCollector;
use crate::config::{ListenerConfig, TcplbConfig};
use crate::health::{
    DownReason, HealthMetrics, ListenerHealth, ListenerHealthMap, Probe, TlsSetupError,
};
use crate::status::{BackendStatus, ListenerStatus};

/// How long sessions may drain when there is no `tcplb` section (a reload
/// that removes the section still drains what was running).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the balancer refused to start or to reload (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("listener {name}: cannot bind {bind}: {source}")]
    Bind {
        name: String,
        bind: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name}: {source}")]
    Tls { name: String, source: TlsSetupError },
}

/// What a reload does to the listeners: pure, from names and configs.
#[derive(Debug, Default, PartialEq)]
pub struct ListenerPlan<'a> {
    /// New, or moved to another address (the old one retires once the new
    /// socket is bound).
    pub start: Vec<&'a ListenerConfig>,
    /// Same name and address: kept, updated in place where it differs.
    pub keep: Vec<&'a ListenerConfig>,
    /// Gone or moved: stop accepting, drain in the background.
    pub retire: Vec<String>,
}

/// Compares the running listeners (name -> address) with the wanted ones.
pub fn plan<'a>(
    running: &BTreeMap<String, SocketAddr>,
    wanted: &'a [ListenerConfig],
) -> ListenerPlan<'a> {
    let mut p = ListenerPlan::default();
    for cfg in wanted {
        if running.get(&cfg.name) == Some(&cfg.bind) {
            p.keep.push(cfg);
        } else {
            p.start.push(cfg);
        }
    }
    p.retire = running
        .iter()
        .filter(|(name, bind)| !wanted.iter().any(|c| c.name == **name && c.bind == **bind))
        .map(|(name, _)| name.clone())
        .collect();
    p
}

/// A listener to start: its socket is bound, its check built.
struct NewListener {
    cfg: ListenerConfig,
    socket: TcpListener,
    probe: Probe,
}

/// A running listener whose config or checks differ.
struct ListenerUpdate {
    cfg: ListenerConfig,
    /// Settings other than health (balance, limits, timeouts...) differ.
    settings: bool,
    /// The backends, the check or its TLS files differ: the new check.
    health: Option<Probe>,
}

/// A reload ready to commit. Dropping it instead changes nothing: the new
/// sockets close, no task was started.
pub struct PreparedBalancer {
    start: Vec<NewListener>,
    update: Vec<ListenerUpdate>,
    retire: Vec<String>,
    grace: Duration,
}

impl PreparedBalancer {
    /// Whether committing it would change anything.
    pub fn is_noop(&self) -> bool {
        self.start.is_empty() && self.update.is_empty() && self.retire.is_empty()
    }
}

/// Every listener of the `tcplb` section, with its health checks.
pub struct Balancer {
    metrics: HealthMetrics,
    collector: TcplbCollector,
    running: BTreeMap<String, Arc<Listener>>,
    shutdown: CancellationToken,
    copy_mode: CopyMode,
    grace: Duration,
    health_tx: watch::Sender<ListenerHealthMap>,
    /// Bumped whenever the listener set changes, so the watcher of the
    /// previous set stops instead of publishing a stale map.
    health_generation: Arc<AtomicU64>,
}

impl Balancer {
    /// A balancer with no listener yet; registers its metrics.
    pub fn new(registry: &mut Registry, shutdown: CancellationToken) -> Balancer {
        let metrics = HealthMetrics::register(registry);
        let collector = TcplbCollector::default();
        registry.register_collector(Box::new(collector.clone()));
        Balancer {
            metrics,
            collector,
            running: BTreeMap::new(),
            shutdown,
            copy_mode: CopyMode::from_env(),
            grace: DEFAULT_SHUTDOWN_GRACE,
            health_tx: watch::channel(ListenerHealthMap::new()).0,
            health_generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Binds every listener of `section` (errors before READY=1) and starts
    /// them.
    pub async fn start(
        section: Option<&TcplbConfig>,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Result<Balancer, BalancerError> {
        let mut b = Balancer::new(registry, shutdown);
        b.apply(section).await?;
        Ok(b)
    }

    /// Reload: [`prepare`](Self::prepare) then [`commit`](Self::commit).
    pub async fn apply(&mut self, section: Option<&TcplbConfig>) -> Result<(), BalancerError> {
        let prepared = self.prepare(section).await?;
        self.commit(prepared);
        Ok(())
    }

    /// Everything of a reload that can fail, without a visible change: new
    /// sockets are bound (connections queue in their backlog until commit),
    /// checks are built (TLS files read). Unchanged listeners are left out.
    pub async fn prepare(
        &self,
        section: Option<&TcplbConfig>,
    ) -> Result<PreparedBalancer, BalancerError> {
        let wanted = section.map_or(&[][..], |t| &t.listeners[..]);
        let running: BTreeMap<String, SocketAddr> = self
            .running
            .iter()
            .map(|(n, l)| (n.clone(), l.bind))
            .collect();
        let plan = plan(&running, wanted);
        let mut start = Vec::new();
        for cfg in plan.start {
            let probe = probe(cfg)?;
            let socket = bind(cfg.bind).map_err(|source| BalancerError::Bind {
                name: cfg.name.clone(),
                bind: cfg.bind,
                source,
            })?;
            start.push(NewListener {
                cfg: cfg.clone(),
                socket,
                probe,
            });
        }
        let mut update = Vec::new();
        for cfg in plan.keep {
            let Some(l) = self.running.get(&cfg.name) else {
                continue;
            };
            let old = l.config();
            let next = probe(cfg)?;
            let health =
                (old.backends != cfg.backends || !next.same_as(&l.health.probe())).then_some(next);
            let settings = ListenerConfig {
                health: old.health.clone(),
                backends: old.backends.clone(),
                ..cfg.clone()
            } != *old;
            if settings || health.is_some() {
                update.push(ListenerUpdate {
                    cfg: cfg.clone(),
                    settings,
                    health,
                });
            }
        }
        Ok(PreparedBalancer {
            start,
            update,
            retire: plan.retire,
            grace: section.map_or(DEFAULT_SHUTDOWN_GRACE, |t| t.shutdown_grace),
        })
    }

    /// Applies a prepared reload; cannot fail. New listeners start
    /// accepting, kept ones change in place (sessions untouched, unchanged
    /// backends keep their health state), retired ones drain.
    pub fn commit(&mut self, p: PreparedBalancer) {
        let set_changed = !p.start.is_empty() || !p.retire.is_empty();
        let mut started = Vec::new();
        for n in p.start {
            let health = ListenerHealth::spawn(
                &n.cfg.name,
                &n.cfg.backends,
                n.probe,
                self.metrics.clone(),
                self.shutdown.child_token(),
            );
            tracing::info!(listener = %n.cfg.name, bind = %n.cfg.bind,
                backends = n.cfg.backends.len(), "listening");
            started.push(Listener::start(n.cfg, n.socket, health, self.copy_mode));
        }
        for u in p.update {
            let Some(l) = self.running.get(&u.cfg.name) else {
                continue;
            };
            let checks = u.health.is_some();
            if let Some(probe) = u.health {
                l.health.update(&u.cfg.backends, probe);
            }
            // Swaps the backend set (unchanged backends keep their
            // counters) and the settings.
            l.update(u.cfg);
            tracing::info!(listener = %l.name, settings = u.settings, checks, "listener updated");
        }
        for name in p.retire {
            if let Some(l) = self.running.remove(&name) {
                self.retire(l, p.grace);
            }
        }
        for l in started {
            self.running.insert(l.name.clone(), l);
        }
        self.grace = p.grace;
        self.publish();
        // The first commit starts the watcher whatever the set; later ones
        // replace it when the set changed (kept listeners keep their
        // subscriptions).
        if set_changed || self.health_generation.load(Relaxed) == 0 {
            self.watch_health();
        }
    }

    /// Stops accepting and drains in the background, at most `grace`.
    fn retire(&self, l: Arc<Listener>, grace: Duration) {
        tracing::info!(listener = %l.name, bind = %l.bind, "listener removed: draining");
        l.stop_accepting();
        tokio::spawn(async move {
            let cut = l.drain(grace).await;
            l.health.stop();
            if cut > 0 {
                tracing::warn!(listener = %l.name, cut, "drain grace over: sessions closed");
            }
        });
    }

    /// Shows the running listeners in metrics and status; draining ones
    /// stay visible until their last session ends.
    fn publish(&self) {
        let mut all: Vec<Arc<Listener>> = self.running.values().cloned().collect();
        for l in self.collector.listeners.load().iter() {
            if l.draining.load(Relaxed)
                && l.active.load(Relaxed) > 0
                && !all.iter().any(|x| Arc::ptr_eq(x, l))
            {
                all.push(l.clone());
            }
        }
        self.collector.listeners.store(Arc::new(all));
    }

    /// Listener name -> has a usable backend, kept current (VRRP tracks it).
    pub fn listener_health(&self) -> watch::Receiver<ListenerHealthMap> {
        self.health_tx.subscribe()
    }

    /// Keeps the listener health map current for the listener set now.
    fn watch_health(&self) {
        let listeners: Vec<Arc<Listener>> = self.running.values().cloned().collect();
        let compute = |ls: &[Arc<Listener>]| -> ListenerHealthMap {
            ls.iter()
                .map(|l| (l.name.clone(), l.health.snapshot().any_usable()))
                .collect()
        };
        self.health_tx.send_replace(compute(&listeners));
        let tx = self.health_tx.clone();
        let shutdown = self.shutdown.clone();
        let generation = self.health_generation.fetch_add(1, Relaxed) + 1;
        let current = self.health_generation.clone();
        tokio::spawn(async move {
            let mut subs: Vec<_> = listeners.iter().map(|l| l.health.subscribe()).collect();
            while !subs.is_empty() {
                let changed =
                    futures::future::select_all(subs.iter_mut().map(|s| Box::pin(s.changed())));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    (r, _, _) = changed => if r.is_err() { return },
                }
                if current.load(Relaxed) != generation {
                    return;
                }
                tx.send_replace(compute(&listeners));
            }
        });
    }

    /// A cheap handle on what [`report`](Self::report) shows, for the admin
    /// server.
    pub fn reporter(&self) -> BalancerReporter {
        BalancerReporter(self.collector.clone())
    }

    pub fn report(&self) -> Vec<ListenerStatus> {
        self.reporter().report()
    }

    /// Resolves once every listener running now has checked each of its
    /// backends once (`/readyz` waits for this).
    pub fn first_round(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rounds: Vec<_> = self
            .running
            .values()
            .map(|l| l.health.first_round())
            .collect();
        async move {
            for mut r in rounds {
                // An error: the listener is gone (reload, shutdown); nothing to wait for.
                let _ = r.wait_for(|done| *done).await;
            }
        }
    }

    /// VRRP-informed health: whenever a peer joins `gone` (its adverts
    /// stopped), the backends on that peer's address, or on the address
    /// `health.vrrp_peer_map` maps it to, are marked down at once in every
    /// listener with `health.vrrp_peer_down` (the default). They come back
    /// with `rise` passing checks, as after any mark-down.
    pub fn follow_vrrp_peers(&self, mut gone: watch::Receiver<BTreeSet<IpAddr>>) {
        let listeners = self.collector.listeners.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut before = BTreeSet::new();
            loop {
                let now = gone.borrow_and_update().clone();
                for peer in now.difference(&before) {
                    for l in listeners
                        .load()
                        .iter()
                        .filter(|l| !l.draining.load(Relaxed))
                    {
                        mark_peer_backends(l, *peer);
                    }
                }
                before = now;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = gone.changed() => if r.is_err() { return },
                }
            }
        });
    }

    /// Shutdown: every listener stops accepting, then sessions drain for
    /// at most the configured grace. Returns how many were cut.
    pub async fn drain(&self) -> u64 {
        let all: Vec<Arc<Listener>> = self.running.values().cloned().collect();
        for l in &all {
            l.stop_accepting();
        }
        futures::future::join_all(all.iter().map(|l| l.drain(self.grace)))
            .await
            .into_iter()
            .sum()
    }
}

fn probe(cfg: &ListenerConfig) -> Result<Probe, BalancerError> {
    Probe::new(&cfg.health).map_err(|source| BalancerError::Tls {
        name: cfg.name.clone(),
        source,
    })
}

/// Marks the backends of `l` on the node of VRRP peer `peer` down.
fn mark_peer_backends(l: &Listener, peer: IpAddr) {
    let cfg = l.config();
    if !cfg.health.vrrp_peer_down {
        return;
    }
    let ip = cfg.health.vrrp_peer_map.get(&peer).copied().unwrap_or(peer);
    for b in l.backends().iter().filter(|b| b.addr.ip() == ip) {
        tracing::warn!(listener = %l.name, backend = %b.addr, %peer,
            "VRRP peer stopped advertising: its backend is marked down");
        l.health.mark_down(
            b.addr,
            DownReason::PeerGone,
            format!("VRRP peer {peer} stopped advertising"),
        );
    }
}

/// The listeners' status, read from their counters and health snapshots,
/// and the operator's drain of a backend.
#[derive(Clone)]
pub struct BalancerReporter(TcplbCollector);

impl BalancerReporter {
    /// `lbd backend drain|enable LISTENER BACKEND`: see
    /// [`Listener::set_drained`]. Returns whether it was drained before.
    pub fn set_drained(
        &self,
        listener: &str,
        backend: &str,
        drained: bool,
    ) -> Result<bool, DrainError> {
        let listeners = self.0.listeners.load();
        let l = listeners
            .iter()
            .find(|l| l.name == listener && !l.draining.load(Relaxed))
            .ok_or_else(|| DrainError::NoListener(listener.to_string()))?;
        l.set_drained(backend, drained)
    }

    pub fn report(&self) -> Vec<ListenerStatus> {
        let now = tokio::time::Instant::now();
        self.0
            .listeners
            .load()
            .iter()
            .map(|l| listener_status(l, now))
            .collect()
    }
}

fn listener_status(l: &Listener, now: tokio::time::Instant) -> ListenerStatus {
    let details = l.health.details();
    let snapshot = l.health.snapshot();
    let backends = l
        .backends()
        .iter()
        .map(|b| {
            let d = details.iter().find(|d| d.addr == b.addr);
            BackendStatus {
                address: b.addr,
                // A backend new in this reload has no check yet: usable.
                healthy: snapshot.is_usable(b.addr)
                    || !snapshot.backends.iter().any(|(a, _)| *a == b.addr),
                active_connections: b.active.load(Relaxed),
                last_error: d.and_then(|d| d.last_error.clone()),
                since_seconds: d.map_or(0, |d| now.saturating_duration_since(d.since).as_secs()),
                last_check_latency_ms: d
                    .and_then(|d| d.last_latency)
                    .map(|l| l.as_secs_f64() * 1000.0),
                total_connections: b.total.load(Relaxed),
                down_reason: d.and_then(|d| d.down_reason),
                drained: b.drained.load(Relaxed),
            }
        })
        .collect();
    let cfg = l.config();
    ListenerStatus {
        name: l.name.clone(),
        bind: l.bind,
        active_connections: l.active.load(Relaxed),
        balance: cfg.balance,
        total_connections: l.total.load(Relaxed),
        refused_no_backend: l.refused_no_backend.load(Relaxed),
        draining: l.draining.load(Relaxed),
        check: l.health.probe().mode(),
        hedged_connects: l.hedges.load(Relaxed),
        hedge_wins: l.hedge_wins.load(Relaxed),
        hedge_delay_ms: l.hedge_delay(&cfg).as_secs_f64() * 1000.0,
        backends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, HealthConfig, HealthKind, OnBackendDown, TlsConfig};

    fn listener(name: &str, bind: SocketAddr, backends: &[&str]) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            bind,
            balance: Balance::RoundRobin,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            health: HealthConfig {
                kind: HealthKind::Tcp,
                path: "/healthz".into(),
                expect_status: 200,
                interval: Duration::from_secs(60),
                timeout: Duration::from_secs(1),
                rise: 1,
                fall: 1,
                host: None,
                tls: TlsConfig::default(),
                observe: crate::config::HealthObserve::Layer4,
                vrrp_peer_down: true,
                vrrp_peer_map: Default::default(),
            },
            connect_timeout: Duration::from_secs(1),
            retries: 0,
            max_connections: 100,
            on_backend_down: OnBackendDown::Keep,
            idle_timeout: None,
            hedge: Default::default(),
            session_log: false,
        }
    }

    fn section(listeners: Vec<ListenerConfig>) -> TcplbConfig {
        TcplbConfig {
            listeners,
            shutdown_grace: Duration::from_secs(1),
        }
    }

    /// An address on loopback nobody listens on (for the test's duration
    /// nobody else binds it: the socket is closed just before use).
    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    /// A balancer started with `cfg`, its registry, its shutdown token.
    async fn started(cfg: &TcplbConfig) -> (Balancer, Registry, CancellationToken) {
        let mut reg = Registry::default();
        let shutdown = CancellationToken::new();
        let bal = Balancer::start(Some(cfg), &mut reg, shutdown.clone())
            .await
            .unwrap();
        (bal, reg, shutdown)
    }

    fn running_of(b: &Balancer) -> Vec<(String, SocketAddr, Vec<SocketAddr>)> {
        b.running
            .values()
            .map(|l| (l.name.clone(), l.bind, l.config().backends.clone()))
            .collect()
    }

    #[test]
    fn plan_starts_new_and_moved_keeps_same_address_retires_gone_and_moved() {
        let (a1, a2, b1, c1) = (free_addr(), free_addr(), free_addr(), free_addr());
        let running: BTreeMap<String, SocketAddr> = [
            ("a".to_string(), a1),
            ("b".to_string(), b1),
            ("c".to_string(), c1),
        ]
        .into();
        let wanted = vec![
            listener("a", a2, &["127.0.0.1:1"]),
            listener("b", b1, &["127.0.0.1:2"]),
            listener("d", c1, &["127.0.0.1:3"]),
        ];
        let p = plan(&running, &wanted);
        assert_eq!(p.start, vec![&wanted[0], &wanted[2]]);
        assert_eq!(p.keep, vec![&wanted[1]]);
        assert_eq!(p.retire, vec!["a".to_string(), "c".to_string()]);
    }

    #[tokio::test]
    async fn a_reload_whose_new_listener_cannot_bind_changes_nothing() {
        let (a, b) = (free_addr(), free_addr());
        let first = section(vec![listener("a", a, &["127.0.0.1:1"])]);
        let (mut bal, _reg, shutdown) = started(&first).await;
        let before = running_of(&bal);

        // `c` is bound by someone else; `b` would bind, and `a` changes.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = taken.local_addr().unwrap();
        let next = section(vec![
            listener("a", a, &["127.0.0.1:2"]),
            listener("b", b, &["127.0.0.1:1"]),
            listener("c", c, &["127.0.0.1:1"]),
        ]);
        let err = bal.apply(Some(&next)).await.unwrap_err();
        assert!(
            matches!(&err, BalancerError::Bind { name, bind, .. } if name == "c" && *bind == c),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("listener c: cannot bind {c}: ")),
            "{err}"
        );
        assert_eq!(running_of(&bal), before, "a refused reload changed nothing");
        // `b`'s socket, bound during prepare, is closed again.
        assert!(std::net::TcpListener::bind(b).is_ok(), "{b} still bound");
        // The running listener still accepts.
        assert!(tokio::net::TcpStream::connect(a).await.is_ok());
        assert_eq!(
            bal.report()[0].backends[0].address.to_string(),
            "127.0.0.1:1"
        );

        // Without the conflict the same reload applies.
        drop(taken);
        bal.apply(Some(&next)).await.unwrap();
        let names: Vec<String> = running_of(&bal).into_iter().map(|r| r.0).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            bal.report()[0].backends[0].address.to_string(),
            "127.0.0.1:2"
        );
        assert!(tokio::net::TcpStream::connect(c).await.is_ok());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn unreadable_tls_material_refuses_the_reload_and_a_prepared_reload_can_be_dropped() {
        let (a, b) = (free_addr(), free_addr());
        let first = section(vec![listener("a", a, &["127.0.0.1:1"])]);
        let (mut bal, _reg, shutdown) = started(&first).await;
        let before = running_of(&bal);

        // A CA file that cannot be read (a directory) refuses the reload.
        let dir = tempfile::tempdir().unwrap();
        let mut https = listener("a", a, &["127.0.0.1:1"]);
        https.health.kind = HealthKind::Https;
        https.health.tls.ca_file = Some(dir.path().to_path_buf());
        let err = bal
            .prepare(Some(&section(vec![https.clone()])))
            .await
            .err()
            .expect("refused");
        let shown = format!("listener a: {}: ", dir.path().display());
        assert!(err.to_string().starts_with(&shown), "{err}");
        assert_eq!(running_of(&bal), before);

        // One that does not exist yet is no error (bootstrap: kubeadm
        // writes it later): the check waits for it.
        https.health.tls.ca_file = Some("/nonexistent/ca.crt".into());
        let waiting = bal.prepare(Some(&section(vec![https]))).await.unwrap();
        assert_eq!(waiting.update.len(), 1);
        let probe = waiting.update[0].health.as_ref().unwrap();
        assert_eq!(
            probe.mode(),
            "tls-handshake (waiting for /nonexistent/ca.crt)"
        );
        drop(waiting);

        // The same config again: nothing to do.
        assert!(bal.prepare(Some(&first)).await.unwrap().is_noop());

        // Prepared, then dropped (another subsystem refused): no change, and
        // the socket it bound is released.
        let next = section(vec![
            listener("a", a, &["127.0.0.1:1"]),
            listener("b", b, &["127.0.0.1:1"]),
        ]);
        let prepared = bal.prepare(Some(&next)).await.unwrap();
        assert!(!prepared.is_noop());
        drop(prepared);
        assert_eq!(running_of(&bal), before);
        assert!(std::net::TcpListener::bind(b).is_ok(), "{b} still bound");

        // Removing the section retires the listener: it stops accepting.
        bal.apply(None).await.unwrap();
        assert!(running_of(&bal).is_empty());
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if tokio::net::TcpStream::connect(a).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "{a} still accepting after retirement");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn listener_health_map_follows_the_listener_set() {
        let mut reg = Registry::default();
        let shutdown = CancellationToken::new();
        let mut bal = Balancer::new(&mut reg, shutdown.clone());
        let health = bal.listener_health();
        bal.apply(None).await.unwrap();
        assert!(health.borrow().is_empty());
        // A backend that accepts, so its TCP check passes.
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = up.local_addr().unwrap().to_string();
        let (a, b) = (free_addr(), free_addr());
        let two = section(vec![listener("a", a, &[&up]), listener("b", b, &[&up])]);
        bal.apply(Some(&two)).await.unwrap();
        let expected: ListenerHealthMap = [("a".to_string(), true), ("b".to_string(), true)].into();
        assert_eq!(*health.borrow(), expected);
        bal.apply(Some(&section(vec![listener("b", b, &[&up])])))
            .await
            .unwrap();
        let expected: ListenerHealthMap = [("b".to_string(), true)].into();
        assert_eq!(*health.borrow(), expected);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn every_listener_and_backend_metric_is_exported() {
        let cfg = section(vec![listener("api", free_addr(), &["127.0.0.1:1"])]);
        let (_bal, reg, shutdown) = started(&cfg).await;
        let scrape = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
            out
        };
        // The checks register their series from their own task.
        let mut out = scrape();
        for _ in 0..200 {
            if out.contains("lbd_health_check_failures_total") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            out = scrape();
        }
        let l = "{listener=\"api\"}";
        let b = "{listener=\"api\",backend=\"127.0.0.1:1\"}";
        for line in [
            format!("lbd_connections_active{l} 0"),
            format!("lbd_connections_total{l} 0"),
            format!("lbd_connections_refused_no_backend_total{l} 0"),
            format!("lbd_connections_failed_total{l} 0"),
            format!("lbd_received_bytes_total{l} 0"),
            format!("lbd_sent_bytes_total{l} 0"),
            format!("lbd_backend_connections_active{b} 0"),
            format!("lbd_backend_connections_total{b} 0"),
            format!("lbd_backend_connect_errors_total{b} 0"),
            format!("lbd_backend_received_bytes_total{b} 0"),
            format!("lbd_backend_sent_bytes_total{b} 0"),
            "lbd_health_check_failures_total{listener=\"api\",backend=\"127.0.0.1:1\",reason=\"timeout\"}".to_string(),
        ] {
            assert!(out.contains(&line), "missing {line} in\n{out}");
        }
        shutdown.cancel();
    }

    /// The checks' connects count for the hedge: a listener that carried no
    /// client yet (a node that just became VRRP master) hedges at the LAN
    /// floor once its backends have been checked, not at the cap; a
    /// backend that refuses gives no sample.
    #[tokio::test]
    async fn health_check_connects_set_the_hedge_delay_before_any_client() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            // Accepts and drops: a TCP check needs no more.
            while let Ok((c, _)) = up.accept().await {
                drop(c);
            }
        });
        let mut live = listener("live", free_addr(), &[&up_addr]);
        live.health.interval = Duration::from_millis(20);
        let mut dead = listener("dead", free_addr(), &["127.0.0.1:1"]);
        dead.health.interval = Duration::from_millis(20);
        let (bal, _reg, shutdown) = started(&section(vec![live.clone(), dead.clone()])).await;
        let (floor, cap) = (live.hedge.min_delay, live.hedge.max_delay);
        assert!(floor < cap);
        let l = bal.running["live"].clone();
        let d = bal.running["dead"].clone();
        assert_eq!(l.hedge_delay(&live), cap, "no connect seen yet");
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while l.hedge_delay(&live) != floor {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "checks did not set the hedge delay: {:?}",
            l.hedge_delay(&live)
        );
        assert_eq!(l.total.load(Relaxed), 0, "no client was involved");
        // Several refused checks later, still no sample for the dead one.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(d.hedge_delay(&dead), cap);
        shutdown.cancel();
    }

    /// A PEM CA certificate (self-signed, made here).
    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    }

    #[tokio::test]
    async fn a_rotated_ca_file_restarts_only_that_listeners_checks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, ca_pem("first CA")).unwrap();
        let mut https = listener("api", free_addr(), &["127.0.0.1:1"]);
        https.health.kind = HealthKind::Https;
        https.health.tls.ca_file = Some(ca.clone());
        let tcp = listener("other", free_addr(), &["127.0.0.1:1"]);
        let cfg = section(vec![https, tcp]);
        let (mut bal, _reg, shutdown) = started(&cfg).await;
        let probe_of = |b: &Balancer, name: &str| b.running[name].health.probe();
        let (api_before, other_before) = (probe_of(&bal, "api"), probe_of(&bal, "other"));

        // Same file, same config: nothing to do.
        assert!(bal.prepare(Some(&cfg)).await.unwrap().is_noop());

        // The CA file rotated, the config did not.
        std::fs::write(&ca, ca_pem("second CA")).unwrap();
        let p = bal.prepare(Some(&cfg)).await.unwrap();
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].cfg.name, "api");
        assert!(p.update[0].health.is_some() && !p.update[0].settings);
        bal.commit(p);
        assert!(!probe_of(&bal, "api").same_as(&api_before));
        assert!(probe_of(&bal, "other").same_as(&other_before));
        assert!(bal.prepare(Some(&cfg)).await.unwrap().is_noop());

        // A CA file that no longer parses refuses the reload.
        std::fs::write(&ca, "not a certificate").unwrap();
        let err = bal.prepare(Some(&cfg)).await.err().expect("refused");
        assert!(err.to_string().starts_with("listener api: "), "{err}");
        shutdown.cancel();
    }
}
