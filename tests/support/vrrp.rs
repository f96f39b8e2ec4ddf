//! VRRP test helpers: which namespaces hold a VIP, sampled continuously,
//! with the longest time two of them held it at once (split brain).
//!
//! A VIP kept hidden by the handover grace (docs/vrrp.md: no ARP / ND
//! answers, the connections of a master that left) is not held: nobody
//! is sent to it. IPv4 marks it deprecated; for IPv6 (always deprecated)
//! the namespace's nft ruleset says (an `ip6 lbd-handover-*` table with
//! an input chain), looked at no more than every 100 ms.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Sampling period of every namespace.
pub const SAMPLE: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Stats {
    dual_since: Option<Instant>,
    max_dual: Duration,
    none_since: Option<Instant>,
    max_none: Duration,
    samples: u64,
    holders: Vec<usize>,
}

pub struct VipWatch {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    threads: Vec<JoinHandle<()>>,
}

impl VipWatch {
    /// Samples `vip` on `ifname` in each namespace every 20 ms.
    pub fn start(namespaces: &[String], ifname: &str, vip: IpAddr) -> VipWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flags: Arc<Vec<AtomicBool>> =
            Arc::new(namespaces.iter().map(|_| AtomicBool::new(false)).collect());
        let ready: Arc<Vec<AtomicBool>> =
            Arc::new(namespaces.iter().map(|_| AtomicBool::new(false)).collect());
        let stats = Arc::new(Mutex::new(Stats::default()));
        let mut threads = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            let (stop, flags, ready) = (stop.clone(), flags.clone(), ready.clone());
            let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
            let ifname = ifname.to_string();
            threads.push(std::thread::spawn(move || {
                lbd::sys::netns::enter(&path).expect("setns");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let nl = lbd::sys::addr::Netlink::connect().unwrap();
                    let mut v6_hidden = (false, Instant::now() - Duration::from_secs(1));
                    while !stop.load(Ordering::Relaxed) {
                        // By name each time: a test may delete and recreate
                        // the link (another ifindex); no link, no VIP.
                        let has = match nl.link_by_name(&ifname).await {
                            Ok(link) => nl.addresses(link.index).await.ok().map(|list| {
                                list.iter().any(|a| {
                                    a.addr.addr() == vip && !(vip.is_ipv4() && a.deprecated)
                                })
                            }),
                            Err(_) => Some(false),
                        };
                        // The thread is in the namespace: so is nft.
                        let has = match has {
                            Some(true) if vip.is_ipv6() => {
                                if v6_hidden.1.elapsed() >= Duration::from_millis(100) {
                                    v6_hidden = (ipv6_hidden_here(), Instant::now());
                                }
                                Some(!v6_hidden.0)
                            }
                            other => other,
                        };
                        if let Some(has) = has {
                            flags[i].store(has, Ordering::Relaxed);
                            ready[i].store(true, Ordering::Relaxed);
                        }
                        tokio::time::sleep(SAMPLE / 2).await;
                    }
                });
            }));
        }
        {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if ready.iter().all(|r| r.load(Ordering::Relaxed)) {
                        let holders: Vec<usize> = flags
                            .iter()
                            .enumerate()
                            .filter(|(_, f)| f.load(Ordering::Relaxed))
                            .map(|(i, _)| i)
                            .collect();
                        let now = Instant::now();
                        let mut s = stats.lock().unwrap();
                        s.samples += 1;
                        if holders.len() > 1 {
                            let since = *s.dual_since.get_or_insert(now);
                            s.max_dual = s.max_dual.max(now - since);
                        } else {
                            s.dual_since = None;
                        }
                        if holders.is_empty() {
                            let since = *s.none_since.get_or_insert(now);
                            s.max_none = s.max_none.max(now - since);
                        } else {
                            s.none_since = None;
                        }
                        s.holders = holders;
                    }
                    std::thread::sleep(SAMPLE);
                }
            }));
        }
        VipWatch {
            stop,
            stats,
            threads,
        }
    }

    /// Indexes (into the namespaces given to `start`) holding the VIP now.
    pub fn holders(&self) -> Vec<usize> {
        self.stats.lock().unwrap().holders.clone()
    }

    /// Longest time two or more namespaces held the VIP together.
    pub fn max_dual(&self) -> Duration {
        self.stats.lock().unwrap().max_dual
    }

    /// The longest dual holding so far, and starts counting afresh (for a
    /// phase where it is expected, like a killed node's VIP expiring).
    pub fn take_max_dual(&self) -> Duration {
        let mut s = self.stats.lock().unwrap();
        let d = s.max_dual;
        s.max_dual = Duration::ZERO;
        s.dual_since = None;
        d
    }

    /// The longest time nobody held the VIP since the last call (from the
    /// first to the last sample without a holder), and starts afresh.
    pub fn take_max_none(&self) -> Duration {
        let mut s = self.stats.lock().unwrap();
        let d = s.max_none;
        s.max_none = Duration::ZERO;
        s.none_since = None;
        d
    }

    pub fn samples(&self) -> u64 {
        self.stats.lock().unwrap().samples
    }

    /// Polls until exactly `want` holds the VIP (alone); the time it took.
    pub fn wait_sole_holder(&self, want: usize, limit: Duration) -> Option<Duration> {
        super::netns::wait_for(limit, || self.holders() == vec![want])
    }

    /// Polls until exactly one namespace holds the VIP; which, and when.
    pub fn wait_one_holder(&self, limit: Duration) -> Option<(usize, Duration)> {
        let t = super::netns::wait_for(limit, || self.holders().len() == 1)?;
        Some((self.holders()[0], t))
    }
}

/// Whether this thread's namespace hides IPv6 VIPs (module doc).
fn ipv6_hidden_here() -> bool {
    let Ok(out) = std::process::Command::new("nft")
        .args(["list", "ruleset", "ip6"])
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut in_ours = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("table ") {
            in_ours = l.starts_with("table ip6 lbd-handover-");
        } else if in_ours && l.starts_with("chain input") {
            return true;
        }
    }
    false
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Skew_Time as RFC 5798 section 6.1 defines it, from the advert interval
/// (RFC 3768, v2: from one second): the tests' own oracle, not lbd's code.
pub fn skew_time(version: u8, advert_interval: Duration, priority: u8) -> Duration {
    let base = if version == 2 {
        Duration::from_secs(1)
    } else {
        advert_interval
    };
    base * (256 - u32::from(priority)) / 256
}

/// Master_Down_Interval (RFC 5798 section 6.1): three intervals plus skew.
pub fn master_down_interval(version: u8, advert_interval: Duration, priority: u8) -> Duration {
    advert_interval * 3 + skew_time(version, advert_interval, priority)
}
