//! What the driver does for the router's actions, and what it publishes:
//! status, metrics, the state file, notify scripts.

use std::sync::Arc;

use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket};

use ipnet::IpNet;

use crate::proxy::kernel::nft::{self, NftError};

use crate::config::VrrpInstanceConfig;
use crate::status::{VrrpFaultStatus, VrrpInstanceStatus, VrrpPeerStatus};

use super::super::fsm::{Action, Fault, Input, State};
use super::super::grace::{self, Forward, GraceRules};
use super::super::notify::{scripts_for, Notifier};
use super::super::packet::{LocalInstance, Version, VrrpPacket};
use super::super::state;
use super::super::track::TrackState;
use super::super::vip::VipProblem;
use super::{Instance, PUBLISH_EVERY};

impl Instance {
    pub(super) async fn perform(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        for a in actions {
            match a {
                Action::SendAdvert {
                    priority,
                    advert_interval_cs,
                } => self.send_advert(priority, advert_interval_cs).await,
                Action::AddVips => self.install_vips(false).await,
                Action::RenewVips => self.install_vips(true).await,
                Action::RemoveVips => self.remove_vips().await,
                Action::SendGratuitous { refresh } => {
                    let n = if refresh {
                        1
                    } else {
                        self.cfg.garp_burst.max(1)
                    };
                    for _ in 0..n {
                        self.announce(&self.cfg.virtual_ips.clone());
                    }
                }
                Action::StateChanged { from, to } => self.state_changed(from, to),
                Action::Handover { hide, forward_to } => {
                    self.holder.set_hidden(hide);
                    self.handover(hide, forward_to).await
                }
            }
        }
        self.persist();
        self.publish();
    }

    fn state_changed(&mut self, from: State, to: State) {
        self.m.transitions.inc();
        self.m.set_state(to);
        let priority = self.router.effective_priority();
        tracing::info!(instance = %self.cfg.name, from = from.as_str(), state = to.as_str(),
            priority, faults = ?self.faults.keys().collect::<Vec<_>>(), "VRRP state change");
        self.notifier.queue(scripts_for(&self.cfg, to, priority));
        self.record.master = to == State::Master;
    }

    async fn send_advert(&self, priority: u8, advert_interval_cs: u16) {
        let Some(sock) = &self.iface.sock else {
            return;
        };
        let advert = VrrpPacket::advertisement(
            self.local.version,
            self.cfg.vrid,
            priority,
            advert_interval_cs,
            self.local.auth,
            self.cfg.virtual_ips.iter().map(|v| v.addr()).collect(),
        );
        for dst in sock.destinations() {
            let bytes = advert.encode(sock.source(), *dst);
            match sock.send_to(*dst, &bytes).await {
                Ok(()) => {
                    self.m.sent.inc();
                }
                Err(e) => {
                    tracing::warn!(instance = %self.cfg.name, to = %dst, error = %e, "advert not sent")
                }
            }
        }
    }

    /// Installs (or renews, putting back any that went missing) every VIP;
    /// a refusal or someone else's copy is a fault (module doc of fsm).
    pub(super) async fn install_vips(&mut self, renew: bool) {
        // A Backup renews only the adopted VIPs it still holds, never adds.
        let vips = if renew && self.router.state() != State::Master {
            self.holder.installed().iter().map(|i| i.addr).collect()
        } else {
            self.cfg.virtual_ips.clone()
        };
        self.install(&vips, renew).await;
    }

    pub(super) async fn install(&mut self, vips: &[IpNet], renew: bool) {
        let Some(link) = self.iface.link.clone() else {
            return;
        };
        let r = self.holder.install(&link, vips).await;
        self.record.installed = self.holder.installed().to_vec();
        match r {
            Ok(()) => self.vip_backoff = super::VIP_RETRY_FIRST,
            Err(p) => {
                let what = if renew { "renewal" } else { "install" };
                let fault = match p {
                    VipProblem::Foreign { .. } => Fault::VipForeign,
                    VipProblem::Failed { .. } => Fault::VipFailed,
                };
                self.raise(fault, format!("VIP {what}: {p}"));
            }
        }
    }

