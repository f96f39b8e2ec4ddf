//! The VRRP driver's input path on arbitrary traffic: a received datagram
//! through `net::parse_ipv4` (IPv4: the raw socket gives the IP header) or
//! as the IPv6 socket hands it over (payload, hop limit, source), then
//! `net::inbound` (own address, unicast peers, the codec and this
//! instance's checks), then the state machine with link, tracking and
//! time inputs in between. Properties: no panic, and after every step the
//! actions agree with the state: VIPs are held exactly while MASTER, every
//! state change is reported once with the right `from`, a priority-0
//! advert only comes with leaving MASTER, nothing is sent in FAULT or INIT,
//! and BACKUP and MASTER always have a timer running.
//!
//! Input: 4 bytes of instance settings, then records `[op, len, len bytes]`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use lbd::vrrp::fsm::{Action, Input, State, VirtualRouter, VirtualRouterParams};
use lbd::vrrp::net::{inbound, parse_ipv4, Inbound, Received};
use lbd::vrrp::packet::{Auth, LocalInstance, Version, MULTICAST_V6};
use libfuzzer_sys::fuzz_target;

/// The captures in fuzz/seeds come from 10.213.0.1 and .2, VRID 51,
/// auth_pass "42", 1 s adverts.
const PEER_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PEER_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

struct Instance {
    router: VirtualRouter,
    local: LocalInstance,
    own: IpAddr,
    peers: Vec<IpAddr>,
    now: Duration,
    holds_vips: bool,
}

impl Instance {
    fn new(cfg: &[u8; 4]) -> Instance {
        let [flags, vrid, priority, interval] = *cfg;
        let version = if flags & 1 == 0 {
            Version::V2
        } else {
            Version::V3
        };
        let v6 = version == Version::V3 && flags & 2 != 0;
        // v2 intervals are whole seconds; v3 centiseconds, 1..=4095.
        let advert_interval_cs = match version {
            Version::V2 => 100 * u16::from(interval % 4 + 1),
            Version::V3 => [100, 10, 300, 4095][usize::from(interval % 4)],
        };
        // Either one of the capture's peers (its adverts are then our own)
        // or a third address.
        let own: IpAddr = match (v6, flags & 4 != 0) {
            (false, false) => IpAddr::V4(Ipv4Addr::new(10, 213, 0, 3)),
            (false, true) => IpAddr::V4(PEER_A),
            (true, false) => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 3)),
            (true, true) => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        };
        let peers = if flags & 8 != 0 {
            vec![if v6 { ipv6_peer(2) } else { IpAddr::V4(PEER_B) }]
        } else {
            Vec::new()
        };
        let auth = if version == Version::V2 && flags & 16 != 0 {
            Auth::from_pass("42")
        } else {
            Auth::None
        };
        let vip: IpAddr = if v6 {
            "fd00::100".parse().unwrap()
        } else {
            "10.213.0.100".parse().unwrap()
        };
        let params = VirtualRouterParams {
            version,
            vrid: if vrid < 128 { 51 } else { vrid },
            priority: priority.clamp(1, 255),
            advert_interval_cs,
            preempt: flags & 32 == 0,
            preempt_delay: Duration::from_millis(if flags & 64 != 0 { 1500 } else { 0 }),
            primary_address: own,
            virtual_ips: vec![vip],
            garp_refresh: (flags & 128 != 0).then(|| Duration::from_secs(2)),
            immediate_preempt: flags & 64 == 0,
            garp_master_delay: Some(Duration::from_secs(5)),
        };
        let local = LocalInstance {
            version,
            vrid: params.vrid,
            auth,
            advert_interval_cs,
        };
        Instance {
            router: VirtualRouter::new(params),
            local,
            own,
            peers,
            now: Duration::ZERO,
            holds_vips: false,
        }
    }

    /// One input, then every timer due up to now, checking each result.
    fn feed(&mut self, input: Input) {
        self.handle(input);
        // Bounded: a timer that re-arms at `now` would loop.
        for _ in 0..64 {
            match self.router.next_deadline() {
                Some(t) if t <= self.now => self.handle(Input::Tick),
                _ => return,
            }
        }
        panic!("timers keep firing at {:?}", self.now);
    }

    fn handle(&mut self, input: Input) {
        let before = self.router.state();
        let actions = self.router.handle(self.now, input.clone());
        let mut state = before;
        for a in &actions {
            match a {
                Action::AddVips => {
                    assert!(!self.holds_vips, "AddVips twice: {input:?} -> {actions:?}");
                    self.holds_vips = true;
                }
                Action::RemoveVips => {
                    assert!(
                        self.holds_vips,
                        "RemoveVips without VIPs: {input:?} -> {actions:?}"
                    );
                    self.holds_vips = false;
                }
                Action::StateChanged { from, to } => {
                    assert_eq!(*from, state, "{input:?} -> {actions:?}");
                    assert_ne!(from, to, "{input:?} -> {actions:?}");
                    state = *to;
                }
                Action::SendAdvert { priority: 0, .. } => {
                    assert_eq!(
                        before,
                        State::Master,
                        "priority 0 advert: {input:?} -> {actions:?}"
                    );
                }
                Action::SendAdvert { .. } | Action::SendGratuitous { .. } => {}
            }
        }
        let after = self.router.state();
        assert_eq!(
            state, after,
            "unreported state change: {input:?} -> {actions:?}"
        );
        assert_eq!(
            self.holds_vips,
            after == State::Master,
            "{input:?} -> {actions:?}"
        );
        if matches!(after, State::Fault | State::Initialize) && !matches!(input, Input::Shutdown) {
            assert!(
                !actions.iter().any(|a| matches!(
                    a,
                    Action::SendAdvert { .. } | Action::SendGratuitous { .. }
                )),
                "sent in {after:?}: {input:?} -> {actions:?}"
            );
        }
        if matches!(after, State::Backup | State::Master) {
            let next = self.router.next_deadline();
            assert!(next.is_some(), "{after:?} with no timer: {input:?}");
        }
    }

    /// What the driver does with one received packet.
    fn receive(&mut self, pkt: &Received) {
        match inbound(pkt, self.own, &self.peers, &self.local) {
            Inbound::Advert(src, p) => {
                assert_ne!(src, self.own);
                assert_eq!(p.vrid, self.local.vrid);
                self.feed(Input::advert(src, &p));
            }
            Inbound::Own => assert_eq!(pkt.src, self.own),
            dropped => assert!(dropped.drop_reason().is_some()),
        }
    }
}

