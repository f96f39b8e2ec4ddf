//! The VIPs of one instance on its interface, and the gratuitous ARPs /
//! unsolicited NAs that announce them. I/O: rtnetlink and AF_PACKET.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::sys::addr::{AddOutcome, InstalledAddr, LinkInfo, Netlink, SysError};
use crate::sys::packet::PacketSender;

use super::metrics::InstanceMetrics;
use super::packet::{gratuitous_arp_frame, unsolicited_na_frame};

/// Why the VIPs could not be installed or renewed.
#[derive(Debug, thiserror::Error)]
pub(super) enum VipProblem {
    #[error("{vip} is configured on {interface} by someone else (lbd never touches it)")]
    Foreign { vip: IpNet, interface: String },
    #[error("cannot install {vip} on {interface}: {source}")]
    Failed {
        vip: IpNet,
        interface: String,
        source: SysError,
    },
}

/// The VIPs lbd installed on one interface: installs, renews, removes
/// exactly those, and never touches an address someone else configured.
/// What it installed is its record ([`InstalledAddr`]), kept in the state
/// file by the driver, so ownership does not depend on kernel marks.
pub(super) struct VipHolder {
    nl: Netlink,
    lifetime: Duration,
    installed: Vec<InstalledAddr>,
    /// Handover grace: the VIPs are hidden, and installed IPv4 ones are
    /// marked deprecated (preferred_lft 0: a marker only, IPv4 source
    /// selection ignores it) so `ip addr` and observers can tell.
    hidden: bool,
}

impl VipHolder {
    /// `installed`: what a predecessor recorded (its addresses are ours).
    pub(super) fn new(nl: Netlink, lifetime: Duration, installed: Vec<InstalledAddr>) -> Self {
        VipHolder {
            nl,
            lifetime,
            installed,
            hidden: false,
        }
    }

    pub(super) fn set_hidden(&mut self, hidden: bool) {
        self.hidden = hidden;
    }

    pub(super) fn installed(&self) -> &[InstalledAddr] {
        &self.installed
    }

    pub(super) fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
    }

    /// Installs or renews each of `vips`; the first problem stops it. The
    /// record is taken before the kernel call, so an address is never on
    /// the interface without one (a crash in between leaves a record of an
    /// address that is not there: harmless). A VIP found foreign is
    /// forgotten: it is not ours.
    pub(super) async fn install(
        &mut self,
        link: &LinkInfo,
        vips: &[IpNet],
    ) -> Result<(), VipProblem> {
        for &vip in vips {
            self.record(vip);
            let outcome = self
                .nl
                .add_vip_marked(link, vip, self.lifetime, &self.installed, self.hidden)
                .await;
            match outcome {
                Ok(AddOutcome::Installed) => {}
                Ok(AddOutcome::Foreign) => {
                    self.forget(vip);
                    return Err(VipProblem::Foreign {
                        vip,
                        interface: link.name.clone(),
                    });
                }
                Err(source) => {
                    return Err(VipProblem::Failed {
                        vip,
                        interface: link.name.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Removes every address we installed that is not in `keep` (all of
    /// them for an empty `keep`), and forgets it. Without a link (it is
    /// gone, and its addresses with it) only forgets.
    pub(super) async fn remove_except(
        &mut self,
        link: Option<&LinkInfo>,
        keep: &[IpNet],
    ) -> Result<(), SysError> {
        let go: Vec<InstalledAddr> = self
            .installed
            .iter()
            .filter(|i| !keep.contains(&i.addr))
            .copied()
            .collect();
        for i in go {
            if let Some(link) = link {
                match self.nl.remove_vip(link, i.addr, &self.installed).await {
                    Ok(_) | Err(SysError::NoSuchInterface(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.forget(i.addr);
        }
        Ok(())
    }

    /// The VIPs among `vips` that someone else holds on the link now.
    pub(super) async fn foreign(
        &self,
        link: &LinkInfo,
        vips: &[IpNet],
    ) -> Result<Vec<IpNet>, SysError> {
        let listed = self.nl.addresses(link.index).await?;
        Ok(vips
            .iter()
            .filter(|v| {
                listed
                    .iter()
                    .any(|a| a.addr.addr() == v.addr() && !a.is_ours(&link.name, &self.installed))
            })
            .copied()
            .collect())
    }

    /// Which of our records are on the link now (a predecessor's, at
    /// start); records of addresses that are gone are dropped.
    pub(super) async fn present(&mut self, link: &LinkInfo) -> Result<Vec<IpNet>, SysError> {
        let listed = self.nl.addresses(link.index).await?;
        let present: Vec<IpNet> = self
            .installed
            .iter()
            .filter(|i| {
                listed
                    .iter()
                    .any(|a| a.addr == i.addr && a.is_ours(&link.name, &self.installed))
            })
            .map(|i| i.addr)
            .collect();
        self.installed.retain(|i| present.contains(&i.addr));
        Ok(present)
    }

    /// Whether `ip` is the address of one of our records.
    pub(super) fn is_installed(&self, ip: IpAddr) -> bool {
        self.installed.iter().any(|i| i.addr.addr() == ip)
    }

    /// Keeps the longest lifetime ever given (a reload may shorten it while
    /// the address still has the old one left).
    fn record(&mut self, vip: IpNet) {
        let new = InstalledAddr::new(vip, self.lifetime);
        match self.installed.iter_mut().find(|i| i.addr == vip) {
            Some(i) => i.lifetime_secs = i.lifetime_secs.max(new.lifetime_secs),
            None => self.installed.push(new),
        }
    }

    fn forget(&mut self, vip: IpNet) {
        self.installed.retain(|i| i.addr != vip);
    }
}

/// Sends the gratuitous ARPs (IPv4) or unsolicited NAs (IPv6) that move the
/// VIPs' traffic to this node, from the interface MAC (as keepalived does
/// without use_vmac).
pub(super) struct Announcer {
    tx: PacketSender,
    mac: [u8; 6],
}

impl Announcer {
    /// None for a link without a 6-byte hardware address (nothing to
    /// announce from).
    pub(super) fn open(link: &LinkInfo) -> std::io::Result<Option<Announcer>> {
        let Some(mac) = link.mac else {
            return Ok(None);
        };
        Ok(Some(Announcer {
            tx: PacketSender::open(link.index)?,
            mac,
        }))
    }

    pub(super) fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface's MAC changed: announce from the new one.
    pub(super) fn set_mac(&mut self, mac: [u8; 6]) {
        self.mac = mac;
    }

    pub(super) fn announce(&self, vips: &[IpNet], m: &InstanceMetrics) {
        for vip in vips {
            let r = match vip.addr() {
                IpAddr::V4(v4) => self.tx.send(&gratuitous_arp_frame(self.mac, v4)),
                IpAddr::V6(v6) => self.tx.send(&unsolicited_na_frame(self.mac, v6, false)),
            };
            match r {
                Ok(()) => {
                    m.garps.inc();
                }
                Err(e) => tracing::debug!(vip = %vip, error = %e, "gratuitous ARP/NA not sent"),
            }
        }
    }
}
