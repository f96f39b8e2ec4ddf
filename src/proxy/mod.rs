//! Service proxy: Kubernetes Services programmed into IPVS.

pub mod desired;
pub mod endpoints;
pub mod engine;
pub mod kernel;
pub mod kube;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod schedule;
pub mod server;
