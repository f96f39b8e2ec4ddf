//! The interface under an instance, as it changes: deleted and created
//! again (a new ifindex), down and up, a new MAC, a new source address;
//! lost notifications (an overrun) answered with a fresh read. Every
//! change ends as a fault that begins or ends, or as new parameters for
//! the router.

use std::net::IpAddr;

use crate::sys::addr::SysError;
use crate::sys::link::NetEvent;

use super::super::fsm::{Fault, Input, State};
use super::super::net::VrrpSocket;
use super::super::track::tracked_interfaces;
use super::super::vip::Announcer;
use super::Instance;

impl Instance {
    /// Reads the interface afresh: the link by name (its ifindex, state,
    /// MAC) and the source address; (re)opens the sockets when the ifindex
    /// is new; raises or ends the faults that follow.
    pub(super) async fn resolve(&mut self) {
        let link = match self.nl.link_by_name(&self.cfg.interface).await {
            Ok(l) => l,
            Err(SysError::NoSuchInterface(_)) => return self.link_gone(),
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e, "cannot read the interface");
                return;
            }
        };
        let old = self.iface.link.replace(link.clone());
        let new_index = old.as_ref().is_none_or(|o| o.index != link.index);
        if new_index {
            if let Some(o) = &old {
                tracing::info!(instance = %self.cfg.name, old = o.index, new = link.index,
                    "interface has a new index: sockets reopened");
            }
            self.iface.sock = None;
            self.iface.announcer = None;
        }
        // New faults first, ended ones last: the router must not pass
        // through Backup between two faults.
        if !link.up {
            let detail = format!("{} is down or has no carrier", link.name);
            self.raise(Fault::LinkDown, detail);
        }
        let mac_changed = !new_index && old.as_ref().is_some_and(|o| o.mac != link.mac);
        if self.iface.announcer.is_none() || mac_changed {
            self.open_announcer(mac_changed);
        }
        self.resolve_source().await;
        if link.up {
            self.clear(Fault::LinkDown);
        }
        self.clear(Fault::LinkGone);
    }

    fn open_announcer(&mut self, mac_changed: bool) {
        let Some(link) = self.iface.link.clone() else {
            return;
        };
        match (&mut self.iface.announcer, link.mac) {
            (Some(a), Some(mac)) if mac_changed => {
                tracing::info!(instance = %self.cfg.name, old = ?a.mac(), new = ?mac,
                    "interface MAC changed: announcing from the new one");
                a.set_mac(mac);
            }
            _ => match Announcer::open(&link) {
                Ok(a) => self.iface.announcer = a,
                Err(e) => {
                    let detail = format!("cannot open a packet socket on {}: {e}", link.name);
                    return self.raise(Fault::SocketError, detail);
                }
            },
        }
        // Neighbours must learn the new MAC at once.
        if mac_changed && self.router.state() == State::Master {
            self.announce_burst(&self.cfg.virtual_ips.clone());
        }
    }

    /// The address adverts go out from: the interface's primary IPv4
    /// address (IPv6: its link-local one; unicast: a global one), never a
    /// VIP. A new one goes to the router as a new primary address.
    async fn resolve_source(&mut self) {
        let Some(link) = self.iface.link.clone() else {
            return;
        };
        let v6 = self
            .cfg
            .virtual_ips
            .first()
            .is_some_and(|v| v.addr().is_ipv6());
        let exclude: Vec<IpAddr> = self.cfg.virtual_ips.iter().map(|v| v.addr()).collect();
        let unicast = !self.cfg.unicast_peers.is_empty();
        let src = match self.nl.source_address(&link, v6, unicast, &exclude).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(instance = %self.cfg.name, error = %e, "cannot list addresses");
                return;
            }
        };
        let Some(src) = src else {
            self.iface.sock = None;
            let what = match (v6, unicast) {
                (false, _) => "primary IPv4",
                (true, false) => "IPv6 link-local",
                (true, true) => "global IPv6",
            };
            let detail = format!("no usable {what} address on {}", link.name);
            return self.raise(Fault::NoSourceAddress, detail);
        };
        let changed = self.iface.src != Some(src);
        if changed && self.iface.src.is_some() {
            tracing::info!(instance = %self.cfg.name, old = ?self.iface.src, new = %src,
                "source address changed");
        }
        self.iface.src = Some(src);
        match &mut self.iface.sock {
            Some(s) if s.ifindex() == link.index => s.set_source(src),
            _ => match VrrpSocket::open(&link.name, link.index, src, &self.cfg.unicast_peers) {
                Ok(s) => self.iface.sock = Some(s),
                Err(e) => {
                    let detail = format!("cannot open the VRRP socket on {}: {e}", link.name);
                    self.raise(Fault::SocketError, detail);
                }
            },
        }
        // Both sockets open (a link without a MAC has nothing to announce
        // from, so no packet socket).
        let has_mac = link.mac.is_some();
        if self.iface.sock.is_some() && (self.iface.announcer.is_some() || !has_mac) {
            self.clear(Fault::SocketError);
        }
        self.clear(Fault::NoSourceAddress);
        if changed {
            self.record.source = Some(src);
            let params = self.params();
            self.follow_ups.push(Input::Reconfigure { params });
        }
    }

    fn link_gone(&mut self) {
        if let Some(old) = self.iface.link.take() {
            tracing::warn!(instance = %self.cfg.name, interface = %old.name, index = old.index,
                "interface gone");
        }
        self.iface.sock = None;
        self.iface.announcer = None;
        self.iface.src = None;
        let detail = format!("interface {} does not exist", self.cfg.interface);
        self.raise(Fault::LinkGone, detail);
    }

    /// The state of the tracked interfaces, read afresh.
    pub(super) async fn refresh_tracked(&mut self) {
        let names: Vec<String> = tracked_interfaces(&self.cfg.track)
            .map(str::to_string)
            .collect();
        self.links_up.retain(|k, _| names.contains(k));
        for name in names {
            let up = self
                .nl
                .link_by_name(&name)
                .await
                .map(|l| l.up)
                .unwrap_or(false);
            self.links_up.insert(name, up);
        }
    }

    pub(super) async fn on_net_event(&mut self, ev: NetEvent) {
        let our_index = self.iface.link.as_ref().map(|l| l.index);
        match ev {
            NetEvent::Link(l) => {
                if l.name == self.cfg.interface || Some(l.index) == our_index {
                    self.resolve().await;
                }
                if self.links_up.contains_key(&l.name) {
                    self.links_up.insert(l.name.clone(), l.up);
                    self.retrack();
                }
            }
            NetEvent::LinkGone { index } => {
                if Some(index) == our_index {
                    self.resolve().await;
                }
                if !self.links_up.is_empty() {
                    self.refresh_tracked().await;
                    self.retrack();
                }
            }
            NetEvent::AddrAdded { ifindex, addr } if Some(ifindex) == our_index => {
                if self.is_vip(addr) {
                    self.check_foreign().await;
                } else {
                    self.resolve_source().await;
                }
            }
            NetEvent::AddrRemoved { ifindex, addr } if Some(ifindex) == our_index => {
                if !self.is_vip(addr) {
                    return self.resolve_source().await;
                }
                if self.router.state() == State::Master && self.router.holds_vips() {
                    // Never lose the VIP while master: someone (or an
                    // expired lifetime) removed it; put it back, announce.
                    tracing::warn!(instance = %self.cfg.name, vip = %addr, "VIP removed while master: restoring");
                    self.install_vips(true).await;
                    self.announce(&self.cfg.virtual_ips.clone());
                }
                if self.faults.contains_key(&Fault::VipForeign) {
                    self.check_foreign().await;
                }
            }
            NetEvent::Overrun => {
                tracing::warn!(instance = %self.cfg.name, "netlink notifications lost: reading links and addresses afresh");
                self.resolve().await;
                self.refresh_tracked().await;
                self.retrack();
                if self.router.state() == State::Master {
                    self.install_vips(true).await;
                }
                self.check_foreign().await;
            }
            NetEvent::AddrAdded { .. } | NetEvent::AddrRemoved { .. } => {}
        }
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        self.cfg.virtual_ips.iter().any(|v| v.addr() == ip) || self.holder.is_installed(ip)
    }
}
