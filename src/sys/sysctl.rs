//! /proc/sys helpers. Network sysctls are per network namespace: these act
//! on the caller's.

use std::io;
use std::path::PathBuf;

/// `net.ipv4.ip_nonlocal_bind` -> `/proc/sys/net/ipv4/ip_nonlocal_bind`.
fn path_of(key: &str) -> PathBuf {
    let mut p = PathBuf::from("/proc/sys");
    for part in key.split('.') {
        p.push(part);
    }
    p
}

pub fn read(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path_of(key))?.trim().to_string())
}

pub fn write(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(path_of(key), value)
}

/// Sets `key` to `value` unless it already has it; returns the old value
/// when it changed something.
pub fn ensure(key: &str, value: &str) -> io::Result<Option<String>> {
    let old = read(key)?;
    if old == value {
        return Ok(None);
    }
    write(key, value)?;
    Ok(Some(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_map_to_proc_paths() {
        assert_eq!(
            path_of("net.ipv4.ip_nonlocal_bind"),
            PathBuf::from("/proc/sys/net/ipv4/ip_nonlocal_bind")
        );
    }

    #[test]
    fn reads_a_real_sysctl() {
        // Present on every Linux kernel; its value is 0 or 1.
        let v = read("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
