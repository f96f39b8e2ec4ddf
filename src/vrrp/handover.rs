//! What the supervisor does when the worker dies (a panic, an OOM kill,
//! SIGKILL of that process), from the state files alone: for each instance
//! that was MASTER, a priority 0 advert from its source to its group (RFC
//! 5798 sec 6.4.3, as on shutdown), so a backup takes over after its skew
//! time; then its VIPs stay until that backup advertises (make before
//! break, at most two intervals), and go, with the worker's handover
//! tables (grace.rs). The records then say nothing is held, so the next
//! worker starts clean.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::sys::addr::{LinkInfo, Netlink};

use crate::proxy::kernel::nft;

use super::fsm::leave_bound;
use super::grace::{self, GraceRules};
use super::net::{inbound, Inbound, VrrpSocket};
use super::packet::{Auth, LocalInstance, Version, VrrpPacket};
use super::state::{self, InstanceRecord, StateDir};

/// What the handover did for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOver {
    pub instance: String,
    /// A priority 0 advert went out (it was MASTER).
    pub priority_zero: bool,
    /// The router that advertised next, if one did in time.
    pub successor: Option<IpAddr>,
    /// Addresses removed.
    pub removed: usize,
    /// From the start of the handover to the removal.
    pub took: Duration,
}

/// Hands over every instance the records in `dir` say holds something.
pub async fn hand_over(dir: &StateDir) -> Vec<HandedOver> {
    let jobs = dir
        .records()
        .into_iter()
        .filter(|(_, r)| r.master || !r.installed.is_empty())
        .map(|(path, rec)| one(path, rec));
    futures::future::join_all(jobs).await
}

async fn one(path: PathBuf, mut rec: InstanceRecord) -> HandedOver {
    let started = Instant::now();
    let mut out = HandedOver {
        instance: rec.instance.clone(),
        priority_zero: false,
        successor: None,
        removed: 0,
        took: Duration::ZERO,
    };
    let link = match Netlink::connect() {
        Ok(nl) => nl.link_by_name(&rec.interface).await.ok(),
        Err(_) => None,
    };
    if let (true, Some(link), Some(src)) = (rec.master, &link, rec.source) {
        match VrrpSocket::open(&link.name, link.index, src, &rec.unicast_peers) {
            Ok(sock) => {
                out.priority_zero = send_priority_zero(&sock, &rec).await;
                let bound = leave_bound(rec.advert_interval_cs);
                out.successor = await_successor(&sock, &rec, bound).await;
            }
            Err(e) => {
                tracing::warn!(instance = %rec.instance, error = %e, "cannot open the VRRP socket: no priority 0")
            }
        }
    }
    out.removed = remove_on(link.as_ref(), &rec).await;
    clear_grace(&rec).await;
    out.took = started.elapsed();
    rec.master = false;
    rec.installed.clear();
    rec.pid = std::process::id();
    store(&path, &rec);
    out
}

fn store(path: &Path, rec: &InstanceRecord) {
    if let Err(e) = state::store(path, rec) {
        tracing::warn!(file = %path.display(), error = %e, "cannot update the VRRP state file");
    }
}

fn local(rec: &InstanceRecord) -> LocalInstance {
    let version = Version::from_number(rec.version).unwrap_or(Version::V3);
    LocalInstance {
        version,
        vrid: rec.vrid,
        auth: match version {
            Version::V2 => Auth::from_pass(&rec.auth_pass),
            Version::V3 => Auth::None,
        },
        advert_interval_cs: rec.advert_interval_cs,
    }
}

async fn send_priority_zero(sock: &VrrpSocket, rec: &InstanceRecord) -> bool {
    let l = local(rec);
    let advert = VrrpPacket::advertisement(
        l.version,
        l.vrid,
        0,
        l.advert_interval_cs,
        l.auth,
        rec.virtual_ips.iter().map(|v| v.addr()).collect(),
    );
    let mut sent = false;
    for dst in sock.destinations() {
        match sock
            .send_to(*dst, &advert.encode(sock.source(), *dst))
            .await
        {
            Ok(()) => sent = true,
            Err(e) => {
                tracing::warn!(instance = %rec.instance, to = %dst, error = %e, "priority 0 not sent")
            }
        }
    }
    sent
}

/// Waits until another router advertises with a priority above 0 (it is
/// master now), at most `bound`.
async fn await_successor(
    sock: &VrrpSocket,
    rec: &InstanceRecord,
    bound: Duration,
) -> Option<IpAddr> {
    let deadline = Instant::now() + bound;
    let l = local(rec);
    // Bounded in time and, for a flood of foreign packets, in count.
    for _ in 0..100_000 {
        let r = tokio::select! {
            r = sock.recv() => r,
            _ = tokio::time::sleep_until(deadline) => return None,
        };
        let Ok(pkt) = r else { continue };
        if let Inbound::Advert(src, advert) = inbound(&pkt, sock.source(), &rec.unicast_peers, &l) {
            if advert.priority > 0 {
                return Some(src);
            }
        }
    }
    None
}

/// The worker's handover tables (grace.rs) go with it: hidden VIPs are
/// gone, and nobody is left to end a forward.
async fn clear_grace(rec: &InstanceRecord) {
    let v6 = rec.virtual_ips.first().is_some_and(|v| v.addr().is_ipv6());
    let script = grace::render(&rec.instance, v6, &GraceRules::default());
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || nft::apply_script(&script)).await {
        tracing::debug!(instance = %rec.instance, error = %e, "handover tables not cleared")
    }
}

/// Removes the addresses `rec` says lbd installed (only those still ours).
pub async fn remove_recorded(rec: &InstanceRecord) -> usize {
    let link = match Netlink::connect() {
        Ok(nl) => nl.link_by_name(&rec.interface).await.ok(),
        Err(_) => None,
    };
    remove_on(link.as_ref(), rec).await
}

async fn remove_on(link: Option<&LinkInfo>, rec: &InstanceRecord) -> usize {
    let (Some(link), Ok(nl)) = (link, Netlink::connect()) else {
        return 0;
    };
    let mut removed = 0;
    for i in &rec.installed {
        match nl.remove_vip(link, i.addr, &rec.installed).await {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(instance = %rec.instance, vip = %i.addr, error = %e, "cannot remove VIP")
            }
        }
    }
    removed
}
