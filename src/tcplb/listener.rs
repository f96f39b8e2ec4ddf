//! One listener: its socket, the accept loop, one task per session
//! ([`super::session`]), the graceful drain, the operator's drain of one
//! backend. Reads health snapshots; sessions report what traffic found
//! (passive health) through [`ListenerHealth::mark_down`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::data_threads::{data_threads, DataThread};
use super::forward::CopyMode;
use super::session::session;
use crate::config::{ListenerConfig, OnBackendDown};
use crate::health::ListenerHealth;

/// Per-backend counters and the token that ends its sessions.
pub struct Backend {
    pub addr: SocketAddr,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// `lbd backend drain`: no new sessions; established ones go on. Lives
    /// as long as the backend stays in the listener (reloads included).
    pub drained: AtomicBool,
    /// Cancelled (and replaced) when the backend goes down and the listener
    /// says `on_backend_down: shutdown_sessions`.
    sessions: ArcSwap<CancellationToken>,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            sessions: ArcSwap::from_pointee(CancellationToken::new()),
        }
    }

    /// Cancelled when this backend's sessions must end.
    pub(super) fn sessions_token(&self) -> Arc<CancellationToken> {
        self.sessions.load_full()
    }
}

/// Why `lbd backend drain|enable` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("no listener {0:?}")]
    NoListener(String),
    #[error("listener {listener:?} has no backend {backend}")]
    NoBackend { listener: String, backend: String },
}

/// A listener's live state, shared by its accept loop and its sessions.
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    config: ArcSwap<ListenerConfig>,
    /// Replaced whole on reload; unchanged backends keep their Arc (and counters).
    backends: ArcSwap<Vec<Arc<Backend>>>,
    pub health: Arc<ListenerHealth>,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub refused_no_backend: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub(super) sequence: AtomicU64,
    limit: Arc<Semaphore>,
    limit_size: AtomicU64,
    pub(super) copy_mode: CopyMode,
    /// Cancelled to stop accepting (removal on reload, shutdown).
    stop_accepting: CancellationToken,
    /// Cancelled to end every session at once (after the drain grace).
    pub(super) kill_sessions: CancellationToken,
    sessions: TaskTracker,
    pub draining: AtomicBool,
    /// Hedged connects started, and those the hedge won.
    pub hedges: AtomicU64,
    pub hedge_wins: AtomicU64,
}

impl Listener {
    /// Starts accepting on `socket` (bound by [`bind`] before anything
    /// changed, so a bind error refuses the start or the reload).
    pub fn start(
        cfg: ListenerConfig,
        socket: std::net::TcpListener,
        health: Arc<ListenerHealth>,
        copy_mode: CopyMode,
    ) -> Arc<Listener> {
        let listener = Arc::new(Listener {
            name: cfg.name.clone(),
            bind: cfg.bind,
            backends: ArcSwap::from_pointee(
                cfg.backends
                    .iter()
                    .map(|a| Arc::new(Backend::new(*a)))
                    .collect(),
            ),
            health,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            refused_no_backend: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
            limit: Arc::new(Semaphore::new(cfg.max_connections as usize)),
            limit_size: AtomicU64::new(u64::from(cfg.max_connections)),
            copy_mode,
            stop_accepting: CancellationToken::new(),
            kill_sessions: CancellationToken::new(),
            sessions: TaskTracker::new(),
            draining: AtomicBool::new(false),
            hedges: AtomicU64::new(0),
            hedge_wins: AtomicU64::new(0),
            config: ArcSwap::from_pointee(cfg),
        });
        spawn_accept_loops(&listener, socket);
        tokio::spawn(watch_backend_down(listener.clone()));
        listener
    }

