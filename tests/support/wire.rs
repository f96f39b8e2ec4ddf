//! What goes over a link, seen from a namespace of its own: an AF_PACKET
//! capture of VRRP adverts, gratuitous ARPs and neighbour advertisements
//! with the kernel's receive time (SO_TIMESTAMPNS), so the test measures
//! timers on the wire rather than in lbd's logs; and a flood of raw IPv4
//! datagrams at a given rate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag,
    SockProtocol, SockType, SockaddrStorage,
};

/// One frame of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A VRRP advertisement (v2 or v3, IPv4 or IPv6).
    Advert {
        src: IpAddr,
        /// The group, or a unicast peer.
        dst: IpAddr,
        src_mac: [u8; 6],
        vrid: u8,
        priority: u8,
    },
    /// An ARP (gratuitous ones announce `ip` at `mac`).
    Arp { mac: [u8; 6], ip: Ipv4Addr },
    /// An ICMPv6 neighbour advertisement for `target`.
    Na { mac: [u8; 6], target: Ipv6Addr },
}

#[derive(Debug, Clone)]
pub struct Seen {
    /// The kernel's receive time.
    pub at: SystemTime,
    pub frame: Frame,
}

/// Captures every frame on the namespace's links (but those from
/// `exclude`, dropped in the kernel by a socket filter: a flood source)
/// until dropped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &str, exclude: Option<[u8; 6]>) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                lbd::sys::netns::enter(&path).expect("setns");
                let fd = open_capture(exclude);
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Some((at, n)) = recv_frame(&fd, &mut buf) {
                        if let Some(frame) = parse(&buf[..n]) {
                            seen.lock().unwrap().push(Seen { at, frame });
                        }
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture did not start");
        Capture {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Adverts from `src`: (time, priority).
    pub fn adverts_from(&self, src: IpAddr) -> Vec<(SystemTime, u8)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s.frame {
                Frame::Advert {
                    src: a, priority, ..
                } if a == src => Some((s.at, priority)),
                _ => None,
            })
            .collect()
    }

    /// Where `src`'s adverts went: (time, destination address).
    pub fn advert_destinations(&self, src: IpAddr) -> Vec<(SystemTime, IpAddr)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s.frame {
                Frame::Advert { src: a, dst, .. } if a == src => Some((s.at, dst)),
                _ => None,
            })
            .collect()
    }

    /// Every advert with priority 0: (time, source).
    pub fn priority_zero(&self) -> Vec<(SystemTime, IpAddr)> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s.frame {
                Frame::Advert {
                    src, priority: 0, ..
                } => Some((s.at, src)),
                _ => None,
            })
            .collect()
    }

    /// Gratuitous ARPs / NAs announcing `vip`: (time, MAC announced).
    pub fn announcements(&self, vip: IpAddr) -> Vec<(SystemTime, [u8; 6])> {
        self.seen()
            .into_iter()
            .filter_map(|s| match (s.frame, vip) {
                (Frame::Arp { mac, ip }, IpAddr::V4(v)) if ip == v => Some((s.at, mac)),
                (Frame::Na { mac, target }, IpAddr::V6(v)) if target == v => Some((s.at, mac)),
                _ => None,
            })
            .collect()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The longest gap between consecutive times (zero for fewer than two).
/// The longest stretch of `[from, to]` without an entry of `times`: the
/// window's edges count, so a timer that stopped shows as the gap to `to`.
pub fn max_gap_within(times: &[SystemTime], from: SystemTime, to: SystemTime) -> Duration {
    let mut edges = vec![from];
    edges.extend(times.iter().copied().filter(|t| *t >= from && *t <= to));
    edges.push(to);
    max_gap(&edges)
}

pub fn max_gap(times: &[SystemTime]) -> Duration {
    times
        .windows(2)
        .filter_map(|w| w[1].duration_since(w[0]).ok())
        .max()
        .unwrap_or_default()
}

fn open_capture(exclude: Option<[u8; 6]>) -> OwnedFd {
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .expect("AF_PACKET socket (root)");
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true).unwrap();
    let sock = socket2::Socket::from(fd);
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let _ = sock.set_recv_buffer_size(8 << 20);
    if let Some(mac) = exclude {
        // Drop frames whose source MAC is `mac`: bytes 6..10, then 10..12.
        use socket2::SockFilter;
        let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
        let lo = u32::from(u16::from_be_bytes([mac[4], mac[5]]));
        let prog = [
            SockFilter::new(0x20, 0, 0, 6),           // ld [6]
            SockFilter::new(0x15, 0, 2, hi),          // jeq hi ? next : accept
            SockFilter::new(0x28, 0, 0, 10),          // ldh [10]
            SockFilter::new(0x15, 1, 0, lo),          // jeq lo ? drop : accept
            SockFilter::new(0x06, 0, 0, 0x0004_0000), // accept
            SockFilter::new(0x06, 0, 0, 0),           // drop
        ];
        sock.attach_filter(&prog).unwrap();
    }
    OwnedFd::from(sock)
}

fn recv_frame(fd: &OwnedFd, buf: &mut [u8]) -> Option<(SystemTime, usize)> {
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
            .ok()?;
    let mut at = SystemTime::now();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            at = SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
        }
    }
    Some((at, msg.bytes))
}

fn mac_at(f: &[u8], i: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&f[i..i + 6]);
    m
}

