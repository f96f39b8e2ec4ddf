//! IPVS_CMD_ATTR_SERVICE: the nested service attributes (IPVS_SVC_ATTR_*).
//!
//! ```text
//!  AF u16 | PROTOCOL u16 | ADDR 16 bytes (IPv4 in the first 4) | PORT be16
//!  FWMARK u32 | SCHED_NAME nul-string | FLAGS {flags u32, mask u32}
//!  TIMEOUT u32 | NETMASK u32 (IPv4: be32 mask, IPv6: prefix length)
//!  STATS nested | PE_NAME nul-string | STATS64 nested
//! ```

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, parse_u16, parse_u16_be, parse_u32, DecodeError, DefaultNla,
    ErrorContext, Nla, NlaBuffer, Parseable,
};

use super::stats::{emit_stats, parse_stats, stats_value_len, StatsAttr};
use super::{emit_nul_string, parse_addr, parse_nul_string};

const AF: u16 = 1;
const PROTOCOL: u16 = 2;
const ADDR: u16 = 3;
const PORT: u16 = 4;
const FWMARK: u16 = 5;
const SCHED_NAME: u16 = 6;
const FLAGS: u16 = 7;
const TIMEOUT: u16 = 8;
const NETMASK: u16 = 9;
const STATS: u16 = 10;
const PE_NAME: u16 = 11;
const STATS64: u16 = 12;

/// `struct ip_vs_flags`: which bits to change (mask) and their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcFlags {
    pub flags: u32,
    pub mask: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SvcAttr {
    /// AF_INET (2) or AF_INET6 (10).
    Af(u16),
    /// IPPROTO_TCP/UDP/SCTP.
    Protocol(u16),
    /// Always 16 bytes on the wire (union nf_inet_addr).
    Addr([u8; 16]),
    /// Host order here, network order on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags(SvcFlags),
    /// Persistence timeout in seconds.
    Timeout(u32),
    /// Raw value as the kernel stores it; see module docs.
    Netmask(u32),
    Stats(Vec<StatsAttr>),
    PeName(String),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        use SvcAttr::*;
        match self {
            Af(_) | Protocol(_) | Port(_) => 2,
            Addr(_) => 16,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            SchedName(s) | PeName(s) => s.len() + 1,
            Flags(_) => 8,
            Stats(s) => stats_value_len(s, false),
            Stats64(s) => stats_value_len(s, true),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use SvcAttr::*;
        match self {
            Af(_) => AF,
            Protocol(_) => PROTOCOL,
            Addr(_) => ADDR,
            Port(_) => PORT,
            Fwmark(_) => FWMARK,
            SchedName(_) => SCHED_NAME,
            Flags(_) => FLAGS,
            Timeout(_) => TIMEOUT,
            Netmask(_) => NETMASK,
            Stats(_) => STATS,
            PeName(_) => PE_NAME,
            Stats64(_) => STATS64,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use SvcAttr::*;
        // The buffer is exactly value_len() long, so the emit_* calls cannot
        // fail; their Results are ignored rather than unwrapped.
        match self {
            Af(v) | Protocol(v) => {
                let _ = emit_u16(buffer, *v);
            }
            Addr(a) => buffer[..16].copy_from_slice(a),
            Port(p) => {
                let _ = emit_u16_be(buffer, *p);
            }
            Fwmark(v) | Timeout(v) | Netmask(v) => {
                let _ = emit_u32(buffer, *v);
            }
            SchedName(s) | PeName(s) => emit_nul_string(buffer, s),
            Flags(f) => {
                let _ = emit_u32(&mut buffer[..4], f.flags);
                let _ = emit_u32(&mut buffer[4..8], f.mask);
            }
            Stats(s) => emit_stats(s, false, buffer),
            Stats64(s) => emit_stats(s, true, buffer),
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        use SvcAttr::*;
        Ok(match buf.kind() {
            AF => Af(parse_u16(v).context("invalid IPVS_SVC_ATTR_AF")?),
            PROTOCOL => Protocol(parse_u16(v).context("invalid IPVS_SVC_ATTR_PROTOCOL")?),
            ADDR => Addr(parse_addr(v).context("invalid IPVS_SVC_ATTR_ADDR")?),
            PORT => Port(parse_u16_be(v).context("invalid IPVS_SVC_ATTR_PORT")?),
            FWMARK => Fwmark(parse_u32(v).context("invalid IPVS_SVC_ATTR_FWMARK")?),
            SCHED_NAME => {
                SchedName(parse_nul_string(v).context("invalid IPVS_SVC_ATTR_SCHED_NAME")?)
            }
            FLAGS => {
                if v.len() != 8 {
                    return Err(DecodeError::invalid_number(8, v.len()))
                        .context("invalid IPVS_SVC_ATTR_FLAGS");
                }
                Flags(SvcFlags {
                    flags: parse_u32(&v[..4])?,
                    mask: parse_u32(&v[4..])?,
                })
            }
            TIMEOUT => Timeout(parse_u32(v).context("invalid IPVS_SVC_ATTR_TIMEOUT")?),
            NETMASK => Netmask(parse_u32(v).context("invalid IPVS_SVC_ATTR_NETMASK")?),
            STATS => Stats(parse_stats(v, false).context("invalid IPVS_SVC_ATTR_STATS")?),
            PE_NAME => PeName(parse_nul_string(v).context("invalid IPVS_SVC_ATTR_PE_NAME")?),
            STATS64 => Stats64(parse_stats(v, true).context("invalid IPVS_SVC_ATTR_STATS64")?),
            _ => Other(DefaultNla::parse(buf)?),
        })
    }
}
