//! The service proxy's side of the host: the dummy link `kube-ipvs0` that
//! holds every bound service address (so the kernel accepts packets for them
//! and IPVS sees them in LOCAL_IN), and the sysctls kube-proxy's IPVS mode
//! sets.
//!
//! Like kube-proxy, the link is created if missing, left DOWN (local routes
//! for its addresses exist regardless, and a down NOARP link never answers
//! ARP for them) and never deleted: another proxy generation may share it.
//! Addresses are host routes (/32, /128); IPv6 ones are added with
//! IFA_F_NODAD so they are usable at once.

use std::net::IpAddr;
use std::path::PathBuf;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkDummy};

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
    #[error("sysctl {name}: {source}")]
    Sysctl {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A new rtnetlink connection whose driver runs on the current tokio runtime.
/// Its socket lives in the caller's network namespace.
pub fn connect() -> Result<Handle, DummyError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(DummyError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The negative errno a netlink error carries, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
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
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        let mut req = self.handle.address().add(self.index, addr, prefix);
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(source) => Err(DummyError::Netlink {
                op: "bind address",
                target: format!("{addr} on {}", self.name),
                source,
            }),
        }
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
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(DummyError::Netlink {
                op: "unbind address",
                target: format!("{addr} on {}", self.name),
                source,
            }),
        }
    }
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<u32>, DummyError> {
    let res = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match res {
        Ok(Some(link)) => {
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
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(DummyError::Netlink {
            op: "find link",
            target: name.to_string(),
            source,
        }),
    }
}

fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    // IPv4 carries the interface's own address in IFA_LOCAL (IFA_ADDRESS is
    // the peer on point-to-point links); IPv6 only has IFA_ADDRESS.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

// ---------------------------------------------------------------- sysctls --

/// One sysctl and the value the proxy needs, dotted name as in sysctl(8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    pub name: &'static str,
    pub value: &'static str,
}

/// What kube-proxy's IPVS mode sets (pkg/proxy/ipvs/proxier.go), pure:
/// conntrack for masquerade, drop connections to removed real servers and
/// their persistence templates instead of blackholing, forwarding; strict
/// ARP makes the host answer ARP only for addresses on the asking interface
/// (so kube-ipvs0's addresses are never announced). conn_reuse_mode=0 is
/// only set on kernels before 5.9, where mode 1 stalled reused ports for a
/// second (kubernetes#81775); later kernels keep their default.
pub fn proxy_sysctls(kernel_release: &str, strict_arp: bool) -> Vec<Sysctl> {
    let s = |name, value| Sysctl { name, value };
    let mut out = vec![
        s("net.ipv4.vs.conntrack", "1"),
        s("net.ipv4.vs.expire_nodest_conn", "1"),
        s("net.ipv4.vs.expire_quiescent_template", "1"),
        s("net.ipv4.ip_forward", "1"),
    ];
    if kernel_before(kernel_release, (5, 9)) {
        out.push(s("net.ipv4.vs.conn_reuse_mode", "0"));
    }
    if strict_arp {
        out.push(s("net.ipv4.conf.all.arp_ignore", "1"));
        out.push(s("net.ipv4.conf.all.arp_announce", "2"));
    }
    out
}

/// "6.1.0-56-cloud-amd64" < (5, 9)? An unparsable release counts as new.
fn kernel_before(release: &str, (maj, min): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) < (maj, min),
        _ => false,
    }
}

pub fn sysctl_path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// Write the sysctls whose current value differs; returns the changed names.
/// Reads and writes happen in the calling thread's network namespace.
pub fn ensure_sysctls(list: &[Sysctl]) -> Result<Vec<&'static str>, DummyError> {
    let mut changed = Vec::new();
    for s in list {
        let path = sysctl_path(s.name);
        let err = |source| DummyError::Sysctl {
            name: s.name.to_string(),
            source,
        };
        let cur = std::fs::read_to_string(&path).map_err(err)?;
        if cur.trim() != s.value {
            std::fs::write(&path, s.value).map_err(err)?;
            changed.push(s.name);
        }
    }
    Ok(changed)
}

/// The running kernel's release (uname -r).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_reuse_mode_only_on_old_kernels() {
        let has = |rel| {
            proxy_sysctls(rel, false)
                .iter()
                .any(|s| s.name == "net.ipv4.vs.conn_reuse_mode")
        };
        assert!(has("5.4.0-100-generic"));
        assert!(!has("5.9.0"));
        assert!(!has("6.1.0-56-cloud-amd64"));
        assert!(!has("garbage"));
    }

    #[test]
    fn strict_arp_adds_arp_sysctls() {
        let names: Vec<_> = proxy_sysctls("6.1.0", true)
            .iter()
            .map(|s| s.name)
            .collect();
        assert!(names.contains(&"net.ipv4.conf.all.arp_ignore"));
        assert!(names.contains(&"net.ipv4.conf.all.arp_announce"));
        assert!(!proxy_sysctls("6.1.0", false)
            .iter()
            .any(|s| s.name.contains("arp")));
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.vs.conntrack"),
            PathBuf::from("/proc/sys/net/ipv4/vs/conntrack")
        );
    }

    #[test]
    fn link_local_is_not_ours() {
        assert!(is_link_local_v6(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"fd00::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"10.0.0.1".parse().unwrap()));
    }
}
