//! Reload in place with traffic through the VIP (issue 14): the master
//! reloaded with each kind of in-place change while a client in a third
//! namespace sends requests through the VIP to the master's tcplb
//! listener: no failed request, no priority-0 advert on the wire, the VIP
//! never moves. `lbd run` nodes in network namespaces (root; skipped
//! otherwise).

mod support;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use support::cluster::{Cluster, Scenario};
use support::netns::require_root;
use support::ping_client::PingClient;
use support::wire::Capture;

/// An echo server on 127.0.0.1:7001 inside `ns`, for the test's life.
fn echo_in(ns: &str) {
    let listener = support::netns::listen_in(ns, "127.0.0.1:7001");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[test]
fn reload_in_place_keeps_traffic_and_sends_no_priority_zero() {
    if !require_root("reload_in_place_keeps_traffic_and_sends_no_priority_zero") {
        return;
    }
    let net = 65;
    let sc = Scenario {
        // `dead` has no backend that answers: a track on it fails.
        tcplb: "tcplb:\n  listeners:\n    - name: api\n      bind: 0.0.0.0:8443\n      backends: [127.0.0.1:7001]\n      health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }\n    - name: dead\n      bind: 0.0.0.0:8444\n      backends: [127.0.0.1:7999]\n      health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }\n".to_string(),
        ..Scenario::default()
    };
    let mut c = Cluster::new(net, sc, &[150, 100]);
    for n in c.ns.clone() {
        echo_in(&n);
    }
    let obs = c.lab.add_ns("obs");
    c.lab.attach(&obs, "eth0", &[&format!("10.213.{net}.9/24")]);
    let cap = Capture::start(&obs, None);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    let client = PingClient::start(&obs, c.vip(), 1, Duration::from_secs(1));
    let warm = support::netns::wait_for(Duration::from_secs(5), || client.counts().0 >= 10);
    assert!(
        warm.is_some(),
        "no request got through: {:?}\n{}",
        client.errors(),
        c.logs()
    );
    w.take_max_dual();
    w.take_max_none();
    let n1: IpAddr = format!("10.213.{net}.1").parse().unwrap();
    let since = SystemTime::now();
    let (ok0, failed0) = client.counts();
    let obs_ip: IpAddr = format!("10.213.{net}.9").parse().unwrap();
    let n2: IpAddr = format!("10.213.{net}.2").parse().unwrap();
    // Every step is an edit of the start config (so a step also undoes
    // what the one before added), what the master's status must show once
    // applied, and how long traffic runs before the counts are read.
    struct Step {
        what: &'static str,
        edit: Box<dyn Fn(String) -> String>,
        effective_priority: u64,
        second_vip: bool,
        settle: Duration,
    }
    let step = |what, effective_priority, edit: Box<dyn Fn(String) -> String>| Step {
        what,
        edit,
        effective_priority,
        second_vip: false,
        settle: Duration::from_millis(800),
    };
    fn p140(s: String) -> String {
        s.replace("priority: 150", "priority: 140")
    }
    let track = |s: String, list: &str| {
        p140(s).replace(
            "preempt: true",
            &format!("preempt: true\n      track: [{list}]"),
        )
    };
    let steps = [
        step("priority", 140, Box::new(p140)),
        step(
            "advert_interval",
            140,
            Box::new(move |s| p140(s).replace("advert_interval: 100ms", "advert_interval: 200ms")),
        ),
        Step {
            second_vip: true,
            ..step(
                "a second VIP",
                140,
                Box::new(move |s| {
                    p140(s)
                        .replace("advert_interval: 100ms", "advert_interval: 200ms")
                        .replace(
                            &format!("[10.213.{net}.100/24]"),
                            &format!("[10.213.{net}.100/24, 10.213.{net}.101/24]"),
                        )
                }),
            )
        },
        step(
            "preempt off and a notify script",
            140,
            Box::new(move |s| {
                p140(s)
                    .replace("advert_interval: 100ms", "advert_interval: 200ms")
                    .replace("preempt: true", "preempt: false\n      notify: \"true\"")
            }),
        ),
        // The listener `dead` has no backend up: its track fails, and its
        // weight is what the master must advertise (still above n2's 100).
        step(
            "a track list",
            130,
            Box::new(move |s| track(s, "{listener: dead, weight: -10}")),
        ),
        step(
            "a track's weight and a second track",
            115,
            Box::new(move |s| {
                track(
                    s,
                    "{listener: dead, weight: -25}, {interface: eth0, weight: -50}",
                )
            }),
        ),
        // Multicast to unicast: n2 (multicast still) hears a unicast advert
        // as well; the observer is a peer so that the capture sees them.
        step(
            "unicast_peers",
            140,
            Box::new(move |s| {
                p140(s).replace(
                    "preempt: true",
                    &format!("preempt: true\n      unicast_peers: [\"{n2}\", \"{obs_ip}\"]"),
                )
            }),
        ),
        // Longer than the 2 s default: the VIP's lifetime in the kernel is
        // still the old one, so a renewal put off to the new period would
        // let it lapse. Traffic runs past the old lifetime.
        Step {
            settle: Duration::from_millis(2600),
            ..step(
                "vip_lifetime",
                140,
                Box::new(|s| {
                    p140(s).replace("preempt: true", "preempt: true\n      vip_lifetime: 9s")
                }),
            )
        },
        step("back to the start", 150, Box::new(|s| s)),
    ];
    for Step {
        what,
        edit,
        effective_priority,
        second_vip,
        settle,
    } in steps
    {
        let before = std::fs::read_to_string(c.log(0)).unwrap_or_default().len();
        let reloaded_at = SystemTime::now();
        c.reload(0, edit);
        // Applied: the log says so (reload done), then traffic for a while.
        let done = support::netns::wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(c.log(0)).unwrap_or_default()[before..]
                .contains("config reloaded")
        });
        assert!(done.is_some(), "{what}: no reload logged\n{}", c.logs());
        if what == "vip_lifetime" {
            // Renewed with the new lifetime at once, long before the old
            // one (2 s) could run out.
            let vip = format!("10.213.{net}.100/24");
            let renewed = support::netns::wait_for(Duration::from_millis(500), || {
                valid_lft(&c.lab.addrs(&c.ns[0]), &vip).is_some_and(|l| l > 2)
            });
            assert!(
                renewed.is_some(),
                "{what}: not renewed with the new lifetime\n{}",
                c.lab.addrs(&c.ns[0])
            );
        }
        std::thread::sleep(settle);
        let (ok, failed) = client.counts();
        eprintln!(
            "[net {net}] reload ({what}): {} requests, {} failed",
            ok - ok0,
            failed - failed0
        );
        assert_eq!(
            failed,
            failed0,
            "{what}: failed requests ({:?})\n{}",
            client.errors(),
            c.logs()
        );
        assert_eq!(w.holders(), vec![0], "{what}: the VIP moved\n{}", c.logs());
        // Applied, not just accepted.
        let st = c.instance(0);
        assert_eq!(st["state"], "MASTER", "{what}: {st}");
        assert_eq!(st["effective_priority"], effective_priority, "{what}: {st}");
        let second = c.lab.has_addr(&c.ns[0], &format!("10.213.{net}.101"));
        assert_eq!(
            second,
            second_vip,
            "{what}: second VIP\n{}",
            c.lab.addrs(&c.ns[0])
        );
        match what {
            "a track list" | "a track's weight and a second track" => {
                let tracks = st["tracks"].as_array().cloned().unwrap_or_default();
                let want = if what == "a track list" { 1 } else { 2 };
                assert_eq!(tracks.len(), want, "{what}: {st}");
                assert_eq!(tracks[0]["target"], "listener:dead", "{what}: {st}");
                assert_eq!(tracks[0]["failing"], true, "{what}: {st}");
            }
            "unicast_peers" => {
                // Since the reload: unicast to the observer, and only that
                // (the capture cannot see the copy to n2).
                let dsts: Vec<IpAddr> = cap
                    .advert_destinations(n1)
                    .into_iter()
                    .filter(|(at, _)| *at >= reloaded_at)
                    .map(|(_, d)| d)
                    .collect();
                assert!(dsts.contains(&obs_ip), "{what}: no unicast advert seen");
                let group: IpAddr = "224.0.0.18".parse().unwrap();
                let last = dsts.iter().rposition(|d| *d == group);
                let first = dsts.iter().position(|d| *d == obs_ip);
                assert!(
                    last < first,
                    "{what}: multicast after the first unicast advert: {dsts:?}"
                );
            }
            "vip_lifetime" => {
                let lft = valid_lft(&c.lab.addrs(&c.ns[0]), &format!("10.213.{net}.100/24"));
                assert!(
                    lft.is_some_and(|l| l > 2),
                    "{what}: the VIP's lifetime is not the new 9 s: {lft:?}\n{}",
                    c.lab.addrs(&c.ns[0])
                );
            }
            _ => {}
        }
    }
    assert!(
        w.take_max_dual().is_zero(),
        "two holders across the reloads"
    );
    assert!(w.take_max_none().is_zero(), "the VIP went missing");
    let zero: Vec<_> = cap
        .priority_zero()
        .into_iter()
        .filter(|(at, src)| *src == n1 && *at >= since)
        .collect();
    assert!(
        zero.is_empty(),
        "priority 0 from n1 across reloads: {zero:?}"
    );
    // And the master did advertise meanwhile (the capture works).
    assert!(!cap.adverts_from(n1).is_empty());
}

/// The `valid_lft` in seconds of `cidr` in `ip -o addr show` output.
fn valid_lft(addrs: &str, cidr: &str) -> Option<u64> {
    let line = addrs
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == cidr))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "valid_lft")?;
    words.next()?.strip_suffix("sec")?.parse().ok()
}
