//! The VRRP state machine of one virtual router (RFC 5798 sec 6.4 for v3,
//! RFC 3768 sec 6.4 for v2): pure, `(now, input) -> actions`.
//!
//! No sockets, no clocks: `now` is monotonic time since the driver started,
//! passed with every input. Timers are deadlines kept here; the driver sleeps
//! until [`VirtualRouter::next_deadline`] and then calls `handle(now,
//! Input::Tick)`. Inputs and actions are plain serde values, so a scenario is
//! a replayable fixture (tests/conformance/vrrp/).
//!
//! Choices beyond the RFC text, each marked where it is made:
//! - **Tracking** is computed by the driver, which knows listener health and
//!   link state, and arrives as `Input::TrackChanged { weight }`: the sum of
//!   the weights of the failing track entries. The machine adds it to the
//!   configured priority and clamps to 1..=254 ([`effective_priority`]), so
//!   the rule lives in one tested place. The effective priority is what is
//!   advertised and what every comparison and the skew time use.
//! - **Fault**: while the interface is down the router is in Fault (as
//!   keepalived): no VIPs, no adverts, no timers. Link up re-enters Backup as
//!   at startup (RFC 5798 sec 6.4.1).
//! - **preempt_delay** has keepalived's meaning: after startup (or link
//!   recovery), and after first hearing a lower-priority master, a backup
//!   with preempt still accepts that master's adverts (resets its
//!   Master_Down_Timer) until the delay has passed. A master of equal or
//!   higher priority clears the delay window.
//! - **Master hearing a lower priority**: the RFC says discard; like
//!   keepalived we also send an advert at once, so a second master (after a
//!   partition heals) steps down within a round trip rather than within one
//!   interval, and announce the VIPs again, at once and one interval later:
//!   the other master's gratuitous ARPs may have pointed the neighbours at
//!   a MAC that is about to drop the VIP, and their caches would keep it
//!   for as long as the entry stays reachable (15-45 s on Linux).
//! - **Second burst** (`garp_master_delay`, keepalived's name and default
//!   5 s): the gratuitous ARPs are sent again that long after becoming
//!   master, for neighbours that missed or overrode the first burst.
//! - **`immediate_preempt`** (config default on; off in bare params; not
//!   RFC): a preempting backup that hears its master advertise a lower
//!   priority sets its Master_Down_Timer to Skew_Time, as for a priority 0
//!   advert, instead of letting Master_Down_Interval run out (the RFC and
//!   keepalived wait). Skew_Time, not zero: every backup hears that advert,
//!   and the skew lets the highest priority take over first and its advert
//!   stop the others. A lower-priority advert from a router that is not
//!   the master we follow (a stepping-down master's last one) is discarded.
//! - Adverts from our own primary address (multicast looped back) are
//!   ignored. Every input is handled first, then any timer that is due at
//!   `now`: an advert that reached us is proof of a live master, even if the
//!   driver got to it after the deadline.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::VrrpInstanceConfig;
pub use crate::vrrp::packet::interval_cs;
use crate::vrrp::packet::{Version, VrrpPacket};

/// How many peers are remembered for status. A spoofing host could invent
/// any number of source addresses; the oldest heard is forgotten first.
pub const MAX_PEERS: usize = 64;

/// Everything the machine needs to know about its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualRouterParams {
    pub version: Version,
    pub vrid: u8,
    /// Configured priority, 1..=254 (255 would make us the address owner,
    /// RFC 5798 sec 6.4.1, which lbd never is but the machine supports).
    pub priority: u8,
    /// Our Advertisement_Interval in centiseconds (v2: a multiple of 100).
    pub advert_interval_cs: u16,
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay: Duration,
    /// Our primary address on the interface: the source of our adverts and
    /// the tie-breaker between equal priorities (RFC 5798 sec 6.4.3).
    pub primary_address: IpAddr,
    /// The VIPs (addresses only), to tell whether peers advertise the same.
    #[serde(default)]
    pub virtual_ips: Vec<IpAddr>,
    /// Period of the gratuitous ARP / NA refresh while master.
    #[serde(default)]
    pub garp_refresh: Option<Duration>,
    /// Not RFC: take over after Skew_Time on a lower-priority advert (see
    /// module doc).
    #[serde(default)]
    pub immediate_preempt: bool,
    /// Second gratuitous burst this long after becoming master; None: off.
    #[serde(default)]
    pub garp_master_delay: Option<Duration>,
}

