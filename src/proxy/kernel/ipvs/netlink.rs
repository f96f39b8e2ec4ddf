//! [`NetlinkIpvs`]: the [`IpvsHandle`] over a blocking NETLINK_GENERIC
//! socket (see handle.rs for why blocking). The family id of "IPVS" is
//! resolved once with CTRL_CMD_GETFAMILY; asking for it also makes the kernel
//! load ip_vs (MODULE_ALIAS_GENL_FAMILY) where modules can be loaded.
//!
//! The socket lives in the network namespace of the thread that called
//! [`NetlinkIpvs::new`]; IPVS state is per namespace.

use std::fmt::Debug;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket};

use super::genl::{
    dest_from_attrs, info_from_attrs, service_af, service_from_attrs, timeouts_from_attrs,
    IpvsAttr, IpvsMessage, ServiceEntry, AF_INET, AF_INET6,
};
use super::{validate_dest, validate_service, IpvsError, IpvsHandle, IpvsOp};
use crate::proxy::model::{DestKey, IpvsInfo, RealServer, ServiceKey, Timeouts, VirtualServer};

/// A reply never takes this long from a local kernel; the bound only keeps a
/// wedged socket from hanging the sync runner forever.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams larger than this would be truncated; the kernel sizes dump
/// batches to the reader's buffer and never exceeds 32 KiB per batch.
const RECV_BUF: usize = 64 * 1024;
/// Most bytes of requests one batched write carries (a NEW_DEST is ~150).
const BATCH_BYTES: usize = 32 * 1024;
/// Most requests per batched write. The kernel handles the whole write
/// before we read, so every ack of it sits in our receive queue at once; an
/// ack costs ~1 KiB of receive buffer (skb truesize), and the default
/// buffer (rmem_default, 208 KiB) must hold them or acks are dropped.
const BATCH_MSGS: usize = 128;
/// Extra service dumps a listing may take to get two that agree.
const LIST_DUMPS_MAX: usize = 3;
/// Receive buffer asked for (root may exceed rmem_max): margin for acks.
const SOCK_RCVBUF: usize = 1024 * 1024;

struct Conn {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conn {
    /// One whole datagram from the kernel. MSG_TRUNC makes recv report the
    /// datagram's real length, so a reply larger than the buffer is an
    /// error instead of silently cut messages.
    fn recv_datagram(&mut self) -> Result<&[u8], TransactError> {
        self.buf.clear();
        self.buf.reserve(RECV_BUF);
        let n = self
            .sock
            .recv(&mut self.buf, libc::MSG_TRUNC)
            .map_err(TransactError::Io)?;
        if n > self.buf.len() {
            return Err(TransactError::Decode(format!(
                "datagram of {n} bytes truncated"
            )));
        }
        Ok(&self.buf)
    }
}

/// Why one request failed, before it is given an operation name.
enum TransactError {
    Errno(i32),
    Io(std::io::Error),
    Decode(String),
}

pub struct NetlinkIpvs {
    conn: Mutex<Conn>,
    family: u16,
}

impl Debug for NetlinkIpvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkIpvs")
            .field("family", &self.family)
            .finish()
    }
}

impl NetlinkIpvs {
    /// Opens the socket and resolves the family id. `FamilyNotFound` means
    /// the kernel has no IPVS (module missing or not loadable).
    pub fn new() -> Result<Self, IpvsError> {
        let (sock, seq) = crate::proxy::kernel::blocking_netlink_socket(
            NETLINK_GENERIC,
            RECV_TIMEOUT,
            SOCK_RCVBUF,
        )?;
        // Without NETLINK_CAP_ACK (kernels before 4.3) an error ack only
        // carries a copy of the request: best effort.
        let _ = sock.set_cap_ack(true);
        let mut conn = Conn {
            sock,
            seq,
            buf: Vec::with_capacity(RECV_BUF),
        };
        let family = resolve_family(&mut conn)?;
        Ok(NetlinkIpvs {
            conn: Mutex::new(conn),
            family,
        })
    }

