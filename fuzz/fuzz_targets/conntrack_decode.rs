//! The ctnetlink (conntrack) decoder on arbitrary bytes, as the stale-flow
//! cleanup reads a dump: it must never panic, and a flow it accepts must
//! encode into a delete request that decodes to the same original tuple.
#![no_main]

use lbd::proxy::kernel::conntrack::{delete_message, encode, flow_from_message};
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

fn conntrack_of(bytes: &[u8]) -> Option<netlink_packet_netfilter::conntrack::ConntrackMessage> {
    match NetlinkMessage::<NetfilterMessage>::deserialize(bytes).ok()?.payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(c),
            ..
        }) => Some(c),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(c) = conntrack_of(data) else {
        return;
    };
    let Some(flow) = flow_from_message(&c) else {
        return;
    };
    let del = encode(delete_message(&flow), 1, false);
    let back = conntrack_of(&del).expect("lbd's delete request decodes");
    // A delete carries no reply tuple; with the reply source put back the
    // flow must be the same.
    let netlink_packet_netfilter::conntrack::ConntrackMessage::Delete(mut attrs) = back else {
        panic!("not a delete");
    };
    use netlink_packet_netfilter::conntrack::{ConntrackAttribute, IPTuple, Tuple};
    attrs.push(ConntrackAttribute::CtaTupleReply(vec![Tuple::Ip(vec![
        IPTuple::SourceAddress(flow.reply_src),
    ])]));
    let again = flow_from_message(&netlink_packet_netfilter::conntrack::ConntrackMessage::Delete(attrs));
    assert_eq!(again, Some(flow));
});
