//! One client connection: a backend chosen and connected
//! ([`super::connect`]), the duplex copy ([`super::forward`]), the counters,
//! and, with `session_log: true`, one log line when it ends (haproxy's
//! `option tcplog`): client, backend, bytes each way, duration, how it
//! ended. The line is a tracing event with target `lbd::session`, so
//! `--log-format json` makes it a JSON object.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::connect::{connect, ConnectFailure, Connected};
use super::forward::{forward, keepalive, Forwarded, SharedCounters, Stops, Termination};
use super::listener::Listener;
use crate::config::{HealthObserve, ListenerConfig};
use crate::health::DownReason;

/// The session log's target: `RUST_LOG=lbd::session=off` silences it even
/// where a listener has `session_log: true`.
pub const SESSION_LOG_TARGET: &str = "lbd::session";

pub(super) async fn session(
    listener: Arc<Listener>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    listener.total.fetch_add(1, Relaxed);
    let cfg = listener.config();
    let mut exclude = Vec::new();
    loop {
        let connected = match connect(&listener, &cfg, peer, &exclude).await {
            Ok(c) => c,
            Err(failure) => {
                // Dropping the client socket closes it at once.
                log_refused(&listener, &cfg, peer, started, &failure);
                return;
            }
        };
        let addr = connected.backend.addr;
        let done = run(&listener, &cfg, &client, &connected).await;
        // A backend that resets the connection before either side sent a
        // byte (a dying process, an accept queue overflowing) is dead for
        // this client: marked down, and the client, who saw nothing yet,
        // gets another backend. A client cannot provoke this (it has sent
        // nothing), so it cannot mark a healthy backend down.
        let early_reset = done.termination == Termination::BackendError
            && done.to_backend == 0
            && done.to_client == 0
            && done
                .error
                .as_ref()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        if early_reset && cfg.health.observe == HealthObserve::Layer4 {
            listener.health.mark_down(
                addr,
                DownReason::Passive,
                "reset by the backend before any data".into(),
            );
            exclude.push(addr);
            if (exclude.len() as u32) <= cfg.retries {
                continue;
            }
        }
        log_session(&listener, &cfg, peer, started, &connected, &done);
        return;
    }
}

/// The copy through one connected backend, with its counters.
async fn run(
    listener: &Listener,
    cfg: &ListenerConfig,
    client: &TcpStream,
    c: &Connected,
) -> Forwarded {
    let backend = &c.backend;
    keepalive(client);
    keepalive(&c.stream);
    backend.active.fetch_add(1, Relaxed);
    backend.total.fetch_add(1, Relaxed);
    listener.active.fetch_add(1, Relaxed);
    let backend_down = backend.sessions_token();
    let done = forward(
        listener.copy_mode,
        client,
        &c.stream,
        SharedCounters {
            to_backend: [&listener.bytes_in, &backend.bytes_in],
            to_client: [&listener.bytes_out, &backend.bytes_out],
        },
        Stops {
            idle_timeout: cfg.idle_timeout,
            backend_down: &backend_down,
            shutdown: &listener.kill_sessions,
        },
    )
    .await;
    match done.termination {
        Termination::IdleTimeout => {
            tracing::debug!(listener = %listener.name, client = %client_addr(client), "idle timeout")
        }
        Termination::BackendDown => {
            tracing::info!(listener = %listener.name, backend = %backend.addr, "session closed: backend down")
        }
        _ => {}
    }
    backend.active.fetch_sub(1, Relaxed);
    listener.active.fetch_sub(1, Relaxed);
    done
}

fn client_addr(s: &TcpStream) -> String {
    s.peer_addr().map_or_else(|_| "-".into(), |a| a.to_string())
}

fn log_session(
    listener: &Listener,
    cfg: &ListenerConfig,
    client: SocketAddr,
    started: Instant,
    c: &Connected,
    done: &Forwarded,
) {
    if !cfg.session_log {
        return;
    }
    tracing::info!(
        target: SESSION_LOG_TARGET,
        listener = %listener.name,
        client = %client,
        backend = %c.backend.addr,
        bytes_to_backend = done.to_backend,
        bytes_to_client = done.to_client,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        connect_ms = c.took.as_secs_f64() * 1000.0,
        attempts = c.attempts,
        hedged = c.hedged,
        termination = %done.termination,
        error = done.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
        "session"
    );
}

fn log_refused(
    listener: &Listener,
    cfg: &ListenerConfig,
    client: SocketAddr,
    started: Instant,
    failure: &ConnectFailure,
) {
    if !cfg.session_log {
        return;
    }
    let (termination, attempts, error) = match failure {
        ConnectFailure::NoBackend => (Termination::NoBackend, 0, String::new()),
        ConnectFailure::Failed { attempts, error } => {
            (Termination::ConnectFailed, *attempts, error.clone())
        }
    };
    tracing::info!(
        target: SESSION_LOG_TARGET,
        listener = %listener.name,
        client = %client,
        backend = "-",
        bytes_to_backend = 0u64,
        bytes_to_client = 0u64,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        attempts,
        termination = %termination,
        error,
        "session"
    );
}
