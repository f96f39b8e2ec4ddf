//! VRRP speaker (RFC 5798 v3, RFC 3768 v2).
pub mod driver;
pub mod interim;
pub mod metrics;
pub mod net;
