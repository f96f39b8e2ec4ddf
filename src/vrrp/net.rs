//! Raw VRRP sockets (IP protocol 112). The frames that announce a VIP
//! (gratuitous ARP, unsolicited NA) are built by `packet` and sent by
//! `sys::packet`.
//!
//! One socket per instance, bound to the interface (SO_BINDTODEVICE). It
//! receives the IP header (IPv4 raw sockets deliver it; IPv6 gets the hop
//! limit and destination from IPV6_RECVHOPLIMIT / IPV6_RECVPKTINFO) so the
//! codec can check TTL 255 (RFC 5798 section 7.1) and the v3 checksum over
//! the pseudo-header. Sends pick the source address explicitly with
//! IP_PKTINFO / IPV6_PKTINFO, so the checksum the codec computed matches
//! what goes on the wire.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn, SockaddrIn6, SockaddrStorage,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::packet::{
    split_ipv4, DecodeError, DropReason, LocalInstance, RxContext, VrrpPacket, IPPROTO_VRRP,
    MULTICAST_V4 as VRRP_GROUP_V4, MULTICAST_V6 as VRRP_GROUP_V6,
};
/// Internet control precedence, as keepalived marks its adverts.
const TOS_INTERNETCONTROL: u32 = 0xc0;

/// One VRRP packet as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// The VRRP message (after the IP header).
    pub payload: Vec<u8>,
}

/// What one received packet is to an instance: the driver's decision
/// between the socket and the state machine, pure so that it is fuzzed
/// whole (fuzz/fuzz_targets/vrrp_input.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A valid advert from a peer: the state machine's `Input::advert`.
    Advert(IpAddr, VrrpPacket),
    /// From our own source address (multicast looped back): ignored, not
    /// counted.
    Own,
    /// Not from a configured unicast peer.
    NotAPeer,
    /// Fails the codec's or this instance's checks.
    Invalid(DecodeError),
}

impl Inbound {
    /// The `reason` label of lbd_vrrp_packets_dropped_total, for a drop.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Inbound::Advert(..) | Inbound::Own => None,
            Inbound::NotAPeer => Some(DropReason::NotAPeer),
            Inbound::Invalid(e) => Some(e.reason()),
        }
    }
}

/// Classifies `pkt` for the instance that sends from `own` and hears
/// `unicast_peers` only (empty: multicast, anyone on the link).
pub fn inbound(
    pkt: &Received,
    own: IpAddr,
    unicast_peers: &[IpAddr],
    local: &LocalInstance,
) -> Inbound {
    if pkt.src == own {
        return Inbound::Own;
    }
    if !unicast_peers.is_empty() && !unicast_peers.contains(&pkt.src) {
        return Inbound::NotAPeer;
    }
    let ctx = RxContext {
        src: pkt.src,
        dst: pkt.dst,
        ttl_or_hop_limit: pkt.ttl,
    };
    match VrrpPacket::decode_for(&pkt.payload, &ctx, local) {
        Ok(p) => Inbound::Advert(pkt.src, p),
        Err(e) => Inbound::Invalid(e),
    }
}

/// A raw IPPROTO_VRRP socket bound to one interface.
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    src: IpAddr,
    /// Multicast group, or the unicast peers.
    dests: Vec<IpAddr>,
    unicast: bool,
}

impl VrrpSocket {
    /// `src`: the address adverts are sent from (IPv4 primary address, IPv6
    /// link-local). `peers` empty: multicast.
    pub fn open(ifname: &str, ifindex: u32, src: IpAddr, peers: &[IpAddr]) -> io::Result<Self> {
        let v6 = src.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(
            domain,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )?;
        sock.set_nonblocking(true)?;
        sock.bind_device(Some(ifname.as_bytes()))?;
        let unicast = !peers.is_empty();
        let dests = if unicast {
            peers.to_vec()
        } else if v6 {
            vec![IpAddr::V6(VRRP_GROUP_V6)]
        } else {
            vec![IpAddr::V4(VRRP_GROUP_V4)]
        };
        if v6 {
            sock.set_multicast_hops_v6(255)?;
            sock.set_unicast_hops_v6(255)?;
            sock.set_multicast_loop_v6(false)?;
            sock.set_multicast_if_v6(ifindex)?;
            sock.set_recv_hoplimit_v6(true)?;
            setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
            if !unicast {
                sock.join_multicast_v6(&VRRP_GROUP_V6, ifindex)?;
            }
        } else {
            sock.set_multicast_ttl_v4(255)?;
            sock.set_ttl_v4(255)?;
            sock.set_multicast_loop_v4(false)?;
            sock.set_tos_v4(TOS_INTERNETCONTROL)?;
            if !unicast {
                sock.join_multicast_v4_n(&VRRP_GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
            }
        }
        Ok(VrrpSocket {
            fd: crate::sys::fd::async_socket(sock)?,
            ifindex,
            src,
            dests,
            unicast,
        })
    }

    pub fn source(&self) -> IpAddr {
        self.src
    }

    /// Where adverts go: the multicast group or each unicast peer.
    pub fn destinations(&self) -> &[IpAddr] {
        &self.dests
    }

    /// The peers heard in unicast mode, empty for multicast (anyone): in
    /// unicast mode only the configured peers are heard (keepalived's
    /// unicast_peer does the same).
    pub fn unicast_peers(&self) -> &[IpAddr] {
        if self.unicast {
            &self.dests
        } else {
            &[]
        }
    }

    /// Sends one encoded VRRP message to `dst` from our source address.
    pub async fn send_to(&self, dst: IpAddr, payload: &[u8]) -> io::Result<()> {
        let ifindex = self.ifindex;
        let src = self.src;
        self.fd
            .async_io(Interest::WRITABLE, |s| {
                send_one(s, ifindex, src, dst, payload)
            })
            .await
    }

    /// The next VRRP packet on the interface; malformed IP framing is
    /// returned as `InvalidData` so the caller can count it and go on.
    pub async fn recv(&self) -> io::Result<Received> {
        let v6 = self.src.is_ipv6();
        self.fd
            .async_io(
                Interest::READABLE,
                |s| {
                    if v6 {
                        recv_v6(s)
                    } else {
                        recv_v4(s)
                    }
                },
            )
            .await
    }
}

fn send_one(
    sock: &Socket,
    ifindex: u32,
    src: IpAddr,
    dst: IpAddr,
    payload: &[u8],
) -> io::Result<()> {
    let iov = [IoSlice::new(payload)];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: ifindex as i32,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(s.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let to = SockaddrIn::from(std::net::SocketAddrV4::new(d, 0));
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&to),
            )?;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: s.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            // Link-local and multicast destinations need the scope.
            let to = SockaddrIn6::from(std::net::SocketAddrV6::new(d, 0, 0, ifindex));
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&to),
            )?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination of different families",
            ))
        }
    }
    Ok(())
}

