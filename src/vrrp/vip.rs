//! The VIPs of one instance on its interface, and the gratuitous ARPs /
//! unsolicited NAs that announce them. I/O: rtnetlink and AF_PACKET.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::sys::addr::{AddOutcome, LinkInfo, Netlink, SysError};
use crate::sys::packet::PacketSender;

use super::metrics::InstanceMetrics;
use super::packet::{gratuitous_arp_frame, unsolicited_na_frame};

/// The VIPs of one instance on its interface: installs, renews, removes,
/// and never touches an address someone else configured.
pub(super) struct VipHolder {
    nl: Netlink,
    vips: Vec<IpNet>,
    lifetime: Duration,
    /// VIPs found configured by someone else: announced, never removed.
    foreign: Vec<IpAddr>,
    /// Added by us and not removed since (the master's, or being handed over).
    pub(super) held: bool,
}

impl VipHolder {
    pub(super) fn new(nl: Netlink, vips: Vec<IpNet>, lifetime: Duration) -> VipHolder {
        VipHolder {
            nl,
            vips,
            lifetime,
            foreign: Vec::new(),
            held: false,
        }
    }

    pub(super) async fn install(&mut self, link: &LinkInfo) -> Result<(), SysError> {
        self.held = true;
        for vip in self.vips.clone() {
            match self.nl.add_vip(link, vip, self.lifetime).await? {
                AddOutcome::Installed => self.foreign.retain(|f| *f != vip.addr()),
                AddOutcome::Foreign => {
                    if !self.foreign.contains(&vip.addr()) {
                        tracing::warn!(vip = %vip, interface = %link.name,
                            "VIP already configured by someone else: left alone and never removed by lbd");
                        self.foreign.push(vip.addr());
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) async fn remove(&mut self, link: &LinkInfo) -> Result<(), SysError> {
        self.held = false;
        for vip in &self.vips {
            self.nl.remove_vip(link, vip.addr()).await?;
        }
        Ok(())
    }

    pub(super) fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr() == ip)
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
