//! Health-check metrics, registered once.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::state::ProbeOutcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub listener: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub listener: String,
    pub backend: String,
    pub reason: String,
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

    pub(crate) fn observe(&self, listener: &str, addr: SocketAddr, outcome: &ProbeOutcome) {
        let labels = Self::labels(listener, addr);
        match outcome {
            ProbeOutcome::Up { latency } => {
                self.latency
                    .get_or_create(&labels)
                    .observe(latency.as_secs_f64());
            }
            ProbeOutcome::Down {
                reason, latency, ..
            } => {
                self.latency
                    .get_or_create(&labels)
                    .observe(latency.as_secs_f64());
                self.failures
                    .get_or_create(&FailureLabels {
                        listener: listener.to_string(),
                        backend: addr.to_string(),
                        reason: reason.to_string(),
                    })
                    .inc();
            }
        }
    }

    pub(crate) fn set_up(&self, listener: &str, addr: SocketAddr, up: bool) {
        self.up
            .get_or_create(&Self::labels(listener, addr))
            .set(i64::from(up));
    }

    pub(crate) fn forget(&self, listener: &str, addr: SocketAddr) {
        self.up.remove(&Self::labels(listener, addr));
    }
}
