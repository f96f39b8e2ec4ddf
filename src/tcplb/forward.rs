//! The duplex copy of one session: client <-> backend, each direction a
//! [`Pump`], with half-close passed on, beside the events that end a session
//! early (idle timeout, the backend marked down, shutdown). Only the future
//! that was woken is polled (`FuturesUnordered`): a byte on one leg does not
//! poll the other leg, the idle timer or the cancellation tokens (two of
//! which are shared by every session of a listener or backend).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::pump::{Counters, End, Pump, PumpError};

/// How bytes are moved between the two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Small chunks through a per-thread buffer, bulk through splice(2).
    Splice,
    /// Always through the per-thread buffer (kept for measurement).
    Userspace,
}

impl CopyMode {
    /// splice unless `LBD_COPY=userspace` (kept for measurement, see bench/).
    pub fn from_env() -> CopyMode {
        match std::env::var("LBD_COPY").as_deref() {
            Ok("userspace") => CopyMode::Userspace,
            _ if cfg!(target_os = "linux") => CopyMode::Splice,
            _ => CopyMode::Userspace,
        }
    }
}

crate::label::label_enum! {
    /// Why a session ended: the session log's `termination`.
    pub enum Termination {
        /// Both directions ended; the client closed first.
        ClientClosed => "client_closed",
        /// Both directions ended; the backend closed first.
        BackendClosed => "backend_closed",
        /// Reading from or writing to the client failed (reset, ...).
        ClientError => "client_error",
        /// Reading from or writing to the backend failed.
        BackendError => "backend_error",
        /// No byte either way for `idle_timeout`.
        IdleTimeout => "idle_timeout",
        /// The backend was marked down (`on_backend_down: shutdown_sessions`).
        BackendDown => "backend_down",
        /// lbd stopped and the drain grace was over.
        Shutdown => "shutdown",
        /// No backend was usable: closed at once.
        NoBackend => "no_backend",
        /// Every connect attempt failed.
        ConnectFailed => "connect_failed",
    }
}

/// Where a session's bytes are counted: the listener's and the backend's
/// shared counters, per direction.
pub struct SharedCounters<'a> {
    pub to_backend: [&'a AtomicU64; 2],
    pub to_client: [&'a AtomicU64; 2],
}

/// What became of a session's copy.
#[derive(Debug)]
pub struct Forwarded {
    pub to_backend: u64,
    pub to_client: u64,
    pub termination: Termination,
    /// The error behind a `*_error` termination.
    pub error: Option<std::io::Error>,
}

/// Why the copy may end early.
pub struct Stops<'a> {
    pub idle_timeout: Option<Duration>,
    pub backend_down: &'a CancellationToken,
    pub shutdown: &'a CancellationToken,
}

enum Event {
    ToBackend(Result<u64, PumpError>),
    ToClient(Result<u64, PumpError>),
    Idle,
    BackendDown,
    Shutdown,
}

type EventFuture<'a> = Pin<Box<dyn Future<Output = Event> + Send + 'a>>;

