//! In-memory [`IpvsHandle`] with the kernel's semantics, for the engine's
//! tests: duplicates are `Exists`, missing things `NotFound`, the same
//! validation as ip_vs_ctl.c, and every call recorded so a test can assert
//! that a sync made the minimal set of changes.
//!
//! `FakeIpvs` is a cheap `Clone` sharing one state: hand one clone to the code
//! under test and keep another to inspect and to play the kernel (connection
//! counts, injected failures, foreign services).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{validate_dest, validate_service, IpvsError, IpvsHandle};
use crate::proxy::model::{DestKey, IpvsInfo, RealServer, ServiceKey, Timeouts, VirtualServer};

/// One call on the handle, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsCall {
    ListServices,
    ListDests(ServiceKey),
    AddService(VirtualServer),
    UpdateService(VirtualServer),
    DeleteService(ServiceKey),
    AddDest(ServiceKey, RealServer),
    UpdateDest(ServiceKey, RealServer),
    DeleteDest(ServiceKey, DestKey),
    SetTimeouts(Timeouts),
    GetTimeouts,
    Info,
}

impl IpvsCall {
    /// True for calls that change the table or the timeouts.
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            IpvsCall::ListServices
                | IpvsCall::ListDests(_)
                | IpvsCall::GetTimeouts
                | IpvsCall::Info
        )
    }
}

/// Schedulers of the stock kernel (net/netfilter/ipvs/ip_vs_*.c).
const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];

#[derive(Debug, Default)]
struct State {
    services: BTreeMap<ServiceKey, (VirtualServer, BTreeMap<DestKey, RealServer>)>,
    timeouts: Option<Timeouts>,
    calls: Vec<IpvsCall>,
    fail_next: Option<i32>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeIpvs {
    state: Arc<Mutex<State>>,
}

impl FakeIpvs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<IpvsCall> {
        self.lock().calls.clone()
    }

    /// The mutating calls so far, in order, and forget all recorded calls.
    pub fn take_mutations(&self) -> Vec<IpvsCall> {
        let mut st = self.lock();
        let calls = std::mem::take(&mut st.calls);
        calls.into_iter().filter(IpvsCall::is_mutation).collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The table as the kernel would list it, sorted by key.
    pub fn snapshot(&self) -> Vec<(VirtualServer, Vec<RealServer>)> {
        self.lock()
            .services
            .values()
            .map(|(vs, d)| (vs.clone(), d.values().cloned().collect()))
            .collect()
    }

    /// Put a service in the table without recording a call, as if another
    /// program (ipvsadm, a previous lbd) had created it.
    pub fn insert_foreign(&self, vs: VirtualServer, dests: Vec<RealServer>) {
        let dests = dests.into_iter().map(|d| (d.key(), d)).collect();
        self.lock().services.insert(vs.key(), (vs, dests));
    }

    /// Set the connection counters the kernel would report for a real server.
    /// Returns false if there is no such real server.
    pub fn set_conns(&self, svc: &ServiceKey, dest: &DestKey, active: u32, inactive: u32) -> bool {
        let mut st = self.lock();
        match st.services.get_mut(svc).and_then(|(_, d)| d.get_mut(dest)) {
            Some(rs) => {
                rs.active_conns = active;
                rs.inactive_conns = inactive;
                true
            }
            None => false,
        }
    }

    /// Make the next mutating call fail with this errno (mapped as the
    /// netlink implementation maps it), without changing anything.
    pub fn fail_next(&self, errno: i32) {
        self.lock().fail_next = Some(errno);
    }

    fn mutate<T>(
        &self,
        call: IpvsCall,
        op: &'static str,
        target: String,
        f: impl FnOnce(&mut State) -> Result<T, i32>,
    ) -> Result<T, IpvsError> {
        let mut st = self.lock();
        st.calls.push(call);
        if let Some(errno) = st.fail_next.take() {
            return Err(IpvsError::from_errno(op, target, errno));
        }
        f(&mut st).map_err(|errno| IpvsError::from_errno(op, target, errno))
    }
}

fn strip_counters(rs: &RealServer) -> RealServer {
    RealServer {
        active_conns: 0,
        inactive_conns: 0,
        persist_conns: 0,
        ..rs.clone()
    }
}

impl IpvsHandle for FakeIpvs {
    fn list_services(&self) -> Result<Vec<(VirtualServer, Vec<RealServer>)>, IpvsError> {
        self.lock().calls.push(IpvsCall::ListServices);
        Ok(self.snapshot())
    }

