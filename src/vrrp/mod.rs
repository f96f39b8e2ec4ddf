//! VRRP speaker (RFC 5798 v3, RFC 3768 v2).
//!
//! `packet` (pure codec), `fsm` (pure state machine) and `track` (pure
//! tracking weights) know nothing of sockets or clocks. `driver` is one
//! instance's task: it feeds them bytes and `(now, input)` and performs the
//! actions they return, through `net` (raw VRRP sockets) and `vip` (the
//! addresses and their announcements). `instances` is the lifecycle app.rs
//! drives: start, prepare/commit reload, report, stop.

pub mod fsm;
pub mod packet;
pub mod track;

pub mod driver;
pub mod instances;
pub mod metrics;
pub mod net;
mod vip;

pub use instances::{InstanceChange, PreparedVrrp, Vrrp, VrrpReporter};