    /// The dynamically assigned generic netlink family id of "IPVS".
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(
        &self,
        op: &'static str,
        target: impl FnOnce() -> String,
        msg: IpvsMessage,
        dump: bool,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut g = GenlMessage::from_payload(msg);
        g.set_resolved_family_id(self.family);
        let replies = transact(&mut self.lock(), g, dump);
        match replies {
            Ok(r) => Ok(r.into_iter().map(|g| g.payload).collect()),
            Err(TransactError::Errno(e)) => Err(IpvsError::from_errno(op, target(), e)),
            Err(TransactError::Io(e)) => Err(IpvsError::Io(e)),
            Err(TransactError::Decode(reason)) => Err(IpvsError::Decode { op, reason }),
        }
    }

    fn dests_of(&self, svc: &ServiceKey, svc_af: u16) -> Result<Vec<RealServer>, IpvsError> {
        let op = "list_dests";
        let replies = self.request(op, || svc.to_string(), IpvsMessage::get_dests(svc), true)?;
        let mut out = Vec::new();
        for r in replies {
            for a in r.attrs {
                if let IpvsAttr::Dest(d) = a {
                    let rs = dest_from_attrs(&d, svc_af).map_err(|e| IpvsError::Decode {
                        op,
                        reason: e.to_string(),
                    })?;
                    out.push(rs);
                }
            }
        }
        Ok(out)
    }
}

impl NetlinkIpvs {
    /// One dump of the namespace's services (no dests), each once.
    fn dump_services(&self) -> Result<Vec<(VirtualServer, u16)>, IpvsError> {
        let op = "list_services";
        let replies = self.request(op, String::new, IpvsMessage::get_services(), true)?;
        let mut services = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in replies {
            for a in r.attrs {
                if let IpvsAttr::Service(s) = a {
                    let entry = service_from_attrs(&s).map_err(|e| IpvsError::Decode {
                        op,
                        reason: e.to_string(),
                    })?;
                    if let ServiceEntry::Service(vs) = entry {
                        if seen.insert(vs.key()) {
                            let af = service_af(&s).unwrap_or(AF_INET);
                            services.push((vs, af));
                        }
                    }
                }
            }
        }
        Ok(services)
    }
}

/// Dumps until two in a row hold the same services (at most
/// 1 + LIST_DUMPS_MAX), and returns every service any of them held, in the
/// order first seen.
fn union_of_dumps<E>(
    mut dump: impl FnMut() -> Result<Vec<(VirtualServer, u16)>, E>,
) -> Result<Vec<(VirtualServer, u16)>, E> {
    let mut services = dump()?;
    let mut known: std::collections::HashSet<ServiceKey> =
        services.iter().map(|(vs, _)| vs.key()).collect();
    let mut last = known.clone();
    for _ in 0..LIST_DUMPS_MAX {
        let again = dump()?;
        let keys: std::collections::HashSet<ServiceKey> =
            again.iter().map(|(vs, _)| vs.key()).collect();
        for (vs, af) in again {
            if known.insert(vs.key()) {
                services.push((vs, af));
            }
        }
        if keys == last {
            break;
        }
        last = keys;
    }
    Ok(services)
}

fn resolve_family(conn: &mut Conn) -> Result<u16, IpvsError> {
    let msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(
            super::genl::IPVS_GENL_NAME.into(),
        )],
    });
    let replies = match transact(conn, msg, false) {
        Ok(r) => r,
        Err(TransactError::Errno(libc::ENOENT)) => return Err(IpvsError::FamilyNotFound),
        Err(TransactError::Errno(e)) => return Err(std::io::Error::from_raw_os_error(e).into()),
        Err(TransactError::Io(e)) => return Err(e.into()),
        Err(TransactError::Decode(reason)) => {
            return Err(IpvsError::Decode {
                op: "resolve family",
                reason,
            })
        }
    };
    replies
        .iter()
        .flat_map(|g| g.payload.nlas.iter())
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or(IpvsError::FamilyNotFound)
}