/// Copies both ways until both directions have seen EOF, one fails, or a
/// stop fires. A FIN in one direction is passed on as a FIN (shutdown of
/// the write side) while the other direction keeps flowing.
pub async fn forward(
    mode: CopyMode,
    client: &TcpStream,
    upstream: &TcpStream,
    counters: SharedCounters<'_>,
    stops: Stops<'_>,
) -> Forwarded {
    let splice = mode == CopyMode::Splice;
    let (to_backend, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut events: FuturesUnordered<EventFuture<'_>> = FuturesUnordered::new();
    let up = Pump::new(
        client,
        upstream,
        splice,
        Counters {
            session: &to_backend,
            shared: counters.to_backend,
        },
    );
    let down = Pump::new(
        upstream,
        client,
        splice,
        Counters {
            session: &to_client,
            shared: counters.to_client,
        },
    );
    events.push(Box::pin(async move { Event::ToBackend(up.await) }));
    events.push(Box::pin(async move { Event::ToClient(down.await) }));
    if let Some(t) = stops.idle_timeout {
        let moved = || to_backend.load(Relaxed) + to_client.load(Relaxed);
        events.push(Box::pin(async move {
            idle_watch(t, moved).await;
            Event::Idle
        }));
    }
    events.push(Box::pin(async move {
        stops.backend_down.cancelled().await;
        Event::BackendDown
    }));
    events.push(Box::pin(async move {
        stops.shutdown.cancelled().await;
        Event::Shutdown
    }));
    let (mut client_done, mut backend_done) = (false, false);
    let mut first_fin = None;
    let (termination, error) = loop {
        let Some(event) = events.next().await else {
            break (first_fin.unwrap_or(Termination::ClientClosed), None);
        };
        match event {
            Event::ToBackend(Ok(_)) => {
                client_done = true;
                first_fin.get_or_insert(Termination::ClientClosed);
            }
            Event::ToClient(Ok(_)) => {
                backend_done = true;
                first_fin.get_or_insert(Termination::BackendClosed);
            }
            // Client to backend: reading is the client's end.
            Event::ToBackend(Err(e)) => break (blame(e.end, true), Some(e.error)),
            Event::ToClient(Err(e)) => break (blame(e.end, false), Some(e.error)),
            Event::Idle => break (Termination::IdleTimeout, None),
            Event::BackendDown => break (Termination::BackendDown, None),
            Event::Shutdown => break (Termination::Shutdown, None),
        }
        if client_done && backend_done {
            break (first_fin.unwrap_or(Termination::ClientClosed), None);
        }
    };
    // The pumps flush their counts when dropped.
    drop(events);
    Forwarded {
        to_backend: to_backend.load(Relaxed),
        to_client: to_client.load(Relaxed),
        termination,
        error,
    }
}

/// Which side an error belongs to: the source end of the client-to-backend
/// direction is the client, its destination end the backend.
fn blame(end: End, client_to_backend: bool) -> Termination {
    match (end, client_to_backend) {
        (End::Source, true) | (End::Destination, false) => Termination::ClientError,
        (End::Destination, true) | (End::Source, false) => Termination::BackendError,
    }
}

/// Ends when `moved()` has not changed for `timeout`.
pub async fn idle_watch(timeout: Duration, moved: impl Fn() -> u64) {
    let mut seen = moved();
    loop {
        tokio::time::sleep(timeout).await;
        let now = moved();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// TCP keepalive (a dead peer is noticed within about a minute) and no
/// Nagle delay, on both legs.
pub fn keepalive(stream: &TcpStream) {
    let sock = SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    #[cfg(target_os = "linux")]
    let ka = ka.with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
    let _ = stream.set_nodelay(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A client and the proxy's end of it, and the proxy's end towards a
    /// backend and the backend's end.
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let a = TcpStream::connect(addr).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let c = TcpStream::connect(addr).await.unwrap();
        let (d, _) = l.accept().await.unwrap();
        ((a, b), (c, d))
    }

    struct Totals {
        listener_in: AtomicU64,
        backend_in: AtomicU64,
        listener_out: AtomicU64,
        backend_out: AtomicU64,
    }

    impl Totals {
        fn new() -> Self {
            Totals {
                listener_in: AtomicU64::new(0),
                backend_in: AtomicU64::new(0),
                listener_out: AtomicU64::new(0),
                backend_out: AtomicU64::new(0),
            }
        }
        fn counters(&self) -> SharedCounters<'_> {
            SharedCounters {
                to_backend: [&self.listener_in, &self.backend_in],
                to_client: [&self.listener_out, &self.backend_out],
            }
        }
        fn get(&self) -> [u64; 4] {
            [
                &self.listener_in,
                &self.backend_in,
                &self.listener_out,
                &self.backend_out,
            ]
            .map(|c| c.load(Relaxed))
        }
    }

    #[tokio::test]
    async fn half_close_is_passed_on_and_bytes_are_counted_both_ways() {
        for mode in [CopyMode::Splice, CopyMode::Userspace] {
            let ((mut client, proxy_client), (proxy_backend, mut backend)) = pairs().await;
            let totals = Totals::new();
            let (down, kill) = (CancellationToken::new(), CancellationToken::new());
            let stops = Stops {
                idle_timeout: None,
                backend_down: &down,
                shutdown: &kill,
            };
            let copy = forward(
                mode,
                &proxy_client,
                &proxy_backend,
                totals.counters(),
                stops,
            );
            let peers = async {
                client.write_all(b"hello").await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, b"hello", "{mode:?}");
                // The other direction still flows after the client's FIN.
                backend.write_all(b"world!").await.unwrap();
                backend.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"world!", "{mode:?}");
            };
            let (done, ()) =
                tokio::time::timeout(Duration::from_secs(5), futures::future::join(copy, peers))
                    .await
                    .expect("copy did not end after both FINs");
            assert_eq!((done.to_backend, done.to_client), (5, 6), "{mode:?}");
            assert_eq!(done.termination, Termination::ClientClosed);
            // Flushed to both shared counters at the end.
            assert_eq!(totals.get(), [5, 5, 6, 6], "{mode:?}");
        }
    }

    #[tokio::test]
    async fn a_reset_is_the_side_that_reset_and_a_stop_ends_the_copy() {
        let ((client, proxy_client), (proxy_backend, backend)) = pairs().await;
        let totals = Totals::new();
        let (down, kill) = (CancellationToken::new(), CancellationToken::new());
        // The backend resets (SO_LINGER 0 then close).
        SockRef::from(&backend)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(backend);
        let stops = Stops {
            idle_timeout: None,
            backend_down: &down,
            shutdown: &kill,
        };
        let done = tokio::time::timeout(
            Duration::from_secs(5),
            forward(
                CopyMode::Splice,
                &proxy_client,
                &proxy_backend,
                totals.counters(),
                stops,
            ),
        )
        .await
        .unwrap();
        assert_eq!(done.termination, Termination::BackendError, "{done:?}");
        assert_eq!((done.to_backend, done.to_client), (0, 0));
        drop(client);

        let ((_client, proxy_client), (proxy_backend, _backend)) = pairs().await;
        let stops = Stops {
            idle_timeout: None,
            backend_down: &down,
            shutdown: &kill,
        };
        let copy = forward(
            CopyMode::Splice,
            &proxy_client,
            &proxy_backend,
            totals.counters(),
            stops,
        );
        down.cancel();
        let done = tokio::time::timeout(Duration::from_secs(5), copy)
            .await
            .unwrap();
        assert_eq!(done.termination, Termination::BackendDown);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_watch_fires_only_without_activity() {
        let activity = AtomicU64::new(0);
        let watch = idle_watch(Duration::from_secs(10), || activity.load(Relaxed));
        let mut watch = std::pin::pin!(watch);
        // Activity within every period keeps the session.
        for _ in 0..3 {
            tokio::select! {
                _ = &mut watch => panic!("idle although active"),
                _ = tokio::time::sleep(Duration::from_secs(9)) => {}
            }
            activity.fetch_add(1, Relaxed);
        }
        let started = tokio::time::Instant::now();
        watch.await;
        assert!(started.elapsed() <= Duration::from_secs(20));
    }
}
