//! VIP ownership on the kernels lbd supports, in the VM (scripts/vm-test.sh
//! runs this on 6.1 and 5.10): IFA_PROTO is stored from 5.18 on only, and
//! the `IFNAME:lbd` label fits IPv4 on names of at most 11 bytes only, so on
//! 5.10 a VIP on a 15-character interface, and every IPv6 VIP, carries no
//! mark at all: lbd knows it by the state file under the admin socket's
//! directory (/run/lbd). Each case, one `lbd run` node in a namespace:
//! held for 3x the lifetime while master, removed on step-down (`lbd vrrp
//! release`) and on SIGTERM, adopted after a restart of a killed tree,
//! expired after a SIGKILL left for good.

mod support;

use std::time::Duration;

use support::cluster::{Cluster, Scenario};
use support::lbd::{eventually_sync, lbd_bin};
use support::netns::{in_ns, rt, run_output, wait_for};

/// What the kernel holds for the VIP: (label, IFA_PROTO, valid lifetime
/// left, deprecated).
type VipSeen = (Option<String>, Option<u8>, Option<u32>, bool);

fn vip_seen(c: &Cluster, ifname: &str) -> Option<VipSeen> {
    let (ns, ifname, vip) = (c.ns[0].clone(), ifname.to_string(), c.vip());
    in_ns(&ns, move || {
        rt().block_on(async move {
            let nl = lbd::sys::addr::Netlink::connect().unwrap();
            let link = nl.link_by_name(&ifname).await.unwrap();
            let list = nl.addresses(link.index).await.unwrap();
            list.into_iter()
                .find(|a| a.addr.addr() == vip)
                .map(|a| (a.label, a.proto, a.valid_lft, a.deprecated))
        })
    })
}

fn lbd_vrrp(c: &Cluster, verb: &str) {
    let sock = c.socket(0);
    let out = run_output(&[lbd_bin(), "vrrp", verb, "--socket", sock.to_str().unwrap()]);
    assert!(out.status.success(), "lbd vrrp {verb}: {out:?}");
}

fn master(c: &Cluster) -> bool {
    c.try_instance(0).is_some_and(|st| st["state"] == "MASTER")
}

