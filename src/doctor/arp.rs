//! ARP duplicate-address probes, as `arping -D` sends them (RFC 5227 2.1.1),
//! and the answers that say someone holds the address. Pure: frames in,
//! frames out.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Ethernet destination (6) | source (6) | type 0x0806 (2)      |
//! +---------------------------------------------------------------+
//! | htype 1 (2) | ptype 0x0800 (2) | hlen 6 | plen 4 | op (2)      |
//! | sender MAC (6) | sender IP (4) | target MAC (6) | target IP (4) |
//! +---------------------------------------------------------------+
//! ```

use std::net::Ipv4Addr;

pub const ETH_P_ARP: u16 = 0x0806;
const FRAME_LEN: usize = 42;

pub type Mac = [u8; 6];

/// A probe for `target` from `sender_mac`: sender IP 0.0.0.0, so that no
/// host's ARP cache learns anything from it (RFC 5227 2.1.1).
pub fn probe(sender_mac: Mac, target: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sender_mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes());
    f[22..28].copy_from_slice(&sender_mac);
    // sender IP 0.0.0.0, target MAC zero
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// The MAC of a host that says it holds `target`: a reply from it, or an
/// ARP packet it sends with `target` as its own address (an announcement).
/// Our own frames (`ours`) and anything else are None. Never panics on a
/// short or odd frame.
pub fn holder(frame: &[u8], target: Ipv4Addr, ours: Mac) -> Option<Mac> {
    if frame.len() < FRAME_LEN
        || frame[12..14] != ETH_P_ARP.to_be_bytes()
        || frame[14..16] != 1u16.to_be_bytes()
        || frame[16..18] != 0x0800u16.to_be_bytes()
        || frame[18] != 6
        || frame[19] != 4
    {
        return None;
    }
    let op = u16::from_be_bytes([frame[20], frame[21]]);
    let mut sender = [0u8; 6];
    sender.copy_from_slice(&frame[22..28]);
    let sender_ip = Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]);
    if sender == ours || !(op == 1 || op == 2) || sender_ip != target {
        return None;
    }
    Some(sender)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `/sys/class/net/IF/address`'s text.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [0x02, 0, 0, 0, 0, 1];
    const THEIRS: Mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A reply as Linux sends it to a DAD probe: to the prober's MAC, with
    /// the holder's address as sender and 0.0.0.0 as target IP.
    fn reply(from: Mac, ip: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&OURS);
        f[6..12].copy_from_slice(&from);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        f[22..28].copy_from_slice(&from);
        f[28..32].copy_from_slice(&ip.octets());
        f[32..38].copy_from_slice(&OURS);
        f
    }

    #[test]
    fn probe_bytes() {
        let p = probe(OURS, Ipv4Addr::new(10, 31, 90, 0));
        assert_eq!(&p[0..6], &[0xff; 6]);
        assert_eq!(&p[12..22], &[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[22..28], &OURS);
        assert_eq!(&p[28..32], &[0, 0, 0, 0], "sender IP must be 0.0.0.0");
        assert_eq!(&p[38..42], &[10, 31, 90, 0]);
    }

    #[test]
    fn replies_and_announcements_name_the_holder() {
        let vip = Ipv4Addr::new(10, 31, 90, 0);
        assert_eq!(holder(&reply(THEIRS, vip), vip, OURS), Some(THEIRS));
        // Someone else's address, our own frame, garbage: nobody.
        assert_eq!(
            holder(&reply(THEIRS, Ipv4Addr::new(10, 31, 90, 9)), vip, OURS),
            None
        );
        assert_eq!(holder(&reply(OURS, vip), vip, OURS), None);
        assert_eq!(
            holder(&probe(THEIRS, vip), vip, OURS),
            None,
            "a probe holds nothing"
        );
        for n in 0..42 {
            assert_eq!(holder(&reply(THEIRS, vip)[..n], vip, OURS), None);
        }
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:12:34:56\n"), Some(THEIRS));
        assert_eq!(mac_to_string(&THEIRS), "52:54:00:12:34:56");
        assert_eq!(parse_mac("52:54:00"), None);
    }
}
