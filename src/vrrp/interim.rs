//! A minimal pure VRRP codec and state machine used by the driver until the
//! full core (`packet.rs` / `fsm.rs` of the vrrp-core work) is merged; the
//! driver only depends on the small surface below, so swapping is local.
//! No sockets, no clocks: time is an input.

use std::net::IpAddr;
use std::time::Duration;

/// A decoded advertisement (RFC 5798 section 5.2, RFC 3768 section 5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
    /// v3: centiseconds; v2: seconds.
    pub interval: u16,
    pub addrs: Vec<IpAddr>,
}

impl Advert {
    pub fn interval_duration(&self) -> Duration {
        if self.version == 2 {
            Duration::from_secs(u64::from(self.interval))
        } else {
            Duration::from_millis(u64::from(self.interval) * 10)
        }
    }
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_bytes(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// RFC 5798 section 5.2.8: v3 covers the pseudo-header; v2 (RFC 3768
/// section 5.3.8) only the message.
fn checksum(version: u8, src: IpAddr, dst: IpAddr, msg: &[u8]) -> u16 {
    let mut sum = sum_bytes(msg);
    if version == 3 {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum += sum_bytes(&s.octets()) + sum_bytes(&d.octets());
                sum += 112 + msg.len() as u32;
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                sum += sum_bytes(&s.octets()) + sum_bytes(&d.octets());
                sum += msg.len() as u32 + 112;
            }
            _ => {}
        }
    }
    fold(sum)
}

pub fn encode(a: &Advert, src: IpAddr, dst: IpAddr, auth_pass: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + 16 * a.addrs.len() + 8);
    m.push((a.version << 4) | 1);
    m.push(a.vrid);
    m.push(a.priority);
    m.push(a.addrs.len() as u8);
    if a.version == 2 {
        m.push(if auth_pass.is_empty() { 0 } else { 1 });
        m.push(a.interval as u8);
    } else {
        m.extend_from_slice(&(a.interval & 0x0fff).to_be_bytes());
    }
    m.extend_from_slice(&[0, 0]);
    for ip in &a.addrs {
        match ip {
            IpAddr::V4(v) => m.extend_from_slice(&v.octets()),
            IpAddr::V6(v) => m.extend_from_slice(&v.octets()),
        }
    }
    if a.version == 2 {
        let mut auth = [0u8; 8];
        let p = auth_pass.as_bytes();
        auth[..p.len().min(8)].copy_from_slice(&p[..p.len().min(8)]);
        m.extend_from_slice(&auth);
    }
    let ck = checksum(a.version, src, dst, &m);
    m[6..8].copy_from_slice(&ck.to_be_bytes());
    m
}

/// Why a packet was dropped; the string is the metric label.
pub fn decode(
    msg: &[u8],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    version: u8,
    auth_pass: &str,
) -> Result<Advert, &'static str> {
    // RFC 5798 section 7.1.
    if ttl != 255 {
        return Err("ttl");
    }
    if msg.len() < 8 {
        return Err("too_short");
    }
    let ver = msg[0] >> 4;
    if ver != version {
        return Err("version");
    }
    if msg[0] & 0x0f != 1 {
        return Err("type");
    }
    let count = usize::from(msg[3]);
    let alen = if src.is_ipv6() { 16 } else { 4 };
    let need = 8 + count * alen + if version == 2 { 8 } else { 0 };
    if msg.len() < need {
        return Err("length");
    }
    let msg = &msg[..need];
    if checksum(version, src, dst, msg) != 0 {
        return Err("checksum");
    }
    let interval = if version == 2 {
        // RFC 3768 section 5.3.6: PASS is keepalived's simple auth.
        let want_type = if auth_pass.is_empty() { 0 } else { 1 };
        if msg[4] != want_type {
            return Err("auth");
        }
        if want_type == 1 {
            let mut auth = [0u8; 8];
            let p = auth_pass.as_bytes();
            auth[..p.len().min(8)].copy_from_slice(&p[..p.len().min(8)]);
            if msg[need - 8..] != auth {
                return Err("auth");
            }
        }
        u16::from(msg[5])
    } else {
        u16::from_be_bytes([msg[4], msg[5]]) & 0x0fff
    };
    if interval == 0 {
        return Err("interval");
    }
    let addrs = msg[8..8 + count * alen]
        .chunks(alen)
        .map(|c| {
            if alen == 4 {
                IpAddr::from([c[0], c[1], c[2], c[3]])
            } else {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                IpAddr::from(b)
            }
        })
        .collect();
    Ok(Advert {
        version: ver,
        vrid: msg[1],
        priority: msg[2],
        interval,
        addrs,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Backup,
    Master,
    Fault,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Startup,
    Shutdown,
    LinkUp,
    LinkDown,
    /// Effective priority after tracking.
    Priority(u8),
    Advert {
        src: IpAddr,
        priority: u8,
        interval: Duration,
    },
    /// A deadline passed.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SendAdvert {
        priority: u8,
    },
    /// Entered Master: add the VIPs and announce them.
    TakeVips,
    /// Left Master: remove the VIPs.
    ReleaseVips,
    StateChanged(State),
}

