//! The proxy's kernel side, each piece behind a narrow trait with a typed
//! error and an in-memory fake beside it: IPVS over generic netlink
//! (`ipvs`), the kube-ipvs0 addresses over rtnetlink (`addresses`, through
//! `dummy`), the nftables table (`nft`) and the sysctls (`sysctl`).
//!
//! The engine programs the kernel through one [`DataPlane`]: it lists what
//! the data plane holds as a [`KernelState`] (virtual servers with their
//! real servers, and bound service addresses) and hands it [`Change`]s,
//! service ports and endpoints in the engine's terms, plus the nftables
//! document of the masquerade and filter rules. [`plane::IpvsDataPlane`] is
//! kube-proxy's IPVS mode; another data plane (nftables-only) implements the
//! same trait and the engine does not change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::model::{RealServer, ServiceKey, Timeouts};
use super::plan::{Change, KernelState};

pub mod addresses;
pub mod conntrack;
pub mod dummy;
pub mod ipvs;
pub mod nft;
pub mod plane;
pub mod sysctl;

pub use addresses::{AddressError, DummyAddresses, FakeAddresses, ServiceAddresses};
pub use conntrack::{Conntrack, ConntrackError, FakeConntrack, Flow, NetlinkConntrack};
pub use nft::{FakeFirewall, Firewall, NftDocument, NftError, NftFirewall};
pub use plane::{FakeKernel, IpvsDataPlane};
pub use sysctl::{FakeSysctls, ProcSysctls, SysctlError, Sysctls};

/// A blocking netlink socket of `protocol`, connected to the kernel, with
/// a receive timeout (a wedged socket must not hang the sync thread) and a
/// larger receive buffer where allowed; and a first sequence number
/// derived from the clock, so a restarted lbd's requests are not taken
/// for stale replies of its previous life.
pub(crate) fn blocking_netlink_socket(
    protocol: isize,
    timeout: std::time::Duration,
    rcvbuf: usize,
) -> std::io::Result<(netlink_sys::Socket, u32)> {
    let mut sock = netlink_sys::Socket::new(protocol)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(timeout.as_secs() as _, 0),
    )
    .map_err(std::io::Error::from)?;
    // Best effort: a smaller buffer still works, with fewer replies queued.
    let _ = sock.set_rx_buf_sz(rcvbuf);
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    Ok((sock, seq))
}

/// One request, framed for the socket: NLM_F_ACK so even a plain request
/// is answered, NLM_F_DUMP for a listing.
pub(crate) fn frame_request<T>(msg: T, seq: u32, dump: bool) -> Vec<u8>
where
    T: netlink_packet_core::NetlinkSerializable + Into<netlink_packet_core::NetlinkPayload<T>>,
{
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    };
    let mut nl = NetlinkMessage::from(msg);
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
    hdr.sequence_number = seq;
    nl.header = hdr;
    nl.finalize();
    let mut out = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut out);
    out
}

/// What can go wrong programming a data plane. Small (the large errors
/// are boxed): a full sync at 10k Services holds one result per change.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Ipvs(Box<ipvs::IpvsError>),
    #[error("kube-ipvs0: {0}")]
    Addresses(#[from] AddressError),
    #[error(transparent)]
    Nft(Box<NftError>),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Conntrack(Box<conntrack::ConntrackError>),
    #[error("{op}: the data plane returned no result")]
    NoResult { op: KernelOp },
    #[error("the data plane answered another step: {0}")]
    Unexpected(String),
}

impl From<ipvs::IpvsError> for KernelError {
    fn from(e: ipvs::IpvsError) -> Self {
        KernelError::Ipvs(Box::new(e))
    }
}

impl From<conntrack::ConntrackError> for KernelError {
    fn from(e: conntrack::ConntrackError) -> Self {
        KernelError::Conntrack(Box::new(e))
    }
}

impl From<NftError> for KernelError {
    fn from(e: NftError) -> Self {
        KernelError::Nft(Box::new(e))
    }
}

/// Per virtual server asked for, its real servers with their counters
/// (None: the virtual server is gone).
pub type RealServerListing = Vec<(ServiceKey, Option<Vec<RealServer>>)>;

