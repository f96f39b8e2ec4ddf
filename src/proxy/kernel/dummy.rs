//! The dummy link `kube-ipvs0` over rtnetlink: it holds every bound service
//! address, so the kernel accepts packets for them and IPVS sees them in
//! LOCAL_IN.
//!
//! Like kube-proxy, the link is created if missing, left DOWN (local routes
//! for its addresses exist regardless, and a down NOARP link never answers
//! ARP for them) and never deleted: another proxy generation may share it.
//! Addresses are host routes (/32, /128); IPv6 ones are added with
//! IFA_F_NODAD so they are usable at once.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkDummy};

use crate::sys::rtnl::{address_of, errno, is_link_local_v6};

/// Most address requests in flight at once: every ack of them may sit in
/// the socket's receive buffer at the same time (~1 KiB each).
pub const PIPELINE: usize = 128;

/// The name kube-proxy uses, so tools and habits carry over.
pub const KUBE_IPVS0: &str = "kube-ipvs0";

#[derive(Debug, thiserror::Error)]
pub enum DummyError {
    #[error("rtnetlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} exists but is not a dummy link")]
    NotDummy(String),
    #[error("link {0} vanished while being created")]
    Vanished(String),
}

/// A new rtnetlink connection whose driver runs on the current tokio runtime.
/// Its socket lives in the caller's network namespace.
pub fn connect() -> Result<Handle, DummyError> {
    crate::sys::rtnl::connect().map_err(DummyError::Connect)
}

/// The dummy link holding the service addresses.
#[derive(Debug, Clone)]
pub struct DummyLink {
    handle: Handle,
    name: String,
    index: u32,
}

