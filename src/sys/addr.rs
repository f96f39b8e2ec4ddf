//! Links and addresses over rtnetlink: what the VRRP driver needs to hold a
//! VIP without ever touching an address it did not add.
//!
//! lbd knows its own addresses by what it installed: the VRRP driver keeps
//! a record of each ([`InstalledAddr`]: address, prefix, lifetime) in a
//! state file, so that it and a restarted lbd recognise them on every
//! kernel, IPv4 and IPv6, whatever the interface name. Two marks help where
//! the kernel keeps them, and show the operator in `ip addr` whose they
//! are: `IFA_PROTO` = [`LBD_ADDR_PROTO`] (stored since Linux 5.18; older
//! kernels drop it) and, for IPv4 when `IFNAME:lbd` fits in 15 characters,
//! that label. Either way an address is lbd's only while its lifetime is
//! finite: lbd never installs a permanent address, so a permanent one is
//! someone else's even if it carries a mark ([`AddrInfo::is_ours`]).
//! VIPs carry a finite valid_lft: the kernel deletes a VIP that nobody
//! renews, so a killed master leaves nothing behind for long. IPv6 VIPs are
//! installed deprecated (preferred_lft 0): the kernel never picks them as
//! the source of an outgoing connection.

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use serde::{Deserialize, Serialize};

/// `IFA_PROTO` value marking addresses lbd added ('l'). The kernel keeps
/// it opaque (Linux >= 5.18); `ip addr` shows it as `proto 108`.
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

/// One address lbd installed, as its state file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstalledAddr {
    /// Address and prefix length, exactly as installed.
    pub addr: IpNet,
    /// The valid lifetime it was given (and renewed to).
    pub lifetime_secs: u32,
}

impl InstalledAddr {
    pub fn new(addr: IpNet, lifetime: Duration) -> InstalledAddr {
        InstalledAddr {
            addr,
            lifetime_secs: lifetime_secs(lifetime),
        }
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
    /// Seconds left; None: forever.
    pub preferred_lft: Option<u32>,
    pub secondary: bool,
    pub tentative: bool,
    /// Preferred lifetime over. IPv6: never chosen as a source (every
    /// IPv6 VIP); IPv4: a mark only (a VIP hidden by the VRRP handover
    /// grace).
    pub deprecated: bool,
    /// IPv6 link-local (fe80::/10): where VRRPv3 over IPv6 sends from.
    pub link_local: bool,
    /// When the kernel created it (hundredths of a second since boot): a
    /// renewal keeps it, a delete and add changes it.
    pub created_cs: Option<u32>,
    /// Scope universe (`scope global`), not link or host.
    pub global: bool,
    raw: AddressMessage,
}

impl AddrInfo {
    fn from_message(msg: &AddressMessage) -> Option<AddrInfo> {
        let mut label = None;
        let mut proto = None;
        let mut lifetimes = (None, None);
        let mut created_cs = None;
        let mut flags = AddressFlags::empty();
        let finite = |secs: u32| (secs != u32::MAX).then_some(secs);
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Label(l) => label = Some(l.clone()),
                AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
                AddressAttribute::CacheInfo(c) => {
                    lifetimes = (finite(c.ifa_valid), finite(c.ifa_preferred));
                    created_cs = Some(c.cstamp);
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
            valid_lft: lifetimes.0,
            preferred_lft: lifetimes.1,
            secondary: flags.contains(AddressFlags::Secondary),
            tentative: flags.contains(AddressFlags::Tentative),
            deprecated: flags.contains(AddressFlags::Deprecated),
            link_local,
            created_cs,
            global: msg.header.scope == AddressScope::Universe,
            raw: msg.clone(),
        })
    }

    /// Carries one of lbd's marks: `IFA_PROTO` 108 or the `IFNAME:lbd`
    /// label.
    pub fn has_lbd_mark(&self, ifname: &str) -> bool {
        self.proto == Some(LBD_ADDR_PROTO)
            || self.label.is_some() && self.label.as_deref() == lbd_label(ifname).as_deref()
    }