/// The ownership runs take turns. Run side by side in one VM (2 vCPUs under
/// TCG), both IPv4 runs failed their crash-restart step on 5.10 every time
/// (the restarted lbd found no VIP of its predecessor to adopt, though the
/// VIP was still there with lifetime left), and pass every time one after
/// the other (138 s for the four instead of 123 s). The cause is not found
/// yet: noted in the closing note of stop 18.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ownership(net: u8, ifname: &str, v6: bool) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Long enough for a restart under emulation (the guest's vCPUs starve
    // on a loaded host): adoption needs the VIP still there.
    let lifetime = Duration::from_secs(5);
    let sc = Scenario {
        v6,
        ifname: ifname.into(),
        interval_ms: 500,
        vip_lifetime: Some("5s"),
        ..Scenario::default()
    };
    let mut c = Cluster::new(net, sc, &[150]);
    let w = c.watch();
    let (major, minor) = support::vm::kernel_version();
    let tag = format!(
        "[{major}.{minor} {ifname} {}]",
        if v6 { "v6" } else { "v4" }
    );
    c.start(0);
    // Generous: the guest's vCPUs starve under TCG on a loaded host.
    eventually_sync(Duration::from_secs(20), "master", || master(&c));
    assert!(w.wait_sole_holder(0, Duration::from_secs(5)).is_some());
    w.take_max_none();

    // The marks this kernel keeps; a finite lifetime always.
    let (label, proto, valid, deprecated) = vip_seen(&c, ifname).expect("the VIP");
    eprintln!("{tag} VIP label {label:?} proto {proto:?} valid {valid:?} deprecated {deprecated}");
    assert!(valid.is_some_and(|v| v <= 5), "{valid:?}");
    let want_proto = ((major, minor) >= (5, 18)).then_some(lbd::sys::addr::LBD_ADDR_PROTO);
    assert_eq!(proto, want_proto, "{tag}");
    // IPv4 addresses without a label of their own show the interface's
    // name; IPv6 ones have none.
    let want_label =
        (!v6).then(|| lbd::sys::addr::lbd_label(ifname).unwrap_or_else(|| ifname.into()));
    assert_eq!(label, want_label, "{tag}");
    assert_eq!(
        deprecated, v6,
        "{tag}: IPv6 VIPs are deprecated, IPv4 ones not"
    );

    // Held (renewed) for three lifetimes.
    std::thread::sleep(lifetime * 3);
    let none = w.take_max_none();
    assert!(
        none.is_zero(),
        "{tag} the VIP lapsed for {none:?}\n{}",
        c.logs()
    );
    assert!(master(&c), "{}", c.logs());

    // Step-down: priority 0 at once, the VIP kept for a successor's advert
    // (make before break) at most two intervals, none comes here; back
    // when resumed.
    lbd_vrrp(&c, "release");
    let gone = wait_for(Duration::from_secs(4), || vip_seen(&c, ifname).is_none())
        .unwrap_or_else(|| panic!("{tag} VIP kept after release\n{}", c.logs()));
    eprintln!("{tag} released: VIP removed after {gone:?}");
    assert!(
        gone <= c.interval() * 2 + Duration::from_secs(1),
        "{tag} {gone:?}"
    );
    lbd_vrrp(&c, "resume");
    eventually_sync(Duration::from_secs(20), "master again", || master(&c));
    assert!(w.wait_sole_holder(0, Duration::from_secs(5)).is_some());

    // SIGTERM: removed before lbd exits.
    c.kill(0, "TERM");
    assert!(
        vip_seen(&c, ifname).is_none(),
        "{tag} VIP left after SIGTERM"
    );

    // A killed tree restarted within the lifetime: the VIP, unmarked on
    // old kernels, is recognised from the state file and kept.
    c.start(0);
    eventually_sync(Duration::from_secs(20), "master", || master(&c));
    assert!(w.wait_sole_holder(0, Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    w.take_max_none();
    c.kill_tree(0);
    let killed = std::time::Instant::now();
    // What the new lbd can find: under TCG on a loaded host a start can
    // take seconds, and a VIP that lapsed first is not ours to adopt.
    let left_at_kill = vip_seen(&c, ifname).and_then(|v| v.2);
    c.start(0);
    let log = c.log(0);
    let adopted = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("VIPs of a previous lbd found")
    });
    assert!(
        adopted.is_some(),
        "{tag} not adopted (valid_lft {left_at_kill:?} s at the kill, {:?} since; VIP there now: {})\n{}",
        killed.elapsed(),
        vip_seen(&c, ifname).is_some(),
        c.logs()
    );
    eventually_sync(Duration::from_secs(20), "master after restart", || {
        master(&c)
    });
    let none = w.take_max_none();
    eprintln!("{tag} tree killed and restarted: VIP missing for {none:?}");
    assert!(
        none.is_zero(),
        "{tag} VIP went missing for {none:?}\n{}",
        c.logs()
    );
    // And stays renewed by the new lbd past the old lifetime.
    std::thread::sleep(lifetime + Duration::from_secs(1));
    assert_eq!(w.holders(), vec![0], "{tag}\n{}", c.logs());

    // Killed for good: the kernel drops it when the lifetime runs out
    // (checked with a second's granularity; the guest's clock may lag).
    c.kill_tree(0);
    let gone = wait_for(lifetime * 3, || vip_seen(&c, ifname).is_none())
        .unwrap_or_else(|| panic!("{tag} VIP outlived its lifetime\n{}", c.logs()));
    eprintln!("{tag} tree killed for good: VIP expired after {gone:?}");
    assert!(gone <= lifetime + Duration::from_secs(2), "{tag} {gone:?}");
}

#[test]
fn ipv4_short_interface_name() {
    if support::vm::in_vm("ipv4_short_interface_name") {
        ownership(70, "eth0", false);
    }
}

/// 15 bytes, IFNAMSIZ - 1: no room for a label.
#[test]
fn ipv4_fifteen_character_interface_name() {
    if support::vm::in_vm("ipv4_fifteen_character_interface_name") {
        ownership(71, "vrrp-uplink-015", false);
    }
}

#[test]
fn ipv6() {
    if support::vm::in_vm("ipv6") {
        ownership(72, "eth0", true);
    }
}

/// Outside the VM the addresses are checked all the same, on this host's
/// kernel (root, netns).
#[test]
fn ownership_on_the_host_kernel() {
    if std::env::var("LBD_IN_VM").as_deref() != Ok("1")
        && support::netns::require_root("ownership_on_the_host_kernel")
    {
        ownership(73, "vrrp-uplink-015", false);
    }
}
