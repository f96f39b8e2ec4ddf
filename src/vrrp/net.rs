//! Raw VRRP sockets (IP protocol 112) and the frames that announce a VIP
//! (gratuitous ARP, unsolicited neighbour advertisement).
//!
//! One socket per instance, bound to the interface (SO_BINDTODEVICE). It
//! receives the IP header (IPv4 raw sockets deliver it; IPv6 gets the hop
//! limit and destination from IPV6_RECVHOPLIMIT / IPV6_RECVPKTINFO) so the
//! codec can check TTL 255 (RFC 5798 section 7.1) and the v3 checksum over
//! the pseudo-header. Sends pick the source address explicitly with
//! IP_PKTINFO / IPV6_PKTINFO, so the checksum the codec computed matches
//! what goes on the wire.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn, SockaddrIn6, SockaddrStorage,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// IANA protocol number of VRRP.
pub const IPPROTO_VRRP: i32 = 112;
/// RFC 5798 section 5.1.1.2 / 5.1.2.2.
pub const VRRP_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const VRRP_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
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
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_VRRP)))?;
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

    /// In unicast mode only the configured peers are heard (keepalived's
    /// unicast_peer does the same).
    pub fn accepts_from(&self, src: IpAddr) -> bool {
        !self.unicast || self.dests.contains(&src)
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

/// Splits a raw IPv4 datagram into header fields and VRRP payload.
pub fn parse_ipv4(pkt: &[u8]) -> io::Result<Received> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return Err(bad("not an IPv4 header"));
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || pkt.len() < total {
        return Err(bad("truncated IPv4 packet"));
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    Ok(Received {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        ttl: pkt[8],
        payload: pkt[ihl..total].to_vec(),
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

/// Ethernet broadcast.
const BROADCAST: [u8; 6] = [0xff; 6];

/// A gratuitous ARP as keepalived sends it (see the fixtures): an ARP
/// request to broadcast, sender and target both the VIP, target hardware
/// address ff:ff:ff:ff:ff:ff, source MAC the interface's (keepalived's
/// default without use_vmac).
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&BROADCAST);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (RFC 4861 section 7.2.6) for
/// `ip`: to all-nodes ff02::1, hop limit 255, Override set, Solicited
/// clear, with the target link-layer address option.
pub fn unsolicited_na_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type NA, code 0, checksum
    icmp.extend_from_slice(&[0x20, 0, 0, 0]); // R=0 S=0 O=1
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let ck = icmpv6_checksum(ip, all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first gratuitous ARP in tests/fixtures/vrrp/vrrp-v2-advert1.pcap
    /// (keepalived 2.2.7), frame bytes as tcpdump shows them.
    const KEEPALIVED_GARP: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1a, 0xb4, 0xe8, 0xbd, 0x65, 0x34, 0x08, 0x06, //
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x1a, 0xb4, 0xe8, 0xbd, 0x65, 0x34, //
        0x0a, 0xd5, 0x00, 0x64, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0xd5, 0x00, 0x64,
    ];

    #[test]
    fn garp_matches_keepalived_bytes() {
        let f = garp_frame(
            [0x1a, 0xb4, 0xe8, 0xbd, 0x65, 0x34],
            Ipv4Addr::new(10, 213, 0, 100),
        );
        assert_eq!(f, KEEPALIVED_GARP);
    }

    #[test]
    fn na_checksum_verifies_to_zero() {
        let ip: Ipv6Addr = "fd00:db8::100".parse().unwrap();
        let f = unsolicited_na_frame([2, 0, 0, 0, 0, 1], ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4] & 0xe0, 0x20, "override only");
        // Summing a message together with its checksum gives 0xffff -> !0.
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(icmpv6_checksum(ip, all_nodes, icmp), 0);
    }

    #[test]
    fn parses_ipv4_header_of_a_captured_advert() {
        // First advert of vrrp-v3-advert0.1.pcap.
        let pkt = [
            0x45, 0xc0, 0x00, 0x20, 0x00, 0x25, 0x00, 0x00, 0xff, 0x70, 0xcf, 0xa0, 0x0a, 0xd5,
            0x00, 0x01, 0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x64, 0x01, 0x00, 0x0a, 0x74, 0x23,
            0x0a, 0xd5, 0x00, 0x64,
        ];
        let r = parse_ipv4(&pkt).unwrap();
        assert_eq!(r.src, IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1)));
        assert_eq!(r.dst, IpAddr::V4(VRRP_GROUP_V4));
        assert_eq!(r.ttl, 255);
        assert_eq!(r.payload, pkt[20..].to_vec());
        assert!(parse_ipv4(&pkt[..10]).is_err());
        let mut short = pkt;
        short[3] = 0x40; // claims 64 bytes
        assert!(parse_ipv4(&short).is_err());
    }
}
