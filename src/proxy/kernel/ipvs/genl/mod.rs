//! Codec for the generic netlink family "IPVS" (linux/ip_vs.h), pure bytes in
//! and out, on netlink-packet-generic: [`IpvsMessage`] is the genl payload
//! (`GenlMessage<IpvsMessage>`), shaped like that crate's `ctrl` module.
//!
//! ```text
//!  nlmsghdr (16) | genlmsghdr {cmd u8, version u8 = 1, reserved u16} | attrs
//!  attrs: SERVICE {IPVS_SVC_ATTR_*} | DEST {IPVS_DEST_ATTR_*} | DAEMON {..}
//!         | TIMEOUT_TCP u32 | TIMEOUT_TCP_FIN u32 | TIMEOUT_UDP u32
//!  GET_INFO's reply (cmd SET_INFO) reuses numbers 1 and 2 for
//!         INFO_ATTR_VERSION u32 | INFO_ATTR_CONN_TAB_SIZE u32
//! ```
//! Nested attributes are sent without NLA_F_NESTED, as the kernel and
//! ipvsadm both do. Unknown attributes survive decode and re-emit as
//! `Other(DefaultNla)`. The request builders reproduce ipvsadm 1.31's
//! requests attribute for attribute (checked against the captured bytes in
//! tests/ipvs_genl.rs), and the `*_from_attrs` functions turn kernel replies
//! into the model types.

mod dest;
mod service;
mod stats;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    emit_u32, parse_u32, DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer,
    NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

pub use dest::DestAttr;
pub use service::{SvcAttr, SvcFlags};
pub use stats::StatsAttr;

use crate::proxy::model::{
    full_prefix, DestKey, FwdMethod, IpvsInfo, Protocol, RealServer, ServiceFlags, ServiceKey,
    Timeouts, VirtualServer,
};

