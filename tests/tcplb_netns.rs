//! The balancer in network namespaces (root; skipped otherwise) against
//! real TLS backends: lbd in one namespace, each backend in its own, on a
//! bridge (10.216.0.0/24, inside the lab only).
//!
//! Dead backends skipped at once (issue 13):
//! - a backend whose packets are dropped (an nftables rule in its own
//!   namespace: the SYN is never answered) costs no client an error, nor
//!   more than the hedge delay: a second backend is tried beside it;
//! - a refused connect marks its backend down at once (long before `fall`
//!   failed checks could), the client is served by another, and `rise`
//!   checks bring it back;
//! - a backend that resets connections before any data is marked down and
//!   the client, who saw nothing yet, gets another backend;
//! - a VRRP master (Debian's keepalived) whose node goes dark (its adverts
//!   dropped, no priority 0) has the backend on its address marked down
//!   (peer_gone) by lbd, its backup, with no check and no traffic.
//!
//! Bootstrap (issue 15.1): lbd started before the cluster CA exists holds
//! the VIP and balances over TLS-handshake checks; the CA written, the
//! checks become verified HTTPS without a restart.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::backends::*;
use support::config::tcplb_section;
use support::lbd::{eventually, NsLbd};

use support::netns::{require_root, Lab};
use support::nsrun::NsRuntime;
use support::pki::Pki;

/// lbd's namespace and three backend namespaces, each with its runtime.
struct Stage {
    lab: Lab,
    lb: NsRuntime,
    ns: Vec<String>,
    rt: Vec<NsRuntime>,
    pki: Arc<Pki>,
}

fn addr(i: usize) -> SocketAddr {
    format!("10.216.0.{i}:6443").parse().unwrap()
}

const LISTEN: &str = "127.0.0.1:8443";

impl Stage {
    fn new() -> Stage {
        let mut lab = Lab::new("tcplb");
        let lb = lab.add_ns("lb");
        lab.attach(&lb, "eth0", &["10.216.0.10/24"]);
        let mut ns = Vec::new();
        for i in 1..=3 {
            let n = lab.add_ns(&format!("b{i}"));
            lab.attach(&n, "eth0", &[&format!("10.216.0.{i}/24")]);
            ns.push(n);
        }
        let rt = ns.iter().map(|n| NsRuntime::start(n)).collect();
        Stage {
            lb: NsRuntime::start(&lb),
            lab,
            ns,
            rt,
            pki: Arc::new(Pki::new()),
        }
    }

    /// An HTTPS backend `b{i}` on 10.216.0.i:6443 in its namespace.
    async fn https(&self, i: usize) -> Backend {
        let pki = self.pki.clone();
        self.rt[i - 1]
            .run(async move { https_backend_at(&format!("b{i}"), &pki, false, addr(i)).await })
            .await
    }

    /// `GET /whoami` through lbd, from lbd's namespace: (who, how long).
    async fn whoami(&self) -> (Result<String, String>, Duration) {
        self.whoami_via(&self.lb, LISTEN.parse().unwrap()).await
    }

    /// `GET /whoami` to `target`, from `rt`'s namespace.
    async fn whoami_via(
        &self,
        rt: &NsRuntime,
        target: SocketAddr,
    ) -> (Result<String, String>, Duration) {
        let pki = self.pki.clone();
        rt.run(async move {
            let start = Instant::now();
            let r = https_get(&pki, target, "/whoami")
                .await
                .and_then(|(st, who)| {
                    if st == 200 {
                        Ok(who)
                    } else {
                        Err(format!("HTTP {st}"))
                    }
                });
            (r, start.elapsed())
        })
        .await
    }

    fn listener(&self, health: &str, extra: &str) -> String {
        self.listener_on(LISTEN, health, extra)
    }

    fn listener_on(&self, bind: &str, health: &str, extra: &str) -> String {
        let backends: Vec<String> = (1..=3).map(|i| addr(i).to_string()).collect();
        tcplb_section(
            None,
            &[format!(
                "    - name: api\n      bind: {bind}\n      backends: [{}]\n      health: {health}\n      retries: 2\n{extra}",
                backends.join(", ")
            )],
        )
    }

    fn https_health(&self, timing: &str) -> String {
        self.https_health_with_ca(timing, &self.pki.ca)
    }

