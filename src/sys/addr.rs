//! Links and addresses over rtnetlink: what the VRRP driver needs to hold a
//! VIP without ever touching an address it did not add.
//!
//! Ours are tagged twice so that a restarted lbd recognises what a crashed
//! one left behind, and so that an operator sees them in `ip addr`:
//! `IFA_PROTO` = [`LBD_ADDR_PROTO`] (Linux >= 6.1, older kernels ignore it)
//! and, for IPv4 when the name fits in IFNAMSIZ, the label `IFNAME:lbd`.
//! VIPs carry a finite valid_lft/preferred_lft: the kernel deletes a VIP
//! that nobody renews, so a killed master leaves nothing behind for long.

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, CacheInfo,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

/// `IFA_PROTO` value marking addresses lbd added ('l'). The kernel keeps
/// it opaque; `ip addr` shows it as `proto 108`.
pub const LBD_ADDR_PROTO: u8 = 108;

/// Suffix of the IPv4 label of our addresses: `eth0:lbd`.
pub const LBD_LABEL_SUFFIX: &str = ":lbd";

/// Longest interface label the kernel accepts (IFNAMSIZ - 1).
const MAX_LABEL: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
}

/// What lbd needs to know about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Administratively up and the carrier present (IFF_UP + IFF_RUNNING).
    pub up: bool,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
}

impl LinkInfo {
    pub(crate) fn from_message(msg: &LinkMessage) -> Option<LinkInfo> {
        let mut name = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    mac = Some(m);
                }
                _ => {}
            }
        }
        let flags = msg.header.flags;
        Some(LinkInfo {
            index: msg.header.index,
            name: name?,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            mac,
        })
    }
}

/// One address as the kernel lists it.
#[derive(Debug, Clone)]
pub struct AddrInfo {
    pub ifindex: u32,
    pub addr: IpNet,
    pub label: Option<String>,
    pub proto: Option<u8>,
    /// Seconds left; None: forever.
    pub valid_lft: Option<u32>,
    pub secondary: bool,
    pub tentative: bool,
    /// IPv6 link-local (fe80::/10): where VRRPv3 over IPv6 sends from.
    pub link_local: bool,
    raw: AddressMessage,
}

impl AddrInfo {
    fn from_message(msg: &AddressMessage) -> Option<AddrInfo> {
        let mut label = None;
        let mut proto = None;
        let mut valid_lft = None;
        let mut flags = AddressFlags::empty();
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Label(l) => label = Some(l.clone()),
                AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
                AddressAttribute::CacheInfo(c) => {
                    valid_lft = (c.ifa_valid != u32::MAX).then_some(c.ifa_valid)
                }
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        let ip = super::rtnl::address_of(msg)?;
        let addr = IpNet::new(ip, msg.header.prefix_len).ok()?;
        let link_local = super::rtnl::is_link_local_v6(&ip);
        Some(AddrInfo {
            ifindex: msg.header.index,
            addr,
            label,
            proto,
            valid_lft,
            secondary: flags.contains(AddressFlags::Secondary),
            tentative: flags.contains(AddressFlags::Tentative),
            link_local,
            raw: msg.clone(),
        })
    }

    /// True when this address carries lbd's tag.
    pub fn is_ours(&self, ifname: &str) -> bool {
        self.proto == Some(LBD_ADDR_PROTO)
            || self.label.as_deref() == lbd_label(ifname).as_deref() && self.label.is_some()
    }
}

/// The IPv4 label for our addresses on `ifname`, if it fits.
pub fn lbd_label(ifname: &str) -> Option<String> {
    let l = format!("{ifname}{LBD_LABEL_SUFFIX}");
    (l.len() <= MAX_LABEL).then_some(l)
}

/// What [`Netlink::add_vip`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The address was absent (or ours): it is now ours with a fresh lifetime.
    Installed,
    /// Someone else configured it: left alone, and never removed by us.
    Foreign,
}

