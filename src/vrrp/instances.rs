//! Every VRRP instance of the config, as app.rs drives them: start from the
//! `vrrp` section; reload as [`Vrrp::prepare`] then [`Vrrp::commit`];
//! [`Vrrp::report`]; [`Vrrp::stop`] (priority 0, VIPs handed over). Which
//! instances start, stay, change in place or restart is the pure [`plan`];
//! what a reload does to one instance is [`InstanceChange`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{VrrpConfig, VrrpInstanceConfig};
use crate::health::ListenerHealthMap;
use crate::status::VrrpInstanceStatus;

use super::control::{Control, VrrpControl};
use super::driver::{initial_status, run_instance, InstanceContext};
use super::metrics::VrrpMetrics;
use super::state::{self, StateDir};

/// How long a stopping instance may take to hand its VIPs over (the
/// router waits at most 2 s for a successor) and start its STOP scripts.
const STOP_BOUND: Duration = Duration::from_secs(4);

/// How long a reload waits for an instance to apply a change in place.
const RECONFIGURE_BOUND: Duration = Duration::from_secs(2);

/// Control requests queued per instance.
const CONTROL_QUEUE: usize = 8;

/// What a reload does to one running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceChange {
    /// Same config: left alone.
    Unchanged,
    /// Priority, tracking, peers, timers, preemption, notify scripts, VIP
    /// list, lifetime, auth: applied to the running instance, without
    /// leaving MASTER and without a priority 0 advert.
    InPlace,
    /// Another interface, VRID, version or address family: a different
    /// group on the wire. The instance stops (releasing its VIPs with
    /// priority 0) and starts again with the new config.
    Restart,
}

/// What a reload does to one instance (pure).
pub fn instance_change(old: &VrrpInstanceConfig, new: &VrrpInstanceConfig) -> InstanceChange {
    let family = |c: &VrrpInstanceConfig| c.virtual_ips.first().map(|v| v.addr().is_ipv6());
    if old == new {
        InstanceChange::Unchanged
    } else if old.interface != new.interface
        || old.vrid != new.vrid
        || old.version != new.version
        || family(old) != family(new)
    {
        InstanceChange::Restart
    } else {
        InstanceChange::InPlace
    }
}

/// What a reload does to the instances, matched by name (pure).
#[derive(Debug, Default, PartialEq)]
pub struct InstancePlan {
    /// Running instances to stop: removed, or restarting.
    pub stop: Vec<String>,
    /// The wanted instances in config order, each with what happens to it
    /// (None: new).
    pub wanted: Vec<(VrrpInstanceConfig, Option<InstanceChange>)>,
}

pub fn plan(running: &[&VrrpInstanceConfig], wanted: &[VrrpInstanceConfig]) -> InstancePlan {
    let mut p = InstancePlan::default();
    for old in running {
        let change = wanted
            .iter()
            .find(|w| w.name == old.name)
            .map(|w| instance_change(old, w));
        if matches!(change, None | Some(InstanceChange::Restart)) {
            p.stop.push(old.name.clone());
        }
    }
    for w in wanted {
        let change = running
            .iter()
            .find(|r| r.name == w.name)
            .map(|r| instance_change(r, w));
        p.wanted.push((w.clone(), change));
    }
    p
}

/// A reload ready to commit.
pub struct PreparedVrrp {
    plan: InstancePlan,
}

impl PreparedVrrp {
    /// Whether committing it would change anything.
    pub fn is_noop(&self) -> bool {
        self.plan.stop.is_empty()
            && self
                .plan
                .wanted
                .iter()
                .all(|(_, c)| *c == Some(InstanceChange::Unchanged))
    }
}

/// A cheap, cloneable view of every instance's status (for the admin
/// server's report closure).
#[derive(Clone, Default)]
pub struct VrrpReporter(Arc<ArcSwap<Vec<Arc<ArcSwap<VrrpInstanceStatus>>>>>);

impl VrrpReporter {
    pub fn report(&self) -> Vec<VrrpInstanceStatus> {
        self.0.load().iter().map(|s| (**s.load()).clone()).collect()
    }

    /// Each instance's status as published (by identity, for `peers`).
    pub fn statuses(&self) -> Vec<Arc<VrrpInstanceStatus>> {
        self.0.load().iter().map(|s| s.load_full()).collect()
    }
}

struct RunningInstance {
    cfg: VrrpInstanceConfig,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    stop: CancellationToken,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningInstance {
    /// Priority 0 and the VIPs handed over, bounded in time.
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(STOP_BOUND, self.task).await;
    }

    /// Applies `cfg` in place; bounded in time (a stuck instance keeps its
    /// old config and says so in the log).
    async fn reconfigure(&mut self, cfg: VrrpInstanceConfig) {
        let (done, applied) = oneshot::channel();
        let msg = Control::Reconfigure {
            cfg: Box::new(cfg.clone()),
            done,
        };
        let ok = tokio::time::timeout(RECONFIGURE_BOUND, async {
            self.control.send(msg).await.is_ok() && applied.await.is_ok()
        })
        .await;
        if ok != Ok(true) {
            tracing::error!(instance = %cfg.name, "did not apply the new config in time");
        }
        self.cfg = cfg;
    }
}

