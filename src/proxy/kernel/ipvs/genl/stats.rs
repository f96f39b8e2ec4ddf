//! IPVS_SVC_ATTR_STATS / IPVS_DEST_ATTR_STATS (and their STATS64 twins):
//! nested counters, IPVS_STATS_ATTR_* in linux/ip_vs.h.
//!
//! The 32-bit container (`Stats`) carries CONNS, packet counts and rates as
//! u32 and the two byte counters as u64; the 64-bit one (`Stats64`) carries
//! everything as u64. Values are held as u64 either way; an attribute whose
//! length does not match its container's width is kept as `Other` so that
//! re-emission is byte-exact and never grows the message.

use netlink_packet_core::{
    emit_u32, emit_u64, DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
};

const CONNS: u16 = 1;
const INPKTS: u16 = 2;
const OUTPKTS: u16 = 3;
const INBYTES: u16 = 4;
const OUTBYTES: u16 = 5;
const CPS: u16 = 6;
const INPPS: u16 = 7;
const OUTPPS: u16 = 8;
const INBPS: u16 = 9;
const OUTBPS: u16 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsAttr {
    Conns(u64),
    InPkts(u64),
    OutPkts(u64),
    InBytes(u64),
    OutBytes(u64),
    Cps(u64),
    InPps(u64),
    OutPps(u64),
    InBps(u64),
    OutBps(u64),
    /// Unknown kinds (e.g. IPVS_STATS_ATTR_PAD) or unexpected widths.
    Other(DefaultNla),
}

impl StatsAttr {
    fn kind_value(&self) -> Option<(u16, u64)> {
        use StatsAttr::*;
        Some(match self {
            Conns(v) => (CONNS, *v),
            InPkts(v) => (INPKTS, *v),
            OutPkts(v) => (OUTPKTS, *v),
            InBytes(v) => (INBYTES, *v),
            OutBytes(v) => (OUTBYTES, *v),
            Cps(v) => (CPS, *v),
            InPps(v) => (INPPS, *v),
            OutPps(v) => (OUTPPS, *v),
            InBps(v) => (INBPS, *v),
            OutBps(v) => (OUTBPS, *v),
            Other(_) => return None,
        })
    }
}

/// Width in bytes of a known counter in a container, or None for unknown.
fn width(kind: u16, wide: bool) -> Option<usize> {
    match kind {
        INBYTES | OUTBYTES => Some(8),
        CONNS | INPKTS | OUTPKTS | CPS | INPPS | OUTPPS | INBPS | OUTBPS => {
            Some(if wide { 8 } else { 4 })
        }
        _ => None,
    }
}

/// One counter bound to its container width, for emission.
struct StatsNla<'a> {
    attr: &'a StatsAttr,
    wide: bool,
}

impl Nla for StatsNla<'_> {
    fn value_len(&self) -> usize {
        match self.attr.kind_value() {
            Some((k, _)) => width(k, self.wide).unwrap_or(8),
            None => match self.attr {
                StatsAttr::Other(nla) => nla.value_len(),
                _ => 0,
            },
        }
    }

    fn kind(&self) -> u16 {
        match self.attr.kind_value() {
            Some((k, _)) => k,
            None => match self.attr {
                StatsAttr::Other(nla) => nla.kind(),
                _ => 0,
            },
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self.attr.kind_value() {
            Some((k, v)) => {
                // Emission into a buffer sized by value_len cannot fail; a
                // 32-bit counter holding more saturates as the kernel would.
                if width(k, self.wide) == Some(4) {
                    let _ = emit_u32(buffer, u32::try_from(v).unwrap_or(u32::MAX));
                } else {
                    let _ = emit_u64(buffer, v);
                }
            }
            None => {
                if let StatsAttr::Other(nla) = self.attr {
                    nla.emit_value(buffer)
                }
            }
        }
    }
}

pub(crate) fn stats_value_len(attrs: &[StatsAttr], wide: bool) -> usize {
    attrs
        .iter()
        .map(|attr| StatsNla { attr, wide }.buffer_len())
        .sum()
}

pub(crate) fn emit_stats(attrs: &[StatsAttr], wide: bool, buffer: &mut [u8]) {
    let mut off = 0;
    for attr in attrs {
        let nla = StatsNla { attr, wide };
        let len = nla.buffer_len();
        nla.emit(&mut buffer[off..off + len]);
        off += len;
    }
}

pub(crate) fn parse_stats(payload: &[u8], wide: bool) -> Result<Vec<StatsAttr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(payload) {
        let nla = nla?;
        out.push(parse_one(&nla, wide)?);
    }
    Ok(out)
}

fn parse_one(nla: &NlaBuffer<&[u8]>, wide: bool) -> Result<StatsAttr, DecodeError> {
    let kind = nla.kind();
    let value = nla.value();
    let known = width(kind, wide) == Some(value.len()) && !nla.nested_flag();
    if !known {
        return Ok(StatsAttr::Other(DefaultNla::parse(nla)?));
    }
    let v = match value.len() {
        4 => u64::from(u32::from_ne_bytes([value[0], value[1], value[2], value[3]])),
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(value);
            u64::from_ne_bytes(b)
        }
    };
    use StatsAttr::*;
    Ok(match kind {
        CONNS => Conns(v),
        INPKTS => InPkts(v),
        OUTPKTS => OutPkts(v),
        INBYTES => InBytes(v),
        OUTBYTES => OutBytes(v),
        CPS => Cps(v),
        INPPS => InPps(v),
        OUTPPS => OutPps(v),
        INBPS => InBps(v),
        _ => OutBps(v),
    })
}
