//! The command line as SPEC.md fixes it: exit codes, messages, status JSON.

mod support;

use std::process::Command;

use support::backends::{echo_backend, whoami_tcp};
use support::config::{admin_section, listener_yaml, node_section, tcplb_section};
use support::lbd::{eventually, free_port, lbd_bin, Lbd};

fn lbd(args: &[&str]) -> std::process::Output {
    Command::new(lbd_bin()).args(args).output().unwrap()
}

/// Runs lbd, which must exit 1; what it printed on stderr.
fn fails(args: &[&str]) -> String {
    let out = lbd(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_exit_codes_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "tcplb:\n  listeners:\n    - name: a\n      bind: 127.0.0.1:8443\n      backends: [127.0.0.1:6443]\n").unwrap();
    let out = lbd(&["check", "-c", good.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listener(s))"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "tcplb:\n  listeners:\n    - name: a\n      bind: 127.0.0.1:8443\n      backends: [nope]\n      retries: -1\nvrrp: {instances: [{name: v, interface: eth0, vrid: 300, virtual_ips: [10.0.0.1/24]}]}\nextra: 1\n").unwrap();
    let out = lbd(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = bad.display().to_string();
    for line in [
        format!("{p}:5:18: backends: invalid \"nope\""),
        format!("{p}:6:16: retries must be between 0 and 100, not -1"),
        format!("{p}:7:53: vrid must be between 1 and 255, not 300"),
        format!("{p}:8:1: unknown key \"extra\" in the config file"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&line)),
            "missing {line:?} in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), 4, "{err}");

    // A file that cannot be read has no position to show.
    assert_eq!(
        fails(&["check", "-c", "/nonexistent/lbd.yaml"]),
        "/nonexistent/lbd.yaml: cannot read: No such file or directory (os error 2)\n"
    );
}

const KPC: &str =
    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n";

/// A kubeconfig `lbd check` accepts: a server, a token, its current context.
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\n\
    clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
    users:\n- name: u\n  user:\n    token: abc\n\
    contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n";

fn write_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let kc = dir.join("proxy.kubeconfig");
    std::fs::write(&kc, KUBECONFIG).unwrap();
    kc
}

/// `lbd check` reads the KubeProxyConfiguration lbd.yaml names, as `lbd
/// run` does, and says so; its problems are reported at their own file's
/// line and column, after lbd.yaml's.
#[test]
fn check_merges_the_kube_proxy_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let kpc = dir.path().join("kube-proxy.yaml");
    std::fs::write(&kpc, KPC).unwrap();
    let kc = write_kubeconfig(dir.path());
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  mode: none\n  kube_proxy_config: {}\n  kubeconfig: {}\n",
            kpc.display(),
            kc.display()
        ),
    )
    .unwrap();
    let out = lbd(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}: ok (proxy mode ipvs, KubeProxyConfiguration {} merged, kubeconfig {} (from proxy.kubeconfig in lbd.yaml))\n",
            cfg.display(),
            kpc.display(),
            kc.display()
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // Problems in both files, every one printed.
    std::fs::write(
        &kpc,
        format!("{KPC}clusterCIDR: 10.244.0.0/99\nipvs:\n  syncPeriod: soon\n"),
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  mode: none\n  kube_proxy_config: {}\n  masquerade_all: 1\n  kubeconfig: {}\n",
            kpc.display(),
            kc.display()
        ),
    )
    .unwrap();
    let out = lbd(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let (c, k) = (cfg.display(), kpc.display());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{c}:4:19: expected true or false, not an integer\n\
             {k}:4:14: clusterCIDR: \"10.244.0.0/99\": invalid IP address syntax\n\
             {k}:6:15: ipvs.syncPeriod: \"soon\" is not a duration\n"
        )
    );

    // One that is not there, or cannot be read, is reported where lbd.yaml
    // names it.
    let missing = dir.path().join("nope.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  kube_proxy_config: {}\n  kubeconfig: {}\n",
            missing.display(),
            kc.display()
        ),
    )
    .unwrap();
    assert_eq!(
        fails(&["check", "-c", cfg.to_str().unwrap()]),
        format!(
            "{c}:2:22: proxy.kube_proxy_config: {} does not exist\n",
            missing.display()
        )
    );
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  kube_proxy_config: {}\n  kubeconfig: {}\n",
            dir.path().display(),
            kc.display()
        ),
    )
    .unwrap();
    assert_eq!(
        fails(&["check", "-c", cfg.to_str().unwrap()]),
        format!(
            "{c}:2:22: proxy.kube_proxy_config: cannot read {}: Is a directory (os error 21)\n",
            dir.path().display()
        )
    );
}

