//! The `vrrp` section: instances, their timing, addresses, authentication
//! and tracking.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::super::model::{TrackConfig, TrackTarget, VrrpConfig, VrrpInstanceConfig, VrrpVersion};
use super::super::yaml::{Node, Value};
use super::{Cx, Obj};

const INSTANCE: &str = "a VRRP instance";

const INSTANCE_KEYS: &[&str] = &[
    "name",
    "interface",
    "vrid",
    "version",
    "priority",
    "advert_interval",
    "preempt",
    "preempt_delay",
    "immediate_preempt",
    "virtual_ips",
    "unicast_peers",
    "auth_pass",
    "track",
    "garp_burst",
    "garp_refresh",
    "garp_master_delay",
    "notify",
    "notify_master",
    "notify_backup",
    "notify_fault",
    "notify_stop",
    "vip_lifetime",
    "handover_grace",
];

/// `preempt`, `preempt_delay` and `immediate_preempt`.
struct Preemption {
    preempt: bool,
    delay: Duration,
    immediate: bool,
}

/// `garp_burst`, `garp_refresh` and `garp_master_delay`.
struct Garp {
    burst: u32,
    refresh: Option<Duration>,
    master_delay: Option<Duration>,
}

impl Cx<'_> {
    pub(super) fn vrrp(&mut self, n: &Node, listeners: &BTreeSet<String>) -> VrrpConfig {
        let mut instances = Vec::new();
        let Some(mut o) = self.obj(n, "vrrp") else {
            return VrrpConfig { instances };
        };
        if let Some(list) = o.get("instances") {
            if let Value::Seq(items) = &list.value {
                instances = self.vrrp_instances(items, listeners);
            } else {
                self.err(list.pos, "vrrp.instances must be a list");
            }
        }
        self.finish(o, "vrrp", &["instances"]);
        VrrpConfig { instances }
    }

    /// Every valid instance; names are unique, and so is each (interface,
    /// vrid, family): two routers of one node would fight over the group
    /// (RFC 5798 keeps IPv4 and IPv6 groups apart, and so does keepalived,
    /// so one VRID may serve both families). A VIP belongs to one instance:
    /// two would add and remove it under each other.
    fn vrrp_instances(
        &mut self,
        items: &[Node],
        listeners: &BTreeSet<String>,
    ) -> Vec<VrrpInstanceConfig> {
        let mut instances = Vec::new();
        let mut names = BTreeSet::new();
        let mut groups = BTreeMap::new();
        let mut vips: BTreeMap<IpAddr, String> = BTreeMap::new();
        for item in items {
            let Some(inst) = self.vrrp_instance(item, listeners) else {
                continue;
            };
            if !names.insert(inst.name.clone()) {
                self.err(
                    item.pos,
                    format!("duplicate VRRP instance name {:?}", inst.name),
                );
            }
            let v6 = inst.virtual_ips.first().is_some_and(|n| n.addr().is_ipv6());
            let key = (inst.interface.clone(), inst.vrid, v6);
            if let Some(other) = groups.insert(key, inst.name.clone()) {
                self.err(
                    item.pos,
                    format!(
                        "instance {:?} uses the same interface, vrid and address family as {other:?}",
                        inst.name
                    ),
                );
            }
            for vip in &inst.virtual_ips {
                match vips.get(&vip.addr()) {
                    Some(other) if *other != inst.name => self.err(
                        item.pos,
                        format!(
                            "virtual IP {} is in instance {other:?} already (a VIP belongs to one instance)",
                            vip.addr()
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        vips.insert(vip.addr(), inst.name.clone());
                    }
                }
            }
            instances.push(inst);
        }
        instances
    }

    fn vrrp_instance(
        &mut self,
        n: &Node,
        listeners: &BTreeSet<String>,
    ) -> Option<VrrpInstanceConfig> {
        let mut o = self.obj(n, INSTANCE)?;
        let name = self.required_string(&mut o, "name", INSTANCE);
        let interface = self.vrrp_interface(&mut o);
        let vrid = match o.get("vrid") {
            Some(n) => self.int_in(n, "vrid", 1, 255).map(|v| v as u8),
            None => {
                self.err(o.pos, "a VRRP instance needs a vrid (1-255)");
                None
            }
        };
        let version = self.vrrp_version(&mut o);
        let priority = o
            .get("priority")
            .and_then(|n| self.int_in(n, "priority", 1, 254))
            .unwrap_or(100) as u8;
        let advert_interval = self.advert_interval(&mut o, version);
        let preemption = self.preemption(&mut o);
        let virtual_ips = self.virtual_ips(&mut o, version);
        let unicast_peers = self.unicast_peers(&mut o, &virtual_ips);
        let auth_pass = self.auth_pass(&mut o, version);
        let track = match o.get("track") {
            Some(list) => self.list(list, "track", |cx, n| cx.track(n, listeners)),
            None => Vec::new(),
        };
        let garp = self.garp(&mut o);
        let mut notify = |key: &str| o.get(key).and_then(|n| self.nonempty_string(n, key));
        let scripts = [
            notify("notify"),
            notify("notify_master"),
            notify("notify_backup"),
            notify("notify_fault"),
            notify("notify_stop"),
        ];
        let vip_lifetime = self.vip_lifetime(&mut o, advert_interval);
        let handover_grace = self.handover_grace(&mut o);
        self.finish(o, INSTANCE, INSTANCE_KEYS);
        Some(VrrpInstanceConfig {
            name: name?,
            interface: interface?,
            vrid: vrid?,
            version,
            priority,
            advert_interval,
            preempt: preemption.preempt,
            preempt_delay: preemption.delay,
            immediate_preempt: preemption.immediate,
            virtual_ips,
            unicast_peers,
            auth_pass,
            track,
            garp_burst: garp.burst,
            garp_refresh: garp.refresh,
            garp_master_delay: garp.master_delay,
            notify: scripts[0].clone(),
            notify_master: scripts[1].clone(),
            notify_backup: scripts[2].clone(),
            notify_fault: scripts[3].clone(),
            notify_stop: scripts[4].clone(),
            vip_lifetime,
            handover_grace,
        })
    }

    /// The interface name, as the kernel would take it (IFNAMSIZ).
    fn vrrp_interface(&mut self, o: &mut Obj<'_>) -> Option<String> {
        let interface = self.required_string(o, "interface", INSTANCE);
        if let (Some(ifname), Some(node)) = (&interface, o.get("interface")) {
            if ifname.len() > 15 || ifname.contains('/') || ifname.contains(' ') {
                self.err(
                    node.pos,
                    format!("interface {ifname:?} is not a valid interface name"),
                );
            }
        }
        interface
    }

    fn vrrp_version(&mut self, o: &mut Obj<'_>) -> VrrpVersion {
        o.get("version")
            .and_then(|n| {
                let v = self.int_in(n, "version", 2, 3)?;
                Some(if v == 2 {
                    VrrpVersion::V2
                } else {
                    VrrpVersion::V3
                })
            })
            .unwrap_or(VrrpVersion::V3)
    }

    /// What the version's advertisement can carry: centiseconds in 12 bits
    /// (RFC 5798 5.2.7), or whole seconds in 8 bits (RFC 3768 5.3.7).
    fn advert_interval(&mut self, o: &mut Obj<'_>, version: VrrpVersion) -> Duration {
        let node = o.get("advert_interval");
        let interval = node
            .and_then(|n| self.duration(n, "advert_interval"))
            .unwrap_or(Duration::from_secs(1));
        let Some(n) = node else {
            return interval;
        };
        let ms = interval.as_millis();
        match version {
            VrrpVersion::V3 => {
                if !(10..=40_950).contains(&ms)
                    || ms % 10 != 0
                    || interval.subsec_nanos() % 1_000_000 != 0
                {
                    self.err(
                        n.pos,
                        "advert_interval for VRRPv3 must be 10ms to 40.95s in steps of 10ms",
                    );
                }
            }
            VrrpVersion::V2 => {
                if interval.subsec_nanos() != 0 || !(1..=255).contains(&interval.as_secs()) {
                    self.err(
                        n.pos,
                        "advert_interval for VRRPv2 must be whole seconds from 1s to 255s",
                    );
                }
            }
        }
        interval
    }

    fn preemption(&mut self, o: &mut Obj<'_>) -> Preemption {
        let preempt = o
            .get("preempt")
            .and_then(|n| self.boolean(n))
            .unwrap_or(true);
        let delay = o
            .get("preempt_delay")
            .and_then(|n| self.duration(n, "preempt_delay"))
            .unwrap_or(Duration::ZERO);
        if let Some(n) = o.get("preempt_delay") {
            if delay > Duration::from_secs(1000) {
                self.err(n.pos, "preempt_delay must be at most 1000s");
            }
        }
        let immediate = o
            .get("immediate_preempt")
            .and_then(|n| self.boolean(n))
            .unwrap_or(true);
        Preemption {
            preempt,
            delay,
            immediate,
        }
    }

    /// At least one, no repeats, one family; IPv6 only with VRRPv3.
    fn virtual_ips(&mut self, o: &mut Obj<'_>, version: VrrpVersion) -> Vec<IpNet> {
        let Some(list) = o.get("virtual_ips") else {
            self.err(o.pos, "a VRRP instance needs virtual_ips");
            return Vec::new();
        };
        let virtual_ips = self.list(list, "virtual_ips", |cx, n| cx.ip_net(n, "virtual_ips"));
        if matches!(&list.value, Value::Seq(items) if items.is_empty()) {
            self.err(list.pos, "virtual_ips must name at least one address");
        }
        let fams: BTreeSet<bool> = virtual_ips.iter().map(|n| n.addr().is_ipv6()).collect();
        if fams.len() > 1 {
            self.err(
                list.pos,
                "virtual_ips must all be IPv4 or all IPv6 (one family per instance)",
            );
        }
        if fams.contains(&true) && version == VrrpVersion::V2 {
            self.err(
                list.pos,
                "IPv6 virtual_ips need version 3 (VRRPv2 is IPv4 only)",
            );
        }
        let mut seen = BTreeSet::new();
        for ip in &virtual_ips {
            if !seen.insert(ip.addr()) {
                self.err(
                    list.pos,
                    format!("virtual IP {} is listed twice", ip.addr()),
                );
            }
        }
        virtual_ips
    }

    fn unicast_peers(&mut self, o: &mut Obj<'_>, virtual_ips: &[IpNet]) -> Vec<IpAddr> {
        let Some(list) = o.get("unicast_peers") else {
            return Vec::new();
        };
        let peers: Vec<IpAddr> = self.list(list, "unicast_peers", |cx, n| {
            cx.parsed(n, "unicast_peers", "an IP address")
        });
        if let Some(v6) = virtual_ips.first().map(|n| n.addr().is_ipv6()) {
            if peers.iter().any(|p| p.is_ipv6() != v6) {
                self.err(
                    list.pos,
                    "unicast_peers must be of the same family as virtual_ips",
                );
            }
        }
        peers
    }

    /// keepalived's `auth_type PASS`: VRRPv2 only (RFC 3768 5.3.6).
    fn auth_pass(&mut self, o: &mut Obj<'_>, version: VrrpVersion) -> String {
        let Some(n) = o.get("auth_pass") else {
            return String::new();
        };
        let s = self.string(n).unwrap_or_default();
        if version == VrrpVersion::V3 && !s.is_empty() {
            self.err(
                n.pos,
                "auth_pass is only for version 2 (RFC 5798 removed authentication)",
            );
        }
        if s.len() > 8 {
            self.err(
                n.pos,
                "auth_pass must be at most 8 bytes (keepalived's PASS)",
            );
        }
        s
    }

    fn garp(&mut self, o: &mut Obj<'_>) -> Garp {
        let burst = o
            .get("garp_burst")
            .and_then(|n| self.int_in(n, "garp_burst", 0, 100))
            .unwrap_or(5) as u32;
        let refresh = match o.get("garp_refresh") {
            Some(n) => self.duration(n, "garp_refresh").filter(|d| !d.is_zero()),
            None => None,
        };
        let master_delay = match o.get("garp_master_delay") {
            Some(n) => self
                .duration(n, "garp_master_delay")
                .filter(|d| !d.is_zero()),
            None => Some(Duration::from_secs(5)),
        };
        Garp {
            burst,
            refresh,
            master_delay,
        }
    }

    /// How long a master that handed over keeps serving the connections
    /// it accepted (docs/vrrp.md, handover grace); 0s: off.
    fn handover_grace(&mut self, o: &mut Obj<'_>) -> Duration {
        const DEFAULT: Duration = Duration::from_secs(2);
        let Some(n) = o.get("handover_grace") else {
            return DEFAULT;
        };
        let d = self.duration(n, "handover_grace").unwrap_or(DEFAULT);
        if d > Duration::from_secs(60) {
            self.err(n.pos, "handover_grace must be at most 60s (0s: off)");
        }
        d
    }

    fn vip_lifetime(&mut self, o: &mut Obj<'_>, advert_interval: Duration) -> Duration {
        // Seconds are the kernel's unit for valid_lft; three adverts' worth
        // lets the master renew it twice before it could lapse.
        let default_lifetime =
            Duration::from_secs((advert_interval.as_secs_f64() * 3.0).ceil().max(2.0) as u64);
        let Some(n) = o.get("vip_lifetime") else {
            return default_lifetime;
        };
        let d = self.duration(n, "vip_lifetime").unwrap_or(default_lifetime);
        if d.subsec_nanos() != 0 || d < Duration::from_secs(2) {
            self.err(n.pos, "vip_lifetime must be whole seconds, at least 2s");
        } else if d < advert_interval * 2 {
            self.err(n.pos, "vip_lifetime must be at least two advert intervals, or the VIP lapses between renewals");
        }
        d
    }

    fn track(&mut self, n: &Node, listeners: &BTreeSet<String>) -> Option<TrackConfig> {
        let mut o = self.obj(n, "a track entry")?;
        let listener = o.get("listener");
        let interface = o.get("interface");
        let target = match (listener, interface) {
            (Some(l), None) => {
                let name = self.nonempty_string(l, "track.listener")?;
                if !listeners.contains(&name) {
                    self.err(
                        l.pos,
                        format!("track.listener: no tcplb listener is named {name:?}"),
                    );
                }
                Some(TrackTarget::Listener(name))
            }
            (None, Some(i)) => self
                .nonempty_string(i, "track.interface")
                .map(TrackTarget::Interface),
            _ => {
                self.err(
                    n.pos,
                    "a track entry names exactly one of listener or interface",
                );
                None
            }
        };
        let weight = match o.get("weight") {
            Some(w) => self.int_in(w, "track.weight", -253, 253).map(|v| v as i32),
            None => {
                self.err(n.pos, "a track entry needs a weight (e.g. -50)");
                None
            }
        };
        self.finish(o, "a track entry", &["listener", "interface", "weight"]);
        Some(TrackConfig {
            target: target?,
            weight: weight?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::*;
    use super::*;

    fn instance(extra: &str) -> String {
        format!(
            "vrrp:\n  instances:\n    - name: a\n      interface: eth0\n      vrid: 51\n      virtual_ips: [10.0.0.1/24]\n{extra}"
        )
    }

    #[test]
    fn defaults_follow_keepalived_and_the_advert_interval() {
        let c = check(&instance("      advert_interval: 3s\n")).unwrap();
        let i = &c.vrrp.unwrap().instances[0];
        assert_eq!(i.version, VrrpVersion::V3);
        assert_eq!(i.priority, 100);
        assert!(i.preempt && i.immediate_preempt);
        assert_eq!(i.preempt_delay, Duration::ZERO);
        assert_eq!(
            (i.garp_burst, i.garp_refresh, i.garp_master_delay),
            (5, None, Some(Duration::from_secs(5)))
        );
        // Three adverts' worth, in whole seconds.
        assert_eq!(i.vip_lifetime, Duration::from_secs(9));
        assert!(i.unicast_peers.is_empty() && i.track.is_empty() && i.auth_pass.is_empty());
    }

    #[test]
    fn handover_grace_defaults_to_two_seconds_zero_is_off_and_is_bounded() {
        let grace = |extra: &str| {
            check(&instance(extra)).unwrap().vrrp.unwrap().instances[0].handover_grace
        };
        assert_eq!(grace(""), Duration::from_secs(2));
        assert_eq!(grace("      handover_grace: 0s\n"), Duration::ZERO);
        assert_eq!(
            grace("      handover_grace: 500ms\n"),
            Duration::from_millis(500)
        );
        assert_eq!(
            problems(&instance("      handover_grace: 61s\n")),
            ["t.yaml:7:23: handover_grace must be at most 60s (0s: off)"]
        );
        // Off in the router's parameters when zero.
        let c = check(&instance("      handover_grace: 0s\n")).unwrap();
        let p = crate::vrrp::fsm::VirtualRouterParams::from_config(
            &c.vrrp.unwrap().instances[0],
            "10.0.0.2".parse().unwrap(),
        );
        assert_eq!(p.handover_grace, None);
    }

    #[test]
    fn zero_turns_garp_timers_off() {
        let c = check(&instance(
            "      garp_refresh: 0s\n      garp_master_delay: 0\n      garp_burst: 0\n",
        ))
        .unwrap();
        let i = &c.vrrp.unwrap().instances[0];
        assert_eq!(
            (i.garp_burst, i.garp_refresh, i.garp_master_delay),
            (0, None, None)
        );
    }

    #[test]
    fn required_keys_are_reported_at_the_instance() {
        assert_eq!(
            problems("vrrp:\n  instances:\n    - priority: 50\n"),
            [
                "t.yaml:3:7: a VRRP instance needs a name",
                "t.yaml:3:7: a VRRP instance needs a interface",
                "t.yaml:3:7: a VRRP instance needs a vrid (1-255)",
                "t.yaml:3:7: a VRRP instance needs virtual_ips",
            ]
        );
        assert_eq!(
            problems("vrrp:\n  instances: {}\n"),
            ["t.yaml:2:14: vrrp.instances must be a list"]
        );
    }

    #[test]
    fn timing_and_address_rules() {
        let text = instance(
            "      preempt_delay: 1001s\n      unicast_peers: [fd00::2]\n      vip_lifetime: 2500ms\n",
        )
        .replace("interface: eth0", "interface: a-very-long-ifname0")
        .replace("[10.0.0.1/24]", "[10.0.0.1/24, 10.0.0.1/32]");
        assert_eq!(
            problems(&text),
            [
                "t.yaml:4:18: interface \"a-very-long-ifname0\" is not a valid interface name",
                "t.yaml:6:20: virtual IP 10.0.0.1 is listed twice",
                "t.yaml:7:22: preempt_delay must be at most 1000s",
                "t.yaml:8:22: unicast_peers must be of the same family as virtual_ips",
                "t.yaml:9:21: vip_lifetime must be whole seconds, at least 2s",
            ]
        );
        assert_eq!(
            problems(&instance("      advert_interval: 2s\n      vip_lifetime: 3s\n")),
            ["t.yaml:8:21: vip_lifetime must be at least two advert intervals, or the VIP lapses between renewals"]
        );
        assert_eq!(
            problems(
                &instance("      virtual_ips: []\n")
                    .replace("      virtual_ips: [10.0.0.1/24]\n", "")
            ),
            ["t.yaml:6:20: virtual_ips must name at least one address"]
        );
    }

    #[test]
    fn version_2_takes_auth_pass_and_whole_seconds() {
        let c = check(&instance(
            "      version: 2\n      advert_interval: 2s\n      auth_pass: secret\n",
        ))
        .unwrap();
        let i = &c.vrrp.unwrap().instances[0];
        assert_eq!(i.version, VrrpVersion::V2);
        assert_eq!(i.auth_pass, "secret");
        assert_eq!(
            problems(&instance("      version: 2\n      advert_interval: 256s\n")),
            ["t.yaml:8:24: advert_interval for VRRPv2 must be whole seconds from 1s to 255s"]
        );
    }

    #[test]
    fn instances_are_unique_by_name_and_by_group() {
        let text = "vrrp:\n  instances:\n    - {name: a, interface: eth0, vrid: 1, virtual_ips: [10.0.0.1/24]}\n    \
                    - {name: a, interface: eth0, vrid: 2, virtual_ips: [10.0.0.2/24]}\n    \
                    - {name: b, interface: eth0, vrid: 1, virtual_ips: [10.0.0.3/24]}\n    \
                    - {name: c, interface: eth0, vrid: 1, virtual_ips: [fd00::1/64]}\n    \
                    - {name: d, interface: eth1, vrid: 9, virtual_ips: [10.0.0.3/32]}\n    \
                    - {name: e, interface: eth1, vrid: 10, virtual_ips: [fd00::1/128]}\n";
        assert_eq!(
            problems(text),
            [
                "t.yaml:4:7: duplicate VRRP instance name \"a\"",
                "t.yaml:5:7: instance \"b\" uses the same interface, vrid and address family as \"a\"",
                "t.yaml:7:7: virtual IP 10.0.0.3 is in instance \"b\" already (a VIP belongs to one instance)",
                "t.yaml:8:7: virtual IP fd00::1 is in instance \"c\" already (a VIP belongs to one instance)",
            ]
        );
    }

    #[test]
    fn track_entries() {
        let c = check(&format!(
            "tcplb:\n  listeners: [{{name: api, bind: 0.0.0.0:8443, backends: [10.0.0.9:6443]}}]\n{}",
            instance("      track:\n        - {listener: api, weight: -50}\n        - {interface: eth1, weight: 10}\n")
        ))
        .unwrap();
        let i = &c.vrrp.unwrap().instances[0];
        assert_eq!(
            i.track,
            [
                TrackConfig {
                    target: TrackTarget::Listener("api".into()),
                    weight: -50
                },
                TrackConfig {
                    target: TrackTarget::Interface("eth1".into()),
                    weight: 10
                },
            ]
        );
        assert_eq!(
            problems(&instance(
                "      track:\n        - {listener: x, interface: eth0, weight: 1}\n        - {interface: eth0}\n        - {interface: eth0, weight: 300}\n"
            )),
            [
                "t.yaml:8:11: a track entry names exactly one of listener or interface",
                "t.yaml:9:11: a track entry needs a weight (e.g. -50)",
                "t.yaml:10:37: track.weight must be between -253 and 253, not 300",
            ]
        );
    }
}
