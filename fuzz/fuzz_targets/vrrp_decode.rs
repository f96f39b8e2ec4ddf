//! VRRP decoder fuzz target. The first byte picks the IP context (family,
//! TTL), the rest is the packet. Properties: no panic; an accepted packet
//! re-encodes to bytes that decode to the same packet; `split_ipv4` never
//! panics on the whole input either.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lbd::vrrp::packet::{split_ipv4, RxContext, VrrpPacket, MULTICAST_V4, MULTICAST_V6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = split_ipv4(data);
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let ctx = match sel % 4 {
        0 => RxContext {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(MULTICAST_V4),
            ttl_or_hop_limit: 255,
        },
        1 => RxContext {
            src: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            dst: IpAddr::V6(MULTICAST_V6),
            ttl_or_hop_limit: 255,
        },
        2 => RxContext {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V6(MULTICAST_V6),
            ttl_or_hop_limit: 255,
        },
        _ => RxContext {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            ttl_or_hop_limit: sel,
        },
    };
    match VrrpPacket::decode(bytes, &ctx) {
        Ok(p) => {
            let again = p.encode(ctx.src, ctx.dst);
            assert_eq!(again.len(), p.buffer_len(ctx.src));
            assert_eq!(VrrpPacket::decode(&again, &ctx), Ok(p));
        }
        Err(e) => {
            let _ = e.reason().as_str();
        }
    }
});