    pub(super) async fn remove_vips(&mut self) {
        let link = self.iface.link.clone();
        if let Err(e) = self.holder.remove_except(link.as_ref(), &[]).await {
            tracing::error!(instance = %self.cfg.name, error = %e,
                "cannot remove VIPs (they lapse at the end of their lifetime)");
        }
        self.record.installed = self.holder.installed().to_vec();
    }

    /// The router's handover state (its module doc: handover grace) made
    /// the kernel's: the instance's nft tables replaced. Forwarding needs
    /// the old master's MAC (grace.rs: no loop); without it, or without
    /// nft, the connections are not carried over, as without a grace.
    async fn handover(&mut self, hide: bool, forward_to: Option<IpAddr>) {
        let link = self.iface.link.clone();
        let mut forward = None;
        if let (Some(to), Some(link)) = (forward_to, &link) {
            match self.old_master_mac(link.index, to).await {
                Some(mac) => {
                    forward = Some(Forward {
                        to,
                        device: link.name.clone(),
                        mac,
                    })
                }
                None => {
                    tracing::warn!(instance = %self.cfg.name, old_master = %to,
                        "handover: the old master's MAC is not known; its connections are not forwarded")
                }
            }
        }
        let rules = GraceRules {
            vips: self.cfg.virtual_ips.iter().map(|v| v.addr()).collect(),
            primary: self.iface.src,
            hide,
            forward,
        };
        self.apply_grace(rules).await;
    }

