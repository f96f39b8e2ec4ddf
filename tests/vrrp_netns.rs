//! VRRP and its kernel plumbing in network namespaces (root; skipped
//! otherwise). Every address used exists only inside the test namespaces.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use lbd::sys::addr::{AddOutcome, Netlink, LBD_ADDR_PROTO};
use lbd::sys::link::{NetEvent, NetMonitor};
use support::netns::{require_root, wait_for, Lab};

/// Runs `f` on a thread inside namespace `ns` with its own runtime.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        lbd::sys::netns::enter(&path).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

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
            let v4 = nl
                .add_vip(&link, "10.213.1.100/24".parse().unwrap(), life)
                .await
                .unwrap();
            let v6 = nl
                .add_vip(&link, "fd00:db8:1::100/64".parse().unwrap(), life)
                .await
                .unwrap();
            let foreign = nl
                .add_vip(&link, "10.213.1.200/24".parse().unwrap(), life)
                .await
                .unwrap();
            // Removing an address we did not add is refused silently.
            let removed_foreign = nl
                .remove_vip(&link, "10.213.1.200".parse().unwrap())
                .await
                .unwrap();
            let src4 = nl.source_address(&link, false, false, &[]).await.unwrap();
            let list = nl.addresses(link.index).await.unwrap();
            let ours: Vec<_> = list
                .iter()
                .filter(|x| x.is_ours("eth0"))
                .map(|x| x.addr.addr())
                .collect();
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
                nl.add_vip(&link, vip, Duration::from_secs(2))
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

use std::path::PathBuf;
use support::config::{admin_section, node_section, vrrp_section, VrrpInstanceYaml};
use support::lbd::{lbd_bin, spawn_in_ns};
use support::vrrp::{master_down_interval, skew_time, VipWatch};

/// Per-instance settings of one test scenario.
#[derive(Clone)]
struct Scenario {
    version: u8,
    interval_ms: u64,
    v6: bool,
    preempt: bool,
    unicast: bool,
    vip_lifetime: Option<&'static str>,
    auth_pass: Option<&'static str>,
    /// Extra YAML lines appended to the instance (indented 6 spaces).
    extra: String,
    /// Whole `tcplb:` section, if any.
    tcplb: String,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            version: 3,
            interval_ms: 100,
            v6: false,
            preempt: true,
            unicast: false,
            vip_lifetime: None,
            auth_pass: None,
            extra: String::new(),
            tcplb: String::new(),
        }
    }
}

struct Cluster {
    lab: Lab,
    dir: tempfile::TempDir,
    ns: Vec<String>,
    /// Lab child index of each node's lbd, if running.
    procs: Vec<Option<usize>>,
    net: u8,
    sc: Scenario,
    prios: Vec<u8>,
}

impl Cluster {
    /// Three nodes 10.213.<net>.1-3 (fd00:db8:<net>::1-3), VIP .100.
    fn new(net: u8, sc: Scenario, prios: &[u8]) -> Cluster {
        let mut lab = Lab::new("vrrp");
        let mut ns = Vec::new();
        for i in 1..=prios.len() {
            let n = lab.add_ns(&format!("n{i}"));
            let v4 = format!("10.213.{net}.{i}/24");
            let v6 = format!("fd00:db8:{net}::{i}/64");
            lab.attach(&n, "eth0", &[&v4, &v6]);
            ns.push(n);
        }
        // IPv6 link-local addresses need a moment (DAD) before they are
        // usable as VRRP source.
        if sc.v6 {
            for n in &ns {
                let ok = wait_for(Duration::from_secs(5), || {
                    let a = lab.addrs(n);
                    a.contains("fe80::") && !a.contains("tentative")
                });
                assert!(
                    ok.is_some(),
                    "no link-local address in {n}: {}",
                    lab.addrs(n)
                );
            }
        }
        Cluster {
            lab,
            dir: tempfile::tempdir().unwrap(),
            procs: vec![None; prios.len()],
            ns,
            net,
            sc,
            prios: prios.to_vec(),
        }
    }

    fn vip(&self) -> IpAddr {
        if self.sc.v6 {
            format!("fd00:db8:{}::100", self.net).parse().unwrap()
        } else {
            format!("10.213.{}.100", self.net).parse().unwrap()
        }
    }

