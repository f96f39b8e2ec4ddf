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
//! - **Order.** Inputs and timers are handled in the order they happened:
//!   `handle(now, input)` first fires the timers due strictly before `now`,
//!   then handles the input, then fires what is due at `now` (an advert
//!   that arrives exactly at a deadline counts, as the RFC's "reset the
//!   timer" would). The driver passes the kernel's receive time of each
//!   packet, so a late driver changes nothing.
//! - **Tracking** is computed by the driver, which knows listener health and
//!   link state, and arrives as `Input::TrackChanged { weight }`: the sum of
//!   the weights of the failing track entries. The machine adds it to the
//!   configured priority and clamps to 1..=254 ([`effective_priority`]), so
//!   the rule lives in one tested place. The effective priority is what is
//!   advertised and what every comparison and the skew time use.
//! - **Faults** ([`Fault`]): while any holds the router is in Fault (as
//!   keepalived): no VIPs, no adverts, no timers. A fault that leaves the
//!   link usable (the VIPs cannot be installed or renewed, or someone else
//!   holds one) makes a master leave as on shutdown: priority 0, so a peer
//!   takes over after its skew time; a dead link or a missing source
//!   address drops the VIPs at once. When the last fault clears the router
//!   re-enters Backup as at startup (RFC 5798 sec 6.4.1).
//! - **Make before break.** A master that leaves on purpose (shutdown,
//!   release, a VIP fault) sends priority 0 but keeps its VIPs until another
//!   router advertises with a priority above 0 (its successor, after its
//!   skew time) or [`leave_bound`] passes: nobody owns the address for no
//!   moment, and two nodes own it for the time one advert takes to arrive.
//! - **Adoption.** VIPs a predecessor left (an lbd killed with its whole
//!   process tree, restarted before their lifetime ran out) are reported
//!   before Startup as `Adopted`: a Backup keeps them until it hears a
//!   master (a peer took over) or becomes master itself (renewing them, no
//!   gap), at most Master_Down_Interval; in Fault, or released, they go
//!   after [`leave_bound`] or a successor's advert, whichever is first.
//! - **Release** (`lbd vrrp release`, maintenance): leave as on shutdown,
//!   then stay Backup with priority 0 and no Master_Down_Timer until
//!   `Resume`, which starts the timer as at startup.
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
//!   for as long as the entry stays reachable (15-45 s on Linux). At most
//!   once per advert interval, and answers to priority 0 at most once per
//!   [`answer_gap`]: a flood of such packets must not make us flood.
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
//! - **VIP renewal**: while master, `Action::RenewVips` every
//!   `vip_renew` (the VIPs carry a finite lifetime; see vrrp/vip.rs).
//! - **Reconfigure** (a reload): new parameters apply in place, without a
//!   state change; a master advertises a changed priority, interval or
//!   address list at once.
//! - **Handover grace** (`handover_grace`, not RFC; off in bare params): a
//!   hand-over on purpose moves the VIP but not the TCP connections the old
//!   master accepted; once the neighbours' caches point at the successor,
//!   its kernel resets them. So a master that leaves on purpose (shutdown,
//!   release, preempted) keeps its VIPs for the grace once its successor is
//!   heard, hidden (no ARP / ND answers: `Action::Handover { hide }`), and
//!   a backup that takes over from a master it heard within the last two of
//!   that master's intervals (it handed over or was preempted, so it is
//!   alive: not after a silent Master_Down_Interval) sends the packets of
//!   connections it does not know on to that master for the grace
//!   (`forward_to`). A dead master is never forwarded to.
//! - Adverts from our own primary address (multicast looped back) are
//!   ignored.

mod events;
mod timing;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::vrrp::packet::interval_cs;
use crate::vrrp::packet::VrrpPacket;
pub use timing::{
    answer_gap, effective_priority, leave_bound, master_down_interval, skew_time, vip_renew_period,
    VirtualRouterParams,
};

/// How many peers are remembered for status. A spoofing host could invent
/// any number of source addresses; the oldest heard is forgotten first.
pub const MAX_PEERS: usize = 64;

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