    /// Replaces this instance's handover tables with `rules` (nothing to
    /// do when nft holds them already).
    pub(super) async fn apply_grace(&mut self, rules: GraceRules) {
        if self.grace_applied.as_ref() == Some(&rules) {
            return;
        }
        let script = grace::render(&self.cfg.name, self.v6(), &rules);
        let r = tokio::task::spawn_blocking(move || nft::apply_script(&script))
            .await
            .unwrap_or_else(|e| Err(NftError::Rejected(format!("nft task: {e}"))));
        match r {
            Ok(()) => {
                let what = grace_summary(&rules);
                tracing::info!(instance = %self.cfg.name, handover = what.as_deref().unwrap_or("none"),
                    "handover rules applied");
                self.grace_status = what;
                self.grace_applied = Some(rules);
            }
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e,
                    "handover rules not applied: connections are not carried over a hand-over");
                self.grace_status = (!rules.is_empty()).then(|| format!("rules not applied: {e}"));
                self.grace_applied = None;
                // Hidden VIPs that still answer ARP would be a second
                // holder: the router lets them go.
                if !rules.is_empty() {
                    self.follow_ups.push(Input::HandoverFailed);
                }
            }
        }
        self.publish();
    }

    /// At start: a predecessor that died during a grace may have left its
    /// tables; they go (quietly where nft is missing: then none exist).
    pub(super) async fn clear_grace_leftovers(&mut self) {
        let script = grace::render(&self.cfg.name, self.v6(), &GraceRules::default());
        match tokio::task::spawn_blocking(move || nft::apply_script(&script)).await {
            Ok(Ok(())) => self.grace_applied = Some(GraceRules::default()),
            Ok(Err(e)) => {
                tracing::debug!(instance = %self.cfg.name, error = %e, "handover tables not checked")
            }
            Err(_) => {}
        }
    }

    /// The MAC of the old master: from the neighbour table, else after
    /// one datagram to its discard port makes the kernel resolve it (at
    /// most ~100 ms, while the old master still holds the VIP).
    async fn old_master_mac(&self, ifindex: u32, to: IpAddr) -> Option<[u8; 6]> {
        for attempt in 0..5 {
            if let Ok(Some(mac)) = self.nl.neighbour_mac(ifindex, to).await {
                return Some(mac);
            }
            if attempt == 0 {
                poke(ifindex, to);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        None
    }

    fn v6(&self) -> bool {
        self.cfg
            .virtual_ips
            .first()
            .is_some_and(|v| v.addr().is_ipv6())
    }

    pub(super) fn announce(&self, vips: &[IpNet]) {
        if let Some(a) = &self.iface.announcer {
            a.announce(vips, &self.m);
        }
    }

    /// A full burst for `vips`, as on becoming master.
    pub(super) fn announce_burst(&self, vips: &[IpNet]) {
        for _ in 0..self.cfg.garp_burst.max(1) {
            self.announce(vips);
        }
    }

    /// VIPs of ours a predecessor left on the interface: held on (see the
    /// router's adoption) rather than removed and re-added.
    pub(super) async fn adopt(&mut self) {
        let Some(link) = self.iface.link.clone() else {
            return;
        };
        match self.holder.present(&link).await {
            Ok(present) if !present.is_empty() => {
                tracing::info!(instance = %self.cfg.name, vips = ?present,
                    "VIPs of a previous lbd found: kept until a master is heard or this node is one");
                self.follow_ups.push(Input::Adopted);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e, "cannot list addresses")
            }
        }
        self.record.installed = self.holder.installed().to_vec();
    }

    /// A VIP configured on the interface by someone else is a fault until
    /// it goes.
    pub(super) async fn check_foreign(&mut self) {
        let Some(link) = self.iface.link.clone() else {
            return;
        };
        match self.holder.foreign(&link, &self.cfg.virtual_ips).await {
            Ok(f) if f.is_empty() => self.clear(Fault::VipForeign),
            Ok(f) => {
                let list: Vec<String> = f.iter().map(|v| v.to_string()).collect();
                self.raise(
                    Fault::VipForeign,
                    format!(
                        "{} configured on {} by someone else (lbd never touches it)",
                        list.join(", "),
                        link.name
                    ),
                );
            }
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e, "cannot list addresses")
            }
        }
    }

    /// Tracking from the listeners' health and the links' state; a change
    /// goes to the router.
    pub(super) fn retrack(&mut self) {
        let st = TrackState::compute(&self.cfg.track, &self.listeners, &self.links_up);
        if st == self.track_state {
            return;
        }
        self.track_state = st;
        let weight = self.track_state.weight(&self.cfg.track);
        tracing::info!(instance = %self.cfg.name, weight, "tracking changed");
        self.follow_ups.push(Input::TrackChanged { weight });
    }

    /// A reload in place: the new config applies without a state change
    /// (the router's Reconfigure); a holder of the VIPs installs the added
    /// ones and removes the dropped ones, and leaves the rest alone.
    pub(super) async fn reconfigure(&mut self, cfg: VrrpInstanceConfig) {
        let old = std::mem::replace(&mut self.cfg, cfg);
        tracing::info!(instance = %self.cfg.name, "config changed: applied in place");
        self.local = LocalInstance::from_config(&self.cfg);
        self.holder.set_lifetime(self.cfg.vip_lifetime);
        if notify_changed(&old, &self.cfg) {
            self.notifier = Notifier::new(&self.cfg);
        }
        if old.unicast_peers != self.cfg.unicast_peers {
            self.iface.sock = None;
            self.resolve().await;
        }
        if old.track != self.cfg.track {
            self.refresh_tracked().await;
            // The router is told whatever the new state: retrack() compares
            // states only, and an emptied list computes the same state as a
            // fresh one, which left the old weight on the priority.
            self.track_state =
                TrackState::compute(&self.cfg.track, &self.listeners, &self.links_up);
            let weight = self.track_state.weight(&self.cfg.track);
            tracing::info!(instance = %self.cfg.name, weight, "tracking changed by a reload");
            self.follow_ups.push(Input::TrackChanged { weight });
        }
        let added: Vec<IpNet> = self
            .cfg
            .virtual_ips
            .iter()
            .filter(|v| !old.virtual_ips.contains(v))
            .copied()
            .collect();
        if self.router.holds_vips() {
            let link = self.iface.link.clone();
            if let Err(e) = self
                .holder
                .remove_except(link.as_ref(), &self.cfg.virtual_ips)
                .await
            {
                tracing::error!(instance = %self.cfg.name, error = %e, "cannot remove a dropped VIP");
            }
            if self.router.state() == State::Master && !added.is_empty() {
                self.install(&added, false).await;
                self.announce_burst(&added);
            }
            self.record.installed = self.holder.installed().to_vec();
        }
        self.check_foreign().await;
        let params = self.params();
        self.follow_ups.push(Input::Reconfigure { params });
        self.refresh_record();
        self.feed(tokio::time::Instant::now()).await;
        self.persist();
        self.publish();
    }

    /// The record's config part, after a reload.
    fn refresh_record(&mut self) {
        let mut fresh = state::InstanceRecord::new(&self.cfg);
        fresh.source = self.iface.src;
        fresh.master = self.record.master;
        fresh.released = self.record.released;
        fresh.installed = self.record.installed.clone();
        self.record = fresh;
    }

    /// Writes the state file if what it says changed.
    pub(super) fn persist(&mut self) {
        let Some(path) = &self.record_file else {
            return;
        };
        self.record.source = self.iface.src.or(self.record.source);
        if self.record_written.as_ref() == Some(&self.record) {
            return;
        }
        match state::store(path, &self.record) {
            Ok(()) => self.record_written = Some(self.record.clone()),
            Err(e) => tracing::warn!(instance = %self.cfg.name, file = %path.display(), error = %e,
                "cannot write the VRRP state file (a crash could leave VIPs for their lifetime)"),
        }
    }

    pub(super) fn publish(&mut self) {
        let now = self.clock_peek();
        let r = &self.router;
        self.status.store(Arc::new(VrrpInstanceStatus {
            state: r.state(),
            effective_priority: r.effective_priority(),
            master: r.master(),
            transitions: r.transitions(),
            since_seconds: now.saturating_sub(r.since()).as_secs(),
            peers: r
                .peers()
                .iter()
                .map(|(a, p)| VrrpPeerStatus {
                    address: *a,
                    priority: p.priority,
                    advert_interval_ms: u64::from(p.advert_interval_cs) * 10,
                    last_heard_seconds_ago: now.saturating_sub(p.last_heard).as_secs_f64(),
                })
                .collect(),
            tracks: self.track_state.status(&self.cfg.track),
            faults: self
                .faults
                .iter()
                .map(|(reason, detail)| VrrpFaultStatus {
                    reason: *reason,
                    detail: detail.clone(),
                })
                .collect(),
            released: r.released(),
            handover: self.grace_status.clone(),
            ..initial_status(&self.cfg)
        }));
        self.m
            .effective_priority
            .set(i64::from(r.effective_priority()));
        self.published_at = tokio::time::Instant::now();
        self.publish_at = self.published_at + PUBLISH_EVERY;
    }

    /// The router's clock now, without moving it.
    fn clock_peek(&self) -> std::time::Duration {
        tokio::time::Instant::now()
            .saturating_duration_since(self.start)
            .max(self.last_fed)
    }
}