pub struct Router {
    pub state: State,
    pub priority: u8,
    version: u8,
    adver_interval: Duration,
    master_adver_interval: Duration,
    preempt: bool,
    preempt_delay: Duration,
    our_addr: IpAddr,
    pub master: Option<IpAddr>,
    master_down_at: Option<Duration>,
    adver_at: Option<Duration>,
    lower_master_since: Option<Duration>,
}

impl Router {
    pub fn new(
        version: u8,
        priority: u8,
        adver_interval: Duration,
        preempt: bool,
        preempt_delay: Duration,
        our_addr: IpAddr,
    ) -> Router {
        Router {
            state: State::Init,
            priority,
            version,
            adver_interval,
            master_adver_interval: adver_interval,
            preempt,
            preempt_delay,
            our_addr,
            master: None,
            master_down_at: None,
            adver_at: None,
            lower_master_since: None,
        }
    }

    /// RFC 5798 section 6.1: Skew_Time = ((256 - Priority) *
    /// Master_Adver_Interval) / 256; RFC 3768: (256 - Priority) / 256 s.
    fn skew(&self) -> Duration {
        let base = if self.version == 2 {
            Duration::from_secs(1)
        } else {
            self.master_adver_interval
        };
        base * (256 - u32::from(self.priority)) / 256
    }

    fn master_down_interval(&self) -> Duration {
        self.master_adver_interval * 3 + self.skew()
    }

    pub fn next_deadline(&self) -> Option<Duration> {
        match (self.master_down_at, self.adver_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn enter_backup(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.state == State::Master {
            out.push(Action::ReleaseVips);
        }
        self.state = State::Backup;
        self.adver_at = None;
        self.master_down_at = Some(now + self.master_down_interval());
        out.push(Action::StateChanged(State::Backup));
    }

    fn enter_master(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.state = State::Master;
        self.master = Some(self.our_addr);
        self.master_down_at = None;
        self.lower_master_since = None;
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::TakeVips);
        out.push(Action::StateChanged(State::Master));
        self.adver_at = Some(now + self.adver_interval);
    }

    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, input) {
            // RFC 5798 section 6.4.1: Startup -> Backup (we never own the
            // address, so never priority 255).
            (State::Init, Input::Startup) => {
                self.master_adver_interval = self.adver_interval;
                self.enter_backup(now, &mut out);
            }
            (_, Input::LinkDown) => {
                if self.state == State::Master {
                    out.push(Action::ReleaseVips);
                }
                self.state = State::Fault;
                self.master = None;
                self.adver_at = None;
                self.master_down_at = None;
                out.push(Action::StateChanged(State::Fault));
            }
            (State::Fault, Input::LinkUp) => {
                self.master_adver_interval = self.adver_interval;
                self.enter_backup(now, &mut out);
            }
            (_, Input::Priority(p)) => {
                self.priority = p;
                // Advertise the change at once.
                if self.state == State::Master {
                    out.push(Action::SendAdvert { priority: p });
                    self.adver_at = Some(now + self.adver_interval);
                }
            }
            // Sections 6.4.2 / 6.4.3: Shutdown.
            (State::Master, Input::Shutdown) => {
                out.push(Action::SendAdvert { priority: 0 });
                out.push(Action::ReleaseVips);
                self.state = State::Init;
                self.adver_at = None;
                out.push(Action::StateChanged(State::Init));
            }
            (_, Input::Shutdown) => {
                self.state = State::Init;
                self.adver_at = None;
                self.master_down_at = None;
            }
            (State::Backup, Input::Tick) if self.master_down_at.is_some_and(|t| now >= t) => {
                self.enter_master(now, &mut out);
            }
            (State::Master, Input::Tick) if self.adver_at.is_some_and(|t| now >= t) => {
                out.push(Action::SendAdvert {
                    priority: self.priority,
                });
                self.adver_at = Some(now + self.adver_interval);
            }
            // Section 6.4.2: Backup receives an advert.
            (
                State::Backup,
                Input::Advert {
                    src,
                    priority,
                    interval,
                },
            ) => {
                if priority == 0 {
                    self.master_down_at = Some(now + self.skew());
                    self.master = None;
                } else {
                    let lower = priority < self.priority;
                    let hold = if self.preempt && lower {
                        let since = *self.lower_master_since.get_or_insert(now);
                        now < since + self.preempt_delay
                    } else {
                        self.lower_master_since = None;
                        true
                    };
                    if !self.preempt || !lower || hold {
                        if self.version == 3 {
                            self.master_adver_interval = interval;
                        }
                        self.master = Some(src);
                        self.master_down_at = Some(now + self.master_down_interval());
                    }
                }
            }
            // Section 6.4.3: Master receives an advert.
            (
                State::Master,
                Input::Advert {
                    src,
                    priority,
                    interval,
                },
            ) => {
                if priority == 0 {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.adver_at = Some(now + self.adver_interval);
                } else if priority > self.priority
                    || (priority == self.priority && ip_greater(src, self.our_addr))
                {
                    if self.version == 3 {
                        self.master_adver_interval = interval;
                    }
                    self.master = Some(src);
                    self.enter_backup(now, &mut out);
                }
            }
            _ => {}
        }
        out
    }
}

