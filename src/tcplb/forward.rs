//! The duplex copy of one session: client <-> backend, with half-close, and
//! the idle watch beside it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

/// How bytes are moved between the two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// splice(2) through a pipe: no copy to user space.
    Splice,
    /// tokio's copy through a user-space buffer (portable).
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

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend (`received` in the metrics).
    ToBackend,
    /// Backend to client (`sent`).
    ToClient,
}

/// Copies both ways until both directions have seen EOF. A FIN in one
/// direction is passed on as a FIN (shutdown of the write side) while the
/// other direction keeps flowing. `moved` is told of every chunk.
pub async fn forward(
    mode: CopyMode,
    client: TcpStream,
    upstream: TcpStream,
    moved: impl Fn(Direction, u64),
) {
    match mode {
        CopyMode::Splice => forward_splice(&client, &upstream, &moved).await,
        CopyMode::Userspace => forward_userspace(client, upstream, &moved).await,
    }
}

async fn forward_splice(client: &TcpStream, upstream: &TcpStream, moved: &impl Fn(Direction, u64)) {
    let up = std::pin::pin!(splice_one_way(
        client,
        upstream,
        Direction::ToBackend,
        moved
    ));
    let down = std::pin::pin!(splice_one_way(upstream, client, Direction::ToClient, moved));
    // An error in one direction (reset) ends the session: the other side
    // gets the close when the sockets drop.
    match futures::future::select(up, down).await {
        futures::future::Either::Left((Ok(_), rest)) => {
            let _ = rest.await;
        }
        futures::future::Either::Right((Ok(_), rest)) => {
            let _ = rest.await;
        }
        _ => {}
    }
}

/// One direction until EOF, then the FIN passed on.
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    dir: Direction,
    moved: &impl Fn(Direction, u64),
) -> std::io::Result<u64> {
    let r = crate::sys::splice::splice_copy(from, to, |n| moved(dir, n as u64)).await;
    let _ = SockRef::from(to).shutdown(std::net::Shutdown::Write);
    r
}

async fn forward_userspace(
    mut client: TcpStream,
    mut upstream: TcpStream,
    moved: &impl Fn(Direction, u64),
) {
    // copy_bidirectional shuts down each write side on EOF (half-close).
    let r =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, 64 * 1024, 64 * 1024)
            .await;
    if let Ok((to_backend, to_client)) = r {
        moved(Direction::ToBackend, to_backend);
        moved(Direction::ToClient, to_client);
    }
}

/// Ends when `activity` has not moved for `timeout`; never without one.
pub async fn idle_watch(timeout: Option<Duration>, activity: &AtomicU64) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let mut seen = activity.load(Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.load(Relaxed);
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
    use std::sync::Mutex;
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

    #[tokio::test]
    async fn half_close_is_passed_on_and_bytes_are_counted_both_ways() {
        for mode in [CopyMode::Splice, CopyMode::Userspace] {
            let ((mut client, proxy_client), (proxy_backend, mut backend)) = pairs().await;
            let counted = Mutex::new((0u64, 0u64));
            let copy = forward(mode, proxy_client, proxy_backend, |dir, n| {
                let mut c = counted.lock().unwrap();
                match dir {
                    Direction::ToBackend => c.0 += n,
                    Direction::ToClient => c.1 += n,
                }
            });
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
            tokio::time::timeout(Duration::from_secs(5), futures::future::join(copy, peers))
                .await
                .expect("copy did not end after both FINs");
            assert_eq!(*counted.lock().unwrap(), (5, 6), "{mode:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_watch_fires_only_without_activity() {
        let activity = AtomicU64::new(0);
        let watch = idle_watch(Some(Duration::from_secs(10)), &activity);
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
