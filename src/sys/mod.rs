//! Kernel access shared by vrrp, ipvs and tcplb: links, addresses, sysctls,
//! splice. The only module allowed `unsafe` (each block says why it is sound).
#![allow(unsafe_code)]

pub mod addr;
pub mod arp;
pub mod fd;
pub mod link;
pub mod memory;
pub mod netns;
pub mod packet;
pub mod process;
pub mod rlimit;
pub mod rtnl;
pub mod splice;
pub mod sysctl;