fn notify_changed(a: &VrrpInstanceConfig, b: &VrrpInstanceConfig) -> bool {
    (
        &a.notify,
        &a.notify_master,
        &a.notify_backup,
        &a.notify_fault,
        &a.notify_stop,
    ) != (
        &b.notify,
        &b.notify_master,
        &b.notify_backup,
        &b.notify_fault,
        &b.notify_stop,
    )
}

/// The status of an instance before its task runs; the fields that do
/// not change while it runs.
pub fn initial_status(cfg: &VrrpInstanceConfig) -> VrrpInstanceStatus {
    VrrpInstanceStatus {
        name: cfg.name.clone(),
        interface: cfg.interface.clone(),
        vrid: cfg.vrid,
        state: State::Initialize,
        priority: cfg.priority,
        effective_priority: cfg.priority,
        virtual_ips: cfg.virtual_ips.clone(),
        master: None,
        transitions: 0,
        since_seconds: 0,
        version: Version::from(cfg.version).number(),
        advert_interval_ms: cfg.advert_interval.as_millis() as u64,
        peers: Vec::new(),
        tracks: Vec::new(),
        faults: Vec::new(),
        released: false,
        handover: None,
    }
}

/// One empty datagram to `to`'s discard port (9): the kernel resolves the
/// neighbour to send it. Best effort.
fn poke(ifindex: u32, to: IpAddr) {
    let (bind, dst): (SocketAddr, SocketAddr) = match to {
        IpAddr::V4(v) => ((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), (v, 9).into()),
        IpAddr::V6(v) => (
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            SocketAddrV6::new(v, 9, 0, ifindex).into(),
        ),
    };
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], dst);
    }
}

/// What `lbd status` says about handover rules in place.
fn grace_summary(r: &GraceRules) -> Option<String> {
    match (r.hide, &r.forward) {
        (false, None) => None,
        (true, None) => Some("VIPs kept hidden for the connections this node accepted".into()),
        (false, Some(f)) => Some(format!("forwarding the connections of {} to it", f.to)),
        (true, Some(f)) => Some(format!(
            "VIPs hidden; forwarding the connections of {} to it",
            f.to
        )),
    }
}