impl VirtualRouterParams {
    /// From the config of one instance; `primary_address` is the interface
    /// address the driver sends from (of the VIPs' family).
    pub fn from_config(cfg: &VrrpInstanceConfig, primary_address: IpAddr) -> Self {
        let version = Version::from(cfg.version);
        VirtualRouterParams {
            version,
            vrid: cfg.vrid,
            priority: cfg.priority,
            advert_interval_cs: interval_cs(version, cfg.advert_interval),
            preempt: cfg.preempt,
            preempt_delay: cfg.preempt_delay,
            primary_address,
            virtual_ips: cfg.virtual_ips.iter().map(|n| n.addr()).collect(),
            garp_refresh: cfg.garp_refresh.filter(|d| !d.is_zero()),
            immediate_preempt: cfg.immediate_preempt,
            garp_master_delay: cfg.garp_master_delay.filter(|d| !d.is_zero()),
        }
    }
}

/// The advertised priority: configured priority plus the weights of the
/// failing track entries, clamped to 1..=254 (0 means "leaving" and 255
/// "address owner" on the wire, RFC 5798 sec 5.2.4). An owner stays 255.
pub fn effective_priority(priority: u8, track_weight: i32) -> u8 {
    if priority == 255 {
        return 255;
    }
    (i32::from(priority).saturating_add(track_weight)).clamp(1, 254) as u8
}

/// Skew_Time. v3 (RFC 5798 sec 6.1): ((256 - Priority) *
/// Master_Adver_Interval) / 256. v2 (RFC 3768 sec 6.1): (256 - Priority) /
/// 256 seconds, whatever the interval. Exact to the nanosecond.
pub fn skew_time(version: Version, priority: u8, master_adver_interval_cs: u16) -> Duration {
    let weight = 256 - u32::from(priority);
    match version {
        Version::V3 => cs(master_adver_interval_cs) * weight / 256,
        Version::V2 => Duration::from_secs(1) * weight / 256,
    }
}

/// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798
/// sec 6.1; RFC 3768 sec 6.1 with Advertisement_Interval).
pub fn master_down_interval(
    version: Version,
    priority: u8,
    master_adver_interval_cs: u16,
) -> Duration {
    cs(master_adver_interval_cs) * 3 + skew_time(version, priority, master_adver_interval_cs)
}

fn cs(c: u16) -> Duration {
    Duration::from_millis(u64::from(c) * 10)
}

crate::label::label_enum! {
    /// RFC 5798 sec 6.4, plus Fault while the interface is down. Named as
    /// in `lbd status` (SPEC.md): INIT, BACKUP, MASTER, FAULT.
    pub enum State {
        Initialize => "INIT",
        Backup => "BACKUP",
        Master => "MASTER",
        Fault => "FAULT",
    }
}

/// What happened. The driver turns socket reads, link events, tracking and
/// its own shutdown into these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// RFC 5798 sec 6.4.1 Startup event.
    Startup,
    /// RFC 5798 sec 6.4.2/6.4.3 Shutdown event (lbd stopping or the
    /// instance being removed).
    Shutdown,
    /// A valid advertisement (already through `VrrpPacket::decode_for`).
    Advert {
        src: IpAddr,
        priority: u8,
        /// In centiseconds whatever the version ([`VrrpPacket::advert_interval_cs`]).
        advert_interval_cs: u16,
        #[serde(default)]
        addresses: Vec<IpAddr>,
    },
    /// Time passed: fire whatever timer is due at `now`.
    Tick,
    InterfaceUp,
    InterfaceDown,
    /// Sum of the weights of the failing track entries (0: all fine).
    TrackChanged {
        weight: i32,
    },
}

