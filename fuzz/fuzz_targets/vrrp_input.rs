//! The VRRP driver's input path on arbitrary traffic: a received datagram
//! through `net::parse_ipv4` (IPv4: the raw socket gives the IP header) or
//! as the IPv6 socket hands it over (payload, hop limit, source), then
//! `net::inbound` (own address, unicast peers, the codec and this
//! instance's checks), then the state machine at the packet's receive
//! time (never before the last input: the driver's clock), with link,
//! fault, tracking, release/resume, reload (Reconfigure) and time inputs
//! in between. Properties: no panic, and after every step the actions agree
//! with the state: VIPs are added only when not held, removed and renewed
//! only when held, renewed only by a MASTER or by a BACKUP holding adopted
//! ones (it waits out Master_Down_Interval), always held while MASTER and otherwise only while a
//! deadline to let them go runs; every state change is reported once with
//! the right `from`; a priority-0 advert only comes with a master leaving
//! on purpose (shutdown, release, a fault that leaves the link usable);
//! FAULT always has a fault; BACKUP (unless released) and MASTER always
//! have a timer running.
//!
//! Input: 4 bytes of instance settings, then records `[op, len, len bytes]`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use lbd::vrrp::fsm::{Action, Fault, Input, State, VirtualRouter, VirtualRouterParams};
use lbd::vrrp::net::{inbound, parse_ipv4, Inbound, Received};
use lbd::vrrp::packet::{Auth, LocalInstance, Version, MULTICAST_V6};
use libfuzzer_sys::fuzz_target;

/// The captures in fuzz/seeds come from 10.213.0.1 and .2, VRID 51,
/// auth_pass "42", 1 s adverts.
const PEER_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PEER_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

struct Instance {
    router: VirtualRouter,
    params: VirtualRouterParams,
    local: LocalInstance,
    own: IpAddr,
    peers: Vec<IpAddr>,
    now: Duration,
    holds_vips: bool,
    /// The VIPs held are a predecessor's (Adopted), not added since.
    adopted_held: bool,
    started: bool,
    /// The time of the last input (the driver's clock never goes back).
    fed: Duration,
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
            vip_renew: Some(Duration::from_secs(1)),
            handover_grace: (flags & 16 != 0).then(|| Duration::from_secs(2)),
        };
        let local = LocalInstance {
            version,
            vrid: params.vrid,
            auth,
            advert_interval_cs,
        };
        Instance {
            router: VirtualRouter::new(params.clone()),
            params,
            local,
            own,
            peers,
            now: Duration::ZERO,
            holds_vips: false,
            adopted_held: false,
            started: false,
            fed: Duration::ZERO,
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
        assert!(self.now >= self.fed, "the clock went back");
        self.fed = self.now;
        let before = self.router.state();
        let leaving_input = match &input {
            Input::Shutdown | Input::Release => true,
            Input::Fault { reason } => {
                reason.can_advertise() && !self.router.faults().contains(reason)
            }
            _ => false,
        };
        if input == Input::Adopted && !self.started {
            self.holds_vips = true;
            self.adopted_held = true;
        }
        self.started |= input == Input::Startup;
        let actions = self.router.handle(self.now, input.clone());
        let was_master = before == State::Master
            || actions.contains(&Action::StateChanged {
                from: State::Backup,
                to: State::Master,
            });
        let after = self.router.state();
        let mut state = before;
        for a in &actions {
            match a {
                Action::AddVips => {
                    assert!(!self.holds_vips, "AddVips twice: {input:?} -> {actions:?}");
                    self.holds_vips = true;
                    self.adopted_held = false;
                }
                Action::RemoveVips => {
                    assert!(
                        self.holds_vips,
                        "RemoveVips without VIPs: {input:?} -> {actions:?}"
                    );
                    self.holds_vips = false;
                    self.adopted_held = false;
                }
                Action::RenewVips => {
                    assert!(self.holds_vips, "RenewVips without VIPs: {input:?}");
                    // A Backup renews only VIPs it adopted, while it
                    // waits out Master_Down_Interval (fsm: adoption).
                    // Hidden VIPs (handover grace) too, until it ends.
                    assert!(
                        was_master
                            || after == State::Master
                            || (after == State::Backup && self.adopted_held)
                            || self.router.handover().0,
                        "renewal outside MASTER: {input:?} in {before:?} -> {actions:?}"
                    );
                }
                Action::Handover { hide, forward_to } => {
                    assert!(
                        !*hide || self.holds_vips,
                        "hiding VIPs not held: {input:?} -> {actions:?}"
                    );
                    assert!(
                        !(*hide && forward_to.is_some()),
                        "hiding and forwarding: {input:?} -> {actions:?}"
                    );
                }
                Action::StateChanged { from, to } => {
                    assert_eq!(*from, state, "{input:?} -> {actions:?}");
                    assert_ne!(from, to, "{input:?} -> {actions:?}");
                    state = *to;
                }
                Action::SendAdvert { priority: 0, .. } => {
                    assert!(
                        leaving_input && was_master,
                        "priority 0 advert: {input:?} in {before:?} -> {actions:?}"
                    );
                }
                Action::SendAdvert { .. } | Action::SendGratuitous { .. } => {
                    assert!(
                        was_master || after == State::Master,
                        "sent outside MASTER: {input:?} -> {actions:?}"
                    );
                }
            }
        }
        assert_eq!(
            state, after,
            "unreported state change: {input:?} -> {actions:?}"
        );
        assert_eq!(
            self.holds_vips,
            self.router.holds_vips(),
            "{input:?} -> {actions:?}"
        );
        if after == State::Master {
            assert!(self.holds_vips, "MASTER without VIPs: {input:?}");
        }
        if after == State::Fault {
            assert!(!self.router.faults().is_empty(), "FAULT without a fault");
        }
        let next = self.router.next_deadline();
        if let Some(t) = next {
            assert!(t > self.now, "timer left due: {input:?}");
        }
        if after == State::Master || (after == State::Backup && !self.router.released()) {
            assert!(next.is_some(), "{after:?} with no timer: {input:?}");
        }
        if self.holds_vips && after != State::Master && self.started {
            assert!(next.is_some(), "VIPs held with no deadline: {input:?}");
        }
    }

    /// What the driver does with one received packet: `age` is how long
    /// before now the kernel got it; the router's clock never goes back.
    fn receive(&mut self, pkt: &Received, age: Duration) {
        match inbound(pkt, self.own, &self.peers, &self.local) {
            Inbound::Advert(src, p) => {
                assert_ne!(src, self.own);
                assert_eq!(p.vrid, self.local.vrid);
                let now = self.now;
                self.now = now.saturating_sub(age).max(self.fed);
                self.feed(Input::advert(src, &p));
                self.now = now;
            }
            Inbound::Own => assert_eq!(pkt.src, self.own),
            dropped => assert!(dropped.drop_reason().is_some()),
        }
    }
}

