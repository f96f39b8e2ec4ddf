//! Admin server (unix socket + TCP), status client, and the report type.
mod report;
pub use report::*;
