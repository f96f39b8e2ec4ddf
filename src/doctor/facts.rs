//! The I/O edge of `lbd doctor`: what /proc and /sys say about this node
//! (modules, sysctls, processes, listening sockets and who holds them,
//! interfaces and addresses), which named files exist, and an ARP probe
//! for each IPv4 VIP on its instance's interface, as `arping -D` sends
//! it. Reads only; the probe is the one packet it sends, on that
//! interface, for that address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::arp;
use super::{Facts, Listening, Process, VipAnswer, VipProbe};
use crate::config::Config;

/// What the node says; `config` decides which files and VIPs are looked at.
pub fn gather(config: Option<&Config>) -> Facts {
    let kernel_release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let processes = processes();
    let mut facts = Facts {
        modules: modules(&kernel_release),
        sysctls: sysctls(&kernel_release),
        listening: listening(&processes),
        processes,
        interfaces: interfaces(),
        local_addresses: local_addresses(),
        nft_binary: in_path("nft"),
        kernel_release,
        ..Default::default()
    };
    if let Some(c) = config {
        facts.files = tls_files(c);
        facts.vip_probes = probe_vips(c, &facts.local_addresses);
    }
    facts
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Loaded (`/proc/modules`), with parameters or built in (`/sys/module`),
/// or listed in `modules.builtin`.
fn modules(release: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(text) = read("/proc/modules") {
        out.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from),
        );
    }
    if let Ok(dir) = std::fs::read_dir("/sys/module") {
        out.extend(
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    if let Some(text) = read(format!("/lib/modules/{release}/modules.builtin")) {
        out.extend(text.lines().filter_map(|l| {
            let file = l.rsplit('/').next()?;
            Some(file.strip_suffix(".ko")?.replace('-', "_"))
        }));
    }
    out
}

fn sysctls(release: &str) -> BTreeMap<String, String> {
    crate::proxy::kernel::sysctl::proxy_sysctls(release, true)
        .into_iter()
        .filter_map(|s| {
            let path = format!("/proc/sys/{}", s.name.replace('.', "/"));
            read(path).map(|v| (s.name.to_string(), v))
        })
        .collect()
}

fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = read(e.path().join("comm"))?;
            Some(Process { pid, name })
        })
        .collect()
}

/// Socket inode -> the process holding it.
fn socket_owners(processes: &[Process]) -> BTreeMap<u64, Process> {
    let mut out = BTreeMap::new();
    for p in processes {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", p.pid)) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
            {
                out.entry(inode).or_insert_with(|| p.clone());
            }
        }
    }
    out
}

/// TCP sockets in LISTEN (and bound UDP ones) of this network namespace.
fn listening(processes: &[Process]) -> Vec<Listening> {
    let owners = socket_owners(processes);
    let mut out = Vec::new();
    for (file, udp) in [
        ("/proc/net/tcp", false),
        ("/proc/net/tcp6", false),
        ("/proc/net/udp", true),
        ("/proc/net/udp6", true),
    ] {
        let Some(text) = read(file) else { continue };
        for line in text.lines().skip(1) {
            if let Some((addr, state, inode)) = parse_proc_net_line(line) {
                // 0A: TCP_LISTEN; UDP sockets show 07 (TCP_CLOSE) when bound.
                if (!udp && state != 0x0a) || (udp && state != 0x07) {
                    continue;
                }
                out.push(Listening {
                    addr,
                    udp,
                    owner: owners.get(&inode).cloned(),
                });
            }
        }
    }
    out
}

/// One line of /proc/net/{tcp,tcp6,udp,udp6}: local address, state, inode.
pub fn parse_proc_net_line(line: &str) -> Option<(SocketAddr, u8, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (ip_hex, port_hex) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip_hex, 16).ok()?.swap_bytes(),
        )),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), state, inode))
}