impl Input {
    /// The `Advert` input for a decoded packet from `src`.
    pub fn advert(src: IpAddr, p: &VrrpPacket) -> Input {
        Input::Advert {
            src,
            priority: p.priority,
            advert_interval_cs: p.advert_interval_cs(),
            addresses: p.addresses.clone(),
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Send one advertisement with this priority (0: we are leaving) and
    /// interval, to the multicast group or to each unicast peer.
    SendAdvert {
        priority: u8,
        advert_interval_cs: u16,
    },
    /// Add the VIPs to the interface.
    AddVips,
    /// Remove the VIPs lbd added.
    RemoveVips,
    /// Gratuitous ARPs / unsolicited NAs for every VIP: a burst (`refresh:
    /// false`: on becoming master, `garp_master_delay` later, and when
    /// another master was heard), or the periodic refresh while master.
    SendGratuitous { refresh: bool },
    /// For notify, logs and metrics.
    StateChanged { from: State, to: State },
}

/// A router heard on the link, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    pub priority: u8,
    pub advert_interval_cs: u16,
    /// `now` of the last advert from it.
    pub last_heard: Duration,
    /// Whether it advertises our VIPs (RFC 5798 sec 7.1 lets us check and
    /// asks us to log a mismatch; we don't drop for it).
    pub addresses_match: bool,
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct VirtualRouter {
    params: VirtualRouterParams,
    state: State,
    effective_priority: u8,
    interface_up: bool,
    /// Master_Adver_Interval (v3: learned from the master; v2: ours).
    master_adver_interval_cs: u16,
    master_down_at: Option<Duration>,
    adver_at: Option<Duration>,
    garp_at: Option<Duration>,
    /// The next gratuitous burst (module doc: second burst, reassertion).
    garp_burst_at: Option<Duration>,
    /// End of the preempt_delay window (see module doc).
    preempt_hold_until: Option<Duration>,
    master: Option<IpAddr>,
    peers: BTreeMap<IpAddr, PeerInfo>,
    transitions: u64,
    since: Duration,
}

impl VirtualRouter {
    /// In Initialize, interface assumed up (send `InterfaceDown` before
    /// `Startup` if it is not).
    pub fn new(params: VirtualRouterParams) -> Self {
        let effective_priority = effective_priority(params.priority, 0);
        let master_adver_interval_cs = params.advert_interval_cs.max(1);
        VirtualRouter {
            params,
            state: State::Initialize,
            effective_priority,
            interface_up: true,
            master_adver_interval_cs,
            master_down_at: None,
            adver_at: None,
            garp_at: None,
            garp_burst_at: None,
            preempt_hold_until: None,
            master: None,
            peers: BTreeMap::new(),
            transitions: 0,
            since: Duration::ZERO,
        }
    }

    /// Handles one input at `now`, then fires any timer due at `now`.
    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Startup => self.on_startup(now, &mut out),
            Input::Shutdown => self.on_shutdown(now, &mut out),
            Input::Advert {
                src,
                priority,
                advert_interval_cs,
                addresses,
            } => self.on_advert(now, src, priority, advert_interval_cs, &addresses, &mut out),
            Input::Tick => {}
            Input::InterfaceUp => self.on_interface_up(now, &mut out),
            Input::InterfaceDown => self.on_interface_down(now, &mut out),
            Input::TrackChanged { weight } => self.on_track_changed(now, weight, &mut out),
        }
        self.fire_due(now, &mut out);
        out
    }

    /// When to call `handle(now, Input::Tick)` next; None: no timer runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.master_down_at,
            self.adver_at,
            self.garp_at,
            self.garp_burst_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn params(&self) -> &VirtualRouterParams {
        &self.params
    }

    /// Configured priority.
    pub fn priority(&self) -> u8 {
        self.params.priority
    }

    /// What we advertise: priority after tracking.
    pub fn effective_priority(&self) -> u8 {
        self.effective_priority
    }

    /// Who is master now: us when Master, else the source of the last advert
    /// from a live master (None after its priority 0, in Init and Fault).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// State changes, not counting those out of Initialize (so a node that
    /// started and became master shows 1).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// `now` of the last state change.
    pub fn since(&self) -> Duration {
        self.since
    }

