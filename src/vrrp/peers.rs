//! Which VRRP peers are gone: a master whose adverts stopped. The balancer
//! marks the backend on that peer's node down at once instead of waiting
//! for its health checks to fail `fall` times (issue 13: the dead node's
//! apiserver stayed in rotation for ~3 s after the VIP moved).
//!
//! Read from what every instance already publishes (its status, with the
//! peer table), so the driver is not involved: [`PeerLoss`] is the pure
//! rule over `(status, how long ago that status was published)`, and
//! [`watch`] polls the statuses and publishes the set of gone peers.
//!
//! Only a master advertises, so only the master can be seen to go. It is
//! gone when it has been silent for longer than three of its advert
//! intervals (Master_Down_Interval without the skew, RFC 5798 sec 6.1):
//! seen as a backup while it is still the master we know of (at 3
//! intervals, before our own Master_Down_Timer fires at 3 + skew), or when
//! the master changed away from it after such a silence. A master that
//! yields to a higher priority stops advertising too, but it was heard up
//! to the moment the new master appeared, so it is not gone; nor is one
//! that left with priority 0 (its node's apiserver usually still serves).
//! A gone peer is back once it is heard again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fsm::State;
use super::instances::VrrpReporter;
use crate::status::VrrpInstanceStatus;

/// Peers whose adverts stopped, by address.
pub type PeersGone = BTreeSet<IpAddr>;

/// Silent for more than this many advert intervals: gone.
const SILENT_INTERVALS: f64 = 3.0;

/// What is remembered of one instance between observations.
#[derive(Debug, Default)]
struct InstanceView {
    master: Option<IpAddr>,
}

/// The pure rule: feed it every instance's status and how old that status
/// is; it answers which peers are gone.
#[derive(Debug, Default)]
pub struct PeerLoss {
    instances: BTreeMap<String, InstanceView>,
    gone: PeersGone,
}

impl PeerLoss {
    /// One instance's status, published `age` ago. Returns true when the
    /// gone set changed.
    pub fn observe(&mut self, status: &VrrpInstanceStatus, age: Duration) -> bool {
        let before = self.gone.clone();
        let silence = |addr: IpAddr| {
            status.peers.iter().find(|p| p.address == addr).map(|p| {
                let silent = p.last_heard_seconds_ago + age.as_secs_f64();
                let interval = p.advert_interval_ms as f64 / 1000.0;
                (silent, interval)
            })
        };
        let view = self.instances.entry(status.name.clone()).or_default();
        // The master we knew before, if the status now names another.
        let previous = view.master.filter(|m| status.master != Some(*m));
        view.master = status.master;
        let current = status.master.filter(|_| status.state == State::Backup);
        for candidate in [previous, current].into_iter().flatten() {
            if let Some((silent, interval)) = silence(candidate) {
                if silent > SILENT_INTERVALS * interval {
                    self.gone.insert(candidate);
                }
            }
        }
        // Heard again within an interval: back.
        for p in &status.peers {
            let interval = p.advert_interval_ms as f64 / 1000.0;
            if p.last_heard_seconds_ago + age.as_secs_f64() <= interval {
                self.gone.remove(&p.address);
            }
        }
        self.gone != before
    }

    /// Instances gone from the config are forgotten (their peers stay in
    /// the set until heard again elsewhere or the set is rebuilt).
    pub fn retain_instances(&mut self, names: &BTreeSet<&str>) {
        self.instances.retain(|n, _| names.contains(n.as_str()));
    }

    pub fn gone(&self) -> &PeersGone {
        &self.gone
    }
}

