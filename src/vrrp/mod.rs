//! VRRP speaker (RFC 5798 v3, RFC 3768 v2).
//!
//! `packet` (pure codec) and `fsm` (pure state machine) know nothing of
//! sockets or clocks; the driver feeds them bytes and `(now, input)` and
//! performs the actions they return.

pub mod fsm;
pub mod packet;

pub mod driver;
pub mod metrics;
pub mod net;
