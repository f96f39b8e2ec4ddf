//! The proxy's entry points, as every subsystem has them: [`Proxy::start`]
//! from its config section, a reload as [`Proxy::prepare`] then
//! [`Proxy::commit`] (or both at once, [`Proxy::apply`]), and
//! [`Proxy::report`].
//!
//! A reload is computed as a difference and is all-or-nothing: `prepare`
//! checks and readies everything that can fail (a mode change is refused,
//! a new kubeconfig is read, new healthz/metrics addresses are bound)
//! while nothing changes; dropping what it returns changes nothing;
//! `commit` cannot fail. What changes:
//! - scheduler, sync periods, exclude CIDRs, cluster CIDRs, masqueradeAll,
//!   nodePortAddresses, strict ARP, IPVS timeouts: handed to the running
//!   loop, which makes the next sync a full one (kernel state is kept);
//! - kubeconfig or the node name (hostnameOverride): the proxy's loop
//!   restarts with new watchers (the kernel is left as is and the new loop
//!   adopts it, as after a restart of lbd);
//! - healthz/metrics addresses: the new listener replaces the old one;
//! - mode: refused (see [`ProxyError::ModeChange`]).
//!
//! A proxy that could not start, or stopped, is started again by a reload;
//! its failure then shows in the status, not as a rejected reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::driver::Runner;
use super::engine::EngineSettings;
use super::kernel::{DataPlane, IpvsDataPlane};
use super::kube::client_from_config;
use super::metrics::ProxyMetrics;
use super::report::ProxyReporter;
use super::server::{serve_healthz, serve_metrics, ProxyHealth};
use super::ProxyError;
use crate::config::{ProxyConfig, ProxyMode};
use crate::status::{ProxyDataPlane, ProxyStatus};

/// What the status says when `mode: nftables` is asked for.
const NFTABLES_MISSING: &str = "mode nftables is not implemented; use ipvs";

/// Makes the data plane a start (or a restart of the watchers) programs:
/// the real kernel's IPVS data plane, or the tests' in-memory one.
pub type PlaneFactory = Arc<dyn Fn() -> Result<Box<dyn DataPlane>, ProxyError> + Send + Sync>;

/// The Service proxy subsystem.
pub struct Proxy {
    /// `node.name`, before hostnameOverride.
    node_name: String,
    mode: ProxyMode,
    reporter: ProxyReporter,
    metrics: ProxyMetrics,
    health: ProxyHealth,
    /// What metrics_bind serves: kube-proxy's names and lbd's.
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    planes: PlaneFactory,
    running: Option<Running>,
}

/// A proxy that started: its loop and servers, and what they run with.
struct Running {
    cfg: ProxyConfig,
    settings: EngineSettings,
    client: kube::Client,
    updates: mpsc::UnboundedSender<EngineSettings>,
    /// Everything this start spawned; the loop cancels it when it fails.
    stop: CancellationToken,
    runner: RunnerTask,
    healthz: Option<Server>,
    metrics: Option<Server>,
}

struct RunnerTask {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum ServerKind {
    /// kube-proxy's healthz port: `/healthz`, `/livez`.
    Healthz,
    /// kube-proxy's metrics port: `/metrics`, `/healthz`, `/proxyMode`.
    Metrics,
}

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A reload made ready by [`Proxy::prepare`]: nothing has changed yet, and
/// dropping it changes nothing.
pub struct ProxyReload(Reload);

enum Reload {
    /// Nothing to change (same settings, or no proxy to run).
    Keep,
    /// Start a proxy that is not running.
    Start(Box<ProxyConfig>),
    /// Change a running one.
    Change(Box<Change>),
}

struct Change {
    cfg: ProxyConfig,
    settings: EngineSettings,
    /// New watchers (the kubeconfig or the node name changed).
    restart: Option<(kube::Client, Box<dyn DataPlane>)>,
    healthz: Rebind,
    metrics: Rebind,
}

/// What becomes of one server.
enum Rebind {
    Keep,
    Off,
    To(TcpListener),
}

fn mode_of(cfg: Option<&ProxyConfig>) -> ProxyMode {
    cfg.map_or(ProxyMode::None, |c| c.mode)
}

async fn bind(
    addr: Option<SocketAddr>,
    what: &'static str,
) -> Result<Option<TcpListener>, ProxyError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| ProxyError::Bind { what, addr, source })
}

async fn rebind(
    old: Option<&Server>,
    new: Option<SocketAddr>,
    what: &'static str,
) -> Result<Rebind, ProxyError> {
    if old.map(|s| s.addr) == new {
        return Ok(Rebind::Keep);
    }
    Ok(match bind(new, what).await? {
        Some(l) => Rebind::To(l),
        None => Rebind::Off,
    })
}

