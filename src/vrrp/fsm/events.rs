//! One handler per input, each citing the RFC section it implements, and
//! the timers.

use std::net::IpAddr;
use std::time::Duration;

use super::timing::{answer_gap, cs, effective_priority, leave_bound};
use super::{
    master_down_interval, skew_time, Action, Fault, PeerInfo, State, VirtualRouter,
    VirtualRouterParams, MAX_PEERS,
};
use crate::vrrp::packet::Version;

impl VirtualRouter {
    /// RFC 5798 sec 6.4.1: on Startup the owner (255) becomes Master at once,
    /// anyone else goes to Backup. With a fault holding: Fault.
    pub(super) fn on_startup(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        self.started = true;
        self.start_participating(now, out);
        // Adopted VIPs (module doc): until a master is heard, or we are one.
        if self.holds_vips && self.state != State::Master && self.leave_until.is_none() {
            let backup = self.state == State::Backup && !self.released;
            let wait = if backup {
                self.down_interval()
            } else {
                leave_bound(self.params.advert_interval_cs)
            };
            self.leave_until = Some(now + wait);
            // A Backup renews them while it waits for Master_Down_Interval:
            // the default lifetime (three adverts) is shorter than that
            // wait, and the restart already took its share of it.
            if let Some(r) = self.params.vip_renew.filter(|_| backup) {
                out.push(Action::RenewVips);
                self.renew_at = Some(now + r);
            }
        }
    }

    /// VIPs of ours found at start; only before the first Startup.
    pub(super) fn on_adopted(&mut self) {
        if self.state == State::Initialize && !self.started {
            self.holds_vips = true;
        }
    }

    /// Startup, or the end of the last fault.
    fn start_participating(&mut self, now: Duration, out: &mut Vec<Action>) {
        if !self.faults.is_empty() {
            self.set_state(now, State::Fault, out);
        } else if self.effective_priority() == 255 {
            self.become_master(now, out);
        } else {
            self.enter_backup(now, out);
        }
    }

    /// RFC 5798 sec 6.4.2 (Backup: cancel Master_Down_Timer) and sec 6.4.3
    /// (Master: cancel Adver_Timer, send an advert with priority 0), then
    /// Initialize. The VIPs stay until a successor advertises (module doc).
    pub(super) fn on_shutdown(&mut self, now: Duration, out: &mut Vec<Action>) {
        match self.state {
            // Adopted VIPs and never started: nothing to hand over.
            State::Initialize => return self.drop_vips(out),
            State::Master => self.leave(now, true, out),
            State::Backup | State::Fault => {
                self.clear_timers();
                // Adopted VIPs a Backup was keeping for Master_Down_Interval
                // (up to minutes at long intervals): no one renews them once
                // we stop, so they go like a leaving master's, at the latest
                // two intervals (2 s at most) from now.
                let bound = now + leave_bound(self.params.advert_interval_cs);
                self.leave_until = self.leave_until.map(|t| t.min(bound));
                // Hidden VIPs (handover grace) stay renewed to its end.
                if self.hidden_until.is_some() {
                    self.renew_at = self.params.vip_renew.map(|r| now + r);
                }
            }
        }
        self.master = None;
        self.set_state(now, State::Initialize, out);
    }

    pub(super) fn on_advert(
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
        // Only a master advertises: one with a priority above 0 is the
        // successor a leaving master waits for.
        if priority > 0 && self.leave_until.is_some() {
            if self.graceful_leave {
                self.hide_vips(now, out);
            } else {
                self.drop_vips(out);
            }
        }
        match self.state {
            State::Backup => self.backup_rx(now, src, priority, advert_interval_cs),
            State::Master => self.master_rx(now, src, priority, advert_interval_cs, out),
            // Not participating: heard, not acted on.
            State::Initialize | State::Fault => {}
        }
    }

