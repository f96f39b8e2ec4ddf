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
use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{TrackConfig, TrackTarget, VrrpInstanceConfig, VrrpVersion};
use crate::status::{TrackStatus, VrrpInstanceStatus, VrrpPeerStatus};
use crate::sys::addr::{AddOutcome, LinkInfo, Netlink, SysError};
use crate::sys::link::{NetEvent, NetMonitor};
use crate::sys::packet::PacketSender;

use super::fsm::{Action, Input, State, VirtualRouter, VirtualRouterParams};
use super::metrics::{InstanceMetrics, VrrpMetrics};
use super::net::{inbound, Inbound, VrrpSocket};
use super::packet::{gratuitous_arp_frame, unsolicited_na_frame};
use super::packet::{LocalInstance, VrrpPacket};

/// Listener name -> has at least one healthy backend (what app.rs publishes).
pub type ListenerHealthMap = BTreeMap<String, bool>;

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

/// The VIPs of one instance on its interface: installs, renews, removes,
/// and never touches an address someone else configured.
struct VipHolder {
    nl: Netlink,
    vips: Vec<IpNet>,
    lifetime: Duration,
    /// VIPs found configured by someone else: announced, never removed.
    foreign: Vec<IpAddr>,
    held: bool,
}

impl VipHolder {
    async fn install(&mut self, link: &LinkInfo) -> Result<(), SysError> {
        self.held = true;
        for vip in self.vips.clone() {
            match self.nl.add_vip(link, vip, self.lifetime).await? {
                AddOutcome::Installed => self.foreign.retain(|f| *f != vip.addr()),
                AddOutcome::Foreign => {
                    if !self.foreign.contains(&vip.addr()) {
                        tracing::warn!(vip = %vip, interface = %link.name,
                            "VIP already configured by someone else: left alone and never removed by lbd");
                        self.foreign.push(vip.addr());
                    }
                }
            }
        }
        Ok(())
    }

    async fn remove(&mut self, link: &LinkInfo) -> Result<(), SysError> {
        self.held = false;
        for vip in &self.vips {
            self.nl.remove_vip(link, vip.addr()).await?;
        }
        Ok(())
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr() == ip)
    }
}

/// Sends the gratuitous ARPs (IPv4) or unsolicited NAs (IPv6) that move the
/// VIPs' traffic to this node, from the interface MAC (as keepalived does
/// without use_vmac).
struct Announcer {
    tx: PacketSender,
    mac: [u8; 6],
}

impl Announcer {
    fn announce(&self, vips: &[IpNet], m: &InstanceMetrics) {
        for vip in vips {
            let r = match vip.addr() {
                IpAddr::V4(v4) => self.tx.send(&gratuitous_arp_frame(self.mac, v4)),
                IpAddr::V6(v6) => self.tx.send(&unsolicited_na_frame(self.mac, v6, false)),
            };
            match r {
                Ok(()) => {
                    m.garps.inc();
                }
                Err(e) => tracing::debug!(vip = %vip, error = %e, "gratuitous ARP/NA not sent"),
            }
        }
    }
}

/// Runs `CMD INSTANCE STATE` through the shell without waiting for it
/// (as keepalived's notify scripts); its exit status is logged.
fn run_notify(cmd: &str, instance: &str, state: &str) {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("{cmd} \"$1\" \"$2\""))
        .arg("lbd-notify")
        .arg(instance)
        .arg(state)
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

/// Which tracked objects are failing now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TrackState {
    failing: Vec<bool>,
}

fn track_failing(
    tracks: &[TrackConfig],
    listeners: &ListenerHealthMap,
    links_up: &BTreeMap<String, bool>,
) -> TrackState {
    TrackState {
        failing: tracks
            .iter()
            .map(|t| match &t.target {
                // Unknown yet (listener not started): not failing, so a
                // starting node does not give away a VIP it holds.
                TrackTarget::Listener(name) => listeners.get(name) == Some(&false),
                TrackTarget::Interface(name) => links_up.get(name) == Some(&false),
            })
            .collect(),
    }
}

/// Sum of the weights of the failing tracks: what the state machine adds to
/// the configured priority ([`super::fsm::effective_priority`]).
fn track_weight(tracks: &[TrackConfig], state: &TrackState) -> i32 {
    tracks
        .iter()
        .zip(&state.failing)
        .filter(|(_, f)| **f)
        .fold(0i32, |acc, (t, _)| acc.saturating_add(t.weight))
}

fn track_status(tracks: &[TrackConfig], state: &TrackState) -> Vec<TrackStatus> {
    tracks
        .iter()
        .zip(&state.failing)
        .map(|(t, f)| TrackStatus {
            target: match &t.target {
                TrackTarget::Listener(n) => format!("listener:{n}"),
                TrackTarget::Interface(n) => format!("interface:{n}"),
            },
            weight: t.weight,
            failing: *f,
        })
        .collect()
}

