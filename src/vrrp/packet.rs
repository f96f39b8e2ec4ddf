//! VRRP advertisement codec: version 3 (RFC 5798 sec 5) for IPv4 and IPv6 and
//! version 2 (RFC 3768 sec 5) for IPv4, with keepalived's PASS authentication.
//!
//! Pure: bytes in, values out. `decode` never panics, whatever the input; it
//! returns a [`DecodeError`] whose [`DropReason`] labels
//! `lbd_vrrp_adverts_dropped_total{reason}`.
//!
//! The codec works on the VRRP message only (the payload after the IP
//! header). An IPv4 raw socket hands over whole datagrams: [`split_ipv4`]
//! takes the header off and yields the [`RxContext`] the checks need. IPv6 raw
//! sockets never return the header; the driver reads the hop limit from the
//! `IPV6_HOPLIMIT` control message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{VrrpInstanceConfig, VrrpVersion};

/// IP protocol number of VRRP (RFC 5798 sec 5.1.1.4, RFC 3768 sec 5.2.4).
pub const IPPROTO_VRRP: u8 = 112;
/// The only VRRP message type: ADVERTISEMENT (RFC 5798 sec 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// TTL / hop limit every VRRP packet is sent with and must arrive with
/// (RFC 5798 sec 5.1.1.3 and 7.1).
pub const TTL: u8 = 255;
/// IPv4 multicast group (RFC 5798 sec 5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group (RFC 5798 sec 5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Length of the v2 authentication data (RFC 3768 sec 5.3.10).
pub const AUTH_DATA_LEN: usize = 8;
/// Largest v3 Max Adver Int: the field is 12 bits of centiseconds.
pub const MAX_ADVERT_INTERVAL_CS: u16 = 0x0fff;

const HEADER_LEN: usize = 8;

crate::label::label_enum! {
    /// Protocol version of a virtual router: the one VRRP version type. The
    /// config file's `version: 2|3` arrives as [`VrrpVersion`] and is turned
    /// into this by the one `From` below; status shows [`Version::number`].
    pub enum Version {
        /// RFC 3768, IPv4 only, interval in seconds, optional PASS auth.
        V2 => "v2",
        /// RFC 5798, IPv4 or IPv6, interval in centiseconds.
        V3 => "v3",
    }
}

impl Version {
    /// The number in the Version field (and in the config file, and in
    /// `lbd status`).
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    /// The version whose number this is, if lbd speaks it.
    pub fn from_number(n: u8) -> Option<Version> {
        match n {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }
}

impl From<VrrpVersion> for Version {
    fn from(v: VrrpVersion) -> Self {
        match v {
            VrrpVersion::V2 => Version::V2,
            VrrpVersion::V3 => Version::V3,
        }
    }
}

/// v2 authentication (RFC 3768 sec 5.3.6). v3 has none (RFC 5798 sec 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Auth Type 0. The 8 data bytes are sent as zeros and ignored on receipt.
    None,
    /// Auth Type 1, keepalived's `auth_type PASS`: the password, NUL padded
    /// to 8 bytes, in the Authentication Data field, compared byte for byte.
    Password([u8; AUTH_DATA_LEN]),
}

impl Auth {
    /// keepalived's mapping of `auth_pass`: empty means no authentication,
    /// otherwise the first 8 bytes, NUL padded.
    pub fn from_pass(pass: &str) -> Auth {
        if pass.is_empty() {
            return Auth::None;
        }
        let mut data = [0u8; AUTH_DATA_LEN];
        for (d, s) in data.iter_mut().zip(pass.as_bytes()) {
            *d = *s;
        }
        Auth::Password(data)
    }

    fn type_number(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Password(_) => 1,
        }
    }
}

crate::label::label_enum! {
    /// Why a received packet was dropped: the `reason` label of
    /// `lbd_vrrp_adverts_dropped_total`.
    pub enum DropReason {
        /// The IPv4 header is malformed, fragmented or not protocol 112.
        IpHeader => "ip_header",
        Ttl => "ttl",
        Version => "version",
        Type => "type",
        /// Shorter or longer than its address count says.
        Length => "length",
        /// Count IPvX Addrs is 0 (RFC 5798 sec 5.2.5).
        AddressCount => "address_count",
        Checksum => "checksum",
        /// VRID 0, or not the VRID of this instance.
        Vrid => "vrid",
        /// Interval 0, or (v2) not the locally configured one.
        Interval => "interval",
        /// Unknown auth type, or (v2) type or password differ from ours.
        Auth => "auth",
        /// v2 over IPv6, or source and destination of different families.
        AddressFamily => "address_family",
        /// With unicast peers: the source is not one of them. Checked by the
        /// driver before decoding (the codec does not know the peers).
        NotAPeer => "not_a_peer",
    }
}

