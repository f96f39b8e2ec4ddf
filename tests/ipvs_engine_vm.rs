//! The whole proxy engine on a real kernel: the in-process API server, real
//! kube-rs watchers, NetlinkIpvs, kube-ipvs0 over rtnetlink and the nftables
//! table, judged by `ipvsadm -Ln` and by real TCP and UDP traffic from a
//! client namespace to a ClusterIP and a NodePort reaching backends in other
//! namespaces. Runs only inside the VM (`VM_TESTS=ipvs_engine_vm
//! scripts/vm-test.sh`), skips elsewhere: this host's kernel has no IPVS.
//!
//! One test function: the VM is a throw-away machine, so the test owns its
//! root namespace; helpers (backends, client) are this binary re-executed
//! inside named namespaces (`ip netns exec`), killed on drop.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbd::proxy::driver::Runner;
use lbd::proxy::engine::EngineSettings;
use lbd::proxy::kernel::ipvs::NetlinkIpvs;
use lbd::proxy::kernel::nft::{Firewall, NftFirewall};
use lbd::proxy::kernel::{DummyAddresses, IpvsDataPlane, ProcSysctls};
use lbd::proxy::metrics::ProxyMetrics;
use lbd::proxy::report::ProxyReporter;
use lbd::proxy::server::ProxyHealth;
use serde_json::{json, Value};
use support::apiserver::{Kind, TestApiServer};
use tokio_util::sync::CancellationToken;

fn in_vm() -> bool {
    if std::env::var("LBD_IN_VM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipping: needs IPVS, run inside the VM with VM_TESTS=ipvs_engine_vm scripts/vm-test.sh"
    );
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `ipvsadm -Ln` without the header and connection counters: one line per
/// service or destination, e.g. "TCP 10.96.0.20:80 rr" and
/// "-> 10.250.2.2:8080 Masq 1".
fn ipvs_table() -> Vec<String> {
    sh("ipvsadm -Ln")
        .lines()
        .skip(3)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() == Some(&"->") {
                f[..f.len().min(4)].join(" ")
            } else {
                f.join(" ")
            }
        })
        .collect()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n{}",
            sh("ipvsadm -Ln")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- helper processes ---------------------------------------------------

struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn spawn(ns: &str, spec: &str) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([
                "--exact",
                "helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LBD_VM_HELPER", spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Helper {
            child,
            stdin,
            stdout,
        }
    }
    /// Next helper message (marked "@@H "; the harness prints other lines).
    fn line(&mut self) -> String {
        let mut l = String::new();
        loop {
            l.clear();
            assert!(self.stdout.read_line(&mut l).unwrap() > 0, "helper ended");
            // The harness prints "test helper ... " without a newline
            // before the test runs: the marker may start mid-line.
            if let Some((_, x)) = l.split_once("@@H ") {
                return x.trim().to_string();
            }
        }
    }
    fn say(&mut self, s: &str) {
        let w = self.stdin.as_mut().unwrap();
        writeln!(w, "{s}").unwrap();
        w.flush().unwrap();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs inside a namespace: `backend ADDR NAME` serves TCP (name, then echo
/// lines) and UDP (name) on ADDR for at most 5 minutes; `get ADDR` prints
/// what one TCP connection answers; `udp ADDR` one datagram's answer;
/// `hold ADDR` connects, prints the answer, then on each stdin line sends it
/// and prints the echo.
#[test]
#[ignore = "helper: run inside a namespace by the VM test"]
fn helper() {
    let spec = std::env::var("LBD_VM_HELPER").expect("LBD_VM_HELPER");
    let f: Vec<&str> = spec.split(' ').collect();
    let addr: SocketAddr = f[1].parse().unwrap();
    match f[0] {
        "backend" => {
            let name = f[2].to_string();
            let l = std::net::TcpListener::bind(addr).unwrap();
            let u = UdpSocket::bind(addr).unwrap();
            let n2 = name.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((_, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(n2.as_bytes(), from);
                }
            });
            println!("@@H ready");
            std::io::stdout().flush().unwrap();
            let deadline = Instant::now() + Duration::from_secs(300);
            for s in l.incoming() {
                if Instant::now() > deadline {
                    break;
                }
                let Ok(mut s) = s else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = s.write_all(format!("{name}\n").as_bytes());
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                        let _ = s.write_all(line.as_bytes());
                        line.clear();
                    }
                });
            }
        }
        "get" | "hold" => {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            println!("@@H {}", line.trim());
            std::io::stdout().flush().unwrap();
            if f[0] == "hold" {
                let stdin = std::io::stdin();
                for l in stdin.lock().lines() {
                    let l = l.unwrap();
                    (&s).write_all(format!("{l}\n").as_bytes()).unwrap();
                    let mut echo = String::new();
                    r.read_line(&mut echo).unwrap();
                    println!("@@H {}", echo.trim());
                    std::io::stdout().flush().unwrap();
                }
            }
        }
        "udp" => {
            let u = UdpSocket::bind("0.0.0.0:0").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 512];
            // UDP may lose the first datagram while ARP resolves: retry.
            for _ in 0..5 {
                u.send_to(b"q", addr).unwrap();
                if let Ok((n, _)) = u.recv_from(&mut buf) {
                    println!("@@H {}", String::from_utf8_lossy(&buf[..n]));
                    return;
                }
            }
            println!("@@H none");
        }
        other => panic!("unknown helper {other}"),
    }
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

