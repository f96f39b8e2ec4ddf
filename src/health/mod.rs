//! Backend health checks (HTTPS, HTTP, TCP) with rise/fall hysteresis.
//! The balancer only reads the snapshots published here.
mod check;
mod metrics;
mod runner;
mod state;

pub use check::{client_config, Probe, TlsSetupError};
pub use metrics::HealthMetrics;
pub use runner::{BackendDetail, HealthSnapshot, ListenerHealth};
pub use state::{HealthState, ProbeFailure, ProbeOutcome};

/// Listener name -> has at least one usable backend: what the balancer
/// publishes and VRRP's `track: - listener:` follows.
pub type ListenerHealthMap = std::collections::BTreeMap<String, bool>;
