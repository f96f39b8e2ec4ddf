//! The async edge around the pure [`VirtualRouter`](super::fsm::VirtualRouter):
//! one task per instance. It sleeps until the router's next deadline, feeds
//! it received adverts, link changes and tracking changes, and performs the
//! actions it returns: send adverts, add/remove VIPs, gratuitous ARPs /
//! unsolicited NAs, notify. While master it also renews the VIPs' lifetime
//! and puts back a VIP that something removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::VrrpInstanceConfig;
use crate::health::ListenerHealthMap;
use crate::status::{VrrpInstanceStatus, VrrpPeerStatus};
use crate::sys::addr::{LinkInfo, Netlink, SysError};
use crate::sys::link::{NetEvent, NetMonitor};

use super::fsm::{Action, Input, State, VirtualRouter, VirtualRouterParams};
use super::metrics::{InstanceMetrics, VrrpMetrics};
use super::net::{inbound, Inbound, VrrpSocket};
use super::packet::{DropReason, LocalInstance, Version, VrrpPacket};
use super::track::{tracked_interfaces, TrackState};
use super::vip::{Announcer, VipHolder};

#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    #[error("vrrp {instance}: {source}")]
    Sys { instance: String, source: SysError },
    #[error("vrrp {instance}: {what}: {source}")]
    Io {
        instance: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Runs `CMD INSTANCE STATE` through the shell without waiting for it
/// (as keepalived's notify scripts); its exit status is logged.
fn run_notify(cmd: &str, instance: &str, state: State) {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("{cmd} \"$1\" \"$2\""))
        .arg("lbd-notify")
        .arg(instance)
        .arg(state.as_str())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    match c.spawn() {
        Ok(mut child) => {
            let cmd = cmd.to_string();
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(st) if st.success() => {}
                    Ok(st) => tracing::warn!(notify = %cmd, status = %st, "notify command failed"),
                    Err(e) => tracing::warn!(notify = %cmd, error = %e, "notify command"),
                }
            });
        }
        Err(e) => tracing::warn!(notify = %cmd, error = %e, "cannot run notify command"),
    }
}

/// The per-instance state the loop keeps beside the pure router.
struct Instance {
    cfg: VrrpInstanceConfig,
    m: InstanceMetrics,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    link: LinkInfo,
    holder: VipHolder,
    announcer: Option<Announcer>,
    sock: VrrpSocket,
    router: VirtualRouter,
    local: LocalInstance,
    start: Instant,
    track_state: TrackState,
    listeners: ListenerHealthMap,
    links_up: BTreeMap<String, bool>,
    /// While master: when to renew the VIP lifetime.
    renew_at: Option<Instant>,
}

/// What an instance's task is given.
pub struct InstanceContext {
    pub tracks: watch::Receiver<ListenerHealthMap>,
    pub status: Arc<ArcSwap<VrrpInstanceStatus>>,
    pub metrics: VrrpMetrics,
    pub shutdown: CancellationToken,
}

