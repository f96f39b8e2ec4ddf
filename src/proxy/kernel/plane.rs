//! kube-proxy's IPVS mode as a [`DataPlane`]: virtual servers in IPVS, the
//! service addresses on kube-ipvs0, the `inet lbd-proxy` nftables table
//! and the sysctls kube-proxy sets. [`FakeKernel`] is the same data plane
//! over the in-memory fakes.

use std::net::IpAddr;
use std::sync::Arc;

use super::addresses::{AddressError, DummyAddresses, FakeAddresses, ServiceAddresses};
use super::conntrack::{Conntrack, FakeConntrack, Flow, NetlinkConntrack};
use super::ipvs::{FakeIpvs, IpvsError, IpvsHandle, IpvsOp, NetlinkIpvs};
use super::nft::{FakeFirewall, Firewall, NftDocument, NftFirewall};
use super::sysctl::{proxy_sysctls, FakeSysctls, ProcSysctls, Sysctls};
use super::{DataPlane, HostSettings, KernelError, RealServerListing};
use crate::proxy::model::ServiceKey;
use crate::proxy::plan::{Change, KernelState};

/// The IPVS data plane: each kernel piece behind its narrow trait.
#[derive(Clone)]
pub struct IpvsDataPlane {
    pub ipvs: Arc<dyn IpvsHandle>,
    pub addresses: Arc<dyn ServiceAddresses>,
    /// None: no nftables table (masquerade left to someone else).
    pub firewall: Option<Arc<dyn Firewall>>,
    pub sysctls: Arc<dyn Sysctls>,
    /// None: no conntrack access (stale UDP/SCTP flows are left to expire).
    pub conntrack: Option<Arc<dyn Conntrack>>,
}

impl IpvsDataPlane {
    /// The real kernel: IPVS over generic netlink, kube-ipvs0 over
    /// rtnetlink, the nftables table through `nft`, /proc/sys. Call inside
    /// a multi-thread tokio runtime.
    pub fn kernel() -> Result<Self, IpvsError> {
        Ok(IpvsDataPlane {
            ipvs: Arc::new(NetlinkIpvs::new()?),
            addresses: Arc::new(DummyAddresses::new()),
            firewall: Some(Arc::new(NftFirewall::default())),
            sysctls: Arc::new(ProcSysctls),
            conntrack: match NetlinkConntrack::new() {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::warn!(error = %e, "no conntrack access: stale UDP/SCTP flows to removed endpoints are not deleted");
                    None
                }
            },
        })
    }
}

impl DataPlane for IpvsDataPlane {
    fn prepare(&self, host: &HostSettings) -> Result<(), KernelError> {
        self.addresses.prepare()?;
        let wanted = proxy_sysctls(&self.sysctls.kernel_release(), host.strict_arp);
        let changed = self.sysctls.ensure(&wanted)?;
        if !changed.is_empty() {
            tracing::info!(?changed, "proxy sysctls set");
        }
        if let Some(t) = &host.timeouts {
            self.ipvs.set_timeouts(t)?;
        }
        Ok(())
    }

    fn list(&self) -> Result<KernelState, KernelError> {
        let listing = self.ipvs.list_services()?;
        let bound = self.addresses.list()?;
        Ok(KernelState::from_listing(listing, bound))
    }

    fn host_addresses(&self) -> Result<Option<Vec<IpAddr>>, KernelError> {
        Ok(self.addresses.host_addresses()?)
    }

    fn list_real_servers(&self, keys: &[ServiceKey]) -> Result<RealServerListing, KernelError> {
        keys.iter()
            .map(|k| match self.ipvs.list_dests(k) {
                Ok(rs) => Ok((*k, Some(rs))),
                Err(e) if e.is_not_found() => Ok((*k, None)),
                Err(e) => Err(e.into()),
            })
            .collect()
    }

