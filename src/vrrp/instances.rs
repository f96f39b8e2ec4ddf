//! Every VRRP instance of the config, as app.rs drives them: start from the
//! `vrrp` section; reload as [`Vrrp::prepare`] then [`Vrrp::commit`];
//! [`Vrrp::report`]; [`Vrrp::stop`] (priority 0, VIPs handed over). Which
//! instances start, stay or restart is the pure [`plan`]; what a reload does
//! to one instance is [`InstanceChange`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{VrrpConfig, VrrpInstanceConfig};
use crate::health::ListenerHealthMap;
use crate::status::VrrpInstanceStatus;

use super::driver::{initial_status, run_instance, InstanceContext};
use super::metrics::VrrpMetrics;

/// How long a stopping instance may take to hand its VIPs over.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// What a reload does to one running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceChange {
    /// Same config: left alone.
    Unchanged,
    /// Any change: the instance stops (releasing its VIPs with priority 0)
    /// and starts again with the new config. (Changes that could apply in
    /// place, issue #14, become their own variants here.)
    Restart,
}

/// What a reload does to one instance (pure).
pub fn instance_change(old: &VrrpInstanceConfig, new: &VrrpInstanceConfig) -> InstanceChange {
    if old == new {
        InstanceChange::Unchanged
    } else {
        InstanceChange::Restart
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
        if change != Some(InstanceChange::Unchanged) {
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
}

struct RunningInstance {
    cfg: VrrpInstanceConfig,
    status: Arc<ArcSwap<VrrpInstanceStatus>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningInstance {
    /// Priority 0 and the VIPs handed over, bounded in time.
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(STOP_BOUND, self.task).await;
    }
}

/// All VRRP instances of a config.
pub struct Vrrp {
    metrics: VrrpMetrics,
    tracks: watch::Receiver<ListenerHealthMap>,
    running: Vec<RunningInstance>,
    published: VrrpReporter,
}

impl Vrrp {
    /// `tracks`: the listeners' health, for `track: - listener:`.
    pub fn new(metrics: VrrpMetrics, tracks: watch::Receiver<ListenerHealthMap>) -> Vrrp {
        Vrrp {
            metrics,
            tracks,
            running: Vec::new(),
            published: VrrpReporter::default(),
        }
    }

    /// Starts every instance of `section`.
    pub async fn start(
        section: Option<&VrrpConfig>,
        metrics: VrrpMetrics,
        tracks: watch::Receiver<ListenerHealthMap>,
    ) -> Vrrp {
        let mut v = Vrrp::new(metrics, tracks);
        v.apply(section).await;
        v
    }

    /// Reload: [`prepare`](Self::prepare) then [`commit`](Self::commit).
    pub async fn apply(&mut self, section: Option<&VrrpConfig>) {
        let prepared = self.prepare(section);
        self.commit(prepared).await;
    }

    /// The plan of a reload. Nothing in it can fail today: an instance's
    /// sockets open in its own task, which reports its errors in status.
    pub fn prepare(&self, section: Option<&VrrpConfig>) -> PreparedVrrp {
        let wanted = section.map_or(&[][..], |v| &v.instances[..]);
        let running: Vec<&VrrpInstanceConfig> = self.running.iter().map(|r| &r.cfg).collect();
        PreparedVrrp {
            plan: plan(&running, wanted),
        }
    }

    /// Stops what is removed or changed (each hands its VIPs over first),
    /// then starts what is new or changed; unchanged instances run on.
    pub async fn commit(&mut self, p: PreparedVrrp) {
        let mut old = std::mem::take(&mut self.running);
        for name in &p.plan.stop {
            if let Some(i) = old.iter().position(|r| r.cfg.name == *name) {
                old.swap_remove(i).stop().await;
            }
        }
        for (cfg, change) in p.plan.wanted {
            let kept = match change {
                Some(InstanceChange::Unchanged) => old
                    .iter()
                    .position(|r| r.cfg.name == cfg.name)
                    .map(|i| old.swap_remove(i)),
                Some(InstanceChange::Restart) | None => None,
            };
            let r = kept.unwrap_or_else(|| self.spawn(cfg));
            self.running.push(r);
        }
        self.publish();
    }

    fn spawn(&self, cfg: VrrpInstanceConfig) -> RunningInstance {
        let status = Arc::new(ArcSwap::from_pointee(initial_status(&cfg)));
        let stop = CancellationToken::new();
        let ctx = InstanceContext {
            tracks: self.tracks.clone(),
            status: status.clone(),
            metrics: self.metrics.clone(),
            shutdown: stop.clone(),
        };
        let task = tokio::spawn({
            let cfg = cfg.clone();
            async move {
                let name = cfg.name.clone();
                if let Err(e) = run_instance(cfg, ctx).await {
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

    fn publish(&self) {
        let all = self.running.iter().map(|r| r.status.clone()).collect();
        self.published.0.store(Arc::new(all));
    }

    pub fn reporter(&self) -> VrrpReporter {
        self.published.clone()
    }

    pub fn report(&self) -> Vec<VrrpInstanceStatus> {
        self.published.report()
    }

    /// Stops every instance at once (priority 0, VIPs handed over),
    /// bounded in time.
    pub async fn stop(&mut self) {
        let all = std::mem::take(&mut self.running);
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
            vip_lifetime: Duration::from_secs(30),
        }
    }

    #[test]
    fn unchanged_instances_stay_changed_ones_restart_removed_ones_stop() {
        let (a, b, c) = (inst("a", 100), inst("b", 100), inst("c", 100));
        let running = [&a, &b, &c];
        let wanted = vec![inst("d", 100), inst("b", 150), a.clone()];
        let p = plan(&running, &wanted);
        assert_eq!(p.stop, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(
            p.wanted,
            vec![
                (inst("d", 100), None),
                (inst("b", 150), Some(InstanceChange::Restart)),
                (a.clone(), Some(InstanceChange::Unchanged)),
            ]
        );
        let same = plan(&running, &[a.clone(), b.clone(), c.clone()]);
        assert!(same.stop.is_empty());
        assert!(PreparedVrrp { plan: same }.is_noop());
        assert!(!PreparedVrrp { plan: p }.is_noop());
    }
}