/// Send one request with NLM_F_ACK and collect its replies: up to the ack
/// for a plain request, up to NLMSG_DONE for a dump. Messages with another
/// sequence number (late replies of an earlier, failed exchange) are skipped.
fn transact<F>(
    conn: &mut Conn,
    msg: GenlMessage<F>,
    dump: bool,
) -> Result<Vec<GenlMessage<F>>, TransactError>
where
    F: Debug,
    GenlMessage<F>: NetlinkSerializable + NetlinkDeserializable,
{
    conn.seq = conn.seq.wrapping_add(1);
    let seq = conn.seq;
    let out = crate::proxy::kernel::frame_request(msg, seq, dump);
    conn.sock.send(&out, 0).map_err(TransactError::Io)?;

    let mut replies = Vec::new();
    loop {
        let mut data = conn.recv_datagram()?;
        while !data.is_empty() {
            let len = NetlinkBuffer::new_checked(data)
                .map_err(|e| TransactError::Decode(e.to_string()))?
                .length() as usize;
            let m = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[..len])
                .map_err(|e| TransactError::Decode(e.to_string()))?;
            data = &data[((len + 3) & !3).min(data.len())..];
            if m.header.sequence_number != seq {
                continue;
            }
            match m.payload {
                NetlinkPayload::InnerMessage(g) => replies.push(g),
                NetlinkPayload::Error(e) => match e.code {
                    // The ack that ends a plain request.
                    None => return Ok(replies),
                    Some(c) => return Err(TransactError::Errno(-c.get())),
                },
                NetlinkPayload::Done(d) => {
                    if d.code < 0 {
                        return Err(TransactError::Errno(-d.code));
                    }
                    return Ok(replies);
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(TransactError::Decode("netlink overrun".into()))
                }
                _ => {}
            }
        }
    }
}

/// The request an op is sent as.
fn op_message(op: &IpvsOp<'_>) -> IpvsMessage {
    match *op {
        IpvsOp::AddService(vs) => IpvsMessage::new_service(vs),
        IpvsOp::UpdateService(vs) => IpvsMessage::set_service(vs),
        IpvsOp::DeleteService(k) => IpvsMessage::del_service(k),
        IpvsOp::AddDest(k, rs) => IpvsMessage::new_dest(k, rs),
        IpvsOp::UpdateDest(k, rs) => IpvsMessage::set_dest(k, rs),
        IpvsOp::DeleteDest(k, d) => IpvsMessage::del_dest(k, d),
    }
}

/// One acknowledged request (NLM_F_REQUEST | NLM_F_ACK) with sequence
/// number `seq`, padded to NLMSG_ALIGNTO so requests can be concatenated.
pub(crate) fn encode_request(family: u16, seq: u32, msg: IpvsMessage) -> Vec<u8> {
    let mut g = GenlMessage::from_payload(msg);
    g.set_resolved_family_id(family);
    let mut nl = NetlinkMessage::from(g);
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
    hdr.sequence_number = seq;
    nl.header = hdr;
    nl.finalize();
    let len = nl.buffer_len();
    let mut out = vec![0u8; (len + 3) & !3];
    nl.serialize(&mut out[..len]);
    out
}

/// Reads the acks in one received datagram: `pending[i]` waits for the ack
/// of sequence number `first + i` and gets Ok or the errno. Messages of
/// other sequence numbers (late replies of an earlier exchange) are
/// skipped. Returns how many of `pending` this datagram resolved.
pub(crate) fn read_acks(
    data: &[u8],
    first: u32,
    pending: &mut [Option<Result<(), i32>>],
) -> Result<usize, String> {
    let mut data = data;
    let mut resolved = 0;
    while !data.is_empty() {
        let len = NetlinkBuffer::new_checked(data)
            .map_err(|e| e.to_string())?
            .length() as usize;
        let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&data[..len])
            .map_err(|e| e.to_string())?;
        data = &data[((len + 3) & !3).min(data.len())..];
        let i = m.header.sequence_number.wrapping_sub(first) as usize;
        let Some(slot) = pending.get_mut(i) else {
            continue;
        };
        if let NetlinkPayload::Error(e) = m.payload {
            if slot.is_none() {
                resolved += 1;
            }
            *slot = Some(match e.code {
                None => Ok(()),
                Some(c) => Err(-c.get()),
            });
        }
    }
    Ok(resolved)
}

impl NetlinkIpvs {
    /// Sends one chunk of encoded requests in one write and collects their
    /// acks; `ops[i]` has sequence number `first + i`.
    fn send_chunk(
        &self,
        conn: &mut Conn,
        buf: &[u8],
        first: u32,
        count: usize,
    ) -> Result<Vec<Option<Result<(), i32>>>, TransactError> {
        let mut pending = vec![None; count];
        conn.sock.send(buf, 0).map_err(TransactError::Io)?;
        let mut missing = count;
        while missing > 0 {
            let got = read_acks(conn.recv_datagram()?, first, &mut pending)
                .map_err(TransactError::Decode)?;
            missing = missing.saturating_sub(got);
        }
        Ok(pending)
    }
}

