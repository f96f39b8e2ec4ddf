//! The addresses lbd binds on kube-ipvs0, so the kernel delivers service
//! traffic locally where IPVS picks it up: the narrow interface
//! ([`ServiceAddresses`]), the real one over rtnetlink ([`DummyAddresses`],
//! through `kernel::dummy`) and the in-memory fake ([`FakeAddresses`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::dummy::{connect, DummyError, DummyLink, KUBE_IPVS0};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AddressError {
    /// Shared: one failure to reach the link answers every address of a
    /// batch.
    #[error("{0}")]
    Link(Arc<DummyError>),
    #[error("kube-ipvs0 needs a multi-thread tokio runtime")]
    CurrentThreadRuntime,
    #[error("{op}: batch returned no result")]
    NoResult { op: &'static str },
}

impl From<DummyError> for AddressError {
    fn from(e: DummyError) -> Self {
        AddressError::Link(Arc::new(e))
    }
}

/// kube-ipvs0 as the proxy needs it.
pub trait ServiceAddresses: Send + Sync {
    /// Creates the link if needed.
    fn prepare(&self) -> Result<(), AddressError>;
    fn list(&self) -> Result<BTreeSet<IpAddr>, AddressError>;
    /// The addresses on the host's other links, kube-ipvs0's excluded: the
    /// node addresses NodePorts are served on. None: not known here (the
    /// proxy then takes the Node object's addresses).
    fn host_addresses(&self) -> Result<Option<Vec<IpAddr>>, AddressError> {
        Ok(None)
    }
    fn add(&self, addr: IpAddr) -> Result<(), AddressError>;
    fn remove(&self, addr: IpAddr) -> Result<(), AddressError>;
    /// Binds several, one result per address; the default calls `add`.
    fn add_many(&self, addrs: &[IpAddr]) -> Vec<Result<(), AddressError>> {
        addrs.iter().map(|a| self.add(*a)).collect()
    }
    /// Unbinds several, one result per address; the default calls `remove`.
    fn remove_many(&self, addrs: &[IpAddr]) -> Vec<Result<(), AddressError>> {
        addrs.iter().map(|a| self.remove(*a)).collect()
    }
}

/// In-memory kube-ipvs0 for tests and for hosts without a dummy driver.
#[derive(Debug, Clone, Default)]
pub struct FakeAddresses {
    pub addrs: Arc<Mutex<BTreeSet<IpAddr>>>,
    /// The host's other addresses; None (the default): unknown.
    pub host: Arc<Mutex<Option<Vec<IpAddr>>>>,
}

impl FakeAddresses {
    pub fn snapshot(&self) -> BTreeSet<IpAddr> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets what [`ServiceAddresses::host_addresses`] answers.
    pub fn set_host_addresses(&self, addrs: Option<Vec<IpAddr>>) {
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }
}

impl ServiceAddresses for FakeAddresses {
    fn prepare(&self) -> Result<(), AddressError> {
        Ok(())
    }
    fn list(&self) -> Result<BTreeSet<IpAddr>, AddressError> {
        Ok(self.snapshot())
    }
    fn host_addresses(&self) -> Result<Option<Vec<IpAddr>>, AddressError> {
        Ok(self.host.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
    fn add(&self, addr: IpAddr) -> Result<(), AddressError> {
        self.addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr);
        Ok(())
    }
    fn remove(&self, addr: IpAddr) -> Result<(), AddressError> {
        self.addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        Ok(())
    }
}

/// kube-ipvs0 through `kernel::dummy` (rtnetlink), driven from the sync's
/// blocking thread by entering the runtime the link's connection runs on.
pub struct DummyAddresses {
    rt: tokio::runtime::Handle,
    link: Mutex<Option<DummyLink>>,
}

impl DummyAddresses {
    /// Must be called inside a multi-thread tokio runtime.
    pub fn new() -> Self {
        DummyAddresses {
            rt: tokio::runtime::Handle::current(),
            link: Mutex::new(None),
        }
    }

    fn link(&self) -> Result<DummyLink, AddressError> {
        // Handle::block_on cannot drive a current-thread runtime's I/O from
        // another thread: the rtnetlink connection would never run.
        if self.rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(AddressError::CurrentThreadRuntime);
        }
        let mut g = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = g.as_ref() {
            return Ok(l.clone());
        }
        let _enter = self.rt.enter();
        let handle = connect()?;
        let l = self.rt.block_on(DummyLink::ensure(handle, KUBE_IPVS0))?;
        *g = Some(l.clone());
        Ok(l)
    }

    /// Binds (or unbinds) `addrs` in one pipelined exchange, a result each.
    fn change_many(&self, addrs: &[IpAddr], bind: bool) -> Vec<Result<(), AddressError>> {
        let l = match self.link() {
            Ok(l) => l,
            Err(e) => return addrs.iter().map(|_| Err(e.clone())).collect(),
        };
        let results = if bind {
            self.rt.block_on(l.bind_many(addrs))
        } else {
            self.rt.block_on(l.unbind_many(addrs))
        };
        results
            .into_iter()
            .map(|r| r.map(|_| ()).map_err(AddressError::from))
            .collect()
    }
}

impl Default for DummyAddresses {
    /// [`DummyAddresses::new`]: inside a multi-thread tokio runtime.
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceAddresses for DummyAddresses {
    fn prepare(&self) -> Result<(), AddressError> {
        self.link().map(|_| ())
    }
    fn list(&self) -> Result<BTreeSet<IpAddr>, AddressError> {
        let l = self.link()?;
        Ok(self.rt.block_on(l.addresses())?.into_iter().collect())
    }
    fn host_addresses(&self) -> Result<Option<Vec<IpAddr>>, AddressError> {
        let l = self.link()?;
        Ok(Some(self.rt.block_on(l.host_addresses())?))
    }
    fn add(&self, addr: IpAddr) -> Result<(), AddressError> {
        let l = self.link()?;
        self.rt.block_on(l.bind(addr))?;
        Ok(())
    }
    fn remove(&self, addr: IpAddr) -> Result<(), AddressError> {
        let l = self.link()?;
        self.rt.block_on(l.unbind(addr))?;
        Ok(())
    }
    fn add_many(&self, addrs: &[IpAddr]) -> Vec<Result<(), AddressError>> {
        self.change_many(addrs, true)
    }
    fn remove_many(&self, addrs: &[IpAddr]) -> Vec<Result<(), AddressError>> {
        self.change_many(addrs, false)
    }
}