    /// Master_Adver_Interval in centiseconds.
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval_cs
    }

    /// Every router heard, by source address.
    pub fn peers(&self) -> &BTreeMap<IpAddr, PeerInfo> {
        &self.peers
    }

    // ------------------------------------------------------------ events --

    /// RFC 5798 sec 6.4.1: on Startup the owner (255) becomes Master at once,
    /// anyone else goes to Backup. With the interface down: Fault.
    fn on_startup(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        if !self.interface_up {
            self.set_state(now, State::Fault, out);
        } else if self.effective_priority == 255 {
            self.become_master(now, out);
        } else {
            self.enter_backup(now, out);
        }
    }

    /// RFC 5798 sec 6.4.2 (Backup: cancel Master_Down_Timer) and sec 6.4.3
    /// (Master: cancel Adver_Timer, send an advert with priority 0), then
    /// Initialize. VIPs are removed after the priority 0 advert is queued so
    /// the backups' skew timers start as early as possible.
    fn on_shutdown(&mut self, now: Duration, out: &mut Vec<Action>) {
        match self.state {
            State::Initialize => return,
            State::Master => {
                out.push(Action::SendAdvert {
                    priority: 0,
                    advert_interval_cs: self.params.advert_interval_cs,
                });
                out.push(Action::RemoveVips);
            }
            State::Backup | State::Fault => {}
        }
        self.clear_timers();
        self.master = None;
        self.set_state(now, State::Initialize, out);
    }

    fn on_advert(
        &mut self,
        now: Duration,
        src: IpAddr,
        priority: u8,
        advert_interval_cs: u16,
        addresses: &[IpAddr],
        out: &mut Vec<Action>,
    ) {
        if src == self.params.primary_address {
            return;
        }
        let advert_interval_cs = advert_interval_cs.max(1);
        self.remember_peer(now, src, priority, advert_interval_cs, addresses);
        match self.state {
            State::Backup => self.backup_rx(now, src, priority, advert_interval_cs, out),
            State::Master => self.master_rx(now, src, priority, advert_interval_cs, out),
            // Not participating: heard, not acted on.
            State::Initialize | State::Fault => {}
        }
    }

    /// RFC 5798 sec 6.4.2, Backup receiving an ADVERTISEMENT.
    fn backup_rx(
        &mut self,
        now: Duration,
        src: IpAddr,
        priority: u8,
        advert_interval_cs: u16,
        _out: &mut Vec<Action>,
    ) {
        // "If the Priority in the ADVERTISEMENT is zero, then: Set the
        // Master_Down_Timer to Skew_Time."
        if priority == 0 {
            self.master_down_at = Some(now + self.skew());
            if self.master == Some(src) {
                self.master = None;
            }
            return;
        }
        let ours = self.effective_priority;
        // preempt_delay window (keepalived semantics, module doc).
        let delay = self.params.preempt_delay;
        if priority >= ours {
            self.preempt_hold_until = None;
        } else if self.params.preempt && !delay.is_zero() && self.preempt_hold_until.is_none() {
            self.preempt_hold_until = Some(now + delay);
        }
        let held = self.preempt_hold_until.is_some_and(|until| now < until);
        // "If Preempt_Mode is False, or if the Priority in the ADVERTISEMENT
        // is greater than or equal to the local Priority, then: Set
        // Master_Adver_Interval to Adver Interval contained in the
        // ADVERTISEMENT, Recompute the Master_Down_Interval, Reset the
        // Master_Down_Timer to Master_Down_Interval." (v2, RFC 3768 sec
        // 6.4.2: the interval is ours; the decoder dropped any other.)
        if !self.params.preempt || priority >= ours || held {
            if self.params.version == Version::V3 {
                self.master_adver_interval_cs = advert_interval_cs;
            }
            self.master_down_at = Some(now + self.down_interval());
            self.master = Some(src);
            return;
        }
        // "Else (Priority in the ADVERTISEMENT is less than the local
        // Priority and Preempt_Mode is True): Discard the ADVERTISEMENT."
        // The Master_Down_Timer runs out and we take over. With
        // immediate_preempt, after Skew_Time (module doc) if this is the
        // master we follow; a lower advert from anyone else changes nothing.
        if self.master.is_some_and(|m| m != src) {
            return;
        }
        self.master = Some(src);
        if self.params.immediate_preempt {
            let at = now + self.skew();
            self.master_down_at = Some(self.master_down_at.map_or(at, |t| t.min(at)));
        }
    }

    /// RFC 5798 sec 6.4.3, Master receiving an ADVERTISEMENT.
    fn master_rx(
        &mut self,
        now: Duration,
        src: IpAddr,
        priority: u8,
        advert_interval_cs: u16,
        out: &mut Vec<Action>,
    ) {
        let ours = self.effective_priority;
        if priority == 0 {
            // "If the Priority in the ADVERTISEMENT is zero, then: Send an
            // ADVERTISEMENT, Reset the Adver_Timer to Advertisement_Interval."
            self.send_advert(now, out);
        } else if priority > ours || (priority == ours && src > self.params.primary_address) {
            // "If the Priority in the ADVERTISEMENT is greater than the local
            // Priority or the Priority in the ADVERTISEMENT is equal to the
            // local Priority and the primary IPvX address of the sender is
            // greater than the local primary IPvX address, then: Cancel
            // Adver_Timer, Set Master_Adver_Interval to Adver Interval
            // contained in the ADVERTISEMENT, Recompute the Skew_Time and
            // Master_Down_Interval, Set Master_Down_Timer to
            // Master_Down_Interval, Transition to the Backup state."
            self.adver_at = None;
            self.garp_at = None;
            self.garp_burst_at = None;
            if self.params.version == Version::V3 {
                self.master_adver_interval_cs = advert_interval_cs;
            }
            self.master_down_at = Some(now + self.down_interval());
            self.master = Some(src);
            self.preempt_hold_until = None;
            out.push(Action::RemoveVips);
            self.set_state(now, State::Backup, out);
        } else {
            // "Else: Discard the ADVERTISEMENT." Like keepalived we also
            // reassert at once so the other master steps down now, and win
            // the neighbours' caches back from its gratuitous ARPs: now, and
            // again one interval later in case its burst was still going.
            self.send_advert(now, out);
            out.push(Action::SendGratuitous { refresh: false });
            let again = now + cs(self.params.advert_interval_cs.max(1));
            self.garp_burst_at = Some(self.garp_burst_at.map_or(again, |t| t.min(again)));
        }
    }

    /// Link down: Fault, giving up the VIPs. No priority 0 advert: it could
    /// not leave over a dead link.
    fn on_interface_down(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.interface_up = false;
        match self.state {
            State::Initialize | State::Fault => {}
            State::Master => {
                out.push(Action::RemoveVips);
                self.clear_timers();
                self.master = None;
                self.set_state(now, State::Fault, out);
            }
            State::Backup => {
                self.clear_timers();
                self.master = None;
                self.set_state(now, State::Fault, out);
            }
        }
    }

    /// Link up: from Fault to Backup as at Startup (RFC 5798 sec 6.4.1).
    fn on_interface_up(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.interface_up = true;
        if self.state == State::Fault {
            if self.effective_priority == 255 {
                self.become_master(now, out);
            } else {
                self.enter_backup(now, out);
            }
        }
    }

    /// A new effective priority. Master: advertised at once, so backups
    /// with preempt and a higher priority start discarding our adverts (and
    /// take over when their Master_Down_Timer runs out). Backup: used from
    /// the next advert on (comparison and Skew_Time).
    fn on_track_changed(&mut self, now: Duration, weight: i32, out: &mut Vec<Action>) {
        let new = effective_priority(self.params.priority, weight);
        if new == self.effective_priority {
            return;
        }
        self.effective_priority = new;
        if self.state == State::Master {
            self.send_advert(now, out);
        }
    }

    /// Timers due at `now`, at most one firing each: they are re-armed
    /// relative to `now`, so a late driver gets no burst of catch-up adverts.
    fn fire_due(&mut self, now: Duration, out: &mut Vec<Action>) {
        let due = |t: Option<Duration>| t.is_some_and(|t| t <= now);
        // RFC 5798 sec 6.4.2: "If the Master_Down_Timer fires" -> Master.
        if self.state == State::Backup && due(self.master_down_at) {
            self.become_master(now, out);
            return;
        }
        if self.state == State::Master {
            // RFC 5798 sec 6.4.3: "If the Adver_Timer fires, then: Send an
            // ADVERTISEMENT, Reset the Adver_Timer to Advertisement_Interval."
            if due(self.adver_at) {
                self.send_advert(now, out);
            }
            let burst = due(self.garp_burst_at);
            if burst {
                out.push(Action::SendGratuitous { refresh: false });
                self.garp_burst_at = None;
            }
            if due(self.garp_at) {
                // A burst just went out: it counts as this refresh.
                if !burst {
                    out.push(Action::SendGratuitous { refresh: true });
                }
                self.garp_at = self.params.garp_refresh.map(|r| now + r);
            }
        }
    }

    // ----------------------------------------------------------- helpers --

    /// RFC 5798 sec 6.4.1 (non-owner): "Set Master_Adver_Interval to
    /// Advertisement_Interval, Set the Master_Down_Timer to
    /// Master_Down_Interval, Transition to the Backup state."
    fn enter_backup(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.master_adver_interval_cs = self.params.advert_interval_cs.max(1);
        self.master_down_at = Some(now + self.down_interval());
        self.adver_at = None;
        self.garp_at = None;
        self.garp_burst_at = None;
        self.master = None;
        self.preempt_hold_until = if self.params.preempt_delay.is_zero() {
            None
        } else {
            Some(now + self.params.preempt_delay)
        };
        self.set_state(now, State::Backup, out);
    }

    /// RFC 5798 sec 6.4.1 (owner) and 6.4.2 (Master_Down_Timer fired): "Send
    /// an ADVERTISEMENT, Broadcast a gratuitous ARP / Compute and join the
    /// Solicited-Node multicast address and send an Unsolicited ND
    /// Neighbor Advertisement for each IPv6 address, Set the Adver_Timer to
    /// Advertisement_Interval, Transition to the Master state." The VIPs go
    /// on the interface first so the traffic the ARPs attract is accepted.
    fn become_master(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.master_down_at = None;
        out.push(Action::AddVips);
        self.send_advert(now, out);
        out.push(Action::SendGratuitous { refresh: false });
        self.garp_at = self.params.garp_refresh.map(|r| now + r);
        self.garp_burst_at = self.params.garp_master_delay.map(|d| now + d);
        self.master = Some(self.params.primary_address);
        self.set_state(now, State::Master, out);
    }

    fn send_advert(&mut self, now: Duration, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: self.effective_priority,
            advert_interval_cs: self.params.advert_interval_cs,
        });
        self.adver_at = Some(now + cs(self.params.advert_interval_cs.max(1)));
    }

    fn clear_timers(&mut self) {
        self.master_down_at = None;
        self.adver_at = None;
        self.garp_at = None;
        self.garp_burst_at = None;
    }

    fn set_state(&mut self, now: Duration, to: State, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.since = now;
        if from != State::Initialize {
            self.transitions += 1;
        }
        out.push(Action::StateChanged { from, to });
    }

    fn skew(&self) -> Duration {
        skew_time(
            self.params.version,
            self.effective_priority,
            self.master_adver_interval_cs,
        )
    }

    fn down_interval(&self) -> Duration {
        master_down_interval(
            self.params.version,
            self.effective_priority,
            self.master_adver_interval_cs,
        )
    }

    fn remember_peer(
        &mut self,
        now: Duration,
        src: IpAddr,
        priority: u8,
        advert_interval_cs: u16,
        addresses: &[IpAddr],
    ) {
        if !self.peers.contains_key(&src) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.last_heard)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.peers.remove(&a);
            }
        }
        let mut theirs = addresses.to_vec();
        let mut ours = self.params.virtual_ips.clone();
        theirs.sort();
        ours.sort();
        self.peers.insert(
            src,
            PeerInfo {
                priority,
                advert_interval_cs,
                last_heard: now,
                addresses_match: theirs == ours,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_and_down_interval_follow_the_rfc_formulas() {
        // v3, priority 100, 1 s: skew = 156/256 s = 609.375 ms.
        assert_eq!(
            skew_time(Version::V3, 100, 100),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            master_down_interval(Version::V3, 100, 100),
            Duration::from_micros(3_609_375)
        );
        // v3 scales with the interval: 10 cs -> 60.9375 ms.
        assert_eq!(
            skew_time(Version::V3, 100, 10),
            Duration::from_nanos(60_937_500)
        );
        // v2 skew is in seconds whatever the interval: 157/256 s for 99.
        assert_eq!(
            skew_time(Version::V2, 99, 300),
            Duration::from_nanos(613_281_250)
        );
        assert_eq!(
            master_down_interval(Version::V2, 99, 300),
            Duration::from_nanos(9_613_281_250)
        );
    }

    #[test]
    fn effective_priority_clamps() {
        assert_eq!(effective_priority(100, -50), 50);
        assert_eq!(effective_priority(100, -500), 1);
        assert_eq!(effective_priority(100, 500), 254);
        assert_eq!(effective_priority(100, i32::MIN), 1);
        assert_eq!(effective_priority(255, -50), 255);
    }

    #[test]
    fn interval_conversion() {
        assert_eq!(interval_cs(Version::V3, Duration::from_millis(100)), 10);
        assert_eq!(interval_cs(Version::V3, Duration::from_millis(15)), 2);
        assert_eq!(interval_cs(Version::V3, Duration::from_secs(100)), 4095);
        assert_eq!(interval_cs(Version::V3, Duration::ZERO), 1);
        assert_eq!(interval_cs(Version::V2, Duration::from_millis(1500)), 200);
        assert_eq!(interval_cs(Version::V2, Duration::from_secs(1)), 100);
    }
}