/// The per-instance state the loop keeps beside the pure router.
struct Instance {
    cfg: VrrpInstanceConfig,
    m: InstanceMetrics,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    nl: Netlink,
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

fn version_number(v: VrrpVersion) -> u8 {
    match v {
        VrrpVersion::V2 => 2,
        VrrpVersion::V3 => 3,
    }
}

impl Instance {
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
                    self.m.state.set(match st {
                        State::Initialize => super::metrics::STATE_INIT,
                        State::Backup => super::metrics::STATE_BACKUP,
                        State::Master => super::metrics::STATE_MASTER,
                        State::Fault => super::metrics::STATE_FAULT,
                    });
                    tracing::info!(instance = %self.cfg.name, from = from.as_str(), state = st.as_str(),
                        priority = self.router.effective_priority(), "VRRP state change");
                    if let Some(cmd) = &self.cfg.notify {
                        run_notify(cmd, &self.cfg.name, st.as_str());
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
        let st = track_failing(&self.cfg.track, &self.listeners, &self.links_up);
        if st == self.track_state {
            return;
        }
        self.track_state = st;
        let weight = track_weight(&self.cfg.track, &self.track_state);
        self.input(Input::TrackChanged { weight }).await;
        let p = self.router.effective_priority();
        self.m.effective_priority.set(i64::from(p));
        tracing::info!(instance = %self.cfg.name, priority = p, "tracking changed: effective priority");
        self.publish();
    }

