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
//! The copy loop itself (which chunks are spliced and which go through a
//! buffer) is the balancer's: `crate::tcplb`'s pump.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Bytes moved per splice call; also the pipe size asked for.
pub const CHUNK: usize = 1 << 20;

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
pub struct Lease {
    pipe: Option<Pipe>,
    /// Bytes spliced in and not yet out.
    pub pending: usize,
}

impl Lease {
    pub fn take() -> io::Result<Lease> {
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

    /// The read and write ends.
    pub fn fds(&self) -> (RawFd, RawFd) {
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

/// One non-blocking splice of at most `len` bytes between a socket and a
/// pipe (either way).
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
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

/// Idle pipes in the pool now (tests: idle sessions hold none).
pub fn pooled() -> usize {
    POOL.lock().map_or(0, |p| p.len())
}

/// How many pipes the pool keeps at most.
pub const POOL_IDLE: usize = POOL_IDLE_MAX;
