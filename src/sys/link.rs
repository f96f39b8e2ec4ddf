//! A netlink monitor of link and address changes: how the VRRP driver learns
//! that its interface went down, away or came back, that its source
//! address or MAC changed, or that someone removed its VIP. The kernel
//! drops notifications when the socket's buffer is full; the monitor then
//! says so ([`NetEvent::Overrun`]) and the reader must read the state
//! afresh (a new dump), since any event may be among the lost.

use std::net::IpAddr;

use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;
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
    /// Notifications were lost (ENOBUFS): re-read links and addresses.
    Overrun,
}

/// The receive buffer asked for: a burst of link and address changes
/// (hundreds of VLANs flapping) fits without an overrun.
const RECEIVE_BUFFER: usize = 1 << 20;

/// Subscribed to RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR.
/// Events can be lost when the socket buffer overflows: [`NetEvent::Overrun`]
/// tells the reader to re-read the kernel state.
pub struct NetMonitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
}

impl NetMonitor {
    pub fn open() -> Result<NetMonitor, SysError> {
        Self::open_with_receive_buffer(RECEIVE_BUFFER)
    }

    /// With a receive buffer of `bytes` (the kernel doubles it and caps it
    /// at net.core.rmem_max); tests make it tiny to provoke an overrun.
    pub fn open_with_receive_buffer(bytes: usize) -> Result<NetMonitor, SysError> {
        let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])?;
        let size = i32::try_from(bytes).unwrap_or(i32::MAX);
        conn.socket_mut().socket_mut().set_rx_buf_sz(size)?;
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
    let inner = match msg.payload {
        NetlinkPayload::InnerMessage(inner) => inner,
        // netlink-proto turns ENOBUFS on the socket into this.
        NetlinkPayload::Overrun(_) => return Some(NetEvent::Overrun),
        _ => return None,
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
