//! Open-file limit: every balanced session holds two sockets, and the
//! usual soft limit of 1024 would stop accepting at about 500 sessions.

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (old, new).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok((soft, hard.max(soft)))
}
