//! Service proxy: Kubernetes Services programmed into IPVS.
pub mod desired;
pub mod plan;
pub mod kube;
pub mod metrics;
