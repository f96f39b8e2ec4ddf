//! VRRP and its kernel plumbing in network namespaces (root; skipped
//! otherwise). Every address used exists only inside the test namespaces.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use lbd::sys::addr::{AddOutcome, InstalledAddr, Netlink, LBD_ADDR_PROTO};
use lbd::sys::link::{NetEvent, NetMonitor};
use support::netns::{require_root, wait_for, Lab};

#[test]
fn vip_is_tagged_renewed_and_expires_when_not_renewed() {
    if !require_root("vip_is_tagged_renewed_and_expires_when_not_renewed") {
        return;
    }
    let mut lab = Lab::new("sys");
    let a = lab.add_ns("a");
    lab.attach(&a, "eth0", &["10.213.1.1/24", "fd00:db8:1::1/64"]);
    // Someone else's address, identical to a VIP we will be asked for.
    lab.sh(&a, &["ip", "addr", "add", "10.213.1.200/24", "dev", "eth0"]);

    let ns = a.clone();
    let outcome = in_ns(&a, move || {
        rt().block_on(async move {
            let nl = Netlink::connect().unwrap();
            let link = nl.link_by_name("eth0").await.unwrap();
            assert!(link.up && link.mac.is_some(), "{link:?}");
            let life = Duration::from_secs(2);
            let (v4net, v6net, other) = (
                "10.213.1.100/24".parse().unwrap(),
                "fd00:db8:1::100/64".parse().unwrap(),
                "10.213.1.200/24".parse().unwrap(),
            );
            let installed = [
                InstalledAddr::new(v4net, life),
                InstalledAddr::new(v6net, life),
                // A record of an address someone else holds (permanent)
                // does not make it ours.
                InstalledAddr::new(other, life),
            ];
            let v4 = nl.add_vip(&link, v4net, life, &installed).await.unwrap();
            let v6 = nl.add_vip(&link, v6net, life, &installed).await.unwrap();
            let foreign = nl.add_vip(&link, other, life, &installed).await.unwrap();
            // Removing an address we did not add is refused silently.
            let removed_foreign = nl.remove_vip(&link, other, &installed).await.unwrap();
            let src4 = nl.source_address(&link, false, false, &[]).await.unwrap();
            let list = nl.addresses(link.index).await.unwrap();
            let ours: Vec<_> = list
                .iter()
                .filter(|x| x.is_ours("eth0", &installed))
                .map(|x| x.addr.addr())
                .collect();
            // IPv6 VIPs never become a source: deprecated from the start.
            let v6_listed = list.iter().find(|x| x.addr == v6net).unwrap();
            assert!(v6_listed.deprecated, "{v6_listed:?}");
            assert_eq!(v6_listed.preferred_lft, Some(0));
            let _ = ns;
            (
                v4,
                v6,
                foreign,
                removed_foreign,
                src4,
                ours,
                list.iter()
                    .map(|x| (x.addr.addr(), x.proto, x.valid_lft))
                    .collect::<Vec<_>>(),
            )
        })
    });
    let (v4, v6, foreign, removed_foreign, src4, ours, list) = outcome;
    assert_eq!(v4, AddOutcome::Installed);
    assert_eq!(v6, AddOutcome::Installed);
    assert_eq!(foreign, AddOutcome::Foreign);
    assert!(!removed_foreign);
    assert_eq!(src4, Some("10.213.1.1".parse().unwrap()));
    let want: Vec<IpAddr> = vec![
        "10.213.1.100".parse().unwrap(),
        "fd00:db8:1::100".parse().unwrap(),
    ];
    for w in &want {
        assert!(ours.contains(w), "{w} not tagged ours: {list:?}");
        let (_, proto, lft) = list.iter().find(|x| x.0 == *w).unwrap();
        assert_eq!(*proto, Some(LBD_ADDR_PROTO));
        assert!(
            lft.is_some_and(|l| l <= 2),
            "finite lifetime expected: {lft:?}"
        );
    }
    let shown = lab.addrs(&a);
    assert!(shown.contains("eth0:lbd"), "IPv4 label missing: {shown}");
    assert!(lab.has_addr(&a, "10.213.1.200"));

    // Nobody renews: the kernel drops both VIPs after their lifetime
    // (it checks lifetimes with a second's granularity).
    let gone = wait_for(Duration::from_secs(6), || {
        !lab.has_addr(&a, "10.213.1.100") && !lab.has_addr(&a, "fd00:db8:1::100")
    });
    assert!(
        gone.is_some(),
        "VIPs outlived their lifetime: {}",
        lab.addrs(&a)
    );
    eprintln!(
        "unrenewed VIPs (lifetime 2 s) gone after {:?}",
        gone.unwrap()
    );
    // The foreign address is permanent and untouched.
    assert!(lab.has_addr(&a, "10.213.1.200"));
}

