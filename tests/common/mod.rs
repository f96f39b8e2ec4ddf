//! Helpers shared by integration tests.
#![allow(dead_code)]
pub mod keepalived;
pub mod netns;
pub mod vm;
pub mod vrrp;
