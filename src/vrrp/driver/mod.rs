//! The async edge around the pure [`VirtualRouter`](super::fsm::VirtualRouter):
//! one task per instance. It feeds the router received adverts (at the
//! kernel's receive time), link and address changes, tracking changes,
//! faults, reloads and the operator's release/resume, and performs the
//! actions it returns: send adverts, add/renew/remove VIPs, gratuitous ARPs
//! / unsolicited NAs, notify scripts, the state file.
//!
//! Timers first, fairly: each turn of the loop takes at most [`BATCH`]
//! queued packets, each handed over with its own receive time (the router
//! fires whatever timer was due before it first), then fires the timers due
//! now, then waits for the next deadline, packet or event. A flood of
//! protocol 112 therefore delays a timer by one batch at most, and an advert
//! that was queued before a deadline is always handled before that timer.
//! Link, address, tracking and control events are polled ahead of the
//! socket, so a flood does not starve them either.

mod actions;
mod iface;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::VrrpInstanceConfig;
use crate::health::ListenerHealthMap;
use crate::status::VrrpInstanceStatus;
use crate::sys::addr::{Netlink, SysError};
use crate::sys::link::NetMonitor;

use super::control::{Control, Outcome};
use super::fsm::{leave_bound, Fault, Input, VirtualRouter, VirtualRouterParams};
use super::grace::GraceRules;
use super::metrics::{InstanceMetrics, VrrpMetrics};
use super::net::{inbound, Inbound, Received, VrrpSocket};
use super::notify::Notifier;
use super::packet::{DropReason, LocalInstance};
use super::state::{self, InstanceRecord, StateDir};
use super::track::TrackState;
use super::vip::{Announcer, VipHolder};

pub use actions::initial_status;

/// Packets taken per turn of the loop before the timers are looked at.
const BATCH: usize = 64;
/// Status is refreshed this often without a change (ages, last heard).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// The oldest a status may be after an advert arrived (see `on_received`).
const FRESH_STATUS: Duration = Duration::from_millis(10);
/// After the kernel refused a VIP: FAULT for this long, doubling up to
/// [`VIP_RETRY_MAX`] while it keeps refusing, then Backup again.
const VIP_RETRY_FIRST: Duration = Duration::from_secs(1);
const VIP_RETRY_MAX: Duration = Duration::from_secs(30);
/// While a VIP is someone else's or a socket cannot open: how often to
/// look again (besides on every address and link change).
const RECHECK: Duration = Duration::from_secs(1);
/// Follow-up inputs handled for one event at most (a fault raised while
/// performing the actions of another, ...): a bound, not a limit reached.
const MAX_FOLLOW_UPS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    #[error("vrrp {instance}: {source}")]
    Sys { instance: String, source: SysError },
}

/// What an instance's task is given.
pub struct InstanceContext {
    pub tracks: watch::Receiver<ListenerHealthMap>,
    pub status: Arc<ArcSwap<VrrpInstanceStatus>>,
    pub metrics: VrrpMetrics,
    pub shutdown: CancellationToken,
    pub control: mpsc::Receiver<Control>,
    /// Where the instance keeps its state file; None: nowhere (tools).
    pub state: Option<StateDir>,
    /// Start released (a released instance restarted by a reload).
    pub released: bool,
}

/// The interface as last resolved: what adverts and announcements use.
#[derive(Default)]
struct Iface {
    link: Option<crate::sys::addr::LinkInfo>,
    src: Option<IpAddr>,
    sock: Option<VrrpSocket>,
    announcer: Option<Announcer>,
}

/// The per-instance state the loop keeps beside the pure router.
struct Instance {
    cfg: VrrpInstanceConfig,
    m: InstanceMetrics,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    nl: Netlink,
    iface: Iface,
    holder: VipHolder,
    router: VirtualRouter,
    local: LocalInstance,
    start: Instant,
    /// The router's clock never goes back (a packet read late).
    last_fed: Duration,
    track_state: TrackState,
    listeners: ListenerHealthMap,
    links_up: BTreeMap<String, bool>,
    notifier: Notifier,
    record_file: Option<PathBuf>,
    record: InstanceRecord,
    record_written: Option<InstanceRecord>,
    /// The active faults with what the log and status say about them.
    faults: BTreeMap<Fault, String>,
    /// When to look again at the faults that end by themselves.
    recheck_at: Option<Instant>,
    vip_failed_until: Option<Instant>,
    vip_backoff: Duration,
    /// Inputs raised while performing actions, fed next.
    follow_ups: Vec<Input>,
    publish_at: Instant,
    /// When the status was last published (see `on_received`).
    published_at: Instant,
    /// The handover rules nft holds for this instance (None: none known;
    /// the empty rules are applied once at start, removing a crashed
    /// predecessor's).
    grace_applied: Option<GraceRules>,
    /// What `lbd status` says about them.
    grace_status: Option<String>,
}

