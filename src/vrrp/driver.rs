//! The async edge around the pure [`VirtualRouter`](super::fsm::VirtualRouter):
//! one task per instance. It sleeps until the router's next deadline, feeds
//! it received adverts, link changes and tracking changes, and performs the
//! actions it returns: send adverts, add/remove VIPs, gratuitous ARPs /
//! unsolicited NAs, notify. While master it also renews the VIPs' lifetime
//! and puts back a VIP that something removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{TrackConfig, TrackTarget, VrrpInstanceConfig, VrrpVersion};
use crate::status::{TrackStatus, VrrpInstanceStatus, VrrpPeerStatus};
use crate::sys::addr::{AddOutcome, LinkInfo, Netlink, SysError};
use crate::sys::link::{NetEvent, NetMonitor};
use crate::sys::packet::PacketSender;

use super::metrics::{InstanceMetrics, VrrpMetrics};
use super::net::{garp_frame, unsolicited_na_frame, VrrpSocket};

/// Listener name -> has at least one healthy backend (what app.rs publishes).
pub type ListenerHealthMap = BTreeMap<String, bool>;

#[derive(Debug, thiserror::Error)]
pub enum VrrpError {
    #[error("vrrp {instance}: {source}")]
    Sys { instance: String, source: SysError },
    #[error("vrrp {instance}: {what}: {source}")]
    Io {
        instance: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// The VIPs of one instance on its interface: installs, renews, removes,
/// and never touches an address someone else configured.
struct VipHolder {
    nl: Netlink,
    vips: Vec<IpNet>,
    lifetime: Duration,
    /// VIPs found configured by someone else: announced, never removed.
    foreign: Vec<IpAddr>,
    held: bool,
}

impl VipHolder {
    async fn install(&mut self, link: &LinkInfo) -> Result<(), SysError> {
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

    async fn remove(&mut self, link: &LinkInfo) -> Result<(), SysError> {
        self.held = false;
        for vip in &self.vips {
            self.nl.remove_vip(link, vip.addr()).await?;
        }
        Ok(())
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr() == ip)
    }
}

/// Sends the gratuitous ARPs (IPv4) or unsolicited NAs (IPv6) that move the
/// VIPs' traffic to this node, from the interface MAC (as keepalived does
/// without use_vmac).
struct Announcer {
    tx: PacketSender,
    mac: [u8; 6],
}

impl Announcer {
    fn announce(&self, vips: &[IpNet], m: &InstanceMetrics) {
        for vip in vips {
            let r = match vip.addr() {
                IpAddr::V4(v4) => self.tx.send(&garp_frame(self.mac, v4)),
                IpAddr::V6(v6) => self.tx.send(&unsolicited_na_frame(self.mac, v6)),
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

/// Runs `CMD INSTANCE STATE` through the shell without waiting for it
/// (as keepalived's notify scripts); its exit status is logged.
fn run_notify(cmd: &str, instance: &str, state: &str) {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("{cmd} \"$1\" \"$2\""))
        .arg("lbd-notify")
        .arg(instance)
        .arg(state)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    match c.spawn() {
        Ok(mut child) => {
            let cmd = cmd.to_string();
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(st) if st.success() => {}
                    Ok(st) => tracing::warn!(notify = %cmd, status = %st, "notify command failed"),
                    Err(e) => tracing::warn!(notify = %cmd, error = %e, "notify command"),
                }
            });
        }
        Err(e) => tracing::warn!(notify = %cmd, error = %e, "cannot run notify command"),
    }
}

/// Which tracked objects are failing now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TrackState {
    failing: Vec<bool>,
}

fn track_failing(
    tracks: &[TrackConfig],
    listeners: &ListenerHealthMap,
    links_up: &BTreeMap<String, bool>,
) -> TrackState {
    TrackState {
        failing: tracks
            .iter()
            .map(|t| match &t.target {
                // Unknown yet (listener not started): not failing, so a
                // starting node does not give away a VIP it holds.
                TrackTarget::Listener(name) => listeners.get(name) == Some(&false),
                TrackTarget::Interface(name) => links_up.get(name) == Some(&false),
            })
            .collect(),
    }
}

/// Priority after tracking: the configured one plus the weight of every
/// failing track, kept within 1..=254 (0 means "leaving", 255 "owner").
fn effective_priority(base: u8, tracks: &[TrackConfig], state: &TrackState) -> u8 {
    let sum: i64 = tracks
        .iter()
        .zip(&state.failing)
        .filter(|(_, f)| **f)
        .map(|(t, _)| i64::from(t.weight))
        .sum();
    (i64::from(base) + sum).clamp(1, 254) as u8
}

fn track_status(tracks: &[TrackConfig], state: &TrackState) -> Vec<TrackStatus> {
    tracks
        .iter()
        .zip(&state.failing)
        .map(|(t, f)| TrackStatus {
            target: match &t.target {
                TrackTarget::Listener(n) => format!("listener:{n}"),
                TrackTarget::Interface(n) => format!("interface:{n}"),
            },
            weight: t.weight,
            failing: *f,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: TrackTarget, weight: i32) -> TrackConfig {
        TrackConfig { target, weight }
    }

    #[test]
    fn tracking_adds_weights_of_failing_targets_only() {
        let tracks = vec![
            t(TrackTarget::Listener("api".into()), -50),
            t(TrackTarget::Interface("eth1".into()), -30),
            t(TrackTarget::Listener("other".into()), -10),
        ];
        let mut l = ListenerHealthMap::new();
        l.insert("api".into(), false);
        l.insert("other".into(), true);
        let mut links = BTreeMap::new();
        links.insert("eth1".to_string(), true);
        let st = track_failing(&tracks, &l, &links);
        assert_eq!(st.failing, vec![true, false, false]);
        assert_eq!(effective_priority(100, &tracks, &st), 50);
        links.insert("eth1".to_string(), false);
        let st = track_failing(&tracks, &l, &links);
        assert_eq!(effective_priority(100, &tracks, &st), 20);
        // Never 0 (that means "leaving") nor above 254.
        assert_eq!(effective_priority(10, &tracks, &st), 1);
        let up = vec![t(TrackTarget::Listener("api".into()), 200)];
        let st = track_failing(&up, &l, &links);
        assert_eq!(effective_priority(100, &up, &st), 254);
        // A listener not published yet does not count as failing.
        let st = track_failing(&[t(TrackTarget::Listener("new".into()), -50)], &l, &links);
        assert_eq!(st.failing, vec![false]);
    }
}