/// Registered name of the family (IPVS_GENL_NAME).
pub const IPVS_GENL_NAME: &str = "IPVS";
/// IPVS_GENL_VERSION.
pub const IPVS_GENL_VERSION: u8 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// IPVS_CMD_*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    NewDaemon,
    DelDaemon,
    GetDaemon,
    SetConfig,
    GetConfig,
    /// Only the reply to GET_INFO.
    SetInfo,
    GetInfo,
    Zero,
    /// Flushes every service: never sent by lbd, decodable for captures.
    Flush,
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(c: IpvsCmd) -> u8 {
        use IpvsCmd::*;
        match c {
            NewService => 1,
            SetService => 2,
            DelService => 3,
            GetService => 4,
            NewDest => 5,
            SetDest => 6,
            DelDest => 7,
            GetDest => 8,
            NewDaemon => 9,
            DelDaemon => 10,
            GetDaemon => 11,
            SetConfig => 12,
            GetConfig => 13,
            SetInfo => 14,
            GetInfo => 15,
            Zero => 16,
            Flush => 17,
            Other(v) => v,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(v: u8) -> Self {
        use IpvsCmd::*;
        match v {
            1 => NewService,
            2 => SetService,
            3 => DelService,
            4 => GetService,
            5 => NewDest,
            6 => SetDest,
            7 => DelDest,
            8 => GetDest,
            9 => NewDaemon,
            10 => DelDaemon,
            11 => GetDaemon,
            12 => SetConfig,
            13 => GetConfig,
            14 => SetInfo,
            15 => GetInfo,
            16 => Zero,
            17 => Flush,
            v => Other(v),
        }
    }
}

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_DAEMON: u16 = 3;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;
const INFO_ATTR_VERSION: u16 = 1;
const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// Top-level attributes (IPVS_CMD_ATTR_*, or IPVS_INFO_ATTR_* in a
/// SET_INFO/GET_INFO message).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpvsAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    /// Sync-daemon attributes: lbd does not run the sync daemon.
    Daemon(Vec<DefaultNla>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    InfoVersion(u32),
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

fn nested_len<T: Nla>(attrs: &[T]) -> usize {
    attrs.iter().map(|a| a.buffer_len()).sum()
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        use IpvsAttr::*;
        match self {
            Service(a) => nested_len(a),
            Dest(a) => nested_len(a),
            Daemon(a) => nested_len(a),
            TimeoutTcp(_) | TimeoutTcpFin(_) | TimeoutUdp(_) | InfoVersion(_)
            | InfoConnTabSize(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsAttr::*;
        match self {
            Service(_) => CMD_ATTR_SERVICE,
            Dest(_) => CMD_ATTR_DEST,
            Daemon(_) => CMD_ATTR_DAEMON,
            TimeoutTcp(_) => CMD_ATTR_TIMEOUT_TCP,
            TimeoutTcpFin(_) => CMD_ATTR_TIMEOUT_TCP_FIN,
            TimeoutUdp(_) => CMD_ATTR_TIMEOUT_UDP,
            InfoVersion(_) => INFO_ATTR_VERSION,
            InfoConnTabSize(_) => INFO_ATTR_CONN_TAB_SIZE,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use IpvsAttr::*;
        match self {
            Service(a) => a.as_slice().emit(buffer),
            Dest(a) => a.as_slice().emit(buffer),
            Daemon(a) => a.as_slice().emit(buffer),
            TimeoutTcp(v) | TimeoutTcpFin(v) | TimeoutUdp(v) | InfoVersion(v)
            | InfoConnTabSize(v) => {
                let _ = emit_u32(buffer, *v);
            }
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

fn parse_nested<T>(payload: &[u8]) -> Result<Vec<T>, DecodeError>
where
    T: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    let mut out = Vec::new();
    for nla in NlasIterator::new(payload) {
        out.push(T::parse(&nla?)?);
    }
    Ok(out)
}

impl IpvsAttr {
    fn parse_in(buf: &NlaBuffer<&[u8]>, info: bool) -> Result<Self, DecodeError> {
        let v = buf.value();
        use IpvsAttr::*;
        Ok(match (info, buf.kind()) {
            (true, INFO_ATTR_VERSION) => {
                InfoVersion(parse_u32(v).context("invalid IPVS_INFO_ATTR_VERSION")?)
            }
            (true, INFO_ATTR_CONN_TAB_SIZE) => {
                InfoConnTabSize(parse_u32(v).context("invalid IPVS_INFO_ATTR_CONN_TAB_SIZE")?)
            }
            (false, CMD_ATTR_SERVICE) => {
                Service(parse_nested(v).context("invalid IPVS_CMD_ATTR_SERVICE")?)
            }
            (false, CMD_ATTR_DEST) => Dest(parse_nested(v).context("invalid IPVS_CMD_ATTR_DEST")?),
            (false, CMD_ATTR_DAEMON) => {
                Daemon(parse_nested(v).context("invalid IPVS_CMD_ATTR_DAEMON")?)
            }
            (false, CMD_ATTR_TIMEOUT_TCP) => {
                TimeoutTcp(parse_u32(v).context("invalid TIMEOUT_TCP")?)
            }
            (false, CMD_ATTR_TIMEOUT_TCP_FIN) => {
                TimeoutTcpFin(parse_u32(v).context("invalid TIMEOUT_TCP_FIN")?)
            }
            (false, CMD_ATTR_TIMEOUT_UDP) => {
                TimeoutUdp(parse_u32(v).context("invalid TIMEOUT_UDP")?)
            }
            _ => Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The payload of one IPVS generic netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<IpvsAttr>,
    /// Whether the top-level nests (SERVICE, DEST, DAEMON) carry
    /// NLA_F_NESTED. libnl (ipvsadm) sets it and so do our request builders;
    /// the kernel's IPVS replies do not. Decoding records what the message
    /// carried so that re-emission is byte-exact.
    pub nested_flag: bool,
}

/// A top-level attribute bound to its message's NLA_F_NESTED choice.
struct AttrNla<'a> {
    attr: &'a IpvsAttr,
    nested_flag: bool,
}

impl Nla for AttrNla<'_> {
    fn value_len(&self) -> usize {
        self.attr.value_len()
    }

    fn kind(&self) -> u16 {
        let nest = matches!(
            self.attr,
            IpvsAttr::Service(_) | IpvsAttr::Dest(_) | IpvsAttr::Daemon(_)
        );
        if nest && self.nested_flag {
            self.attr.kind() | NLA_F_NESTED
        } else {
            self.attr.kind()
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        self.attr.emit_value(buffer)
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        let mut off = 0;
        for attr in &self.attrs {
            let nla = AttrNla {
                attr,
                nested_flag: self.nested_flag,
            };
            let len = nla.buffer_len();
            nla.emit(&mut buffer[off..off + len]);
            off += len;
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from(header.cmd);
        let info = matches!(cmd, IpvsCmd::SetInfo | IpvsCmd::GetInfo);
        let mut attrs = Vec::new();
        let mut nested_flag = None;
        for nla in NlasIterator::new(buf) {
            let nla = nla.context("invalid IPVS attribute")?;
            let attr = IpvsAttr::parse_in(&nla, info)?;
            if matches!(
                attr,
                IpvsAttr::Service(_) | IpvsAttr::Dest(_) | IpvsAttr::Daemon(_)
            ) {
                nested_flag.get_or_insert(nla.nested_flag());
            }
            attrs.push(attr);
        }
        Ok(IpvsMessage {
            cmd,
            attrs,
            // Without nests the flag means nothing; default as `new` does.
            nested_flag: nested_flag.unwrap_or(true),
        })
    }
}

// ---------------------------------------------------------------- helpers --

pub(crate) fn parse_addr(v: &[u8]) -> Result<[u8; 16], DecodeError> {
    <[u8; 16]>::try_from(v).map_err(|_| DecodeError::invalid_ip_address(v.len()))
}

/// NLA_NUL_STRING: the kernel's policy requires the terminating NUL, and
/// requiring it here keeps re-emission byte-exact.
pub(crate) fn parse_nul_string(v: &[u8]) -> Result<String, DecodeError> {
    match v.split_last() {
        Some((0, s)) => Ok(String::from_utf8(s.to_vec())?),
        _ => Err(DecodeError::from("string without terminating NUL")),
    }
}

pub(crate) fn emit_nul_string(buffer: &mut [u8], s: &str) {
    buffer[..s.len()].copy_from_slice(s.as_bytes());
    buffer[s.len()] = 0;
}

fn raw_addr(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn af_of(addr: IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn ip_from_raw(af: u16, raw: &[u8; 16]) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

/// IPv4: a be32 mask read as a native u32; IPv6: the prefix length.
fn netmask_raw(addr: IpAddr, prefix: u8) -> u32 {
    match addr {
        IpAddr::V4(_) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from_ne_bytes(mask.to_be_bytes())
        }
        IpAddr::V6(_) => u32::from(prefix.min(128)),
    }
}

fn netmask_prefix(addr: IpAddr, raw: u32) -> u8 {
    match addr {
        IpAddr::V4(_) => u32::from_be_bytes(raw.to_ne_bytes()).leading_ones() as u8,
        IpAddr::V6(_) => raw.min(128) as u8,
    }
}

// --------------------------------------------------------------- requests --

impl IpvsMessage {
    /// A request: nests flagged NLA_F_NESTED, as libnl sends them.
    pub fn new(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> Self {
        IpvsMessage {
            cmd,
            attrs,
            nested_flag: true,
        }
    }

    /// NEW_SERVICE with the full configuration.
    pub fn new_service(vs: &VirtualServer) -> Self {
        Self::new(
            IpvsCmd::NewService,
            vec![IpvsAttr::Service(service_attrs(vs))],
        )
    }

    /// SET_SERVICE: replaces scheduler, flags, timeout and netmask.
    pub fn set_service(vs: &VirtualServer) -> Self {
        Self::new(
            IpvsCmd::SetService,
            vec![IpvsAttr::Service(service_attrs(vs))],
        )
    }

    pub fn del_service(svc: &ServiceKey) -> Self {
        Self::new(
            IpvsCmd::DelService,
            vec![IpvsAttr::Service(service_ref_attrs(svc))],
        )
    }

    /// Dump request (send with NLM_F_DUMP).
    pub fn get_services() -> Self {
        Self::new(IpvsCmd::GetService, vec![])
    }

    pub fn new_dest(svc: &ServiceKey, rs: &RealServer) -> Self {
        Self::new(
            IpvsCmd::NewDest,
            vec![
                IpvsAttr::Service(service_ref_attrs(svc)),
                IpvsAttr::Dest(dest_attrs(rs)),
            ],
        )
    }

    pub fn set_dest(svc: &ServiceKey, rs: &RealServer) -> Self {
        Self::new(
            IpvsCmd::SetDest,
            vec![
                IpvsAttr::Service(service_ref_attrs(svc)),
                IpvsAttr::Dest(dest_attrs(rs)),
            ],
        )
    }

    /// The kernel matches the destination on address and port only; the rest
    /// is what `ipvsadm -d` sends (direct routing, weight 1).
    pub fn del_dest(svc: &ServiceKey, dest: &DestKey) -> Self {
        let mut rs = RealServer::new(dest.addr, dest.port, 1);
        rs.fwd = FwdMethod::Route;
        Self::new(
            IpvsCmd::DelDest,
            vec![
                IpvsAttr::Service(service_ref_attrs(svc)),
                IpvsAttr::Dest(dest_attrs(&rs)),
            ],
        )
    }

    /// Dump request for one service's destinations (send with NLM_F_DUMP).
    pub fn get_dests(svc: &ServiceKey) -> Self {
        Self::new(
            IpvsCmd::GetDest,
            vec![IpvsAttr::Service(service_key_attrs(svc))],
        )
    }

    pub fn set_config(t: &Timeouts) -> Self {
        Self::new(
            IpvsCmd::SetConfig,
            vec![
                IpvsAttr::TimeoutTcp(t.tcp),
                IpvsAttr::TimeoutTcpFin(t.tcp_fin),
                IpvsAttr::TimeoutUdp(t.udp),
            ],
        )
    }

    pub fn get_config() -> Self {
        Self::new(IpvsCmd::GetConfig, vec![])
    }

    pub fn get_info() -> Self {
        Self::new(IpvsCmd::GetInfo, vec![])
    }
}

/// Identity only, as ipvsadm sends it in GET_DEST.
pub fn service_key_attrs(svc: &ServiceKey) -> Vec<SvcAttr> {
    vec![
        SvcAttr::Af(af_of(svc.addr)),
        SvcAttr::Protocol(svc.protocol.number()),
        SvcAttr::Addr(raw_addr(svc.addr)),
        SvcAttr::Port(svc.port),
    ]
}

/// A reference to an existing service (DEL_SERVICE, *_DEST): identity plus
/// the neutral values ipvsadm fills in, which the kernel ignores there.
pub fn service_ref_attrs(svc: &ServiceKey) -> Vec<SvcAttr> {
    let mut a = service_key_attrs(svc);
    a.extend([
        SvcAttr::SchedName(String::new()),
        SvcAttr::Flags(SvcFlags {
            flags: 0,
            mask: u32::MAX,
        }),
        SvcAttr::Timeout(0),
        SvcAttr::Netmask(netmask_raw(svc.addr, full_prefix(svc.addr))),
    ]);
    a
}

/// The full service configuration (NEW/SET_SERVICE). The mask covers every
/// bit, so a SET clears flags lbd did not ask for (HASHED is kernel-owned and
/// ignored by the kernel).
pub fn service_attrs(vs: &VirtualServer) -> Vec<SvcAttr> {
    let mut flags = vs.flags.0 & ServiceFlags::SETTABLE;
    if vs.persistent.is_some() {
        flags |= ServiceFlags::PERSISTENT;
    }
    let mut a = service_key_attrs(&vs.key());
    a.extend([
        SvcAttr::SchedName(vs.scheduler.clone()),
        SvcAttr::Flags(SvcFlags {
            flags,
            mask: u32::MAX,
        }),
        SvcAttr::Timeout(vs.persistent.unwrap_or(0)),
        SvcAttr::Netmask(netmask_raw(vs.addr, vs.netmask)),
    ]);
    a
}

/// Destination attributes in ipvsadm's order. ADDR_FAMILY lets an IPv6
/// tunnel destination sit behind an IPv4 service; TUN_* are the kernel's
/// defaults (IPIP, no port, no checksum flags).
pub fn dest_attrs(rs: &RealServer) -> Vec<DestAttr> {
    vec![
        DestAttr::AddrFamily(af_of(rs.addr)),
        DestAttr::Addr(raw_addr(rs.addr)),
        DestAttr::Port(rs.port),
        DestAttr::FwdMethod(rs.fwd.to_raw()),
        DestAttr::Weight(rs.weight),
        DestAttr::TunType(0),
        DestAttr::TunPort(0),
        DestAttr::TunFlags(0),
        DestAttr::UThresh(rs.u_threshold),
        DestAttr::LThresh(rs.l_threshold),
    ]
}

// ---------------------------------------------------------------- replies --

/// Why a kernel reply could not be turned into model values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("missing attribute {0}")]
    Missing(&'static str),
    #[error("unknown address family {0}")]
    Family(u16),
}

/// Result of reading one service from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEntry {
    /// A TCP/UDP/SCTP service lbd can model.
    Service(VirtualServer),
    /// A firewall-mark service or another protocol: reported so callers can
    /// count it, never touched.
    Unmodelled,
}

/// A service as the kernel describes it in a GET_SERVICE dump.
pub fn service_from_attrs(attrs: &[SvcAttr]) -> Result<ServiceEntry, ConvertError> {
    let (mut af, mut proto, mut addr, mut port, mut fwmark) = (None, None, None, None, None);
    let (mut sched, mut flags, mut timeout, mut netmask) = (None, None, None, None);
    for a in attrs {
        match a {
            SvcAttr::Af(v) => af = Some(*v),
            SvcAttr::Protocol(v) => proto = Some(*v),
            SvcAttr::Addr(v) => addr = Some(*v),
            SvcAttr::Port(v) => port = Some(*v),
            SvcAttr::Fwmark(v) => fwmark = Some(*v),
            SvcAttr::SchedName(v) => sched = Some(v.clone()),
            SvcAttr::Flags(v) => flags = Some(v.flags),
            SvcAttr::Timeout(v) => timeout = Some(*v),
            SvcAttr::Netmask(v) => netmask = Some(*v),
            _ => {}
        }
    }
    let af = af.ok_or(ConvertError::Missing("IPVS_SVC_ATTR_AF"))?;
    if fwmark.is_some_and(|m| m != 0) {
        return Ok(ServiceEntry::Unmodelled);
    }
    let Some(protocol) = proto.and_then(Protocol::from_number) else {
        return Ok(ServiceEntry::Unmodelled);
    };
    let raw = addr.ok_or(ConvertError::Missing("IPVS_SVC_ATTR_ADDR"))?;
    let addr = ip_from_raw(af, &raw).ok_or(ConvertError::Family(af))?;
    let port = port.ok_or(ConvertError::Missing("IPVS_SVC_ATTR_PORT"))?;
    let flags = flags.ok_or(ConvertError::Missing("IPVS_SVC_ATTR_FLAGS"))?;
    Ok(ServiceEntry::Service(VirtualServer {
        addr,
        port,
        protocol,
        scheduler: sched.ok_or(ConvertError::Missing("IPVS_SVC_ATTR_SCHED_NAME"))?,
        persistent: (flags & ServiceFlags::PERSISTENT != 0).then(|| timeout.unwrap_or(0)),
        netmask: netmask.map_or(full_prefix(addr), |n| netmask_prefix(addr, n)),
        flags: ServiceFlags(flags & !(ServiceFlags::PERSISTENT | ServiceFlags::HASHED)),
    }))
}

/// A destination from a GET_DEST dump; `svc_af` is used when the kernel
/// (before Linux 4.x) sends no IPVS_DEST_ATTR_ADDR_FAMILY.
pub fn dest_from_attrs(attrs: &[DestAttr], svc_af: u16) -> Result<RealServer, ConvertError> {
    let mut af = svc_af;
    let (mut addr, mut port, mut fwd, mut weight) = (None, None, None, None);
    let mut rs = RealServer::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0);
    for a in attrs {
        match a {
            DestAttr::AddrFamily(v) => af = *v,
            DestAttr::Addr(v) => addr = Some(*v),
            DestAttr::Port(v) => port = Some(*v),
            DestAttr::FwdMethod(v) => fwd = Some(*v),
            DestAttr::Weight(v) => weight = Some(*v),
            DestAttr::UThresh(v) => rs.u_threshold = *v,
            DestAttr::LThresh(v) => rs.l_threshold = *v,
            DestAttr::ActiveConns(v) => rs.active_conns = *v,
            DestAttr::InactConns(v) => rs.inactive_conns = *v,
            DestAttr::PersistConns(v) => rs.persist_conns = *v,
            _ => {}
        }
    }
    let raw = addr.ok_or(ConvertError::Missing("IPVS_DEST_ATTR_ADDR"))?;
    rs.addr = ip_from_raw(af, &raw).ok_or(ConvertError::Family(af))?;
    rs.port = port.ok_or(ConvertError::Missing("IPVS_DEST_ATTR_PORT"))?;
    let fwd = fwd.ok_or(ConvertError::Missing("IPVS_DEST_ATTR_FWD_METHOD"))?;
    rs.fwd = FwdMethod::from_raw(fwd).unwrap_or(FwdMethod::Masq);
    rs.weight = weight.ok_or(ConvertError::Missing("IPVS_DEST_ATTR_WEIGHT"))?;
    Ok(rs)
}

/// The address family of a service's attribute list (for its dests).
pub fn service_af(attrs: &[SvcAttr]) -> Option<u16> {
    attrs.iter().find_map(|a| match a {
        SvcAttr::Af(v) => Some(*v),
        _ => None,
    })
}

/// GET_CONFIG's reply.
pub fn timeouts_from_attrs(attrs: &[IpvsAttr]) -> Timeouts {
    let mut t = Timeouts::default();
    for a in attrs {
        match a {
            IpvsAttr::TimeoutTcp(v) => t.tcp = *v,
            IpvsAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
            IpvsAttr::TimeoutUdp(v) => t.udp = *v,
            _ => {}
        }
    }
    t
}

/// GET_INFO's reply.
pub fn info_from_attrs(attrs: &[IpvsAttr]) -> Result<IpvsInfo, ConvertError> {
    let mut version = None;
    let mut size = None;
    for a in attrs {
        match a {
            IpvsAttr::InfoVersion(v) => version = Some(*v),
            IpvsAttr::InfoConnTabSize(v) => size = Some(*v),
            _ => {}
        }
    }
    Ok(IpvsInfo {
        version: version.ok_or(ConvertError::Missing("IPVS_INFO_ATTR_VERSION"))?,
        conn_table_size: size.ok_or(ConvertError::Missing("IPVS_INFO_ATTR_CONN_TAB_SIZE"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_conversions() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        for p in [0u8, 1, 24, 32] {
            assert_eq!(netmask_prefix(v4, netmask_raw(v4, p)), p);
        }
        assert_eq!(netmask_raw(v4, 32), u32::MAX);
        assert_eq!(netmask_raw(v4, 24).to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(netmask_raw(v6, 128), 128);
        assert_eq!(netmask_prefix(v6, 64), 64);
    }

    #[test]
    fn service_round_trips_through_attrs() {
        let mut vs = VirtualServer::new("fd00::1".parse().unwrap(), 53, Protocol::Udp, "sh");
        vs.persistent = Some(10800);
        vs.netmask = 64;
        vs.flags = ServiceFlags(ServiceFlags::SCHED1);
        let attrs = service_attrs(&vs);
        assert_eq!(service_from_attrs(&attrs), Ok(ServiceEntry::Service(vs)));
    }

    #[test]
    fn fwmark_service_is_unmodelled() {
        let attrs = vec![
            SvcAttr::Af(AF_INET),
            SvcAttr::Fwmark(7),
            SvcAttr::SchedName("rr".into()),
            SvcAttr::Flags(SvcFlags { flags: 2, mask: !0 }),
        ];
        assert_eq!(service_from_attrs(&attrs), Ok(ServiceEntry::Unmodelled));
    }

    #[test]
    fn dest_round_trips_through_attrs() {
        let mut rs = RealServer::new("fd00::2".parse().unwrap(), 8080, 3);
        rs.fwd = FwdMethod::Tunnel;
        rs.u_threshold = 10;
        rs.l_threshold = 5;
        assert_eq!(dest_from_attrs(&dest_attrs(&rs), AF_INET), Ok(rs));
    }

    fn round_trip(m: &IpvsMessage) -> (Vec<u8>, IpvsMessage) {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        let hdr = GenlHeader {
            cmd: m.cmd.into(),
            version: 1,
        };
        let back = IpvsMessage::parse_with_param(&b, hdr).unwrap();
        (b, back)
    }

    #[test]
    fn stats_widths_follow_their_container() {
        let counters = vec![
            StatsAttr::Conns(7),
            StatsAttr::InBytes(1 << 40),
            StatsAttr::Other(DefaultNla::new(11, vec![0; 4])), // IPVS_STATS_ATTR_PAD
        ];
        let m = IpvsMessage::new(
            IpvsCmd::NewService,
            vec![IpvsAttr::Service(vec![
                SvcAttr::Stats(counters.clone()),
                SvcAttr::Stats64(counters.clone()),
            ])],
        );
        let (bytes, back) = round_trip(&m);
        assert_eq!(back, m);
        // service nest 4 + STATS (4 + 8 conns + 12 bytes + 8 pad)
        //                + STATS64 (4 + 12 conns + 12 bytes + 8 pad)
        assert_eq!(bytes.len(), 4 + 32 + 36);
        assert_eq!(
            &bytes[8..16],
            &[8, 0, 1, 0, 7, 0, 0, 0],
            "u32 CONNS in STATS"
        );
        assert_eq!(
            &bytes[40..52],
            &[12, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0],
            "u64 in STATS64"
        );
        // A counter of the wrong width survives as Other.
        let odd = [12u8, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            &stats::parse_stats(&odd, false).unwrap()[..],
            [StatsAttr::Other(_)]
        ));
    }

    #[test]
    fn info_numbers_depend_on_the_command() {
        let info = IpvsMessage::new(
            IpvsCmd::SetInfo,
            vec![
                IpvsAttr::InfoVersion(0x010201),
                IpvsAttr::InfoConnTabSize(4096),
            ],
        );
        assert_eq!(round_trip(&info).1, info);
        let flush = IpvsMessage::new(IpvsCmd::Flush, vec![]);
        assert_eq!(round_trip(&flush).1.cmd, IpvsCmd::Flush);
        let unknown = IpvsMessage::new(
            IpvsCmd::Other(99),
            vec![IpvsAttr::Other(DefaultNla::new(42, vec![1, 2, 3]))],
        );
        assert_eq!(round_trip(&unknown).1, unknown);
    }

    #[test]
    fn strings_need_their_nul() {
        assert!(parse_nul_string(b"rr").is_err());
        assert!(parse_nul_string(b"").is_err());
        assert_eq!(parse_nul_string(b"rr\0").unwrap(), "rr");
    }
}
