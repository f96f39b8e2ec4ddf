//! Kernel access shared by vrrp and ipvs: links, addresses, sysctls, splice.
//! The only module allowed `unsafe` (each block says why it is sound).
#![allow(unsafe_code)]
pub mod dummy;