crate::label::label_enum! {
    /// Why an instance is in FAULT; several may hold at once. The names
    /// are shown in `lbd status` and label `lbd_vrrp_faults_total`.
    pub enum Fault {
        /// The interface is administratively down or has no carrier.
        LinkDown => "link_down",
        /// The interface does not exist (deleted, not created yet).
        LinkGone => "link_gone",
        /// No address to send adverts from (IPv4 primary, IPv6 link-local).
        NoSourceAddress => "no_source_address",
        /// The kernel refused to install or renew a VIP.
        VipFailed => "vip_failed",
        /// A VIP is configured on the interface by someone else.
        VipForeign => "vip_foreign",
        /// The VRRP or the packet socket cannot be opened on the interface.
        SocketError => "socket",
    }
}

impl Fault {
    /// Whether adverts still get out while this fault holds: then a
    /// master leaving for it sends priority 0 (and keeps its VIPs until a
    /// successor answers).
    pub fn can_advertise(self) -> bool {
        matches!(self, Fault::VipFailed | Fault::VipForeign)
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
    /// `Fault { reason: LinkDown }`'s older name.
    InterfaceDown,
    /// `Recovered { reason: LinkDown }`'s older name.
    InterfaceUp,
    /// A fault begins (see [`Fault`]).
    Fault {
        reason: Fault,
    },
    /// A fault is over.
    Recovered {
        reason: Fault,
    },
    /// Sum of the weights of the failing track entries (0: all fine).
    TrackChanged {
        weight: i32,
    },
    /// Give the VIP up (priority 0) and stay Backup until `Resume`.
    Release,
    Resume,
    /// New parameters (a reload, or a new source address); same vrid and
    /// version.
    Reconfigure {
        params: VirtualRouterParams,
    },
    /// Before Startup: VIPs of ours are on the interface already (module
    /// doc: adoption).
    Adopted,
    /// The driver could not put the last `Action::Handover` in place (no
    /// nft, a kernel without the ARP family): hidden VIPs go now, as
    /// without a grace, and forwarding is off.
    HandoverFailed,
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
    /// Renew the VIPs' lifetime (and put back any that went missing).
    RenewVips,
    /// Remove the VIPs lbd added.
    RemoveVips,
    /// Gratuitous ARPs / unsolicited NAs for every VIP: a burst (`refresh:
    /// false`: on becoming master, `garp_master_delay` later, and when
    /// another master was heard), or the periodic refresh while master.
    SendGratuitous { refresh: bool },
    /// For notify, logs and metrics.
    StateChanged { from: State, to: State },
    /// Handover grace (module doc), the whole desired state each time:
    /// `hide`: the VIPs we still hold get no ARP / ND answers;
    /// `forward_to`: TCP packets to the VIPs of connections this node does
    /// not know go on to that router. RemoveVips comes before the
    /// `hide: false` that follows it.
    Handover {
        hide: bool,
        forward_to: Option<IpAddr>,
    },
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
    /// Configured priority plus tracking, clamped (what we advertise unless
    /// released).
    tracked_priority: u8,
    track_weight: i32,
    faults: BTreeSet<Fault>,
    released: bool,
    /// AddVips sent (or VIPs adopted) and no RemoveVips since.
    holds_vips: bool,
    /// Startup happened once (adoption is for before).
    started: bool,
    /// Master_Adver_Interval (v3: learned from the master; v2: ours).
    master_adver_interval_cs: u16,
    master_down_at: Option<Duration>,
    adver_at: Option<Duration>,
    garp_at: Option<Duration>,
    /// The next gratuitous burst (module doc: second burst, reassertion).
    garp_burst_at: Option<Duration>,
    renew_at: Option<Duration>,
    /// Leaving master: the VIPs stay until a successor advertises or this
    /// passes (module doc: make before break).
    leave_until: Option<Duration>,
    /// End of the preempt_delay window (see module doc).
    preempt_hold_until: Option<Duration>,
    /// Handover grace (module doc): the VIPs stay, hidden, until then.
    hidden_until: Option<Duration>,
    /// Handover grace: packets of unknown connections go to `forward_to`
    /// until then.
    forward_until: Option<Duration>,
    forward_to: Option<IpAddr>,
    /// The handover state last handed to the driver.
    handover_sent: (bool, Option<IpAddr>),
    /// The master last followed as Backup (who a takeover forwards to).
    last_master: Option<IpAddr>,
    /// This leave is on purpose (shutdown, release): the grace applies.
    graceful_leave: bool,
    /// When we last answered a priority 0 / reasserted against a lower
    /// master (module doc: at most so often).
    last_answer: Option<Duration>,
    last_reassert: Option<Duration>,
    master: Option<IpAddr>,
    peers: BTreeMap<IpAddr, PeerInfo>,
    transitions: u64,
    since: Duration,
}

impl VirtualRouter {
    /// In Initialize, interface assumed up (send `InterfaceDown` before
    /// `Startup` if it is not).
    pub fn new(params: VirtualRouterParams) -> Self {
        let tracked_priority = effective_priority(params.priority, 0);
        let master_adver_interval_cs = params.advert_interval_cs.max(1);
        VirtualRouter {
            params,
            state: State::Initialize,
            tracked_priority,
            track_weight: 0,
            faults: BTreeSet::new(),
            released: false,
            holds_vips: false,
            started: false,
            master_adver_interval_cs,
            master_down_at: None,
            adver_at: None,
            garp_at: None,
            garp_burst_at: None,
            renew_at: None,
            leave_until: None,
            preempt_hold_until: None,
            hidden_until: None,
            forward_until: None,
            forward_to: None,
            handover_sent: (false, None),
            last_master: None,
            graceful_leave: false,
            last_answer: None,
            last_reassert: None,
            master: None,
            peers: BTreeMap::new(),
            transitions: 0,
            since: Duration::ZERO,
        }
    }