/// Host settings a data plane applies before it is programmed (and again
/// when a reload changes them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostSettings {
    /// arp_ignore=1 / arp_announce=2 (kube-proxy's ipvs.strictARP).
    pub strict_arp: bool,
    /// IPVS connection timeouts; None leaves the kernel's.
    pub timeouts: Option<Timeouts>,
}

/// The kernel as one data plane sees it, programmed by the engine.
///
/// Semantics follow the kernel's: changes are applied in order, each with
/// its own result (a real server after a failed add of its virtual server
/// fails on its own); adding what exists makes it ours, deleting what is
/// gone is done. Calls block: the driver makes them on a blocking thread.
pub trait DataPlane: Send + Sync {
    /// Host setup before the first sync: links, sysctls, timeouts.
    fn prepare(&self, host: &HostSettings) -> Result<(), KernelError>;
    /// Everything the data plane holds: virtual servers with their real
    /// servers (and connection counters), and the bound service addresses.
    fn list(&self) -> Result<KernelState, KernelError>;
    /// The real servers of these virtual servers; None for one that is gone.
    fn list_real_servers(&self, keys: &[ServiceKey]) -> Result<RealServerListing, KernelError>;
    /// Applies `changes` in order, one result per change.
    fn apply(&self, changes: &[Change]) -> Vec<Result<(), KernelError>>;
    /// The addresses on the host's links but the data plane's own
    /// (kube-ipvs0): the node addresses for NodePorts, as kube-proxy's ipvs
    /// mode finds them. None: not known (the Node object's are used).
    fn host_addresses(&self) -> Result<Option<Vec<IpAddr>>, KernelError> {
        Ok(None)
    }
    /// Whether this data plane keeps the nftables table (`inet lbd-proxy`:
    /// masquerade, source ranges, the service-address filter).
    fn has_firewall(&self) -> bool;
    /// Applies one nftables document in one transaction.
    fn apply_firewall(&self, doc: &NftDocument) -> Result<(), KernelError>;
    /// The UDP and SCTP flows the kernel tracks (None: this data plane
    /// has no conntrack access, so no cleanup).
    fn list_flows(&self) -> Result<Option<Vec<Flow>>, KernelError> {
        Ok(None)
    }
    /// Deletes these flows, one result each.
    fn delete_flows(&self, flows: &[Flow]) -> Vec<Result<(), KernelError>> {
        flows.iter().map(|_| Ok(())).collect()
    }
}

impl<T: DataPlane + ?Sized> DataPlane for Box<T> {
    fn prepare(&self, host: &HostSettings) -> Result<(), KernelError> {
        (**self).prepare(host)
    }
    fn list(&self) -> Result<KernelState, KernelError> {
        (**self).list()
    }
    fn list_real_servers(&self, keys: &[ServiceKey]) -> Result<RealServerListing, KernelError> {
        (**self).list_real_servers(keys)
    }
    fn apply(&self, changes: &[Change]) -> Vec<Result<(), KernelError>> {
        (**self).apply(changes)
    }
    fn host_addresses(&self) -> Result<Option<Vec<IpAddr>>, KernelError> {
        (**self).host_addresses()
    }
    fn has_firewall(&self) -> bool {
        (**self).has_firewall()
    }
    fn apply_firewall(&self, doc: &NftDocument) -> Result<(), KernelError> {
        (**self).apply_firewall(doc)
    }
    fn list_flows(&self) -> Result<Option<Vec<Flow>>, KernelError> {
        (**self).list_flows()
    }
    fn delete_flows(&self, flows: &[Flow]) -> Vec<Result<(), KernelError>> {
        (**self).delete_flows(flows)
    }
}

/// A kind of kernel operation: the `op` label of lbd's kernel metrics and
/// logs. [`KernelOp::ALL`] is what the metrics pre-register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelOp {
    AddService,
    UpdateService,
    DeleteService,
    AddDest,
    UpdateDest,
    DeleteDest,
    BindAddress,
    UnbindAddress,
    ListServices,
    ListAddresses,
    ListDests,
    NftElements,
    NftReplace,
    /// Host setup again after a reload (sysctls, timeouts).
    Prepare,
    /// A step the data plane did not answer as asked.
    Apply,
    /// The conntrack table listed for the stale-flow cleanup.
    ListFlows,
    /// One stale UDP/SCTP flow deleted.
    DeleteFlow,
}