/// A received packet that must be discarded, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad IPv4 header: {0}")]
    IpHeader(&'static str),
    #[error("TTL / hop limit {0}, must be 255")]
    Ttl(u8),
    #[error("VRRP version {0} not supported here")]
    Version(u8),
    #[error("VRRP type {0}, only 1 (ADVERTISEMENT) exists")]
    Type(u8),
    #[error("packet of {len} bytes, {expected} expected")]
    Length { len: usize, expected: usize },
    #[error("address count is 0")]
    AddressCount,
    #[error("checksum 0x{got:04x}, computed 0x{computed:04x}")]
    Checksum { got: u16, computed: u16 },
    #[error("VRID 0 is not valid")]
    VridZero,
    #[error("VRID {got}, expected {expected}")]
    Vrid { got: u8, expected: u8 },
    #[error("advertisement interval is 0")]
    IntervalZero,
    #[error("advertisement interval {got} s, configured {expected} s")]
    IntervalMismatch { got: u16, expected: u16 },
    #[error("authentication type {0} not supported")]
    AuthType(u8),
    #[error("authentication does not match")]
    AuthMismatch,
    #[error("address family mismatch: {0}")]
    AddressFamily(&'static str),
}

impl DecodeError {
    pub fn reason(&self) -> DropReason {
        match self {
            DecodeError::IpHeader(_) => DropReason::IpHeader,
            DecodeError::Ttl(_) => DropReason::Ttl,
            DecodeError::Version(_) => DropReason::Version,
            DecodeError::Type(_) => DropReason::Type,
            DecodeError::Length { .. } => DropReason::Length,
            DecodeError::AddressCount => DropReason::AddressCount,
            DecodeError::Checksum { .. } => DropReason::Checksum,
            DecodeError::VridZero | DecodeError::Vrid { .. } => DropReason::Vrid,
            DecodeError::IntervalZero | DecodeError::IntervalMismatch { .. } => {
                DropReason::Interval
            }
            DecodeError::AuthType(_) | DecodeError::AuthMismatch => DropReason::Auth,
            DecodeError::AddressFamily(_) => DropReason::AddressFamily,
        }
    }
}

/// What the IP layer told us about a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxContext {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl_or_hop_limit: u8,
}

/// What this instance expects of its peers' packets (the per-instance checks
/// of RFC 5798 sec 7.1 and RFC 3768 sec 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalInstance {
    pub version: Version,
    pub vrid: u8,
    /// v2 only; ignored for v3.
    pub auth: Auth,
    /// Our Advertisement_Interval; v2 drops packets with another one.
    pub advert_interval_cs: u16,
}

impl LocalInstance {
    /// From the config of one instance (auth_pass as keepalived's PASS).
    pub fn from_config(cfg: &VrrpInstanceConfig) -> Self {
        let version = Version::from(cfg.version);
        LocalInstance {
            version,
            vrid: cfg.vrid,
            auth: match version {
                Version::V2 => Auth::from_pass(&cfg.auth_pass),
                Version::V3 => Auth::None,
            },
            advert_interval_cs: interval_cs(version, cfg.advert_interval),
        }
    }
}

/// A configured interval in centiseconds: v3 10 ms steps (rounded up),
/// 1..=4095; v2 whole seconds (rounded up), 1..=255 s.
pub fn interval_cs(version: Version, d: Duration) -> u16 {
    let cs = d.as_millis().div_ceil(10);
    match version {
        Version::V3 => cs.clamp(1, u128::from(MAX_ADVERT_INTERVAL_CS)) as u16,
        Version::V2 => (cs.div_ceil(100).clamp(1, 255) * 100) as u16,
    }
}