fn interfaces() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn local_addresses() -> Vec<(String, IpAddr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        })
        .collect()
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The health checks' TLS files: before `kubeadm init` they do not exist.
fn tls_files(c: &Config) -> BTreeMap<PathBuf, bool> {
    let mut out = BTreeMap::new();
    for l in c.tcplb.iter().flat_map(|t| &t.listeners) {
        let t = &l.health.tls;
        for p in [&t.ca_file, &t.cert_file, &t.key_file]
            .into_iter()
            .flatten()
        {
            out.insert(p.clone(), p.exists());
        }
    }
    out
}

/// How long to listen for an answer after the first probe (arping -D
/// waits one second per probe; three probes go out 250 ms apart).
const PROBE_WINDOW: Duration = Duration::from_millis(1200);

fn probe_vips(c: &Config, local: &[(String, IpAddr)]) -> Vec<VipProbe> {
    let mut out = Vec::new();
    for i in c.vrrp.iter().flat_map(|v| &v.instances) {
        for net in &i.virtual_ips {
            let vip = net.addr();
            if local.iter().any(|(_, a)| *a == vip) {
                // On this host: reported as such; the kernel would not
                // answer its own probe anyway.
                continue;
            }
            let answer = match vip {
                IpAddr::V4(v4) => probe(&i.interface, v4),
                IpAddr::V6(_) => {
                    VipAnswer::NotProbed("IPv6: no neighbour-solicitation probe".into())
                }
            };
            out.push(VipProbe {
                instance: i.name.clone(),
                interface: i.interface.clone(),
                vip,
                answer,
            });
        }
    }
    out
}

/// Duplicate-address detection for `vip` on `iface`: probes from 0.0.0.0,
/// and whoever answers for the address within the window.
pub fn probe(iface: &str, vip: Ipv4Addr) -> VipAnswer {
    let sys = Path::new("/sys/class/net").join(iface);
    let (Some(index), Some(mac)) = (
        read(sys.join("ifindex")).and_then(|s| s.parse::<u32>().ok()),
        read(sys.join("address")).and_then(|s| arp::parse_mac(&s)),
    ) else {
        return VipAnswer::NotProbed(format!("no interface {iface}"));
    };
    let sock = match crate::sys::arp::ArpSocket::open(index) {
        Ok(s) => s,
        Err(e) => {
            return VipAnswer::NotProbed(format!("cannot open a packet socket on {iface}: {e}"))
        }
    };
    let frame = arp::probe(mac, vip);
    let start = Instant::now();
    let mut buf = [0u8; 1600];
    for k in 1..=3u32 {
        if let Err(e) = sock.send(&frame) {
            return VipAnswer::NotProbed(format!("cannot send on {iface}: {e}"));
        }
        // Listen until the next probe is due; after the last, to the end
        // of the window.
        let until = if k < 3 {
            start + Duration::from_millis(250) * k
        } else {
            start + PROBE_WINDOW
        };
        loop {
            match sock.recv_until(&mut buf, until) {
                Ok(Some(n)) => {
                    if let Some(holder) = arp::holder(&buf[..n], vip, mac) {
                        return VipAnswer::AnsweredBy(arp::mac_to_string(&holder));
                    }
                }
                Ok(None) => break,
                Err(e) => return VipAnswer::NotProbed(format!("cannot receive on {iface}: {e}")),
            }
        }
    }
    VipAnswer::Silent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines() {
        // 127.0.0.1:9440 LISTEN, inode 12345
        let l = "   0: 0100007F:24E0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_proc_net_line(l),
            Some(("127.0.0.1:9440".parse().unwrap(), 0x0a, 12345))
        );
        // [::]:8443 LISTEN
        let l6 = "   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_proc_net_line(l6),
            Some(("[::]:8443".parse().unwrap(), 0x0a, 777))
        );
        // ::1 is 00000000 00000000 00000000 01000000 in host order.
        let l6 = "   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1";
        assert_eq!(
            parse_proc_net_line(l6).map(|p| p.0),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_proc_net_line("  sl  local_address rem_address"), None);
    }
}