    fn publish(&self) {
        let now = self.now();
        let cfg = &self.cfg;
        let r = &self.router;
        self.status.store(Arc::new(VrrpInstanceStatus {
            name: cfg.name.clone(),
            interface: cfg.interface.clone(),
            vrid: cfg.vrid,
            state: r.state().as_str().to_string(),
            priority: cfg.priority,
            effective_priority: r.effective_priority(),
            virtual_ips: cfg.virtual_ips.iter().map(|v| v.to_string()).collect(),
            master: r.master().map(|m| m.to_string()),
            transitions: r.transitions(),
            since_seconds: now.saturating_sub(r.since()).as_secs(),
            version: version_number(cfg.version),
            advert_interval_ms: cfg.advert_interval.as_millis() as u64,
            peers: r
                .peers()
                .iter()
                .map(|(a, p)| VrrpPeerStatus {
                    address: a.to_string(),
                    priority: p.priority,
                    advert_interval_ms: u64::from(p.advert_interval_cs) * 10,
                    last_heard_seconds_ago: now.saturating_sub(p.last_heard).as_secs_f64(),
                })
                .collect(),
            tracks: track_status(&cfg.track, &self.track_state),
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
                self.m.dropped("ip_header");
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
                self.m.dropped(dropped.drop_reason().unwrap_or("other"));
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
            let mut st = (**status.load()).clone();
            st.state = State::Fault.as_str().to_string();
            status.store(Arc::new(st));
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

/// The status of an instance before its task runs.
pub fn initial_status(cfg: &VrrpInstanceConfig) -> VrrpInstanceStatus {
    VrrpInstanceStatus {
        name: cfg.name.clone(),
        interface: cfg.interface.clone(),
        vrid: cfg.vrid,
        state: State::Initialize.as_str().to_string(),
        priority: cfg.priority,
        effective_priority: cfg.priority,
        virtual_ips: cfg.virtual_ips.iter().map(|v| v.to_string()).collect(),
        master: None,
        transitions: 0,
        since_seconds: 0,
        version: version_number(cfg.version),
        advert_interval_ms: cfg.advert_interval.as_millis() as u64,
        peers: Vec::new(),
        tracks: Vec::new(),
    }
}

/// Runs one VRRP instance until `shutdown`; then sends priority 0 (if
/// master) and removes the VIPs, so a backup takes over after skew time.
pub async fn run_instance(
    cfg: VrrpInstanceConfig,
    mut tracks: watch::Receiver<ListenerHealthMap>,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    metrics: VrrpMetrics,
    shutdown: CancellationToken,
) -> Result<(), VrrpError> {
    let m = metrics.instance(&cfg.name);
    let nl = Netlink::connect().map_err(sys_err(&cfg.name))?;
    // Subscribed before reading any state so no change falls in between.
    let mut mon = NetMonitor::open().map_err(sys_err(&cfg.name))?;
    let v6 = cfg.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6());
    allow_nonlocal_bind(v6);
    let Some((link, src)) = wait_ready(&cfg, &nl, &mut mon, &status, &shutdown).await? else {
        return Ok(());
    };
    let io_err = |what: &'static str| {
        let name = cfg.name.clone();
        move |source| VrrpError::Io {
            instance: name.clone(),
            what,
            source,
        }
    };
    let sock = VrrpSocket::open(&link.name, link.index, src, &cfg.unicast_peers)
        .map_err(io_err("VRRP socket"))?;
    let announcer = match link.mac {
        Some(mac) => Some(Announcer {
            tx: PacketSender::open(link.index).map_err(io_err("packet socket"))?,
            mac,
        }),
        None => None,
    };
    let mut holder = VipHolder {
        nl: nl.clone(),
        vips: cfg.virtual_ips.clone(),
        lifetime: cfg.vip_lifetime,
        foreign: Vec::new(),
        held: false,
    };
    // VIPs a crashed predecessor left (tagged ours): not master yet, so
    // they go; a foreign copy stays.
    if let Err(e) = holder.remove(&link).await {
        tracing::warn!(instance = %cfg.name, error = %e, "cannot clean stale VIPs");
    }
    let mut links_up = BTreeMap::new();
    for t in &cfg.track {
        if let TrackTarget::Interface(name) = &t.target {
            let up = nl.link_by_name(name).await.map(|l| l.up).unwrap_or(false);
            links_up.insert(name.clone(), up);
        }
    }
    let listeners = tracks.borrow_and_update().clone();
    let track_state = track_failing(&cfg.track, &listeners, &links_up);
    let mut router = VirtualRouter::new(VirtualRouterParams::from_config(&cfg, src));
    let local = LocalInstance::from_config(&cfg);
    // Tracking known before Startup, so the first advert already carries it.
    router.handle(
        Duration::ZERO,
        Input::TrackChanged {
            weight: track_weight(&cfg.track, &track_state),
        },
    );
    let prio = router.effective_priority();
    m.effective_priority.set(i64::from(prio));
    tracing::info!(instance = %cfg.name, interface = %link.name, source = %src, vrid = cfg.vrid,
        priority = prio, peers = cfg.unicast_peers.len(), "VRRP instance starting");
    let now = Instant::now();
    let mut inst = Instance {
        cfg,
        m,
        status,
        nl,
        link,
        holder,
        announcer,
        sock,
        router,
        local,
        start: now,
        track_state,
        listeners,
        links_up,
        renew_at: None,
    };
    if !inst.link.up {
        inst.input(Input::InterfaceDown).await;
    }
    inst.input(Input::Startup).await;
    let mut tracks_open = true;
    let mut mon_open = true;
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = inst.router.next_deadline().map(|d| inst.start + d);
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                inst.input(Input::Tick).await;
            }
            r = inst.sock.recv() => inst.on_packet(r).await,
            ev = mon.next(), if mon_open => match ev {
                Some(ev) => inst.on_net_event(ev).await,
                None => {
                    tracing::warn!(instance = %inst.cfg.name, "netlink monitor closed; relying on periodic renewal");
                    mon_open = false;
                }
            },
            r = tracks.changed(), if tracks_open => {
                if r.is_err() {
                    tracks_open = false;
                } else {
                    inst.listeners = tracks.borrow_and_update().clone();
                    inst.retrack().await;
                }
            }
            _ = tokio::time::sleep_until(inst.renew_at.unwrap_or(far)), if inst.renew_at.is_some() => {
                // Renewing also re-adds a VIP whose removal we missed.
                if let Err(e) = inst.holder.install(&inst.link).await {
                    tracing::warn!(instance = %inst.cfg.name, error = %e, "cannot renew VIP lifetime");
                }
                inst.renew_at = Some(Instant::now() + inst.renew_period());
            }
            _ = status_tick.tick() => inst.publish(),
        }
    }
    // RFC 5798 section 6.4.3: on Shutdown the master sends priority 0.
    // Make before break: the VIPs (and, in app.rs, the listeners) stay until
    // a backup announces itself master, so a client never meets a moment when
    // nobody owns the address; the overlap is the time one advert takes to
    // arrive. Bounded by two advert intervals (a backup's skew time is under
    // one) and 2 s (VrrpRunner::stop waits 3 s), in case no backup is alive.
    let was_master = inst.router.state() == State::Master;
    let now = inst.now();
    let mut actions = inst.router.handle(now, Input::Shutdown);
    let deferred = was_master && inst.holder.held;
    if deferred {
        actions.retain(|a| !matches!(a, Action::RemoveVips));
    }
    inst.perform(actions).await;
    if deferred {
        let bound =
            (inst.cfg.advert_interval * 2).clamp(Duration::from_millis(20), Duration::from_secs(2));
        match inst.await_successor(bound).await {
            Some(by) => {
                tracing::info!(instance = %inst.cfg.name, successor = %by, "VIPs handed over")
            }
            None => tracing::info!(instance = %inst.cfg.name, waited = ?bound,
                "no backup took over; removing VIPs"),
        }
    }
    if inst.holder.held {
        let _ = inst.holder.remove(&inst.link).await;
    }
    let _ = &inst.nl;
    tracing::info!(instance = %inst.cfg.name, "VRRP instance stopped");
    Ok(())
}

/// All VRRP instances of a config, for app.rs: start, report, reload, stop.
pub struct VrrpRunner {
    metrics: VrrpMetrics,
    tracks: watch::Receiver<ListenerHealthMap>,
    running: Vec<RunningInstance>,
    published: VrrpReporter,
}

/// A cheap, cloneable view of every instance's status (for the admin
/// server's report closure).
#[derive(Clone, Default)]
pub struct VrrpReporter(Arc<ArcSwap<Vec<Arc<ArcSwap<VrrpInstanceStatus>>>>>);

impl VrrpReporter {
    pub fn report(&self) -> Vec<VrrpInstanceStatus> {
        self.0.load().iter().map(|s| (**s.load()).clone()).collect()
    }
}

struct RunningInstance {
    cfg: VrrpInstanceConfig,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl VrrpRunner {
    pub fn new(metrics: VrrpMetrics, tracks: watch::Receiver<ListenerHealthMap>) -> VrrpRunner {
        VrrpRunner {
            metrics,
            tracks,
            running: Vec::new(),
            published: VrrpReporter::default(),
        }
    }

    fn spawn(&self, cfg: VrrpInstanceConfig) -> RunningInstance {
        let status = Arc::new(ArcSwap::from_pointee(initial_status(&cfg)));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (cfg, status, stop) = (cfg.clone(), status.clone(), stop.clone());
            let (tracks, metrics) = (self.tracks.clone(), self.metrics.clone());
            async move {
                let name = cfg.name.clone();
                if let Err(e) = run_instance(cfg, tracks, status, metrics, stop).await {
                    tracing::error!(instance = %name, "VRRP instance failed: {e}");
                }
            }
        });
        RunningInstance {
            cfg,
            status,
            stop,
            task,
        }
    }

