//! VRRP metrics, labelled by instance; registered once.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::fsm::{Fault, State};
use super::packet::DropReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub instance: String,
    pub reason: Fault,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub instance: String,
    pub reason: DropReason,
}

/// The value of `lbd_vrrp_state` for a state (its help text lists them).
pub fn state_value(state: State) -> i64 {
    match state {
        State::Initialize => 0,
        State::Backup => 1,
        State::Master => 2,
        State::Fault => 3,
    }
}

#[derive(Clone)]
pub struct VrrpMetrics {
    state: Family<InstanceLabels, Gauge>,
    transitions: Family<InstanceLabels, Counter>,
    sent: Family<InstanceLabels, Counter>,
    received: Family<InstanceLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    garps: Family<InstanceLabels, Counter>,
    effective_priority: Family<InstanceLabels, Gauge>,
    faults: Family<FaultLabels, Counter>,
}

impl VrrpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = VrrpMetrics {
            state: Family::default(),
            transitions: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            dropped: Family::default(),
            garps: Family::default(),
            effective_priority: Family::default(),
            faults: Family::default(),
        };
        registry.register(
            "lbd_vrrp_state",
            "VRRP state: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT",
            m.state.clone(),
        );
        registry.register(
            "lbd_vrrp_transitions",
            "VRRP state changes",
            m.transitions.clone(),
        );
        registry.register(
            "lbd_vrrp_adverts_sent",
            "VRRP advertisements sent (one per destination)",
            m.sent.clone(),
        );
        registry.register(
            "lbd_vrrp_adverts_received",
            "Valid VRRP advertisements received for this instance",
            m.received.clone(),
        );
        registry.register(
            "lbd_vrrp_adverts_dropped",
            "VRRP packets dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "lbd_vrrp_gratuitous_arps_sent",
            "Gratuitous ARPs and unsolicited neighbour advertisements sent",
            m.garps.clone(),
        );
        registry.register(
            "lbd_vrrp_effective_priority",
            "Priority advertised after tracking weights",
            m.effective_priority.clone(),
        );
        registry.register(
            "lbd_vrrp_faults",
            "Faults that began (the instance went to FAULT or stayed there), by reason",
            m.faults.clone(),
        );
        m
    }

    /// Metrics that go nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// The handle for one instance. Every drop reason is registered at 0
    /// from the start, so a dashboard sees the full list before any drop.
    pub fn instance(&self, name: &str) -> InstanceMetrics {
        let l = InstanceLabels {
            instance: name.to_string(),
        };
        let dropped = DropReason::ALL
            .iter()
            .map(|&reason| {
                let labels = DropLabels {
                    instance: name.to_string(),
                    reason,
                };
                (reason, self.dropped.get_or_create(&labels).clone())
            })
            .collect();
        let faults = Fault::ALL
            .iter()
            .map(|&reason| {
                let labels = FaultLabels {
                    instance: name.to_string(),
                    reason,
                };
                (reason, self.faults.get_or_create(&labels).clone())
            })
            .collect();
        InstanceMetrics {
            faults,
            state: self.state.get_or_create(&l).clone(),
            transitions: self.transitions.get_or_create(&l).clone(),
            sent: self.sent.get_or_create(&l).clone(),
            received: self.received.get_or_create(&l).clone(),
            garps: self.garps.get_or_create(&l).clone(),
            effective_priority: self.effective_priority.get_or_create(&l).clone(),
            dropped,
        }
    }
}

/// One instance's metrics, resolved once so the hot path does no lookups.
#[derive(Clone)]
pub struct InstanceMetrics {
    pub state: Gauge,
    pub transitions: Counter,
    pub sent: Counter,
    pub received: Counter,
    pub garps: Counter,
    pub effective_priority: Gauge,
    /// One counter per [`DropReason::ALL`] entry.
    dropped: Vec<(DropReason, Counter)>,
    /// One counter per [`Fault::ALL`] entry.
    faults: Vec<(Fault, Counter)>,
}

impl InstanceMetrics {
    pub fn dropped(&self, reason: DropReason) {
        if let Some((_, c)) = self.dropped.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    pub fn fault(&self, reason: Fault) {
        if let Some((_, c)) = self.faults.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    pub fn set_state(&self, state: State) {
        self.state.set(state_value(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_documented_names() {
        let mut reg = Registry::default();
        let m = VrrpMetrics::register(&mut reg);
        let i = m.instance("api");
        i.set_state(State::Master);
        i.transitions.inc();
        i.sent.inc();
        i.received.inc();
        i.garps.inc();
        i.effective_priority.set(100);
        i.dropped(DropReason::Ttl);
        i.fault(Fault::VipForeign);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for line in [
            "lbd_vrrp_state{instance=\"api\"} 2",
            "lbd_vrrp_transitions_total{instance=\"api\"} 1",
            "lbd_vrrp_adverts_sent_total{instance=\"api\"} 1",
            "lbd_vrrp_adverts_received_total{instance=\"api\"} 1",
            "lbd_vrrp_adverts_dropped_total{instance=\"api\",reason=\"ttl\"} 1",
            "lbd_vrrp_adverts_dropped_total{instance=\"api\",reason=\"not_a_peer\"} 0",
            "lbd_vrrp_gratuitous_arps_sent_total{instance=\"api\"} 1",
            "lbd_vrrp_effective_priority{instance=\"api\"} 100",
            "lbd_vrrp_faults_total{instance=\"api\",reason=\"vip_foreign\"} 1",
            "lbd_vrrp_faults_total{instance=\"api\",reason=\"link_gone\"} 0",
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
        // Every reason is there before any packet was dropped for it.
        for r in DropReason::ALL {
            let line = format!("lbd_vrrp_adverts_dropped_total{{instance=\"api\",reason=\"{r}\"}}");
            assert!(out.contains(&line), "missing {line} in\n{out}");
        }
    }

    /// Every VRRP metric lbd exports is documented, in vrrp.md's list and
    /// operations.md's table, and so is every fault reason it carries.
    #[test]
    fn every_metric_and_fault_reason_is_documented() {
        let mut reg = Registry::default();
        let m = VrrpMetrics::register(&mut reg);
        m.instance("api");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let vrrp = std::fs::read_to_string(root.join("docs/vrrp.md")).unwrap();
        let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
        let names: std::collections::BTreeSet<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.contains("lbd_vrrp_faults"), "{names:?}");
        for name in names {
            // Counters are documented by their exported `_total` name.
            let shown = if out.contains(&format!("# TYPE {name} counter")) {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            assert!(vrrp.contains(&shown), "docs/vrrp.md lacks {shown}");
            assert!(ops.contains(&shown), "docs/operations.md lacks {shown}");
        }
        for f in Fault::ALL {
            let name = format!("`{f}`");
            assert!(vrrp.contains(&name), "docs/vrrp.md lacks the fault {name}");
            assert!(
                ops.contains(&name),
                "docs/operations.md lacks the fault {name}"
            );
        }
    }
}
