//! Handover grace (see the router's module doc): the nftables rules that
//! carry the TCP connections a leaving master accepted across a hand-over,
//! rendered here (pure) and applied by the driver with `nft`.
//!
//! - **Hide**, on the master that left: its VIPs stay on the interface, so
//!   its sockets can still send from them, but the node stops answering
//!   for them. IPv4: ARP requests for a VIP are dropped on input, and an
//!   ARP request the node sends from a VIP (the kernel takes the source of
//!   the packet that needs resolving) leaves with the primary address
//!   instead, so it resolves its clients without pointing them back at
//!   itself. IPv6: neighbour solicitations for a VIP are dropped on input,
//!   and solicitations and advertisements from or for it on output.
//! - **Forward**, on its successor: a TCP packet to a VIP that opens no
//!   connection (no SYN) and that conntrack has not seen (`ct state new`:
//!   with the default `nf_conntrack_tcp_loose=1` a mid-stream packet
//!   starts an entry, and the drop leaves it unconfirmed, so none stays)
//!   belongs to a connection of the old master: `dup` sends a copy to the
//!   old master as next hop (the VIP stays the destination) and the
//!   original is dropped. A packet from the old master's MAC is never sent
//!   back to it: an old master that no longer holds the VIP (keepalived
//!   removes it first) routes it back here, and that must not loop. Its
//!   MAC is therefore required; without one nothing is forwarded.
//!
//! One table per instance and family, `lbd-handover-NAME` (`arp` and `ip`
//! for IPv4 VIPs, `ip6` for IPv6), replaced whole in one transaction (add,
//! delete, define: the delete cannot fail); the empty state deletes them.
//! Nothing else is touched. Hooks: the ARP filter at 0; ND at filter - 10;
//! the forward at prerouting -150 (after conntrack at -200, before DNAT).

use std::fmt::Write;
use std::net::IpAddr;

/// What the handover rules of one instance should do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraceRules {
    /// The instance's VIPs (one family).
    pub vips: Vec<IpAddr>,
    /// Our primary address on the interface (the source an ARP request
    /// from a hidden VIP is given instead).
    pub primary: Option<IpAddr>,
    pub hide: bool,
    pub forward: Option<Forward>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The old master (its advert source: IPv4 primary, IPv6 link-local).
    pub to: IpAddr,
    /// The interface it is reached on.
    pub device: String,
    /// Its MAC: packets from it are not forwarded (module doc).
    pub mac: [u8; 6],
}

impl GraceRules {
    pub fn is_empty(&self) -> bool {
        !self.hide && self.forward.is_none()
    }
}

/// The tables' name for an instance: its name with anything nft would not
/// take as part of an identifier replaced.
pub fn table_name(instance: &str) -> String {
    let clean: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("lbd-handover-{clean}")
}

/// The nft script that makes the instance's tables say `rules` (`v6`: the
/// VIPs' family, also when `rules.vips` is empty).
pub fn render(instance: &str, v6: bool, rules: &GraceRules) -> String {
    let t = table_name(instance);
    let families: &[&str] = if v6 { &["ip6"] } else { &["arp", "ip"] };
    let mut s = String::new();
    for f in families {
        let _ = writeln!(s, "add table {f} {t}\ndelete table {f} {t}");
    }
    let vips: Vec<IpAddr> = rules
        .vips
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    if vips.is_empty() || rules.is_empty() {
        return s;
    }
    let set = format!(
        "{{ {} }}",
        vips.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let forward = rules
        .forward
        .as_ref()
        .filter(|f| f.to.is_ipv6() == v6)
        .map(|f| {
            let mac = f
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            let daddr = if v6 { "ip6 daddr" } else { "ip daddr" };
            format!(
                "\tchain prerouting {{\n\t\ttype filter hook prerouting priority -150; policy accept;\n\
                 \t\t{daddr} {set} tcp flags & syn == 0 ct state new ether saddr != {mac} dup to {} device {} drop\n\t}}\n",
                f.to,
                quote(&f.device)
            )
        });
    if v6 {
        let _ = writeln!(s, "table ip6 {t} {{");
        if rules.hide {
            let _ = writeln!(
                s,
                "\tchain input {{\n\t\ttype filter hook input priority -10; policy accept;"
            );
            for v in &vips {
                let _ = writeln!(
                    s,
                    "\t\ticmpv6 type nd-neighbor-solicit @th,64,128 {} drop",
                    hex128(*v)
                );
            }
            let _ = writeln!(
                s,
                "\t}}\n\tchain output {{\n\t\ttype filter hook output priority -10; policy accept;\n\
                 \t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} ip6 saddr {set} drop"
            );
            for v in &vips {
                let _ = writeln!(
                    s,
                    "\t\ticmpv6 type nd-neighbor-advert @th,64,128 {} drop",
                    hex128(*v)
                );
            }
            let _ = writeln!(s, "\t}}");
        }
        if let Some(f) = &forward {
            s.push_str(f);
        }
        let _ = writeln!(s, "}}");
        return s;
    }
    if rules.hide {
        let _ = writeln!(
            s,
            "table arp {t} {{\n\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
             \t\tarp operation request arp daddr ip {set} drop\n\t}}"
        );
        if let Some(IpAddr::V4(p)) = rules.primary {
            let _ = writeln!(
                s,
                "\tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
                 \t\tarp operation request arp saddr ip {set} arp saddr ip set {p}\n\
                 \t\tarp saddr ip {set} drop\n\t}}"
            );
        } else {
            let _ = writeln!(
                s,
                "\tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
                 \t\tarp saddr ip {set} drop\n\t}}"
            );
        }
        let _ = writeln!(s, "}}");
    }
    if let Some(f) = &forward {
        let _ = write!(s, "table ip {t} {{\n{f}}}\n");
    }
    s
}