/// All VRRP instances of a config.
pub struct Vrrp {
    metrics: VrrpMetrics,
    tracks: watch::Receiver<ListenerHealthMap>,
    state: Option<StateDir>,
    running: Vec<RunningInstance>,
    published: VrrpReporter,
    control: VrrpControl,
}

impl Vrrp {
    /// `tracks`: the listeners' health, for `track: - listener:`. `state`:
    /// where the instances keep their state files (None: nowhere).
    pub fn new(
        metrics: VrrpMetrics,
        tracks: watch::Receiver<ListenerHealthMap>,
        state: Option<StateDir>,
    ) -> Vrrp {
        Vrrp {
            metrics,
            tracks,
            state,
            running: Vec::new(),
            published: VrrpReporter::default(),
            control: VrrpControl::default(),
        }
    }

    /// Starts every instance of `section`, after removing what state files
    /// of instances no longer configured still hold.
    pub async fn start(
        section: Option<&VrrpConfig>,
        metrics: VrrpMetrics,
        tracks: watch::Receiver<ListenerHealthMap>,
        state: Option<StateDir>,
    ) -> Vrrp {
        let mut v = Vrrp::new(metrics, tracks, state);
        let wanted = section.map_or(&[][..], |s| &s.instances[..]);
        v.forget_unconfigured(wanted).await;
        v.apply(section).await;
        v
    }

    /// Reload: [`prepare`](Self::prepare) then [`commit`](Self::commit).
    pub async fn apply(&mut self, section: Option<&VrrpConfig>) {
        let prepared = self.prepare(section);
        self.commit(prepared).await;
    }

    /// The plan of a reload. Nothing in it can fail: an instance's sockets
    /// open in its own task, which reports its problems as faults.
    pub fn prepare(&self, section: Option<&VrrpConfig>) -> PreparedVrrp {
        let wanted = section.map_or(&[][..], |v| &v.instances[..]);
        let running: Vec<&VrrpInstanceConfig> = self.running.iter().map(|r| &r.cfg).collect();
        PreparedVrrp {
            plan: plan(&running, wanted),
        }
    }

    /// Stops what is removed or restarting (each hands its VIPs over
    /// first), applies in-place changes, then starts what is new or
    /// restarting; unchanged instances run on. A restarting instance that
    /// was released stays released.
    pub async fn commit(&mut self, p: PreparedVrrp) {
        let mut old = std::mem::take(&mut self.running);
        let mut released = Vec::new();
        for name in &p.plan.stop {
            if let Some(i) = old.iter().position(|r| r.cfg.name == *name) {
                let r = old.swap_remove(i);
                if r.status.load().released {
                    released.push(r.cfg.name.clone());
                }
                let cfg = r.cfg.clone();
                r.stop().await;
                // Its group is no longer run: nothing to remember.
                if let Some(d) = &self.state {
                    state::remove(&d.file_for(&cfg));
                }
            }
        }
        for (cfg, change) in p.plan.wanted {
            let at = old.iter().position(|r| r.cfg.name == cfg.name);
            let r = match (change, at) {
                (Some(InstanceChange::Unchanged), Some(i)) => old.swap_remove(i),
                (Some(InstanceChange::InPlace), Some(i)) => {
                    let mut r = old.swap_remove(i);
                    r.reconfigure(cfg).await;
                    r
                }
                _ => {
                    let was_released = released.contains(&cfg.name);
                    self.spawn(cfg, was_released)
                }
            };
            self.running.push(r);
        }
        self.publish();
    }

    /// State files of groups the config no longer has (the config changed
    /// while lbd was down): their VIPs go, and so do the files.
    async fn forget_unconfigured(&self, wanted: &[VrrpInstanceConfig]) {
        let Some(dir) = &self.state else {
            return;
        };
        for (path, rec) in dir.records() {
            if wanted.iter().any(|w| rec.same_group(w)) {
                continue;
            }
            if !rec.installed.is_empty() {
                super::handover::remove_recorded(&rec).await;
            }
            tracing::info!(file = %path.display(), instance = %rec.instance,
                "state of an instance no longer configured: removed");
            state::remove(&path);
        }
    }