impl Proxy {
    /// Starts the proxy from its config section (None: no proxy). Never
    /// fails: what keeps it from running is logged and shown in the
    /// status, and never takes the VIP or the balancer down with it. lbd's
    /// own proxy metrics (`lbd_proxy_*`) go into `registry`.
    pub async fn start(
        cfg: Option<&ProxyConfig>,
        node_name: &str,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Proxy {
        let kernel: PlaneFactory = Arc::new(|| {
            let plane: Box<dyn DataPlane> = Box::new(IpvsDataPlane::kernel()?);
            Ok(plane)
        });
        Self::start_with(cfg, node_name, registry, shutdown, kernel).await
    }

    /// [`Proxy::start`] programming the data planes `planes` makes.
    pub async fn start_with(
        cfg: Option<&ProxyConfig>,
        node_name: &str,
        registry: &mut Registry,
        shutdown: CancellationToken,
        planes: PlaneFactory,
    ) -> Proxy {
        let mode = mode_of(cfg);
        let metrics = ProxyMetrics::new();
        if mode == ProxyMode::Ipvs {
            metrics.register_lbd(registry);
        }
        let mut kube_proxy = Registry::default();
        metrics.register_kube_proxy(&mut kube_proxy);
        metrics.register_lbd(&mut kube_proxy);
        let mut p = Proxy {
            node_name: node_name.to_string(),
            mode,
            reporter: ProxyReporter::default(),
            metrics,
            health: ProxyHealth::new(Duration::from_secs(60)),
            registry: Arc::new(kube_proxy),
            shutdown,
            planes,
            running: None,
        };
        match cfg {
            Some(cfg) if mode == ProxyMode::Ipvs => p.launch(cfg).await,
            _ if mode == ProxyMode::Nftables => {
                tracing::error!(
                    "proxy mode nftables is not implemented: no Service rules are programmed"
                );
                p.reporter
                    .failed(ProxyDataPlane::Nftables, NFTABLES_MISSING.into());
            }
            _ => {}
        }
        p
    }

    /// The proxy's status now (None: no proxy).
    pub fn report(&self) -> Option<ProxyStatus> {
        self.reporter.report()
    }

    /// A handle that reports the status from elsewhere (the admin server).
    pub fn reporter(&self) -> ProxyReporter {
        self.reporter.clone()
    }

    /// A reload, checked: see the module's doc.
    pub async fn prepare(&self, next: Option<&ProxyConfig>) -> Result<ProxyReload, ProxyError> {
        let mode = mode_of(next);
        if mode != self.mode {
            return Err(ProxyError::ModeChange {
                from: mode_name(self.mode),
                to: mode_name(mode),
            });
        }
        let Some(cfg) = next.filter(|_| mode == ProxyMode::Ipvs) else {
            return Ok(ProxyReload(Reload::Keep));
        };
        let Some(r) = self.running.as_ref().filter(|r| !r.stop.is_cancelled()) else {
            return Ok(ProxyReload(Reload::Start(Box::new(cfg.clone()))));
        };
        let settings = EngineSettings::from_config(cfg, &self.node_name);
        let restart =
            if cfg.kubeconfig != r.cfg.kubeconfig || settings.node_name != r.settings.node_name {
                let client = if cfg.kubeconfig == r.cfg.kubeconfig {
                    r.client.clone()
                } else {
                    client_from_config(cfg).await?
                };
                Some((client, (self.planes)()?))
            } else {
                None
            };
        let healthz = rebind(r.healthz.as_ref(), cfg.healthz_bind, "healthz_bind").await?;
        let metrics = rebind(r.metrics.as_ref(), cfg.metrics_bind, "metrics_bind").await?;
        Ok(ProxyReload(Reload::Change(Box::new(Change {
            cfg: cfg.clone(),
            settings,
            restart,
            healthz,
            metrics,
        }))))
    }

    /// Applies a prepared reload; cannot fail.
    pub async fn commit(&mut self, reload: ProxyReload) {
        match reload.0 {
            Reload::Keep => {}
            Reload::Start(cfg) => {
                self.stop().await;
                self.launch(&cfg).await;
            }
            Reload::Change(c) => self.change(*c).await,
        }
    }

    /// [`Proxy::prepare`] then [`Proxy::commit`].
    pub async fn apply(&mut self, next: Option<&ProxyConfig>) -> Result<(), ProxyError> {
        let r = self.prepare(next).await?;
        self.commit(r).await;
        Ok(())
    }

    /// Starts the loop and the servers; what fails goes to the status.
    async fn launch(&mut self, cfg: &ProxyConfig) {
        match self.try_launch(cfg).await {
            Ok(r) => self.running = Some(r),
            Err(e) => {
                tracing::error!(error = %e, "service proxy cannot start");
                self.reporter.failed(ProxyDataPlane::Ipvs, e.to_string());
            }
        }
    }

    async fn try_launch(&self, cfg: &ProxyConfig) -> Result<Running, ProxyError> {
        let settings = EngineSettings::from_config(cfg, &self.node_name);
        let healthz = bind(cfg.healthz_bind, "healthz_bind").await?;
        let metrics = bind(cfg.metrics_bind, "metrics_bind").await?;
        let client = client_from_config(cfg).await?;
        let plane = (self.planes)()?;
        // Our own token: ending the proxy stops its servers, not the daemon.
        let stop = self.shutdown.child_token();
        self.health.set_timeout(settings.sync_period * 2);
        let (updates, rx) = mpsc::unbounded_channel();
        let runner = self.spawn_runner(&stop, &settings, plane, client.clone(), rx);
        Ok(Running {
            cfg: cfg.clone(),
            settings,
            client,
            updates,
            healthz: healthz.map(|l| self.serve(ServerKind::Healthz, l, cfg.healthz_bind, &stop)),
            metrics: metrics.map(|l| self.serve(ServerKind::Metrics, l, cfg.metrics_bind, &stop)),
            runner,
            stop,
        })
    }

    /// The loop, on its own task. When it fails, the status says why and
    /// its servers stop with it (as kube-proxy's do when it exits).
    fn spawn_runner(
        &self,
        stop: &CancellationToken,
        settings: &EngineSettings,
        plane: Box<dyn DataPlane>,
        client: kube::Client,
        updates: mpsc::UnboundedReceiver<EngineSettings>,
    ) -> RunnerTask {
        let runner = Runner {
            settings: settings.clone(),
            plane,
            reporter: self.reporter.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        };
        let reporter = self.reporter.clone();
        let all = stop.clone();
        let own = stop.child_token();
        let token = own.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = runner.run_with_updates(client, updates, token).await {
                tracing::error!(error = %e, "service proxy stopped");
                reporter.failed(ProxyDataPlane::Ipvs, e.to_string());
                all.cancel();
            }
        });
        RunnerTask { stop: own, task }
    }

    /// Serves `kind` on `l`, known by the address the config asked for
    /// (so an unchanged config compares equal even where port 0 bound
    /// another), stopping with its own child of `stop`.
    fn serve(
        &self,
        kind: ServerKind,
        l: TcpListener,
        addr: Option<SocketAddr>,
        stop: &CancellationToken,
    ) -> Server {
        let addr = addr
            .or_else(|| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = stop.child_token();
        let health = self.health.clone();
        let task = match kind {
            ServerKind::Healthz => tokio::spawn(serve_healthz(l, health, stop.clone())),
            ServerKind::Metrics => tokio::spawn(serve_metrics(
                l,
                self.registry.clone(),
                health,
                stop.clone(),
            )),
        };
        Server { addr, stop, task }
    }

    async fn change(&mut self, c: Change) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        match c.restart {
            Some((client, plane)) => {
                tracing::info!("proxy: kubeconfig or node name changed, restarting its watchers");
                r.runner.stop.cancel();
                let _ = (&mut r.runner.task).await;
                let (updates, rx) = mpsc::unbounded_channel();
                r.runner = self.spawn_runner(&r.stop, &c.settings, plane, client.clone(), rx);
                r.client = client;
                r.updates = updates;
            }
            None if c.settings != r.settings => {
                // The loop is gone only if it failed; the next reload
                // starts it again.
                let _ = r.updates.send(c.settings.clone());
            }
            None => {}
        }
        self.health.set_timeout(c.settings.sync_period * 2);
        r.healthz = self
            .rebound(
                ServerKind::Healthz,
                r.healthz,
                c.healthz,
                c.cfg.healthz_bind,
                &r.stop,
            )
            .await;
        r.metrics = self
            .rebound(
                ServerKind::Metrics,
                r.metrics,
                c.metrics,
                c.cfg.metrics_bind,
                &r.stop,
            )
            .await;
        r.cfg = c.cfg;
        r.settings = c.settings;
        self.running = Some(r);
    }

    /// The server `kind` after a reload: the old one kept, or stopped (and
    /// its listener closed) before the new one serves.
    async fn rebound(
        &self,
        kind: ServerKind,
        old: Option<Server>,
        rebind: Rebind,
        addr: Option<SocketAddr>,
        stop: &CancellationToken,
    ) -> Option<Server> {
        match rebind {
            Rebind::Keep => old,
            Rebind::Off => stop_server(old).await,
            Rebind::To(l) => {
                stop_server(old).await;
                Some(self.serve(kind, l, addr, stop))
            }
        }
    }

    /// Stops what a start spawned (the kernel is left as it is).
    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.cancel();
            let _ = r.runner.task.await;
        }
    }
}

/// Stops a server and waits until its listener is closed.
async fn stop_server(s: Option<Server>) -> Option<Server> {
    if let Some(s) = s {
        s.stop.cancel();
        let _ = s.task.await;
    }
    None
}

pub(crate) fn mode_name(m: ProxyMode) -> &'static str {
    match m {
        ProxyMode::Ipvs => "ipvs",
        ProxyMode::Nftables => "nftables",
        ProxyMode::None => "none",
    }
}
