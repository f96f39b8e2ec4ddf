//! The one place that wires the subsystems: start, reload, shut down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyMode;
use crate::config::{self, Config, ListenerConfig};
use crate::health::{HealthMetrics, ListenerHealth};
use crate::status::server::{bind_unix, serve_tcp, serve_unix, AdminState};
use crate::status::{BackendStatus, ConfigStatus, ListenerStatus, ProxyStatus, StatusReport};
use crate::tcplb::{CopyMode, Listener, TcplbCollector};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("listener {name}: cannot bind {bind}: {source}")]
    Bind {
        name: String,
        bind: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name}: {source}")]
    Tls {
        name: String,
        source: crate::health::TlsSetupError,
    },
    #[error("admin socket {path}: {source}")]
    AdminSocket {
        path: String,
        source: std::io::Error,
    },
    #[error("admin listen {addr}: {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// Listener name -> has at least one usable backend; what VRRP tracks.
pub type ListenerHealthMap = BTreeMap<String, bool>;

struct Tcplb {
    health_metrics: HealthMetrics,
    collector: TcplbCollector,
    running: BTreeMap<String, Arc<Listener>>,
    shutdown: CancellationToken,
    copy_mode: CopyMode,
    track_tx: watch::Sender<ListenerHealthMap>,
    track_generation: Arc<AtomicU64>,
}