    fn list_dests(&self, svc: &ServiceKey) -> Result<Vec<RealServer>, IpvsError> {
        let mut st = self.lock();
        st.calls.push(IpvsCall::ListDests(*svc));
        match st.services.get(svc) {
            Some((_, d)) => Ok(d.values().cloned().collect()),
            None => Err(IpvsError::from_errno(
                "list_dests",
                svc.to_string(),
                libc::ESRCH,
            )),
        }
    }

    fn add_service(&self, vs: &VirtualServer) -> Result<(), IpvsError> {
        let op = "add_service";
        let target = vs.key().to_string();
        self.mutate(IpvsCall::AddService(vs.clone()), op, target, |st| {
            validate_service(op, vs).map_err(|_| libc::EINVAL)?;
            if !SCHEDULERS.contains(&vs.scheduler.as_str()) {
                return Err(libc::ENOENT);
            }
            if st.services.contains_key(&vs.key()) {
                return Err(libc::EEXIST);
            }
            st.services.insert(vs.key(), (vs.clone(), BTreeMap::new()));
            Ok(())
        })
    }

    fn update_service(&self, vs: &VirtualServer) -> Result<(), IpvsError> {
        let op = "update_service";
        let target = vs.key().to_string();
        self.mutate(IpvsCall::UpdateService(vs.clone()), op, target, |st| {
            validate_service(op, vs).map_err(|_| libc::EINVAL)?;
            if !SCHEDULERS.contains(&vs.scheduler.as_str()) {
                return Err(libc::ENOENT);
            }
            match st.services.get_mut(&vs.key()) {
                Some((cur, _)) => {
                    *cur = vs.clone();
                    Ok(())
                }
                None => Err(libc::ESRCH),
            }
        })
    }

    fn delete_service(&self, svc: &ServiceKey) -> Result<(), IpvsError> {
        self.mutate(
            IpvsCall::DeleteService(*svc),
            "delete_service",
            svc.to_string(),
            |st| st.services.remove(svc).map(|_| ()).ok_or(libc::ESRCH),
        )
    }

    fn add_dest(&self, svc: &ServiceKey, rs: &RealServer) -> Result<(), IpvsError> {
        let op = "add_dest";
        let call = IpvsCall::AddDest(*svc, strip_counters(rs));
        self.mutate(call, op, format!("{} -> {}", svc, rs.key()), |st| {
            validate_dest(op, svc, rs).map_err(|_| libc::EINVAL)?;
            let (_, dests) = st.services.get_mut(svc).ok_or(libc::ESRCH)?;
            if dests.contains_key(&rs.key()) {
                return Err(libc::EEXIST);
            }
            dests.insert(rs.key(), strip_counters(rs));
            Ok(())
        })
    }

    fn update_dest(&self, svc: &ServiceKey, rs: &RealServer) -> Result<(), IpvsError> {
        let op = "update_dest";
        let call = IpvsCall::UpdateDest(*svc, strip_counters(rs));
        self.mutate(call, op, format!("{} -> {}", svc, rs.key()), |st| {
            validate_dest(op, svc, rs).map_err(|_| libc::EINVAL)?;
            let (_, dests) = st.services.get_mut(svc).ok_or(libc::ESRCH)?;
            let cur = dests.get_mut(&rs.key()).ok_or(libc::ENOENT)?;
            // Configuration changes; the kernel keeps its counters.
            let (a, i, p) = (cur.active_conns, cur.inactive_conns, cur.persist_conns);
            *cur = RealServer {
                active_conns: a,
                inactive_conns: i,
                persist_conns: p,
                ..rs.clone()
            };
            Ok(())
        })
    }

    fn delete_dest(&self, svc: &ServiceKey, dest: &DestKey) -> Result<(), IpvsError> {
        let call = IpvsCall::DeleteDest(*svc, *dest);
        self.mutate(call, "delete_dest", format!("{svc} -> {dest}"), |st| {
            let (_, dests) = st.services.get_mut(svc).ok_or(libc::ESRCH)?;
            dests.remove(dest).map(|_| ()).ok_or(libc::ENOENT)
        })
    }

    fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError> {
        self.mutate(
            IpvsCall::SetTimeouts(*t),
            "set_timeouts",
            String::new(),
            |st| {
                let cur = st.timeouts.get_or_insert(DEFAULT_TIMEOUTS);
                if t.tcp != 0 {
                    cur.tcp = t.tcp;
                }
                if t.tcp_fin != 0 {
                    cur.tcp_fin = t.tcp_fin;
                }
                if t.udp != 0 {
                    cur.udp = t.udp;
                }
                Ok(())
            },
        )
    }

