//! Choosing a backend and connecting to it, so that a dead backend costs a
//! client as little as possible:
//!
//! - **retries**: a connect that fails (refused, unreachable, timed out)
//!   is tried at once on another backend, up to `retries` more;
//! - **hedging**: a connect whose SYN is unanswered after the hedge delay
//!   (a few times the listener's recent p90 connect time, within
//!   `hedge.min_delay`..`hedge.max_delay`, see [`super::hedge`]) gets a
//!   second attempt on the next backend beside it; the first to connect
//!   wins and the other is closed. Hedges count against `retries`;
//! - **passive health** (`health.observe: layer4`, haproxy's `observe
//!   layer4` + `on-error mark-down`): a failed connect marks its backend
//!   down at once, and so does a hedge lost by a backend that never
//!   answered while another one did; `rise` passing checks bring it back.
//!
//! Local resource errors (no descriptor, no ephemeral port) say nothing
//! about the backend and mark nothing.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::listener::{Backend, Listener};
use super::select::{select, Candidate, Pick};
use crate::config::{HealthObserve, ListenerConfig};
use crate::health::{DownReason, HealthSnapshot};

/// A connected backend.
pub struct Connected {
    pub backend: Arc<Backend>,
    pub stream: TcpStream,
    /// Connects started, the winner's included.
    pub attempts: u32,
    /// The winner was started as a hedge.
    pub hedged: bool,
    /// From the first attempt's start to the winner's connect.
    pub took: Duration,
}

/// Why no backend could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// None was usable (all down or drained).
    NoBackend,
    /// Every attempt failed; the last error.
    Failed { attempts: u32, error: String },
}

/// One connect attempt.
#[derive(Debug, Clone, Copy)]
struct Started {
    backend: usize,
    at: Instant,
    hedge: bool,
    failed: bool,
}

type Attempt = Pin<Box<dyn std::future::Future<Output = (usize, io::Result<TcpStream>)> + Send>>;

/// One connection's search for a backend.
struct Search<'a> {
    listener: &'a Listener,
    cfg: &'a ListenerConfig,
    peer: SocketAddr,
    snapshot: Arc<HealthSnapshot>,
    backends: Arc<Vec<Arc<Backend>>>,
    /// Every backend picked so far (and those the caller excludes).
    tried: Vec<SocketAddr>,
    /// Every attempt started, in order.
    started: Vec<Started>,
    in_flight: FuturesUnordered<Attempt>,
}

impl Search<'_> {
    /// Picks the next backend and starts connecting; false when there is
    /// none left to try.
    fn start_next(&mut self, hedge: bool) -> bool {
        let candidates: Vec<Candidate> = self
            .backends
            .iter()
            .map(|b| Candidate {
                addr: b.addr,
                // A backend new in this reload has no check yet: usable.
                usable: !b.drained.load(Relaxed)
                    && self
                        .snapshot
                        .backends
                        .iter()
                        .find(|(a, _)| *a == b.addr)
                        .is_none_or(|(_, up)| *up),
                active: b.active.load(Relaxed),
            })
            .collect();
        let pick = Pick {
            client: self.peer.ip(),
            sequence: self.listener.sequence.fetch_add(1, Relaxed),
            random: (fastrand::u64(..), fastrand::u64(..)),
        };
        let Some(i) = select(self.cfg.balance, &candidates, &self.tried, pick) else {
            return false;
        };
        let addr = self.backends[i].addr;
        self.tried.push(addr);
        self.started.push(Started {
            backend: i,
            at: Instant::now(),
            hedge,
            failed: false,
        });
        let timeout = self.cfg.connect_timeout;
        self.in_flight.push(Box::pin(async move {
            let r = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                )),
            };
            (i, r)
        }));
        true
    }

    fn observe(&self) -> bool {
        self.cfg.health.observe == HealthObserve::Layer4
    }

    /// An attempt failed: counted, and the backend marked down if the error
    /// is the backend's.
    fn failed(&mut self, i: usize, e: &io::Error) {
        if let Some(a) = self.started.iter_mut().find(|a| a.backend == i) {
            a.failed = true;
        }
        let b = &self.backends[i];
        b.connect_errors.fetch_add(1, Relaxed);
        tracing::debug!(listener = %self.listener.name, backend = %b.addr, error = %e, "connect failed");
        if self.observe() && is_backends_fault(e) {
            self.listener
                .health
                .mark_down(b.addr, DownReason::Passive, format!("connect: {e}"));
        }
    }

    /// The winner connected: attempts started before it and still silent
    /// lost a hedge (their SYN waited longer than the winner's).
    fn won(&self, winner: Started) {
        if winner.hedge {
            self.listener.hedge_wins.fetch_add(1, Relaxed);
        }
        for a in &self.started {
            if a.backend == winner.backend || a.failed || a.at >= winner.at {
                continue;
            }
            let i = a.backend;
            let b = &self.backends[i];
            let waited = winner.at.saturating_duration_since(a.at);
            tracing::debug!(listener = %self.listener.name, backend = %b.addr, ?waited, "hedge lost");
            if self.observe() {
                self.listener.health.mark_down(
                    b.addr,
                    DownReason::Hedge,
                    format!(
                        "no answer to the connect within {} ms while {} answered",
                        waited.as_millis(),
                        self.backends[winner.backend].addr
                    ),
                );
            }
        }
    }
}