    fn https_health_with_ca(&self, timing: &str, ca: &std::path::Path) -> String {
        format!(
            "{{ type: https, {timing}, tls: {{ ca_file: {}, server_name: kubernetes }} }}",
            ca.display()
        )
    }
}

/// Runs `nft` inside namespace `ns`.
fn nft_in(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns, "nft"];
    full.extend(args);
    support::netns::run(&full);
}

/// In `ns`, table `inet lbdtest` drops every packet to :6443: the SYNs of
/// a node that is powered off or cut off, never answered (not refused).
fn drop_api_port(ns: &str) {
    nft_in(ns, &["add", "table", "inet", "lbdtest"]);
    let chain = "{ type filter hook input priority 0; }";
    nft_in(ns, &["add", "chain", "inet", "lbdtest", "in", chain]);
    nft_in(
        ns,
        &[
            "add", "rule", "inet", "lbdtest", "in", "tcp", "dport", "6443", "drop",
        ],
    );
}

/// The stage with an HTTPS backend in each backend namespace; None (the
/// test skips) when not root.
async fn https_stage(test: &str) -> Option<(Stage, [Backend; 3])> {
    if !require_root(test) {
        return None;
    }
    let s = Stage::new();
    let backends = [s.https(1).await, s.https(2).await, s.https(3).await];
    Some((s, backends))
}

/// `vrrp:` with lbd's one instance of the VIP 10.216.0.100 on eth0.
fn vip_instance(priority: u8) -> String {
    support::config::vrrp_section(&[support::config::VrrpInstanceYaml::new(
        priority,
        "10.216.0.100/24",
    )])
}