/// One VRRP advertisement.
///
/// Version 3 (RFC 5798 sec 5.1):
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |(rsvd) |     Max Adver Int     |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                                                               +
/// |                       IPvX Address(es)                        |
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// |                                                               |
/// +                                                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// Max Adver Int is in centiseconds. The checksum covers the message and an
/// IPv4 / IPv6 pseudo-header (RFC 5798 sec 5.2.8).
///
/// Version 2 (RFC 3768 sec 5.1):
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Auth Type   |   Adver Int   |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         IP Address (1)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                            .                                  |
/// |                            .                                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         IP Address (n)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Authentication Data (1)                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Authentication Data (2)                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// Adver Int is in seconds. The checksum covers the VRRP message only.
///
/// The Type field is always 1 (ADVERTISEMENT): `decode` rejects anything
/// else and `encode` writes 1, so it is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpPacket {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// As on the wire: v3 centiseconds (12 bits), v2 seconds (8 bits). See
    /// [`VrrpPacket::advert_interval_cs`] for one unit.
    pub advert_interval: u16,
    /// Always `Auth::None` for v3.
    pub auth: Auth,
    /// All of the family of the IP header; v2: IPv4 only.
    pub addresses: Vec<IpAddr>,
}

impl VrrpPacket {
    /// An advertisement with the interval given in centiseconds, converted to
    /// the version's wire unit (v2: whole seconds, rounded up, 1..=255; v3:
    /// 1..=4095 cs).
    pub fn advertisement(
        version: Version,
        vrid: u8,
        priority: u8,
        advert_interval_cs: u16,
        auth: Auth,
        addresses: Vec<IpAddr>,
    ) -> VrrpPacket {
        let advert_interval = match version {
            Version::V2 => advert_interval_cs.div_ceil(100).clamp(1, 255),
            Version::V3 => advert_interval_cs.clamp(1, MAX_ADVERT_INTERVAL_CS),
        };
        let auth = match version {
            Version::V2 => auth,
            Version::V3 => Auth::None,
        };
        VrrpPacket {
            version,
            vrid,
            priority,
            advert_interval,
            auth,
            addresses,
        }
    }

    /// The advertised interval in centiseconds, whatever the version.
    pub fn advert_interval_cs(&self) -> u16 {
        match self.version {
            // At most 255 s = 25500 cs: no overflow.
            Version::V2 => self.advert_interval.saturating_mul(100),
            Version::V3 => self.advert_interval,
        }
    }