    /// Applies a plan in its order: each run of binds, of unbinds and of
    /// IPVS changes goes at once (one pipelined exchange, one batch), with
    /// one result per change either way.
    fn apply(&self, changes: &[Change]) -> Vec<Result<(), KernelError>> {
        let mut out = Vec::with_capacity(changes.len());
        let mut i = 0;
        while i < changes.len() {
            let rest = &changes[i..];
            let n = if let Some(binds) = address_run(rest, true) {
                push_results(
                    &mut out,
                    "bind_address",
                    &binds,
                    self.addresses.add_many(&binds),
                )
            } else if let Some(unbinds) = address_run(rest, false) {
                let rs = self.addresses.remove_many(&unbinds);
                push_results(&mut out, "unbind_address", &unbinds, rs)
            } else {
                self.apply_ipvs_run(rest, &mut out)
            };
            i += n.max(1);
        }
        out
    }

    fn has_firewall(&self) -> bool {
        self.firewall.is_some()
    }

    fn apply_firewall(&self, doc: &NftDocument) -> Result<(), KernelError> {
        match &self.firewall {
            Some(fw) => Ok(fw.replace(doc)?),
            None => Ok(()),
        }
    }

    fn list_flows(&self) -> Result<Option<Vec<Flow>>, KernelError> {
        match &self.conntrack {
            Some(ct) => Ok(Some(ct.list()?)),
            None => Ok(None),
        }
    }

    fn delete_flows(&self, flows: &[Flow]) -> Vec<Result<(), KernelError>> {
        match &self.conntrack {
            Some(ct) => ct
                .delete(flows)
                .into_iter()
                .map(|r| r.map_err(KernelError::from))
                .collect(),
            None => flows.iter().map(|_| Ok(())).collect(),
        }
    }
}

impl IpvsDataPlane {
    /// The run of IPVS changes `changes` starts with, as one batch; returns
    /// how many changes it took.
    fn apply_ipvs_run(&self, changes: &[Change], out: &mut Vec<Result<(), KernelError>>) -> usize {
        let run: Vec<IpvsOp<'_>> = changes.iter().map_while(ipvs_op).collect();
        let mut results = self.ipvs.apply_batch(&run).into_iter();
        for op in &run {
            let r = results.next().unwrap_or_else(|| {
                Err(IpvsError::Decode {
                    op: op.name(),
                    reason: "batch returned no result".into(),
                })
            });
            out.push(self.settle(op, r).map_err(KernelError::from));
        }
        run.len()
    }

    /// The data plane's reading of one op's result: adding what exists
    /// makes it ours (someone added it between our listing and the add),
    /// deleting what is gone is done.
    fn settle(&self, op: &IpvsOp<'_>, r: Result<(), IpvsError>) -> Result<(), IpvsError> {
        match (op, r) {
            (IpvsOp::AddService(vs), Err(e)) if e.is_exists() => self.ipvs.update_service(vs),
            (IpvsOp::AddDest(k, rs), Err(e)) if e.is_exists() => self.ipvs.update_dest(k, rs),
            (IpvsOp::DeleteService(_) | IpvsOp::DeleteDest(..), Err(e)) if e.is_not_found() => {
                Ok(())
            }
            (_, r) => r,
        }
    }
}

/// The addresses of the binds (or unbinds) `changes` starts with; None if
/// it starts with something else.
fn address_run(changes: &[Change], bind: bool) -> Option<Vec<IpAddr>> {
    let run: Vec<IpAddr> = changes
        .iter()
        .map_while(|c| match (c, bind) {
            (Change::BindAddress(a), true) | (Change::UnbindAddress(a), false) => Some(*a),
            _ => None,
        })
        .collect();
    (!run.is_empty()).then_some(run)
}

/// One result per address of a run, even from a short batch answer;
/// returns the run's length.
fn push_results(
    out: &mut Vec<Result<(), KernelError>>,
    op: &'static str,
    addrs: &[IpAddr],
    results: Vec<Result<(), AddressError>>,
) -> usize {
    let mut rs = results.into_iter();
    for _ in addrs {
        let r = rs.next().unwrap_or(Err(AddressError::NoResult { op }));
        out.push(r.map_err(KernelError::from));
    }
    addrs.len()
}

