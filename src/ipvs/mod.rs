//! Service proxy: Kubernetes Services programmed into IPVS.