    /// Parses and validates one VRRP message (the IP payload), RFC 5798 sec
    /// 7.1 / RFC 3768 sec 7.1: TTL 255, version 2 or 3, type 1, a nonzero
    /// VRID, a complete packet for its address count, the checksum, a nonzero
    /// interval, a known auth type. The per-instance checks (our VRID, our
    /// version, v2 auth and interval) are [`VrrpPacket::verify_for`].
    pub fn decode(bytes: &[u8], ctx: &RxContext) -> Result<VrrpPacket, DecodeError> {
        // RFC 5798 sec 7.1: MUST verify that the TTL / hop limit is 255.
        if ctx.ttl_or_hop_limit != TTL {
            return Err(DecodeError::Ttl(ctx.ttl_or_hop_limit));
        }
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Length {
                len: bytes.len(),
                expected: HEADER_LEN,
            });
        }
        let number = bytes[0] >> 4;
        let version = Version::from_number(number).ok_or(DecodeError::Version(number))?;
        let kind = bytes[0] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(DecodeError::Type(kind));
        }
        let v6 = match (ctx.src, ctx.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(_), IpAddr::V6(_)) => true,
            _ => return Err(DecodeError::AddressFamily("source and destination")),
        };
        // RFC 3768 is IPv4 only.
        if v6 && version == Version::V2 {
            return Err(DecodeError::AddressFamily("VRRPv2 over IPv6"));
        }
        let vrid = bytes[1];
        if vrid == 0 {
            return Err(DecodeError::VridZero);
        }
        let priority = bytes[2];
        let count = usize::from(bytes[3]);
        // RFC 5798 sec 5.2.5 (erratum 8299 makes it a sec 7.1 check): a
        // count of 0 MUST be ignored.
        if count == 0 {
            return Err(DecodeError::AddressCount);
        }
        let addr_len = if v6 { 16 } else { 4 };
        let trailer = match version {
            Version::V2 => AUTH_DATA_LEN,
            Version::V3 => 0,
        };
        let expected = HEADER_LEN + count * addr_len + trailer;
        // RFC 5798 sec 7.1: MUST verify that the packet contains the complete
        // VRRP packet (fixed fields and addresses). Trailing bytes would be
        // outside what the count describes: a malformed packet.
        if bytes.len() != expected {
            return Err(DecodeError::Length {
                len: bytes.len(),
                expected,
            });
        }
        // RFC 5798 sec 7.1 / RFC 3768 sec 7.1: MUST verify the checksum.
        let got = u16::from_be_bytes([bytes[6], bytes[7]]);
        let computed = checksum(version, ctx.src, ctx.dst, bytes);
        if computed != got {
            return Err(DecodeError::Checksum { got, computed });
        }
        let advert_interval = decode_interval(version, bytes)?;
        let auth = decode_auth(version, bytes)?;
        let addresses = decode_addresses(&bytes[HEADER_LEN..HEADER_LEN + count * addr_len], v6);
        Ok(VrrpPacket {
            version,
            vrid,
            priority,
            advert_interval,
            auth,
            addresses,
        })
    }

    /// The per-instance checks of RFC 5798 sec 7.1 and RFC 3768 sec 7.1:
    /// our version, our VRID and, for v2, our auth type and data and our
    /// Adver Int (RFC 3768 sec 7.1: "MUST verify that the Adver Interval in
    /// the packet is the same as the locally configured for this virtual
    /// router"). A v3 interval is learned, not checked (RFC 5798 sec 6.4.2).
    pub fn verify_for(&self, local: &LocalInstance) -> Result<(), DecodeError> {
        if self.version != local.version {
            return Err(DecodeError::Version(self.version.number()));
        }
        if self.vrid != local.vrid {
            return Err(DecodeError::Vrid {
                got: self.vrid,
                expected: local.vrid,
            });
        }
        if self.version == Version::V2 {
            if self.auth != local.auth {
                return Err(DecodeError::AuthMismatch);
            }
            let ours = local.advert_interval_cs.div_ceil(100).clamp(1, 255);
            if self.advert_interval != ours {
                return Err(DecodeError::IntervalMismatch {
                    got: self.advert_interval,
                    expected: ours,
                });
            }
        }
        Ok(())
    }

    /// `decode` then `verify_for`: what the driver does with each packet.
    pub fn decode_for(
        bytes: &[u8],
        ctx: &RxContext,
        local: &LocalInstance,
    ) -> Result<VrrpPacket, DecodeError> {
        let p = VrrpPacket::decode(bytes, ctx)?;
        p.verify_for(local)?;
        Ok(p)
    }

    /// Length of the encoded message for a source of this family.
    pub fn buffer_len(&self, src: IpAddr) -> usize {
        let (count, addr_len) = self.sendable(src);
        let trailer = match self.version {
            Version::V2 => AUTH_DATA_LEN,
            Version::V3 => 0,
        };
        HEADER_LEN + count * addr_len + trailer
    }

    /// How many addresses go out, and their size: those of the family of
    /// `src` (v2: IPv4 only), at most 255 (the count is one byte).
    fn sendable(&self, src: IpAddr) -> (usize, usize) {
        let v6 = src.is_ipv6() && self.version == Version::V3;
        let n = self
            .addresses
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .count()
            .min(255);
        (n, if v6 { 16 } else { 4 })
    }

    /// The VRRP message (IP payload) with its checksum: v3 over the
    /// pseudo-header of `src` -> `dst` (RFC 5798 sec 5.2.8), v2 over the
    /// message alone (RFC 3768 sec 5.3.8). Addresses of another family than
    /// `src` (and, for v2, any IPv6 one) are left out, as is anything past
    /// the 255th; the config validation keeps that from happening.
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let (count, _) = self.sendable(src);
        let v6 = src.is_ipv6() && self.version == Version::V3;
        let mut out = Vec::with_capacity(self.buffer_len(src));
        out.push((self.version.number() << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        // `count` is at most 255 (see `sendable`).
        out.push(u8::try_from(count).unwrap_or(u8::MAX));
        match self.version {
            Version::V3 => {
                let int = self.advert_interval & MAX_ADVERT_INTERVAL_CS;
                out.extend_from_slice(&int.to_be_bytes());
            }
            Version::V2 => {
                out.push(self.auth.type_number());
                out.push(u8::try_from(self.advert_interval).unwrap_or(u8::MAX));
            }
        }
        out.extend_from_slice(&[0, 0]);
        for a in self
            .addresses
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .take(count)
        {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            match self.auth {
                Auth::None => out.extend_from_slice(&[0u8; AUTH_DATA_LEN]),
                Auth::Password(data) => out.extend_from_slice(&data),
            }
        }
        let sum = checksum(self.version, src, dst, &out);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        out
    }
}