impl Instance {
    /// Waits for the interface, opens the sockets, cleans up VIPs a crashed
    /// predecessor left, and learns the tracked state: everything before
    /// the router's Startup. None on shutdown meanwhile.
    async fn open(
        cfg: VrrpInstanceConfig,
        ctx: &mut InstanceContext,
        mon: &mut NetMonitor,
    ) -> Result<Option<Instance>, VrrpError> {
        // Registered at once: the series exist while the interface is missing.
        let m = ctx.metrics.instance(&cfg.name);
        let nl = Netlink::connect().map_err(sys_err(&cfg.name))?;
        let v6 = cfg.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6());
        allow_nonlocal_bind(v6);
        let Some((link, src)) = wait_ready(&cfg, &nl, mon, &ctx.status, &ctx.shutdown).await?
        else {
            return Ok(None);
        };
        let io_err = |what: &'static str| {
            let instance = cfg.name.clone();
            move |source| VrrpError::Io {
                instance,
                what,
                source,
            }
        };
        let sock = VrrpSocket::open(&link.name, link.index, src, &cfg.unicast_peers)
            .map_err(io_err("VRRP socket"))?;
        let announcer = Announcer::open(&link).map_err(io_err("packet socket"))?;
        let mut holder = VipHolder::new(nl.clone(), cfg.virtual_ips.clone(), cfg.vip_lifetime);
        // VIPs a crashed predecessor left (tagged ours): not master yet, so
        // they go; a foreign copy stays.
        if let Err(e) = holder.remove(&link).await {
            tracing::warn!(instance = %cfg.name, error = %e, "cannot clean stale VIPs");
        }
        let mut links_up = BTreeMap::new();
        for name in tracked_interfaces(&cfg.track) {
            let up = nl.link_by_name(name).await.map(|l| l.up).unwrap_or(false);
            links_up.insert(name.to_string(), up);
        }
        let listeners = ctx.tracks.borrow_and_update().clone();
        let track_state = TrackState::compute(&cfg.track, &listeners, &links_up);
        let mut router = VirtualRouter::new(VirtualRouterParams::from_config(&cfg, src));
        // Tracking known before Startup, so the first advert already carries it.
        router.handle(
            Duration::ZERO,
            Input::TrackChanged {
                weight: track_state.weight(&cfg.track),
            },
        );
        m.effective_priority
            .set(i64::from(router.effective_priority()));
        tracing::info!(instance = %cfg.name, interface = %link.name, source = %src, vrid = cfg.vrid,
            priority = router.effective_priority(), peers = cfg.unicast_peers.len(),
            "VRRP instance starting");
        Ok(Some(Instance {
            local: LocalInstance::from_config(&cfg),
            cfg,
            m,
            status: ctx.status.clone(),
            link,
            holder,
            announcer,
            sock,
            router,
            start: Instant::now(),
            track_state,
            listeners,
            links_up,
            renew_at: None,
        }))
    }

    /// RFC 5798 sec 6.4.1: Startup (FAULT first when the link is down).
    async fn startup(&mut self) {
        if !self.link.up {
            self.input(Input::InterfaceDown).await;
        }
        self.input(Input::Startup).await;
    }

    /// The event loop, until `shutdown`.
    async fn run(
        &mut self,
        tracks: &mut watch::Receiver<ListenerHealthMap>,
        mon: &mut NetMonitor,
        shutdown: &CancellationToken,
    ) {
        let mut tracks_open = true;
        let mut mon_open = true;
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.router.next_deadline().map(|d| self.start + d);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    self.input(Input::Tick).await;
                }
                r = self.sock.recv() => self.on_packet(r).await,
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
                        self.retrack().await;
                    }
                }
                _ = tokio::time::sleep_until(self.renew_at.unwrap_or(far)), if self.renew_at.is_some() => {
                    self.renew().await;
                }
                _ = status_tick.tick() => self.publish(),
            }
        }
    }

    /// Renewing also re-adds a VIP whose removal we missed.
    async fn renew(&mut self) {
        if let Err(e) = self.holder.install(&self.link).await {
            tracing::warn!(instance = %self.cfg.name, error = %e, "cannot renew VIP lifetime");
        }
        self.renew_at = Some(Instant::now() + self.renew_period());
    }

    /// RFC 5798 section 6.4.3: on Shutdown the master sends priority 0.
    /// Make before break: the VIPs (and, in app.rs, the listeners) stay
    /// until a backup announces itself master, so a client never meets a
    /// moment when nobody owns the address; the overlap is the time one
    /// advert takes to arrive. Bounded by two advert intervals (a backup's
    /// skew time is under one) and 2 s (`Vrrp::stop` waits 3 s), in case no
    /// backup is alive.
    async fn stop(mut self) {
        let was_master = self.router.state() == State::Master;
        let now = self.now();
        let mut actions = self.router.handle(now, Input::Shutdown);
        let deferred = was_master && self.holder.held;
        if deferred {
            actions.retain(|a| !matches!(a, Action::RemoveVips));
        }
        self.perform(actions).await;
        if deferred {
            let bound = (self.cfg.advert_interval * 2)
                .clamp(Duration::from_millis(20), Duration::from_secs(2));
            match self.await_successor(bound).await {
                Some(by) => {
                    tracing::info!(instance = %self.cfg.name, successor = %by, "VIPs handed over")
                }
                None => tracing::info!(instance = %self.cfg.name, waited = ?bound,
                    "no backup took over; removing VIPs"),
            }
        }
        if self.holder.held {
            let _ = self.holder.remove(&self.link).await;
        }
        tracing::info!(instance = %self.cfg.name, "VRRP instance stopped");
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// How often the master renews the VIP lifetime: three times per
    /// lifetime, so two renewals may fail before the VIP lapses.
    fn renew_period(&self) -> Duration {
        (self.cfg.vip_lifetime / 3).max(Duration::from_millis(500))
    }

    async fn send_advert(&self, priority: u8, advert_interval_cs: u16) {
        let advert = VrrpPacket::advertisement(
            self.local.version,
            self.cfg.vrid,
            priority,
            advert_interval_cs,
            self.local.auth,
            self.cfg.virtual_ips.iter().map(|v| v.addr()).collect(),
        );
        for dst in self.sock.destinations() {
            let bytes = advert.encode(self.sock.source(), *dst);
            match self.sock.send_to(*dst, &bytes).await {
                Ok(()) => {
                    self.m.sent.inc();
                }
                Err(e) => {
                    tracing::warn!(instance = %self.cfg.name, to = %dst, error = %e, "advert not sent")
                }
            }
        }
    }

    fn announce(&self) {
        if let Some(a) = &self.announcer {
            a.announce(&self.cfg.virtual_ips, &self.m);
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendAdvert {
                    priority,
                    advert_interval_cs,
                } => self.send_advert(priority, advert_interval_cs).await,
                Action::AddVips => {
                    if let Err(e) = self.holder.install(&self.link).await {
                        tracing::error!(instance = %self.cfg.name, error = %e, "cannot add VIPs");
                    }
                    self.renew_at = Some(Instant::now() + self.renew_period());
                }
                Action::SendGratuitous { refresh } => {
                    let n = if refresh {
                        1
                    } else {
                        self.cfg.garp_burst.max(1)
                    };
                    for _ in 0..n {
                        self.announce();
                    }
                }
                Action::RemoveVips => {
                    self.renew_at = None;
                    if let Err(e) = self.holder.remove(&self.link).await {
                        tracing::error!(instance = %self.cfg.name, error = %e, "cannot remove VIPs");
                    }
                }
                Action::StateChanged { from, to: st } => {
                    self.m.transitions.inc();
                    self.m.set_state(st);
                    tracing::info!(instance = %self.cfg.name, from = from.as_str(), state = st.as_str(),
                        priority = self.router.effective_priority(), "VRRP state change");
                    if let Some(cmd) = &self.cfg.notify {
                        run_notify(cmd, &self.cfg.name, st);
                    }
                }
            }
        }
        self.publish();
    }

    async fn input(&mut self, input: Input) {
        let now = self.now();
        let actions = self.router.handle(now, input);
        self.perform(actions).await;
    }

    async fn retrack(&mut self) {
        let st = TrackState::compute(&self.cfg.track, &self.listeners, &self.links_up);
        if st == self.track_state {
            return;
        }
        self.track_state = st;
        let weight = self.track_state.weight(&self.cfg.track);
        self.input(Input::TrackChanged { weight }).await;
        let p = self.router.effective_priority();
        self.m.effective_priority.set(i64::from(p));
        tracing::info!(instance = %self.cfg.name, priority = p, "tracking changed: effective priority");
        self.publish();
    }

    fn publish(&self) {
        let now = self.now();
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
            ..initial_status(&self.cfg)
        }));
    }

    async fn on_packet(&mut self, r: std::io::Result<super::net::Received>) {
        if let Some((src, advert)) = self.decode(r).await {
            self.input(Input::advert(src, &advert)).await;
        }
    }

    /// After our priority-0 advert: waits until another router advertises
    /// with a priority above 0 (it became master), at most `bound`.
    async fn await_successor(&mut self, bound: Duration) -> Option<IpAddr> {
        let deadline = Instant::now() + bound;
        // Bounded in time and, for a flood of foreign packets, in count.
        for _ in 0..10_000 {
            let r = tokio::select! {
                r = self.sock.recv() => r,
                _ = tokio::time::sleep_until(deadline) => return None,
            };
            if let Some((src, advert)) = self.decode(r).await {
                if advert.priority > 0 {
                    return Some(src);
                }
            }
        }
        None
    }

    /// One received packet as an advert for this instance, or None (counted
    /// as a drop where it is one).
    async fn decode(
        &mut self,
        r: std::io::Result<super::net::Received>,
    ) -> Option<(IpAddr, VrrpPacket)> {
        let pkt = match r {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.m.dropped(DropReason::IpHeader);
                return None;
            }
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e, "VRRP socket receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                return None;
            }
        };
        // Another group on the same link ends here as `vrid`: normal, but
        // counted.
        match inbound(
            &pkt,
            self.sock.source(),
            self.sock.unicast_peers(),
            &self.local,
        ) {
            Inbound::Advert(src, advert) => {
                self.m.received.inc();
                Some((src, advert))
            }
            Inbound::Own => None,
            dropped => {
                if let Inbound::Invalid(e) = &dropped {
                    tracing::trace!(instance = %self.cfg.name, from = %pkt.src, error = %e, "VRRP packet dropped");
                }
                if let Some(reason) = dropped.drop_reason() {
                    self.m.dropped(reason);
                }
                None
            }
        }
    }

    async fn on_net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Link(l) => {
                if self.links_up.contains_key(&l.name) {
                    self.links_up.insert(l.name.clone(), l.up);
                }
                if l.index == self.link.index {
                    let was = self.link.up;
                    self.link = l;
                    if was && !self.link.up {
                        tracing::warn!(instance = %self.cfg.name, interface = %self.link.name, "link down: FAULT");
                        self.input(Input::InterfaceDown).await;
                    } else if !was && self.link.up {
                        tracing::info!(instance = %self.cfg.name, interface = %self.link.name, "link up");
                        self.input(Input::InterfaceUp).await;
                    }
                }
                self.retrack().await;
            }
            NetEvent::AddrRemoved { ifindex, addr }
                if ifindex == self.link.index
                    && self.holder.held
                    && self.holder.is_vip(addr)
                    && self.router.state() == State::Master =>
            {
                // Section "never lose the VIP while master": someone (or an
                // expired lifetime) removed it; put it back and announce.
                tracing::warn!(instance = %self.cfg.name, vip = %addr, "VIP removed while master: restoring");
                if let Err(e) = self.holder.install(&self.link).await {
                    tracing::error!(instance = %self.cfg.name, error = %e, "cannot restore VIP");
                }
                self.announce();
                self.renew_at = Some(Instant::now() + self.renew_period());
            }
            _ => {}
        }
    }
}

