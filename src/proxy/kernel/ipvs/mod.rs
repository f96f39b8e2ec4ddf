//! IPVS: the narrow kernel interface of the service proxy ([`IpvsHandle`]),
//! its generic-netlink codec (`genl`) and client (`netlink`), and the
//! in-memory fake beside them (`fake`).
//!
//! Why synchronous: every call is one request and its ack (or one dump) on a
//! local netlink socket, so each takes microseconds and never waits on the
//! network. A blocking trait keeps the fake trivial, keeps the engine's plan
//! tests free of a runtime, and lets the sync runner apply a whole plan inside
//! one `tokio::task::spawn_blocking` without an await per change. Methods take
//! `&self` and implementations are `Send + Sync`, so one handle can be shared
//! as `Arc<dyn IpvsHandle>`; [`NetlinkIpvs`] serialises calls on its socket.

use std::net::IpAddr;

pub mod fake;
pub mod genl;
pub mod netlink;

pub use fake::{FakeIpvs, IpvsCall};
pub use netlink::NetlinkIpvs;

use super::KernelOp;
use crate::proxy::model::{DestKey, IpvsInfo, RealServer, ServiceKey, Timeouts, VirtualServer};

/// What can go wrong talking to IPVS. `Exists` and `NotFound` are the
/// kernel's EEXIST and ESRCH/ENOENT, so the engine can tell "already done"
/// from real failures.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("{op} {target}: already exists")]
    Exists { op: &'static str, target: String },
    #[error("{op} {target}: not found")]
    NotFound { op: &'static str, target: String },
    #[error("{op} {target}: invalid: {reason}")]
    Invalid {
        op: &'static str,
        target: String,
        reason: String,
    },
    #[error("{op} {target}: kernel error: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        op: &'static str,
        target: String,
        errno: i32,
    },
    #[error("generic netlink family \"IPVS\" not found (is the ip_vs module loaded?)")]
    FamilyNotFound,
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{op}: cannot decode kernel reply: {reason}")]
    Decode { op: &'static str, reason: String },
}

impl IpvsError {
    /// Map a kernel errno for `op` on `target` to a typed error.
    ///
    /// ESRCH is what ip_vs_ctl.c returns for a missing service, ENOENT for a
    /// missing destination; for NEW/SET_SERVICE ENOENT means the scheduler or
    /// persistence-engine module does not exist.
    pub fn from_errno(op: &'static str, target: String, errno: i32) -> Self {
        let service_write = op == "add_service" || op == "update_service";
        match errno {
            libc::EEXIST => IpvsError::Exists { op, target },
            libc::ENOENT if service_write => IpvsError::Invalid {
                op,
                target,
                reason: "unknown scheduler or persistence engine".into(),
            },
            libc::ESRCH | libc::ENOENT => IpvsError::NotFound { op, target },
            libc::EINVAL => IpvsError::Invalid {
                op,
                target,
                reason: "rejected by the kernel (EINVAL)".into(),
            },
            libc::ERANGE => IpvsError::Invalid {
                op,
                target,
                reason: "lower threshold above upper threshold (ERANGE)".into(),
            },
            errno => IpvsError::Kernel { op, target, errno },
        }
    }

    pub fn is_exists(&self) -> bool {
        matches!(self, IpvsError::Exists { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, IpvsError::NotFound { .. })
    }
}

/// One change of a batch ([`IpvsHandle::apply_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvsOp<'a> {
    AddService(&'a VirtualServer),
    UpdateService(&'a VirtualServer),
    DeleteService(&'a ServiceKey),
    AddDest(&'a ServiceKey, &'a RealServer),
    UpdateDest(&'a ServiceKey, &'a RealServer),
    DeleteDest(&'a ServiceKey, &'a DestKey),
}

impl IpvsOp<'_> {
    /// The kind of operation, as metrics count it.
    pub fn op(&self) -> KernelOp {
        match self {
            IpvsOp::AddService(_) => KernelOp::AddService,
            IpvsOp::UpdateService(_) => KernelOp::UpdateService,
            IpvsOp::DeleteService(_) => KernelOp::DeleteService,
            IpvsOp::AddDest(..) => KernelOp::AddDest,
            IpvsOp::UpdateDest(..) => KernelOp::UpdateDest,
            IpvsOp::DeleteDest(..) => KernelOp::DeleteDest,
        }
    }

    /// The name the single call has in errors and metrics.
    pub fn name(&self) -> &'static str {
        self.op().as_str()
    }

    /// What the op changes, as errors name it.
    pub fn target(&self) -> String {
        match self {
            IpvsOp::AddService(vs) | IpvsOp::UpdateService(vs) => vs.key().to_string(),
            IpvsOp::DeleteService(k) => k.to_string(),
            IpvsOp::AddDest(k, rs) | IpvsOp::UpdateDest(k, rs) => format!("{} -> {}", k, rs.key()),
            IpvsOp::DeleteDest(k, d) => format!("{k} -> {d}"),
        }
    }

    /// The checks the single call makes before sending.
    pub(crate) fn validate(&self) -> Result<(), IpvsError> {
        match self {
            IpvsOp::AddService(vs) | IpvsOp::UpdateService(vs) => validate_service(self.name(), vs),
            IpvsOp::AddDest(k, rs) | IpvsOp::UpdateDest(k, rs) => validate_dest(self.name(), k, rs),
            IpvsOp::DeleteService(_) | IpvsOp::DeleteDest(..) => Ok(()),
        }
    }

    /// The op as its single call.
    pub fn apply_one<H: IpvsHandle + ?Sized>(&self, h: &H) -> Result<(), IpvsError> {
        match *self {
            IpvsOp::AddService(vs) => h.add_service(vs),
            IpvsOp::UpdateService(vs) => h.update_service(vs),
            IpvsOp::DeleteService(k) => h.delete_service(k),
            IpvsOp::AddDest(k, rs) => h.add_dest(k, rs),
            IpvsOp::UpdateDest(k, rs) => h.update_dest(k, rs),
            IpvsOp::DeleteDest(k, d) => h.delete_dest(k, d),
        }
    }
}

/// The kernel's IPVS table, as much of it as lbd needs.
///
/// Semantics follow the kernel: adding what exists is `Exists`, changing or
/// deleting what is missing is `NotFound`; an update replaces the whole
/// configuration of the service or real server (counters are ignored).
/// Listing order is unspecified.
pub trait IpvsHandle: Send + Sync {
    /// Every TCP/UDP/SCTP virtual server with its real servers (one GET_SERVICE
    /// dump, then one GET_DEST dump per service). Firewall-mark services are
    /// not reported (lbd never creates them).
    fn list_services(&self) -> Result<Vec<(VirtualServer, Vec<RealServer>)>, IpvsError>;
    /// The real servers of one virtual server, with their connection counts.
    /// A missing service has none (the kernel's dump is empty, not an error).
    fn list_dests(&self, svc: &ServiceKey) -> Result<Vec<RealServer>, IpvsError>;
    fn add_service(&self, vs: &VirtualServer) -> Result<(), IpvsError>;
    fn update_service(&self, vs: &VirtualServer) -> Result<(), IpvsError>;
    fn delete_service(&self, svc: &ServiceKey) -> Result<(), IpvsError>;
    fn add_dest(&self, svc: &ServiceKey, rs: &RealServer) -> Result<(), IpvsError>;
    fn update_dest(&self, svc: &ServiceKey, rs: &RealServer) -> Result<(), IpvsError>;
    fn delete_dest(&self, svc: &ServiceKey, dest: &DestKey) -> Result<(), IpvsError>;
    /// Applies `ops` in order with one result per op, each as its single
    /// call would report it. The kernel sees them in this order, so a dest
    /// after its service finds it, and one after a failed service add fails
    /// on its own (NotFound). The default makes the single calls; the
    /// netlink implementation writes many requests per socket write.
    fn apply_batch(&self, ops: &[IpvsOp<'_>]) -> Vec<Result<(), IpvsError>> {
        ops.iter().map(|op| op.apply_one(self)).collect()
    }
    /// Zero fields are left unchanged (kernel semantics).
    fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError>;
    fn get_timeouts(&self) -> Result<Timeouts, IpvsError>;
    fn info(&self) -> Result<IpvsInfo, IpvsError>;
}

/// Checks the kernel also makes, done before sending so a bad request fails
/// with a clear reason (and so the fake rejects exactly what the kernel does).
pub(crate) fn validate_service(op: &'static str, vs: &VirtualServer) -> Result<(), IpvsError> {
    let max = crate::proxy::model::full_prefix(vs.addr);
    let invalid = |reason: String| IpvsError::Invalid {
        op,
        target: vs.key().to_string(),
        reason,
    };
    if vs.netmask > max || (matches!(vs.addr, IpAddr::V6(_)) && vs.netmask == 0) {
        return Err(invalid(format!("netmask /{} out of range", vs.netmask)));
    }
    if vs.scheduler.is_empty() || vs.scheduler.len() >= 16 {
        // IP_VS_SCHEDNAME_MAXLEN is 16 including the NUL.
        return Err(invalid(format!("scheduler name {:?}", vs.scheduler)));
    }
    Ok(())
}

pub(crate) fn validate_dest(
    op: &'static str,
    svc: &ServiceKey,
    rs: &RealServer,
) -> Result<(), IpvsError> {
    let invalid = |reason: &str| IpvsError::Invalid {
        op,
        target: format!("{} -> {}", svc, rs.key()),
        reason: reason.to_string(),
    };
    // ip_vs_ctl.c: a destination of another address family is only allowed
    // for tunnelling.
    if rs.addr.is_ipv4() != svc.addr.is_ipv4() && rs.fwd != crate::proxy::model::FwdMethod::Tunnel {
        return Err(invalid(
            "address family differs from the service (only tunnel mode allows it)",
        ));
    }
    if rs.weight > i32::MAX as u32 {
        return Err(invalid("weight above INT_MAX"));
    }
    // ip_vs_ctl.c compares them even when the upper one is 0 ("none").
    if rs.l_threshold > rs.u_threshold {
        return Err(invalid("lower threshold above upper threshold"));
    }
    Ok(())
}
