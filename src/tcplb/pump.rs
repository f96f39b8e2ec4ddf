//! One direction of a session: bytes from `src` to `dst` until `src` ends,
//! then the FIN passed on (half-close). A hand-written future, because the
//! per-request cost of the balancer is mostly what happens per wake-up:
//!
//! - Small messages (API requests, watch events: most of an apiserver's
//!   traffic) are read into a per-thread scratch buffer and written at once
//!   in the same poll: no allocation per chunk, no buffer held by an idle
//!   session. Only when the destination cannot take everything are the
//!   rest copied into a buffer of the session's own.
//! - A read that fills the scratch buffer means a bulk transfer: splice(2)
//!   through a pooled pipe from then on (no copy to user space), until a
//!   chunk is small again. See `crate::sys::splice` for the pipe pool.
//! - Readiness is polled with `poll_read_ready`/`poll_write_ready` (one
//!   waker slot per direction, no waiter list), and a short read clears the
//!   read readiness so the next poll does not pay a recv that says EAGAIN.
//! - Byte counts go to the shared listener and backend counters in batches
//!   (every [`FLUSH_BYTES`] and when the pump is dropped), not per chunk:
//!   those counters are shared by every session of every worker.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::sys::splice::{splice, Lease, CHUNK};

/// Reads at most this much through user space before deciding that a
/// transfer is bulk; a TLS record is at most 16 KiB + 325 bytes.
pub const SMALL: usize = 16 * 1024;

/// Counted bytes are added to the shared counters at least this often.
pub const FLUSH_BYTES: u64 = 64 * 1024;

thread_local! {
    /// The buffer every small chunk of this thread passes through.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SMALL].into_boxed_slice());
}

/// Which end of a direction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Reading from the source.
    Source,
    /// Writing to the destination.
    Destination,
}

#[derive(Debug)]
pub struct PumpError {
    pub end: End,
    pub error: io::Error,
}

impl PumpError {
    fn source(error: io::Error) -> Self {
        PumpError {
            end: End::Source,
            error,
        }
    }
    fn destination(error: io::Error) -> Self {
        PumpError {
            end: End::Destination,
            error,
        }
    }
}

/// Where a direction's bytes are counted.
pub struct Counters<'a> {
    /// This session's own count, read by the idle watch and the session
    /// log (one writer: a plain load and store).
    pub session: &'a AtomicU64,
    /// Shared by many sessions: the listener's and the backend's.
    pub shared: [&'a AtomicU64; 2],
}

/// One direction: a future that ends with the byte count at EOF (after the
/// FIN was passed on), or with the error of the end that failed.
pub struct Pump<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    splice: bool,
    /// Moving bulk data: splice instead of the scratch buffer.
    bulk: bool,
    /// Bytes read that `dst` did not take yet, and how many of them it has.
    unsent: Vec<u8>,
    unsent_done: usize,
    /// A pipe holding a spliced chunk not yet written out, and that chunk's size.
    pipe: Option<Lease>,
    chunk: usize,
    counters: Counters<'a>,
    unflushed: u64,
    finished: bool,
}

/// What one attempt to read did.
enum Step {
    Moved,
    Eof,
    /// Nothing to read after all (readiness was stale): poll again.
    Again,
}

impl<'a> Pump<'a> {
    pub fn new(
        src: &'a TcpStream,
        dst: &'a TcpStream,
        splice: bool,
        counters: Counters<'a>,
    ) -> Self {
        Pump {
            src,
            dst,
            splice,
            bulk: false,
            unsent: Vec::new(),
            unsent_done: 0,
            pipe: None,
            chunk: 0,
            counters,
            unflushed: 0,
            finished: false,
        }
    }

    fn count(&mut self, n: usize) {
        let s = self.counters.session;
        s.store(s.load(Relaxed) + n as u64, Relaxed);
        self.unflushed += n as u64;
        if self.unflushed >= FLUSH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.unflushed > 0 {
            for c in self.counters.shared {
                c.fetch_add(self.unflushed, Relaxed);
            }
            self.unflushed = 0;
        }
    }