    /// Brings the running instances to `wanted`: unchanged ones keep
    /// running, changed ones restart (releasing the VIP with priority 0 first).
    pub async fn apply(&mut self, wanted: &[VrrpInstanceConfig]) {
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.running) {
            if wanted.contains(&r.cfg) {
                keep.push(r);
            } else {
                r.stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(3), r.task).await;
            }
        }
        for cfg in wanted {
            if !keep.iter().any(|r| r.cfg == *cfg) {
                keep.push(self.spawn(cfg.clone()));
            }
        }
        self.running = keep;
        self.publish();
    }

    fn publish(&self) {
        let all = self.running.iter().map(|r| r.status.clone()).collect();
        self.published.0.store(Arc::new(all));
    }

    pub fn reporter(&self) -> VrrpReporter {
        self.published.clone()
    }

    /// Stops every instance (priority 0, VIPs removed), bounded in time.
    pub async fn stop(&mut self) {
        for r in &self.running {
            r.stop.cancel();
        }
        let tasks: Vec<_> = self.running.iter_mut().map(|r| &mut r.task).collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(tasks)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: TrackTarget, weight: i32) -> TrackConfig {
        TrackConfig { target, weight }
    }

    #[test]
    fn tracking_adds_weights_of_failing_targets_only() {
        let tracks = vec![
            t(TrackTarget::Listener("api".into()), -50),
            t(TrackTarget::Interface("eth1".into()), -30),
            t(TrackTarget::Listener("other".into()), -10),
        ];
        let mut l = ListenerHealthMap::new();
        l.insert("api".into(), false);
        l.insert("other".into(), true);
        let mut links = BTreeMap::new();
        links.insert("eth1".to_string(), true);
        let st = track_failing(&tracks, &l, &links);
        assert_eq!(st.failing, vec![true, false, false]);
        assert_eq!(track_weight(&tracks, &st), -50);
        links.insert("eth1".to_string(), false);
        let st = track_failing(&tracks, &l, &links);
        assert_eq!(track_weight(&tracks, &st), -80);
        let up = vec![t(TrackTarget::Listener("api".into()), 200)];
        let st = track_failing(&up, &l, &links);
        assert_eq!(track_weight(&up, &st), 200);
        // A listener not published yet does not count as failing.
        let st = track_failing(&[t(TrackTarget::Listener("new".into()), -50)], &l, &links);
        assert_eq!(st.failing, vec![false]);
    }
}
