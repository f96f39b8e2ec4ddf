//! Handover grace (issue 14: a graceful stop fails no request): the master
//! is stopped with SIGTERM while a client sends a request every 10 ms
//! through the VIP to the nodes' tcplb listeners, each answered after 300
//! ms by a backend, so about thirty connections are open on the old master
//! at the moment the VIP moves. With the grace the new master sends their
//! packets on to the old one, which keeps the VIP hidden (no ARP / ND
//! answers) until they are done: no request fails. With `handover_grace:
//! 0s` the same stop fails requests (the new master's kernel resets the
//! old master's connections): the test can tell. `lbd run` nodes in
//! network namespaces (root; skipped otherwise).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::cluster::{Cluster, Scenario};
use support::netns::{require_root, run_output, wait_for};
use support::ping_client::PingClient;

/// How long each backend takes to answer: connections stay open across
/// the hand-over.
const ANSWER_AFTER: Duration = Duration::from_millis(300);

/// An echo server on `addr` inside `ns` that answers each 4-byte request
/// after [`ANSWER_AFTER`], for the test's life.
fn slow_echo_in(ns: &str, addr: &str) {
    let listener = support::netns::listen_in(ns, addr);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4];
                while s.read_exact(&mut buf).is_ok() {
                    std::thread::sleep(ANSWER_AFTER);
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// The lbd-handover tables in `ns` (`nft list tables`).
fn handover_tables(ns: &str) -> Vec<String> {
    let out = run_output(&["ip", "netns", "exec", ns, "nft", "list", "tables"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("lbd-handover-"))
        .map(str::to_string)
        .collect()
}

struct Outcome {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    /// What n2's status said while it forwarded, what n1 had in nft.
    forwarding: Option<String>,
    hiding: Vec<String>,
}

/// SIGTERM of the master n1 under the client's load; counts from the
/// signal until a second after n1 exited.
fn graceful_stop(net: u8, v6: bool, grace: &str) -> (Outcome, Cluster) {
    let (bind, backends) = if v6 {
        (
            "\"[::]:8443\"".to_string(),
            format!("[\"[fd00:db8:{net}::1]:7001\", \"[fd00:db8:{net}::2]:7001\"]"),
        )
    } else {
        (
            "0.0.0.0:8443".to_string(),
            format!("[10.213.{net}.1:7001, 10.213.{net}.2:7001]"),
        )
    };
    let sc = Scenario {
        v6,
        extra: format!("      handover_grace: {grace}\n"),
        tcplb: format!(
            "tcplb:\n  shutdown_grace: 5s\n  listeners:\n    - name: api\n      bind: {bind}\n      backends: {backends}\n      health: {{ type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}\n"
        ),
        ..Scenario::default()
    };
    let mut c = Cluster::new(net, sc, &[150, 100]);
    for (i, n) in c.ns.clone().iter().enumerate() {
        let addr = if v6 {
            format!("[fd00:db8:{net}::{}]:7001", i + 1)
        } else {
            format!("10.213.{net}.{}:7001", i + 1)
        };
        slow_echo_in(n, &addr);
    }
    let obs = c.lab.add_ns("obs");
    let obs_addr = if v6 {
        format!("fd00:db8:{net}::9/64")
    } else {
        format!("10.213.{net}.9/24")
    };
    c.lab.attach(&obs, "eth0", &[&obs_addr]);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(15)).is_some(),
        "{}",
        c.logs()
    );
    let client = PingClient::start(&obs, c.vip(), 200, Duration::from_secs(3));
    let warm = wait_for(Duration::from_secs(10), || client.counts().0 >= 20);
    assert!(
        warm.is_some(),
        "no request got through: {:?}\n{}",
        client.errors(),
        c.logs()
    );
    // Both backends up in n2 before the stop: a request must not fail for
    // a reason that has nothing to do with the hand-over.
    std::thread::sleep(Duration::from_millis(500));
    let (ok0, failed0) = client.counts();
    client.clear_errors();
    let idx = c.procs[0].take().expect("n1 runs");
    c.lab.signal(idx, "TERM");
    let mut forwarding = None;
    let mut hiding = Vec::new();
    // Bounded: 8 s at 20 ms.
    for _ in 0..400 {
        if forwarding.is_none() {
            forwarding = c
                .try_instance(1)
                .and_then(|v| v["handover"].as_str().map(str::to_string));
        }
        if hiding.is_empty() {
            hiding = handover_tables(&c.ns[0]);
        }
        if forwarding.is_some() && !hiding.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let exited = c.lab.wait_exit(idx, Duration::from_secs(10));
    assert!(exited.is_some(), "n1 did not exit\n{}", c.logs());
    // The requests started before the exit get their answers.
    std::thread::sleep(ANSWER_AFTER + Duration::from_millis(700));
    let (ok1, failed1) = client.counts();
    let errors = client.errors();
    drop(client);
    (
        Outcome {
            ok: ok1 - ok0,
            failed: failed1 - failed0,
            errors,
            forwarding,
            hiding,
        },
        c,
    )
}

fn carried_over(net: u8, v6: bool) {
    let (o, c) = graceful_stop(net, v6, "2s");
    eprintln!(
        "[net {net}] graceful stop with a 2 s grace: {} ok, {} failed {:?}; n2: {:?}; n1: {:?}",
        o.ok, o.failed, o.errors, o.forwarding, o.hiding
    );
    assert!(
        o.forwarding
            .as_deref()
            .is_some_and(|f| f.contains("forwarding")),
        "n2 never said it forwarded: {:?}\n{}",
        o.forwarding,
        c.logs()
    );
    let hide_family = if v6 { "table ip6 " } else { "table arp " };
    assert!(
        o.hiding.iter().any(|t| t.starts_with(hide_family)),
        "n1 never hid its VIP: {:?}\n{}",
        o.hiding,
        c.logs()
    );
    assert!(o.ok >= 100, "too few requests to judge: {}", o.ok);
    assert_eq!(o.failed, 0, "{:?}\n{}", o.errors, c.logs());
    // The grace ends: n2 stops forwarding, n1 left nothing behind.
    let clean = wait_for(Duration::from_secs(4), || {
        handover_tables(&c.ns[1]).is_empty()
    });
    assert!(clean.is_some(), "n2 kept {:?}", handover_tables(&c.ns[1]));
    assert!(
        handover_tables(&c.ns[0]).is_empty(),
        "{:?}",
        handover_tables(&c.ns[0])
    );
    assert!(c.instance(1)["handover"].is_null(), "{}", c.instance(1));
}

#[test]
fn a_graceful_stop_carries_the_open_connections_over_ipv4() {
    if !require_root("a_graceful_stop_carries_the_open_connections_over_ipv4") {
        return;
    }
    carried_over(71, false);
}

#[test]
fn a_graceful_stop_carries_the_open_connections_over_ipv6() {
    if !require_root("a_graceful_stop_carries_the_open_connections_over_ipv6") {
        return;
    }
    carried_over(72, true);
}

/// The control: without the grace the same stop fails requests, so the
/// test above sees what it claims to.
#[test]
fn without_a_grace_the_same_stop_fails_requests() {
    if !require_root("without_a_grace_the_same_stop_fails_requests") {
        return;
    }
    let (o, c) = graceful_stop(73, false, "0s");
    eprintln!(
        "[net 73] graceful stop without a grace: {} ok, {} failed {:?}",
        o.ok, o.failed, o.errors
    );
    assert!(
        o.forwarding.is_none() && o.hiding.is_empty(),
        "{:?} {:?}",
        o.forwarding,
        o.hiding
    );
    assert!(
        o.failed > 0,
        "no request failed without the grace\n{}",
        c.logs()
    );
}