/// The advertisement interval field (v3 centiseconds, v2 seconds); RFC
/// 5798 sec 5.2.6: the upper 4 bits of v3's are reserved, ignored.
fn decode_interval(version: Version, bytes: &[u8]) -> Result<u16, DecodeError> {
    let interval = match version {
        Version::V3 => u16::from_be_bytes([bytes[4], bytes[5]]) & MAX_ADVERT_INTERVAL_CS,
        Version::V2 => u16::from(bytes[5]),
    };
    // A zero interval would make Master_Down_Interval the skew alone.
    if interval == 0 {
        return Err(DecodeError::IntervalZero);
    }
    Ok(interval)
}

/// v2's auth type and data (the last 8 bytes of a length-checked packet).
/// RFC 3768 sec 5.3.6: 0 none; 1 and 2 were RFC 2338's simple text and IP
/// AH. keepalived still speaks 1 (PASS); 2 is gone.
fn decode_auth(version: Version, bytes: &[u8]) -> Result<Auth, DecodeError> {
    match version {
        Version::V3 => Ok(Auth::None),
        Version::V2 => match bytes[4] {
            0 => Ok(Auth::None),
            1 => {
                let mut data = [0u8; AUTH_DATA_LEN];
                data.copy_from_slice(&bytes[bytes.len() - AUTH_DATA_LEN..]);
                Ok(Auth::Password(data))
            }
            t => Err(DecodeError::AuthType(t)),
        },
    }
}

/// The IPvX address list, 4 or 16 bytes each.
fn decode_addresses(list: &[u8], v6: bool) -> Vec<IpAddr> {
    let len = if v6 { 16 } else { 4 };
    list.chunks_exact(len)
        .map(|c| {
            if v6 {
                let mut o = [0u8; 16];
                o.copy_from_slice(c);
                IpAddr::V6(Ipv6Addr::from(o))
            } else {
                IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            }
        })
        .collect()
}

/// The checksum to put in bytes 6-7 of `msg` (whose own checksum field is
/// treated as zero): RFC 1071 one's complement sum, v3 with the pseudo-header
/// of RFC 5798 sec 5.2.8 (IPv4: RFC 768 layout; IPv6: RFC 8200 sec 8.1).
fn checksum(version: Version, src: IpAddr, dst: IpAddr, msg: &[u8]) -> u16 {
    let mut sum = Sum::default();
    if version == Version::V3 {
        // Lengths fit easily: a VRRP message is at most 8 + 255 * 16 bytes.
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum.add(&s.octets());
                sum.add(&d.octets());
                sum.add(&[0, IPPROTO_VRRP]);
                sum.add(&(len as u16).to_be_bytes());
            }
            (s, d) => {
                sum.add(&ipv6_octets(s));
                sum.add(&ipv6_octets(d));
                sum.add(&len.to_be_bytes());
                sum.add(&[0, 0, 0, IPPROTO_VRRP]);
            }
        }
    }
    // The message with its checksum field taken as zero.
    if msg.len() >= HEADER_LEN {
        sum.add(&msg[..6]);
        sum.add(&msg[HEADER_LEN..]);
    } else {
        sum.add(msg);
    }
    sum.finish()
}

fn ipv6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// RFC 1071 sum. Every chunk added has an even length except possibly the
/// last, which is what the RFC pads.
#[derive(Default)]
struct Sum(u32);

impl Sum {
    fn add(&mut self, bytes: &[u8]) {
        let mut it = bytes.chunks_exact(2);
        for w in &mut it {
            self.0 += u32::from(u16::from_be_bytes([w[0], w[1]]));
            self.fold();
        }
        if let [b] = it.remainder() {
            self.0 += u32::from(*b) << 8;
            self.fold();
        }
    }

    fn fold(&mut self) {
        while self.0 > 0xffff {
            self.0 = (self.0 & 0xffff) + (self.0 >> 16);
        }
    }

    fn finish(mut self) -> u16 {
        self.fold();
        !(self.0 as u16)
    }
}