fn ipvs_op(c: &Change) -> Option<IpvsOp<'_>> {
    Some(match c {
        Change::AddVirtual(vs) => IpvsOp::AddService(vs),
        Change::UpdateVirtual(vs) => IpvsOp::UpdateService(vs),
        Change::DeleteVirtual(k) => IpvsOp::DeleteService(k),
        Change::AddReal(k, rs) => IpvsOp::AddDest(k, rs),
        Change::UpdateReal(k, rs) => IpvsOp::UpdateDest(k, rs),
        Change::DeleteReal(k, d) => IpvsOp::DeleteDest(k, d),
        Change::BindAddress(_) | Change::UnbindAddress(_) => return None,
    })
}

/// The in-memory kernel: the IPVS data plane over the fakes, each kept
/// here to play the kernel (inspect it, inject failures, add others'
/// objects).
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    pub ipvs: FakeIpvs,
    pub addresses: FakeAddresses,
    pub firewall: FakeFirewall,
    pub sysctls: FakeSysctls,
    pub conntrack: FakeConntrack,
}

impl FakeKernel {
    /// A data plane programming this kernel.
    pub fn plane(&self) -> IpvsDataPlane {
        IpvsDataPlane {
            ipvs: Arc::new(self.ipvs.clone()),
            addresses: Arc::new(self.addresses.clone()),
            firewall: Some(Arc::new(self.firewall.clone())),
            sysctls: Arc::new(self.sysctls.clone()),
            conntrack: Some(Arc::new(self.conntrack.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::kernel::ipvs::IpvsCall;
    use crate::proxy::model::{Protocol, RealServer, VirtualServer};

    fn vs(a: &str) -> VirtualServer {
        VirtualServer::new(a.parse().unwrap(), 80, Protocol::Tcp, "rr")
    }

    #[test]
    fn one_result_per_change_in_order_across_runs() {
        let k = FakeKernel::default();
        let p = k.plane();
        let a: IpAddr = "10.96.0.1".parse().unwrap();
        let rs = RealServer::new("10.244.0.1".parse().unwrap(), 8080, 1);
        let changes = vec![
            Change::BindAddress(a),
            Change::AddVirtual(vs("10.96.0.1")),
            Change::AddReal(vs("10.96.0.1").key(), rs.clone()),
            // A real server of a virtual server that does not exist fails
            // on its own; the unbind after it still runs.
            Change::AddReal(vs("10.96.0.2").key(), rs),
            Change::UnbindAddress(a),
        ];
        let r = p.apply(&changes);
        assert_eq!(r.len(), 5);
        assert!(r[0].is_ok() && r[1].is_ok() && r[2].is_ok() && r[4].is_ok());
        assert!(
            matches!(&r[3], Err(KernelError::Ipvs(e)) if e.is_not_found()),
            "{r:?}"
        );
        assert_eq!(k.ipvs.snapshot().len(), 1);
        assert!(k.addresses.snapshot().is_empty());
    }

    #[test]
    fn an_add_that_finds_it_there_updates_and_a_gone_delete_is_done() {
        let k = FakeKernel::default();
        let mut theirs = vs("10.96.0.1");
        theirs.scheduler = "wlc".into();
        k.ipvs.insert_foreign(theirs, vec![]);
        let ours = vs("10.96.0.1");
        let r = k.plane().apply(&[
            Change::AddVirtual(ours.clone()),
            Change::DeleteVirtual(vs("10.96.0.9").key()),
        ]);
        assert!(r.iter().all(Result::is_ok), "{r:?}");
        assert_eq!(k.ipvs.snapshot()[0].0.scheduler, "rr");
        assert!(k
            .ipvs
            .take_mutations()
            .contains(&IpvsCall::UpdateService(ours)));
    }

    #[test]
    fn prepare_sets_sysctls_and_timeouts() {
        let k = FakeKernel::default();
        let t = crate::proxy::model::Timeouts {
            tcp: 900,
            tcp_fin: 0,
            udp: 0,
        };
        k.plane()
            .prepare(&HostSettings {
                strict_arp: true,
                timeouts: Some(t),
            })
            .unwrap();
        assert_eq!(k.sysctls.values()["net.ipv4.conf.all.arp_ignore"], "1");
        assert!(k.ipvs.take_mutations().contains(&IpvsCall::SetTimeouts(t)));
    }
}