/// An IPv6 address as the 128-bit number nft's raw payload match takes.
fn hex128(a: IpAddr) -> String {
    match a {
        IpAddr::V6(v) => format!("0x{:032x}", u128::from(v)),
        IpAddr::V4(v) => format!("0x{:08x}", u32::from(v)),
    }
}

/// An interface name as an nft string (names cannot hold quotes: the
/// config parser refuses spaces and slashes, the kernel quotes).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(hide: bool, forward: bool) -> GraceRules {
        GraceRules {
            vips: vec!["10.0.0.100".parse().unwrap(), "10.0.0.101".parse().unwrap()],
            primary: Some("10.0.0.2".parse().unwrap()),
            hide,
            forward: forward.then(|| Forward {
                to: "10.0.0.1".parse().unwrap(),
                device: "eth0".into(),
                mac: [2, 0, 0, 0, 0, 0xa1],
            }),
        }
    }

    #[test]
    fn names_keep_only_what_nft_takes() {
        assert_eq!(table_name("api-vip_1"), "lbd-handover-api-vip_1");
        assert_eq!(table_name("a.b c/d\"e"), "lbd-handover-a_b_c_d_e");
        assert!(table_name(&"x".repeat(300)).len() < 100);
    }

    #[test]
    fn the_empty_state_only_deletes_our_tables() {
        let s = render("api", false, &v4(false, false));
        assert_eq!(
            s,
            "add table arp lbd-handover-api\ndelete table arp lbd-handover-api\n\
             add table ip lbd-handover-api\ndelete table ip lbd-handover-api\n"
        );
        let s6 = render("api", true, &GraceRules::default());
        assert_eq!(
            s6,
            "add table ip6 lbd-handover-api\ndelete table ip6 lbd-handover-api\n"
        );
    }

    #[test]
    fn hiding_drops_arp_requests_for_the_vips_and_rewrites_our_own() {
        let s = render("api", false, &v4(true, false));
        assert!(s.contains("arp operation request arp daddr ip { 10.0.0.100, 10.0.0.101 } drop"));
        assert!(s.contains(
            "arp operation request arp saddr ip { 10.0.0.100, 10.0.0.101 } arp saddr ip set 10.0.0.2"
        ));
        assert!(
            !s.contains("table ip lbd-handover-api {"),
            "no forward table: {s}"
        );
        // The delete of both families comes first, then the definition.
        assert!(
            s.find("delete table ip lbd-handover-api").unwrap()
                < s.find("table arp lbd-handover-api {").unwrap()
        );
    }

    #[test]
    fn forwarding_sends_unknown_non_syn_packets_to_the_old_master_but_never_its_own() {
        let s = render("api", false, &v4(false, true));
        assert!(s.contains(
            "ip daddr { 10.0.0.100, 10.0.0.101 } tcp flags & syn == 0 ct state new ether saddr != 02:00:00:00:00:a1 dup to 10.0.0.1 device \"eth0\" drop"
        ), "{s}");
        assert!(!s.contains("table arp lbd-handover-api {"));
    }

    #[test]
    fn ipv6_hides_neighbour_discovery_and_forwards_to_the_link_local() {
        let r = GraceRules {
            vips: vec!["2001:db8::64".parse().unwrap()],
            primary: Some("fe80::2".parse().unwrap()),
            hide: true,
            forward: Some(Forward {
                to: "fe80::1".parse().unwrap(),
                device: "eth0".into(),
                mac: [2, 0, 0, 0, 0, 1],
            }),
        };
        let s = render("v6", true, &r);
        assert!(s.contains("icmpv6 type nd-neighbor-solicit @th,64,128 0x20010db8000000000000000000000064 drop"), "{s}");
        assert!(s.contains("ip6 saddr { 2001:db8::64 } drop"));
        assert!(s.contains("dup to fe80::1 device \"eth0\" drop"));
        assert!(!s.contains("arp"));
        // A VIP of the other family is not rendered into this one.
        let mixed = GraceRules {
            vips: vec!["10.0.0.1".parse().unwrap()],
            ..r
        };
        assert!(!render("v6", true, &mixed).contains("table ip6 lbd-handover-v6 {"));
    }
}
