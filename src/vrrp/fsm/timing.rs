//! What a virtual router is configured with, and the RFC's timing formulas.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::VrrpInstanceConfig;
use crate::vrrp::packet::{interval_cs, Version};

/// Everything the machine needs to know about its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualRouterParams {
    pub version: Version,
    pub vrid: u8,
    /// Configured priority, 1..=254 (255 would make us the address owner,
    /// RFC 5798 sec 6.4.1, which lbd never is but the machine supports).
    pub priority: u8,
    /// Our Advertisement_Interval in centiseconds (v2: a multiple of 100).
    pub advert_interval_cs: u16,
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay: Duration,
    /// Our primary address on the interface: the source of our adverts and
    /// the tie-breaker between equal priorities (RFC 5798 sec 6.4.3).
    pub primary_address: IpAddr,
    /// The VIPs (addresses only), to tell whether peers advertise the same.
    #[serde(default)]
    pub virtual_ips: Vec<IpAddr>,
    /// Period of the gratuitous ARP / NA refresh while master.
    #[serde(default)]
    pub garp_refresh: Option<Duration>,
    /// Not RFC: take over after Skew_Time on a lower-priority advert (see
    /// module doc).
    #[serde(default)]
    pub immediate_preempt: bool,
    /// Second gratuitous burst this long after becoming master; None: off.
    #[serde(default)]
    pub garp_master_delay: Option<Duration>,
    /// Period of `Action::RenewVips` while master (the VIPs' finite
    /// lifetime); None: never.
    #[serde(default)]
    pub vip_renew: Option<Duration>,
    /// Handover grace (module doc): how long a master that left keeps its
    /// VIPs, hidden, for the connections it accepted, and how long its
    /// successor sends those connections' packets on to it; None: off.
    #[serde(default)]
    pub handover_grace: Option<Duration>,
}

impl VirtualRouterParams {
    /// From the config of one instance; `primary_address` is the interface
    /// address the driver sends from (of the VIPs' family).
    pub fn from_config(cfg: &VrrpInstanceConfig, primary_address: IpAddr) -> Self {
        let version = Version::from(cfg.version);
        VirtualRouterParams {
            version,
            vrid: cfg.vrid,
            priority: cfg.priority,
            advert_interval_cs: interval_cs(version, cfg.advert_interval),
            preempt: cfg.preempt,
            preempt_delay: cfg.preempt_delay,
            primary_address,
            virtual_ips: cfg.virtual_ips.iter().map(|n| n.addr()).collect(),
            garp_refresh: cfg.garp_refresh.filter(|d| !d.is_zero()),
            immediate_preempt: cfg.immediate_preempt,
            garp_master_delay: cfg.garp_master_delay.filter(|d| !d.is_zero()),
            vip_renew: Some(vip_renew_period(cfg.vip_lifetime)),
            handover_grace: Some(cfg.handover_grace).filter(|d| !d.is_zero()),
        }
    }
}

/// How often a master renews its VIPs' lifetime: three times per lifetime,
/// so two renewals may fail (or be late) before a VIP lapses.
pub fn vip_renew_period(lifetime: Duration) -> Duration {
    (lifetime / 3).max(Duration::from_millis(500))
}

/// The advertised priority: configured priority plus the weights of the
/// failing track entries, clamped to 1..=254 (0 means "leaving" and 255
/// "address owner" on the wire, RFC 5798 sec 5.2.4). An owner stays 255.
pub fn effective_priority(priority: u8, track_weight: i32) -> u8 {
    if priority == 255 {
        return 255;
    }
    (i32::from(priority).saturating_add(track_weight)).clamp(1, 254) as u8
}