fn ipv6_peer(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n))
}

fuzz_target!(|data: &[u8]| {
    let Some((cfg, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut inst = Instance::new(cfg);
    inst.feed(Input::Startup);
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        match op % 8 {
            // A raw IPv4 datagram, as recvmsg on the IPv4 socket gives it.
            0 => {
                if let Ok(pkt) = parse_ipv4(body) {
                    inst.receive(&pkt);
                }
            }
            // IPv6: hop limit, source selector, then the VRRP payload.
            1 => {
                if let [hop, src, payload @ ..] = body {
                    let pkt = Received {
                        src: ipv6_peer(u16::from(*src % 4)),
                        dst: IpAddr::V6(MULTICAST_V6),
                        ttl: *hop,
                        payload: payload.to_vec(),
                    };
                    inst.receive(&pkt);
                }
            }
            // Time passes: up to 65.5 s in ms.
            2 => {
                let ms = body
                    .iter()
                    .take(2)
                    .fold(0u64, |a, b| a << 8 | u64::from(*b));
                inst.now += Duration::from_millis(ms);
                inst.feed(Input::Tick);
            }
            3 => inst.feed(Input::InterfaceDown),
            4 => inst.feed(Input::InterfaceUp),
            5 => {
                let w = body.first().map_or(0, |b| i32::from(*b as i8));
                inst.feed(Input::TrackChanged { weight: w * 4 });
            }
            6 => inst.feed(Input::Shutdown),
            _ => inst.feed(Input::Startup),
        }
    }
    inst.feed(Input::Shutdown);
    assert!(!inst.holds_vips, "VIPs left after Shutdown");
});