/// Takes the header off an IPv4 datagram read from a raw IPPROTO 112 socket
/// and returns what the VRRP checks need, plus the VRRP message. Fragments
/// are refused: an advertisement always fits one packet.
pub fn split_ipv4(datagram: &[u8]) -> Result<(RxContext, &[u8]), DecodeError> {
    if datagram.len() < 20 {
        return Err(DecodeError::IpHeader("shorter than 20 bytes"));
    }
    if datagram[0] >> 4 != 4 {
        return Err(DecodeError::IpHeader("not IPv4"));
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if ihl < 20 || ihl > datagram.len() {
        return Err(DecodeError::IpHeader("bad header length"));
    }
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    // Linux raw sockets report the total length as sent; anything beyond it
    // (link padding) is not part of the datagram.
    if total < ihl || total > datagram.len() {
        return Err(DecodeError::IpHeader("bad total length"));
    }
    let frag = u16::from_be_bytes([datagram[6], datagram[7]]);
    if frag & 0x3fff != 0 {
        return Err(DecodeError::IpHeader("fragment"));
    }
    if datagram[9] != IPPROTO_VRRP {
        return Err(DecodeError::IpHeader("not protocol 112"));
    }
    let src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    let ctx = RxContext {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        ttl_or_hop_limit: datagram[8],
    };
    Ok((ctx, &datagram[ihl..total]))
}

/// The gratuitous ARP keepalived sends for an IPv4 VIP on becoming master
/// (checked byte for byte against its capture): an Ethernet broadcast ARP
/// *request* with sender and target protocol address both the VIP, sender
/// hardware address `mac` and target hardware address ff:ff:ff:ff:ff:ff.
/// 42 bytes; the NIC pads to the Ethernet minimum.
pub fn gratuitous_arp_frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op 1 (request).
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&vip.octets());
    f
}

/// The unsolicited neighbour advertisement for an IPv6 VIP on becoming
/// master (RFC 5798 sec 6.4.2 "send an Unsolicited ND Neighbor
/// Advertisement", RFC 4861 sec 7.2.6), as keepalived builds it: Ethernet to
/// 33:33:00:00:00:01, IPv6 from the VIP to ff02::1 with hop limit 255,
/// ICMPv6 type 136 with the Override flag (and Router when the host
/// forwards), target the VIP, and a Target Link-Layer Address option.
/// 86 bytes, checksum included.
pub fn unsolicited_na_frame(mac: [u8; 6], vip: Ipv6Addr, router: bool) -> [u8; 86] {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = [0u8; 86];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    // IPv6: version 6, payload 32 bytes, next header 58 (ICMPv6), hop 255.
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58;
    f[21] = 255;
    f[22..38].copy_from_slice(&vip.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    // ICMPv6 NA: type 136, code 0, checksum, flags R S O, target.
    f[54] = 136;
    f[58] = if router { 0xa0 } else { 0x20 };
    f[62..78].copy_from_slice(&vip.octets());
    // Option 2 (Target Link-Layer Address), length 1 (8 bytes).
    f[78] = 2;
    f[79] = 1;
    f[80..86].copy_from_slice(&mac);
    let mut sum = Sum::default();
    sum.add(&vip.octets());
    sum.add(&ALL_NODES.octets());
    sum.add(&32u32.to_be_bytes());
    sum.add(&[0, 0, 0, 58]);
    sum.add(&f[54..86]);
    f[56..58].copy_from_slice(&sum.finish().to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx4() -> RxContext {
        RxContext {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(MULTICAST_V4),
            ttl_or_hop_limit: 255,
        }
    }

    #[test]
    fn checksum_of_encoded_v3_verifies_to_zero_sum() {
        let p = VrrpPacket::advertisement(
            Version::V3,
            7,
            100,
            100,
            Auth::None,
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))],
        );
        let c = ctx4();
        let b = p.encode(c.src, c.dst);
        assert_eq!(b.len(), p.buffer_len(c.src));
        assert_eq!(VrrpPacket::decode(&b, &c), Ok(p));
    }

    #[test]
    fn odd_length_sum_pads_with_zero() {
        let mut s = Sum::default();
        s.add(&[0x12, 0x34, 0x56]);
        // 0x1234 + 0x5600 = 0x6834, complemented.
        assert_eq!(s.finish(), !0x6834);
    }

    #[test]
    fn from_pass_pads_and_truncates() {
        assert_eq!(Auth::from_pass(""), Auth::None);
        assert_eq!(Auth::from_pass("42"), Auth::Password(*b"42\0\0\0\0\0\0"));
        assert_eq!(Auth::from_pass("123456789"), Auth::Password(*b"12345678"));
    }

    #[test]
    fn v2_interval_rounds_up_to_seconds() {
        let p = VrrpPacket::advertisement(Version::V2, 1, 1, 150, Auth::None, vec![]);
        assert_eq!(p.advert_interval, 2);
        assert_eq!(p.advert_interval_cs(), 200);
        let p = VrrpPacket::advertisement(Version::V3, 1, 1, 5000, Auth::None, vec![]);
        assert_eq!(p.advert_interval, MAX_ADVERT_INTERVAL_CS);
    }
}