/// Skew_Time. v3 (RFC 5798 sec 6.1): ((256 - Priority) *
/// Master_Adver_Interval) / 256. v2 (RFC 3768 sec 6.1): (256 - Priority) /
/// 256 seconds, whatever the interval. Exact to the nanosecond.
pub fn skew_time(version: Version, priority: u8, master_adver_interval_cs: u16) -> Duration {
    let weight = 256 - u32::from(priority);
    match version {
        Version::V3 => cs(master_adver_interval_cs) * weight / 256,
        Version::V2 => Duration::from_secs(1) * weight / 256,
    }
}

/// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798
/// sec 6.1; RFC 3768 sec 6.1 with Advertisement_Interval).
pub fn master_down_interval(
    version: Version,
    priority: u8,
    master_adver_interval_cs: u16,
) -> Duration {
    cs(master_adver_interval_cs) * 3 + skew_time(version, priority, master_adver_interval_cs)
}

/// How long a leaving master keeps its VIPs waiting for a successor's
/// advert (make before break): two of its intervals (a backup's Skew_Time
/// is under one), at least 20 ms, at most 2 s for when no backup is alive.
pub fn leave_bound(advert_interval_cs: u16) -> Duration {
    (cs(advert_interval_cs) * 2).clamp(Duration::from_millis(20), Duration::from_secs(2))
}

/// The shortest gap between two adverts sent in answer to others (to a
/// priority 0, to a lower-priority master): a tenth of our interval, at
/// least 10 ms, so a flood of such packets cannot make us flood the link.
pub fn answer_gap(advert_interval_cs: u16) -> Duration {
    (cs(advert_interval_cs) / 10).max(Duration::from_millis(10))
}

pub(super) fn cs(c: u16) -> Duration {
    Duration::from_millis(u64::from(c) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_and_down_interval_follow_the_rfc_formulas() {
        // v3, priority 100, 1 s: skew = 156/256 s = 609.375 ms.
        assert_eq!(
            skew_time(Version::V3, 100, 100),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            master_down_interval(Version::V3, 100, 100),
            Duration::from_micros(3_609_375)
        );
        // v3 scales with the interval: 10 cs -> 60.9375 ms.
        assert_eq!(
            skew_time(Version::V3, 100, 10),
            Duration::from_nanos(60_937_500)
        );
        // v2 skew is in seconds whatever the interval: 157/256 s for 99.
        assert_eq!(
            skew_time(Version::V2, 99, 300),
            Duration::from_nanos(613_281_250)
        );
        assert_eq!(
            master_down_interval(Version::V2, 99, 300),
            Duration::from_nanos(9_613_281_250)
        );
    }

    #[test]
    fn effective_priority_clamps() {
        assert_eq!(effective_priority(100, -50), 50);
        assert_eq!(effective_priority(100, -500), 1);
        assert_eq!(effective_priority(100, 500), 254);
        assert_eq!(effective_priority(100, i32::MIN), 1);
        assert_eq!(effective_priority(255, -50), 255);
    }

    #[test]
    fn interval_conversion() {
        assert_eq!(interval_cs(Version::V3, Duration::from_millis(100)), 10);
        assert_eq!(interval_cs(Version::V3, Duration::from_millis(15)), 2);
        assert_eq!(interval_cs(Version::V3, Duration::from_secs(100)), 4095);
        assert_eq!(interval_cs(Version::V3, Duration::ZERO), 1);
        assert_eq!(interval_cs(Version::V2, Duration::from_millis(1500)), 200);
        assert_eq!(interval_cs(Version::V2, Duration::from_secs(1)), 100);
    }

    #[test]
    fn bounds_of_leaving_answering_and_renewal() {
        let ms = Duration::from_millis;
        assert_eq!(leave_bound(10), ms(200));
        assert_eq!(leave_bound(1), ms(20));
        assert_eq!(leave_bound(4095), ms(2000));
        assert_eq!(answer_gap(100), ms(100));
        assert_eq!(answer_gap(10), ms(10));
        assert_eq!(answer_gap(1), ms(10));
        assert_eq!(vip_renew_period(Duration::from_secs(3)), ms(1000));
        assert_eq!(vip_renew_period(Duration::from_secs(1)), ms(500));
    }
}