impl Tcplb {
    fn publish(&self) {
        let mut all: Vec<Arc<Listener>> = self.running.values().cloned().collect();
        // Draining listeners stay visible in metrics until they are done.
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

    /// Brings the running listeners to `wanted`; all-or-nothing: if a new
    /// listener cannot bind, nothing changes.
    async fn apply(&mut self, wanted: &[ListenerConfig], grace: Duration) -> Result<(), AppError> {
        // 1. Start what is new (or moved to another address) without
        //    touching the running ones.
        let mut started: Vec<Arc<Listener>> = Vec::new();
        for cfg in wanted {
            let reuse = self
                .running
                .get(&cfg.name)
                .is_some_and(|l| l.bind == cfg.bind);
            if reuse {
                continue;
            }
            // A listener moving address is renamed into place only after
            // the new socket is bound.
            match self.start_one(cfg).await {
                Ok(l) => started.push(l),
                Err(e) => {
                    for l in &started {
                        l.stop_accepting();
                        l.health.stop();
                    }
                    return Err(e);
                }
            }
        }
        // Validate TLS of changed health checks before changing anything.
        for cfg in wanted {
            if let Some(l) = self.running.get(&cfg.name) {
                if l.bind == cfg.bind {
                    if let Err(source) = crate::health::Probe::new(&cfg.health) {
                        for l in &started {
                            l.stop_accepting();
                            l.health.stop();
                        }
                        return Err(AppError::Tls {
                            name: cfg.name.clone(),
                            source,
                        });
                    }
                }
            }
        }
        // 2. Update the unchanged ones in place.
        for cfg in wanted {
            if let Some(l) = self.running.get(&cfg.name) {
                if l.bind == cfg.bind && *l.config() != *cfg {
                    let _ = l.health.update(cfg);
                    l.update(cfg.clone());
                    tracing::info!(listener = %cfg.name, "listener updated");
                }
            }
        }
        // 3. Retire what is gone or moved: stop accepting, drain in the
        //    background.
        let keep: BTreeMap<&str, std::net::SocketAddr> =
            wanted.iter().map(|c| (c.name.as_str(), c.bind)).collect();
        let retired: Vec<String> = self
            .running
            .iter()
            .filter(|(name, l)| keep.get(name.as_str()) != Some(&l.bind))
            .map(|(n, _)| n.clone())
            .collect();
        for name in retired {
            if let Some(l) = self.running.remove(&name) {
                tracing::info!(listener = %name, bind = %l.bind, "listener removed: draining");
                l.stop_accepting();
                tokio::spawn(async move {
                    let cut = l.drain(grace).await;
                    l.health.stop();
                    if cut > 0 {
                        tracing::warn!(listener = %l.name, cut, "drain grace over: sessions closed");
                    }
                });
            }
        }
        for l in started {
            self.running.insert(l.name.clone(), l);
        }
        self.publish();
        self.spawn_track_watch();
        Ok(())
    }

    async fn start_one(&self, cfg: &ListenerConfig) -> Result<Arc<Listener>, AppError> {
        let health = ListenerHealth::spawn(
            cfg,
            self.health_metrics.clone(),
            self.shutdown.child_token(),
        )
        .map_err(|source| AppError::Tls {
            name: cfg.name.clone(),
            source,
        })?;
        let l = Listener::start(cfg.clone(), health, self.copy_mode)
            .await
            .map_err(|source| AppError::Bind {
                name: cfg.name.clone(),
                bind: cfg.bind,
                source,
            })?;
        tracing::info!(listener = %cfg.name, bind = %cfg.bind, backends = cfg.backends.len(), "listening");
        Ok(l)
    }

    /// Keeps the listener -> healthy map current for VRRP tracking.
    fn spawn_track_watch(&self) {
        let listeners: Vec<Arc<Listener>> = self.running.values().cloned().collect();
        let tx = self.track_tx.clone();
        let compute = move |ls: &[Arc<Listener>]| -> ListenerHealthMap {
            ls.iter()
                .map(|l| (l.name.clone(), l.health.snapshot().any_usable()))
                .collect()
        };
        tx.send_replace(compute(&listeners));
        let tx = tx.clone();
        let shutdown = self.shutdown.clone();
        // A reload starts a new watcher over the new set; the older one
        // sees the generation move on and stops, so it cannot publish a
        // stale map.
        let generation = self.track_generation.fetch_add(1, Relaxed) + 1;
        let current = self.track_generation.clone();
        tokio::spawn(async move {
            let mut subs: Vec<_> = listeners.iter().map(|l| l.health.subscribe()).collect();
            loop {
                if subs.is_empty() {
                    return;
                }
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
}

/// Reload bookkeeping shown in status.
#[derive(Default)]
struct ReloadState {
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_at: Mutex<Option<Instant>>,
}

/// Runs the daemon until SIGTERM/SIGINT. `opts` (the command line's
/// overrides) apply to every reload too.
pub async fn run(config_path: PathBuf, opts: config::LoadOptions) -> Result<(), AppError> {
    let cfg = config::load_with(&config_path, &opts)?;
    if let Some(p) = cfg.proxy.as_ref().filter(|p| p.mode != ProxyMode::None) {
        tracing::info!("proxy credentials: {}", config::describe_credentials(p));
    }
    // Handlers first: a SIGHUP that arrives right after READY=1 (systemd
    // may send one at once) must reload, not kill the process.
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let started = Instant::now();
    match crate::sys::rlimit::raise_nofile() {
        Ok((old, new)) if new > old => tracing::info!(old, new, "raised the open-file limit"),
        Ok((_, limit)) if limit < 65536 => {
            tracing::warn!(
                limit,
                "open-file limit is low: each balanced session needs two"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let health_metrics = HealthMetrics::register(&mut registry);
    let collector = TcplbCollector::default();
    registry.register_collector(Box::new(collector.clone()));
    let reloads_ok = Counter::<u64>::default();
    let reloads_failed = Counter::<u64>::default();
    registry.register(
        "lbd_config_reloads",
        "Successful config reloads",
        reloads_ok.clone(),
    );
    registry.register(
        "lbd_config_reload_failures",
        "Rejected config reloads (the previous config stays)",
        reloads_failed.clone(),
    );

    let vrrp_metrics = crate::vrrp::metrics::VrrpMetrics::register(&mut registry);
    let (track_tx, track_rx) = watch::channel(ListenerHealthMap::new());
    let mut tcplb = Tcplb {
        health_metrics,
        collector: collector.clone(),
        running: BTreeMap::new(),
        shutdown: shutdown.clone(),
        copy_mode: CopyMode::from_env(),
        track_tx,
        track_generation: Arc::new(AtomicU64::new(0)),
    };
    let grace = cfg
        .tcplb
        .as_ref()
        .map_or(Duration::from_secs(30), |t| t.shutdown_grace);
    if let Some(t) = &cfg.tcplb {
        tcplb.apply(&t.listeners, grace).await?;
    }

    let proxy_status: Arc<ArcSwap<Option<ProxyStatus>>> = Arc::new(ArcSwap::from_pointee(None));
    if let Some(p) = cfg.proxy.clone() {
        start_proxy(
            p,
            &cfg.node.name,
            &mut registry,
            proxy_status.clone(),
            shutdown.clone(),
        );
    }

    let mut vrrp = crate::vrrp::driver::VrrpRunner::new(vrrp_metrics, track_rx);
    if let Some(v) = &cfg.vrrp {
        vrrp.apply(&v.instances).await;
    }
    let vrrp_reporter = vrrp.reporter();

    let current = Arc::new(ArcSwap::from_pointee(cfg.clone()));
    let reload_state = Arc::new(ReloadState::default());
    let node_name = cfg.node.name.clone();
    let report = {
        let collector = collector.clone();
        let reload_state = reload_state.clone();
        let path = config_path.display().to_string();
        let proxy_status = proxy_status.clone();
        move || {
            let mut r = build_report(&node_name, started, &collector, &reload_state, &path);
            r.proxy = (**proxy_status.load()).clone();
            r.vrrp = vrrp_reporter.report();
            r
        }
    };
    let state = Arc::new(AdminState {
        report: Box::new(report),
        registry: Arc::new(registry),
        ready: Default::default(),
    });
    let unix = bind_unix(&cfg.admin.socket).map_err(|source| AppError::AdminSocket {
        path: cfg.admin.socket.display().to_string(),
        source,
    })?;
    tokio::spawn(serve_unix(unix, state.clone(), shutdown.clone()));
    if let Some(addr) = cfg.admin.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::AdminListen { addr, source })?;
        tokio::spawn(serve_tcp(l, state.clone(), shutdown.clone()));
    }

    state.ready.store(true, Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(config = %config_path.display(), "lbd running");

    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload(&config_path, &opts, &current, &mut tcplb, &mut vrrp).await {
                    Ok(()) => {
                        reloads_ok.inc();
                        reload_state.ok.fetch_add(1, Relaxed);
                        *reload_state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        tracing::info!("config reloaded");
                    }
                    Err(e) => {
                        reloads_failed.inc();
                        reload_state.failed.fetch_add(1, Relaxed);
                        tracing::error!("config reload rejected, keeping the previous config:\n{e}");
                        *reload_state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    }
                }
                *reload_state.last_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!("shutting down");
    // The VIP moves first (priority 0: a backup takes over after skew
    // time), then established sessions drain.
    vrrp.stop().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    state.ready.store(false, Relaxed);
    let grace = current
        .load()
        .tcplb
        .as_ref()
        .map_or(Duration::from_secs(30), |t| t.shutdown_grace);
    let drains: Vec<_> = tcplb.running.values().cloned().collect();
    for l in &drains {
        l.stop_accepting();
    }
    let cut: u64 = futures::future::join_all(drains.iter().map(|l| l.drain(grace)))
        .await
        .into_iter()
        .sum();
    if cut > 0 {
        tracing::warn!(cut, "shutdown grace over: sessions closed");
    }
    shutdown.cancel();
    let _ = std::fs::remove_file(&cfg.admin.socket);
    Ok(())
}

async fn reload(
    path: &Path,
    opts: &config::LoadOptions,
    current: &ArcSwap<Config>,
    tcplb: &mut Tcplb,
    vrrp: &mut crate::vrrp::driver::VrrpRunner,
) -> Result<(), AppError> {
    let next = config::load_with(path, opts)?;
    let old = current.load_full();
    let grace = next
        .tcplb
        .as_ref()
        .map_or(Duration::from_secs(30), |t| t.shutdown_grace);
    let wanted = next
        .tcplb
        .as_ref()
        .map(|t| t.listeners.clone())
        .unwrap_or_default();
    tcplb.apply(&wanted, grace).await?;
    if old.proxy != next.proxy {
        tracing::warn!("proxy section changed: takes effect on restart");
    }
    // Changed instances restart (releasing their VIP with priority 0).
    vrrp.apply(next.vrrp.as_ref().map_or(&[][..], |v| &v.instances[..]))
        .await;
    if old.admin != next.admin {
        tracing::warn!("admin section changed: takes effect on restart");
    }
    current.store(Arc::new(next));
    Ok(())
}

fn build_report(
    node: &str,
    started: Instant,
    collector: &TcplbCollector,
    reload: &ReloadState,
    path: &str,
) -> StatusReport {
    let now = tokio::time::Instant::now();
    let tcplb = collector
        .listeners
        .load()
        .iter()
        .map(|l| {
            let details = l.health.details();
            let snapshot = l.health.snapshot();
            let cfg = l.config();
            ListenerStatus {
                name: l.name.clone(),
                bind: l.bind.to_string(),
                active_connections: l.active.load(Relaxed),
                balance: format!("{:?}", cfg.balance).to_lowercase(),
                total_connections: l.total.load(Relaxed),
                refused_no_backend: l.refused_no_backend.load(Relaxed),
                draining: l.draining.load(Relaxed),
                backends: l
                    .backends()
                    .iter()
                    .map(|b| {
                        let d = details.iter().find(|d| d.addr == b.addr);
                        BackendStatus {
                            address: b.addr.to_string(),
                            healthy: snapshot.is_usable(b.addr)
                                || !snapshot.backends.iter().any(|(a, _)| *a == b.addr),
                            active_connections: b.active.load(Relaxed),
                            last_error: d.and_then(|d| d.last_error.clone()),
                            since_seconds: d
                                .map_or(0, |d| now.saturating_duration_since(d.since).as_secs()),
                            last_check_latency_ms: d
                                .and_then(|d| d.last_latency)
                                .map(|l| l.as_secs_f64() * 1000.0),
                            total_connections: b.total.load(Relaxed),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    StatusReport {
        node: node.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: started.elapsed().as_secs(),
        vrrp: Vec::new(),
        tcplb,
        proxy: None,
        config: ConfigStatus {
            path: path.to_string(),
            reloads_ok: reload.ok.load(Relaxed),
            reloads_failed: reload.failed.load(Relaxed),
            last_reload_error: reload
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            last_reload_seconds_ago: reload
                .last_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| t.elapsed().as_secs()),
        },
    }
}

/// Starts the Service proxy. Its failures are logged and shown in status; they
/// never take the VIP or the balancer down with them.
fn start_proxy(
    p: crate::config::ProxyConfig,
    node: &str,
    registry: &mut Registry,
    status: Arc<ArcSwap<Option<ProxyStatus>>>,
    shutdown: CancellationToken,
) {
    let failed = |status: &ArcSwap<Option<ProxyStatus>>, mode: &str, e: String| {
        status.store(Arc::new(Some(ProxyStatus {
            mode: mode.to_string(),
            synced: false,
            services: 0,
            real_servers: 0,
            last_sync_seconds_ago: None,
            last_sync_duration_ms: None,
            last_error: Some(e),
        })));
    };
    match p.mode {
        ProxyMode::None => {}
        ProxyMode::Nftables => {
            tracing::error!(
                "proxy mode nftables is not implemented: no Service rules are programmed"
            );
            failed(
                &status,
                "nftables",
                "mode nftables is not implemented; use ipvs".into(),
            );
        }
        ProxyMode::Ipvs => {
            let metrics = crate::ipvs::metrics::ProxyMetrics::new();
            metrics.register_lbd(registry);
            let node = p
                .hostname_override
                .clone()
                .unwrap_or_else(|| node.to_string());
            match crate::ipvs::sync::ProxyBackends::kernel(&p) {
                Ok(backends) => {
                    tokio::spawn(async move {
                        let r = crate::ipvs::sync::run_proxy(
                            p,
                            node,
                            backends,
                            status.clone(),
                            metrics,
                            shutdown,
                        )
                        .await;
                        if let Err(e) = r {
                            tracing::error!(error = %e, "service proxy stopped");
                            failed(&status, "ipvs", e.to_string());
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "service proxy cannot start");
                    failed(&status, "ipvs", e.to_string());
                }
            }
        }
    }
}
