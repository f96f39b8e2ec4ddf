//! The balancer as an operator runs it: the real `lbd` binary on loopback
//! in front of real TLS and TCP backends.
//!
//! - the session log (`session_log: true`, `--log-format json`): one JSON
//!   line per connection whose client, backend, byte counts and
//!   termination are what the test sent and received;
//! - `lbd backend drain|enable`: a drained backend keeps its established
//!   sessions and gets no new one, at once, across a reload of an
//!   unchanged listener; enable brings it back;
//! - bootstrap (issue 15.1): a check whose CA does not exist yet is a
//!   warning for `lbd check`, a TLS-handshake check for `lbd run`, and
//!   verified HTTPS once the CA appears by rename, without a restart;
//!   the same for a client certificate and key that do not exist yet
//!   (the CA does): a handshake verified with the CA, then mTLS;
//! - `/readyz`: 503 until every listener's first health round is done,
//!   200 after; at once without listeners.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use support::backends::*;
use support::config::{listener_yaml, tcplb_section};
use support::lbd::*;
use support::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The session log's JSON lines in lbd's log so far.
fn session_lines(lbd: &Lbd) -> Vec<serde_json::Value> {
    lbd.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "lbd::session")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_log_fields_match_what_was_sent() {
    let b = echo_backend("b1", true).await;
    let addr = local(free_port());
    let yaml = listener_yaml(
        "api",
        addr,
        &[&b],
        "roundrobin",
        "{ type: tcp, interval: 1h }",
        "      session_log: true\n",
    );
    let lbd = Lbd::start_with(&["--log-format", "json"], &tcplb_section(None, &[yaml])).await;
    eventually(Duration::from_secs(5), "b1 checked", || async {
        lbd.status().await["tcplb"][0]["backends"][0]["last_check_latency_ms"].is_number()
    })
    .await;

    let (greeting, mut s) = whoami_tcp(addr, None).await.unwrap();
    assert_eq!(greeting, "b1");
    let client = s.local_addr().unwrap();
    let sent: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&sent).await.unwrap();
    s.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, sent);
    drop(s);

    eventually(Duration::from_secs(5), "a session line", || async {
        !session_lines(&lbd).is_empty()
    })
    .await;
    let lines = session_lines(&lbd);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f = &lines[0]["fields"];
    assert_eq!(f["message"], "session", "{f}");
    assert_eq!(f["listener"], "api", "{f}");
    assert_eq!(f["client"], client.to_string(), "{f}");
    assert_eq!(f["backend"], b.addr.to_string(), "{f}");
    assert_eq!(f["bytes_to_backend"], sent.len() as u64, "{f}");
    // The greeting line ("b1\n") and the echo.
    assert_eq!(f["bytes_to_client"], sent.len() as u64 + 3, "{f}");
    assert_eq!(f["termination"], "client_closed", "{f}");
    assert_eq!(f["attempts"], 1, "{f}");
    assert_eq!(f["hedged"], false, "{f}");
    let ms = f["duration_ms"].as_f64().unwrap();
    assert!(ms > 0.0 && ms < 5000.0, "{f}");
    assert!(f["connect_ms"].as_f64().unwrap() <= ms, "{f}");

    // No backend left: the refused client has its line too.
    b.stop();
    eventually(Duration::from_secs(5), "b1 refusing", || async {
        tokio::net::TcpStream::connect(b.addr).await.is_err()
    })
    .await;
    let _ = whoami_tcp(addr, None).await;
    eventually(
        Duration::from_secs(5),
        "the refused session's line",
        || async { session_lines(&lbd).len() == 2 },
    )
    .await;
    let f = &session_lines(&lbd)[1]["fields"];
    assert!(
        f["termination"] == "connect_failed" || f["termination"] == "no_backend",
        "{f}"
    );
    assert_eq!(f["bytes_to_client"], 0, "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_log_is_off_by_default() {
    let b = echo_backend("b1", true).await;
    let addr = local(free_port());
    let yaml = listener_yaml("api", addr, &[&b], "roundrobin", "{ type: tcp }", "");
    let lbd = Lbd::start_with(&["--log-format", "json"], &tcplb_section(None, &[yaml])).await;
    for _ in 0..3 {
        let (who, s) = whoami_tcp(addr, None).await.unwrap();
        assert_eq!(who, "b1");
        drop(s);
    }
    eventually(Duration::from_secs(5), "three sessions counted", || async {
        lbd.status().await["tcplb"][0]["total_connections"] == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(session_lines(&lbd).is_empty(), "{}", lbd.logs());
}

/// `lbd backend ACTION api BACKEND --socket ...`: (exit code, stdout+stderr).
fn backend_cli(lbd: &Lbd, action: &str, backend: &str) -> (i32, String) {
    let out = Command::new(lbd_bin())
        .args(["backend", action, "api", backend, "--socket"])
        .arg(&lbd.socket)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn ping(s: &mut tokio::net::TcpStream, i: u32) {
    let msg = format!("ping {i}\n");
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(back, msg.as_bytes());
}

/// Who answers `n` new connections.
async fn who_answers(addr: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(whoami_tcp(addr, None).await.unwrap().0);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_established_sessions_stops_new_ones_and_enable_restores() {
    let (a, b) = (echo_backend("a", true).await, echo_backend("b", true).await);
    let addr = local(free_port());
    let body = |extra: &str| {
        tcplb_section(
            None,
            &[listener_yaml(
                "api",
                addr,
                &[&a, &b],
                "roundrobin",
                "{ type: tcp, interval: 200ms }",
                extra,
            )],
        )
    };
    let lbd = Lbd::start(&body("")).await;
    assert_eq!(who_answers(addr, 4).await.len(), 2);
    // An established session to a.
    let mut kept = loop {
        let (who, s) = whoami_tcp(addr, None).await.unwrap();
        if who == "a" {
            break s;
        }
    };
    ping(&mut kept, 0).await;

    let (code, out) = backend_cli(&lbd, "drain", &a.addr.to_string());
    assert_eq!(code, 0, "{out}");
    // At once: the very next connections.
    assert_eq!(
        who_answers(addr, 6).await,
        BTreeSet::from(["b".to_string()])
    );
    ping(&mut kept, 1).await;
    let st = lbd.status().await;
    let sa = backend_of(&st, 0, &a.addr.to_string());
    assert_eq!(sa["drained"], true, "{sa}");
    assert_eq!(sa["healthy"], true, "drained is not down: {sa}");
    assert_eq!(sa["active_connections"], 1, "{sa}");

    // A reload that leaves the listener as it is keeps the drain.
    lbd.reload(&body("      session_log: false\n"));
    eventually(Duration::from_secs(5), "reload applied", || async {
        lbd.status().await["config"]["reloads_ok"] == 1
    })
    .await;
    assert_eq!(
        who_answers(addr, 4).await,
        BTreeSet::from(["b".to_string()])
    );
    assert_eq!(
        backend_of(&lbd.status().await, 0, &a.addr.to_string())["drained"],
        true
    );
    ping(&mut kept, 2).await;

    // Unknown names are refused with a non-zero exit.
    let (code, out) = backend_cli(&lbd, "drain", "127.0.0.1:1");
    assert_ne!(code, 0, "{out}");

    let (code, out) = backend_cli(&lbd, "enable", &a.addr.to_string());
    assert_eq!(code, 0, "{out}");
    assert_eq!(who_answers(addr, 4).await.len(), 2, "a back in rotation");
    assert_eq!(
        backend_of(&lbd.status().await, 0, &a.addr.to_string())["drained"],
        false
    );
    ping(&mut kept, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_check_waits_for_its_ca_then_verifies_without_a_restart() {
    let pki = Pki::new();
    let b1 = https_backend("b1", &pki, false).await;
    let b2 = https_backend("b2", &pki, false).await;
    // b2's /healthz fails: only a real HTTPS check can tell.
    b2.healthy.store(false, Relaxed);
    let pending = tempfile::tempdir().unwrap();
    let ca = pending.path().join("ca.crt");
    let addr = local(free_port());
    let health = format!(
        "{{ type: https, path: /healthz, interval: 100ms, timeout: 500ms, rise: 1, fall: 1, tls: {{ ca_file: {}, server_name: kubernetes }} }}",
        ca.display()
    );
    let body = tcplb_section(
        None,
        &[listener_yaml(
            "api",
            addr,
            &[&b1, &b2],
            "roundrobin",
            &health,
            "",
        )],
    );

    // `lbd check`: a warning, exit 0.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lbd.yaml");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new(lbd_bin())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let warning = text
        .lines()
        .find(|l| l.contains(&ca.display().to_string()))
        .unwrap_or_default();
    assert!(
        warning.starts_with("warning: ") && warning.contains("does not exist yet"),
        "a warning at the key, not an error: {text}"
    );

    let mut lbd = Lbd::start(&body).await;
    let waiting = format!("tls-handshake (waiting for {})", ca.display());
    eventually(Duration::from_secs(5), "both backends checked", || async {
        let st = lbd.status().await;
        st["tcplb"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["last_check_latency_ms"].is_number())
    })
    .await;
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["check"], waiting.as_str(), "{st}");
    // The handshake alone passes b2; traffic is balanced over both.
    assert_eq!(
        backend_of(&st, 0, &b2.addr.to_string())["healthy"],
        true,
        "{st}"
    );
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let (code, who) = https_get(&pki, addr, "/whoami").await.unwrap();
        assert_eq!(code, 200);
        seen.insert(who);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The CA appears as an installer writes it: a temp file renamed.
    let tmp = pending.path().join(".ca.crt.tmp");
    std::fs::copy(&pki.ca, &tmp).unwrap();
    std::fs::rename(&tmp, &ca).unwrap();
    eventually(Duration::from_secs(5), "checks verified", || async {
        lbd.status().await["tcplb"][0]["check"] == "https verified"
    })
    .await;
    // Now /healthz counts: b2 goes down on its HTTP 500.
    let b2addr = b2.addr.to_string();
    eventually(Duration::from_secs(5), "b2 down by its healthz", || async {
        backend_of(&lbd.status().await, 0, &b2addr)["healthy"] == false
    })
    .await;
    let sb = backend_of(&lbd.status().await, 0, &b2addr);
    assert_eq!(sb["last_error"], "HTTP 500, expected 200", "{sb}");
    assert_eq!(
        backend_of(&lbd.status().await, 0, &b1.addr.to_string())["healthy"],
        true
    );
    // The same process all along.
    assert!(lbd.child.try_wait().unwrap().is_none(), "lbd exited");
}

/// `/readyz` on the admin socket: (HTTP status, body).
async fn readyz(lbd: &Lbd) -> (u16, String) {
    let (code, body) = lbd::status::client::request(&lbd.socket, http::Method::GET, "/readyz")
        .await
        .expect("/readyz answers");
    (code.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP backend whose answers wait for the test: each connection reads
/// the request, counts it in `held`, then holds it until `open` is true,
/// then answers 200.
struct GatedBackend {
    addr: SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn gated_http_backend() -> GatedBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, gate) = tokio::sync::watch::channel(false);
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = held.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut gate = gate.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Relaxed);
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    GatedBackend { addr, open, held }
}

/// `/readyz` (issue 15.6): 503 "starting" while a listener's first health
/// round is still running (its one backend's first check waits, well
/// inside its timeout), 200 once that check has answered; without
/// listeners there is no round to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_first_health_round() {
    let backend = gated_http_backend().await;
    let addr = local(free_port());
    let body = tcplb_section(
        None,
        &[listener_yaml(
            "api",
            addr,
            &[backend.addr],
            "roundrobin",
            "{ type: http, path: /healthz, interval: 1h, timeout: 60s, rise: 1, fall: 1 }",
            "",
        )],
    );
    let lbd = Lbd::start(&body).await;
    // The first check has reached the backend and its request is held.
    eventually(Duration::from_secs(5), "the first check held", || async {
        backend.held.load(Relaxed) > 0
    })
    .await;
    assert_eq!(readyz(&lbd).await, (503, "starting\n".to_string()));
    // Still not ready a moment later: nothing but the round decides.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readyz(&lbd).await, (503, "starting\n".to_string()));
    let st = lbd.status().await;
    assert!(
        st["tcplb"][0]["backends"][0]["last_check_latency_ms"].is_null(),
        "{st}"
    );

    backend.open.send_replace(true);
    eventually(Duration::from_secs(5), "/readyz 200", || async {
        readyz(&lbd).await.0 == 200
    })
    .await;
    assert_eq!(readyz(&lbd).await, (200, "ok\n".to_string()));
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["backends"][0]["healthy"], true, "{st}");

    // No listeners (an admin section only): ready as soon as it serves.
    let bare = Lbd::start("").await;
    eventually(Duration::from_secs(2), "/readyz 200 at once", || async {
        readyz(&bare).await == (200, "ok\n".to_string())
    })
    .await;
}

/// Bootstrap with the CA in place but the client certificate and key not
/// yet (kubeadm writes them at another step): like a missing CA, a TLS
/// handshake (here verified with the CA, no client certificate), then,
/// once both appear, HTTPS with the client certificate against a backend
/// that requires one, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_check_waits_for_its_client_certificate_then_uses_it() {
    let pki = Pki::new();
    let m = https_backend("m", &pki, true).await;
    let pending = tempfile::tempdir().unwrap();
    let (crt, key) = (
        pending.path().join("client.crt"),
        pending.path().join("client.key"),
    );
    let addr = local(free_port());
    let health = format!(
        "{{ type: https, path: /healthz, interval: 100ms, timeout: 500ms, rise: 1, fall: 1, tls: {{ ca_file: {}, server_name: kubernetes, cert_file: {}, key_file: {} }} }}",
        pki.ca.display(),
        crt.display(),
        key.display()
    );
    let body = tcplb_section(
        None,
        &[listener_yaml("api", addr, &[&m], "roundrobin", &health, "")],
    );
    let mut lbd = Lbd::start(&body).await;
    let waiting = format!(
        "tls-handshake (waiting for {}, {})",
        crt.display(),
        key.display()
    );
    eventually(Duration::from_secs(5), "m checked", || async {
        lbd.status().await["tcplb"][0]["backends"][0]["last_check_latency_ms"].is_number()
    })
    .await;
    let st = lbd.status().await;
    assert_eq!(st["tcplb"][0]["check"], waiting.as_str(), "{st}");
    // The handshake (server verified with the CA) is all it asks.
    assert_eq!(st["tcplb"][0]["backends"][0]["healthy"], true, "{st}");

    // The files appear, the key first and the certificate by rename.
    std::fs::copy(&pki.client_key, &key).unwrap();
    let tmp = pending.path().join(".client.crt.tmp");
    std::fs::copy(&pki.client_cert, &tmp).unwrap();
    std::fs::rename(&tmp, &crt).unwrap();
    eventually(Duration::from_secs(5), "checks verified", || async {
        lbd.status().await["tcplb"][0]["check"] == "https verified"
    })
    .await;
    // HTTP now goes through: m's failing /healthz is seen, which only a
    // request with the client certificate m requires can see.
    m.healthy.store(false, Relaxed);
    let maddr = m.addr.to_string();
    eventually(Duration::from_secs(5), "m down by its healthz", || async {
        backend_of(&lbd.status().await, 0, &maddr)["healthy"] == false
    })
    .await;
    let sb = backend_of(&lbd.status().await, 0, &maddr);
    assert_eq!(sb["last_error"], "HTTP 500, expected 200", "{sb}");
    m.healthy.store(true, Relaxed);
    eventually(Duration::from_secs(5), "m up again", || async {
        backend_of(&lbd.status().await, 0, &maddr)["healthy"] == true
    })
    .await;
    assert!(lbd.child.try_wait().unwrap().is_none(), "lbd exited");
}