    /// RFC 5798 sec 6.4.2, Backup receiving an ADVERTISEMENT.
    fn backup_rx(&mut self, now: Duration, src: IpAddr, priority: u8, advert_interval_cs: u16) {
        // "If the Priority in the ADVERTISEMENT is zero, then: Set the
        // Master_Down_Timer to Skew_Time."
        if priority == 0 {
            self.arm_master_down(now + self.skew());
            if self.master.is_none_or(|m| m == src) {
                // Leaving: alive, and the one a takeover forwards to.
                self.last_master = Some(src);
                self.master = None;
            }
            return;
        }
        let ours = self.effective_priority();
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
            self.arm_master_down(now + self.down_interval());
            self.master = Some(src);
            self.last_master = Some(src);
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
        self.last_master = Some(src);
        if self.params.immediate_preempt {
            let at = now + self.skew();
            self.arm_master_down(self.master_down_at.map_or(at, |t| t.min(at)));
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
        let ours = self.effective_priority();
        if priority == 0 {
            // "If the Priority in the ADVERTISEMENT is zero, then: Send an
            // ADVERTISEMENT, Reset the Adver_Timer to Advertisement_Interval."
            // (At most once per answer_gap: module doc.)
            if self.may_answer(now) {
                self.send_advert(now, out);
            }
        } else if priority > ours || (priority == ours && src > self.params.primary_address) {
            // "If the Priority in the ADVERTISEMENT is greater than the local
            // Priority or the Priority in the ADVERTISEMENT is equal to the
            // local Priority and the primary IPvX address of the sender is
            // greater than the local primary IPvX address, then: Cancel
            // Adver_Timer, Set Master_Adver_Interval to Adver Interval
            // contained in the ADVERTISEMENT, Recompute the Skew_Time and
            // Master_Down_Interval, Set Master_Down_Timer to
            // Master_Down_Interval, Transition to the Backup state."
            // The other master holds the VIPs already: ours go at once.
            self.clear_timers();
            if self.params.version == Version::V3 {
                self.master_adver_interval_cs = advert_interval_cs;
            }
            self.arm_master_down(now + self.down_interval());
            self.master = Some(src);
            self.last_master = Some(src);
            self.preempt_hold_until = None;
            self.stop_forwarding(out);
            // Preempted is a hand-over on purpose too (module doc: grace).
            self.hide_vips(now, out);
            self.set_state(now, State::Backup, out);
        } else if self
            .last_reassert
            .is_none_or(|t| now >= t + self.interval())
        {
            // "Else: Discard the ADVERTISEMENT." Like keepalived we also
            // reassert at once so the other master steps down now, and win
            // the neighbours' caches back from its gratuitous ARPs: now, and
            // again one interval later in case its burst was still going.
            self.last_reassert = Some(now);
            self.send_advert(now, out);
            out.push(Action::SendGratuitous { refresh: false });
            let again = now + self.interval();
            self.garp_burst_at = Some(self.garp_burst_at.map_or(again, |t| t.min(again)));
        }
    }

    /// A fault begins: Fault, giving up the VIPs (module doc: faults).
    pub(super) fn on_fault(&mut self, now: Duration, reason: Fault, out: &mut Vec<Action>) {
        if !self.faults.insert(reason) {
            return;
        }
        if !reason.can_advertise() {
            // Nothing gets out and no successor would be heard.
            self.drop_vips(out);
        }
        match self.state {
            State::Initialize | State::Fault => return,
            State::Master if reason.can_advertise() => self.leave(now, false, out),
            State::Master => {
                self.clear_timers();
                self.drop_vips(out);
            }
            State::Backup => self.clear_timers(),
        }
        self.master = None;
        self.set_state(now, State::Fault, out);
    }

    /// A fault is over; after the last one, Backup as at startup (RFC 5798
    /// sec 6.4.1).
    pub(super) fn on_recovered(&mut self, now: Duration, reason: Fault, out: &mut Vec<Action>) {
        if self.faults.remove(&reason) && self.faults.is_empty() && self.state == State::Fault {
            self.start_participating(now, out);
        }
    }

    /// A new effective priority. Master: advertised at once, so backups
    /// with preempt and a higher priority start discarding our adverts (and
    /// take over when their Master_Down_Timer runs out). Backup: used from
    /// the next advert on (comparison and Skew_Time).
    pub(super) fn on_track_changed(&mut self, now: Duration, weight: i32, out: &mut Vec<Action>) {
        self.track_weight = weight;
        let new = effective_priority(self.params.priority, weight);
        if new == self.tracked_priority {
            return;
        }
        self.tracked_priority = new;
        if self.state == State::Master {
            self.send_advert(now, out);
        }
    }

    /// Maintenance: a master leaves as on shutdown; then Backup with
    /// priority 0 and no Master_Down_Timer until `Resume`.
    pub(super) fn on_release(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.released {
            return;
        }
        self.released = true;
        match self.state {
            State::Master => {
                self.leave(now, true, out);
                self.master = None;
                self.set_state(now, State::Backup, out);
            }
            State::Backup => self.master_down_at = None,
            State::Initialize | State::Fault => {}
        }
    }

    /// The end of a release: a Backup starts its Master_Down_Timer as at
    /// startup (a live master's next advert resets it, or is preempted).
    pub(super) fn on_resume(&mut self, now: Duration, _out: &mut Vec<Action>) {
        if !self.released {
            return;
        }
        self.released = false;
        if self.state == State::Backup {
            self.arm_master_down(now + self.down_interval());
        }
    }

    /// A reload (or a new source address): the new parameters apply in
    /// place, with no state change; a master advertises what peers see
    /// (priority, interval, addresses, source) at once, which also re-arms
    /// its Adver_Timer with the new interval.
    pub(super) fn on_reconfigure(
        &mut self,
        now: Duration,
        params: VirtualRouterParams,
        out: &mut Vec<Action>,
    ) {
        let old = std::mem::replace(&mut self.params, params);
        self.tracked_priority = effective_priority(self.params.priority, self.track_weight);
        let p = &self.params;
        let seen_by_peers = old.priority != p.priority
            || old.advert_interval_cs != p.advert_interval_cs
            || old.virtual_ips != p.virtual_ips
            || old.primary_address != p.primary_address;
        if p.version == Version::V2 || self.state == State::Master {
            self.master_adver_interval_cs = p.advert_interval_cs.max(1);
        }
        if self.state != State::Master {
            return;
        }
        self.master = Some(p.primary_address);
        if old.garp_refresh != p.garp_refresh {
            self.garp_at = p.garp_refresh.map(|r| now + r);
        }
        if old.vip_renew != p.vip_renew {
            // The kernel's copies still carry the old lifetime: renewed at
            // once, or a longer lifetime's later first renewal let them
            // lapse before it (a gap while master, seen in
            // tests/vrrp_reload.rs).
            if p.vip_renew.is_some() && self.holds_vips {
                out.push(Action::RenewVips);
            }
            self.renew_at = p.vip_renew.map(|r| now + r);
        }
        if seen_by_peers {
            self.send_advert(now, out);
        }
    }

    /// Timers due at `now` (`strict`: due before it), at most one firing
    /// each: they are re-armed relative to `now`, so a late driver gets no
    /// burst of catch-up adverts.
    pub(super) fn fire_due(&mut self, now: Duration, strict: bool, out: &mut Vec<Action>) {
        let due = |t: Option<Duration>| t.is_some_and(|t| t < now || (!strict && t == now));
        // RFC 5798 sec 6.4.2: "If the Master_Down_Timer fires" -> Master
        // (keeping VIPs still held: adopted ones end with this timer).
        if self.state == State::Backup && due(self.master_down_at) {
            self.become_master(now, out);
            return;
        }
        if due(self.leave_until) || due(self.hidden_until) {
            self.drop_vips(out);
        }
        if due(self.forward_until) {
            self.stop_forwarding(out);
        }
        if self.state != State::Master {
            // Adopted VIPs kept by a Backup (Startup above) stay renewed
            // until this node is master or they go.
            // So do hidden ones (handover grace) until the grace ends.
            let adopted = self.state == State::Backup && self.leave_until.is_some();
            let kept = self.holds_vips && (adopted || self.hidden_until.is_some());
            if kept && due(self.renew_at) {
                out.push(Action::RenewVips);
                self.renew_at = self.params.vip_renew.map(|r| now + r);
            }
            return;
        }
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
        if due(self.renew_at) {
            out.push(Action::RenewVips);
            self.renew_at = self.params.vip_renew.map(|r| now + r);
        }
    }

    // ----------------------------------------------------------- helpers --

    /// RFC 5798 sec 6.4.1 (non-owner): "Set Master_Adver_Interval to
    /// Advertisement_Interval, Set the Master_Down_Timer to
    /// Master_Down_Interval, Transition to the Backup state."
    fn enter_backup(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.master_adver_interval_cs = self.params.advert_interval_cs.max(1);
        self.clear_timers();
        self.arm_master_down(now + self.down_interval());
        self.master = None;
        self.last_master = None;
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
    /// on the interface before the ARPs so the traffic they attract is
    /// accepted (still held after leaving a moment ago: renewed instead).
    fn become_master(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.master_down_at = None;
        self.leave_until = None;
        // The advert first, as the RFC orders it: it stops the other
        // backups' timers, and adding the VIPs (a netlink round trip, slow
        // under load) must not delay it past their skew (a second master).
        self.send_advert(now, out);
        // Before the VIPs and the gratuitous ARPs that move the clients:
        // from then on the old master's connections arrive here.
        self.hidden_until = None;
        self.forward_to = self.params.handover_grace.and(self.live_last_master(now));
        self.forward_until = self
            .forward_to
            .and(self.params.handover_grace)
            .map(|g| now + g);
        self.sync_handover(out);
        if self.holds_vips {
            out.push(Action::RenewVips);
        } else {
            out.push(Action::AddVips);
            self.holds_vips = true;
        }
        out.push(Action::SendGratuitous { refresh: false });
        self.garp_at = self.params.garp_refresh.map(|r| now + r);
        self.garp_burst_at = self.params.garp_master_delay.map(|d| now + d);
        self.renew_at = self.params.vip_renew.map(|r| now + r);
        self.master = Some(self.params.primary_address);
        self.set_state(now, State::Master, out);
    }

    /// A master leaving on purpose: priority 0 (RFC 5798 sec 6.4.3), timers
    /// off, the VIPs kept until a successor advertises (module doc).
    /// `graceful`: on purpose (shutdown, release), so the successor gets
    /// the handover grace (module doc); not for a fault.
    fn leave(&mut self, now: Duration, graceful: bool, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: 0,
            advert_interval_cs: self.params.advert_interval_cs,
        });
        self.clear_timers();
        self.stop_forwarding(out);
        self.graceful_leave = graceful;
        if self.holds_vips {
            self.leave_until = Some(now + leave_bound(self.params.advert_interval_cs));
        }
    }

