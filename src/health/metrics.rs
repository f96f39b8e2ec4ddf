//! Health-check metrics, registered once.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::state::{ProbeFailure, ProbeOutcome};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub listener: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub listener: String,
    pub backend: String,
    pub reason: ProbeFailure,
}

#[derive(Clone)]
pub struct HealthMetrics {
    up: Family<BackendLabels, Gauge>,
    latency: Family<BackendLabels, Histogram>,
    failures: Family<FailureLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl HealthMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = HealthMetrics {
            up: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            failures: Family::default(),
        };
        registry.register(
            "lbd_backend_up",
            "1 while the backend passes its health checks",
            m.up.clone(),
        );
        registry.register(
            "lbd_health_check_duration_seconds",
            "Time one health check took",
            m.latency.clone(),
        );
        registry.register(
            "lbd_health_check_failures",
            "Failed health checks by reason (connect, timeout, tls, http, status)",
            m.failures.clone(),
        );
        m
    }

    /// Metrics that go nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    fn labels(listener: &str, addr: SocketAddr) -> BackendLabels {
        BackendLabels {
            listener: listener.to_string(),
            backend: addr.to_string(),
        }
    }

    fn failure_labels(listener: &str, addr: SocketAddr, reason: ProbeFailure) -> FailureLabels {
        FailureLabels {
            listener: listener.to_string(),
            backend: addr.to_string(),
            reason,
        }
    }

    /// A backend starts being checked: its failure counters exist at 0 for
    /// every reason from the start.
    pub(crate) fn track(&self, listener: &str, addr: SocketAddr) {
        for &reason in ProbeFailure::ALL {
            let _ = self
                .failures
                .get_or_create(&Self::failure_labels(listener, addr, reason));
        }
    }

    pub(crate) fn observe(&self, listener: &str, addr: SocketAddr, outcome: &ProbeOutcome) {
        let labels = Self::labels(listener, addr);
        let latency = match outcome {
            ProbeOutcome::Up { latency } => latency,
            ProbeOutcome::Down {
                reason, latency, ..
            } => {
                self.failures
                    .get_or_create(&Self::failure_labels(listener, addr, *reason))
                    .inc();
                latency
            }
        };
        self.latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn set_up(&self, listener: &str, addr: SocketAddr, up: bool) {
        self.up
            .get_or_create(&Self::labels(listener, addr))
            .set(i64::from(up));
    }

    /// A backend is no longer checked (removed by a reload): its series go.
    pub(crate) fn forget(&self, listener: &str, addr: SocketAddr) {
        let labels = Self::labels(listener, addr);
        self.up.remove(&labels);
        self.latency.remove(&labels);
        for &reason in ProbeFailure::ALL {
            self.failures
                .remove(&Self::failure_labels(listener, addr, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scrape(reg: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
        out
    }

    #[test]
    fn every_failure_reason_is_registered_and_forgotten_with_the_backend() {
        let mut reg = Registry::default();
        let m = HealthMetrics::register(&mut reg);
        let addr: SocketAddr = "10.0.0.1:6443".parse().unwrap();
        m.track("api", addr);
        m.observe(
            "api",
            addr,
            &ProbeOutcome::Down {
                reason: ProbeFailure::Tls,
                message: "TLS: bad certificate".into(),
                latency: Duration::from_millis(3),
            },
        );
        m.set_up("api", addr, false);
        let out = scrape(&reg);
        for r in ProbeFailure::ALL {
            let n = if *r == ProbeFailure::Tls { 1 } else { 0 };
            let line = format!(
                "lbd_health_check_failures_total{{listener=\"api\",backend=\"10.0.0.1:6443\",reason=\"{r}\"}} {n}"
            );
            assert!(out.contains(&line), "missing {line} in\n{out}");
        }
        assert!(out.contains("lbd_backend_up{listener=\"api\",backend=\"10.0.0.1:6443\"} 0"));
        m.forget("api", addr);
        let out = scrape(&reg);
        assert!(!out.contains("10.0.0.1:6443"), "{out}");
    }
}