/// Waits until backend `i`'s port refuses: `Backend::stop` lets its
/// accept task end on the namespace's own thread, a moment later.
async fn refusing(s: &Stage, i: usize) {
    let refused = s.rt[i - 1]
        .run(async move {
            for _ in 0..200 {
                if let Err(e) = tokio::net::TcpStream::connect(addr(i)).await {
                    return e.kind() == std::io::ErrorKind::ConnectionRefused;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            false
        })
        .await;
    assert!(refused, "b{i} still accepting after stop");
}

/// Waits until every backend has had its first check and is up.
async fn all_checked_up(lbd: &NsLbd) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = lbd.status().await;
        let up = st["tcplb"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["healthy"] == true && b["last_check_latency_ms"].is_number());
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "first checks not all up: {st}\n{}",
            lbd.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_packets_are_dropped_is_skipped_within_the_hedge_bound() {
    let Some((mut s, _backends)) =
        https_stage("a_backend_whose_packets_are_dropped_is_skipped_within_the_hedge_bound").await
    else {
        return;
    };
    // Checks once an hour: after the first round only traffic can tell.
    let body = s.listener(
        &s.https_health("interval: 1h, timeout: 500ms, rise: 1, fall: 1"),
        "      connect_timeout: 5s\n      hedge: { min_delay: 20ms, max_delay: 150ms }\n",
    );
    let lb = s.lb.ns.clone();
    let lbd = NsLbd::start(&mut s.lab, &lb, &body).await;
    all_checked_up(&lbd).await;
    // Connect times seen, so the hedge delay follows them.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (who, _) = s.whoami().await;
        seen.insert(who.expect("before the drop"));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // b2 drops everything to :6443: SYNs go unanswered (not refused).
    drop_api_port(&s.ns[1]);
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let (who, took) = s.whoami().await;
        let who = who.unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", lbd.logs()));
        assert_ne!(who, "b2", "an answer through a dropped backend");
        slowest = slowest.max(took);
    }
    let st = lbd.status().await;
    let l = &st["tcplb"][0];
    let delay = l["hedge_delay_ms"].as_f64().unwrap();
    println!("slowest request {slowest:?}, hedge delay now {delay} ms, status {l}");
    assert!(l["hedged_connects"].as_u64().unwrap() >= 1, "{l}");
    assert!(l["hedge_wins"].as_u64().unwrap() >= 1, "{l}");
    assert!((20.0..=150.0).contains(&delay), "{delay}");
    // Without the hedge the SYN is retried after 1 s and the connect gives
    // up after 5 s; with it, one hedge delay (at most 150 ms) and a
    // request on the other backend.
    assert!(
        slowest < Duration::from_millis(900),
        "slowest request {slowest:?}"
    );
    let b2 = lbd.backend(0, &addr(2).to_string()).await;
    assert_eq!(b2["healthy"], false, "{b2}");
    assert_eq!(b2["down_reason"], "hedge", "{b2}");
    // Marked down once: later clients no longer pay the delay.
    assert_eq!(l["hedged_connects"], 1, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_marks_down_at_once_and_rise_brings_it_back() {
    if !require_root("a_refused_connect_marks_down_at_once_and_rise_brings_it_back") {
        return;
    }
    let mut s = Stage::new();
    let b1 = s.https(1).await;
    let _others = [s.https(2).await, s.https(3).await];
    // fall 10 x 300 ms: the checks alone take 3 s to see it.
    let body = s.listener(
        &s.https_health("interval: 300ms, timeout: 300ms, rise: 2, fall: 10"),
        "",
    );
    let lb = s.lb.ns.clone();
    let lbd = NsLbd::start(&mut s.lab, &lb, &body).await;
    all_checked_up(&lbd).await;

    b1.stop(); // refuses once its namespace's thread dropped the listener
    refusing(&s, 1).await;
    let stopped = Instant::now();
    let b1addr = addr(1).to_string();
    let mut marked = None;
    for i in 0..12 {
        let (who, _) = s.whoami().await;
        let who = who.unwrap_or_else(|e| panic!("request {i} failed: {e}\n{}", lbd.logs()));
        assert_ne!(who, "b1");
        if marked.is_none() && lbd.backend(0, &b1addr).await["healthy"] == false {
            marked = Some(stopped.elapsed());
        }
    }
    let marked = marked.expect("b1 never marked down");
    let b = lbd.backend(0, &b1addr).await;
    assert_eq!(b["down_reason"], "passive", "{b}");
    assert!(b["last_error"].as_str().unwrap().contains("refused"), "{b}");
    assert!(marked < Duration::from_secs(2), "marked after {marked:?}");

    // Back: two passing checks (rise 2) bring it into rotation again.
    let _b1 = s.https(1).await;
    let back = Instant::now();
    eventually(Duration::from_secs(5), "b1 up again", || async {
        lbd.backend(0, &b1addr).await["healthy"] == true
    })
    .await;
    let took = back.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "up after {took:?}: one check, not rise 2"
    );
    let b = lbd.backend(0, &b1addr).await;
    assert_eq!(b["down_reason"], serde_json::Value::Null, "{b}");
    let mut served = false;
    for _ in 0..6 {
        served |= s.whoami().await.0.as_deref() == Ok("b1");
    }
    assert!(served, "b1 never chosen again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_resets_before_any_data_is_marked_down_and_the_client_served() {
    if !require_root("a_backend_that_resets_before_any_data_is_marked_down_and_the_client_served") {
        return;
    }
    let mut s = Stage::new();
    let mut echo = Vec::new();
    for i in 1..=3 {
        echo.push(
            s.rt[i - 1]
                .run(async move { echo_backend_at(&format!("b{i}"), true, addr(i)).await })
                .await,
        );
    }
    // TCP checks once an hour: after the first round only traffic can tell.
    let body = s.listener("{ type: tcp, interval: 1h, rise: 1, fall: 1 }", "");
    let lb = s.lb.ns.clone();
    let lbd = NsLbd::start(&mut s.lab, &lb, &body).await;
    all_checked_up(&lbd).await;
    // b1 starts resetting every connection at once.
    echo.remove(0).stop();
    refusing(&s, 1).await;
    let _resetting = s.rt[0]
        .run(async { resetting_backend_at("b1", addr(1)).await })
        .await;
    for i in 0..9 {
        // The client speaks second (the backends greet): nothing of it has
        // gone to a backend when one resets.
        let (who, _) =
            s.lb.run(async { whoami_tcp(LISTEN.parse().unwrap(), None).await })
                .await
                .unwrap_or_else(|e| panic!("connection {i} failed: {e}\n{}", lbd.logs()));
        assert_ne!(who, "b1");
    }
    let b = lbd.backend(0, &addr(1).to_string()).await;
    assert_eq!(b["healthy"], false, "{b}");
    assert_eq!(b["down_reason"], "passive", "{b}");
    // The reset reaches lbd with the handshake (the connect fails) or
    // just after it (the first read fails): either way, no byte had moved.
    let e = b["last_error"].as_str().unwrap();
    assert!(
        e == "reset by the backend before any data" || e.contains("reset by peer"),
        "{b}"
    );
}

// Passed on branch i13-balancer; fails since the merge with i14-vrrp (the
// peer-loss watch never reports keepalived's node gone: no "VRRP peers gone
// changed" log, the backend stays healthy). Open regression, see the
// closing note of this stop: to be fixed, not deleted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vrrp_master_whose_adverts_stop_has_its_backend_marked_at_once() {
    let Some((mut s, _backends)) =
        https_stage("a_vrrp_master_whose_adverts_stop_has_its_backend_marked_at_once").await
    else {
        return;
    };
    if !support::keepalived::available() {
        eprintln!("skipped: keepalived not installed (scripts/install-deps.sh)");
        return;
    }
    // keepalived on b1's node holds the VIP (priority 200, 100 ms adverts);
    // lbd is its backup (priority 100).
    let dir = tempfile::tempdir().unwrap();
    let ka = support::keepalived::KaInstance {
        interface: "eth0",
        vrid: 51,
        version: 3,
        priority: 200,
        advert_int: "0.1",
        vips: &["10.216.0.100/24"],
        auth_pass: None,
        nopreempt: false,
        unicast: None,
    };
    let b1ns = s.ns[0].clone();
    let (_ka, ka_log) = support::keepalived::start(&mut s.lab, &b1ns, dir.path(), "ka", &ka);
    // Checks once an hour and no traffic: only the VRRP signal can tell.
    let vrrp = vip_instance(100);
    let body = format!(
        "{vrrp}{}",
        s.listener(
            &s.https_health("interval: 1h, timeout: 500ms, rise: 1, fall: 1"),
            ""
        )
    );
    let lb = s.lb.ns.clone();
    let lbd = NsLbd::start(&mut s.lab, &lb, &body).await;
    all_checked_up(&lbd).await;
    eventually(
        Duration::from_secs(10),
        "keepalived master, lbd backup",
        // BACKUP is lbd's state from its start: wait until it has heard
        // keepalived as the master, else the node can go dark before lbd
        // knows whose adverts stopped (seen: 2 runs in 5).
        || async {
            let v = &lbd.status().await["vrrp"][0];
            v["state"] == "BACKUP" && v["master"] == "10.216.0.1"
        },
    )
    .await;
    assert!(
        s.lab.has_addr(&b1ns, "10.216.0.100"),
        "keepalived does not hold the VIP: {}",
        std::fs::read_to_string(&ka_log).unwrap_or_default()
    );
    // While the master advertises, its backend stays in: over 2.5 s (more
    // than two of the driver's periodic status refreshes, whose age once
    // made a master advertising every 100 ms look silent) b1 is never
    // marked (checks once an hour: a false mark would stay).
    let b1 = addr(1).to_string();
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_millis(2500) {
        let b = lbd.backend(0, &b1).await;
        assert_eq!(
            b["healthy"],
            true,
            "b1 marked while its node advertises: {b}\n{}",
            lbd.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // b1's node goes dark: no adverts out, nothing to :6443 answered. No
    // priority-0 advert (that would be a node leaving on purpose).
    drop_api_port(&b1ns);
    let out = "{ type filter hook output priority 0; }";
    nft_in(&b1ns, &["add", "chain", "inet", "lbdtest", "out", out]);
    nft_in(
        &b1ns,
        &[
            "add", "rule", "inet", "lbdtest", "out", "ip", "protocol", "vrrp", "drop",
        ],
    );
    let dark = Instant::now();
    let marked = tokio::time::timeout(Duration::from_secs(3), async {
        while lbd.backend(0, &b1).await["healthy"] != false {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        marked.is_ok(),
        "b1 not marked down within 3 s: {}\n{}",
        lbd.status().await,
        lbd.logs()
    );
    let took = dark.elapsed();
    let b = lbd.backend(0, &b1).await;
    assert_eq!(b["down_reason"], "peer_gone", "{b}\n{}", lbd.logs());
    // Master down interval at 100 ms adverts: about 3 x 100 ms + skew.
    assert!(took < Duration::from_millis(1500), "marked after {took:?}");
    // (As soon as the master is seen silent: lbd takes the VIP over a skew
    // time later.)
    eventually(Duration::from_secs(2), "lbd takes over the VIP", || async {
        lbd.status().await["vrrp"][0]["state"] == "MASTER"
    })
    .await;
    // Only the dead peer's backend.
    for i in [2, 3] {
        assert_eq!(lbd.backend(0, &addr(i).to_string()).await["healthy"], true);
    }
    let (who, _) = s.whoami().await;
    assert!(matches!(who.as_deref(), Ok("b2") | Ok("b3")), "{who:?}");
}

/// The pid of the worker lbd's supervisor `pid` runs (`lbd-worker`).
fn worker_of(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim() == "lbd-worker")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_before_the_ca_exists_it_holds_the_vip_balances_then_verifies() {
    let Some((mut s, backends)) =
        https_stage("started_before_the_ca_exists_it_holds_the_vip_balances_then_verifies").await
    else {
        return;
    };
    // b3's /healthz fails: only a verified HTTPS check can see it.
    backends[2]
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // A client on another node of the bridge: the VIP must be on the wire.
    let client_ns = s.lab.add_ns("client");
    s.lab.attach(&client_ns, "eth0", &["10.216.0.20/24"]);
    let client = NsRuntime::start(&client_ns);

    let pending = tempfile::tempdir().unwrap();
    let ca = pending.path().join("ca.crt");
    let vip: SocketAddr = "10.216.0.100:8443".parse().unwrap();
    let vrrp = vip_instance(100);
    let health = s.https_health_with_ca(
        "path: /healthz, interval: 200ms, timeout: 500ms, rise: 1, fall: 1",
        &ca,
    );
    let body = format!("{vrrp}{}", s.listener_on(&vip.to_string(), &health, ""));
    let lb = s.lb.ns.clone();
    let lbd = NsLbd::start(&mut s.lab, &lb, &body).await;
    all_checked_up(&lbd).await;
    eventually(Duration::from_secs(5), "lbd holds the VIP", || async {
        lbd.status().await["vrrp"][0]["state"] == "MASTER"
    })
    .await;
    assert!(s.lab.has_addr(&lb, "10.216.0.100"), "{}", s.lab.addrs(&lb));
    let st = lbd.status().await;
    let waiting = format!("tls-handshake (waiting for {})", ca.display());
    assert_eq!(st["tcplb"][0]["check"], waiting.as_str(), "{st}");
    let supervisor = s.lab.child(lbd.child).id();
    let worker = worker_of(supervisor);
    assert!(worker.is_some(), "no lbd worker under pid {supervisor}");

    // Balanced over all three (the handshake alone passes b3).
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..9 {
        let (who, _) = s.whoami_via(&client, vip).await;
        seen.insert(who.unwrap_or_else(|e| panic!("request {i}: {e}\n{}", lbd.logs())));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // kubeadm writes the CA: a temp file renamed into place.
    let tmp = pending.path().join("ca.crt.tmp");
    std::fs::copy(&s.pki.ca, &tmp).unwrap();
    std::fs::rename(&tmp, &ca).unwrap();
    eventually(Duration::from_secs(5), "checks verified", || async {
        lbd.status().await["tcplb"][0]["check"] == "https verified"
    })
    .await;
    let b3 = addr(3).to_string();
    eventually(
        Duration::from_secs(5),
        "b3 down by its /healthz",
        || async { lbd.backend(0, &b3).await["healthy"] == false },
    )
    .await;
    assert_eq!(
        lbd.backend(0, &b3).await["last_error"],
        "HTTP 500, expected 200"
    );
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..6 {
        let (who, _) = s.whoami_via(&client, vip).await;
        seen.insert(who.unwrap_or_else(|e| panic!("request {i} after: {e}\n{}", lbd.logs())));
    }
    assert_eq!(
        seen,
        ["b1".to_string(), "b2".to_string()].into(),
        "{seen:?}"
    );
    // The same processes, still master, all along: neither the supervisor
    // nor its worker was restarted to pick up the CA.
    assert!(
        s.lab.child(lbd.child).try_wait().unwrap().is_none(),
        "lbd exited"
    );
    assert_eq!(worker_of(supervisor), worker, "the worker was restarted");
    assert_eq!(lbd.status().await["vrrp"][0]["state"], "MASTER");
    assert!(s.lab.has_addr(&lb, "10.216.0.100"));
}