/// The backend errors passive health acts on.
fn is_backends_fault(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) | Some(libc::EHOSTDOWN)
    )
}

/// Connects the client `peer` to a backend of `listener`, skipping
/// `exclude`. See the module doc for retries, hedging and passive health.
pub async fn connect(
    listener: &Listener,
    cfg: &ListenerConfig,
    peer: SocketAddr,
    exclude: &[SocketAddr],
) -> Result<Connected, ConnectFailure> {
    let first = Instant::now();
    let mut s = Search {
        listener,
        cfg,
        peer,
        snapshot: listener.health.snapshot(),
        backends: listener.backends(),
        tried: exclude.to_vec(),
        started: Vec::new(),
        in_flight: FuturesUnordered::new(),
    };
    let budget = cfg.retries.saturating_add(1) as usize;
    if !s.start_next(false) {
        listener.refused_no_backend.fetch_add(1, Relaxed);
        return Err(ConnectFailure::NoBackend);
    }
    let hedging = cfg.hedge.enabled && cfg.retries > 0;
    let delay = listener.hedge_delay(cfg);
    let hedge_timer = tokio::time::sleep(delay);
    tokio::pin!(hedge_timer);
    let mut hedge_armed = hedging;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            // A connect that completed wins over a hedge timer that expired
            // in the same instant (a late poll must not hedge needlessly).
            biased;
            Some((i, result)) = s.in_flight.next() => match result {
                Ok(stream) => {
                    let Some(winner) = s.started.iter().copied().find(|a| a.backend == i) else {
                        continue;
                    };
                    listener
                        .health
                        .connect_times
                        .record(winner.at.elapsed());
                    s.won(winner);
                    return Ok(Connected {
                        backend: s.backends[i].clone(),
                        stream,
                        attempts: s.started.len() as u32,
                        hedged: winner.hedge,
                        took: first.elapsed(),
                    });
                }
                Err(e) => {
                    s.failed(i, &e);
                    last_error = format!("{}: {e}", s.backends[i].addr);
                    let more = s.started.len() < budget && s.start_next(false);
                    if !more && s.in_flight.is_empty() {
                        break;
                    }
                }
            },
            _ = &mut hedge_timer, if hedge_armed => {
                if s.started.len() < budget && s.start_next(true) {
                    listener.hedges.fetch_add(1, Relaxed);
                    // Another delay, then a third backend may join.
                    hedge_timer.as_mut().reset(Instant::now() + delay);
                } else {
                    hedge_armed = false;
                }
            }
            else => break,
        }
    }
    listener.connect_failures.fetch_add(1, Relaxed);
    Err(ConnectFailure::Failed {
        attempts: s.started.len() as u32,
        error: last_error,
    })
}
