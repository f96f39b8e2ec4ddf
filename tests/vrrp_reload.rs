//! Reload in place with traffic through the VIP (issue 14): the master
//! reloaded with each kind of in-place change while a client in a third
//! namespace sends requests through the VIP to the master's tcplb
//! listener: no failed request, no priority-0 advert on the wire, the VIP
//! never moves. `lbd run` nodes in network namespaces (root; skipped
//! otherwise).

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::cluster::{Cluster, Scenario};
use support::netns::{in_ns, require_root};
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

/// Requests (connect, "ping", its echo) through `vip:8443` from `ns`
/// every 10 ms until stopped: (ok, failed, the last failure).
struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_error: Arc<std::sync::Mutex<String>>,
}

impl Client {
    fn start(ns: &str, vip: IpAddr) -> Client {
        let c = Client {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            last_error: Arc::new(std::sync::Mutex::new(String::new())),
        };
        let (stop, ok, failed, last) = (
            c.stop.clone(),
            c.ok.clone(),
            c.failed.clone(),
            c.last_error.clone(),
        );
        let ns = ns.to_string();
        std::thread::spawn(move || {
            in_ns(&ns, move || {
                let to = SocketAddr::new(vip, 8443);
                while !stop.load(Ordering::Relaxed) {
                    let r = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(b"ping")?;
                        let mut buf = [0u8; 4];
                        s.read_exact(&mut buf)?;
                        if &buf != b"ping" {
                            return Err(std::io::Error::other("bad echo"));
                        }
                        Ok(())
                    })();
                    match r {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            *last.lock().unwrap() = e.to_string();
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        });
        c
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn reload_in_place_keeps_traffic_and_sends_no_priority_zero() {
    if !require_root("reload_in_place_keeps_traffic_and_sends_no_priority_zero") {
        return;
    }
    let net = 65;
    let sc = Scenario {
        tcplb: "tcplb:\n  listeners:\n    - name: api\n      bind: 0.0.0.0:8443\n      backends: [127.0.0.1:7001]\n      health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }\n".to_string(),
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
    let client = Client::start(&obs, c.vip());
    let warm = support::netns::wait_for(Duration::from_secs(5), || client.counts().0 >= 10);
    assert!(
        warm.is_some(),
        "no request got through: {}\n{}",
        client.last_error.lock().unwrap(),
        c.logs()
    );
    w.take_max_dual();
    w.take_max_none();
    let n1: IpAddr = format!("10.213.{net}.1").parse().unwrap();
    let since = SystemTime::now();
    let (ok0, failed0) = client.counts();
    type Edit = Box<dyn Fn(String) -> String>;
    let changes: [(&str, Edit); 5] = [
        (
            "priority",
            Box::new(|s: String| s.replace("priority: 150", "priority: 140")),
        ),
        (
            "advert_interval",
            Box::new(|s: String| {
                s.replace("priority: 150", "priority: 140")
                    .replace("advert_interval: 100ms", "advert_interval: 200ms")
            }),
        ),
        (
            "a second VIP",
            Box::new(move |s: String| {
                s.replace("priority: 150", "priority: 140")
                    .replace("advert_interval: 100ms", "advert_interval: 200ms")
                    .replace(
                        &format!("[10.213.{net}.100/24]"),
                        &format!("[10.213.{net}.100/24, 10.213.{net}.101/24]"),
                    )
            }),
        ),
        (
            "preempt off and a notify script",
            Box::new(|s: String| {
                s.replace("priority: 150", "priority: 140")
                    .replace("advert_interval: 100ms", "advert_interval: 200ms")
                    .replace("preempt: true", "preempt: false\n      notify: \"true\"")
            }),
        ),
        ("back to the start", Box::new(|s: String| s)),
    ];
    for (what, edit) in changes {
        let before = std::fs::read_to_string(c.log(0)).unwrap_or_default().len();
        c.reload(0, edit);
        // Applied: the log says so (reload done), then traffic for a while.
        let done = support::netns::wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(c.log(0)).unwrap_or_default()[before..]
                .contains("config reloaded")
        });
        assert!(done.is_some(), "{what}: no reload logged\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(800));
        let (ok, failed) = client.counts();
        eprintln!(
            "[net {net}] reload ({what}): {} requests, {} failed",
            ok - ok0,
            failed - failed0
        );
        assert_eq!(
            failed,
            failed0,
            "{what}: failed requests (last: {})\n{}",
            client.last_error.lock().unwrap(),
            c.logs()
        );
        assert_eq!(w.holders(), vec![0], "{what}: the VIP moved\n{}", c.logs());
        // Applied, not just accepted.
        let st = c.instance(0);
        let want = if what == "back to the start" {
            150
        } else {
            140
        };
        assert_eq!(st["effective_priority"], want, "{what}: {st}");
        let second = c.lab.has_addr(&c.ns[0], &format!("10.213.{net}.101"));
        let want = what == "a second VIP";
        assert_eq!(
            second,
            want,
            "{what}: second VIP\n{}",
            c.lab.addrs(&c.ns[0])
        );
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
