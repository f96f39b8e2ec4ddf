//! The ctnetlink (conntrack) decoder on arbitrary bytes, as the stale-flow
//! cleanup reads a dump: it must never panic, and a flow it accepts must
//! encode into a delete request that decodes to the same original tuple.
#![no_main]

use lbd::proxy::kernel::conntrack::{decode, delete_message, encode, flow_from_message};
use libfuzzer_sys::fuzz_target;
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};

fuzz_target!(|data: &[u8]| {
    let Some(c) = decode(data) else {
        return;
    };
    let Some(flow) = flow_from_message(&c) else {
        return;
    };
    let del = encode(delete_message(&flow), 1, false);
    // A delete carries no reply tuple; with the reply source put back the
    // flow must be the same.
    let Some(ConntrackMessage::Delete(mut attrs)) = decode(&del) else {
        panic!("lbd's delete request does not decode as a delete");
    };
    attrs.push(ConntrackAttribute::CtaTupleReply(vec![Tuple::Ip(vec![
        IPTuple::SourceAddress(flow.reply_src),
    ])]));
    let again = flow_from_message(&ConntrackMessage::Delete(attrs));
    assert_eq!(again, Some(flow));
});
