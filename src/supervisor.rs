//! `lbd run` is two processes of the same binary: this supervisor and the
//! worker it starts (`LBD_ROLE=worker`, shown as `lbd-worker`), which does
//! everything else. The supervisor is what systemd sees as the unit's main
//! PID and what the static pod's container runs as PID 1; it holds no
//! sockets, no config beyond where the state files are, and does little
//! that could fail:
//!
//! - SIGTERM, SIGINT and SIGHUP go on to the worker (a graceful stop, a
//!   reload); when the worker has stopped, the supervisor exits with its
//!   status.
//! - systemd's notifications (READY=1, RELOADING=1, STOPPING=1) come from
//!   the worker through a relay socket in the runtime directory and go on
//!   from the supervisor, the main PID, so `NotifyAccess=main` holds.
//! - When the worker dies otherwise (a panic, an OOM kill, SIGKILL of that
//!   process), the VIPs it held are handed over at once from its state
//!   files ([`crate::vrrp::handover`]: priority 0, then removal when a
//!   backup advertises), so peers take over within their skew time and no
//!   node keeps the VIP after that. Then a new worker starts (at once the
//!   first time, then after 1 s, 2 s, ... 30 s while it keeps dying within
//!   a minute of its start).
//! - The worker gets SIGTERM if the supervisor dies first
//!   (PR_SET_PDEATHSIG), and hands its VIPs over itself.
//! - As PID 1 it reaps every orphan (notify scripts of a dead worker).
//!
//! Where the whole tree dies at once (SIGKILL of the cgroup, the node
//! losing power), nobody sends priority 0: peers take over after their
//! Master_Down_Interval and the dead node's VIPs lapse with their lifetime.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::net::UnixDatagram;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::app::{state_dir, STATE_DIR_ENV};
use crate::vrrp::handover;
use crate::vrrp::state::StateDir;

/// Set for the worker.
pub const ROLE_ENV: &str = "LBD_ROLE";
const WORKER: &str = "worker";
/// The worker's name in `ps`.
pub const WORKER_NAME: &str = "lbd-worker";

/// A worker that lived this long was healthy: the next crash restarts it
/// at once again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// True in the worker (and removes the marker, so that notify scripts and
/// their children do not inherit it).
pub fn take_worker_role() -> bool {
    let worker = std::env::var_os(ROLE_ENV).is_some_and(|v| v == WORKER);
    if worker {
        std::env::remove_var(ROLE_ENV);
        if let Err(e) = crate::sys::process::set_name(WORKER_NAME) {
            tracing::debug!(error = %e, "cannot set the process name");
        }
    }
    worker
}

/// Runs the supervisor for `lbd run -c CONFIG` until the worker has
/// stopped; the process's exit status.
pub fn run(config_path: &Path) -> u8 {
    // The config is read for one thing: where the worker keeps its state
    // files. A config that does not load is reported as the worker would.
    let cfg = match crate::config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let dir = state_dir(&cfg);
    drop(cfg);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbd: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(supervise(dir))
}

/// How the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Exited with this status by itself (0: stopped as asked; 1: could not
    /// start).
    Exited(i32),
    /// Killed by a signal (a panic aborts: SIGABRT).
    Killed(Signal),
}

/// What to do about it (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Exit with this status.
    Exit(u8),
    /// Hand over, then start a new worker (or exit, when stopping).
    HandOver,
}

fn next(end: End) -> Next {
    match end {
        // A clean stop, or a worker that could not start (bad config, a
        // port taken): nothing to hand over, nothing a restart would fix.
        End::Exited(0) => Next::Exit(0),
        End::Exited(1) => Next::Exit(1),
        // A signal, or 101: a panic that unwound out of main.
        End::Exited(_) | End::Killed(_) => Next::HandOver,
    }
}

/// Delay before the next worker: none after a healthy run, then doubling.
fn restart_delay(previous: Option<Duration>, ran: Duration) -> Duration {
    match previous {
        _ if ran >= HEALTHY_RUN => Duration::ZERO,
        None => Duration::ZERO,
        Some(d) if d.is_zero() => Duration::from_secs(1),
        Some(d) => (d * 2).min(RESTART_MAX),
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    child: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            child: signal(SignalKind::child())?,
        })
    }
}

async fn supervise(dir: PathBuf) -> u8 {
    // Before the first worker: none of its signals may be missed.
    let mut sig = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lbd: signals: {e}");
            return 1;
        }
    };
    let relay = NotifyRelay::open(&dir);
    let mut stopping = false;
    let mut delay: Option<Duration> = None;
    loop {
        let started = Instant::now();
        let pid = match spawn_worker(&dir, relay.as_ref().map(|r| r.path.as_path())) {
            Ok(pid) => pid,
            Err(e) => {
                eprintln!("lbd: cannot start the worker: {e}");
                return 1;
            }
        };
        let end = loop {
            tokio::select! {
                _ = sig.term.recv() => { stopping = true; forward(pid, Signal::SIGTERM) }
                _ = sig.int.recv() => { stopping = true; forward(pid, Signal::SIGINT) }
                _ = sig.hup.recv() => forward(pid, Signal::SIGHUP),
                _ = sig.child.recv() => if let Some(end) = reap(pid) { break end },
                _ = relay_one(relay.as_ref()) => {}
            }
        };
        match next(end) {
            Next::Exit(code) => return code,
            Next::HandOver => {}
        }
        let why = match end {
            End::Exited(c) => format!("exited with status {c}"),
            End::Killed(s) => format!("killed by {s}"),
        };
        tracing::error!("worker {pid} {why}: handing its VIPs over");
        if let Some(r) = &relay {
            r.tell(&format!(
                "STATUS=worker {why}; VIPs handed over; restarting"
            ));
        }
        for h in handover::hand_over(&StateDir::new(&dir)).await {
            tracing::warn!(instance = %h.instance, priority_zero = h.priority_zero,
                successor = ?h.successor, removed = h.removed, took = ?h.took,
                "VIPs of the dead worker handed over");
        }
        if stopping {
            return 1;
        }
        let d = restart_delay(delay, started.elapsed());
        delay = Some(d);
        if !d.is_zero() {
            tracing::warn!(delay = ?d, "worker keeps dying: waiting before the next");
        }
        let wake = tokio::time::sleep(d);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                _ = sig.term.recv() => return 0,
                _ = sig.int.recv() => return 0,
                _ = sig.hup.recv() => {}
                _ = sig.child.recv() => { reap(Pid::from_raw(-1)); }
            }
        }
    }
}

