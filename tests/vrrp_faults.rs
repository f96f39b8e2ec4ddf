//! Faults are state (issue 14): a VIP someone else takes over, a deleted
//! and recreated link, a new MAC, lost netlink notifications. Two `lbd run`
//! nodes and an observer namespace that captures the wire (root; skipped
//! otherwise). Every address exists only inside the test namespaces.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use lbd::sys::link::{NetEvent, NetMonitor};
use support::cluster::{Cluster, Scenario};
use support::lbd::eventually_sync;
use support::netns::{in_ns, require_root, rt, wait_for};
use support::wire::{mac_of, Capture};

/// An observer on the cluster's bridge (10.213.NET.9), capturing.
fn observe(c: &mut Cluster) -> Capture {
    let obs = c.lab.add_ns("obs");
    let addr = format!("10.213.{}.9/24", c.net);
    c.lab.attach(&obs, "eth0", &[&addr]);
    Capture::start(&obs, None)
}

fn node_ip(c: &Cluster, i: usize) -> IpAddr {
    format!("10.213.{}.{}", c.net, i + 1).parse().unwrap()
}

fn fault_reasons(c: &Cluster, i: usize) -> Vec<String> {
    c.instance(i)["faults"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["reason"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The master's VIP made someone else's (an operator turns it into a
/// permanent address): the master sees it at once, goes FAULT with the
/// reason in status and a count in metrics, sends priority 0 so the peer
/// takes over after its skew time, and leaves the address alone. When the
/// address goes, it recovers by itself and (higher priority) takes the VIP
/// back.
#[test]
fn a_vip_made_foreign_hands_over_and_recovers_when_it_goes() {
    if !require_root("a_vip_made_foreign_hands_over_and_recovers_when_it_goes") {
        return;
    }
    let mut c = Cluster::new(
        50,
        Scenario {
            vip_lifetime: Some("2s"),
            ..Scenario::default()
        },
        &[150, 100],
    );
    let cap = observe(&mut c);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    let n1 = c.ns[0].clone();
    let t0 = SystemTime::now();
    c.lab.sh(
        &n1,
        &[
            "ip",
            "addr",
            "change",
            "10.213.50.100/24",
            "dev",
            "eth0",
            "valid_lft",
            "forever",
            "preferred_lft",
            "forever",
        ],
    );
    let took = wait_for(Duration::from_secs(5), || w.holders().contains(&1))
        .unwrap_or_else(|| panic!("n2 never took over: {}", c.logs()));
    eprintln!("[net 50] n1's VIP made foreign: n2 holds the VIP after {took:?}");
    assert!(
        took <= c.skew(1) + c.interval() + Duration::from_millis(250),
        "{took:?}: not a priority 0 handover (skew {:?})\n{}",
        c.skew(1),
        c.logs()
    );
    let n1_ip = node_ip(&c, 0);
    let zero = cap.priority_zero();
    assert!(
        zero.iter().any(|(at, src)| *src == n1_ip && *at >= t0),
        "no priority 0 from n1 on the wire: {zero:?}"
    );
    eventually_sync(
        Duration::from_secs(3),
        "n1 in FAULT for vip_foreign",
        || c.instance(0)["state"] == "FAULT" && fault_reasons(&c, 0) == ["vip_foreign"],
    );
    let detail = c.instance(0)["faults"][0]["detail"].clone();
    assert!(
        detail.as_str().unwrap().contains("10.213.50.100"),
        "{detail}"
    );
    // lbd never touches it: still there, still permanent.
    let shown = c.lab.addrs(&n1);
    assert!(
        shown.contains("10.213.50.100/24") && shown.contains("valid_lft forever"),
        "{shown}"
    );
    // The cause goes: back to BACKUP, then preempting n2 (150 > 100).
    c.lab.sh(
        &n1,
        &["ip", "addr", "del", "10.213.50.100/24", "dev", "eth0"],
    );
    let back = w
        .wait_sole_holder(0, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("n1 did not recover: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net 50] foreign address removed: n1 holds the VIP again after {back:?}");
    eventually_sync(Duration::from_secs(2), "n1 MASTER without faults", || {
        c.instance(0)["state"] == "MASTER" && fault_reasons(&c, 0).is_empty()
    });
    let log = std::fs::read_to_string(c.log(0)).unwrap();
    assert!(log.contains("configured on eth0 by someone else"), "{log}");
}

/// The master's interface is deleted (and with it the VIP): FAULT
/// (link_gone), the peer takes over after its Master_Down_Interval. An
/// interface of that name created again (a new ifindex, a new MAC) is
/// taken up: sockets reopened, adverts and gratuitous ARPs from the new
/// MAC, and the VIP back on n1.
#[test]
fn a_deleted_and_recreated_link_is_a_fault_then_taken_up_again() {
    if !require_root("a_deleted_and_recreated_link_is_a_fault_then_taken_up_again") {
        return;
    }
    let mut c = Cluster::new(51, Scenario::default(), &[150, 100]);
    let cap = observe(&mut c);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    let n1 = c.ns[0].clone();
    c.lab.sh(&n1, &["ip", "link", "del", "eth0"]);
    let took = w
        .wait_sole_holder(1, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("n2 never took over: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net 51] n1's link deleted: n2 holds the VIP after {took:?}");
    assert!(
        took <= c.master_down(1) + Duration::from_millis(250),
        "{took:?}"
    );
    eventually_sync(Duration::from_secs(3), "n1 in FAULT for link_gone", || {
        c.instance(0)["state"] == "FAULT" && fault_reasons(&c, 0).contains(&"link_gone".into())
    });
    // A new link of the same name: another ifindex and MAC.
    cap.clear();
    c.lab
        .attach(&n1, "eth0", &["10.213.51.1/24", "fd00:db8:51::1/64"]);
    let mac = mac_of(&n1, "eth0");
    let back = w
        .wait_sole_holder(0, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("n1 never came back: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net 51] link recreated: n1 holds the VIP again after {back:?}");
    std::thread::sleep(c.interval() * 3);
    let n1_ip = node_ip(&c, 0);
    let from_n1: Vec<_> = cap
        .seen()
        .into_iter()
        .filter_map(|s| match s.frame {
            support::wire::Frame::Advert { src, src_mac, .. } if src == n1_ip => Some(src_mac),
            _ => None,
        })
        .collect();
    assert!(!from_n1.is_empty(), "no adverts from n1 after the new link");
    assert!(
        from_n1.iter().all(|m| *m == mac),
        "adverts from an old MAC: {from_n1:?}"
    );
    let vip = c.vip();
    let garps = cap.announcements(vip);
    assert!(
        garps.iter().any(|(_, m)| *m == mac),
        "no gratuitous ARP from the new MAC {mac:?}: {garps:?}"
    );
    assert_eq!(fault_reasons(&c, 0), Vec::<String>::new());
}

/// The master's MAC changes under it (an operator, a bond failing over):
/// it stays master and announces the VIP from the new MAC at once, so the
/// neighbours follow; its adverts come from the new MAC.
#[test]
fn a_new_mac_on_the_master_is_announced_at_once() {
    if !require_root("a_new_mac_on_the_master_is_announced_at_once") {
        return;
    }
    let mut c = Cluster::new(52, Scenario::default(), &[150, 100]);
    let cap = observe(&mut c);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    std::thread::sleep(c.interval() * 3);
    let transitions = c.instance(0)["transitions"].clone();
    let n1 = c.ns[0].clone();
    let new = [0x02, 0, 0, 0, 0x52, 0x01];
    cap.clear();
    let changed_at = SystemTime::now();
    c.lab.sh(
        &n1,
        &["ip", "link", "set", "eth0", "address", "02:00:00:00:52:01"],
    );
    let vip = c.vip();
    let seen = wait_for(Duration::from_secs(2), || {
        cap.announcements(vip).iter().any(|(_, m)| *m == new)
    });
    assert!(
        seen.is_some(),
        "no announcement from the new MAC: {:?}\n{}",
        cap.announcements(vip),
        c.logs()
    );
    let first = cap
        .announcements(vip)
        .into_iter()
        .find(|(_, m)| *m == new)
        .unwrap()
        .0;
    let after = first.duration_since(changed_at).unwrap_or_default();
    eprintln!("[net 52] MAC changed: first gratuitous ARP from it after {after:?}");
    assert!(after <= Duration::from_millis(500), "{after:?}");
    std::thread::sleep(c.interval() * 3);
    assert_eq!(w.holders(), vec![0]);
    assert_eq!(c.instance(0)["state"], "MASTER");
    assert_eq!(
        c.instance(0)["transitions"],
        transitions,
        "no state change for a MAC"
    );
}

/// Lost notifications are reported: a monitor whose socket buffer is
/// tiny, not read while hundreds of addresses come and go, sees an
/// Overrun (and the driver answers it with a fresh read).
#[test]
fn a_netlink_overrun_is_reported() {
    if !require_root("a_netlink_overrun_is_reported") {
        return;
    }
    let mut lab = support::netns::Lab::new("flt");
    let ns = lab.add_ns("o");
    lab.attach(&ns, "eth0", &["10.213.53.1/24"]);
    let batch = lab.name("batch");
    let file = std::env::temp_dir().join(format!("{batch}.txt"));
    let mut cmds = String::new();
    for i in 0..400u32 {
        cmds.push_str(&format!(
            "addr add 10.214.{}.{}/32 dev eth0\n",
            i / 200,
            i % 200 + 1
        ));
    }
    std::fs::write(&file, cmds).unwrap();
    let (ns2, file2) = (ns.clone(), file.clone());
    let saw = in_ns(&ns, move || {
        rt().block_on(async move {
            let mut mon = NetMonitor::open_with_receive_buffer(0).unwrap();
            // The runtime is blocked meanwhile: nobody reads the socket.
            let st = std::process::Command::new("ip")
                .args(["-n", &ns2, "-batch"])
                .arg(&file2)
                .status()
                .unwrap();
            assert!(st.success());
            let deadline = Instant::now() + Duration::from_secs(3);
            let (mut events, mut overrun) = (0, false);
            while !overrun {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, mon.next()).await {
                    Ok(Some(NetEvent::Overrun)) => overrun = true,
                    Ok(Some(_)) => events += 1,
                    _ => break,
                }
            }
            (overrun, events)
        })
    });
    let _ = std::fs::remove_file(&file);
    eprintln!("overrun seen: {} after {} events", saw.0, saw.1);
    assert!(
        saw.0,
        "no overrun after 400 unread address changes ({} events)",
        saw.1
    );
    assert!(saw.1 < 400, "every event arrived: the buffer was not small");
}

/// A VIP the kernel refuses to put back (issue 14: failures are state).
/// The VIP lives in a /28 of its own; the master's copy is deleted and, in
/// the same `ip -batch`, a `scope link` address is put in that /28, so
/// lbd's restore (a renewal of a VIP gone missing) is refused by the
/// kernel itself: EINVAL, "ipv4: Invalid scope value" (a global address
/// in a subnet that holds one of another scope). No hook in lbd. The
/// master goes FAULT `vip_failed` with the kernel's answer in status,
/// sends priority 0, the peer takes over after its skew time; the retry
/// after the backoff is refused again while the cause holds; once it goes,
/// the next retry succeeds and n1 (150) takes the VIP back.
///
/// (IPv6 with `disable_ipv6=1` on the interface is refused too, EACCES,
/// but it also takes the link-local address adverts go from: that is
/// `no_source_address`, and no priority 0 can get out.)
#[test]
fn a_vip_the_kernel_refuses_is_a_fault_and_recovers_after_the_backoff() {
    if !require_root("a_vip_the_kernel_refuses_is_a_fault_and_recovers_after_the_backoff") {
        return;
    }
    let net = 54;
    let mut c = Cluster::new(net, Scenario::default(), &[150, 100]);
    let cap = observe(&mut c);
    let w = c.watch();
    let (vip24, vip28) = (
        format!("10.213.{net}.100/24"),
        format!("10.213.{net}.100/28"),
    );
    for i in 0..2 {
        let conf = c.dir.path().join(format!("n{}.yaml", i + 1));
        std::fs::write(&conf, c.config(i).replace(&vip24, &vip28)).unwrap();
        c.start_with(i, &conf);
    }
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    let n1 = c.ns[0].clone();
    let n1_ip = node_ip(&c, 0);
    let blocker = format!("10.213.{net}.101");
    let batch = c.dir.path().join("refuse.batch");
    std::fs::write(
        &batch,
        format!("addr del {vip28} dev eth0\naddr add {blocker}/28 dev eth0 scope link\n"),
    )
    .unwrap();
    let t0 = SystemTime::now();
    // lbd may put the VIP back between the two lines: then the kernel
    // refuses the blocker instead, and the batch runs again.
    let placed = wait_for(Duration::from_secs(5), || {
        support::netns::run_output(&["ip", "-n", &n1, "-force", "-batch", batch.to_str().unwrap()]);
        c.lab.has_addr(&n1, &blocker)
    });
    assert!(
        placed.is_some(),
        "blocker never placed: {}",
        c.lab.addrs(&n1)
    );
    let took = w
        .wait_sole_holder(1, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("n2 never took over: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net {net}] n1's VIP refused by the kernel: n2 holds it after {took:?}");
    assert!(
        took <= c.skew(1) + c.interval() + Duration::from_millis(250),
        "{took:?}: not a priority 0 handover (skew {:?})\n{}",
        c.skew(1),
        c.logs()
    );
    let zero = cap.priority_zero();
    assert!(
        zero.iter().any(|(at, src)| *src == n1_ip && *at >= t0),
        "no priority 0 from n1 on the wire: {zero:?}\n{}",
        c.logs()
    );
    eventually_sync(Duration::from_secs(3), "n1 in FAULT for vip_failed", || {
        c.instance(0)["state"] == "FAULT" && fault_reasons(&c, 0) == ["vip_failed"]
    });
    let detail = c.instance(0)["faults"][0]["detail"].to_string();
    assert!(
        detail.contains(&format!("cannot install {vip28}")) && detail.contains("os error 22"),
        "{detail}"
    );
    // The table and its exit code say it too.
    let sock = c.socket(0);
    let out = support::netns::run_output(&[
        support::lbd::lbd_bin(),
        "status",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{table}");
    assert!(
        table.contains("    fault vip_failed: VIP renewal: cannot install")
            && table.contains("DEGRADED: VRRP instance vip is in FAULT (vip_failed: "),
        "{table}"
    );
    // The backoff's retries (1 s, then 2 s) are refused as well while the
    // cause holds: n1 never holds the VIP, n2 stays master.
    let t1 = c.instance(0)["transitions"].as_u64().unwrap_or(0);
    let held = wait_for(Duration::from_millis(3500), || w.holders().contains(&0));
    assert!(
        held.is_none(),
        "n1 held a refused VIP: {}",
        c.lab.addrs(&n1)
    );
    let retried = c.instance(0)["transitions"].as_u64().unwrap_or(0);
    assert!(retried > t1, "no retry after the backoff\n{}", c.logs());
    assert_eq!(c.instance(1)["state"], "MASTER");
    // The scope link address, listed before n1's own, is never the source
    // (the retries above advertised).
    let from_blocker = cap.adverts_from(blocker.parse().unwrap());
    assert!(
        from_blocker.is_empty(),
        "adverts from {blocker}: {from_blocker:?}"
    );
    assert!(cap
        .adverts_from(n1_ip)
        .iter()
        .any(|(at, p)| *p == 150 && *at > t0));
    // The cause goes: the next retry installs it, and n1 preempts n2.
    c.lab.sh(
        &n1,
        &["ip", "addr", "del", &format!("{blocker}/28"), "dev", "eth0"],
    );
    let back = w
        .wait_sole_holder(0, Duration::from_secs(35))
        .unwrap_or_else(|| panic!("n1 did not recover: {:?}\n{}", w.holders(), c.logs()));
    eprintln!("[net {net}] blocker removed: n1 holds the VIP again after {back:?}");
    eventually_sync(Duration::from_secs(2), "n1 MASTER without faults", || {
        c.instance(0)["state"] == "MASTER" && fault_reasons(&c, 0).is_empty()
    });
    assert_eq!(c.instance(1)["state"], "BACKUP");
    let log = std::fs::read_to_string(c.log(0)).unwrap();
    assert!(log.contains("fault over"), "{log}");
}
