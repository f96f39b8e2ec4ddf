//! One listener: its socket, the accept loop, one task per session (backend
//! choice with retries, then [`forward`](super::forward)), the graceful
//! drain. Reads health snapshots, never writes them.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::forward::{forward, idle_watch, keepalive, CopyMode, Direction};
use super::select::{select, Candidate, Pick};
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
            sessions: ArcSwap::from_pointee(CancellationToken::new()),
        }
    }
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
    sequence: AtomicU64,
    limit: Arc<Semaphore>,
    limit_size: AtomicU64,
    copy_mode: CopyMode,
    /// Cancelled to stop accepting (removal on reload, shutdown).
    stop_accepting: CancellationToken,
    /// Cancelled to end every session at once (after the drain grace).
    kill_sessions: CancellationToken,
    sessions: TaskTracker,
    pub draining: AtomicBool,
}

impl Listener {
    /// Starts accepting on `socket` (bound by [`bind`] before anything
    /// changed, so a bind error refuses the start or the reload).
    pub fn start(
        cfg: ListenerConfig,
        socket: TcpListener,
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
            config: ArcSwap::from_pointee(cfg),
        });
        tokio::spawn(accept_loop(listener.clone(), socket));
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

/// Binds and listens on `addr`, registered with the runtime: every step of
/// starting a listener that can fail. Connections queue in the backlog
/// until [`Listener::start`] accepts them.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
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
    TcpListener::from_std(socket.into())
}

async fn accept_loop(listener: Arc<Listener>, socket: TcpListener) {
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
                listener
                    .sessions
                    .spawn(async move { session(l, client, peer, permit).await });
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

async fn session(
    listener: Arc<Listener>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    listener.total.fetch_add(1, Relaxed);
    let cfg = listener.config();
    let Some((backend, upstream)) = connect_backend(&listener, &cfg, peer).await else {
        // Dropping the client socket closes it at once.
        return;
    };
    keepalive(&client);
    keepalive(&upstream);
    backend.active.fetch_add(1, Relaxed);
    backend.total.fetch_add(1, Relaxed);
    listener.active.fetch_add(1, Relaxed);
    let backend_down = backend.sessions.load_full();
    let activity = AtomicU64::new(0);
    let moved = |dir: Direction, n: u64| {
        let (l, b) = match dir {
            Direction::ToBackend => (&listener.bytes_in, &backend.bytes_in),
            Direction::ToClient => (&listener.bytes_out, &backend.bytes_out),
        };
        l.fetch_add(n, Relaxed);
        b.fetch_add(n, Relaxed);
        activity.fetch_add(1, Relaxed);
    };
    let copy = forward(listener.copy_mode, client, upstream, moved);
    let idle = idle_watch(cfg.idle_timeout, &activity);
    tokio::select! {
        _ = copy => {}
        _ = idle => tracing::debug!(listener = %listener.name, %peer, "idle timeout"),
        _ = backend_down.cancelled() => tracing::info!(listener = %listener.name, %peer, backend = %backend.addr, "session closed: backend down"),
        _ = listener.kill_sessions.cancelled() => {}
    }
    backend.active.fetch_sub(1, Relaxed);
    listener.active.fetch_sub(1, Relaxed);
}

/// Picks a backend and connects, trying others on failure up to `retries`.
async fn connect_backend(
    listener: &Listener,
    cfg: &ListenerConfig,
    peer: SocketAddr,
) -> Option<(Arc<Backend>, TcpStream)> {
    let snapshot = listener.health.snapshot();
    let backends = listener.backends();
    let mut tried: Vec<SocketAddr> = Vec::new();
    for attempt in 0..=cfg.retries {
        let candidates: Vec<Candidate> = backends
            .iter()
            .map(|b| Candidate {
                addr: b.addr,
                // A backend new in this reload has no check yet: usable.
                usable: snapshot
                    .backends
                    .iter()
                    .find(|(a, _)| *a == b.addr)
                    .is_none_or(|(_, up)| *up),
                active: b.active.load(Relaxed),
            })
            .collect();
        let pick = Pick {
            client: peer.ip(),
            sequence: listener.sequence.fetch_add(1, Relaxed),
            random: (fastrand::u64(..), fastrand::u64(..)),
        };
        let Some(i) = select(cfg.balance, &candidates, &tried, pick) else {
            if attempt == 0 {
                listener.refused_no_backend.fetch_add(1, Relaxed);
                tracing::debug!(listener = %listener.name, %peer, "no healthy backend: connection closed");
            } else {
                listener.connect_failures.fetch_add(1, Relaxed);
            }
            return None;
        };
        let backend = backends[i].clone();
        match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => return Some((backend, stream)),
            Ok(Err(e)) => {
                tracing::debug!(listener = %listener.name, backend = %backend.addr, error = %e, "connect failed");
            }
            Err(_) => {
                tracing::debug!(listener = %listener.name, backend = %backend.addr, "connect timed out");
            }
        }
        backend.connect_errors.fetch_add(1, Relaxed);
        tried.push(backend.addr);
    }
    listener.connect_failures.fetch_add(1, Relaxed);
    None
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