fn recv_v4(sock: &Socket) -> io::Result<Received> {
    let mut buf = [0u8; 2048];
    let n = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty())?;
        msg.bytes
    };
    parse_ipv4(&buf[..n])
}

/// Splits a raw IPv4 datagram into header fields and VRRP payload
/// (the codec's [`split_ipv4`]); a bad header is `InvalidData`.
pub fn parse_ipv4(pkt: &[u8]) -> io::Result<Received> {
    let (ctx, payload) =
        split_ipv4(pkt).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(Received {
        src: ctx.src,
        dst: ctx.dst,
        ttl: ctx.ttl_or_hop_limit,
        payload: payload.to_vec(),
    })
}

fn recv_v6(sock: &Socket) -> io::Result<Received> {
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo);
    let mut ttl = None;
    let mut dst = None;
    // The message borrows `buf` through the iovec; read what we need from
    // it inside this block, then copy the payload out.
    let (n, src) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<SockaddrIn6>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )?;
        for c in msg.cmsgs()? {
            match c {
                ControlMessageOwned::Ipv6HopLimit(h) => ttl = u8::try_from(h).ok(),
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    dst = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)))
                }
                _ => {}
            }
        }
        (msg.bytes, msg.address.map(|a| IpAddr::V6(a.ip())))
    };
    let src = src.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no source address"))?;
    match (ttl, dst) {
        (Some(ttl), Some(dst)) => Ok(Received {
            src,
            dst,
            ttl,
            payload: buf[..n].to_vec(),
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "missing hop limit or packet info",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First advert of vrrp-v3-advert0.1.pcap: 10.213.0.1, VRID 51, prio 100.
    const CAPTURED: [u8; 32] = [
        0x45, 0xc0, 0x00, 0x20, 0x00, 0x25, 0x00, 0x00, 0xff, 0x70, 0xcf, 0xa0, 0x0a, 0xd5, 0x00,
        0x01, 0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x64, 0x01, 0x00, 0x0a, 0x74, 0x23, 0x0a, 0xd5,
        0x00, 0x64,
    ];

    #[test]
    fn parses_ipv4_header_of_a_captured_advert() {
        let pkt = CAPTURED;
        let r = parse_ipv4(&pkt).unwrap();
        assert_eq!(r.src, IpAddr::V4(std::net::Ipv4Addr::new(10, 213, 0, 1)));
        assert_eq!(r.dst, IpAddr::V4(VRRP_GROUP_V4));
        assert_eq!(r.ttl, 255);
        assert_eq!(r.payload, pkt[20..].to_vec());
        assert!(parse_ipv4(&pkt[..10]).is_err());
        let mut short = pkt;
        short[3] = 0x40; // claims 64 bytes
        assert!(parse_ipv4(&short).is_err());
    }

    #[test]
    fn inbound_sorts_own_foreign_invalid_and_valid_packets() {
        use crate::vrrp::packet::{Auth, Version};
        let r = parse_ipv4(&CAPTURED).unwrap();
        let peer = r.src;
        let other: IpAddr = "10.213.0.9".parse().unwrap();
        let mut local = LocalInstance {
            version: Version::V3,
            vrid: 51,
            auth: Auth::None,
            advert_interval_cs: 10,
        };
        match inbound(&r, other, &[], &local) {
            Inbound::Advert(src, p) => {
                assert_eq!(src, peer);
                assert_eq!((p.vrid, p.priority), (51, 100));
            }
            x => panic!("{x:?}"),
        }
        assert_eq!(inbound(&r, other, &[peer], &local).drop_reason(), None);
        assert_eq!(inbound(&r, peer, &[], &local), Inbound::Own);
        assert_eq!(inbound(&r, peer, &[], &local).drop_reason(), None);
        let not_peer = inbound(&r, other, &[other], &local);
        assert_eq!(not_peer, Inbound::NotAPeer);
        assert_eq!(not_peer.drop_reason(), Some(DropReason::NotAPeer));
        local.vrid = 52;
        let wrong = inbound(&r, other, &[], &local);
        assert!(matches!(wrong, Inbound::Invalid(_)), "{wrong:?}");
        assert_eq!(wrong.drop_reason(), Some(DropReason::Vrid));
        let mut ttl = r.clone();
        ttl.ttl = 64;
        local.vrid = 51;
        assert_eq!(
            inbound(&ttl, other, &[], &local).drop_reason(),
            Some(DropReason::Ttl)
        );
    }
}