    /// Writes what an earlier poll could not.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        while self.unsent_done < self.unsent.len() {
            ready!(self.dst.poll_write_ready(cx)).map_err(PumpError::destination)?;
            match self.dst.try_write(&self.unsent[self.unsent_done..]) {
                Ok(0) => {
                    return Poll::Ready(Err(PumpError::destination(
                        io::ErrorKind::WriteZero.into(),
                    )))
                }
                Ok(m) => self.unsent_done += m,
                Err(e) if retry(&e) => {}
                Err(e) => return Poll::Ready(Err(PumpError::destination(e))),
            }
        }
        // Back to owning nothing while idle.
        self.unsent = Vec::new();
        self.unsent_done = 0;
        Poll::Ready(Ok(()))
    }

    /// Drains the pipe into `dst`; the pipe goes back to the pool empty.
    fn poll_pipe(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        while let Some(lease) = &mut self.pipe {
            if lease.pending == 0 {
                self.pipe = None;
                self.bulk = self.chunk >= SMALL;
                break;
            }
            ready!(self.dst.poll_write_ready(cx)).map_err(PumpError::destination)?;
            let (pipe_read, _) = lease.fds();
            let dst = self.dst.as_raw_fd();
            let pending = lease.pending;
            match self
                .dst
                .try_io(Interest::WRITABLE, || splice(pipe_read, dst, pending))
            {
                Ok(0) => {
                    return Poll::Ready(Err(PumpError::destination(
                        io::ErrorKind::WriteZero.into(),
                    )))
                }
                Ok(m) => lease.pending -= m,
                Err(e) if retry(&e) => {}
                Err(e) => return Poll::Ready(Err(PumpError::destination(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Socket to pipe: one chunk, at most [`CHUNK`].
    fn splice_in(&mut self) -> Result<Step, PumpError> {
        let Ok(mut lease) = Lease::take() else {
            // No descriptor left for a pipe (EMFILE, ENFILE): go on through
            // user space instead of failing the session.
            self.bulk = false;
            return Ok(Step::Again);
        };
        let (_, pipe_write) = lease.fds();
        let src = self.src.as_raw_fd();
        match self
            .src
            .try_io(Interest::READABLE, || splice(src, pipe_write, CHUNK))
        {
            Ok(0) => Ok(Step::Eof),
            Ok(n) => {
                lease.pending = n;
                self.pipe = Some(lease);
                self.chunk = n;
                self.count(n);
                Ok(Step::Moved)
            }
            Err(e) if retry(&e) => Ok(Step::Again),
            Err(e) => Err(PumpError::source(e)),
        }
    }

    /// Through the scratch buffer: read, and write as much as `dst` takes
    /// now; keep the rest.
    fn copy_small(&mut self) -> Result<Step, PumpError> {
        let (src, dst) = (self.src, self.dst);
        let result = SCRATCH.with_borrow_mut(|buf| {
            let n = match read_drain(src, buf) {
                Ok(0) => return Ok((0, 0)),
                Ok(n) => n,
                Err(e) if retry(&e) => return Err(None),
                Err(e) => return Err(Some(PumpError::source(e))),
            };
            let mut written = 0;
            while written < n {
                match dst.try_write(&buf[written..n]) {
                    Ok(0) => {
                        return Err(Some(PumpError::destination(
                            io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Ok(m) => written += m,
                    Err(e) if retry(&e) => break,
                    Err(e) => return Err(Some(PumpError::destination(e))),
                }
            }
            if written < n {
                self.unsent.extend_from_slice(&buf[written..n]);
            }
            Ok((n, written))
        });
        match result {
            Ok((0, _)) => Ok(Step::Eof),
            Ok((n, _)) => {
                self.bulk = self.splice && n == SMALL;
                self.count(n);
                Ok(Step::Moved)
            }
            Err(None) => Ok(Step::Again),
            Err(Some(e)) => Err(e),
        }
    }
}

impl Future for Pump<'_> {
    type Output = Result<u64, PumpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_pipe(cx))?;
            ready!(this.poll_unsent(cx))?;
            if this.finished {
                // Everything read has been written: pass the FIN on.
                let _ = SockRef::from(this.dst).shutdown(std::net::Shutdown::Write);
                this.flush();
                return Poll::Ready(Ok(this.counters.session.load(Relaxed)));
            }
            // The runtime's budget applies here: a busy direction yields.
            ready!(this.src.poll_read_ready(cx)).map_err(PumpError::source)?;
            let step = if this.bulk {
                this.splice_in()?
            } else {
                this.copy_small()?
            };
            if let Step::Eof = step {
                this.finished = true;
            }
        }
    }
}

impl Drop for Pump<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// One recv into `buf`. A short read means the receive queue was empty
/// (TCP hands over what is queued, up to the length asked), so readiness is
/// cleared then: this saves the next recv, which would only say EAGAIN
/// (tokio's own `poll_read` does the same). Not done for splice: a short
/// splice may mean a full pipe, not an empty socket.
fn read_drain(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let r = src.try_io(Interest::READABLE, || {
        let n = (&*SockRef::from(src)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            // try_io clears readiness (only if no new event came since).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    fn pipe_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|t| t.to_string_lossy().starts_with("pipe:"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Bulk and small chunks arrive byte-exact and are counted; idle
    /// sessions hold no pipes: 40 of them once held 160 pipe descriptors
    /// (and 80 MiB of the user's pipe quota).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_are_counted_and_idle_sessions_hold_no_pipes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let before = pipe_fds();
        let shared = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut ends = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            // client a <-> b (proxy) => c (proxy) <-> d backend
            let (a, b) = pair(&listener).await;
            let (c, d) = pair(&listener).await;
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let session = AtomicU64::new(0);
                let counters = Counters {
                    session: &session,
                    shared: [&shared[0], &shared[1]],
                };
                let n = Pump::new(&b, &c, true, counters)
                    .await
                    .map_err(|e| e.error)?;
                Ok::<_, io::Error>((n, session.load(Relaxed)))
            }));
            ends.push((a, d));
        }
        // 300 kB: bulk (splice) after the first full buffer; then a small one.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for (a, d) in ends.iter_mut() {
            a.write_all(&payload).await.unwrap();
            let mut got = vec![0u8; payload.len()];
            d.read_exact(&mut got).await.unwrap();
            assert!(got == payload, "bytes changed on the way");
            a.write_all(b"small").await.unwrap();
            let mut small = [0u8; 5];
            d.read_exact(&mut small).await.unwrap();
            assert_eq!(&small, b"small");
        }
        // All 40 sessions are idle now, each with its bytes delivered.
        let held = pipe_fds().saturating_sub(before);
        assert!(
            held <= 2 * crate::sys::splice::POOL_IDLE,
            "{held} pipe descriptors held by 40 idle sessions"
        );
        let each = payload.len() as u64 + 5;
        for ((a, mut d), t) in ends.into_iter().zip(tasks) {
            drop(a); // EOF ends the copy and is passed on
            let (n, counted) = t.await.unwrap().unwrap();
            assert_eq!((n, counted), (each, each));
            let mut rest = Vec::new();
            d.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
        assert_eq!(shared[0].load(Relaxed), 40 * each);
        assert_eq!(shared[1].load(Relaxed), 40 * each);
    }

    /// A destination that cannot take a chunk at once (its peer does not
    /// read) gets the rest later, in order.
    #[tokio::test]
    async fn a_slow_destination_gets_everything_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, b) = pair(&listener).await;
        let (c, mut d) = pair(&listener).await;
        // Small buffers (no autotuning): writes to c fill up while d sleeps.
        SockRef::from(&c).set_send_buffer_size(4096).unwrap();
        SockRef::from(&d).set_recv_buffer_size(65536).unwrap();
        let session = AtomicU64::new(0);
        let (x, y) = (AtomicU64::new(0), AtomicU64::new(0));
        let pump = Pump::new(
            &b,
            &c,
            false,
            Counters {
                session: &session,
                shared: [&x, &y],
            },
        );
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        let writer = async {
            a.write_all(&payload).await.unwrap();
            a.shutdown().await.unwrap();
        };
        let reader = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut got = Vec::new();
            d.read_to_end(&mut got).await.unwrap();
            got
        };
        let (n, (), got) = tokio::join!(pump, writer, reader);
        assert_eq!(n.unwrap(), payload.len() as u64);
        assert!(got == payload, "bytes reordered or lost");
    }
}
