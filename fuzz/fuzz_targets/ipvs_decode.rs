//! The IPVS generic netlink decoder on arbitrary bytes: it must never panic,
//! and whatever it accepts must re-emit into exactly buffer_len() bytes that
//! decode again and re-emit identically (encode after decode is stable).
//! Struct equality after one round is not required: netlink-packet-core 0.9
//! drops NLA_F_NET_BYTEORDER when an unknown attribute also has NLA_F_NESTED
//! (its set_nested_flag re-reads the masked kind), which IPVS never sends.
#![no_main]

use lbd::proxy::kernel::ipvs::genl::IpvsMessage;
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{Emitable, NetlinkMessage, ParseableParametrized};
use netlink_packet_generic::{GenlHeader, GenlMessage};

fuzz_target!(|data: &[u8]| {
    // A whole netlink message, as read from the socket.
    if let Ok(mut nl) = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(data) {
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
    }
    // The genl payload alone: first byte picks the command.
    let Some((&cmd, rest)) = data.split_first() else { return };
    let hdr = GenlHeader { cmd, version: 1 };
    if let Ok(msg) = IpvsMessage::parse_with_param(rest, hdr) {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let again = IpvsMessage::parse_with_param(&buf, hdr).expect("re-emitted message decodes");
        let mut buf2 = vec![0u8; again.buffer_len()];
        again.emit(&mut buf2);
        assert_eq!(buf2, buf);
    }
});