/// The frames of interest, from the Ethernet header on.
pub fn parse(f: &[u8]) -> Option<Frame> {
    if f.len() < 14 {
        return None;
    }
    let src_mac = mac_at(f, 6);
    let payload = &f[14..];
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 if payload.len() >= 20 => {
            let ihl = usize::from(payload[0] & 0x0f) * 4;
            if payload[9] != 112 || payload.len() < ihl + 4 {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(
                payload[12],
                payload[13],
                payload[14],
                payload[15],
            ));
            let dst = IpAddr::V4(Ipv4Addr::new(
                payload[16],
                payload[17],
                payload[18],
                payload[19],
            ));
            Some(Frame::Advert {
                src,
                dst,
                src_mac,
                vrid: payload[ihl + 1],
                priority: payload[ihl + 2],
            })
        }
        0x0806 if payload.len() >= 28 => Some(Frame::Arp {
            mac: mac_at(payload, 8),
            ip: Ipv4Addr::new(payload[14], payload[15], payload[16], payload[17]),
        }),
        0x86dd if payload.len() >= 44 => {
            let mut s = [0u8; 16];
            s.copy_from_slice(&payload[8..24]);
            let src = IpAddr::V6(Ipv6Addr::from(s));
            let mut d = [0u8; 16];
            d.copy_from_slice(&payload[24..40]);
            let dst = IpAddr::V6(Ipv6Addr::from(d));
            match payload[6] {
                112 => Some(Frame::Advert {
                    src,
                    dst,
                    src_mac,
                    vrid: payload[41],
                    priority: payload[42],
                }),
                58 if payload[40] == 136 && payload.len() >= 64 => {
                    let mut t = [0u8; 16];
                    t.copy_from_slice(&payload[48..64]);
                    Some(Frame::Na {
                        mac: src_mac,
                        target: Ipv6Addr::from(t),
                    })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Sends `datagrams` (whole IPv4 datagrams, header included: any source)
/// round-robin from namespace `ns` at `per_second`, until dropped; counts
/// what it sent. Two sender threads, each half the rate: the kernel
/// delivers each datagram to the bridge's ports in the sender's context,
/// so one thread is bound to one core.
pub struct Flood {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// Up to [`MmsgBatch::MAX`] datagrams per `sendmmsg(2)`, taken round-robin
/// from a fixed set (their destinations read from their IPv4 headers).
struct MmsgBatch<'a> {
    datagrams: &'a [Vec<u8>],
    dsts: Vec<libc::sockaddr_in>,
}

impl<'a> MmsgBatch<'a> {
    const MAX: usize = 64;

    fn new(datagrams: &'a [Vec<u8>]) -> Self {
        let dsts = datagrams
            .iter()
            .map(|d| {
                // SAFETY: sockaddr_in is plain old data; all-zero is valid.
                let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                a.sin_family = libc::AF_INET as libc::sa_family_t;
                a.sin_addr.s_addr = u32::from_ne_bytes([d[16], d[17], d[18], d[19]]);
                a
            })
            .collect();
        MmsgBatch { datagrams, dsts }
    }

    /// Sends up to `want` datagrams starting at round-robin position `from`;
    /// returns how many the kernel took (0 on an error).
    fn send(&self, fd: std::os::fd::RawFd, from: u64, want: u64) -> u64 {
        let k = (want as usize).min(Self::MAX);
        let len = self.datagrams.len();
        let mut iov: Vec<libc::iovec> = (0..k)
            .map(|i| {
                let d = &self.datagrams[(from as usize + i) % len];
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                }
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..k)
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; all-zero is valid.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                let dst = &self.dsts[(from as usize + i) % len];
                h.msg_hdr.msg_name = dst as *const libc::sockaddr_in as *mut libc::c_void;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut iov[i] as *mut libc::iovec;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: msgs, iov and the buffers they point to outlive the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), k as u32, 0) };
        if r < 0 {
            0
        } else {
            r as u64
        }
    }
}

const FLOOD_THREADS: u64 = 2;

impl Flood {
    pub fn start(ns: &str, datagrams: Vec<Vec<u8>>, per_second: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
        let datagrams = Arc::new(datagrams);
        let threads = (0..FLOOD_THREADS)
            .map(|_| {
                let (stop, sent, path, datagrams) =
                    (stop.clone(), sent.clone(), path.clone(), datagrams.clone());
                let per_second = per_second / FLOOD_THREADS;
                std::thread::spawn(move || {
                    flood_thread(&path, &datagrams, per_second, &stop, &sent)
                })
            })
            .collect();
        Flood {
            stop,
            sent,
            threads,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

fn flood_thread(
    ns: &std::path::Path,
    datagrams: &[Vec<u8>],
    per_second: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    lbd::sys::netns::enter(ns).expect("setns");
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw socket (root)");
    let _ = sock.set_send_buffer_size(4 << 20);
    let batch = MmsgBatch::new(datagrams);
    let start = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        // Catch up to the rate, a millisecond at a time, in sendmmsg
        // batches: one syscall per datagram capped the flood at 7k-33k/s
        // on two shared cores.
        let due = start.elapsed().as_micros() as u64 * per_second / 1_000_000;
        while n < due {
            let k = batch.send(sock.as_raw_fd(), n, due - n);
            if k == 0 {
                break;
            }
            sent.fetch_add(k, Ordering::Relaxed);
            n += k;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An IPv4 datagram around `payload` (protocol 112, TTL `ttl`), with a
/// correct header checksum.
pub fn ipv4_datagram(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut h = vec![
        0x45,
        0xc0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0,
        0,
        ttl,
        112,
        0,
        0,
    ];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// The MAC of `ifname` inside namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let out = super::netns::run(&["ip", "-n", ns, "-o", "link", "show", "dev", ifname]);
    let word = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut m = [0u8; 6];
    for (i, b) in word.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).unwrap();
    }
    m
}
