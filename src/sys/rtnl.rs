//! What the rtnetlink users share: VRRP's VIPs (`sys::addr`), the link
//! monitor (`sys::link`) and the proxy's kube-ipvs0
//! (`proxy::kernel::dummy`): the connection, the errno of a failed request,
//! the address a message names, the request that adds an address and the
//! lookup of a link by name.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use rtnetlink::{AddressAddRequest, Handle};

/// A new connection whose driver runs on the current tokio runtime. Its
/// socket lives in the caller's network namespace.
pub fn connect() -> std::io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The errno (positive) a failed request carries, if the kernel sent one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The interface's own address in an address message: IPv4 carries it in
/// IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point links), IPv6 only
/// has IFA_ADDRESS.
pub fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// IPv6 link-local (fe80::/10): the kernel's own, where VRRPv3 over IPv6
/// sends from, never one of the proxy's.
pub fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The request adding `addr/prefix` to link `index`. IPv6 addresses skip
/// duplicate address detection: they must be usable at once, and their
/// owner (VRRP, the proxy) decides who holds them.
pub fn add_address(handle: &Handle, index: u32, addr: IpAddr, prefix: u8) -> AddressAddRequest {
    let mut req = handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req
}

/// The link named `name`, or None if there is none (ENODEV).
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let res = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match res {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_the_kernels() {
        assert!(is_link_local_v6(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"fd00::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn local_wins_over_address() {
        let mut m = AddressMessage::default();
        m.attributes
            .push(AddressAttribute::Address("10.0.0.2".parse().unwrap()));
        assert_eq!(address_of(&m), Some("10.0.0.2".parse().unwrap()));
        m.attributes
            .push(AddressAttribute::Local("10.0.0.1".parse().unwrap()));
        assert_eq!(address_of(&m), Some("10.0.0.1".parse().unwrap()));
    }
}