    fn spawn(&self, cfg: VrrpInstanceConfig, released: bool) -> RunningInstance {
        let status = Arc::new(ArcSwap::from_pointee(initial_status(&cfg)));
        let stop = CancellationToken::new();
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let ctx = InstanceContext {
            tracks: self.tracks.clone(),
            status: status.clone(),
            metrics: self.metrics.clone(),
            shutdown: stop.clone(),
            control: control_rx,
            state: self.state.clone(),
            released,
        };
        let task = tokio::spawn({
            let cfg = cfg.clone();
            async move {
                let name = cfg.name.clone();
                let run = std::panic::AssertUnwindSafe(run_instance(cfg, ctx));
                match run.catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(instance = %name, "VRRP instance failed: {e}"),
                    // An instance that panicked holds VIPs nobody renews or
                    // gives up: end the worker so that the supervisor hands
                    // them over (priority 0, removal) at once.
                    Err(_) => {
                        tracing::error!(instance = %name, "VRRP instance panicked: aborting so the supervisor hands the VIPs over");
                        std::process::abort();
                    }
                }
            }
        });
        RunningInstance {
            cfg,
            status,
            stop,
            control,
            task,
        }
    }

    fn publish(&self) {
        let all = self.running.iter().map(|r| r.status.clone()).collect();
        self.published.0.store(Arc::new(all));
        let controls = self
            .running
            .iter()
            .map(|r| (r.cfg.name.clone(), r.control.clone()))
            .collect();
        self.control.0.store(Arc::new(controls));
    }

    pub fn reporter(&self) -> VrrpReporter {
        self.published.clone()
    }

    /// The handle `lbd vrrp release|resume` goes through.
    pub fn control(&self) -> VrrpControl {
        self.control.clone()
    }

    pub fn report(&self) -> Vec<VrrpInstanceStatus> {
        self.published.report()
    }

    /// Stops every instance at once (priority 0, VIPs handed over),
    /// bounded in time.
    pub async fn stop(&mut self) {
        let all = std::mem::take(&mut self.running);
        self.publish();
        futures::future::join_all(all.into_iter().map(RunningInstance::stop)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VrrpVersion;

    fn inst(name: &str, priority: u8) -> VrrpInstanceConfig {
        VrrpInstanceConfig {
            name: name.into(),
            interface: "eth0".into(),
            vrid: 51,
            version: VrrpVersion::V3,
            priority,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            immediate_preempt: false,
            virtual_ips: vec!["10.0.0.100/24".parse().unwrap()],
            unicast_peers: Vec::new(),
            auth_pass: String::new(),
            track: Vec::new(),
            garp_burst: 5,
            garp_refresh: None,
            garp_master_delay: None,
            notify: None,
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify_stop: None,
            vip_lifetime: Duration::from_secs(30),
            handover_grace: Duration::ZERO,
        }
    }

    #[test]
    fn unchanged_instances_stay_changed_ones_apply_in_place_others_restart() {
        let (a, b, c) = (inst("a", 100), inst("b", 100), inst("c", 100));
        let e = VrrpInstanceConfig {
            vrid: 7,
            ..inst("e", 100)
        };
        let running = [&a, &b, &c, &e];
        let wanted = vec![
            inst("d", 100),
            inst("b", 150),
            a.clone(),
            VrrpInstanceConfig {
                vrid: 8,
                ..inst("e", 100)
            },
        ];
        let p = plan(&running, &wanted);
        assert_eq!(p.stop, vec!["c".to_string(), "e".to_string()]);
        assert_eq!(
            p.wanted
                .iter()
                .map(|(c, ch)| (c.name.as_str(), *ch))
                .collect::<Vec<_>>(),
            vec![
                ("d", None),
                ("b", Some(InstanceChange::InPlace)),
                ("a", Some(InstanceChange::Unchanged)),
                ("e", Some(InstanceChange::Restart)),
            ]
        );
        let same = plan(&[&a, &b, &c], &[a.clone(), b.clone(), c.clone()]);
        assert!(same.stop.is_empty());
        assert!(PreparedVrrp { plan: same }.is_noop());
        assert!(!PreparedVrrp { plan: p }.is_noop());
    }

    #[test]
    fn only_the_group_on_the_wire_forces_a_restart() {
        let a = inst("a", 100);
        let change = |f: &dyn Fn(&mut VrrpInstanceConfig)| {
            let mut b = a.clone();
            f(&mut b);
            instance_change(&a, &b)
        };
        use InstanceChange::*;
        assert_eq!(change(&|b| b.priority = 10), InPlace);
        assert_eq!(
            change(&|b| b.advert_interval = Duration::from_millis(100)),
            InPlace
        );
        assert_eq!(change(&|b| b.preempt = false), InPlace);
        assert_eq!(change(&|b| b.notify = Some("true".into())), InPlace);
        assert_eq!(
            change(&|b| b.unicast_peers = vec!["10.0.0.2".parse().unwrap()]),
            InPlace
        );
        assert_eq!(
            change(&|b| b.virtual_ips.push("10.0.0.101/24".parse().unwrap())),
            InPlace
        );
        assert_eq!(
            change(&|b| b.vip_lifetime = Duration::from_secs(9)),
            InPlace
        );
        assert_eq!(change(&|b| b.vrid = 52), Restart);
        assert_eq!(change(&|b| b.interface = "eth1".into()), Restart);
        assert_eq!(change(&|b| b.version = VrrpVersion::V2), Restart);
        assert_eq!(
            change(&|b| b.virtual_ips = vec!["fd00::1/64".parse().unwrap()]),
            Restart
        );
    }
}
