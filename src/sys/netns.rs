//! Moving the calling thread into a network namespace (tests and tools
//! that drive lbd's network code inside `ip netns` namespaces).

use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the namespace at `path` (for example
/// `/run/netns/NAME`). Sockets opened afterwards by this thread belong to it;
/// other threads are unaffected.
pub fn enter(path: &std::path::Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: setns takes a descriptor we keep open for the call and a
    // constant flag; it touches no memory of ours.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
