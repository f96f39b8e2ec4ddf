//! The TCP balancer (replaces haproxy in `mode tcp`).
mod metrics;
mod proxy;
pub mod select;

pub use metrics::TcplbCollector;
pub use proxy::{Backend, CopyMode, Listener};
