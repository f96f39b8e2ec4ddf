//! The supervisor's process plumbing: a child that dies with its parent,
//! and the process name `ps` shows.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// The child `cmd` starts gets `sig` when this process dies (however it
/// dies: PR_SET_PDEATHSIG), and does not start at all if this process is
/// already gone by then.
pub fn die_with_parent(cmd: &mut Command, sig: Signal) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec; it only
    // makes two async-signal-safe system calls (prctl, getppid) and builds
    // an io::Error from an errno, which allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(sig)).map_err(io::Error::from)?;
            // The parent died before the prctl: the signal would never come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sets this process's name as `ps -o comm`, `top` and /proc/PID/comm show
/// it (at most 15 bytes; the main thread's name).
pub fn set_name(name: &str) -> io::Result<()> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    nix::sys::prctl::set_name(&c).map_err(io::Error::from)
}