#[test]
fn renewal_keeps_vip_and_monitor_reports_removal_and_link_down() {
    if !require_root("renewal_keeps_vip_and_monitor_reports_removal_and_link_down") {
        return;
    }
    let mut lab = Lab::new("sys");
    let a = lab.add_ns("b");
    lab.attach(&a, "eth0", &["10.213.2.1/24"]);
    let ns = a.clone();
    let events = in_ns(&a, move || {
        rt().block_on(async move {
            let nl = Netlink::connect().unwrap();
            let mut mon = NetMonitor::open().unwrap();
            let link = nl.link_by_name("eth0").await.unwrap();
            let vip = "10.213.2.100/24".parse().unwrap();
            // Renewed every 500 ms for 3 s with a 2 s lifetime: must survive.
            for _ in 0..6 {
                nl.add_vip(&link, vip, Duration::from_secs(2), &[])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let still = nl
                .addresses(link.index)
                .await
                .unwrap()
                .iter()
                .any(|x| x.addr == vip);
            // Someone removes it; then the link goes down.
            let out = std::process::Command::new("ip")
                .args(["-n", &ns, "addr", "del", "10.213.2.100/24", "dev", "eth0"])
                .output()
                .unwrap();
            assert!(out.status.success());
            let out = std::process::Command::new("ip")
                .args(["-n", &ns, "link", "set", "eth0", "down"])
                .output()
                .unwrap();
            assert!(out.status.success());
            let mut saw_removed = false;
            let mut saw_down = false;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while !(saw_removed && saw_down) {
                let ev = tokio::time::timeout_at(deadline, mon.next()).await;
                match ev {
                    Ok(Some(NetEvent::AddrRemoved { ifindex, addr }))
                        if ifindex == link.index && addr == vip.addr() =>
                    {
                        saw_removed = true
                    }
                    Ok(Some(NetEvent::Link(l))) if l.index == link.index && !l.up => {
                        saw_down = true
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (still, saw_removed, saw_down)
        })
    });
    assert_eq!(
        events,
        (true, true, true),
        "(renewed VIP kept, removal seen, link down seen)"
    );
}

// ---------------------------------------------------------------------
// Three `lbd run` nodes on a bridge.

use support::cluster::{Cluster, Scenario};
use support::lbd::lbd_bin;
use support::netns::{in_ns, listen_in, rt};

/// Startup: exactly the highest priority node holds the VIP; then SIGKILL
/// of it -> the next holds it within Master_Down_Interval (plus sampling
/// and process slack); then SIGTERM of that one -> takeover in about skew.
fn failover_scenario(net: u8, sc: Scenario) {
    let mut c = Cluster::new(net, sc, &[150, 100, 50]);
    let w = c.watch();
    c.start_all();
    let first = w.wait_sole_holder(0, Duration::from_secs(10));
    assert!(
        first.is_some(),
        "n1 never sole master: {:?}\n{}",
        w.holders(),
        c.logs()
    );
    // Stable: the same single master for 10 advert intervals.
    std::thread::sleep(c.interval() * 10);
    assert_eq!(w.holders(), vec![0], "{}", c.logs());

    let dual = w.take_max_dual();
    assert!(
        dual <= c.interval() + Duration::from_millis(60),
        "split brain {dual:?} at startup"
    );

    // Crash of the master's whole process tree (supervisor and worker at
    // once: nobody sends priority 0): n1's VIP stays until its lifetime
    // runs out (nobody renews it). n2 must hold it within
    // Master_Down_Interval regardless.
    c.kill_tree(0);
    let took = wait_for(Duration::from_secs(10), || w.holders().contains(&1))
        .unwrap_or_else(|| panic!("n2 never took over: {:?}\n{}", w.holders(), c.logs()));
    let md = c.master_down(1);
    eprintln!("[net {net}] SIGKILL of the master's process tree: n2 holds the VIP after {took:?} (Master_Down_Interval {md:?})");
    assert!(
        took <= md + Duration::from_millis(250),
        "takeover {took:?} slower than Master_Down_Interval {md:?} + 250 ms\n{}",
        c.logs()
    );
    let stale = wait_for(Duration::from_secs(10), || w.holders() == vec![1])
        .unwrap_or_else(|| panic!("killed master's VIP never expired: {:?}", w.holders()));
    eprintln!("[net {net}] killed master's VIP gone {stale:?} after takeover (vip_lifetime)");
    assert!(
        stale <= Duration::from_secs(3) + Duration::from_millis(500),
        "{stale:?}"
    );
    w.take_max_dual();

    // Graceful stop of the new master: priority 0 -> n3 after skew.
    assert!(
        w.wait_sole_holder(1, Duration::from_secs(10)).is_some(),
        "{:?}",
        w.holders()
    );
    w.take_max_none();
    c.kill(1, "TERM");
    let took = w
        .wait_sole_holder(2, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("n3 never took over: {:?}\n{}", w.holders(), c.logs()));
    let skew = c.skew(2);
    let none = w.take_max_none();
    eprintln!("[net {net}] SIGTERM of master: n3 holds the VIP after {took:?} (skew {skew:?}), nobody held it for {none:?}");
    // Make before break: the stopping master keeps the VIP until n3
    // announces itself, so no stretch of samples finds it nowhere (breaking
    // first would leave it nowhere for about the skew time).
    assert!(
        none < Duration::from_millis(30) && none < skew,
        "the VIP was nowhere for {none:?} during a graceful handover\n{}",
        c.logs()
    );
    assert!(
        took <= skew + c.interval() + Duration::from_millis(250),
        "graceful takeover {took:?} not within skew {skew:?} + one interval"
    );
    let dual = w.max_dual();
    assert!(
        dual <= c.interval() + Duration::from_millis(60),
        "two nodes held the VIP for {dual:?} (> one advert interval)\n{}",
        c.logs()
    );
    assert!(w.samples() > 20);
}

#[test]
fn v3_ipv4_multicast_failover() {
    if !require_root("v3_ipv4_multicast_failover") {
        return;
    }
    failover_scenario(31, Scenario::default());
}

#[test]
fn v3_ipv6_multicast_failover() {
    if !require_root("v3_ipv6_multicast_failover") {
        return;
    }
    failover_scenario(
        32,
        Scenario {
            v6: true,
            ..Scenario::default()
        },
    );
}

#[test]
fn v3_ipv4_unicast_failover() {
    if !require_root("v3_ipv4_unicast_failover") {
        return;
    }
    failover_scenario(
        33,
        Scenario {
            unicast: true,
            ..Scenario::default()
        },
    );
}

#[test]
fn v2_pass_auth_failover() {
    if !require_root("v2_pass_auth_failover") {
        return;
    }
    failover_scenario(
        34,
        Scenario {
            version: 2,
            interval_ms: 1000,
            auth_pass: Some("s3cret"),
            ..Scenario::default()
        },
    );
}

/// A higher-priority node that returns takes the VIP back (preempt on) and
/// does not with preempt off.
fn preemption(net: u8, preempt: bool) {
    let mut c = Cluster::new(
        net,
        Scenario {
            preempt,
            ..Scenario::default()
        },
        &[150, 100],
    );
    let w = c.watch();
    c.start(1);
    assert!(
        w.wait_sole_holder(1, Duration::from_secs(10)).is_some(),
        "n2 alone never master: {:?}",
        w.holders()
    );
    c.start(0);
    if preempt {
        let t = w
            .wait_sole_holder(0, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("n1 did not preempt: {:?}\n{}", w.holders(), c.logs()));
        eprintln!("[net {net}] preemption by returning n1 after {t:?}");
        // What `lbd status --json` tells about it, from both sides.
        std::thread::sleep(Duration::from_millis(300));
        let status = |i: usize| -> serde_json::Value {
            let sock = c.socket(i);
            let out = support::netns::run(&[
                lbd_bin(),
                "status",
                "--json",
                "--answered",
                "--socket",
                sock.to_str().unwrap(),
            ]);
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        };
        let (s1, s2) = (status(0), status(1));
        let (v1, v2) = (&s1["vrrp"][0], &s2["vrrp"][0]);
        assert_eq!(v1["state"], "MASTER", "{s1}");
        assert_eq!(v2["state"], "BACKUP", "{s2}");
        let me = format!("10.213.{net}.1");
        assert_eq!(v1["master"], me.as_str(), "{s1}");
        assert_eq!(v2["master"], me.as_str(), "{s2}");
        assert_eq!(v2["peers"][0]["address"], me.as_str(), "{s2}");
        assert_eq!(v2["peers"][0]["priority"], 150, "{s2}");
        assert!(
            v2["transitions"].as_u64().unwrap() >= 2,
            "at least MASTER, then BACKUP: {s2}"
        );
    } else {
        // Ten Master_Down_Intervals: n2 keeps the VIP.
        std::thread::sleep(c.master_down(0) * 10);
        assert_eq!(w.holders(), vec![1], "preempt off, yet: {}", c.logs());
    }
    let dual = w.max_dual();
    assert!(
        dual <= c.interval() + Duration::from_millis(60),
        "split brain {dual:?}\n{}",
        c.logs()
    );
}

#[test]
fn returning_higher_priority_node_preempts() {
    if !require_root("returning_higher_priority_node_preempts") {
        return;
    }
    preemption(35, true);
}

#[test]
fn no_preemption_when_off() {
    if !require_root("no_preemption_when_off") {
        return;
    }
    preemption(36, false);
}

/// A tracked tcplb listener losing its only backend lowers the master's
/// priority below both backups': the VIP moves to the higher backup only
/// (both hear the lower priority at once; each waits its skew, so the
/// other one never becomes master, not even for a moment, and its
/// gratuitous ARPs never point clients at a node about to drop the VIP),
/// and the notify commands report every state change as keepalived's do:
/// `notify` as `CMD INSTANCE NAME STATE PRIORITY`, `notify_master` as
/// written, before it.
#[test]
fn tracked_listener_without_backends_moves_the_vip() {
    if !require_root("tracked_listener_without_backends_moves_the_vip") {
        return;
    }
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_log = notify_dir.path().join("notify.log");
    let sc = Scenario {
        extra: format!(
            "      track:\n        - listener: api\n          weight: -100\n      notify: \"echo >> {0}\"\n      notify_master: \"echo to-master >> {0}\"\n",
            notify_log.display()
        ),
        tcplb: "tcplb:\n  listeners:\n    - name: api\n      bind: 0.0.0.0:8443\n      backends: [127.0.0.1:7001]\n      health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }\n".to_string(),
        ..Scenario::default()
    };
    // 150 - 100 = 50 < 60 < 100: both backups preempt; their skews differ
    // by 15 ms at 100 ms adverts.
    let mut c = Cluster::new(37, sc, &[150, 100, 60]);
    let backends: Vec<_> =
        c.ns.iter()
            .map(|n| listen_in(n, "127.0.0.1:7001"))
            .collect();
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "n1 never master: {:?}\n{}",
        w.holders(),
        c.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.holders(), vec![0]);
    // Nodes started a few ms apart may both become master for a moment
    // (their timers fire before either hears the other): only what comes
    // after convergence counts below.
    let notified = |skip: usize| -> Vec<String> {
        std::fs::read_to_string(&notify_log)
            .unwrap_or_default()
            .lines()
            .skip(skip)
            .map(str::to_string)
            .collect()
    };
    let settled = notified(0).len();
    let mut backends = backends.into_iter();
    drop(backends.next()); // n1's backend dies
    let moved = w
        .wait_sole_holder(1, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("VIP did not move: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net 37] listener lost its backends: VIP on n2 after {moved:?}");
    assert!(
        moved <= Duration::from_secs(1),
        "{moved:?} (target: <= 1 s)"
    );
    let dual = w.max_dual();
    assert!(
        dual <= c.interval() + Duration::from_millis(60),
        "split brain {dual:?}"
    );
    // n3 never was master.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.holders(), vec![1]);
    let n3_log = std::fs::read_to_string(c.log(2)).unwrap_or_default();
    assert!(
        !n3_log.contains("\"MASTER\""),
        "n3 became master too:\n{}",
        c.logs()
    );
    // The notify command ran (asynchronously; all nodes append to the
    // same file): n2 became MASTER, n1 went BACKUP.
    // n2 (priority 100) became MASTER; n1 went BACKUP with 150 - 100.
    let want = [
        "to-master",
        "INSTANCE vip MASTER 100",
        "INSTANCE vip BACKUP 50",
    ];
    let seen = wait_for(Duration::from_secs(2), || {
        let after = notified(settled);
        want.iter().all(|w| after.iter().any(|l| l == w))
    });
    let after = notified(settled);
    assert!(seen.is_some(), "notify log after convergence: {after:?}");
    assert_eq!(
        after.len(),
        3,
        "one master and one backup change: {after:?}"
    );
    let pos = |w: &str| after.iter().position(|l| l == w).unwrap();
    assert!(
        pos("to-master") < pos("INSTANCE vip MASTER 100"),
        "notify_master runs before notify: {after:?}"
    );
    drop(backends);
}

/// The master's link goes down: it goes FAULT and drops the VIP, the
/// backup takes over; the link comes back and the master preempts.
#[test]
fn link_down_master_goes_fault_and_returns() {
    if !require_root("link_down_master_goes_fault_and_returns") {
        return;
    }
    let mut c = Cluster::new(38, Scenario::default(), &[150, 100]);
    link_flap_moves_the_vip(&mut c, "eth0", |c| {
        let log = std::fs::read_to_string(c.log(0)).unwrap_or_default();
        assert!(log.contains("FAULT"), "{log}");
    });
}

/// Two nodes: n1 master; n1's `ifname` down -> n2 takes the VIP within its
/// Master_Down_Interval (then `while_down`); up again -> n1 takes it back
/// (preempt), never with a split brain longer than one advert.
fn link_flap_moves_the_vip(c: &mut Cluster, ifname: &str, while_down: impl Fn(&Cluster)) {
    let net = c.net;
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    let n1 = c.ns[0].clone();
    c.lab.sh(&n1, &["ip", "link", "set", ifname, "down"]);
    let t = w
        .wait_sole_holder(1, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("VIP did not move: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net {net}] n1's {ifname} down: VIP on n2 after {t:?}");
    assert!(t <= c.master_down(1) + Duration::from_millis(250), "{t:?}");
    while_down(c);
    c.lab.sh(&n1, &["ip", "link", "set", ifname, "up"]);
    let t = w
        .wait_sole_holder(0, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("VIP did not come back: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net {net}] n1's {ifname} up: VIP back on n1 after {t:?}");
    let dual = w.max_dual();
    assert!(
        dual <= c.interval() + Duration::from_millis(60),
        "split brain {dual:?}"
    );
}

/// Fetches `path` from the admin server at 127.0.0.1:9440 inside `ns`.
fn admin_get(ns: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    in_ns(ns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9440").expect("admin listen");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// While master, a VIP that someone deletes is put back at once; the
/// metrics tell the story.
#[test]
fn master_restores_a_removed_vip_and_exports_metrics() {
    if !require_root("master_restores_a_removed_vip_and_exports_metrics") {
        return;
    }
    let mut c = Cluster::new(39, Scenario::default(), &[150, 100]);
    let w = c.watch();
    // Admin TCP listener on the namespace's own loopback.
    let conf = c
        .config(0)
        .replace("  listen: null\n", "  listen: 127.0.0.1:9440\n");
    let path = c.dir.path().join("n1-admin.yaml");
    std::fs::write(&path, conf).unwrap();
    let n1 = c.ns[0].clone();
    c.start_with(0, &path);
    c.start(1);
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    c.lab.sh(
        &n1,
        &["ip", "addr", "del", "10.213.39.100/24", "dev", "eth0"],
    );
    let back = wait_for(Duration::from_secs(2), || {
        c.lab.has_addr(&n1, "10.213.39.100")
    })
    .unwrap_or_else(|| panic!("VIP not restored: {}", c.logs()));
    eprintln!("[net 39] VIP deleted by hand on the master: back after {back:?}");
    assert!(back <= Duration::from_millis(500), "{back:?}");
    assert_eq!(w.holders(), vec![0]);
    let m = admin_get(&n1, "/metrics");
    for want in [
        "lbd_vrrp_state{instance=\"vip\"} 2",
        "lbd_vrrp_effective_priority{instance=\"vip\"} 150",
    ] {
        assert!(m.contains(want), "missing {want}:\n{m}");
    }
    let count = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
    };
    assert!(count("lbd_vrrp_adverts_sent_total{instance=\"vip\"}") >= 1.0);
    assert!(count("lbd_vrrp_transitions_total{instance=\"vip\"}") >= 1.0);
    // The burst on becoming master plus the re-announcement after restore.
    assert!(
        count("lbd_vrrp_gratuitous_arps_sent_total{instance=\"vip\"}") >= 6.0,
        "{m}"
    );
}

#[test]
fn v3_ipv6_unicast_failover() {
    if !require_root("v3_ipv6_unicast_failover") {
        return;
    }
    failover_scenario(
        40,
        Scenario {
            v6: true,
            unicast: true,
            ..Scenario::default()
        },
    );
}

/// `track: interface`: the master's second link going down lowers its
/// priority below the backup's, which takes the VIP (preempt).
#[test]
fn tracked_interface_down_moves_the_vip() {
    if !require_root("tracked_interface_down_moves_the_vip") {
        return;
    }
    let sc = Scenario {
        extra: "      track:\n        - interface: eth1\n          weight: -100\n".to_string(),
        ..Scenario::default()
    };
    let mut c = Cluster::new(45, sc, &[150, 100]);
    for (i, n) in c.ns.clone().iter().enumerate() {
        let a = format!("10.213.46.{}/24", i + 1);
        c.lab.attach(n, "eth1", &[&a]);
    }
    link_flap_moves_the_vip(&mut c, "eth1", |_| {});
}
