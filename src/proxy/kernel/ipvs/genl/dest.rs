//! IPVS_CMD_ATTR_DEST: the nested real-server attributes (IPVS_DEST_ATTR_*).
//!
//! ```text
//!  ADDR 16 bytes | PORT be16 | FWD_METHOD u32 | WEIGHT u32
//!  U_THRESH u32 | L_THRESH u32 | ACTIVE_CONNS u32 | INACT_CONNS u32
//!  PERSIST_CONNS u32 | STATS nested | ADDR_FAMILY u16 | STATS64 nested
//!  TUN_TYPE u8 | TUN_PORT be16 | TUN_FLAGS u16
//! ```

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, parse_u16, parse_u16_be, parse_u32, parse_u8, DecodeError,
    DefaultNla, ErrorContext, Nla, NlaBuffer, Parseable,
};

use super::parse_addr;
use super::stats::{emit_stats, parse_stats, stats_value_len, StatsAttr};

const ADDR: u16 = 1;
const PORT: u16 = 2;
const FWD_METHOD: u16 = 3;
const WEIGHT: u16 = 4;
const U_THRESH: u16 = 5;
const L_THRESH: u16 = 6;
const ACTIVE_CONNS: u16 = 7;
const INACT_CONNS: u16 = 8;
const PERSIST_CONNS: u16 = 9;
const STATS: u16 = 10;
const ADDR_FAMILY: u16 = 11;
const STATS64: u16 = 12;
const TUN_TYPE: u16 = 13;
const TUN_PORT: u16 = 14;
const TUN_FLAGS: u16 = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestAttr {
    Addr([u8; 16]),
    /// Host order here, network order on the wire.
    Port(u16),
    /// IP_VS_CONN_F_* forwarding method (MASQ 0, LOCALNODE 1, TUNNEL 2, DROUTE 3).
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    /// Family of the destination address, when it may differ from the service's.
    AddrFamily(u16),
    Stats64(Vec<StatsAttr>),
    TunType(u8),
    /// Host order here, network order on the wire.
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        use DestAttr::*;
        match self {
            Addr(_) => 16,
            Port(_) | AddrFamily(_) | TunPort(_) | TunFlags(_) => 2,
            TunType(_) => 1,
            FwdMethod(_) | Weight(_) | UThresh(_) | LThresh(_) | ActiveConns(_) | InactConns(_)
            | PersistConns(_) => 4,
            Stats(s) => stats_value_len(s, false),
            Stats64(s) => stats_value_len(s, true),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use DestAttr::*;
        match self {
            Addr(_) => ADDR,
            Port(_) => PORT,
            FwdMethod(_) => FWD_METHOD,
            Weight(_) => WEIGHT,
            UThresh(_) => U_THRESH,
            LThresh(_) => L_THRESH,
            ActiveConns(_) => ACTIVE_CONNS,
            InactConns(_) => INACT_CONNS,
            PersistConns(_) => PERSIST_CONNS,
            Stats(_) => STATS,
            AddrFamily(_) => ADDR_FAMILY,
            Stats64(_) => STATS64,
            TunType(_) => TUN_TYPE,
            TunPort(_) => TUN_PORT,
            TunFlags(_) => TUN_FLAGS,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use DestAttr::*;
        // Buffers are exactly value_len() long: the emit_* Results are Ok.
        match self {
            Addr(a) => buffer[..16].copy_from_slice(a),
            Port(p) | TunPort(p) => {
                let _ = emit_u16_be(buffer, *p);
            }
            AddrFamily(v) | TunFlags(v) => {
                let _ = emit_u16(buffer, *v);
            }
            TunType(v) => buffer[0] = *v,
            FwdMethod(v) | Weight(v) | UThresh(v) | LThresh(v) | ActiveConns(v) | InactConns(v)
            | PersistConns(v) => {
                let _ = emit_u32(buffer, *v);
            }
            Stats(s) => emit_stats(s, false, buffer),
            Stats64(s) => emit_stats(s, true, buffer),
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        use DestAttr::*;
        Ok(match buf.kind() {
            ADDR => Addr(parse_addr(v).context("invalid IPVS_DEST_ATTR_ADDR")?),
            PORT => Port(parse_u16_be(v).context("invalid IPVS_DEST_ATTR_PORT")?),
            FWD_METHOD => FwdMethod(parse_u32(v).context("invalid IPVS_DEST_ATTR_FWD_METHOD")?),
            WEIGHT => Weight(parse_u32(v).context("invalid IPVS_DEST_ATTR_WEIGHT")?),
            U_THRESH => UThresh(parse_u32(v).context("invalid IPVS_DEST_ATTR_U_THRESH")?),
            L_THRESH => LThresh(parse_u32(v).context("invalid IPVS_DEST_ATTR_L_THRESH")?),
            ACTIVE_CONNS => {
                ActiveConns(parse_u32(v).context("invalid IPVS_DEST_ATTR_ACTIVE_CONNS")?)
            }
            INACT_CONNS => InactConns(parse_u32(v).context("invalid IPVS_DEST_ATTR_INACT_CONNS")?),
            PERSIST_CONNS => {
                PersistConns(parse_u32(v).context("invalid IPVS_DEST_ATTR_PERSIST_CONNS")?)
            }
            STATS => Stats(parse_stats(v, false).context("invalid IPVS_DEST_ATTR_STATS")?),
            ADDR_FAMILY => AddrFamily(parse_u16(v).context("invalid IPVS_DEST_ATTR_ADDR_FAMILY")?),
            STATS64 => Stats64(parse_stats(v, true).context("invalid IPVS_DEST_ATTR_STATS64")?),
            TUN_TYPE => TunType(parse_u8(v).context("invalid IPVS_DEST_ATTR_TUN_TYPE")?),
            TUN_PORT => TunPort(parse_u16_be(v).context("invalid IPVS_DEST_ATTR_TUN_PORT")?),
            TUN_FLAGS => TunFlags(parse_u16(v).context("invalid IPVS_DEST_ATTR_TUN_FLAGS")?),
            _ => Other(DefaultNla::parse(buf)?),
        })
    }
}