fn forward(pid: Pid, s: Signal) {
    if let Err(e) = kill(pid, s) {
        tracing::warn!(worker = %pid, signal = %s, error = %e, "cannot signal the worker");
    }
}

/// Reaps every child that ended (orphans too, as PID 1 must); the
/// worker's end if it is among them.
fn reap(worker: Pid) -> Option<End> {
    let mut end = None;
    // Bounded: one call per ended child.
    for _ in 0..10_000 {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == worker => end = Some(End::Exited(code)),
            Ok(WaitStatus::Signaled(pid, s, _)) if pid == worker => end = Some(End::Killed(s)),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
    end
}

/// The worker: this binary again, same arguments, `LBD_ROLE=worker`.
fn spawn_worker(dir: &Path, notify: Option<&Path>) -> std::io::Result<Pid> {
    // /proc/self/exe: the running binary even if a package upgrade
    // replaced the file (the upgrade takes effect at the next restart).
    let mut cmd = Command::new("/proc/self/exe");
    let args: Vec<OsString> = std::env::args_os().collect();
    use std::os::unix::process::CommandExt;
    cmd.arg0(args.first().cloned().unwrap_or_else(|| "lbd".into()))
        .args(&args[1.min(args.len())..])
        .env(ROLE_ENV, WORKER)
        .env(STATE_DIR_ENV, dir);
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    crate::sys::process::die_with_parent(&mut cmd, Signal::SIGTERM);
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// systemd's notification socket, relayed: the worker sends to ours, we
/// send on from the main PID.
struct NotifyRelay {
    sock: UnixDatagram,
    path: PathBuf,
    upstream: OsString,
}

impl NotifyRelay {
    /// None without NOTIFY_SOCKET (not under systemd's Type=notify).
    fn open(dir: &Path) -> Option<NotifyRelay> {
        let upstream = std::env::var_os("NOTIFY_SOCKET")?;
        let path = dir.join(format!("notify-{}.sock", std::process::id()));
        let bound = std::fs::create_dir_all(dir).and_then(|()| {
            let _ = std::fs::remove_file(&path);
            UnixDatagram::bind(&path)
        });
        match bound {
            Ok(sock) => Some(NotifyRelay {
                sock,
                path,
                upstream,
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot open the notify relay: the worker's READY=1 would not reach systemd");
                None
            }
        }
    }

    /// Sends `msg` upstream, from this process.
    fn tell(&self, msg: &str) {
        if let Err(e) = send_upstream(&self.upstream, msg.as_bytes()) {
            tracing::warn!(error = %e, "notify socket");
        }
    }
}

impl Drop for NotifyRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Relays one notification; never returns without a relay.
async fn relay_one(relay: Option<&NotifyRelay>) {
    let Some(r) = relay else {
        return std::future::pending().await;
    };
    let mut buf = [0u8; 4096];
    match r.sock.recv(&mut buf).await {
        Ok(n) => {
            if let Err(e) = send_upstream(&r.upstream, &buf[..n]) {
                tracing::warn!(error = %e, "notify socket");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "notify relay");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A datagram to systemd's socket: a path, or `@name` in the abstract
/// namespace.
fn send_upstream(upstream: &OsString, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = upstream.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg, &addr)?;
    } else {
        sock.send_to(msg, Path::new(upstream))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_end_of_a_worker_means() {
        assert_eq!(next(End::Exited(0)), Next::Exit(0));
        assert_eq!(next(End::Exited(1)), Next::Exit(1));
        assert_eq!(next(End::Exited(101)), Next::HandOver);
        assert_eq!(next(End::Killed(Signal::SIGKILL)), Next::HandOver);
        assert_eq!(next(End::Killed(Signal::SIGABRT)), Next::HandOver);
    }

    #[test]
    fn restarts_back_off_while_the_worker_keeps_dying() {
        let s = Duration::from_secs;
        assert_eq!(restart_delay(None, s(1)), Duration::ZERO);
        assert_eq!(restart_delay(Some(Duration::ZERO), s(1)), s(1));
        assert_eq!(restart_delay(Some(s(1)), s(1)), s(2));
        assert_eq!(restart_delay(Some(s(16)), s(1)), s(30));
        assert_eq!(restart_delay(Some(s(30)), s(1)), s(30));
        assert_eq!(restart_delay(Some(s(30)), s(61)), Duration::ZERO);
    }
}