impl DummyLink {
    /// Find the link `name`, creating a dummy link if there is none. A link
    /// of that name that is not a dummy is an error (we would be binding
    /// service addresses to someone's real interface).
    pub async fn ensure(handle: Handle, name: &str) -> Result<Self, DummyError> {
        if let Some(index) = find_link(&handle, name).await? {
            return Ok(DummyLink {
                handle,
                name: name.to_string(),
                index,
            });
        }
        let add = handle
            .link()
            .add(LinkDummy::new(name).build())
            .execute()
            .await;
        match add {
            Ok(()) => {}
            // Created concurrently (another lbd, kube-proxy): fine.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(DummyError::Netlink {
                    op: "create dummy link",
                    target: name.to_string(),
                    source,
                })
            }
        }
        let index = find_link(&handle, name)
            .await?
            .ok_or_else(|| DummyError::Vanished(name.to_string()))?;
        Ok(DummyLink {
            handle,
            name: name.to_string(),
            index,
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn address_messages(&self) -> Result<Vec<AddressMessage>, DummyError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map(|msgs| {
                // The kernel may ignore the filter without strict checking.
                msgs.into_iter()
                    .filter(|m| m.header.index == self.index)
                    .collect()
            })
            .map_err(|source| DummyError::Netlink {
                op: "list addresses",
                target: self.name.clone(),
                source,
            })
    }

    /// Every address on the host's other links (loopback and IPv6
    /// link-local included): what kube-proxy's ipvs mode takes as the node's
    /// addresses (`NodeIPs`: all local addresses but kube-ipvs0's). One dump
    /// of every link's addresses, kube-ipvs0's dropped here.
    pub async fn host_addresses(&self) -> Result<Vec<IpAddr>, DummyError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| DummyError::Netlink {
            op: "list addresses",
            target: "every link".to_string(),
            source,
        })?;
        let mut out: Vec<IpAddr> = msgs
            .iter()
            .filter(|m| m.header.index != self.index)
            .filter_map(address_of)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The addresses bound to the link, IPv6 link-local ones excluded (the
    /// kernel's, never ours).
    pub async fn addresses(&self) -> Result<Vec<IpAddr>, DummyError> {
        let mut out: Vec<IpAddr> = self
            .address_messages()
            .await?
            .iter()
            .filter_map(address_of)
            .filter(|a| !is_link_local_v6(a))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Bind `addr` as a host route. Returns false if it was already bound.
    pub async fn bind(&self, addr: IpAddr) -> Result<bool, DummyError> {
        let prefix = crate::proxy::model::full_prefix(addr);
        let req = crate::sys::rtnl::add_address(&self.handle, self.index, addr, prefix);
        self.done(req.execute().await, libc::EEXIST, "bind address", addr)
    }

    /// Binds several addresses with up to [`PIPELINE`] requests in flight
    /// on the connection, instead of one round trip each: a full sync binds
    /// one address per ClusterIP. One result per address, in order.
    pub async fn bind_many(&self, addrs: &[IpAddr]) -> Vec<Result<bool, DummyError>> {
        let mut out = Vec::with_capacity(addrs.len());
        for chunk in addrs.chunks(PIPELINE) {
            out.extend(futures::future::join_all(chunk.iter().map(|a| self.bind(*a))).await);
        }
        out
    }

    /// [`DummyLink::unbind`] for several addresses, pipelined as
    /// [`DummyLink::bind_many`].
    pub async fn unbind_many(&self, addrs: &[IpAddr]) -> Vec<Result<bool, DummyError>> {
        let mut out = Vec::with_capacity(addrs.len());
        for chunk in addrs.chunks(PIPELINE) {
            out.extend(futures::future::join_all(chunk.iter().map(|a| self.unbind(*a))).await);
        }
        out
    }

    /// Unbind `addr` (any prefix length). Returns false if it was not bound.
    pub async fn unbind(&self, addr: IpAddr) -> Result<bool, DummyError> {
        // Straight to the kernel by address: listing the link's addresses
        // first would make each unbind cost O(addresses), ~80 ms at 10k
        // ClusterIPs in the emulated VM. IPv4 deletes match IFA_LOCAL
        // alone, whatever the prefix; IPv6 ones need the prefix, so only an
        // IPv6 address bound with another prefix takes the listing path.
        let mut msg = AddressMessage::default();
        msg.header.index = self.index;
        if addr.is_ipv4() {
            msg.header.family = AddressFamily::Inet;
            msg.header.prefix_len = 32;
            msg.attributes.push(AddressAttribute::Local(addr));
        } else {
            msg.header.family = AddressFamily::Inet6;
            msg.header.prefix_len = 128;
            msg.attributes.push(AddressAttribute::Address(addr));
        }
        match self.delete(msg, addr).await? {
            true => Ok(true),
            false if addr.is_ipv4() => Ok(false),
            false => {
                let msgs = self.address_messages().await?;
                let Some(msg) = msgs.into_iter().find(|m| address_of(m) == Some(addr)) else {
                    return Ok(false);
                };
                self.delete(msg, addr).await
            }
        }
    }

    /// RTM_DELADDR; false if the kernel has no such address.
    async fn delete(&self, msg: AddressMessage, addr: IpAddr) -> Result<bool, DummyError> {
        let r = self.handle.address().del(msg).execute().await;
        self.done(r, libc::EADDRNOTAVAIL, "unbind address", addr)
    }

    /// An address request's answer: true if it changed something, false if
    /// the kernel answered `already` (nothing to do).
    fn done(
        &self,
        r: Result<(), rtnetlink::Error>,
        already: i32,
        op: &'static str,
        addr: IpAddr,
    ) -> Result<bool, DummyError> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(already) => Ok(false),
            Err(source) => Err(DummyError::Netlink {
                op,
                target: format!("{addr} on {}", self.name),
                source,
            }),
        }
    }
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<u32>, DummyError> {
    let link = crate::sys::rtnl::link_by_name(handle, name)
        .await
        .map_err(|source| DummyError::Netlink {
            op: "find link",
            target: name.to_string(),
            source,
        })?;
    let Some(link) = link else {
        return Ok(None);
    };
    let is_dummy = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| {
            matches!(
                i,
                netlink_packet_route::link::LinkInfo::Kind(
                    netlink_packet_route::link::InfoKind::Dummy
                )
            )
        }),
        _ => false,
    });
    if !is_dummy {
        return Err(DummyError::NotDummy(name.to_string()));
    }
    Ok(Some(link.header.index))
}
