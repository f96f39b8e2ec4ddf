//! The TCP balancer (replaces haproxy in `mode tcp`).
//!
//! `balancer` is the lifecycle app.rs drives (start, prepare/commit reload,
//! report, drain) around the pure `plan`; `listener` one listener's accept
//! loop and drain, run on the `data_threads`; `session` one client connection: `connect` (retries,
//! hedging, passive health; `hedge` the pure delay), then `forward` (the
//! duplex copy, each direction a `pump`); `select` the pure backend choice;
//! `metrics` read at scrape time.
mod balancer;
mod connect;
pub mod data_threads;
mod forward;
pub mod hedge;
mod listener;
mod metrics;
mod pump;
pub mod select;
mod session;

pub use balancer::{
    plan, Balancer, BalancerError, BalancerReporter, ListenerPlan, PreparedBalancer,
};
pub use forward::{CopyMode, Termination};
pub use listener::{Backend, DrainError, Listener};
pub use metrics::TcplbCollector;
pub use session::SESSION_LOG_TARGET;
