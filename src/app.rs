//! The one place that wires the subsystems: start, reload, shut down.
//!
//! Every subsystem has the same shape: it starts from its config section,
//! reloads in two steps (`prepare(section)` does all that can fail without a
//! visible change; `commit` cannot fail) and `report()`s a typed status. A
//! reload prepares every subsystem before committing any, so one refusal
//! leaves all of them as they were, and the reason is shown in status.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{self, AdminConfig, Config};
use crate::proxy::{Proxy, ProxyReporter};
use crate::status::server::{bind_unix, serve_tcp, serve_unix, AdminState};
use crate::status::{ConfigStatus, StatusReport};
use crate::tcplb::{Balancer, BalancerError, BalancerReporter};
use crate::vrrp::metrics::VrrpMetrics;
use crate::vrrp::state::StateDir;
use crate::vrrp::{Vrrp, VrrpReporter};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Balancer(#[from] BalancerError),
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
    #[error("proxy: {0}")]
    Proxy(#[from] crate::proxy::ProxyError),
}

/// Runs the daemon until SIGTERM/SIGINT. `opts` (the command line's
/// overrides) apply to every reload too.
pub async fn run(config_path: PathBuf, opts: config::LoadOptions) -> Result<(), AppError> {
    let cfg = config::load_with(&config_path, &opts)?;
    if let Some(p) = cfg
        .proxy
        .as_ref()
        .filter(|p| p.mode != config::ProxyMode::None)
    {
        tracing::info!("proxy credentials: {}", config::describe_credentials(p));
    }
    // Handlers first: a SIGHUP that arrives right after READY=1 (systemd
    // may send one at once) must reload, not kill the process.
    let mut signals = Signals::install()?;
    let started = Instant::now();
    raise_open_file_limit();
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let reloads = ReloadBook::register(&mut registry);
    let mut daemon = Daemon::start(cfg, &mut registry, shutdown.clone()).await?;
    let status = StatusSource {
        node: daemon.current.node.name.clone(),
        started,
        path: config_path.display().to_string(),
        balancer: daemon.balancer.reporter(),
        vrrp: daemon.vrrp.reporter(),
        proxy: daemon.proxy.reporter(),
        reloads: reloads.record.clone(),
    };
    let control = daemon.balancer.reporter();
    let (reload_tx, mut reload_asks) = tokio::sync::mpsc::channel(4);
    let admin = Arc::new(AdminState {
        report: Box::new(move || status.report()),
        registry: Arc::new(registry),
        ready: Default::default(),
        drain_backend: Box::new(move |listener, backend, drain| {
            control
                .set_drained(listener, backend, drain)
                .map_err(|e| e.to_string())
        }),
        vrrp: daemon.vrrp.control(),
        reload: Some(reload_tx),
    });
    serve_admin(&daemon.current.admin, admin.clone(), shutdown.clone()).await?;

    // Ready (`/readyz`) once every listener has checked its backends once:
    // before that a backend's state is a guess.
    let stopping = CancellationToken::new();
    tokio::spawn({
        let (admin, stopping) = (admin.clone(), stopping.clone());
        let first_round = daemon.balancer.first_round();
        async move {
            tokio::select! {
                _ = first_round => admin.ready.store(true, Relaxed),
                _ = stopping.cancelled() => {}
            }
        }
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(config = %config_path.display(), "lbd running");

    // SIGHUP and `lbd reload` (POST /reload) do the same; the latter is
    // told the outcome.
    loop {
        let ticket = tokio::select! {
            r = signals.next() => match r {
                Request::Reload => None,
                Request::Stop => break,
            },
            Some(t) = reload_asks.recv() => Some(t),
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let outcome = daemon.reload(&config_path, &opts).await;
        let answer = outcome.as_ref().map(|_| ()).map_err(|e| e.to_string());
        reloads.record(outcome);
        if let Some(t) = ticket {
            let _ = t.send(answer);
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    tracing::info!("shutting down");
    stopping.cancel();
    daemon.stop(&admin).await;
    shutdown.cancel();
    let _ = std::fs::remove_file(&daemon.current.admin.socket);
    Ok(())
}

/// Set by the supervisor for its worker: the runtime directory it hands
/// over from when the worker dies.
pub const STATE_DIR_ENV: &str = "LBD_STATE_DIR";

/// lbd's runtime directory, where VRRP keeps its state files: the one the
/// supervisor names, else the admin socket's directory (/run/lbd).
pub fn state_dir(cfg: &Config) -> PathBuf {
    if let Some(d) = std::env::var_os(STATE_DIR_ENV) {
        return PathBuf::from(d);
    }
    cfg.admin
        .socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("/run/lbd"), Path::to_path_buf)
}

fn raise_open_file_limit() {
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
}

/// What the signals ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Signals, AppError> {
        let on = |kind| signal(kind).map_err(AppError::Signals);
        Ok(Signals {
            hup: on(SignalKind::hangup())?,
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.hup.recv() => Request::Reload,
            _ = self.term.recv() => Request::Stop,
            _ = self.int.recv() => Request::Stop,
        }
    }
}

/// The running subsystems and the config they run (the last good one).
struct Daemon {
    current: Config,
    balancer: Balancer,
    vrrp: Vrrp,
    proxy: Proxy,
}

impl Daemon {
    /// Listeners first (bound before READY=1; VRRP tracks their health),
    /// then the proxy, then VRRP.
    async fn start(
        cfg: Config,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Result<Daemon, AppError> {
        let vrrp_metrics = VrrpMetrics::register(registry);
        let balancer = Balancer::start(cfg.tcplb.as_ref(), registry, shutdown.clone()).await?;
        let proxy = Proxy::start(
            cfg.proxy.as_ref(),
            &cfg.node.name,
            registry,
            shutdown.clone(),
        )
        .await;
        let state = StateDir::new(state_dir(&cfg));
        let vrrp = Vrrp::start(
            cfg.vrrp.as_ref(),
            vrrp_metrics,
            balancer.listener_health(),
            Some(state),
        )
        .await;
        // A VRRP peer whose adverts stop takes its node's backends down with
        // it at once (issue 13), instead of after `fall` failed checks.
        balancer.follow_vrrp_peers(crate::vrrp::peers::watch(vrrp.reporter(), shutdown));
        Ok(Daemon {
            current: cfg,
            balancer,
            vrrp,
            proxy,
        })
    }

    /// All or nothing: every subsystem prepares (the balancer binds new
    /// sockets and reads TLS files) before any commits.
    async fn reload(&mut self, path: &Path, opts: &config::LoadOptions) -> Result<(), AppError> {
        let next = config::load_with(path, opts)?;
        let tcplb = self.balancer.prepare(next.tcplb.as_ref()).await?;
        let vrrp = self.vrrp.prepare(next.vrrp.as_ref());
        let proxy = self.proxy.prepare(next.proxy.as_ref()).await?;
        self.balancer.commit(tcplb);
        self.proxy.commit(proxy).await;
        // Changed instances restart (releasing their VIP with priority 0).
        self.vrrp.commit(vrrp).await;
        if self.current.admin != next.admin {
            tracing::warn!("admin section changed: takes effect on restart");
        }
        self.current = next;
        Ok(())
    }

    /// The VIP moves first (priority 0: a backup takes over after skew
    /// time), then established sessions drain.
    async fn stop(&mut self, admin: &AdminState) {
        self.vrrp.stop().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        admin.ready.store(false, Relaxed);
        let cut = self.balancer.drain().await;
        if cut > 0 {
            tracing::warn!(cut, "shutdown grace over: sessions closed");
        }
    }
}

async fn serve_admin(
    cfg: &AdminConfig,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let unix = bind_unix(&cfg.socket).map_err(|source| AppError::AdminSocket {
        path: cfg.socket.display().to_string(),
        source,
    })?;
    tokio::spawn(serve_unix(unix, state.clone(), shutdown.clone()));
    if let Some(addr) = cfg.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::AdminListen { addr, source })?;
        tokio::spawn(serve_tcp(l, state, shutdown));
    }
    Ok(())
}

/// Reload bookkeeping: counted in metrics, shown in status.
struct ReloadBook {
    ok: Counter,
    failed: Counter,
    record: Arc<ArcSwap<ReloadRecord>>,
}

#[derive(Debug, Clone, Default)]
struct ReloadRecord {
    ok: u64,
    failed: u64,
    /// The last failed reload's problems, cleared by a good one.
    last_error: Option<String>,
    last_at: Option<Instant>,
}

impl ReloadBook {
    fn register(registry: &mut Registry) -> ReloadBook {
        let book = ReloadBook {
            ok: Counter::default(),
            failed: Counter::default(),
            record: Default::default(),
        };
        registry.register(
            "lbd_config_reloads",
            "Successful config reloads",
            book.ok.clone(),
        );
        registry.register(
            "lbd_config_reload_failures",
            "Rejected config reloads (the previous config stays)",
            book.failed.clone(),
        );
        book
    }

    fn record(&self, outcome: Result<(), AppError>) {
        let mut r = (**self.record.load()).clone();
        match outcome {
            Ok(()) => {
                self.ok.inc();
                r.ok += 1;
                r.last_error = None;
                tracing::info!("config reloaded");
            }
            Err(e) => {
                self.failed.inc();
                r.failed += 1;
                tracing::error!("config reload rejected, keeping the previous config:\n{e}");
                r.last_error = Some(e.to_string());
            }
        }
        r.last_at = Some(Instant::now());
        self.record.store(Arc::new(r));
    }
}

/// Everything `/status` reads: each subsystem's report, no locks.
struct StatusSource {
    node: String,
    started: Instant,
    path: String,
    balancer: BalancerReporter,
    vrrp: VrrpReporter,
    proxy: ProxyReporter,
    reloads: Arc<ArcSwap<ReloadRecord>>,
}

impl StatusSource {
    fn report(&self) -> StatusReport {
        let reloads = self.reloads.load();
        StatusReport {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            vrrp: self.vrrp.report(),
            tcplb: self.balancer.report(),
            proxy: self.proxy.report(),
            config: ConfigStatus {
                path: self.path.clone(),
                reloads_ok: reloads.ok,
                reloads_failed: reloads.failed,
                last_reload_error: reloads.last_error.clone(),
                last_reload_seconds_ago: reloads.last_at.map(|t| t.elapsed().as_secs()),
            },
        }
    }
}