    /// Handles one input at `now`: the timers due before it first, then
    /// the input, then the timers due at `now` (module doc: order).
    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if input != Input::Tick {
            self.fire_due(now, true, &mut out);
        }
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
            Input::InterfaceDown => self.on_fault(now, Fault::LinkDown, &mut out),
            Input::InterfaceUp => self.on_recovered(now, Fault::LinkDown, &mut out),
            Input::Fault { reason } => self.on_fault(now, reason, &mut out),
            Input::Recovered { reason } => self.on_recovered(now, reason, &mut out),
            Input::TrackChanged { weight } => self.on_track_changed(now, weight, &mut out),
            Input::Release => self.on_release(now, &mut out),
            Input::Resume => self.on_resume(now, &mut out),
            Input::Reconfigure { params } => self.on_reconfigure(now, params, &mut out),
            Input::Adopted => self.on_adopted(),
            Input::HandoverFailed => self.on_handover_failed(&mut out),
        }
        self.fire_due(now, false, &mut out);
        out
    }

    /// When to call `handle(now, Input::Tick)` next; None: no timer runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.master_down_at,
            self.adver_at,
            self.garp_at,
            self.garp_burst_at,
            self.renew_at,
            self.leave_until,
            self.hidden_until,
            self.forward_until,
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

    /// What we advertise: priority after tracking; 0 while released.
    pub fn effective_priority(&self) -> u8 {
        if self.released {
            0
        } else {
            self.tracked_priority
        }
    }

    /// Who is master now: us when Master, else the source of the last advert
    /// from a live master (None after its priority 0, in Init and Fault).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// The faults holding now (empty outside Fault).
    pub fn faults(&self) -> &BTreeSet<Fault> {
        &self.faults
    }

    /// Released by `lbd vrrp release` and not resumed.
    pub fn released(&self) -> bool {
        self.released
    }

    /// Whether the VIPs are on the interface by our doing: while Master,
    /// and while leaving (make before break).
    pub fn holds_vips(&self) -> bool {
        self.holds_vips
    }

    /// Handover grace: (VIPs hidden, forwarding to), as last handed to the
    /// driver.
    pub fn handover(&self) -> (bool, Option<IpAddr>) {
        self.handover_sent
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::packet::Version;

    fn params() -> VirtualRouterParams {
        VirtualRouterParams {
            version: Version::V3,
            vrid: 1,
            priority: 100,
            advert_interval_cs: 100,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_address: "10.0.0.1".parse().unwrap(),
            virtual_ips: vec![],
            garp_refresh: None,
            immediate_preempt: false,
            garp_master_delay: None,
            vip_renew: None,
            handover_grace: None,
        }
    }

    #[test]
    fn inputs_and_faults_round_trip_through_serde() {
        let i = Input::Fault {
            reason: Fault::VipForeign,
        };
        let j = serde_json::to_string(&i).unwrap();
        assert_eq!(j, r#"{"input":"fault","reason":"vip_foreign"}"#);
        assert_eq!(serde_json::from_str::<Input>(&j).unwrap(), i);
        let r = Input::Reconfigure { params: params() };
        let back: Input = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(Fault::VipFailed.can_advertise() && !Fault::LinkGone.can_advertise());
    }
}