impl Instance {
    /// Everything before the router's Startup: sockets where the interface
    /// allows, the predecessor's record (its VIPs are adopted), tracking,
    /// faults. Never fails for a missing interface: that is a fault.
    async fn open(cfg: VrrpInstanceConfig, ctx: &mut InstanceContext) -> Result<Self, VrrpError> {
        // Registered at once: the series exist while the interface is missing.
        let m = ctx.metrics.instance(&cfg.name);
        let nl = Netlink::connect().map_err(|source| VrrpError::Sys {
            instance: cfg.name.clone(),
            source,
        })?;
        let v6 = cfg.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6());
        allow_nonlocal_bind(v6);
        let record_file = ctx.state.as_ref().map(|d| d.file_for(&cfg));
        let previous = record_file
            .as_deref()
            .and_then(state::load)
            .filter(|r| r.same_group(&cfg));
        let mut record = InstanceRecord::new(&cfg);
        record.released = ctx.released || previous.as_ref().is_some_and(|r| r.released);
        let installed = previous.map(|r| r.installed).unwrap_or_default();
        let unspecified = unspecified(v6);
        let mut inst = Instance {
            m,
            status: ctx.status.clone(),
            holder: VipHolder::new(nl.clone(), cfg.vip_lifetime, installed),
            nl,
            iface: Iface::default(),
            router: VirtualRouter::new(VirtualRouterParams::from_config(&cfg, unspecified)),
            local: LocalInstance::from_config(&cfg),
            start: Instant::now(),
            last_fed: Duration::ZERO,
            track_state: TrackState::default(),
            listeners: ctx.tracks.borrow_and_update().clone(),
            links_up: BTreeMap::new(),
            notifier: Notifier::new(&cfg),
            record_file,
            record,
            record_written: None,
            faults: BTreeMap::new(),
            recheck_at: None,
            vip_failed_until: None,
            vip_backoff: VIP_RETRY_FIRST,
            follow_ups: Vec::new(),
            publish_at: Instant::now(),
            published_at: Instant::now(),
            grace_applied: None,
            grace_status: None,
            cfg,
        };
        inst.clear_grace_leftovers().await;
        inst.resolve().await;
        inst.adopt().await;
        inst.check_foreign().await;
        inst.refresh_tracked().await;
        inst.retrack();
        if inst.record.released {
            tracing::info!(instance = %inst.cfg.name, "released (lbd vrrp resume to take part again)");
            inst.follow_ups.push(Input::Release);
        }
        inst.feed(Instant::now()).await;
        tracing::info!(instance = %inst.cfg.name, interface = %inst.cfg.interface,
            source = ?inst.iface.src, vrid = inst.cfg.vrid,
            priority = inst.router.effective_priority(), peers = inst.cfg.unicast_peers.len(),
            "VRRP instance starting");
        Ok(inst)
    }

    /// The event loop, until `shutdown`.
    async fn run(
        &mut self,
        tracks: &mut watch::Receiver<ListenerHealthMap>,
        control: &mut mpsc::Receiver<Control>,
        mon: &mut NetMonitor,
        shutdown: &CancellationToken,
    ) {
        let mut tracks_open = true;
        let mut mon_open = true;
        let mut control_open = true;
        loop {
            self.turn().await;
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
                c = control.recv(), if control_open => match c {
                    Some(c) => self.on_control(c).await,
                    None => control_open = false,
                },
                ev = mon.next(), if mon_open => match ev {
                    Some(ev) => self.on_net_event(ev).await,
                    None => {
                        tracing::warn!(instance = %self.cfg.name, "netlink monitor closed; relying on periodic renewal");
                        mon_open = false;
                    }
                },
                r = tracks.changed(), if tracks_open => {
                    if r.is_err() {
                        tracks_open = false;
                    } else {
                        self.listeners = tracks.borrow_and_update().clone();
                        self.retrack();
                    }
                }
                r = recv(self.iface.sock.as_ref()) => self.on_received(r).await,
            }
            self.feed(Instant::now()).await;
        }
    }

    /// One turn: the packets already queued (each at its receive time),
    /// then the timers due now, the driver's own rechecks, and status.
    async fn turn(&mut self) {
        for _ in 0..BATCH {
            let Some(r) = self.iface.sock.as_ref().and_then(VrrpSocket::try_recv) else {
                break;
            };
            self.on_received(r).await;
        }
        let now = Instant::now();
        if self.recheck_at.is_some_and(|t| t <= now) {
            self.recheck().await;
        }
        self.follow_ups.push(Input::Tick);
        self.feed(now).await;
        if self.publish_at <= now {
            self.publish();
        }
    }

    /// The earliest of the router's deadline, a recheck and a status refresh.
    fn next_wake(&self) -> Instant {
        let mut wake = self.publish_at;
        if let Some(d) = self.router.next_deadline() {
            wake = wake.min(self.start + d);
        }
        if let Some(t) = self.recheck_at {
            wake = wake.min(t);
        }
        wake
    }

    /// RFC 5798 sec 6.4.3, Shutdown: priority 0, and the VIPs kept until a
    /// successor advertises (the router bounds the wait: two intervals, at
    /// most 2 s). Only the socket and the timers are served meanwhile.
    async fn stop(mut self) {
        self.follow_ups.push(Input::Shutdown);
        self.feed(Instant::now()).await;
        let give_up = Instant::now()
            + leave_bound(self.router.params().advert_interval_cs)
            + self.router.params().handover_grace.unwrap_or_default()
            + Duration::from_millis(100);
        while self.router.holds_vips() && Instant::now() < give_up {
            self.turn().await;
            let wake = self.next_wake().min(give_up);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                r = recv(self.iface.sock.as_ref()) => self.on_received(r).await,
            }
            self.feed(Instant::now()).await;
        }
        if self.router.holds_vips() {
            self.remove_vips().await;
        }
        self.apply_grace(GraceRules::default()).await;
        self.persist();
        self.publish();
        self.notifier.flush(Duration::from_secs(1)).await;
        tracing::info!(instance = %self.cfg.name, "VRRP instance stopped");
    }

    /// The router's clock for something that happened at `at`.
    fn clock(&mut self, at: Instant) -> Duration {
        let t = at.saturating_duration_since(self.start).max(self.last_fed);
        self.last_fed = t;
        t
    }

    /// Feeds the queued inputs (and what performing them raises) at `at`.
    async fn feed(&mut self, at: Instant) {
        // Nothing to hand over: the clock must not move either. Moved here
        // (after a late wake-up from the timer branch), it would stamp the
        // packets still queued with this later time, and the router would
        // fire a timer that fell due after them before their adverts.
        if self.follow_ups.is_empty() {
            return;
        }
        let now = self.clock(at);
        let mut queue: VecDeque<Input> = self.follow_ups.drain(..).collect();
        let mut handled = 0;
        while let Some(input) = queue.pop_front() {
            let actions = self.router.handle(now, input);
            self.perform(actions).await;
            queue.extend(self.follow_ups.drain(..));
            handled += 1;
            if handled > MAX_FOLLOW_UPS {
                tracing::error!(instance = %self.cfg.name, left = queue.len(), "follow-up inputs do not settle: dropped");
                break;
            }
        }
    }

    async fn on_received(&mut self, r: std::io::Result<Received>) {
        let pkt = match r {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.m.dropped(DropReason::IpHeader);
                return;
            }
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e, "VRRP socket receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                return;
            }
        };
        // When it arrived, not when we got to it (module doc: order).
        let age = pkt.age(SystemTime::now()).min(Duration::from_secs(1));
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let own = self.iface.src.unwrap_or(unspecified(pkt.src.is_ipv6()));
        // Another group on the same link ends here as `vrid`: normal, but
        // counted.
        match inbound(&pkt, own, &self.cfg.unicast_peers, &self.local) {
            Inbound::Advert(src, advert) => {
                self.m.received.inc();
                self.follow_ups.push(Input::advert(src, &advert));
                self.feed(at).await;
                // The status says when each peer was last heard, and the
                // balancer's peer-loss watch (`vrrp::peers`) reads a
                // master's silence from it. Refreshed only every
                // PUBLISH_EVERY, it showed a master advertising every 100
                // ms as silent for up to a second: its backend was marked
                // `peer_gone` about once a second while it served. So
                // every advert refreshes it, at most once per
                // FRESH_STATUS (a flood costs no more than that).
                if Instant::now().saturating_duration_since(self.published_at) >= FRESH_STATUS {
                    self.publish();
                }
            }
            Inbound::Own => {}
            dropped => {
                if let Inbound::Invalid(e) = &dropped {
                    tracing::trace!(instance = %self.cfg.name, from = %pkt.src, error = %e, "VRRP packet dropped");
                }
                if let Some(reason) = dropped.drop_reason() {
                    self.m.dropped(reason);
                }
            }
        }
    }

    async fn on_control(&mut self, c: Control) {
        match c {
            Control::Reconfigure { cfg, done } => {
                self.reconfigure(*cfg).await;
                let _ = done.send(());
            }
            Control::Release(done) => {
                let _ = done.send(self.release(true).await);
            }
            Control::Resume(done) => {
                let _ = done.send(self.release(false).await);
            }
        }
    }

    /// `lbd vrrp release` (`on`) or `resume`: effective before the answer
    /// (priority 0 is on the wire), kept in the state file across restarts.
    async fn release(&mut self, on: bool) -> Outcome {
        let changed = self.router.released() != on;
        if changed {
            tracing::info!(instance = %self.cfg.name, released = on,
                "{}", if on { "released by the operator: priority 0 until resumed" } else { "resumed by the operator" });
            self.follow_ups
                .push(if on { Input::Release } else { Input::Resume });
            self.feed(Instant::now()).await;
            self.record.released = on;
            self.persist();
            self.publish();
        }
        Outcome {
            instance: self.cfg.name.clone(),
            changed,
            state: self.router.state(),
            released: self.router.released(),
        }
    }

    /// The router's parameters for the current config and source address.
    fn params(&self) -> VirtualRouterParams {
        let src = self
            .iface
            .src
            .unwrap_or(self.router.params().primary_address);
        VirtualRouterParams::from_config(&self.cfg, src)
    }

    /// Raises `fault` (or updates what it says): counted, logged once, in
    /// status, and handed to the router.
    fn raise(&mut self, fault: Fault, detail: String) {
        let new = !self.faults.contains_key(&fault);
        if new {
            self.m.fault(fault);
            tracing::warn!(instance = %self.cfg.name, fault = fault.as_str(), "{detail}: FAULT");
            self.follow_ups.push(Input::Fault { reason: fault });
        }
        if fault == Fault::VipFailed && new {
            self.vip_failed_until = Some(Instant::now() + self.vip_backoff);
            self.vip_backoff = (self.vip_backoff * 2).min(VIP_RETRY_MAX);
        }
        self.faults.insert(fault, detail);
        self.schedule_recheck();
    }

    /// Ends `fault` if it holds.
    fn clear(&mut self, fault: Fault) {
        if self.faults.remove(&fault).is_some() {
            tracing::info!(instance = %self.cfg.name, fault = fault.as_str(), "fault over");
            self.follow_ups.push(Input::Recovered { reason: fault });
        }
        self.schedule_recheck();
    }

    /// The next look at the faults that end without an event: a refused
    /// VIP after its hold-down, a foreign VIP or a socket every second.
    fn schedule_recheck(&mut self) {
        let mut at = self.vip_failed_until;
        if self.faults.contains_key(&Fault::VipForeign)
            || self.faults.contains_key(&Fault::SocketError)
        {
            let t = Instant::now() + RECHECK;
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        self.recheck_at = at;
    }

    async fn recheck(&mut self) {
        self.recheck_at = None;
        if self.vip_failed_until.is_some_and(|t| t <= Instant::now()) {
            self.vip_failed_until = None;
            self.clear(Fault::VipFailed);
        }
        if self.faults.contains_key(&Fault::SocketError) {
            self.resolve().await;
        }
        if self.faults.contains_key(&Fault::VipForeign) {
            self.check_foreign().await;
        }
        self.schedule_recheck();
    }
}