    /// The handover rules could not be applied: what they were for ends.
    pub(super) fn on_handover_failed(&mut self, out: &mut Vec<Action>) {
        if self.hidden_until.is_some() {
            self.drop_vips(out);
        }
        self.stop_forwarding(out);
    }

    /// Our successor is master: with a handover grace the VIPs stay for
    /// it, hidden (renewed once so their lifetime covers it), else they go.
    fn hide_vips(&mut self, now: Duration, out: &mut Vec<Action>) {
        let grace = self.params.handover_grace.filter(|_| self.holds_vips);
        let Some(grace) = grace else {
            return self.drop_vips(out);
        };
        self.leave_until = None;
        self.graceful_leave = false;
        self.hidden_until = Some(now + grace);
        self.sync_handover(out);
        out.push(Action::RenewVips);
        self.renew_at = self.params.vip_renew.map(|r| now + r);
    }

    /// The master we followed, if it is alive: heard within two of its
    /// intervals (a silent one is down, after Master_Down_Interval).
    fn live_last_master(&self, now: Duration) -> Option<IpAddr> {
        let m = self
            .last_master
            .filter(|m| *m != self.params.primary_address)?;
        let p = self.peers.get(&m)?;
        (now < p.last_heard + 2 * cs(p.advert_interval_cs.max(1))).then_some(m)
    }

