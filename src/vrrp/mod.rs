//! VRRP speaker (RFC 5798 v3, RFC 3768 v2).
//!
//! `packet` (pure codec), `fsm` (pure state machine) and `track` (pure
//! tracking weights) know nothing of sockets or clocks. `driver` is one
//! instance's task: it feeds them bytes and `(now, input)` and performs the
//! actions they return, through `net` (raw VRRP sockets) and `vip` (the
//! addresses and their announcements), keeping `state` (the state file
//! under /run/lbd) and running `notify` scripts. `instances` is the
//! lifecycle app.rs drives: start, prepare/commit reload, report, stop;
//! `control` reaches a running instance (reload in place, `lbd vrrp
//! release|resume`); `handover` is what the supervisor does with the state
//! files when the worker dies.

pub mod fsm;
pub mod packet;
pub mod track;

pub mod control;
pub mod driver;
pub mod grace;
pub mod handover;
pub mod instances;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod peers;
pub mod state;
mod vip;

pub use control::{ControlReport, Outcome, Verb, VrrpControl};
pub use instances::{InstanceChange, PreparedVrrp, Vrrp, VrrpReporter};