fn af_of(key: &ServiceKey) -> u16 {
    if key.addr.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

impl IpvsHandle for NetlinkIpvs {
    fn list_services(&self) -> Result<Vec<(VirtualServer, Vec<RealServer>)>, IpvsError> {
        // The kernel resumes a multi-part service dump by position in one
        // hash table shared by every network namespace, so a service added
        // or removed in another namespace mid-dump makes one of ours appear
        // twice or be missed. Ours do not change while we list (only this
        // handle writes them), so the union of dumps is the table: dump
        // again until two dumps agree, a few times at most. A miss left
        // after that costs an EEXIST on add, which the engine treats as done.
        let services = union_of_dumps(|| self.dump_services())?;
        let mut out = Vec::with_capacity(services.len());
        for (vs, af) in services {
            // A service deleted between the two dumps lists with no dests;
            // the next sync sees it gone.
            let dests = self.dests_of(&vs.key(), af)?;
            out.push((vs, dests));
        }
        Ok(out)
    }

    fn list_dests(&self, svc: &ServiceKey) -> Result<Vec<RealServer>, IpvsError> {
        self.dests_of(svc, af_of(svc))
    }

    fn add_service(&self, vs: &VirtualServer) -> Result<(), IpvsError> {
        validate_service("add_service", vs)?;
        let t = || vs.key().to_string();
        self.request("add_service", t, IpvsMessage::new_service(vs), false)
            .map(drop)
    }

    fn update_service(&self, vs: &VirtualServer) -> Result<(), IpvsError> {
        validate_service("update_service", vs)?;
        let t = || vs.key().to_string();
        self.request("update_service", t, IpvsMessage::set_service(vs), false)
            .map(drop)
    }

    fn delete_service(&self, svc: &ServiceKey) -> Result<(), IpvsError> {
        let t = || svc.to_string();
        self.request("delete_service", t, IpvsMessage::del_service(svc), false)
            .map(drop)
    }

    fn add_dest(&self, svc: &ServiceKey, rs: &RealServer) -> Result<(), IpvsError> {
        validate_dest("add_dest", svc, rs)?;
        let t = || format!("{} -> {}", svc, rs.key());
        self.request("add_dest", t, IpvsMessage::new_dest(svc, rs), false)
            .map(drop)
    }

    fn update_dest(&self, svc: &ServiceKey, rs: &RealServer) -> Result<(), IpvsError> {
        validate_dest("update_dest", svc, rs)?;
        let t = || format!("{} -> {}", svc, rs.key());
        self.request("update_dest", t, IpvsMessage::set_dest(svc, rs), false)
            .map(drop)
    }

    fn delete_dest(&self, svc: &ServiceKey, dest: &DestKey) -> Result<(), IpvsError> {
        let t = || format!("{svc} -> {dest}");
        self.request("delete_dest", t, IpvsMessage::del_dest(svc, dest), false)
            .map(drop)
    }

    /// Writes up to BATCH_MSGS requests (BATCH_BYTES) per send, each with
    /// NLM_F_ACK and its own sequence number, then reads their acks. The
    /// kernel handles the messages of one write in order and acks each, so
    /// every op gets the result its single call would have had.
    fn apply_batch(&self, ops: &[IpvsOp<'_>]) -> Vec<Result<(), IpvsError>> {
        let mut results: Vec<Option<Result<(), IpvsError>>> = ops.iter().map(|_| None).collect();
        let mut conn = self.lock();
        let mut next = 0;
        while next < ops.len() {
            let first = conn.seq.wrapping_add(1);
            let mut buf = Vec::with_capacity(BATCH_BYTES);
            // Indices into `ops` of the requests in this write, in order.
            let mut chunk: Vec<usize> = Vec::new();
            while next < ops.len() && chunk.len() < BATCH_MSGS {
                let op = &ops[next];
                if let Err(e) = op.validate() {
                    results[next] = Some(Err(e));
                    next += 1;
                    continue;
                }
                let seq = first.wrapping_add(chunk.len() as u32);
                let bytes = encode_request(self.family, seq, op_message(op));
                if !chunk.is_empty() && buf.len() + bytes.len() > BATCH_BYTES {
                    break;
                }
                buf.extend_from_slice(&bytes);
                chunk.push(next);
                next += 1;
            }
            if chunk.is_empty() {
                continue;
            }
            conn.seq = first.wrapping_add(chunk.len() as u32 - 1);
            match self.send_chunk(&mut conn, &buf, first, chunk.len()) {
                Ok(acks) => {
                    for (&i, ack) in chunk.iter().zip(acks) {
                        results[i] = Some(ack_result(&ops[i], ack));
                    }
                }
                // The socket failed mid-batch: what the kernel did is
                // unknown from here on, so this op and every later one
                // fail (the engine lists the kernel again after a failure).
                Err(e) => {
                    for (i, r) in results.iter_mut().enumerate().skip(chunk[0]) {
                        if r.is_none() {
                            *r = Some(Err(aborted(&ops[i], &e)));
                        }
                    }
                    break;
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(IpvsError::Decode {
                        op: "apply_batch",
                        reason: "not sent".into(),
                    })
                })
            })
            .collect()
    }

    fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError> {
        self.request(
            "set_timeouts",
            String::new,
            IpvsMessage::set_config(t),
            false,
        )
        .map(drop)
    }

    fn get_timeouts(&self) -> Result<Timeouts, IpvsError> {
        let r = self.request(
            "get_timeouts",
            String::new,
            IpvsMessage::get_config(),
            false,
        )?;
        let attrs: Vec<IpvsAttr> = r.into_iter().flat_map(|m| m.attrs).collect();
        Ok(timeouts_from_attrs(&attrs))
    }

    fn info(&self) -> Result<IpvsInfo, IpvsError> {
        let op = "info";
        let r = self.request(op, String::new, IpvsMessage::get_info(), false)?;
        let attrs: Vec<IpvsAttr> = r.into_iter().flat_map(|m| m.attrs).collect();
        info_from_attrs(&attrs).map_err(|e| IpvsError::Decode {
            op,
            reason: e.to_string(),
        })
    }
}

/// One op's result from its ack in a batch.
fn ack_result(op: &IpvsOp<'_>, ack: Option<Result<(), i32>>) -> Result<(), IpvsError> {
    match ack {
        Some(Ok(())) => Ok(()),
        Some(Err(errno)) => Err(IpvsError::from_errno(op.name(), op.target(), errno)),
        None => Err(IpvsError::Decode {
            op: op.name(),
            reason: "no ack".into(),
        }),
    }
}

/// The error of an op a failed batch never got to.
fn aborted(op: &IpvsOp<'_>, e: &TransactError) -> IpvsError {
    match e {
        TransactError::Errno(n) => IpvsError::from_errno(op.name(), op.target(), *n),
        TransactError::Io(io) => IpvsError::Io(std::io::Error::new(
            io.kind(),
            format!("{} {}: batch aborted: {io}", op.name(), op.target()),
        )),
        TransactError::Decode(reason) => IpvsError::Decode {
            op: op.name(),
            reason: format!("batch aborted: {reason}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Protocol;
    use std::net::IpAddr;

    fn ack(seq: u32, error: i32) -> Vec<u8> {
        // nlmsghdr (NLMSG_ERROR, NLM_F_CAPPED) | error | the request's
        // nlmsghdr: what the kernel sends with NETLINK_CAP_ACK.
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&0x100u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&error.to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b
    }

    #[test]
    fn a_listing_is_the_union_of_dumps_until_two_agree() {
        let vs = |n: u8| {
            (
                VirtualServer::new(IpAddr::from([10, 96, 0, n]), 80, Protocol::Tcp, "rr"),
                AF_INET,
            )
        };
        let keys = |v: &[(VirtualServer, u16)]| {
            v.iter()
                .map(|(s, _)| s.key().addr.to_string())
                .collect::<Vec<_>>()
        };
        // A dump that missed 2, then two complete ones: 2 comes back, and
        // the listing stops at the first agreeing pair.
        let mut script = vec![
            vec![vs(1), vs(3)],
            vec![vs(1), vs(2), vs(3)],
            vec![vs(3), vs(2), vs(1)],
        ]
        .into_iter();
        let mut calls = 0;
        let got = union_of_dumps(|| {
            calls += 1;
            Ok::<_, ()>(script.next().unwrap_or_default())
        })
        .unwrap();
        assert_eq!(keys(&got), ["10.96.0.1", "10.96.0.3", "10.96.0.2"]);
        assert_eq!(calls, 3);
        // Agreeing at once: two dumps, nothing more.
        let mut calls = 0;
        let got = union_of_dumps(|| {
            calls += 1;
            Ok::<_, ()>(vec![vs(1), vs(2)])
        })
        .unwrap();
        assert_eq!((got.len(), calls), (2, 2));
        // Never agreeing (each misses another): bounded, and the union.
        let mut calls = 0u8;
        let got = union_of_dumps(|| {
            calls += 1;
            Ok::<_, ()>((1..=5).filter(|n| *n != calls).map(vs).collect())
        })
        .unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(calls as usize, 1 + LIST_DUMPS_MAX);
        // An error from any dump is the listing's error.
        let mut calls = 0;
        let err = union_of_dumps(|| {
            calls += 1;
            if calls == 2 {
                Err("dump 2")
            } else {
                Ok(vec![vs(1)])
            }
        });
        assert_eq!(err.unwrap_err(), "dump 2");
    }

    #[test]
    fn batched_requests_are_the_single_requests_back_to_back() {
        let vs = VirtualServer::new("10.96.0.1".parse().unwrap(), 80, Protocol::Tcp, "rr");
        let rs = RealServer::new("10.244.0.1".parse().unwrap(), 8080, 1);
        let a = encode_request(33, 100, IpvsMessage::new_service(&vs));
        let b = encode_request(33, 101, IpvsMessage::new_dest(&vs.key(), &rs));
        assert_eq!(a.len() % 4, 0);
        let mut batch = a.clone();
        batch.extend_from_slice(&b);
        // Each message parses on its own with its flags and sequence number.
        let mut rest = &batch[..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let len = NetlinkBuffer::new_checked(rest).unwrap().length() as usize;
            let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&rest[..len]).unwrap();
            assert_eq!(m.header.flags, NLM_F_REQUEST | NLM_F_ACK);
            assert_eq!(m.header.message_type, 33);
            seen.push(m.header.sequence_number);
            rest = &rest[(len + 3) & !3..];
        }
        assert_eq!(seen, vec![100, 101]);
        // The payload is the single request's (golden bytes in tests/ipvs_genl.rs).
        assert_eq!(
            &a[16..],
            &encode_request(33, 5, IpvsMessage::new_service(&vs))[16..]
        );
    }

    #[test]
    fn acks_are_matched_by_sequence_number() {
        let mut pending = vec![None; 3];
        // One datagram may carry several; a stale one (seq 7) is skipped.
        let mut d = ack(11, 0);
        d.extend(ack(7, -libc::EEXIST));
        d.extend(ack(10, -libc::EEXIST));
        assert_eq!(read_acks(&d, 10, &mut pending), Ok(2));
        assert_eq!(read_acks(&ack(12, -libc::ESRCH), 10, &mut pending), Ok(1));
        assert_eq!(
            pending,
            vec![
                Some(Err(libc::EEXIST)),
                Some(Ok(())),
                Some(Err(libc::ESRCH))
            ]
        );
        // A repeated ack resolves nothing new.
        assert_eq!(read_acks(&ack(11, 0), 10, &mut pending), Ok(0));
        // Sequence numbers wrap.
        let mut p = vec![None; 2];
        assert_eq!(read_acks(&ack(0, 0), u32::MAX, &mut p), Ok(1));
        assert_eq!(p, vec![None, Some(Ok(()))]);
    }

    #[test]
    fn garbage_in_an_ack_datagram_is_an_error_not_a_panic() {
        let mut pending = vec![None; 1];
        assert!(read_acks(&[1, 2, 3], 1, &mut pending).is_err());
        let mut short = ack(1, 0);
        short[0] = 200; // length beyond the datagram
        assert!(read_acks(&short, 1, &mut pending).is_err());
        for n in 0..36 {
            let _ = read_acks(&ack(1, 0)[..n], 1, &mut pending);
        }
    }
}