fn ip_greater(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a > b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalived_v2_and_v3_bytes_round_trip() {
        let src: IpAddr = "10.213.0.1".parse().unwrap();
        let dst: IpAddr = "224.0.0.18".parse().unwrap();
        let v2 = [
            0x21, 0x33, 0x64, 0x01, 0x01, 0x01, 0x3a, 0x5f, 0x0a, 0xd5, 0x00, 0x64, 0x34, 0x32, 0,
            0, 0, 0, 0, 0,
        ];
        let a = decode(&v2, src, dst, 255, 2, "42").unwrap();
        assert_eq!((a.vrid, a.priority, a.interval), (51, 100, 1));
        assert_eq!(encode(&a, src, dst, "42"), v2.to_vec());
        assert_eq!(decode(&v2, src, dst, 255, 2, "43"), Err("auth"));
        assert_eq!(decode(&v2, src, dst, 254, 2, "42"), Err("ttl"));
        let v3 = [
            0x31, 0x33, 0x64, 0x01, 0x00, 0x0a, 0x74, 0x23, 0x0a, 0xd5, 0x00, 0x64,
        ];
        let a = decode(&v3, src, dst, 255, 3, "").unwrap();
        assert_eq!(a.interval_duration(), Duration::from_millis(100));
        assert_eq!(encode(&a, src, dst, ""), v3.to_vec());
        let mut bad = v3;
        bad[7] ^= 1;
        assert_eq!(decode(&bad, src, dst, 255, 3, ""), Err("checksum"));
        assert_eq!(decode(&v3[..5], src, dst, 255, 3, ""), Err("too_short"));
    }

    #[test]
    fn backup_takes_over_after_master_down_interval_and_skew_on_priority_0() {
        let me: IpAddr = "10.0.0.2".parse().unwrap();
        let peer: IpAddr = "10.0.0.3".parse().unwrap();
        let ms = Duration::from_millis;
        let mut r = Router::new(3, 100, ms(100), true, Duration::ZERO, me);
        r.handle(ms(0), Input::Startup);
        assert_eq!(r.state, State::Backup);
        // 3 * 100 ms + (256 - 100) * 100 ms / 256 = 360.9 ms.
        assert_eq!(
            r.next_deadline(),
            Some(ms(300) + Duration::from_micros(60937) + Duration::from_nanos(500))
        );
        r.handle(
            ms(50),
            Input::Advert {
                src: peer,
                priority: 200,
                interval: ms(100),
            },
        );
        assert!(r.handle(ms(400), Input::Tick).is_empty());
        let a = r.handle(ms(50) + ms(361), Input::Tick);
        assert!(a.contains(&Action::TakeVips), "{a:?}");
        // A higher priority master makes us back off.
        let a = r.handle(
            ms(500),
            Input::Advert {
                src: peer,
                priority: 200,
                interval: ms(100),
            },
        );
        assert!(a.contains(&Action::ReleaseVips));
        // Priority 0: take over after skew only.
        r.handle(
            ms(600),
            Input::Advert {
                src: peer,
                priority: 0,
                interval: ms(100),
            },
        );
        assert!(r.next_deadline().unwrap() < ms(600) + ms(61));
    }

    #[test]
    fn no_preemption_when_off_and_after_delay_when_on() {
        let me: IpAddr = "10.0.0.2".parse().unwrap();
        let peer: IpAddr = "10.0.0.3".parse().unwrap();
        let ms = Duration::from_millis;
        let mut off = Router::new(3, 200, ms(100), false, Duration::ZERO, me);
        off.handle(ms(0), Input::Startup);
        for t in (0..20).map(|i| ms(i * 100)) {
            off.handle(
                t,
                Input::Advert {
                    src: peer,
                    priority: 100,
                    interval: ms(100),
                },
            );
            assert!(off.handle(t, Input::Tick).is_empty());
        }
        let mut delayed = Router::new(3, 200, ms(100), true, ms(1000), me);
        delayed.handle(ms(0), Input::Startup);
        let mut took = None;
        for i in 0..30 {
            let t = ms(i * 100);
            delayed.handle(
                t,
                Input::Advert {
                    src: peer,
                    priority: 100,
                    interval: ms(100),
                },
            );
            if delayed
                .handle(t + ms(99), Input::Tick)
                .contains(&Action::TakeVips)
            {
                took = Some(t);
                break;
            }
        }
        let took = took.expect("never preempted");
        assert!(took >= ms(1000) && took < ms(1500), "{took:?}");
    }
}