    /// lbd's: a finite lifetime, and either a mark or one of `installed`
    /// (same address and prefix, no more lifetime left than it was given).
    /// A permanent address is never lbd's: lbd installs none, so someone
    /// configured (or changed) it.
    pub fn is_ours(&self, ifname: &str, installed: &[InstalledAddr]) -> bool {
        let Some(left) = self.valid_lft else {
            return false;
        };
        self.has_lbd_mark(ifname)
            || installed
                .iter()
                .any(|i| i.addr == self.addr && left <= i.lifetime_secs)
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

/// The kernel's unit for lifetimes: whole seconds, finite (`u32::MAX` is
/// forever).
fn lifetime_secs(lifetime: Duration) -> u32 {
    lifetime.as_secs().clamp(1, u64::from(u32::MAX) - 1) as u32
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

    /// The MAC the kernel's neighbour table has for `ip` on `ifindex`
    /// (any state but incomplete or failed); None: not known.
    pub async fn neighbour_mac(
        &self,
        ifindex: u32,
        ip: IpAddr,
    ) -> Result<Option<[u8; 6]>, SysError> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
        };
        use netlink_packet_route::AddressFamily;
        let family = if ip.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await?;
        let found = msgs.iter().find_map(|m| {
            if m.header.ifindex != ifindex
                || matches!(
                    m.header.state,
                    NeighbourState::Incomplete | NeighbourState::Failed
                )
            {
                return None;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
                _ => None,
            })?;
            if dst != ip {
                return None;
            }
            m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
                _ => None,
            })
        });
        Ok(found)
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

    /// Installs or renews `vip` on the link with the given lifetime and
    /// lbd's marks; an IPv6 VIP deprecated (preferred_lft 0), without
    /// duplicate address detection. The same address held by someone else
    /// (with any prefix; see [`AddrInfo::is_ours`] with `installed`) is
    /// left as it is.
    pub async fn add_vip(
        &self,
        link: &LinkInfo,
        vip: IpNet,
        lifetime: Duration,
        installed: &[InstalledAddr],
    ) -> Result<AddOutcome, SysError> {
        self.add_vip_marked(link, vip, lifetime, installed, false)
            .await
    }

    /// [`add_vip`](Self::add_vip); `hidden` (VRRP handover grace) installs
    /// an IPv4 VIP deprecated too, as a mark (IPv4 source selection does
    /// not look at it).
    pub async fn add_vip_marked(
        &self,
        link: &LinkInfo,
        vip: IpNet,
        lifetime: Duration,
        installed: &[InstalledAddr],
        hidden: bool,
    ) -> Result<AddOutcome, SysError> {
        let existing = self.addresses(link.index).await?;
        if existing
            .iter()
            .any(|a| a.addr.addr() == vip.addr() && !a.is_ours(&link.name, installed))
        {
            return Ok(AddOutcome::Foreign);
        }
        let mut req =
            super::rtnl::add_address(&self.handle, link.index, vip.addr(), vip.prefix_len())
                .replace();
        let msg = req.message_mut();
        let secs = lifetime_secs(lifetime);
        let mut ci = CacheInfo::default();
        ci.ifa_valid = secs;
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                LBD_ADDR_PROTO,
            )));
        match vip {
            IpNet::V4(_) => {
                ci.ifa_preferred = if hidden { 0 } else { secs };
                if let Some(label) = lbd_label(&link.name) {
                    msg.attributes.push(AddressAttribute::Label(label));
                }
            }
            // Deprecated from the start: a VIP must never become the source
            // of this node's own connections (they would break when it
            // moves). rtnl::add_address already skips duplicate address
            // detection.
            IpNet::V6(_) => ci.ifa_preferred = 0,
        }
        msg.attributes.push(AddressAttribute::CacheInfo(ci));
        req.execute().await?;
        Ok(AddOutcome::Installed)
    }

    /// Removes `vip` (that address and prefix) from the link if it is
    /// there and ours; true if removed.
    pub async fn remove_vip(
        &self,
        link: &LinkInfo,
        vip: IpNet,
        installed: &[InstalledAddr],
    ) -> Result<bool, SysError> {
        let existing = self.addresses(link.index).await?;
        let mut removed = false;
        for a in existing
            .into_iter()
            .filter(|a| a.addr == vip && a.is_ours(&link.name, installed))
        {
            removed |= self.delete(a).await?;
        }
        Ok(removed)
    }

    /// Deletes one address as listed; false if it was gone already.
    pub async fn delete(&self, a: AddrInfo) -> Result<bool, SysError> {
        match self.handle.address().del(a.raw).execute().await {
            Ok(()) => Ok(true),
            // Gone meanwhile (expired, or removed by someone), or its link
            // went: fine.
            Err(e)
                if matches!(
                    super::rtnl::errno(&e),
                    Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
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
        Ok(pick_source(&addrs, &link.name, v6, unicast, exclude))
    }
}

/// The address adverts go from (RFC 5798 5.1.2.1): IPv6, the link-local
/// (with `unicast`, a global one); IPv4, the first primary of scope global,
/// else the first primary. The kernel lists a link- or host-scope primary
/// (a 169.254.0.0/16 of avahi-autoipd, any `scope link` address) before
/// the global ones: taken first, it changed the source under a running
/// instance, and unicast peers drop adverts from an address they do not
/// list. Never a VIP (`exclude`) nor an address lbd marked.
pub fn pick_source(
    addrs: &[AddrInfo],
    ifname: &str,
    v6: bool,
    unicast: bool,
    exclude: &[IpAddr],
) -> Option<IpAddr> {
    let usable = |a: &&AddrInfo| {
        a.addr.addr().is_ipv6() == v6
            && !exclude.contains(&a.addr.addr())
            && !a.has_lbd_mark(ifname)
    };
    let pick = if v6 {
        addrs
            .iter()
            .filter(usable)
            .find(|a| a.link_local != unicast && !a.tentative)
    } else {
        let primaries = || addrs.iter().filter(usable).filter(|a| !a.secondary);
        primaries()
            .find(|a| a.global)
            .or_else(|| primaries().next())
    };
    pick.map(|a| a.addr.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(addr: &str, label: Option<&str>, proto: Option<u8>, valid: Option<u32>) -> AddrInfo {
        AddrInfo {
            ifindex: 2,
            addr: addr.parse().unwrap(),
            label: label.map(str::to_string),
            proto,
            valid_lft: valid,
            preferred_lft: valid,
            secondary: false,
            tentative: false,
            deprecated: false,
            link_local: false,
            created_cs: None,
            global: true,
            raw: AddressMessage::default(),
        }
    }

    /// IPv4: a link-scope primary that the kernel lists first (as it does)
    /// is passed over for the global one, and used only when it is all
    /// there is; secondaries, VIPs and lbd's own addresses never.
    #[test]
    fn the_ipv4_source_is_a_global_primary() {
        let scope_link = AddrInfo {
            global: false,
            ..listed("10.213.50.101/28", None, None, None)
        };
        let primary = listed("10.213.50.1/24", None, None, None);
        let secondary = AddrInfo {
            secondary: true,
            ..listed("10.213.50.2/24", None, None, None)
        };
        let vip = listed("10.213.50.100/24", None, None, Some(2));
        let ours = listed("10.213.50.99/24", None, Some(LBD_ADDR_PROTO), Some(2));
        let exclude: [IpAddr; 1] = ["10.213.50.100".parse().unwrap()];
        let pick = |list: &[AddrInfo]| pick_source(list, "eth0", false, false, &exclude);
        let all = [
            scope_link.clone(),
            vip.clone(),
            ours.clone(),
            secondary.clone(),
            primary,
        ];
        assert_eq!(pick(&all), Some("10.213.50.1".parse().unwrap()));
        let no_global = [vip, ours, secondary, scope_link];
        assert_eq!(pick(&no_global), Some("10.213.50.101".parse().unwrap()));
        assert_eq!(pick(&no_global[..3]), None);
    }

    /// What a 5.10 kernel shows for lbd's VIPs: no IFA_PROTO, and no label
    /// on IPv6 or on a long interface name. The record decides.
    #[test]
    fn ownership_by_record_when_the_kernel_keeps_no_mark() {
        let rec = |a: &str| InstalledAddr::new(a.parse().unwrap(), Duration::from_secs(3));
        let installed = [rec("fd00::100/64"), rec("10.0.0.100/24")];
        let long = "enp1s0f0np0.10";
        assert!(listed("fd00::100/64", None, None, Some(2)).is_ours("eth0", &installed));
        assert!(listed("10.0.0.100/24", None, None, Some(3)).is_ours(long, &installed));
        // Another prefix, more lifetime than we gave, or permanent: not ours.
        assert!(!listed("10.0.0.100/32", None, None, Some(2)).is_ours(long, &installed));
        assert!(!listed("10.0.0.100/24", None, None, Some(60)).is_ours(long, &installed));
        assert!(!listed("10.0.0.100/24", None, None, None).is_ours(long, &installed));
        // Without a record, nothing unmarked is ours.
        assert!(!listed("fd00::100/64", None, None, Some(2)).is_ours("eth0", &[]));
    }

    #[test]
    fn marks_count_while_the_lifetime_is_finite() {
        let proto = listed("fd00::100/64", None, Some(LBD_ADDR_PROTO), Some(2));
        assert!(proto.has_lbd_mark("eth0") && proto.is_ours("eth0", &[]));
        let label = listed("10.0.0.100/24", Some("eth0:lbd"), None, Some(2));
        assert!(label.is_ours("eth0", &[]));
        assert!(!label.is_ours("eth1", &[]), "another link's label");
        // Made permanent by someone: theirs now, mark or not.
        let made_permanent = listed(
            "10.0.0.100/24",
            Some("eth0:lbd"),
            Some(LBD_ADDR_PROTO),
            None,
        );
        assert!(made_permanent.has_lbd_mark("eth0"));
        assert!(!made_permanent.is_ours("eth0", &[]));
        assert!(!listed("10.0.0.1/24", Some("eth0"), None, None).has_lbd_mark("eth0"));
    }

    #[test]
    fn label_fits_ifnamsiz() {
        assert_eq!(lbd_label("eth0").as_deref(), Some("eth0:lbd"));
        assert_eq!(lbd_label("enp0s31f6").as_deref(), Some("enp0s31f6:lbd"));
        // 12 + 4 = 16 > 15: the kernel would refuse it, so no label.
        assert_eq!(lbd_label("abcdefghijkl"), None);
    }
}
