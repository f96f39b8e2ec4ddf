//! Service proxy: Kubernetes Services programmed into IPVS.

// Kernel side (ipvs-kernel): model, codec, handle.
pub mod fake;
pub mod genl;
pub mod handle;
pub mod model;
pub mod netlink;

pub use fake::{FakeIpvs, IpvsCall};
pub use handle::{IpvsError, IpvsHandle, IpvsOp};
pub use model::{
    DestKey, FwdMethod, IpvsInfo, Protocol, RealServer, ServiceFlags, ServiceKey, Timeouts,
    VirtualServer,
};
pub use netlink::NetlinkIpvs;

// Engine side (ipvs-engine): desired state, plan, watches, sync.
pub mod desired;
pub mod kube;
pub mod metrics;
pub mod nft;
pub mod plan;
pub mod server;
pub mod sync;
