//! Zero-copy forwarding between two TCP sockets with splice(2) through a
//! pipe: bytes move socket -> pipe -> socket inside the kernel.
//!
//! A session holds a pipe only while bytes are in it: the pipe is taken from
//! a small shared pool when the source is readable and given back once it
//! has been drained into the destination. Why not two pipes per session:
//! the kernel charges pipe pages to the user (`fs.pipe-user-pages-soft`,
//! 16384 pages = 64 MiB by default, shared by every process of that uid);
//! past that limit a process without CAP_SYS_RESOURCE/CAP_SYS_ADMIN (lbd's
//! static pod has neither) gets 2-page pipes and F_SETPIPE_SZ fails, and so
//! does every other process of the same user. Two 1 MiB pipes per session
//! reached it at 32 mostly idle sessions (kube watches); see
//! bench/splice-pipe-limit.sh. Pooling also keeps an idle session at two
//! descriptors instead of six.
//!
//! Small messages skip the pipe altogether (see `splice_copy`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call; also the pipe size asked for.
const CHUNK: usize = 1 << 20;

/// Empty pipes kept for reuse; more are closed when given back. Pipes in
/// use are not limited: one per direction that is moving bytes right now.
const POOL_IDLE_MAX: usize = 16;

/// A non-blocking pipe used as the in-kernel buffer of one chunk.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by no one else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe means fewer wake-ups on bulk transfers; failure (a
        // limit in /proc/sys/fs/pipe-max-size) just keeps the default 64 KiB.
        // SAFETY: F_SETPIPE_SZ on a pipe we own; no memory is passed.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Pipe { read, write })
    }
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// A pipe borrowed from the pool; back to the pool on drop if it is empty.
struct Lease {
    pipe: Option<Pipe>,
    /// Bytes spliced in and not yet out.
    pending: usize,
}

impl Lease {
    fn take() -> io::Result<Lease> {
        let pooled = POOL.lock().ok().and_then(|mut pool| pool.pop());
        let pipe = match pooled {
            Some(p) => p,
            None => Pipe::new()?,
        };
        Ok(Lease {
            pipe: Some(pipe),
            pending: 0,
        })
    }

    fn fds(&self) -> (RawFd, RawFd) {
        match &self.pipe {
            Some(p) => (p.read.as_raw_fd(), p.write.as_raw_fd()),
            None => (-1, -1),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A pipe still holding bytes (the session was cut mid-chunk) would
        // leak them into another session: it is closed, never reused.
        if self.pending != 0 {
            return;
        }
        if let (Some(pipe), Ok(mut pool)) = (self.pipe.take(), POOL.lock()) {
            if pool.len() < POOL_IDLE_MAX {
                pool.push(pipe);
            }
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice takes no user memory (null offsets: both ends are a
    // socket or a pipe); the descriptors are alive for the whole call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Reads at most this much through user space before deciding that a
/// transfer is bulk; a TLS record is at most 16 KiB + 325 bytes.
const SMALL: usize = 16 * 1024;

/// Moves bytes from `src` to `dst` until `src` reaches EOF; returns the byte
/// count. `on_progress` is called after each chunk (idle tracking, counters).
/// Does not shut `dst` down: the caller decides (half-close).
///
/// Small messages (most API requests, watch events) go through a user-space
/// buffer: for a few hundred bytes read+write costs less CPU than two
/// splices (measured: 16 vs 20 us of proxy CPU per HTTPS request, see
/// docs/benchmarks.md). A read that fills the buffer means a bulk transfer:
/// splice from then on, until a splice moves less than the buffer again.
pub async fn splice_copy(
    src: &TcpStream,
    dst: &TcpStream,
    mut on_progress: impl FnMut(usize),
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut bulk = false;
    loop {
        if !bulk {
            let n = copy_chunk(src, dst, SMALL).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            on_progress(n);
            bulk = n == SMALL;
            continue;
        }
        src.readable().await?;
        let Ok(mut lease) = Lease::take() else {
            // No descriptor left for a pipe (EMFILE, ENFILE): go on through
            // user space instead of failing the session.
            bulk = false;
            continue;
        };
        let (pipe_read, pipe_write) = lease.fds();
        // socket -> pipe
        let n = match src.try_io(Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe_write, CHUNK)
        }) {
            Ok(n) => n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(total);
        }
        // pipe -> socket: drain all of it before the pipe goes back.
        lease.pending = n;
        while lease.pending > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe_read, dst.as_raw_fd(), lease.pending)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => lease.pending -= m,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        drop(lease);
        total += n as u64;
        on_progress(n);
        bulk = n >= SMALL;
    }
}

/// One read of at most `size` bytes and its complete write through a
/// user-space buffer; 0 at EOF. The buffer lives only while the chunk is in
/// flight, so an idle session holds none.
async fn copy_chunk(src: &TcpStream, dst: &TcpStream, size: usize) -> io::Result<usize> {
    let mut buf = Vec::with_capacity(size);
    let n = loop {
        src.readable().await?;
        match try_read_drain(src, &mut buf) {
            Ok(n) => break n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut done = 0;
    while done < n {
        dst.writable().await?;
        match dst.try_write(&buf[done..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => done += m,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One recv into the spare capacity of `buf`. A short read means the
/// receive queue was empty (TCP hands over what is queued, up to the length
/// asked), so readiness is cleared then: this saves the next recv, which
/// would only say EAGAIN (tokio's own `poll_read` does the same). Without
/// it a small request cost three syscalls per direction instead of two.
/// Not done for splice: a short splice may mean a full pipe, not an empty
/// socket, and clearing readiness then would stall the session.
fn try_read_drain(src: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut short = None;
    let r = src.try_io(Interest::READABLE, || {
        let spare = buf.spare_capacity_mut();
        let want = spare.len();
        let n = SockRef::from(src).recv(spare)?;
        // SAFETY: recv initialised the first n bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        if n > 0 && n < want {
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

    /// Idle sessions hold no pipe: 40 of them once held 160 pipe
    /// descriptors (and 80 MiB of the user's pipe quota).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sessions_hold_no_pipes_and_bytes_arrive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let before = pipe_fds();
        let mut ends = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            // client a <-> b (proxy) => c (proxy) <-> d backend
            let (a, b) = pair(&listener).await;
            let (c, d) = pair(&listener).await;
            tasks.push(tokio::spawn(async move {
                splice_copy(&b, &c, |_| {}).await.map(|n| (n, b, c))
            }));
            ends.push((a, d));
        }
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for (a, d) in ends.iter_mut() {
            a.write_all(&payload).await.unwrap();
            let mut got = vec![0u8; payload.len()];
            d.read_exact(&mut got).await.unwrap();
            assert!(got == payload, "bytes changed on the way");
        }
        // All 40 sessions are idle now, each with its bytes delivered.
        let held = pipe_fds().saturating_sub(before);
        assert!(
            held <= 2 * POOL_IDLE_MAX,
            "{held} pipe descriptors held by 40 idle sessions"
        );
        for ((a, _d), t) in ends.into_iter().zip(tasks) {
            drop(a); // EOF ends the copy
            let (n, _b, _c) = t.await.unwrap().unwrap();
            assert_eq!(n, payload.len() as u64);
        }
    }
}