    fn stop_forwarding(&mut self, out: &mut Vec<Action>) {
        self.forward_until = None;
        self.forward_to = None;
        self.sync_handover(out);
    }

    /// Hands the driver the handover state if it changed.
    fn sync_handover(&mut self, out: &mut Vec<Action>) {
        let want = (self.hidden_until.is_some(), self.forward_to);
        if want != self.handover_sent {
            self.handover_sent = want;
            out.push(Action::Handover {
                hide: want.0,
                forward_to: want.1,
            });
        }
    }

    /// The VIPs go now (if held), ending any wait for a successor.
    fn drop_vips(&mut self, out: &mut Vec<Action>) {
        self.leave_until = None;
        self.hidden_until = None;
        self.graceful_leave = false;
        // Nothing left to renew: a renewal due in the same tick (a clock
        // that jumped past both) must not stay armed in the past.
        self.renew_at = None;
        if self.holds_vips {
            self.holds_vips = false;
            out.push(Action::RemoveVips);
        }
        self.sync_handover(out);
    }

    /// Sets the Master_Down_Timer, unless released (which never takes over).
    fn arm_master_down(&mut self, at: Duration) {
        self.master_down_at = (!self.released).then_some(at);
    }

    /// Whether an answering advert may go out now (module doc: flood).
    fn may_answer(&mut self, now: Duration) -> bool {
        let gap = answer_gap(self.params.advert_interval_cs);
        if self.last_answer.is_some_and(|t| now < t + gap) {
            return false;
        }
        self.last_answer = Some(now);
        true
    }

    fn send_advert(&mut self, now: Duration, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: self.effective_priority(),
            advert_interval_cs: self.params.advert_interval_cs,
        });
        self.adver_at = Some(now + self.interval());
    }

    /// Every timer but the wait for a successor.
    fn clear_timers(&mut self) {
        self.master_down_at = None;
        self.adver_at = None;
        self.garp_at = None;
        self.garp_burst_at = None;
        self.renew_at = None;
    }

    fn set_state(&mut self, now: Duration, to: State, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        // Forwarding is a master's (handover grace): it ends with the role.
        if from == State::Master {
            self.stop_forwarding(out);
        }
        self.state = to;
        self.since = now;
        if from != State::Initialize {
            self.transitions += 1;
        }
        out.push(Action::StateChanged { from, to });
    }

    /// Our Advertisement_Interval.
    fn interval(&self) -> Duration {
        cs(self.params.advert_interval_cs.max(1))
    }

    fn skew(&self) -> Duration {
        skew_time(
            self.params.version,
            self.effective_priority(),
            self.master_adver_interval_cs,
        )
    }

    fn down_interval(&self) -> Duration {
        master_down_interval(
            self.params.version,
            self.effective_priority(),
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
