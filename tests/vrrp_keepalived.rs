//! Interoperability with Debian's keepalived in the same VRRP group, in
//! network namespaces (root; skipped otherwise).

mod support;

use std::time::Duration;

use support::config::{admin_section, vrrp_section, VrrpInstanceYaml};
use support::keepalived::{self as ka, KaInstance};
use support::netns::{require_root, Lab};
use support::vrrp::{master_down_interval, VipWatch};

fn skip(name: &str) -> bool {
    if !require_root(name) {
        return true;
    }
    if !ka::available() {
        eprintln!("skipping {name}: keepalived not installed (apt-get install -y keepalived)");
        return true;
    }
    false
}

/// The harness itself against keepalived alone: two keepalived nodes, one
/// master, failover on SIGKILL of the master's VRRP process.
#[test]
fn keepalived_pair_baseline() {
    if skip("keepalived_pair_baseline") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new("ka");
    let a = lab.add_ns("a");
    let b = lab.add_ns("b");
    lab.attach(&a, "eth0", &["10.213.20.1/24"]);
    lab.attach(&b, "eth0", &["10.213.20.2/24"]);
    let vip = "10.213.20.100";
    let mk = |prio| KaInstance {
        interface: "eth0",
        vrid: 61,
        version: 3,
        priority: prio,
        advert_int: "0.1",
        vips: &["10.213.20.100/24"],
        auth_pass: None,
        nopreempt: false,
        unicast: None,
    };
    let watch = VipWatch::start(&[a.clone(), b.clone()], "eth0", vip.parse().unwrap());
    let (ia, _) = ka::start(&mut lab, &a, dir.path(), "a", &mk(150));
    let (_ib, _) = ka::start(&mut lab, &b, dir.path(), "b", &mk(100));
    let t = watch.wait_sole_holder(0, Duration::from_secs(10));
    assert!(
        t.is_some(),
        "a never became sole master: {:?}",
        watch.holders()
    );
    // A node crash: every keepalived process of a killed at once.
    let _ = ia;
    let _ =
        support::netns::run_output(&["sh", "-c", &format!("ip netns pids {a} | xargs -r kill -9")]);
    // b takes over within Master_Down_Interval (3 * 100 ms + skew); a's
    // VIP stays behind (keepalived sets no lifetime): both hold it.
    let took = support::netns::wait_for(Duration::from_secs(5), || watch.holders().contains(&1));
    assert!(took.is_some(), "b never took over: {:?}", watch.holders());
    let took = took.unwrap();
    eprintln!("keepalived baseline: takeover after SIGKILL in {took:?}");
}

/// One lbd node (n1) and one keepalived node (n2) in VRID 51.
struct Mixed {
    lab: Lab,
    dir: tempfile::TempDir,
    a: String,
    b: String,
    net: u8,
    version: u8,
    lbd_prio: u8,
    ka_prio: u8,
    lbd: Option<usize>,
    ka: Option<usize>,
}

impl Mixed {
    fn new(net: u8, version: u8, lbd_prio: u8, ka_prio: u8) -> Mixed {
        let mut lab = Lab::new("kai");
        let a = lab.add_ns("lbd");
        let b = lab.add_ns("ka");
        lab.attach(&a, "eth0", &[&format!("10.213.{net}.1/24")]);
        lab.attach(&b, "eth0", &[&format!("10.213.{net}.2/24")]);
        Mixed {
            lab,
            dir: tempfile::tempdir().unwrap(),
            a,
            b,
            net,
            version,
            lbd_prio,
            ka_prio,
            lbd: None,
            ka: None,
        }
    }

    fn interval(&self) -> Duration {
        if self.version == 2 {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        }
    }

    fn vip(&self) -> String {
        format!("10.213.{}.100", self.net)
    }

    fn start_lbd(&mut self) {
        let mut inst = VrrpInstanceYaml::new(self.lbd_prio, &format!("{}/24", self.vip()));
        inst.version = self.version;
        inst.advert_interval = self.interval();
        if self.version == 2 {
            inst.auth_pass = Some("42".into());
        }
        let conf = vrrp_section(&[inst]) + &admin_section(&self.dir.path().join("lbd.sock"));
        let path = self.dir.path().join("lbd.yaml");
        std::fs::write(&path, conf).unwrap();
        let log = self.dir.path().join("lbd.log");
        let a = self.a.clone();
        self.lbd = Some(support::lbd::spawn_in_ns(&mut self.lab, &a, &path, &log));
    }

    fn start_ka(&mut self) {
        let vip = format!("{}/24", self.vip());
        let adv = if self.version == 2 { "1" } else { "0.1" };
        let inst = KaInstance {
            interface: "eth0",
            vrid: 51,
            version: self.version,
            priority: self.ka_prio,
            advert_int: adv,
            vips: &[&vip],
            auth_pass: (self.version == 2).then_some("42"),
            nopreempt: false,
            unicast: None,
        };
        let b = self.b.clone();
        let dir = self.dir.path().to_path_buf();
        self.ka = Some(ka::start(&mut self.lab, &b, &dir, "ka", &inst).0);
    }

    fn watch(&self) -> VipWatch {
        VipWatch::start(
            &[self.a.clone(), self.b.clone()],
            "eth0",
            self.vip().parse().unwrap(),
        )
    }

