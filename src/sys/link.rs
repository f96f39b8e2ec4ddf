//! A netlink monitor of link and address changes: how the VRRP driver learns
//! that its interface went down or that someone removed its VIP.

use std::net::IpAddr;

use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;

use super::addr::{LinkInfo, SysError};

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A link appeared or changed (flags, carrier, name).
    Link(LinkInfo),
    /// A link was deleted.
    LinkGone {
        index: u32,
    },
    AddrAdded {
        ifindex: u32,
        addr: IpAddr,
    },
    AddrRemoved {
        ifindex: u32,
        addr: IpAddr,
    },
}

/// Subscribed to RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR.
/// Events can be lost when the socket buffer overflows: users re-read the
/// kernel state periodically rather than trusting the stream alone.
pub struct NetMonitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
}

impl NetMonitor {
    pub fn open() -> Result<NetMonitor, SysError> {
        let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])?;
        tokio::spawn(conn);
        Ok(NetMonitor { messages })
    }

    /// The next event; None when the netlink connection is gone.
    pub async fn next(&mut self) -> Option<NetEvent> {
        loop {
            let (msg, _) = self.messages.next().await?;
            if let Some(ev) = decode(msg) {
                return Some(ev);
            }
        }
    }
}

fn decode(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<NetEvent> {
    let NetlinkPayload::InnerMessage(inner) = msg.payload else {
        return None;
    };
    match inner {
        RouteNetlinkMessage::NewLink(l) => LinkInfo::from_message(&l).map(NetEvent::Link),
        RouteNetlinkMessage::DelLink(l) => Some(NetEvent::LinkGone {
            index: l.header.index,
        }),
        RouteNetlinkMessage::NewAddress(a) => Some(NetEvent::AddrAdded {
            ifindex: a.header.index,
            addr: super::rtnl::address_of(&a)?,
        }),
        RouteNetlinkMessage::DelAddress(a) => Some(NetEvent::AddrRemoved {
            ifindex: a.header.index,
            addr: super::rtnl::address_of(&a)?,
        }),
        _ => None,
    }
}
