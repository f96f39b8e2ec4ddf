//! Admin server (unix socket + TCP), status client, and the report type.
pub mod backend_control;
pub mod client;
mod report;
pub mod server;
pub mod vrrp_control;

pub use report::*;
