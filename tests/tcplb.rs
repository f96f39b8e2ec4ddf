//! The balancer end to end: the real `lbd` binary in front of real TLS and
//! TCP backends on loopback.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use support::backends::*;
use support::config::{listener_yaml, tcplb_section};
use support::lbd::*;
use support::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 127.0.0.1:`port`, where the listeners bind.
fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// `lbd` with one listener on a free loopback port, and its address.
async fn one_listener(
    name: &str,
    backends: &[&Backend],
    balance: &str,
    health: &str,
    extra: &str,
) -> (Lbd, std::net::SocketAddr) {
    let addr = local(free_port());
    let yaml = listener_yaml(name, addr, backends, balance, health, extra);
    (Lbd::start(&tcplb_section(None, &[yaml])).await, addr)
}

fn https_health(pki: &Pki, interval: &str) -> String {
    format!(
        "{{ type: https, path: /healthz, interval: {interval}, timeout: 500ms, rise: 2, fall: 2, tls: {{ ca_file: {}, server_name: kubernetes }} }}",
        pki.ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_healthz_marks_down_after_fall_and_returns_after_rise() {
    let pki = Pki::new();
    let b1 = https_backend("b1", &pki, false).await;
    let b2 = https_backend("b2", &pki, false).await;
    let b3 = https_backend("b3", &pki, false).await;
    let (lbd, addr) = one_listener(
        "api",
        &[&b1, &b2, &b3],
        "roundrobin",
        &https_health(&pki, "100ms"),
        "",
    )
    .await;
    // All three serve at first.
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        let (st, who) = https_get(&pki, addr, "/whoami").await.unwrap();
        assert_eq!(st, 200);
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "round robin over three: {seen:?}");

    b2.healthy.store(false, Relaxed);
    let flipped_at = Instant::now();
    let b2addr = b2.addr.to_string();
    eventually(Duration::from_secs(3), "b2 marked down", || async {
        backend_of(&lbd.status().await, 0, &b2addr)["healthy"] == false
    })
    .await;
    let took = flipped_at.elapsed();
    // fall=2 at 100 ms: two failed checks, never one.
    assert!(
        took >= Duration::from_millis(100),
        "flipped after one failure ({took:?})"
    );
    let st = lbd.status().await;
    let b2s = backend_of(&st, 0, &b2addr);
    assert_eq!(b2s["last_error"], "HTTP 500, expected 200");
    for _ in 0..20 {
        let (_, who) = https_get(&pki, addr, "/whoami").await.unwrap();
        assert_ne!(who, "b2", "a down backend got a new connection");
    }

    b2.healthy.store(true, Relaxed);
    eventually(Duration::from_secs(3), "b2 back up", || async {
        backend_of(&lbd.status().await, 0, &b2addr)["healthy"] == true
    })
    .await;
    let mut back = false;
    for _ in 0..6 {
        back |= https_get(&pki, addr, "/whoami").await.unwrap().1 == "b2";
    }
    assert!(back, "b2 never chosen again after rise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_retried_and_all_down_closes_at_once() {
    let a = echo_backend("a", true).await;
    let b = echo_backend("b", true).await;
    // Checks every hour: after the first (passing) one, a dead backend still
    // counts as healthy, so only retry can save the client.
    let (lbd, addr) = one_listener(
        "t",
        &[&a, &b],
        "roundrobin",
        "{ type: tcp, interval: 1h }",
        "      retries: 2\n",
    )
    .await;
    eventually(Duration::from_secs(3), "first checks", || async {
        lbd.status().await["tcplb"][0]["backends"][1]["last_check_latency_ms"].is_number()
    })
    .await;
    b.stop();
    for i in 0..10 {
        let (who, _s) = whoami_tcp(addr, None)
            .await
            .unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        assert_eq!(who, "a");
    }
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["refused_no_backend"], 0);

    // Now with real checks: every backend down -> closed at once, counted.
    let c = echo_backend("c", true).await;
    c.stop();
    let (lbd2, addr2) = one_listener(
        "dead",
        &[&c],
        "roundrobin",
        "{ type: tcp, interval: 100ms, rise: 1, fall: 1 }",
        "",
    )
    .await;
    eventually(Duration::from_secs(3), "c down", || async {
        lbd2.status().await["tcplb"][0]["backends"][0]["healthy"] == false
    })
    .await;
    for _ in 0..3 {
        let start = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr2).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("not closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "got data from nowhere");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "close took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(lbd2.status().await["tcplb"][0]["refused_no_backend"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastconn_fills_the_emptiest_backend() {
    let a = echo_backend("a", true).await;
    let b = echo_backend("b", true).await;
    let (lbd, addr) = one_listener(
        "lc",
        &[&a, &b],
        "leastconn",
        "{ type: tcp, interval: 1h }",
        "",
    )
    .await;
    let mut held = Vec::new();
    let mut count = BTreeMap::new();
    for _ in 0..6 {
        let (who, s) = whoami_tcp(addr, None).await.unwrap();
        *count.entry(who.clone()).or_insert(0) += 1;
        held.push((who, s));
    }
    assert_eq!(count.get("a"), Some(&3), "{count:?}");
    assert_eq!(count.get("b"), Some(&3), "{count:?}");
    // b ends its sessions; its clients see EOF and close, as clients do.
    b.close_open_connections();
    let mut kept = Vec::new();
    for (who, mut s) in held {
        if who == "b" {
            let mut buf = [0u8; 8];
            let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(n, Ok(0) | Err(_)));
        } else {
            kept.push(s);
        }
    }
    let mut held = kept;
    eventually(Duration::from_secs(3), "lbd sees b idle", || async {
        lbd.status().await["tcplb"][0]["backends"][1]["active_connections"] == 0
    })
    .await;
    // The next three all go to b (round robin would split them).
    for _ in 0..3 {
        let (who, s) = whoami_tcp(addr, None).await.unwrap();
        assert_eq!(who, "b", "leastconn chose the busier backend");
        held.push(s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_balance_keeps_each_client_on_one_backend() {
    let bs = [
        echo_backend("a", true).await,
        echo_backend("b", true).await,
        echo_backend("c", true).await,
    ];
    let (_lbd, addr) = one_listener(
        "src",
        &[&bs[0], &bs[1], &bs[2]],
        "source",
        "{ type: tcp, interval: 1h }",
        "",
    )
    .await;
    let mut per_backend = BTreeMap::new();
    for host in 1..=60u8 {
        let src = IpAddr::from([127, 0, 1, host]);
        let mut first = None;
        for _ in 0..4 {
            let (who, _) = whoami_tcp(addr, Some(src)).await.unwrap();
            match &first {
                None => first = Some(who),
                Some(f) => assert_eq!(*f, who, "client {src} moved"),
            }
        }
        *per_backend.entry(first.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert!(
        per_backend.values().all(|&n| n >= 8),
        "uneven: {per_backend:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_100mb_byte_exact_both_ways() {
    let e = echo_backend("e", false).await;
    let (_lbd, addr) = one_listener(
        "bulk",
        &[&e],
        "roundrobin",
        "{ type: tcp, interval: 1h }",
        "",
    )
    .await;
    const LEN: usize = 100 * 1024 * 1024;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    // A pattern that catches reordering and loss, not just length.
    let pattern = |i: usize| ((i as u64).wrapping_mul(2654435761) >> 13) as u8;
    let writer = async {
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < LEN {
            let n = buf.len().min(LEN - sent);
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            w.write_all(&buf[..n]).await.unwrap();
            sent += n;
        }
        // FIN from the client only: the echo must still flow back to us.
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(got + k), "byte {} differs", got + k);
            }
            got += n;
        }
        got
    };
    let (_, got) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("transfer stalled");
    assert_eq!(got, LEN, "echo came back short");
}

async fn ping(s: &mut tokio::net::TcpStream, i: u32) {
    let msg = format!("ping {i}\n");
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_backends_without_dropping_sessions_and_rejects_bad_config() {
    let a = echo_backend("a", true).await;
    let b = echo_backend("b", true).await;
    let c = echo_backend("c", true).await;
    let port = free_port();
    let cfg = |bs: &[&Backend]| {
        tcplb_section(
            None,
            &[listener_yaml(
                "api",
                local(port),
                bs,
                "roundrobin",
                "{ type: tcp, interval: 100ms }",
                "",
            )],
        )
    };
    let lbd = Lbd::start(&cfg(&[&a])).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (who, mut long) = whoami_tcp(addr, None).await.unwrap();
    assert_eq!(who, "a");
    ping(&mut long, 0).await;

    // Good reload: a out, b and c in. The long session to a keeps going.
    lbd.reload(&cfg(&[&b, &c]));
    eventually(Duration::from_secs(5), "reload applied", || async {
        lbd.status().await["config"]["reloads_ok"] == 1
    })
    .await;
    for i in 1..5 {
        ping(&mut long, i).await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(whoami_tcp(addr, None).await.unwrap().0);
    }
    assert!(seen.iter().all(|w| w == "b" || w == "c"), "{seen:?}");

    // Bad reload: nothing changes, status says why.
    std::fs::write(
        &lbd.config,
        "tcplb:\n  listeners:\n    - name: api\n      bind: nonsense\n",
    )
    .unwrap();
    lbd.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(5), "reload rejected", || async {
        lbd.status().await["config"]["reloads_failed"] == 1
    })
    .await;
    let st = lbd.status().await;
    let why = st["config"]["last_reload_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        why.contains("lbd.yaml:4:13: bind: invalid \"nonsense\""),
        "{why}"
    );
    ping(&mut long, 99).await;
    assert!(["b", "c"].contains(&whoami_tcp(addr, None).await.unwrap().0.as_str()));
    assert_eq!(st["tcplb"][0]["backends"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sessions_policy_and_graceful_sigterm() {
    let a = echo_backend("a", true).await;
    let port = free_port();
    let mut lbd = Lbd::start(&tcplb_section(
        Some("2s"),
        &[listener_yaml(
            "p",
            local(port),
            &[&a],
            "roundrobin",
            "{ type: tcp, interval: 100ms, rise: 1, fall: 1 }",
            "      on_backend_down: shutdown_sessions\n",
        )],
    ))
    .await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, mut s) = whoami_tcp(addr, None).await.unwrap();
    // The backend stops accepting (checks fail) but keeps our session open:
    // lbd must cut it because of the policy.
    a.stop_listening();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("session not cut");
    assert!(matches!(r, Ok(0) | Err(_)));

    // SIGTERM: exits 0 within the grace period even with a session open.
    let b = echo_backend("b", true).await;
    lbd.reload(&tcplb_section(
        Some("1s"),
        &[listener_yaml(
            "p",
            local(port),
            &[&b],
            "roundrobin",
            "{ type: tcp, interval: 100ms }",
            "",
        )],
    ));
    eventually(Duration::from_secs(5), "reload", || async {
        lbd.status().await["config"]["reloads_ok"] == 1
    })
    .await;
    let (who, _held) = whoami_tcp(addr, None).await.unwrap();
    assert_eq!(who, "b");
    lbd.signal(nix::sys::signal::Signal::SIGTERM);
    let st = lbd.wait_exit(Duration::from_secs(8)).expect("did not exit");
    assert!(st.success(), "exit {st:?}\n{}", lbd.logs());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_with_client_certificate() {
    let pki = Pki::new();
    let m = https_backend("m", &pki, true).await;
    let port1 = free_port();
    let port2 = free_port();
    let with_cert = format!(
        "{{ type: https, interval: 100ms, rise: 1, fall: 1, tls: {{ ca_file: {}, server_name: kubernetes, cert_file: {}, key_file: {} }} }}",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let lbd = Lbd::start(&tcplb_section(
        None,
        &[
            listener_yaml("mtls", local(port1), &[&m], "roundrobin", &with_cert, ""),
            listener_yaml(
                "nocert",
                local(port2),
                &[&m],
                "roundrobin",
                &https_health(&pki, "100ms"),
                "",
            ),
        ],
    ))
    .await;
    eventually(Duration::from_secs(3), "checks done", || async {
        let st = lbd.status().await;
        st["tcplb"][1]["backends"][0]["last_error"].is_string()
            && st["tcplb"][0]["backends"][0]["last_check_latency_ms"].is_number()
    })
    .await;
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["backends"][0]["healthy"], true, "{st}");
    assert_eq!(st["tcplb"][1]["backends"][0]["healthy"], false, "{st}");
    let err = st["tcplb"][1]["backends"][0]["last_error"]
        .as_str()
        .unwrap();
    assert!(err.contains("TLS") || err.contains("HTTP"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_an_unknown_ca_and_verify_rejects_it() {
    let pki = Pki::new();
    let other = Pki::new();
    let b = https_backend("b", &pki, false).await;
    let (p1, p2) = (free_port(), free_port());
    let lbd = Lbd::start(&tcplb_section(None, &[listener_yaml("skip", local(p1), &[&b], "roundrobin", "{ type: https, interval: 100ms, rise: 1, fall: 1, tls: { insecure_skip_verify: true } }", ""),
        listener_yaml("wrongca", local(p2), &[&b], "roundrobin", &https_health(&other, "100ms"), "")]))
    .await;
    eventually(Duration::from_secs(3), "both checked", || async {
        let st = lbd.status().await;
        st["tcplb"][0]["backends"][0]["last_check_latency_ms"].is_number()
            && st["tcplb"][1]["backends"][0]["last_check_latency_ms"].is_number()
    })
    .await;
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["backends"][0]["healthy"], true, "{st}");
    assert_eq!(st["tcplb"][1]["backends"][0]["healthy"], false, "{st}");
    assert!(st["tcplb"][1]["backends"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("TLS"));
}

/// `name{thread="N"} value` lines of the admin socket's /metrics, by thread.
async fn per_data_thread(lbd: &Lbd, name: &str) -> BTreeMap<String, u64> {
    let (code, body) = lbd::status::client::request(&lbd.socket, http::Method::GET, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(code, 200);
    let prefix = format!("{name}{{thread=\"");
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (thread, value) = rest.split_once("\"} ")?;
            Some((thread.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The data path runs one event loop per thread (`LBD_DATA_THREADS`, one
/// per CPU by default): new sessions go to the thread with the fewest,
/// stay counted on it while they live, and each one carries its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_evenly_over_the_data_threads() {
    let b = echo_backend("b1", false).await;
    let addr = local(free_port());
    let yaml = listener_yaml(
        "echo",
        addr,
        &[&b],
        "roundrobin",
        "{ type: tcp, interval: 100ms, rise: 1, fall: 2 }",
        "",
    );
    let lbd = Lbd::start_in(
        &[],
        &[],
        &[("LBD_DATA_THREADS", "3")],
        &tcplb_section(None, &[yaml]),
    )
    .await;
    let b_addr = b.addr.to_string();
    eventually(Duration::from_secs(5), "backend up", || async {
        backend_of(&lbd.status().await, 0, &b_addr)["healthy"] == true
    })
    .await;

    // The worker has its three data threads, named for `top -H`.
    let worker = support::cluster::worker_of(lbd.child.id()).expect("worker process");
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{worker}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("lbd-data-"))
        .collect();
    names.sort();
    assert_eq!(names, ["lbd-data-0", "lbd-data-1", "lbd-data-2"]);

    // Connections one after another (each answered before the next is
    // made): whichever thread accepts, each session goes to the thread
    // with the fewest, so they spread evenly.
    let mut open = Vec::new();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        ping(&mut s, i).await;
        open.push(s);
    }
    let active = per_data_thread(&lbd, "lbd_data_thread_connections_active").await;
    assert_eq!(active.len(), 3, "{active:?}");
    assert!(
        active.values().all(|n| *n == 10),
        "30 sessions over three threads: {active:?}"
    );
    let accepted = per_data_thread(&lbd, "lbd_data_thread_connections_total").await;
    assert_eq!(accepted, active, "all sessions are still open");
    for (i, s) in open.iter_mut().enumerate() {
        ping(s, 10_000 + i as u32).await;
    }
    let n = open.len() as u64;
    drop(open);
    eventually(Duration::from_secs(5), "every session ended", || async {
        per_data_thread(&lbd, "lbd_data_thread_connections_active")
            .await
            .values()
            .all(|n| *n == 0)
    })
    .await;
    let total = per_data_thread(&lbd, "lbd_data_thread_connections_total").await;
    assert_eq!(total.values().sum::<u64>(), n, "{total:?}");
}