/// The next packet on `sock`, or never without one.
async fn recv(sock: Option<&VrrpSocket>) -> std::io::Result<Received> {
    match sock {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    }
}

/// Lets backups bind the tcplb listener on a VIP they do not hold yet.
fn allow_nonlocal_bind(v6: bool) {
    let key = if v6 {
        "net.ipv6.ip_nonlocal_bind"
    } else {
        "net.ipv4.ip_nonlocal_bind"
    };
    match crate::sys::sysctl::ensure(key, "1") {
        Ok(Some(old)) => {
            tracing::info!(sysctl = key, old = %old, "set to 1 so backups can bind the VIP")
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(sysctl = key, error = %e, "cannot set (listeners on the VIP need IP_FREEBIND)")
        }
    }
}

/// Runs one VRRP instance until `shutdown`; then sends priority 0 (if
/// master) and hands the VIPs over, so a backup takes over after skew time.
pub async fn run_instance(
    cfg: VrrpInstanceConfig,
    mut ctx: InstanceContext,
) -> Result<(), VrrpError> {
    // Subscribed before reading any state so no change falls in between.
    let mut mon = NetMonitor::open().map_err(|source| VrrpError::Sys {
        instance: cfg.name.clone(),
        source,
    })?;
    let mut inst = Instance::open(cfg, &mut ctx).await?;
    inst.follow_ups.push(Input::Startup);
    inst.feed(Instant::now()).await;
    inst.run(&mut ctx.tracks, &mut ctx.control, &mut mon, &ctx.shutdown)
        .await;
    inst.stop().await;
    Ok(())
}