    fn config(&self, i: usize) -> String {
        let sc = &self.sc;
        let net = self.net;
        let vip = if sc.v6 {
            format!("fd00:db8:{net}::100/64")
        } else {
            format!("10.213.{net}.100/24")
        };
        let mut inst = VrrpInstanceYaml::new(self.prios[i], &vip);
        inst.version = sc.version;
        inst.advert_interval = self.interval();
        inst.preempt = Some(sc.preempt);
        if sc.unicast {
            inst.unicast_peers = (1..=self.prios.len())
                .filter(|j| *j != i + 1)
                .map(|j| {
                    if sc.v6 {
                        format!("fd00:db8:{net}::{j}")
                    } else {
                        format!("10.213.{net}.{j}")
                    }
                })
                .collect();
        }
        inst.vip_lifetime = sc.vip_lifetime.map(str::to_string);
        inst.auth_pass = sc.auth_pass.map(str::to_string);
        inst.extra = sc.extra.clone();
        let sock = self.dir.path().join(format!("n{}.sock", i + 1));
        node_section(&format!("n{}", i + 1))
            + &vrrp_section(&[inst])
            + &sc.tcplb
            + &admin_section(&sock)
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}.log", i + 1))
    }

    fn start(&mut self, i: usize) {
        let conf = self.dir.path().join(format!("n{}.yaml", i + 1));
        std::fs::write(&conf, self.config(i)).unwrap();
        self.start_with(i, &conf);
    }

    fn start_with(&mut self, i: usize, conf: &std::path::Path) {
        let (ns, log) = (self.ns[i].clone(), self.log(i));
        self.procs[i] = Some(spawn_in_ns(&mut self.lab, &ns, conf, &log));
    }

    fn start_all(&mut self) {
        for i in 0..self.ns.len() {
            self.start(i);
        }
    }

    fn kill(&mut self, i: usize, sig: &str) {
        let idx = self.procs[i].take().expect("node not running");
        self.lab.signal(idx, sig);
        let st = self.lab.wait_exit(idx, Duration::from_secs(5));
        assert!(st.is_some(), "n{} did not exit on {sig}", i + 1);
    }

    fn watch(&self) -> VipWatch {
        VipWatch::start(&self.ns, "eth0", self.vip())
    }

    fn logs(&self) -> String {
        (0..self.ns.len())
            .map(|i| {
                format!(
                    "--- n{} ---\n{}",
                    i + 1,
                    std::fs::read_to_string(self.log(i)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Master_Down_Interval of node `i` as RFC 5798 section 6.1 defines it.
    fn master_down(&self, i: usize) -> Duration {
        master_down_interval(self.sc.version, self.interval(), self.prios[i])
    }

    fn skew(&self, i: usize) -> Duration {
        skew_time(self.sc.version, self.interval(), self.prios[i])
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.sc.interval_ms)
    }
}

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

    // Crash of the master: lbd is gone but n1's VIP stays until its
    // lifetime runs out (nobody renews it). n2 must hold it within
    // Master_Down_Interval regardless.
    c.kill(0, "KILL");
    let took = wait_for(Duration::from_secs(10), || w.holders().contains(&1))
        .unwrap_or_else(|| panic!("n2 never took over: {:?}\n{}", w.holders(), c.logs()));
    let md = c.master_down(1);
    eprintln!("[net {net}] SIGKILL of master: n2 holds the VIP after {took:?} (Master_Down_Interval {md:?})");
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
            let sock = c.dir.path().join(format!("n{}.sock", i + 1));
            let out = support::netns::run(&[
                lbd_bin(),
                "status",
                "--json",
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

/// Binds a TCP listener inside namespace `ns` (the socket belongs to the
/// namespace it was created in); dropping it makes the backend go away.
fn listen_in(ns: &str, addr: &str) -> std::net::TcpListener {
    let addr = addr.to_string();
    in_ns(ns, move || {
        std::net::TcpListener::bind(addr).expect("bind backend")
    })
}

/// A tracked tcplb listener losing its only backend lowers the master's
/// priority below both backups': the VIP moves to the higher backup only
/// (both hear the lower priority at once; each waits its skew, so the
/// other one never becomes master, not even for a moment, and its
/// gratuitous ARPs never point clients at a node about to drop the VIP),
/// and a notify command reports every state change as `CMD INSTANCE
/// STATE`.
#[test]
fn tracked_listener_without_backends_moves_the_vip() {
    if !require_root("tracked_listener_without_backends_moves_the_vip") {
        return;
    }
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_log = notify_dir.path().join("notify.log");
    let sc = Scenario {
        extra: format!(
            "      track:\n        - listener: api\n          weight: -100\n      notify: \"echo >> {}\"\n",
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
    let seen = wait_for(Duration::from_secs(2), || {
        let after = notified(settled);
        after.contains(&"vip MASTER".to_string()) && after.contains(&"vip BACKUP".to_string())
    });
    let after = notified(settled);
    assert!(seen.is_some(), "notify log after convergence: {after:?}");
    assert_eq!(
        after.len(),
        2,
        "one master and one backup change: {after:?}"
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