/// `lbd status -c` loads the config as `lbd run` does, KubeProxyConfiguration
/// included: a broken one is reported at its place; with a good one the
/// client goes on to the admin socket the config names.
#[test]
fn status_dash_c_loads_the_merged_config() {
    let dir = tempfile::tempdir().unwrap();
    let kpc = dir.path().join("kube-proxy.yaml");
    std::fs::write(&kpc, format!("{KPC}metricsBindAddress: localhost\n")).unwrap();
    let kc = write_kubeconfig(dir.path());
    let socket = dir.path().join("lbd.sock");
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  kube_proxy_config: {}\n  kubeconfig: {}\nadmin:\n  socket: {}\n",
            kpc.display(),
            kc.display(),
            socket.display()
        ),
    )
    .unwrap();
    assert_eq!(
        fails(&["status", "-c", cfg.to_str().unwrap()]),
        format!(
            "{}:4:21: metricsBindAddress: \"localhost\" is not IP:PORT\n",
            kpc.display()
        )
    );

    std::fs::write(&kpc, KPC).unwrap();
    let err = fails(&["status", "-c", cfg.to_str().unwrap()]);
    assert!(
        err.contains("lbd is not running") && err.contains(&socket.display().to_string()),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_version_names_commit() {
    assert_eq!(lbd(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(lbd(&["run", "--bogus"]).status.code(), Some(2));
    let out = lbd(&["version"]);
    assert_eq!(out.status.code(), Some(0));
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("lbd {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("target x86_64") || v.contains("target "), "{v}");
}

#[test]
fn status_without_daemon_says_why_in_one_line() {
    let out = lbd(&["status", "--socket", "/nonexistent/lbd.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("lbd is not running") && err.contains("/nonexistent/lbd.sock"),
        "{err}"
    );
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_matches_spec_field_for_field() {
    let b = echo_backend("a", true).await;
    let port = free_port();
    let listener = listener_yaml(
        "apiserver",
        ([127, 0, 0, 1], port).into(),
        &[&b],
        "roundrobin",
        "{ type: tcp, interval: 100ms }",
        "",
    );
    let d = Lbd::start(&(node_section("cp1") + &tcplb_section(None, &[listener]))).await;
    let (_, _held) = whoami_tcp(format!("127.0.0.1:{port}").parse().unwrap(), None)
        .await
        .unwrap();
    let sock = d.socket.to_str().unwrap().to_string();
    eventually(std::time::Duration::from_secs(3), "session counted", || {
        let sock = sock.clone();
        async move {
            let out = Command::new(lbd_bin())
                .args(["status", "--json", "--socket", &sock])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["tcplb"][0]["active_connections"] == 1
        }
    })
    .await;
    let out = Command::new(lbd_bin())
        .args(["status", "--json", "--socket", &sock])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every field SPEC.md names, with its type (more may be added).
    for k in [
        "node",
        "version",
        "uptime_seconds",
        "vrrp",
        "tcplb",
        "proxy",
    ] {
        assert!(keys(&v).contains(&k.to_string()), "missing {k}");
    }
    assert_eq!(v["node"], "cp1");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    assert!(v["vrrp"].is_array());
    assert!(v["proxy"].is_null(), "no proxy section configured");
    let l = &v["tcplb"][0];
    for (k, check) in [
        ("name", l["name"] == "apiserver"),
        ("bind", l["bind"] == format!("127.0.0.1:{port}").as_str()),
        ("active_connections", l["active_connections"] == 1),
        ("backends", l["backends"].is_array()),
    ] {
        assert!(check, "tcplb[0].{k} wrong: {l}");
    }
    let be = &l["backends"][0];
    assert_eq!(be["address"], b.addr.to_string());
    assert_eq!(be["healthy"], true);
    assert_eq!(be["active_connections"], 1);
    assert!(be["last_error"].is_null());
    // The human table shows the same at a glance.
    let out = Command::new(lbd_bin())
        .args(["status", "--socket", &sock])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("apiserver 127.0.0.1:") && table.contains("1/1 backends up"),
        "{table}"
    );
    assert!(table.contains(&format!("UP   {}", b.addr)), "{table}");
}

/// systemd's Type=notify protocol, judged by a datagram socket standing in
/// for systemd: READY=1 once listening, RELOADING=1 then READY=1 around a
/// SIGHUP, STOPPING=1 on SIGTERM.
#[test]
fn sd_notify_ready_reloading_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_nonblocking(true).unwrap();
    let port = free_port();
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tcplb:\n  listeners:\n    - name: a\n      bind: 127.0.0.1:{port}\n      backends: [127.0.0.1:1]\n{}",
            admin_section(&dir.path().join("lbd.sock"))
        ),
    )
    .unwrap();
    let mut child = Command::new(lbd_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Polled rather than a blocking recv with SO_RCVTIMEO: on some kernels
    // a sender to a socket blocked that way stalls until the timeout.
    let recv = || {
        let mut buf = [0u8; 512];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no notification within 10s"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    };
    let ready = recv();
    assert!(ready.contains("READY=1"), "{ready}");
    // The listener is bound by the time READY=1 is sent.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(recv().contains("RELOADING=1"));
    assert!(recv().contains("READY=1"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(recv().contains("STOPPING=1"));
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
}

fn status_cmd(args: &[&str]) -> std::process::Output {
    Command::new(lbd_bin()).args(args).output().unwrap()
}

/// `lbd ARGS` (a `--watch`) for 2.5 s, then SIGINT: its output.
async fn watched(args: &[&str]) -> std::process::Output {
    let watch = Command::new(lbd_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    watch.wait_with_output().unwrap()
}

/// SPEC.md's exit codes: 3 while a backend is down (the reason on its own
/// line), 0 once it is gone; `--watch --json` prints one object a second
/// until interrupted and exits with the last answer's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exit_codes_degraded_healthy_and_watch() {
    let up = echo_backend("a", true).await;
    let down: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let port = free_port();
    let bind = ([127, 0, 0, 1], port).into();
    let health = "{ type: tcp, interval: 100ms }";
    let two = listener_yaml(
        "apiserver",
        bind,
        &[up.to_string(), down.to_string()],
        "roundrobin",
        health,
        "",
    );
    let d = Lbd::start(&(node_section("cp1") + &tcplb_section(None, &[two]))).await;
    let sock = d.socket.to_str().unwrap().to_string();
    eventually(
        std::time::Duration::from_secs(5),
        "the dead backend marked down",
        || {
            let sock = sock.clone();
            async move { status_cmd(&["status", "--socket", &sock]).status.code() == Some(3) }
        },
    )
    .await;
    let out = status_cmd(&["status", "--socket", &sock]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "DEGRADED: listener apiserver: 1 of 2 backends down ({down})"
        )),
        "{table}"
    );
    let out = status_cmd(&["status", "--answered", "--socket", &sock]);
    assert_eq!(out.status.code(), Some(0), "--answered: alive is enough");
    let out = status_cmd(&["status", "--json", "--socket", &sock]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tcplb"][0]["backends"][1]["healthy"], false);

    // --watch --json: one compact object per line, SIGINT ends it.
    let out = watched(&["status", "--watch", "--json", "--socket", &sock]).await;
    assert_eq!(out.status.code(), Some(3), "the last answer was degraded");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert!(
        (2..=4).contains(&lines.len()),
        "one line a second for 2.5 s: {lines:?}"
    );
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["node"], "cp1");
    }

    // --watch as a table: in a pipe one table a second and no escape codes
    // (a log file stays readable); on a terminal each answer redraws the
    // screen in place (home, clear), as watch(1).
    let out = watched(&["status", "--watch", "--socket", &sock]).await;
    assert_eq!(out.status.code(), Some(3), "the last answer was degraded");
    let text = String::from_utf8_lossy(&out.stdout);
    let tables = text
        .lines()
        .filter(|l| l.starts_with("lbd ") && l.contains(" on cp1, up "))
        .count();
    assert!(
        (2..=4).contains(&tables),
        "one table a second for 2.5 s:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "escape codes in a pipe: {text:?}");
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok()
    {
        let cmd = format!(
            "timeout -s INT 2.5 {} status --watch --socket {sock}",
            lbd_bin()
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(
            tty.matches("\u{1b}[H\u{1b}[2J").count() >= 2,
            "a redraw in place per answer on a terminal: {tty:?}"
        );
    }

    // `lbd reload` with the dead backend gone: applied, then healthy.
    let one = listener_yaml("apiserver", bind, &[&up], "roundrobin", health, "");
    std::fs::write(
        &d.config,
        node_section("cp1") + &tcplb_section(None, &[one]) + "\n" + &admin_section(&d.socket),
    )
    .unwrap();
    let cfg = d.config.to_str().unwrap().to_string();
    let out = status_cmd(&["reload", "-c", &cfg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{cfg}: reloaded\n")
    );
    eventually(
        std::time::Duration::from_secs(5),
        "healthy after the reload",
        || {
            let sock = sock.clone();
            async move { status_cmd(&["status", "--socket", &sock]).status.code() == Some(0) }
        },
    )
    .await;
    let out = status_cmd(&["status", "--socket", &sock]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("DEGRADED"));
}

/// `lbd reload`: a file that fails `lbd check` never reaches the daemon
/// (exit 1, file:line:col); one the daemon refuses (its port is taken)
/// comes back refused (exit 1) and the running config stays; no daemon,
/// exit 1 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_validates_then_reports_the_daemons_answer() {
    let b = echo_backend("a", true).await;
    let port = free_port();
    let health = "{ type: tcp, interval: 100ms }";
    let first = listener_yaml(
        "apiserver",
        ([127, 0, 0, 1], port).into(),
        &[&b],
        "roundrobin",
        health,
        "",
    );
    let d = Lbd::start(&(node_section("cp1") + &tcplb_section(None, &[first]))).await;
    let cfg = d.config.to_str().unwrap().to_string();
    let write =
        |body: String| std::fs::write(&d.config, body + "\n" + &admin_section(&d.socket)).unwrap();

    write(node_section("cp1") + "tcplb:\n  listeners:\n    - name: x\n      bind: nonsense\n");
    let out = status_cmd(&["reload", "-c", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{cfg}:6:")), "{err}");
    assert!(
        err.contains("not reloaded (the running config stays)"),
        "{err}"
    );
    assert_eq!(
        d.status().await["config"]["reloads_failed"],
        0,
        "the daemon was not asked"
    );

    // Valid, but its new port is held by someone else: the daemon refuses.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = listener_yaml(
        "other",
        taken.local_addr().unwrap(),
        &[&b],
        "roundrobin",
        health,
        "",
    );
    let first = listener_yaml(
        "apiserver",
        ([127, 0, 0, 1], port).into(),
        &[&b],
        "roundrobin",
        health,
        "",
    );
    write(node_section("cp1") + &tcplb_section(None, &[first, second]));
    let out = status_cmd(&["reload", "-c", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload refused (the running config stays)"),
        "{err}"
    );
    assert!(
        err.contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
    let s = d.status().await;
    assert_eq!(s["config"]["reloads_failed"], 1);
    assert_eq!(
        s["tcplb"].as_array().unwrap().len(),
        1,
        "still the old listeners"
    );

    let out = status_cmd(&["reload", "-c", &cfg, "--socket", "/nonexistent/lbd.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lbd is not running"));
}
