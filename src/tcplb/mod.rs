//! The TCP balancer (replaces haproxy in `mode tcp`).
//!
//! `balancer` is the lifecycle app.rs drives (start, prepare/commit reload,
//! report, drain) around the pure `plan`; `listener` one listener's accept
//! loop, sessions and drain; `forward` the duplex copy of one session;
//! `select` the pure backend choice; `metrics` read at scrape time.
mod balancer;
mod forward;
mod listener;
mod metrics;
pub mod select;

pub use balancer::{
    plan, Balancer, BalancerError, BalancerReporter, ListenerPlan, PreparedBalancer,
};
pub use forward::CopyMode;
pub use listener::{Backend, Listener};
pub use metrics::TcplbCollector;
