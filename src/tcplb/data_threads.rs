//! The threads that move the balancer's bytes: one single-threaded tokio
//! runtime per CPU, each with its own epoll instance, as haproxy runs one
//! event loop per thread (`nbthread`).
//!
//! Why not the process's multi-threaded runtime: it has one I/O driver, so
//! one worker at a time waits in epoll and hands ready sessions to the
//! others through its run queues and futex wake-ups. On two CPUs shared
//! with the clients and the backends that left a CPU idle 3-5 % of the time
//! and cost 10 % of the keep-alive requests a second against haproxy's two
//! threads (bench/tcplb-vs-haproxy.sh; haproxy with `nbthread 1` showed the
//! same idle time as lbd). Here every data thread waits on its own epoll
//! for its own sessions, and a session stays on one thread for its life:
//! no work stealing, no wake-up of another thread per request.
//!
//! Every data thread holds a duplicate of each listening socket and races
//! the others to accept; the winner hands the new session to the thread
//! with the fewest open sessions (itself on a tie), as haproxy spreads
//! accepted connections over its threads. Without the hand-off one thread
//! took a whole burst of connects (wrk's 50 at once) while the other
//! idled. A hand-off costs one cross-thread wake per connection, never per
//! request. Not `SO_REUSEPORT`: a socket of another root process that set
//! it (haproxy does) would silently share lbd's port instead of the bind
//! failing.
//!
//! `LBD_DATA_THREADS=N` sets the count (default: the CPUs this process may
//! use, cgroup quota included); `0` keeps the data path on the process's
//! runtime (the old layout, kept for measurement).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// One data thread: its runtime and what it serves (metrics
/// `lbd_data_thread_connections*`, so an operator sees the load spread).
/// Aligned so that two threads' counters, each written by its own thread,
/// never share a cache line.
#[repr(align(128))]
pub struct DataThread {
    pub index: usize,
    pub handle: Handle,
    /// Sessions that ran on this thread, all listeners together.
    pub accepted: AtomicU64,
    /// Sessions open on this thread now.
    pub active: AtomicU64,
}

impl DataThread {
    /// The thread with the fewest open sessions, this one on a tie: where
    /// a session accepted here should run.
    pub fn least_loaded(&'static self) -> &'static DataThread {
        let mut best = self;
        let mut fewest = self.active.load(Relaxed);
        for t in started_data_threads() {
            let n = t.active.load(Relaxed);
            if n < fewest {
                best = t;
                fewest = n;
            }
        }
        best
    }

    /// Counts a session that runs here; the guard counts its end.
    pub fn session_started(&'static self) -> ActiveSession {
        self.accepted.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        ActiveSession(self)
    }
}

/// Held by a session for its life on a data thread.
pub struct ActiveSession(&'static DataThread);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

static THREADS: OnceLock<Vec<DataThread>> = OnceLock::new();

/// The data threads, started at the first call; empty when there are none
/// (`LBD_DATA_THREADS=0`, or no thread could start): the caller then uses
/// its own runtime.
pub fn data_threads() -> &'static [DataThread] {
    THREADS.get_or_init(|| start(wanted()))
}

/// The data threads if they were started (metrics: a process without
/// listeners starts none).
pub fn started_data_threads() -> &'static [DataThread] {
    THREADS.get().map_or(&[], |t| &t[..])
}

fn wanted() -> usize {
    if let Ok(v) = std::env::var("LBD_DATA_THREADS") {
        match v.trim().parse::<usize>() {
            Ok(n) => return n.min(256),
            Err(_) => {
                tracing::warn!(value = %v, "LBD_DATA_THREADS is not a number; using one per CPU")
            }
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn start(n: usize) -> Vec<DataThread> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name(format!("lbd-data-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                // Drives the tasks spawned through the handle, for the
                // life of the process.
                rt.block_on(std::future::pending::<()>());
            });
        let started = match spawned {
            Ok(_) => rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::ErrorKind::Other.into())),
            Err(e) => Err(e),
        };
        match started {
            Ok(handle) => handles.push(DataThread {
                index: i,
                handle,
                accepted: AtomicU64::new(0),
                active: AtomicU64::new(0),
            }),
            Err(e) => {
                tracing::warn!(thread = i, error = %e, "cannot start a data thread; fewer will serve");
                break;
            }
        }
    }
    tracing::debug!(threads = handles.len(), "balancer data threads started");
    handles
}