    fn get_timeouts(&self) -> Result<Timeouts, IpvsError> {
        let mut st = self.lock();
        st.calls.push(IpvsCall::GetTimeouts);
        Ok(st.timeouts.unwrap_or(DEFAULT_TIMEOUTS))
    }

    fn info(&self) -> Result<IpvsInfo, IpvsError> {
        self.lock().calls.push(IpvsCall::Info);
        Ok(IpvsInfo {
            version: 0x010201,
            conn_table_size: 4096,
        })
    }
}

/// The kernel's defaults: 15 min TCP, 2 min FIN_WAIT, 5 min UDP.
const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    tcp: 900,
    tcp_fin: 120,
    udp: 300,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{FwdMethod, Protocol};

    fn vs() -> VirtualServer {
        VirtualServer::new("10.96.0.1".parse().unwrap(), 443, Protocol::Tcp, "rr")
    }

    #[test]
    fn duplicates_and_missing_are_typed_errors() {
        let f = FakeIpvs::new();
        f.add_service(&vs()).unwrap();
        assert!(f.add_service(&vs()).unwrap_err().is_exists());
        let k = vs().key();
        let rs = RealServer::new("10.0.0.2".parse().unwrap(), 6443, 1);
        f.add_dest(&k, &rs).unwrap();
        assert!(f.add_dest(&k, &rs).unwrap_err().is_exists());
        f.delete_dest(&k, &rs.key()).unwrap();
        assert!(f.delete_dest(&k, &rs.key()).unwrap_err().is_not_found());
        assert!(f.update_dest(&k, &rs).unwrap_err().is_not_found());
        f.delete_service(&k).unwrap();
        assert!(f.delete_service(&k).unwrap_err().is_not_found());
        assert!(f.add_dest(&k, &rs).unwrap_err().is_not_found());
        assert!(f.update_service(&vs()).unwrap_err().is_not_found());
    }

    #[test]
    fn kernel_validation() {
        let f = FakeIpvs::new();
        let mut bad = vs();
        bad.scheduler = "nope".into();
        assert!(matches!(
            f.add_service(&bad),
            Err(IpvsError::Invalid { .. })
        ));
        f.add_service(&vs()).unwrap();
        let v6 = RealServer::new("fd00::2".parse().unwrap(), 80, 1);
        assert!(matches!(
            f.add_dest(&vs().key(), &v6),
            Err(IpvsError::Invalid { .. })
        ));
        let tun = RealServer {
            fwd: FwdMethod::Tunnel,
            ..v6
        };
        f.add_dest(&vs().key(), &tun).unwrap();
    }

    #[test]
    fn records_calls_and_keeps_counters_on_update() {
        let f = FakeIpvs::new();
        let k = vs().key();
        f.add_service(&vs()).unwrap();
        let rs = RealServer::new("10.0.0.2".parse().unwrap(), 6443, 1);
        f.add_dest(&k, &rs).unwrap();
        assert!(f.set_conns(&k, &rs.key(), 3, 4));
        let drained = RealServer {
            weight: 0,
            ..rs.clone()
        };
        f.update_dest(&k, &drained).unwrap();
        let (_, dests) = &f.list_services().unwrap()[0];
        assert_eq!(
            (
                dests[0].weight,
                dests[0].active_conns,
                dests[0].inactive_conns
            ),
            (0, 3, 4)
        );
        assert_eq!(
            f.take_mutations(),
            vec![
                IpvsCall::AddService(vs()),
                IpvsCall::AddDest(k, rs),
                IpvsCall::UpdateDest(k, drained)
            ]
        );
        assert!(f.calls().is_empty());
    }

    #[test]
    fn injected_failure_changes_nothing() {
        let f = FakeIpvs::new();
        f.fail_next(libc::ENOMEM);
        assert!(
            matches!(f.add_service(&vs()), Err(IpvsError::Kernel { errno, .. }) if errno == libc::ENOMEM)
        );
        assert!(f.snapshot().is_empty());
        f.add_service(&vs()).unwrap();
        assert_eq!(f.snapshot().len(), 1);
    }

    #[test]
    fn timeouts_zero_means_unchanged() {
        let f = FakeIpvs::new();
        f.set_timeouts(&Timeouts {
            tcp: 10,
            tcp_fin: 0,
            udp: 0,
        })
        .unwrap();
        assert_eq!(
            f.get_timeouts().unwrap(),
            Timeouts {
                tcp: 10,
                tcp_fin: 120,
                udp: 300
            }
        );
    }
}