/// How often the statuses are looked at: a quarter of the shortest advert
/// interval, within [10 ms, 250 ms]. Gone is declared at 3 intervals, a
/// backup takes over at 3 intervals + skew: the poll fits in between.
fn poll_period(statuses: &[Arc<VrrpInstanceStatus>]) -> Duration {
    let shortest = statuses
        .iter()
        .map(|s| s.advert_interval_ms)
        .filter(|ms| *ms > 0)
        .min()
        .unwrap_or(1000);
    Duration::from_millis(shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// Follows every instance of `reporter` (reloads included) until
/// `shutdown`; the receiver holds the peers gone now.
pub fn watch(reporter: VrrpReporter, shutdown: CancellationToken) -> watch::Receiver<PeersGone> {
    let (tx, rx) = watch::channel(PeersGone::new());
    tokio::spawn(async move {
        let mut loss = PeerLoss::default();
        // Each status by identity, with when it was first seen here.
        let mut seen: BTreeMap<String, (Arc<VrrpInstanceStatus>, Instant)> = BTreeMap::new();
        loop {
            let statuses = reporter.statuses();
            let now = Instant::now();
            let mut changed = false;
            for s in &statuses {
                let first_seen = match seen.get(&s.name) {
                    Some((prev, at)) if Arc::ptr_eq(prev, s) => *at,
                    _ => now,
                };
                seen.insert(s.name.clone(), (s.clone(), first_seen));
                changed |= loss.observe(s, now - first_seen);
            }
            let names: BTreeSet<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
            seen.retain(|n, _| names.contains(n.as_str()));
            loss.retain_instances(&names);
            if changed {
                tracing::info!(gone = ?loss.gone(), "VRRP peers gone changed");
                tx.send_replace(loss.gone().clone());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll_period(&statuses)) => {}
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::VrrpPeerStatus;

    const P: &str = "10.0.0.1";
    const Q: &str = "10.0.0.2";
    const US: &str = "10.0.0.9";

    fn status(state: State, master: Option<&str>, peers: &[(&str, f64)]) -> VrrpInstanceStatus {
        VrrpInstanceStatus {
            name: "api".into(),
            interface: "eth0".into(),
            vrid: 51,
            state,
            priority: 90,
            effective_priority: 90,
            virtual_ips: vec![],
            master: master.map(|m| m.parse().unwrap()),
            transitions: 0,
            faults: Vec::new(),
            released: false,
            handover: None,
            since_seconds: 0,
            version: 3,
            advert_interval_ms: 100,
            peers: peers
                .iter()
                .map(|(a, heard)| VrrpPeerStatus {
                    address: a.parse().unwrap(),
                    priority: 100,
                    advert_interval_ms: 100,
                    last_heard_seconds_ago: *heard,
                })
                .collect(),
            tracks: vec![],
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn gone(l: &PeerLoss) -> Vec<String> {
        l.gone().iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_silent_master_is_gone_after_three_intervals_seen_from_a_backup() {
        let mut l = PeerLoss::default();
        let st = status(State::Backup, Some(P), &[(P, 0.0)]);
        assert!(!l.observe(&st, ms(0)));
        // The status is not republished: the silence is its age.
        assert!(!l.observe(&st, ms(290)));
        assert!(gone(&l).is_empty());
        assert!(l.observe(&st, ms(310)));
        assert_eq!(gone(&l), [P]);
        // It advertises again: back.
        assert!(l.observe(&status(State::Backup, Some(P), &[(P, 0.01)]), ms(0)));
        assert!(gone(&l).is_empty());
    }

    #[test]
    fn taking_over_from_a_silent_master_marks_it_and_a_yielding_master_is_not_gone() {
        let mut l = PeerLoss::default();
        l.observe(&status(State::Backup, Some(P), &[(P, 0.0)]), ms(0));
        // Our Master_Down_Timer fired: we are master, P silent for 339 ms.
        assert!(l.observe(&status(State::Master, Some(US), &[(P, 0.339)]), ms(0)));
        assert_eq!(gone(&l), [P]);

        // P was master; Q preempts it: P stops right after Q's first advert.
        let mut l = PeerLoss::default();
        l.observe(&status(State::Backup, Some(P), &[(P, 0.0)]), ms(0));
        assert!(!l.observe(
            &status(State::Backup, Some(Q), &[(P, 0.05), (Q, 0.0)]),
            ms(0)
        ));
        // P stays silent (a backup now) while Q advertises: not gone.
        for heard in [0.5, 1.0, 5.0] {
            assert!(!l.observe(
                &status(State::Backup, Some(Q), &[(P, heard), (Q, 0.0)]),
                ms(0)
            ));
        }
        assert!(gone(&l).is_empty());
    }

    #[test]
    fn a_master_leaving_with_priority_zero_is_not_gone() {
        let mut l = PeerLoss::default();
        l.observe(&status(State::Backup, Some(P), &[(P, 0.0)]), ms(0));
        // Its priority-0 advert clears the master; it was just heard.
        assert!(!l.observe(&status(State::Backup, None, &[(P, 0.0)]), ms(0)));
        assert!(!l.observe(&status(State::Master, Some(US), &[(P, 0.1)]), ms(0)));
        assert!(gone(&l).is_empty());
    }

    #[test]
    fn the_poll_fits_between_gone_and_takeover() {
        let st = |ms| {
            Arc::new(VrrpInstanceStatus {
                advert_interval_ms: ms,
                ..status(State::Backup, None, &[])
            })
        };
        assert_eq!(poll_period(&[st(100)]), ms(25));
        assert_eq!(poll_period(&[st(1000), st(20)]), ms(10));
        assert_eq!(poll_period(&[st(10_000)]), ms(250));
        assert_eq!(poll_period(&[]), ms(250));
    }
}