    pub fn config(&self) -> Arc<ListenerConfig> {
        self.config.load_full()
    }

    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// Applies a reloaded config with the same bind address: the backend
    /// set swaps atomically; established sessions are untouched.
    pub fn update(&self, cfg: ListenerConfig) {
        let old = self.backends.load();
        let next: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|a| {
                old.iter()
                    .find(|b| b.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(*a)))
            })
            .collect();
        self.backends.store(Arc::new(next));
        let want = u64::from(cfg.max_connections);
        let have = self.limit_size.swap(want, Relaxed);
        if want > have {
            self.limit.add_permits((want - have) as usize);
        } else if have > want {
            // Permits held by live sessions are taken back as they end.
            let limit = self.limit.clone();
            let mut missing = (have - want) as usize;
            tokio::spawn(async move {
                while missing > 0 {
                    missing -= limit.forget_permits(missing);
                    if missing > 0 {
                        match limit.clone().acquire_owned().await {
                            Ok(p) => {
                                p.forget();
                                missing -= 1;
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
        }
        self.config.store(Arc::new(cfg));
    }

    /// The delay after which a connect is hedged now.
    pub fn hedge_delay(&self, cfg: &ListenerConfig) -> Duration {
        self.health
            .connect_times
            .delay(cfg.hedge.min_delay, cfg.hedge.max_delay)
    }

    /// `lbd backend drain|enable`: takes `backend` (as status shows it) out
    /// of rotation or puts it back, at once. Returns whether it was drained
    /// before.
    pub fn set_drained(&self, backend: &str, drained: bool) -> Result<bool, DrainError> {
        let backends = self.backends();
        let b = backends
            .iter()
            .find(|b| b.addr.to_string() == backend || backend.parse() == Ok(b.addr))
            .ok_or_else(|| DrainError::NoBackend {
                listener: self.name.clone(),
                backend: backend.to_string(),
            })?;
        let was = b.drained.swap(drained, Relaxed);
        if was != drained {
            tracing::warn!(listener = %self.name, backend = %b.addr,
                state = if drained { "DRAINED" } else { "ENABLED" }, "backend drain changed by the operator");
        }
        Ok(was)
    }

    /// Stops accepting; established sessions go on until they end or `kill`.
    pub fn stop_accepting(&self) {
        self.draining.store(true, Relaxed);
        self.stop_accepting.cancel();
    }

    /// Waits until every session has ended, at most `grace`; then ends the
    /// rest. Returns how many were cut.
    pub async fn drain(&self, grace: Duration) -> u64 {
        self.stop_accepting();
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let cut = self.active.load(Relaxed);
        self.kill_sessions.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sessions.wait()).await;
        cut
    }
}

/// Binds and listens on `addr`: every step of starting a listener that can
/// fail. Connections queue in the backlog until [`Listener::start`] accepts
/// them.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    // A backup node binds the listener on the VIP before it holds it.
    #[cfg(target_os = "linux")]
    {
        if addr.is_ipv4() {
            let _ = socket.set_freebind_v4(true);
        } else {
            let _ = socket.set_freebind_v6(true);
            let _ = socket.set_only_v6(false);
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One accept loop per data thread, each on its own duplicate of `socket`,
/// handing what it accepts to the least loaded thread (see
/// [`super::data_threads`]); on the caller's runtime when there are
/// no data threads. A duplicate that cannot be made (descriptor limit)
/// leaves that thread out; the last thread takes `socket` itself, so one
/// loop always runs.
fn spawn_accept_loops(listener: &Arc<Listener>, socket: std::net::TcpListener) {
    let threads = data_threads();
    let Some((last, others)) = threads.split_last() else {
        tokio::spawn(accept_on(listener.clone(), socket, None));
        return;
    };
    for thread in others {
        match socket.try_clone() {
            Ok(dup) => {
                thread
                    .handle
                    .spawn(accept_on(listener.clone(), dup, Some(thread)));
            }
            Err(e) => tracing::warn!(listener = %listener.name, thread = thread.index, error = %e,
                "cannot share the listening socket with a data thread"),
        }
    }
    last.handle
        .spawn(accept_on(listener.clone(), socket, Some(last)));
}

/// Registers `socket` with the runtime it runs on, then accepts.
async fn accept_on(
    listener: Arc<Listener>,
    socket: std::net::TcpListener,
    thread: Option<&'static DataThread>,
) {
    match TcpListener::from_std(socket) {
        Ok(socket) => accept_loop(listener, socket, thread).await,
        Err(e) => tracing::error!(listener = %listener.name, error = %e,
            "cannot register the listening socket; this thread does not accept"),
    }
}

async fn accept_loop(
    listener: Arc<Listener>,
    socket: TcpListener,
    thread: Option<&'static DataThread>,
) {
    loop {
        // At max_connections new clients wait in the kernel's backlog, as
        // with haproxy's maxconn, instead of being refused.
        let permit = tokio::select! {
            _ = listener.stop_accepting.cancelled() => break,
            p = listener.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = listener.stop_accepting.cancelled() => break,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                let l = listener.clone();
                let Some(here) = thread else {
                    listener
                        .sessions
                        .spawn(async move { session(l, client, peer, permit).await });
                    continue;
                };
                let to = here.least_loaded();
                let counted = to.session_started();
                if std::ptr::eq(to, here) {
                    listener.sessions.spawn(async move {
                        session(l, client, peer, permit).await;
                        drop(counted);
                    });
                    continue;
                }
                // Moves to the other thread's epoll: deregistered here,
                // registered there.
                let client = match client.into_std() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(listener = %listener.name, %peer, error = %e,
                            "cannot hand a connection to another data thread");
                        continue;
                    }
                };
                let fut = async move {
                    match TcpStream::from_std(client) {
                        Ok(client) => session(l, client, peer, permit).await,
                        Err(e) => tracing::warn!(listener = %l.name, %peer, error = %e,
                            "cannot register a handed-over connection"),
                    }
                    drop(counted);
                };
                listener.sessions.spawn_on(fut, &to.handle);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = %listener.name, bind = %listener.bind, "stopped accepting");
}

/// With `on_backend_down: shutdown_sessions`, ends the sessions of a backend
/// when its health flips to down.
async fn watch_backend_down(listener: Arc<Listener>) {
    let mut flips = listener.health.subscribe();
    let mut was_up: BTreeMap<SocketAddr, bool> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = listener.stop_accepting.cancelled() => return,
            changed = flips.changed() => if changed.is_err() { return },
        }
        let snap = flips.borrow_and_update().clone();
        let policy = listener.config().on_backend_down;
        for (addr, up) in &snap.backends {
            let before = was_up.insert(*addr, *up).unwrap_or(true);
            if before && !up && policy == OnBackendDown::ShutdownSessions {
                if let Some(b) = listener.backends().iter().find(|b| b.addr == *addr) {
                    let old = b.sessions.swap(Arc::new(CancellationToken::new()));
                    old.cancel();
                }
            }
        }
    }
}