/// A route-netlink handle; the connection task runs on the current runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink socket in the caller's network namespace.
    pub fn connect() -> Result<Netlink, SysError> {
        Ok(Netlink {
            handle: super::rtnl::connect()?,
        })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<LinkInfo, SysError> {
        super::rtnl::link_by_name(&self.handle, name)
            .await?
            .as_ref()
            .and_then(LinkInfo::from_message)
            .ok_or_else(|| SysError::NoSuchInterface(name.into()))
    }

    /// Every address of the given family on the interface.
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<AddrInfo>, SysError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await?;
        Ok(msgs.iter().filter_map(AddrInfo::from_message).collect())
    }

    /// Installs or renews `vip` on the link with the given lifetime, tagged
    /// as ours. An identical address that is not ours is left as it is.
    pub async fn add_vip(
        &self,
        link: &LinkInfo,
        vip: IpNet,
        lifetime: Duration,
    ) -> Result<AddOutcome, SysError> {
        let existing = self.addresses(link.index).await?;
        if existing
            .iter()
            .any(|a| a.addr.addr() == vip.addr() && !a.is_ours(&link.name))
        {
            return Ok(AddOutcome::Foreign);
        }
        let mut req =
            super::rtnl::add_address(&self.handle, link.index, vip.addr(), vip.prefix_len())
                .replace();
        let msg = req.message_mut();
        let secs = lifetime.as_secs().clamp(1, u32::MAX as u64 - 1) as u32;
        let mut ci = CacheInfo::default();
        ci.ifa_valid = secs;
        ci.ifa_preferred = secs;
        msg.attributes.push(AddressAttribute::CacheInfo(ci));
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                LBD_ADDR_PROTO,
            )));
        if let Some(label) = lbd_label(&link.name).filter(|_| vip.addr().is_ipv4()) {
            msg.attributes.push(AddressAttribute::Label(label));
        }
        req.execute().await?;
        Ok(AddOutcome::Installed)
    }

    /// Removes `vip` from the link if it is there and ours; true if removed.
    pub async fn remove_vip(&self, link: &LinkInfo, vip: IpAddr) -> Result<bool, SysError> {
        let existing = self.addresses(link.index).await?;
        let mut removed = false;
        for a in existing
            .into_iter()
            .filter(|a| a.addr.addr() == vip && a.is_ours(&link.name))
        {
            match self.handle.address().del(a.raw).execute().await {
                Ok(()) => removed = true,
                // Gone meanwhile (expired, or removed by someone): fine.
                Err(e)
                    if matches!(
                        super::rtnl::errno(&e),
                        Some(libc::EADDRNOTAVAIL | libc::ENOENT)
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// The address VRRP adverts are sent from: IPv4 the primary
    /// (non-secondary) address of the link that is not one of `exclude`;
    /// IPv6 the link-local address (RFC 5798 section 5.1.2.1), or with
    /// `unicast` a global one, since peers list each other by the
    /// addresses they can reach (keepalived's unicast_src_ip does the same).
    pub async fn source_address(
        &self,
        link: &LinkInfo,
        v6: bool,
        unicast: bool,
        exclude: &[IpAddr],
    ) -> Result<Option<IpAddr>, SysError> {
        let addrs = self.addresses(link.index).await?;
        let pick = addrs.iter().find(|a| {
            let fam = a.addr.addr().is_ipv6() == v6;
            let usable = !exclude.contains(&a.addr.addr()) && !a.is_ours(&link.name);
            if v6 {
                fam && usable && a.link_local != unicast && !a.tentative
            } else {
                fam && usable && !a.secondary
            }
        });
        Ok(pick.map(|a| a.addr.addr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_fits_ifnamsiz() {
        assert_eq!(lbd_label("eth0").as_deref(), Some("eth0:lbd"));
        assert_eq!(lbd_label("enp0s31f6").as_deref(), Some("enp0s31f6:lbd"));
        // 12 + 4 = 16 > 15: the kernel would refuse it, so no label.
        assert_eq!(lbd_label("abcdefghijkl"), None);
    }
}