fn fault(b: u8) -> Fault {
    Fault::ALL[usize::from(b) % Fault::ALL.len()]
}

fn ipv6_peer(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n))
}

fuzz_target!(|data: &[u8]| {
    let Some((cfg, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut inst = Instance::new(cfg);
    // A predecessor's VIPs, sometimes (settings byte 0, bit 4 unused above).
    if cfg[0] & 16 != 0 && cfg[1] & 1 != 0 {
        inst.feed(Input::Adopted);
    }
    inst.feed(Input::Startup);
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let arg = body.first().copied().unwrap_or(0);
        match op % 16 {
            // A raw IPv4 datagram, as recvmsg on the IPv4 socket gives it,
            // received up to 25 ms ago.
            0 => {
                if let Ok(pkt) = parse_ipv4(body) {
                    inst.receive(&pkt, Duration::from_millis(u64::from(arg % 26)));
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
                        received_at: None,
                    };
                    inst.receive(&pkt, Duration::ZERO);
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
            5 => inst.feed(Input::TrackChanged {
                weight: i32::from(arg as i8) * 4,
            }),
            6 => inst.feed(Input::Shutdown),
            7 => inst.feed(Input::Fault { reason: fault(arg) }),
            8 => inst.feed(Input::Recovered { reason: fault(arg) }),
            9 => inst.feed(Input::Release),
            10 => inst.feed(Input::Resume),
            // A reload in place: priority, interval, preemption.
            11 => {
                let p = VirtualRouterParams {
                    priority: arg.clamp(1, 254),
                    advert_interval_cs: match inst.params.version {
                        Version::V2 => 100 * u16::from(arg % 3 + 1),
                        Version::V3 => [10, 100, 300][usize::from(arg % 3)],
                    },
                    preempt: arg & 1 == 0,
                    ..inst.params.clone()
                };
                inst.local.advert_interval_cs = p.advert_interval_cs;
                inst.feed(Input::Reconfigure { params: p });
            }
            12 => inst.feed(Input::Adopted),
            _ => inst.feed(Input::Startup),
        }
    }
    inst.feed(Input::Shutdown);
    // Make before break: the VIPs go when a successor speaks, or at the
    // latest two intervals (2 s at most) later.
    inst.now += Duration::from_secs(3);
    inst.feed(Input::Tick);
    assert!(!inst.holds_vips, "VIPs left after Shutdown");
});