    fn logs(&self) -> String {
        let r = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- lbd ---\n{}\n--- keepalived ---\n{}",
            r("lbd.log"),
            r("ka.log")
        )
    }

    fn master_down(&self, prio: u8) -> Duration {
        master_down_interval(self.version, self.interval(), prio)
    }

    /// keepalived must not have rejected anything lbd sent.
    fn assert_keepalived_accepted_us(&self) {
        let log = std::fs::read_to_string(self.dir.path().join("ka.log")).unwrap_or_default();
        for bad in ["bogus", "Invalid", "invalid", "checksum", "ttl", "auth"] {
            let hit = log
                .lines()
                .find(|l| l.contains(bad) && l.contains("10.213."));
            assert!(
                hit.is_none(),
                "keepalived complained: {hit:?}\n{}",
                self.logs()
            );
        }
    }
}

/// lbd master, keepalived backup: lbd crash -> keepalived within its
/// Master_Down_Interval; lbd back -> it preempts keepalived.
fn lbd_master_keepalived_backup(net: u8, version: u8) {
    let mut m = Mixed::new(net, version, 150, 100);
    let w = m.watch();
    m.start_ka();
    m.start_lbd();
    let limit = m.master_down(100) * 3;
    assert!(
        w.wait_sole_holder(0, limit + Duration::from_secs(3))
            .is_some(),
        "lbd never sole master: {:?}\n{}",
        w.holders(),
        m.logs()
    );
    std::thread::sleep(m.interval() * 5);
    assert_eq!(w.holders(), vec![0], "{}", m.logs());
    let i = m.lbd.take().unwrap();
    m.lab.signal(i, "KILL");
    m.lab
        .wait_exit(i, Duration::from_secs(5))
        .expect("lbd exit");
    let took = support::netns::wait_for(Duration::from_secs(10), || w.holders().contains(&1))
        .unwrap_or_else(|| {
            panic!(
                "keepalived never took over: {:?}\n{}",
                w.holders(),
                m.logs()
            )
        });
    let md = m.master_down(100);
    eprintln!("[v{version}] lbd SIGKILL -> keepalived holds VIP after {took:?} (MDI {md:?})");
    assert!(
        took <= md + Duration::from_millis(300),
        "{took:?} > {md:?}\n{}",
        m.logs()
    );
    // lbd's VIP lapses (lifetime), then lbd returns and preempts.
    assert!(
        w.wait_sole_holder(1, Duration::from_secs(6)).is_some(),
        "{:?}",
        w.holders()
    );
    w.take_max_dual();
    m.start_lbd();
    let back = w
        .wait_sole_holder(0, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "lbd did not preempt keepalived: {:?}\n{}",
                w.holders(),
                m.logs()
            )
        });
    eprintln!("[v{version}] lbd back -> preempted keepalived after {back:?}");
    let dual = w.max_dual();
    assert!(
        dual <= m.interval() + Duration::from_millis(60),
        "split brain {dual:?}\n{}",
        m.logs()
    );
    m.assert_keepalived_accepted_us();
}

/// keepalived master, lbd backup: keepalived stops (priority 0) -> lbd
/// within skew; keepalived back -> it preempts lbd, which lets go.
fn keepalived_master_lbd_backup(net: u8, version: u8) {
    let mut m = Mixed::new(net, version, 100, 150);
    let w = m.watch();
    m.start_lbd();
    m.start_ka();
    assert!(
        w.wait_sole_holder(1, Duration::from_secs(15)).is_some(),
        "keepalived never sole master: {:?}\n{}",
        w.holders(),
        m.logs()
    );
    std::thread::sleep(m.interval() * 5);
    assert_eq!(w.holders(), vec![1], "{}", m.logs());
    let i = m.ka.take().unwrap();
    m.lab.signal(i, "TERM");
    let took = support::netns::wait_for(Duration::from_secs(10), || w.holders() == vec![0])
        .unwrap_or_else(|| panic!("lbd never took over: {:?}\n{}", w.holders(), m.logs()));
    eprintln!("[v{version}] keepalived SIGTERM -> lbd sole holder after {took:?}");
    assert!(
        took <= m.master_down(100),
        "graceful takeover {took:?} slower than a full Master_Down_Interval\n{}",
        m.logs()
    );
    m.lab
        .wait_exit(i, Duration::from_secs(5))
        .expect("keepalived exit");
    m.start_ka();
    let back = w
        .wait_sole_holder(1, Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "keepalived did not preempt lbd: {:?}\n{}",
                w.holders(),
                m.logs()
            )
        });
    eprintln!("[v{version}] keepalived back -> preempted lbd after {back:?}");
    let dual = w.max_dual();
    assert!(
        dual <= m.interval() + Duration::from_millis(60),
        "split brain {dual:?}\n{}",
        m.logs()
    );
}

#[test]
fn v3_lbd_master_keepalived_backup() {
    if skip("v3_lbd_master_keepalived_backup") {
        return;
    }
    lbd_master_keepalived_backup(41, 3);
}

#[test]
fn v3_keepalived_master_lbd_backup() {
    if skip("v3_keepalived_master_lbd_backup") {
        return;
    }
    keepalived_master_lbd_backup(42, 3);
}

#[test]
fn v2_pass_lbd_master_keepalived_backup() {
    if skip("v2_pass_lbd_master_keepalived_backup") {
        return;
    }
    lbd_master_keepalived_backup(43, 2);
}

#[test]
fn v2_pass_keepalived_master_lbd_backup() {
    if skip("v2_pass_keepalived_master_lbd_backup") {
        return;
    }
    keepalived_master_lbd_backup(44, 2);
}
