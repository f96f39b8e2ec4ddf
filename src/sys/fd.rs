//! Registering owned sockets with the tokio reactor.

use std::io;

use tokio::io::unix::AsyncFd;

/// Wraps a socket that owns its descriptor in an [`AsyncFd`].
pub fn async_socket(sock: socket2::Socket) -> io::Result<AsyncFd<socket2::Socket>> {
    // SAFETY: socket2::Socket owns its descriptor exclusively and closes it
    // only on drop, after the AsyncFd (which owns the Socket) deregistered
    // it; nothing else can close or reuse the descriptor meanwhile.
    unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)
}
