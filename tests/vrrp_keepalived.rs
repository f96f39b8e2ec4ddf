//! Interoperability with Debian's keepalived in the same VRRP group, in
//! network namespaces (root; skipped otherwise).

mod common;

use std::time::Duration;

use common::keepalived::{self as ka, KaInstance};
use common::netns::{require_root, Lab};
use common::vrrp::VipWatch;

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
        common::netns::run_output(&["sh", "-c", &format!("ip netns pids {a} | xargs -r kill -9")]);
    // b takes over within Master_Down_Interval (3 * 100 ms + skew); a's
    // VIP stays behind (keepalived sets no lifetime): both hold it.
    let took = common::netns::wait_for(Duration::from_secs(5), || watch.holders().contains(&1));
    assert!(took.is_some(), "b never took over: {:?}", watch.holders());
    let took = took.unwrap();
    eprintln!("keepalived baseline: takeover after SIGKILL in {took:?}");
}