fn sys_err(instance: &str) -> impl Fn(SysError) -> VrrpError + '_ {
    move |source| VrrpError::Sys {
        instance: instance.to_string(),
        source,
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

/// Waits until `name` exists (and, for IPv6, has a link-local address),
/// publishing FAULT meanwhile. None on shutdown.
async fn wait_ready(
    cfg: &VrrpInstanceConfig,
    nl: &Netlink,
    mon: &mut NetMonitor,
    status: &ArcSwap<VrrpInstanceStatus>,
    shutdown: &CancellationToken,
) -> Result<Option<(LinkInfo, IpAddr)>, VrrpError> {
    let v6 = cfg.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6());
    let exclude: Vec<IpAddr> = cfg.virtual_ips.iter().map(|v| v.addr()).collect();
    let mut warned = false;
    loop {
        match nl.link_by_name(&cfg.interface).await {
            Ok(link) => {
                if let Some(src) = nl
                    .source_address(&link, v6, !cfg.unicast_peers.is_empty(), &exclude)
                    .await
                    .map_err(sys_err(&cfg.name))?
                {
                    return Ok(Some((link, src)));
                }
            }
            Err(SysError::NoSuchInterface(_)) => {}
            Err(e) => return Err(sys_err(&cfg.name)(e)),
        }
        if !warned {
            tracing::warn!(instance = %cfg.name, interface = %cfg.interface,
                "interface missing or without a usable address: FAULT until it has one");
            status.store(Arc::new(VrrpInstanceStatus {
                state: State::Fault,
                ..(**status.load()).clone()
            }));
            warned = true;
        }
        // Re-check on any link/address change, and at least every second.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = mon.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
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
    }
}

/// Runs one VRRP instance until `shutdown`; then sends priority 0 (if
/// master) and removes the VIPs, so a backup takes over after skew time.
pub async fn run_instance(
    cfg: VrrpInstanceConfig,
    mut ctx: InstanceContext,
) -> Result<(), VrrpError> {
    // Subscribed before reading any state so no change falls in between.
    let mut mon = NetMonitor::open().map_err(sys_err(&cfg.name))?;
    let Some(mut inst) = Instance::open(cfg, &mut ctx, &mut mon).await? else {
        return Ok(());
    };
    inst.startup().await;
    inst.run(&mut ctx.tracks, &mut mon, &ctx.shutdown).await;
    inst.stop().await;
    Ok(())
}