impl KernelOp {
    pub const ALL: [KernelOp; 17] = [
        KernelOp::AddService,
        KernelOp::UpdateService,
        KernelOp::DeleteService,
        KernelOp::AddDest,
        KernelOp::UpdateDest,
        KernelOp::DeleteDest,
        KernelOp::BindAddress,
        KernelOp::UnbindAddress,
        KernelOp::ListServices,
        KernelOp::ListAddresses,
        KernelOp::ListDests,
        KernelOp::NftElements,
        KernelOp::NftReplace,
        KernelOp::Prepare,
        KernelOp::Apply,
        KernelOp::ListFlows,
        KernelOp::DeleteFlow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KernelOp::AddService => "add_service",
            KernelOp::UpdateService => "update_service",
            KernelOp::DeleteService => "delete_service",
            KernelOp::AddDest => "add_dest",
            KernelOp::UpdateDest => "update_dest",
            KernelOp::DeleteDest => "delete_dest",
            KernelOp::BindAddress => "bind_address",
            KernelOp::UnbindAddress => "unbind_address",
            KernelOp::ListServices => "list_services",
            KernelOp::ListAddresses => "list_addresses",
            KernelOp::ListDests => "list_dests",
            KernelOp::NftElements => "nft_elements",
            KernelOp::NftReplace => "nft_replace",
            KernelOp::Prepare => "prepare",
            KernelOp::Apply => "apply",
            KernelOp::ListFlows => "list_flows",
            KernelOp::DeleteFlow => "delete_flow",
        }
    }

    /// A change to the IPVS table or kube-ipvs0 (what `kernel_changes`
    /// counts).
    pub fn is_change(self) -> bool {
        matches!(
            self,
            KernelOp::AddService
                | KernelOp::UpdateService
                | KernelOp::DeleteService
                | KernelOp::AddDest
                | KernelOp::UpdateDest
                | KernelOp::DeleteDest
                | KernelOp::BindAddress
                | KernelOp::UnbindAddress
        )
    }

    /// An nftables document (counted as nft applies, not kernel changes).
    pub fn is_nft(self) -> bool {
        matches!(self, KernelOp::NftElements | KernelOp::NftReplace)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for KernelOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Change {
    /// The operation this change is.
    pub fn op(&self) -> KernelOp {
        match self {
            Change::BindAddress(_) => KernelOp::BindAddress,
            Change::AddVirtual(_) => KernelOp::AddService,
            Change::UpdateVirtual(_) => KernelOp::UpdateService,
            Change::AddReal(..) => KernelOp::AddDest,
            Change::UpdateReal(..) => KernelOp::UpdateDest,
            Change::DeleteReal(..) => KernelOp::DeleteDest,
            Change::DeleteVirtual(_) => KernelOp::DeleteService,
            Change::UnbindAddress(_) => KernelOp::UnbindAddress,
        }
    }
}

/// Operations that succeeded and failed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    ok: [u64; KernelOp::ALL.len()],
    failed: [u64; KernelOp::ALL.len()],
}

impl OpCounts {
    pub fn ok(&mut self, op: KernelOp) {
        self.ok[op.index()] += 1;
    }
    pub fn failed(&mut self, op: KernelOp) {
        self.failed[op.index()] += 1;
    }
    /// (succeeded, failed) of `op`.
    pub fn get(&self, op: KernelOp) -> (u64, u64) {
        (self.ok[op.index()], self.failed[op.index()])
    }
    /// The kinds with at least one operation.
    pub fn kinds(&self) -> BTreeSet<KernelOp> {
        KernelOp::ALL
            .into_iter()
            .filter(|op| self.get(*op) != (0, 0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_per_change_stays_small() {
        assert!(std::mem::size_of::<Result<(), KernelError>>() <= 32);
    }

    #[test]
    fn every_op_is_listed_once_in_its_place() {
        for (i, op) in KernelOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op}");
        }
        let names: BTreeSet<&str> = KernelOp::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), KernelOp::ALL.len());
    }
}
