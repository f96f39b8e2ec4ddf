//! `lbd run` as supervisor and worker (src/supervisor.rs): what happens
//! when the worker dies, when the whole process tree dies, what systemd
//! sees, and the operator's `lbd vrrp release|resume` through the admin
//! socket. `lbd run` nodes in network namespaces (root; skipped otherwise).

mod support;

use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, SystemTime};

use support::cluster::{worker_of, Cluster, Scenario};
use support::config::admin_section;
use support::lbd::{eventually_sync, lbd_bin};
use support::netns::{require_root, run_output, wait_for};
use support::wire::Capture;

fn node_ip(c: &Cluster, i: usize) -> IpAddr {
    format!("10.213.{}.{}", c.net, i + 1).parse().unwrap()
}

fn observe(c: &mut Cluster) -> Capture {
    let obs = c.lab.add_ns("obs");
    let addr = format!("10.213.{}.9/24", c.net);
    c.lab.attach(&obs, "eth0", &[&addr]);
    Capture::start(&obs, None)
}

/// SIGKILL of the master's worker alone (a panic, an OOM kill): the
/// supervisor sends priority 0 from the state file, so the backup takes
/// over after its skew time, and removes the VIP when that backup
/// advertises: two holders for about the time one advert takes, nobody
/// holding it for about the skew time. Then a new worker starts and, with
/// the higher priority, takes the VIP back.
#[test]
fn killing_the_worker_hands_the_vip_over_within_skew() {
    if !require_root("killing_the_worker_hands_the_vip_over_within_skew") {
        return;
    }
    let mut c = Cluster::new(60, Scenario::default(), &[150, 100]);
    let cap = observe(&mut c);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    std::thread::sleep(c.interval() * 5);
    w.take_max_dual();
    w.take_max_none();
    let worker = c.worker_pid(0);
    let supervisor = c.pid(0);
    let killed_at = SystemTime::now();
    support::netns::run(&["kill", "-KILL", &worker.to_string()]);
    let took = wait_for(Duration::from_secs(5), || w.holders().contains(&1))
        .unwrap_or_else(|| panic!("n2 never took over: {:?}\n{}", w.holders(), c.logs()));
    let gone = wait_for(Duration::from_secs(5), || w.holders() == vec![1])
        .unwrap_or_else(|| panic!("n1 kept the VIP: {:?}\n{}", w.holders(), c.logs()));
    let (dual, none) = (w.take_max_dual(), w.take_max_none());
    let skew = c.skew(1);
    eprintln!(
        "[net 60] worker SIGKILLed: n2 holds the VIP after {took:?} (skew {skew:?}), \
         n1 let go {gone:?} later; two holders at most {dual:?}, none at most {none:?}"
    );
    assert!(
        took <= skew + c.interval() + Duration::from_millis(100),
        "{took:?}: not a priority 0 handover\n{}",
        c.logs()
    );
    assert!(
        dual <= c.interval() + Duration::from_millis(40),
        "split brain {dual:?}\n{}",
        c.logs()
    );
    // On the wire: n1's priority 0, sent by the supervisor.
    let zero = cap.priority_zero();
    let n1 = node_ip(&c, 0);
    assert!(
        zero.iter().any(|(at, src)| *src == n1 && *at >= killed_at),
        "no priority 0 from n1: {zero:?}"
    );
    // The supervisor lives on and starts a new worker, which preempts.
    let back = w
        .wait_sole_holder(0, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no new worker took the VIP back: {}", c.logs()));
    let new_worker = worker_of(supervisor).expect("a new worker");
    assert_ne!(new_worker, worker);
    eprintln!("[net 60] the new worker {new_worker} holds the VIP again after {back:?}");
    let log = std::fs::read_to_string(c.log(0)).unwrap();
    assert!(log.contains("handing its VIPs over"), "{log}");
    assert!(log.contains("VIPs of the dead worker handed over"), "{log}");
}

/// The whole tree killed at once (the node's lbd SIGKILLed with its
/// supervisor), then started again before the VIP's lifetime ran out: the
/// new lbd recognises the VIP from its state file, keeps it and becomes
/// master with it, so a lone node's VIP never goes missing. Killed again
/// and not restarted, the VIP lapses with its lifetime.
#[test]
fn a_killed_tree_restarted_adopts_its_vip_and_one_left_dead_expires() {
    if !require_root("a_killed_tree_restarted_adopts_its_vip_and_one_left_dead_expires") {
        return;
    }
    let mut c = Cluster::new(
        61,
        Scenario {
            vip_lifetime: Some("2s"),
            ..Scenario::default()
        },
        &[150],
    );
    let w = c.watch();
    c.start(0);
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let state_file = c.run_dir(0).join("vrrp-eth0-51-ipv4.json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(record["master"], true, "{record}");
    assert_eq!(
        record["installed"][0]["addr"], "10.213.61.100/24",
        "{record}"
    );
    w.take_max_none();
    c.kill_tree(0);
    c.start(0);
    // Master again after one Master_Down_Interval (nobody else here).
    let log_says = || {
        std::fs::read_to_string(c.log(0))
            .unwrap_or_default()
            .contains("VIPs of a previous lbd found")
    };
    eventually_sync(Duration::from_secs(5), "the restarted lbd adopts", log_says);
    eventually_sync(Duration::from_secs(5), "master again", || {
        c.try_instance(0).is_some_and(|st| st["state"] == "MASTER")
    });
    let none = w.take_max_none();
    eprintln!("[net 61] tree killed and restarted: the VIP was missing for {none:?}");
    assert!(
        none.is_zero(),
        "the VIP went missing for {none:?}\n{}",
        c.logs()
    );
    // Killed for good: the lifetime (2 s from the last renewal) ends it.
    c.kill_tree(0);
    let gone = wait_for(Duration::from_secs(6), || w.holders().is_empty())
        .unwrap_or_else(|| panic!("the VIP outlived its lifetime: {:?}", w.holders()));
    eprintln!("[net 61] tree killed for good: the VIP lapsed after {gone:?}");
    assert!(gone <= Duration::from_millis(3200), "{gone:?}");
}

/// systemd's Type=notify with NotifyAccess=main: every notification must
/// come from the main PID, the supervisor, though the worker sends it. A
/// datagram socket with SO_PASSCRED stands in for systemd and checks the
/// sender of each.
#[test]
fn notifications_reach_systemd_from_the_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(&cfg, admin_section(&dir.path().join("lbd.sock"))).unwrap();
    let mut child = Command::new(lbd_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let main_pid = child.id() as i32;
    let recv = || -> (String, i32) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 512];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(libc::ucred);
        let msg = recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .expect("a notification within 10 s");
        let mut pid = -1;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmCredentials(cred) = c {
                pid = cred.pid();
            }
        }
        let n = msg.bytes;
        (String::from_utf8_lossy(&buf[..n]).into_owned(), pid)
    };
    let (ready, pid) = recv();
    assert!(ready.contains("READY=1"), "{ready}");
    assert_eq!(
        pid, main_pid,
        "READY=1 from {pid}, not the main PID {main_pid}"
    );
    let worker = worker_of(child.id()).expect("a worker");
    assert_ne!(worker as i32, main_pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main_pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    for want in ["RELOADING=1", "READY=1"] {
        let (m, pid) = recv();
        assert!(m.contains(want), "{m}");
        assert_eq!(pid, main_pid);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (m, pid) = recv();
    assert!(m.contains("STOPPING=1"), "{m}");
    assert_eq!(pid, main_pid);
    assert!(child.wait().unwrap().success());
    // The worker went with it; the relay socket too.
    assert!(!std::path::Path::new(&format!("/proc/{worker}")).exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("notify-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `lbd vrrp release|resume`: the master gives the VIP up at once
/// (priority 0 on the wire, the backup takes over after its skew time,
/// make before break), shows released with priority 0 in status, stays
/// released across a restart, and takes part again when resumed. Unknown
/// instances are refused (exit 1); over TCP the request is refused.
#[test]
fn release_and_resume_through_the_admin_socket() {
    if !require_root("release_and_resume_through_the_admin_socket") {
        return;
    }
    let mut c = Cluster::new(62, Scenario::default(), &[150, 100]);
    let cap = observe(&mut c);
    let w = c.watch();
    c.start_all();
    assert!(
        w.wait_sole_holder(0, Duration::from_secs(10)).is_some(),
        "{}",
        c.logs()
    );
    w.take_max_none();
    let lbd_vrrp = |c: &Cluster, args: &[&str]| {
        let sock = c.socket(0);
        let mut full = vec![lbd_bin(), "vrrp"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--socket", sock.to_str().unwrap()]);
        run_output(&full)
    };
    let before = SystemTime::now();
    let out = lbd_vrrp(&c, &["release", "vip"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("vip: released"), "{said}");
    // Effective at once: the answer came after priority 0 went out.
    let n1 = node_ip(&c, 0);
    assert!(
        cap.priority_zero()
            .iter()
            .any(|(at, s)| *s == n1 && *at >= before),
        "no priority 0 from n1 on the wire"
    );
    let took = w
        .wait_sole_holder(1, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("n2 never took over: {}", c.logs()));
    let none = w.take_max_none();
    eprintln!("[net 62] released: n2 sole holder after {took:?}, nobody held the VIP for {none:?}");
    assert!(
        took <= c.skew(1) + c.interval() + Duration::from_millis(150),
        "{took:?}"
    );
    assert!(
        none < Duration::from_millis(40),
        "no make before break: {none:?}"
    );
    let st = c.instance(0);
    assert_eq!(st["released"], true, "{st}");
    assert_eq!(st["effective_priority"], 0, "{st}");
    assert_eq!(st["state"], "BACKUP", "{st}");
    // Twice: done, nothing changed.
    let again = lbd_vrrp(&c, &["release"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("was released already"));
    // Refused: an unknown instance, and anything over TCP.
    let bad = lbd_vrrp(&c, &["release", "nosuch"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no VRRP instance named \"nosuch\""),
        "{bad:?}"
    );
    // Across a restart (the state file keeps it): never master meanwhile.
    c.kill(0, "TERM");
    let state_file = c.run_dir(0).join("vrrp-eth0-51-ipv4.json");
    let record = std::fs::read_to_string(&state_file).unwrap_or_default();
    assert!(record.contains("\"released\": true"), "{record}");
    c.start(0);
    let back = wait_for(Duration::from_secs(10), || {
        c.try_instance(0)
            .is_some_and(|st| st["state"] == "BACKUP" && st["released"] == true)
    });
    assert!(
        back.is_some(),
        "n1 not back released: {:?}\n{}",
        c.try_instance(0),
        c.logs()
    );
    std::thread::sleep(c.master_down(0) * 2);
    assert_eq!(w.holders(), vec![1], "{}", c.logs());
    // Resumed: n1 preempts n2.
    let out = lbd_vrrp(&c, &["resume"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("vip: resumed"));
    let back = w
        .wait_sole_holder(0, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("n1 did not take the VIP back: {}", c.logs()));
    eprintln!("[net 62] resumed: n1 holds the VIP again after {back:?}");
    assert_eq!(c.instance(0)["released"], false);
}

/// Over the TCP admin listener a maintenance request is refused, whoever
/// asks: only root on the 0600 unix socket may.
#[test]
fn maintenance_is_refused_over_tcp() {
    if !require_root("maintenance_is_refused_over_tcp") {
        return;
    }
    let mut c = Cluster::new(63, Scenario::default(), &[150]);
    let conf = c
        .config(0)
        .replace("  listen: null\n", "  listen: 127.0.0.1:9440\n");
    let path = c.dir.path().join("n1-admin.yaml");
    std::fs::write(&path, conf).unwrap();
    c.start_with(0, &path);
    let ns = c.ns[0].clone();
    eventually_sync(Duration::from_secs(5), "admin listener", || {
        support::netns::in_ns(&ns, || {
            std::net::TcpStream::connect("127.0.0.1:9440").is_ok()
        })
    });
    let answer = support::netns::in_ns(&ns, || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9440").unwrap();
        s.write_all(b"POST /vrrp/release HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    assert_eq!(c.instance(0)["released"], false);
}