fn get(ns: &str, addr: &str) -> String {
    Helper::spawn(ns, &format!("get {addr}")).line()
}

// ---- the cluster --------------------------------------------------------

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn service() -> Value {
    json!({"metadata": {"name": "web", "namespace": "default"},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                              {"name": "dns", "port": 53, "protocol": "UDP"}]}})
}

fn slice(addrs: &[&str]) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "nodeName": "other", "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"name": "web-1", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                     {"name": "dns", "port": 8080, "protocol": "UDP"}],
           "endpoints": eps})
}

const DRAIN: Duration = Duration::from_secs(60);

fn settings() -> EngineSettings {
    EngineSettings {
        node_name: "cp1".into(),
        scheduler: "rr".into(),
        // The client's side only: unset, NodePorts would go on the backend
        // links' addresses too (kube-proxy's every-local-address), where no
        // traffic comes and drained real servers go at the first recheck.
        node_port_addresses: vec!["10.250.1.0/24".parse().unwrap()],
        node_port_primary: false,
        exclude_cidrs: vec![],
        cluster_cidrs: vec!["10.250.0.0/16".parse().unwrap()],
        masquerade_all: false,
        min_sync_period: Duration::from_millis(50),
        sync_period: Duration::from_secs(2),
        // Short so the test sees the bound (a closed connection stays in
        // TIME_WAIT, InActConn, for two minutes) yet longer than the steps
        // between the drain and the restart take in the emulated VM.
        drain_timeout: DRAIN,
        timeouts: None,
        strict_arp: false,
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    status: ProxyReporter,
}

async fn start(api: &TestApiServer, firewall: bool) -> Running {
    let client = api.client().await;
    let status = ProxyReporter::default();
    let engine = Runner {
        settings: settings(),
        plane: Box::new(IpvsDataPlane {
            ipvs: Arc::new(NetlinkIpvs::new().unwrap()),
            addresses: Arc::new(DummyAddresses::new()),
            firewall: firewall.then(|| Arc::new(NftFirewall::default()) as Arc<dyn Firewall>),
            sysctls: Arc::new(ProcSysctls),
            conntrack: None,
        }),
        reporter: status.clone(),
        metrics: ProxyMetrics::new(),
        health: ProxyHealth::new(Duration::from_secs(60)),
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { engine.run(client, token).await.unwrap() });
    Running { stop, task, status }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
    fn synced(&self) -> bool {
        self.status.report().is_some_and(|s| s.synced)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_programs_ipvs_traffic_flows_drains_and_restarts_without_flush() {
    if !in_vm() {
        return;
    }
    // Bounded in time whatever hangs: a stuck helper or kernel call ends
    // the VM run with a message instead of the harness's timeout.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(900));
        eprintln!("vm test watchdog: still running after 900 s, aborting");
        std::process::exit(3);
    });
    let step = |s: &str| eprintln!("step: {s}");
    step("setup");
    sh("ip link set lo up");
    // `nft -f -` reads /dev/stdin, which the VM's minimal /dev lacks.
    sh("[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin");
    // Another owner's virtual server: must survive everything below.
    sh("ipvsadm -A -t 192.0.2.1:80 -s wlc && ipvsadm -a -t 192.0.2.1:80 -r 192.0.2.2:80 -m -w 3");

    let ns = Netns(vec!["lbdt-cl".into(), "lbdt-b1".into(), "lbdt-b2".into()]);
    for (i, n) in ns.0.iter().enumerate() {
        let net = i + 1;
        sh(&format!(
            "ip netns add {n} && ip link add lbdt-h{net} type veth peer name eth0 netns {n} && \
             ip addr add 10.250.{net}.1/24 dev lbdt-h{net} && ip link set lbdt-h{net} up && \
             ip -n {n} addr add 10.250.{net}.2/24 dev eth0 && ip -n {n} link set eth0 up && \
             ip -n {n} link set lo up && ip -n {n} route add default via 10.250.{net}.1"
        ));
    }
    step("backends");
    let mut backends = Vec::new();
    for (n, name, addr) in [
        ("lbdt-b1", "b1", "10.250.2.2:8080"),
        ("lbdt-b2", "b2", "10.250.3.2:8080"),
    ] {
        let mut h = Helper::spawn(n, &format!("backend {addr} {name}"));
        assert_eq!(h.line(), "ready");
        backends.push(h);
    }

    step("api server + engine");
    let api = TestApiServer::start().await;
    api.apply(Kind::Service, service());
    api.apply(Kind::EndpointSlice, slice(&["10.250.2.2", "10.250.3.2"]));
    api.apply(
        Kind::Node,
        json!({"metadata": {"name": "cp1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.250.1.1"}]}}),
    );
    // nftables needs its modules in the VM (VM_MODULES with nf_tables,
    // nft_ct, nf_nat, nft_chain_nat, nft_masq, nft_nat): probe for them.
    let nft = has("nft")
        && Command::new("sh")
            .arg("-c")
            .arg("nft add table inet lbdt_probe && nft delete table inet lbdt_probe")
            .output()
            .is_ok_and(|o| o.status.success());
    if !nft {
        eprintln!(
            "note: nftables unusable in this VM (nft or its modules missing): table not checked"
        );
    }
    let run = start(&api, nft).await;

    let want = [
        "TCP 10.96.0.20:80 rr",
        "-> 10.250.2.2:8080 Masq 1",
        "-> 10.250.3.2:8080 Masq 1",
        "TCP 10.250.1.1:30080 rr",
        "UDP 10.96.0.20:53 rr",
        "TCP 192.0.2.1:80 wlc",
        "-> 192.0.2.2:80 Masq 3",
    ];
    step("wait for table");
    tokio::task::block_in_place(|| {
        wait_until("table programmed", 60, || {
            let t = ipvs_table();
            want.iter().all(|w| t.iter().any(|l| l == w))
        })
    });
    assert!(sh("ip -o addr show dev kube-ipvs0").contains("10.96.0.20/32"));
    // nodePortAddresses 10.250.1.0/24 of the host's addresses (listed from
    // the kernel): the backend links' 10.250.2.1 and 10.250.3.1 get none.
    let node_ports: Vec<String> = ipvs_table()
        .into_iter()
        .filter(|l| l.contains(":30080"))
        .collect();
    assert_eq!(
        node_ports,
        ["TCP 10.250.1.1:30080 rr"],
        "NodePort addresses"
    );
    if nft {
        // The table follows the IPVS changes within the same sync.
        tokio::task::block_in_place(|| wait_until("first sync done", 60, || run.synced()));
        let err = run.status.report().and_then(|s| s.last_error.clone());
        assert_eq!(err, None, "sync error (nft modules loaded? see VM_MODULES)");
        let t = sh("nft list table inet lbd-proxy");
        assert!(t.contains("10.96.0.20 . tcp . 80"), "{t}");
    }

    step("traffic");
    tokio::task::block_in_place(|| {
        // ClusterIP and NodePort over TCP, round robin over both backends.
        let got: Vec<String> = (0..4).map(|_| get("lbdt-cl", "10.96.0.20:80")).collect();
        assert!(
            got.contains(&"b1".into()) && got.contains(&"b2".into()),
            "{got:?}"
        );
        let np = get("lbdt-cl", "10.250.1.1:30080");
        assert!(np == "b1" || np == "b2", "{np}");
        // UDP ClusterIP.
        let u = Helper::spawn("lbdt-cl", "udp 10.96.0.20:53").line();
        assert!(u == "b1" || u == "b2", "{u}");
    });

    step("drain");
    // A connection held open while its endpoint is removed: the real server
    // goes to weight 0 and keeps serving it until the drain bound.
    let mut held = tokio::task::block_in_place(|| Helper::spawn("lbdt-cl", "hold 10.96.0.20:80"));
    let who = tokio::task::block_in_place(|| held.line());
    let (gone_ip, keep_ip) = if who == "b1" {
        ("10.250.2.2", "10.250.3.2")
    } else {
        ("10.250.3.2", "10.250.2.2")
    };
    api.apply(Kind::EndpointSlice, slice(&[keep_ip]));
    let drained_at = Instant::now();
    tokio::task::block_in_place(|| {
        wait_until("weight 0", 30, || {
            ipvs_table().contains(&format!("-> {gone_ip}:8080 Masq 0"))
        });
        held.say("ping");
        assert_eq!(held.line(), "ping", "held connection broke while draining");
        // New connections all go to the remaining backend.
        let other = if who == "b1" { "b2" } else { "b1" };
        for _ in 0..3 {
            assert_eq!(get("lbdt-cl", "10.96.0.20:80"), other);
        }
        // UDP real servers are deleted at once, not drained.
        assert!(!ipvs_table()
            .iter()
            .any(|l| l.starts_with(&format!("-> {gone_ip}:8080")) && l.ends_with("Masq 1")));
    });

    // Restart without flush while the connection is still open: the second
    // engine adopts the table, changes nothing, the connection survives.
    step("restart");
    assert!(run.synced());
    run.stop().await;
    let before = ipvs_table();
    let run = start(&api, nft).await;
    tokio::task::block_in_place(|| {
        wait_until("second engine synced", 60, || run.synced());
        std::thread::sleep(Duration::from_millis(500));
    });
    let after = ipvs_table();
    assert_eq!(before, after, "restart changed the table");
    tokio::task::block_in_place(|| {
        held.say("again");
        assert_eq!(
            held.line(),
            "again",
            "held connection broke across the restart"
        );
    });
    drop(held);

    step("drain bound");
    // The drain bound passes: the real server is deleted.
    tokio::task::block_in_place(|| {
        wait_until("drained real server deleted", 180, || {
            !ipvs_table()
                .iter()
                .any(|l| l.starts_with(&format!("-> {gone_ip}:8080")))
        })
    });
    assert!(
        drained_at.elapsed() >= DRAIN,
        "deleted before the drain bound"
    );

    // Service deleted: its virtual servers and address go, the foreign
    // one stays.
    step("service delete");
    api.delete(Kind::Service, "default", "web");
    tokio::task::block_in_place(|| {
        wait_until("service removed", 30, || {
            let t = ipvs_table();
            !t.iter()
                .any(|l| l.contains("10.96.0.20") || l.contains("30080"))
        })
    });
    let t = ipvs_table();
    assert!(
        t.contains(&"TCP 192.0.2.1:80 wlc".to_string())
            && t.contains(&"-> 192.0.2.2:80 Masq 3".to_string()),
        "{t:?}"
    );
    assert!(!sh("ip -o addr show dev kube-ipvs0").contains("10.96.0.20"));
    run.stop().await;
    drop(backends);
}
