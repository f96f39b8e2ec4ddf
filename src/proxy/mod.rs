//! Service proxy: Kubernetes Services programmed into IPVS, as kube-proxy's
//! IPVS mode does.
//!
//! Laid out like `vrrp`: the pure parts know nothing of sockets, clocks or
//! the apiserver, the driver feeds them and performs what they return.
//! - `model`: Services and endpoints as lbd sees them, and the table they
//!   become; `endpoints`: which endpoints serve a port; `desired`: the whole
//!   table from the caches; `plan`: the diff against the kernel;
//!   `schedule`: when to sync and what kind; `engine`: one sync, sans-IO,
//!   as steps a data plane answers; `changes`: kube-proxy's change counters.
//! - `kernel`: the data planes and their narrow kernel traits, with fakes.
//! - `objects`: the EndpointSlice as the stores keep it.
//! - `kube`: the watchers; `driver`: the syncer and the async loop;
//!   `report`: the status; `server`: healthz and metrics; `health_check`:
//!   the healthCheckNodePort servers; `stale_flows`: which UDP/SCTP
//!   conntrack entries point at removed endpoints; `metrics`.
//! - `control`: [`Proxy`], the entry points `app` calls (start, reload,
//!   report).
//! - `cleanup`: `lbd proxy cleanup-kube-proxy`, what kube-proxy left that
//!   lbd does not use (pure core, `cleanup::edge` runs the tools).

use std::net::SocketAddr;

pub use control::{PlaneFactory, Proxy, ProxyReload};
pub use report::ProxyReporter;

pub mod changes;
pub mod cleanup;
pub mod control;
pub mod desired;
pub mod driver;
pub mod endpoints;
pub mod engine;
pub mod health_check;
pub mod kernel;
pub mod kube;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod server;
pub mod stale_flows;

/// Why the proxy cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("host setup: {0}")]
    Prepare(#[source] kernel::KernelError),
    #[error("ipvs: {0}")]
    Ipvs(#[from] kernel::ipvs::IpvsError),
    #[error("proxy task: {0}")]
    Task(String),
    /// Switching the data plane in place would leave two owners of the
    /// kernel's tables for a while, or flush them.
    #[error("proxy mode {from} -> {to}: takes a restart of lbd, not a reload")]
    ModeChange {
        from: &'static str,
        to: &'static str,
    },
}
