//! VRRP and its kernel plumbing in network namespaces (root; skipped
//! otherwise). Every address used exists only inside the test namespaces.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::netns::{require_root, wait_for, Lab};
use lbd::sys::addr::{AddOutcome, Netlink, LBD_ADDR_PROTO};
use lbd::sys::link::{NetEvent, NetMonitor};

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
            let src4 = nl.source_address(&link, false, &[]).await.unwrap();
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
