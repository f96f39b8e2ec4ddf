//! NetlinkIpvs and proxy::kernel::dummy against a real kernel with IPVS. These tests
//! run only inside the VM (scripts/vm-test.sh sets LBD_IN_VM=1 there) and
//! skip with a message elsewhere: this host's kernel has no IPVS.
//!
//! Each test isolates itself: it moves its own thread into a fresh network
//! namespace (`unshare(CLONE_NEWNET)` is per thread), so IPVS tables,
//! links and sysctls of parallel tests never meet, and everything vanishes
//! with the thread. Commands it spawns (ipvsadm, ip) inherit that namespace.
//! `ipvsadm -Ln` is the judge of what the kernel holds.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use lbd::proxy::kernel::dummy::{self, DummyError, DummyLink, KUBE_IPVS0};
use lbd::proxy::kernel::ipvs::{IpvsError, IpvsHandle, IpvsOp, NetlinkIpvs};
use lbd::proxy::kernel::sysctl::{proxy_sysctls, ProcSysctls, Sysctls};
use lbd::proxy::model::{DestKey, FwdMethod, Protocol, RealServer, Timeouts, VirtualServer};

fn in_vm(test: &str) -> bool {
    if std::env::var("LBD_IN_VM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping {test}: needs IPVS, run inside the VM with scripts/vm-test.sh");
    false
}

/// Every network namespace's IPVS services live in one kernel hash table,
/// and a multi-part dump resumes by position in it: a test adding or
/// deleting services while another lists can make the listing miss or
/// repeat entries (lbd's listing works around it; ipvsadm's does not). The
/// tests take turns so that each one's exact assertions hold.
static IPVS_TABLE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Move this thread into a new, empty network namespace with lo up, and
/// hold the IPVS table for the test.
fn private_netns() -> std::sync::MutexGuard<'static, ()> {
    let turn = IPVS_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    sh("ip link set lo up");
    turn
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

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ------------------------------------------------------- ipvsadm -Ln ----

/// One service as `ipvsadm -Ln` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AdmService {
    /// "TCP 10.96.0.1:443" / "FWM 7"
    id: String,
    sched: String,
    /// "persistent 10800" and friends, as printed
    flags: String,
    /// "10.0.0.2:6443 Masq 1"
    dests: BTreeSet<String>,
}

fn ipvsadm_ln() -> BTreeSet<AdmService> {
    let text = sh("ipvsadm -Ln");
    let mut out: Vec<AdmService> = Vec::new();
    for line in text.lines().skip(3) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"->") {
            let s = out.last_mut().expect("dest line after a service line");
            s.dests.insert(format!("{} {} {}", f[1], f[2], f[3]));
        } else if f.len() >= 3 {
            out.push(AdmService {
                id: format!("{} {}", f[0], f[1]),
                sched: f[2].to_string(),
                flags: f[3..].join(" "),
                dests: BTreeSet::new(),
            });
        }
    }
    out.into_iter().collect()
}

fn adm(id: &str, sched: &str, flags: &str, dests: &[&str]) -> AdmService {
    AdmService {
        id: id.into(),
        sched: sched.into(),
        flags: flags.into(),
        dests: dests.iter().map(|d| d.to_string()).collect(),
    }
}

fn sorted(mut v: Vec<(VirtualServer, Vec<RealServer>)>) -> Vec<(VirtualServer, Vec<RealServer>)> {
    v.sort_by_key(|(vs, _)| vs.key());
    for (_, d) in &mut v {
        d.sort_by_key(|r| r.key());
    }
    v
}

fn same(a: &[(VirtualServer, Vec<RealServer>)], b: &[(VirtualServer, Vec<RealServer>)]) -> bool {
    let (a, b) = (sorted(a.to_vec()), sorted(b.to_vec()));
    a.len() == b.len()
        && a.iter().zip(&b).all(|((va, da), (vb, db))| {
            va == vb && da.len() == db.len() && da.iter().zip(db).all(|(x, y)| x.same_config(y))
        })
}

// ------------------------------------------------------------- tests ----

#[test]
fn services_and_dests_round_trip_through_the_kernel() {
    if !in_vm("services_and_dests_round_trip_through_the_kernel") {
        return;
    }
    let _turn = private_netns();
    let h = NetlinkIpvs::new().expect("IPVS family");
    let info = h.info().unwrap();
    assert_eq!(info.version_string(), "1.2.1");
    assert!(info.conn_table_size >= 4096);
    assert!(h.list_services().unwrap().is_empty());

    let tcp = VirtualServer::new(ip("10.96.0.1"), 443, Protocol::Tcp, "rr");
    let mut udp = VirtualServer::new(ip("10.96.0.10"), 53, Protocol::Udp, "rr");
    udp.persistent = Some(10800);
    let sctp = VirtualServer::new(ip("10.96.0.20"), 3868, Protocol::Sctp, "wrr");
    let mut v6 = VirtualServer::new(ip("fd00::1"), 443, Protocol::Tcp, "sh");
    v6.persistent = Some(60);
    v6.netmask = 64;
    for vs in [&tcp, &udp, &sctp, &v6] {
        h.add_service(vs).unwrap();
    }
    let rs = |a: &str, p: u16, w: u32| RealServer::new(ip(a), p, w);
    let mut dr = rs("10.0.0.4", 443, 3);
    dr.fwd = FwdMethod::Route;
    let mut tun6 = rs("fd00::9", 443, 1);
    tun6.fwd = FwdMethod::Tunnel; // IPv6 real server behind an IPv4 service
    let mut thresh = rs("10.244.0.3", 53, 2);
    thresh.u_threshold = 100;
    thresh.l_threshold = 10;
    let want = vec![
        (
            tcp.clone(),
            vec![
                rs("10.0.0.2", 6443, 1),
                rs("10.0.0.3", 6443, 2),
                dr.clone(),
                tun6.clone(),
            ],
        ),
        (udp.clone(), vec![rs("10.244.0.2", 53, 1), thresh.clone()]),
        (sctp.clone(), vec![rs("10.0.1.2", 3868, 5)]),
        (
            v6.clone(),
            vec![rs("fd00::2", 6443, 1), rs("fd00::3", 6443, 0)],
        ),
    ];
    for (vs, dests) in &want {
        for d in dests {
            h.add_dest(&vs.key(), d).unwrap();
        }
    }
    let listed = h.list_services().unwrap();
    assert!(same(&listed, &want), "listed {listed:#?}");
    assert_eq!(
        ipvsadm_ln(),
        [
            adm(
                "TCP 10.96.0.1:443",
                "rr",
                "",
                &[
                    "10.0.0.2:6443 Masq 1",
                    "10.0.0.3:6443 Masq 2",
                    "10.0.0.4:443 Route 3",
                    "[fd00::9]:443 Tunnel 1"
                ]
            ),
            adm(
                "UDP 10.96.0.10:53",
                "rr",
                "persistent 10800",
                &["10.244.0.2:53 Masq 1", "10.244.0.3:53 Masq 2"]
            ),
            adm("SCTP 10.96.0.20:3868", "wrr", "", &["10.0.1.2:3868 Masq 5"]),
            adm(
                "TCP [fd00::1]:443",
                "sh",
                "persistent 60 mask 64",
                &["[fd00::2]:6443 Masq 1", "[fd00::3]:6443 Masq 0"]
            ),
        ]
        .into_iter()
        .collect()
    );
    // Thresholds as the kernel reports them.
    let udp_dests = h.list_dests(&udp.key()).unwrap();
    let t = udp_dests.iter().find(|d| d.key() == thresh.key()).unwrap();
    assert_eq!((t.u_threshold, t.l_threshold), (100, 10));

    // Updates: scheduler and persistence, weight to 0 (drain), delete.
    let mut tcp2 = tcp.clone();
    tcp2.scheduler = "wrr".into();
    tcp2.persistent = Some(300);
    h.update_service(&tcp2).unwrap();
    let mut udp2 = udp.clone();
    udp2.persistent = None;
    h.update_service(&udp2).unwrap();
    h.update_dest(&tcp.key(), &rs("10.0.0.2", 6443, 0)).unwrap();
    h.delete_dest(
        &tcp.key(),
        &DestKey {
            addr: ip("10.0.0.3"),
            port: 6443,
        },
    )
    .unwrap();
    h.delete_service(&sctp.key()).unwrap();
    let now = ipvsadm_ln();
    assert!(
        now.contains(&adm(
            "TCP 10.96.0.1:443",
            "wrr",
            "persistent 300",
            &[
                "10.0.0.2:6443 Masq 0",
                "10.0.0.4:443 Route 3",
                "[fd00::9]:443 Tunnel 1"
            ]
        )),
        "{now:#?}"
    );
    assert!(now.contains(&adm(
        "UDP 10.96.0.10:53",
        "rr",
        "",
        &["10.244.0.2:53 Masq 1", "10.244.0.3:53 Masq 2"]
    )));
    assert!(!now.iter().any(|s| s.id.starts_with("SCTP")));
    let listed = h.list_services().unwrap();
    let l_tcp = listed.iter().find(|(v, _)| v.key() == tcp.key()).unwrap();
    assert_eq!(l_tcp.0, tcp2);

    // The kernel's answers for duplicates and missing things are typed.
    assert!(h.add_service(&tcp2).unwrap_err().is_exists());
    assert!(h.add_dest(&tcp.key(), &dr).unwrap_err().is_exists());
    assert!(h.delete_service(&sctp.key()).unwrap_err().is_not_found());
    assert!(h.update_service(&sctp).unwrap_err().is_not_found());
    assert!(h.add_dest(&sctp.key(), &dr).unwrap_err().is_not_found());
    // GET_DEST of a missing service is an empty dump, not an error.
    assert!(h.list_dests(&sctp.key()).unwrap().is_empty());
    let gone = DestKey {
        addr: ip("10.0.0.3"),
        port: 6443,
    };
    assert!(h.delete_dest(&tcp.key(), &gone).unwrap_err().is_not_found());
    assert!(h
        .update_dest(&tcp.key(), &rs("10.0.0.3", 6443, 1))
        .unwrap_err()
        .is_not_found());
    let mut bad = sctp.clone();
    bad.scheduler = "nosuch".into();
    assert!(
        matches!(h.add_service(&bad), Err(IpvsError::Invalid { .. })),
        "unknown scheduler"
    );

    for vs in [&tcp, &udp, &v6] {
        h.delete_service(&vs.key()).unwrap();
    }
    assert!(ipvsadm_ln().is_empty());
    assert!(h.list_services().unwrap().is_empty());
}

#[test]
fn foreign_services_are_listed_and_left_alone() {
    if !in_vm("foreign_services_are_listed_and_left_alone") {
        return;
    }
    let _turn = private_netns();
    sh("ipvsadm -A -t 192.168.7.1:80 -s lc && ipvsadm -a -t 192.168.7.1:80 -r 192.168.7.2:8080 -m -w 4");
    sh("ipvsadm -A -f 7 -s rr && ipvsadm -a -f 7 -r 192.168.7.3:0 -g");
    let before = ipvsadm_ln();
    assert_eq!(before.len(), 2);

    let h = NetlinkIpvs::new().unwrap();
    let listed = h.list_services().unwrap();
    // The TCP one is reported as it is; the firewall-mark one cannot be
    // expressed in the model and is not reported at all.
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let (vs, dests) = &listed[0];
    assert_eq!(
        *vs,
        VirtualServer::new(ip("192.168.7.1"), 80, Protocol::Tcp, "lc")
    );
    assert!(dests[0].same_config(&RealServer::new(ip("192.168.7.2"), 8080, 4)));

    // Our own work next to it changes nothing of theirs.
    let ours = VirtualServer::new(ip("10.96.0.1"), 80, Protocol::Tcp, "rr");
    h.add_service(&ours).unwrap();
    h.add_dest(&ours.key(), &RealServer::new(ip("10.0.0.2"), 80, 1))
        .unwrap();
    h.delete_service(&ours.key()).unwrap();
    assert_eq!(ipvsadm_ln(), before);
}

#[test]
fn timeouts_set_and_read_back() {
    if !in_vm("timeouts_set_and_read_back") {
        return;
    }
    let _turn = private_netns();
    let h = NetlinkIpvs::new().unwrap();
    let t = Timeouts {
        tcp: 901,
        tcp_fin: 121,
        udp: 301,
    };
    h.set_timeouts(&t).unwrap();
    assert_eq!(h.get_timeouts().unwrap(), t);
    // Zero leaves a value unchanged.
    h.set_timeouts(&Timeouts {
        tcp: 0,
        tcp_fin: 0,
        udp: 42,
    })
    .unwrap();
    assert_eq!(h.get_timeouts().unwrap(), Timeouts { udp: 42, ..t });
    let adm = sh("ipvsadm -Ln --timeout");
    assert!(
        adm.contains("Timeout (tcp tcpfin udp): 901 121 42"),
        "{adm}"
    );
}

#[test]
fn dummy_link_addresses_and_sysctls() {
    if !in_vm("dummy_link_addresses_and_sysctls") {
        return;
    }
    let _turn = private_netns();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = dummy::connect().unwrap();
        let link = DummyLink::ensure(handle.clone(), KUBE_IPVS0).await.unwrap();
        let again = DummyLink::ensure(handle.clone(), KUBE_IPVS0).await.unwrap();
        assert_eq!(link.index(), again.index(), "found, not re-created");
        assert!(sh("ip -d link show kube-ipvs0").contains("dummy"));
        assert!(link.addresses().await.unwrap().is_empty());

        let (a4, a6) = (ip("10.96.0.1"), ip("fd00:96::1"));
        assert!(link.bind(a4).await.unwrap());
        assert!(link.bind(a6).await.unwrap());
        assert!(!link.bind(a4).await.unwrap(), "second bind is a no-op");
        assert_eq!(link.addresses().await.unwrap(), vec![a4, a6]);
        let shown = sh("ip -o addr show dev kube-ipvs0");
        assert!(shown.contains("inet 10.96.0.1/32"), "{shown}");
        assert!(shown.contains("inet6 fd00:96::1/128"), "{shown}");
        assert!(
            !shown.contains("tentative"),
            "NODAD: usable at once: {shown}"
        );
        // The kernel now treats them as local addresses.
        assert!(sh("ip route get 10.96.0.1").starts_with("local 10.96.0.1"));
        assert!(sh("ip -6 route get fd00:96::1").starts_with("local fd00:96::1"));

        assert!(link.unbind(a4).await.unwrap());
        assert!(!link.unbind(a4).await.unwrap(), "second unbind is a no-op");
        assert_eq!(link.addresses().await.unwrap(), vec![a6]);
        assert!(link.unbind(a6).await.unwrap());
        assert!(!link.unbind(a6).await.unwrap(), "second unbind is a no-op");
        assert!(link.addresses().await.unwrap().is_empty());
        // Bound by someone else with another prefix: unbound all the same.
        sh("ip addr add 10.96.0.2/24 dev kube-ipvs0");
        sh("ip addr add fd00:96::2/64 dev kube-ipvs0 nodad");
        assert!(link.unbind(ip("10.96.0.2")).await.unwrap());
        assert!(link.unbind(ip("fd00:96::2")).await.unwrap());
        assert!(link.addresses().await.unwrap().is_empty());
        assert!(!link.unbind(ip("fd00:96::2")).await.unwrap());

        // Pipelined: more than one window's worth, one result each.
        let many: Vec<IpAddr> = (0..300u32)
            .map(|i| IpAddr::from([10, 97, (i / 250) as u8, (i % 250) as u8 + 1]))
            .chain([ip("fd00:97::1"), ip("10.97.0.1")])
            .collect();
        let r = link.bind_many(&many).await;
        assert_eq!(r.len(), many.len());
        assert!(r[..301].iter().all(|r| matches!(r, Ok(true))), "{r:?}");
        assert!(matches!(r[301], Ok(false)), "bound twice: a no-op");
        let mut want = many[..301].to_vec();
        want.sort();
        assert_eq!(link.addresses().await.unwrap(), want);
        let r = link.unbind_many(&many).await;
        assert!(r[..301].iter().all(|r| matches!(r, Ok(true))), "{r:?}");
        assert!(matches!(r[301], Ok(false)));
        assert!(link.addresses().await.unwrap().is_empty());

        // The host's addresses (NodePorts' candidates): every other link's,
        // loopback and link-local included, never kube-ipvs0's.
        sh("ip link add lbdt-veth0 type veth peer name lbdt-veth1");
        sh("ip addr add 192.168.77.10/24 dev lbdt-veth0");
        sh("ip addr add fd00:77::10/64 dev lbdt-veth0 nodad");
        assert!(link.bind(ip("10.96.0.3")).await.unwrap());
        let host = link.host_addresses().await.unwrap();
        for want in ["127.0.0.1", "192.168.77.10", "fd00:77::10"] {
            assert!(host.contains(&ip(want)), "{want} missing from {host:?}");
        }
        assert!(!host.contains(&ip("10.96.0.3")), "kube-ipvs0's: {host:?}");
        assert!(link.unbind(ip("10.96.0.3")).await.unwrap());

        // A non-dummy link of that name is refused, never used.
        let err = DummyLink::ensure(handle.clone(), "lbdt-veth0")
            .await
            .unwrap_err();
        assert!(matches!(err, DummyError::NotDummy(_)), "{err}");
    });

    // Sysctls: written once, then already right.
    let want = proxy_sysctls(&ProcSysctls.kernel_release(), true);
    let changed = ProcSysctls.ensure(&want).unwrap();
    assert!(changed.contains(&"net.ipv4.vs.conntrack"), "{changed:?}");
    assert!(ProcSysctls.ensure(&want).unwrap().is_empty());
    for s in &want {
        let v = lbd::sys::sysctl::read(s.name).unwrap();
        assert_eq!(v.trim(), s.value, "{}", s.name);
    }
}

// ------------------------------------------------------ real traffic ----

/// Named network namespaces created with `ip netns add`, deleted on drop.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn create(tag: &str, n: usize) -> Netns {
        let names: Vec<String> = (0..n)
            .map(|i| format!("lbdt-ipvs-{}-{tag}{i}", std::process::id()))
            .collect();
        for name in &names {
            sh(&format!("ip netns add {name}"));
        }
        Netns { names }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Run `f` on a thread that has joined the named namespace.
fn in_named_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

#[test]
fn tcp_traffic_is_balanced_through_a_virtual_service() {
    if !in_vm("tcp_traffic_is_balanced_through_a_virtual_service") {
        return;
    }
    // This thread's namespace plays the node: kube-ipvs0 holds the service
    // address, IPVS balances to two backends in their own namespaces, a
    // client namespace connects. Addresses exist only inside this VM.
    let _turn = private_netns();
    let ns = Netns::create("t", 3);
    let (client, b1, b2) = (&ns.names[0], &ns.names[1], &ns.names[2]);
    for (i, n) in [client, b1, b2].into_iter().enumerate() {
        let net = i + 1;
        sh(&format!(
            "ip link add lbdt-h{net} type veth peer name eth0 netns {n} && \
             ip addr add 10.250.{net}.1/24 dev lbdt-h{net} && ip link set lbdt-h{net} up && \
             ip -n {n} addr add 10.250.{net}.2/24 dev eth0 && ip -n {n} link set eth0 up && \
             ip -n {n} link set lo up && ip -n {n} route add default via 10.250.{net}.1"
        ));
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let link = DummyLink::ensure(dummy::connect().unwrap(), KUBE_IPVS0)
            .await
            .unwrap();
        link.bind(ip("10.96.0.100")).await.unwrap();
    });

    // Backends: answer every connection with their name until told to stop
    // (or 60 s pass: bounded either way); report how many they served.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut servers = Vec::new();
    for (name, addr) in [("b1", "10.250.2.2:8080"), ("b2", "10.250.3.2:8080")] {
        let (tx, rx) = std::sync::mpsc::channel();
        let addr: SocketAddr = addr.parse().unwrap();
        let stop = stop.clone();
        servers.push(in_named_netns(
            if name == "b1" { b1 } else { b2 },
            move || {
                let l = TcpListener::bind(addr).expect("bind backend");
                tx.send(()).unwrap();
                l.set_nonblocking(true).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut served = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let _ = s.write_all(name.as_bytes());
                            served += 1;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                served
            },
        ));
        rx.recv_timeout(Duration::from_secs(30))
            .expect("backend listening");
    }

    let h = NetlinkIpvs::new().unwrap();
    let vs = VirtualServer::new(ip("10.96.0.100"), 80, Protocol::Tcp, "rr");
    h.add_service(&vs).unwrap();
    h.add_dest(&vs.key(), &RealServer::new(ip("10.250.2.2"), 8080, 1))
        .unwrap();
    h.add_dest(&vs.key(), &RealServer::new(ip("10.250.3.2"), 8080, 1))
        .unwrap();

    let answers = in_named_netns(client, || {
        (0..4)
            .map(|_| {
                let target: SocketAddr = "10.96.0.100:80".parse().unwrap();
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
                    .expect("connect to the virtual service");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut got = String::new();
                s.read_to_string(&mut got).expect("read answer");
                got
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let mut seen = answers.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        vec!["b1", "b2"],
        "round robin reached both backends: {answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| *a == "b1").count(), 2);

    // The kernel counted the connections on the real servers.
    let dests = h.list_dests(&vs.key()).unwrap();
    let conns: u32 = dests
        .iter()
        .map(|d| d.active_conns + d.inactive_conns)
        .sum();
    assert!(conns >= 4, "{dests:?}");

    // Drain b1: weight 0 sends every new connection to b2.
    h.update_dest(&vs.key(), &RealServer::new(ip("10.250.2.2"), 8080, 0))
        .unwrap();
    let after = in_named_netns(client, || {
        (0..2)
            .map(|_| {
                let target: SocketAddr = "10.96.0.100:80".parse().unwrap();
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut got = String::new();
                s.read_to_string(&mut got).unwrap();
                got
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert_eq!(after, vec!["b2", "b2"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: Vec<usize> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(served, vec![2, 4]);
}

// ------------------------------------------- our bytes vs ipvsadm's ----

/// Netlink messages in a LINKTYPE_NETLINK pcap (16-byte cooked header).
fn pcap_messages(pcap: &[u8]) -> Vec<Vec<u8>> {
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32_at(pcap, off + 8) as usize;
        if off + 16 + incl > pcap.len() {
            break; // tcpdump still writing this one
        }
        let mut m = &pcap[off + 16 + 16.min(incl)..off + 16 + incl];
        off += 16 + incl;
        while m.len() >= 16 {
            let len = u32_at(m, 0) as usize;
            if len < 16 || len > m.len() {
                break;
            }
            out.push(m[..len].to_vec());
            m = &m[((len + 3) & !3).min(m.len())..];
        }
    }
    out
}

/// The first NEW_SERVICE request in a capture, without type, seq and pid.
fn new_service_request(msgs: &[Vec<u8>]) -> Option<Vec<u8>> {
    msgs.iter()
        .find(|m| {
            let ty = u16::from_le_bytes([m[4], m[5]]);
            let flags = u16::from_le_bytes([m[6], m[7]]);
            // generic netlink (>= 0x10, not CTRL), NLM_F_REQUEST, cmd 1
            ty > 0x10 && flags & 1 != 0 && m.len() > 16 && m[16] == 1
        })
        .map(|m| [&m[..4], &m[6..8], &m[16..]].concat())
}

#[test]
fn our_new_service_on_the_wire_equals_ipvsadms() {
    if !in_vm("our_new_service_on_the_wire_equals_ipvsadms") {
        return;
    }
    if Command::new("tcpdump").arg("--version").output().is_err() {
        eprintln!("skipping our_new_service_on_the_wire_equals_ipvsadms: no tcpdump in the VM (install tcpdump on the host)");
        return;
    }
    let _turn = private_netns();
    sh("ip link add nlmon0 type nlmon && ip link set nlmon0 up");
    let pcap = "/tmp/lbdt-ipvs-nlmon.pcap";
    let mut td = Command::new("tcpdump")
        .args(["-Z", "root", "-U", "-i", "nlmon0", "-w", pcap])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    // tcpdump writes the file header once it is capturing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(pcap).map_or(true, |m| m.len() < 24) {
        assert!(Instant::now() < deadline, "tcpdump did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = NetlinkIpvs::new().unwrap();
    h.add_service(&VirtualServer::new(
        ip("10.96.0.1"),
        443,
        Protocol::Tcp,
        "rr",
    ))
    .unwrap();
    let ours = loop {
        let msgs = pcap_messages(&std::fs::read(pcap).unwrap());
        if let Some(m) = new_service_request(&msgs) {
            break m;
        }
        assert!(Instant::now() < deadline, "request not captured");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = td.kill();
    let _ = td.wait();
    let fixture = pcap_messages(include_bytes!("fixtures/ipvs/ipvs-netlink.pcap"));
    // capture.sh's first command: ipvsadm -A -t 10.96.0.1:443 -s rr
    let theirs = new_service_request(&fixture).unwrap();
    assert_eq!(ours, theirs, "lbd's NEW_SERVICE differs from ipvsadm's");
}

#[test]
fn udp_datagrams_are_balanced_through_a_virtual_service() {
    if !in_vm("udp_datagrams_are_balanced_through_a_virtual_service") {
        return;
    }
    let _turn = private_netns();
    let ns = Netns::create("u", 2);
    let (client, backend) = (&ns.names[0], &ns.names[1]);
    for (i, n) in [client, backend].into_iter().enumerate() {
        let net = i + 1;
        sh(&format!(
            "ip link add lbdt-u{net} type veth peer name eth0 netns {n} && \
             ip addr add 10.251.{net}.1/24 dev lbdt-u{net} && ip link set lbdt-u{net} up && \
             ip -n {n} addr add 10.251.{net}.2/24 dev eth0 && ip -n {n} link set eth0 up && \
             ip -n {n} route add default via 10.251.{net}.1"
        ));
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let link = DummyLink::ensure(dummy::connect().unwrap(), KUBE_IPVS0)
            .await
            .unwrap();
        link.bind(ip("10.96.0.53")).await.unwrap();
    });
    let h = NetlinkIpvs::new().unwrap();
    let vs = VirtualServer::new(ip("10.96.0.53"), 53, Protocol::Udp, "rr");
    h.add_service(&vs).unwrap();
    h.add_dest(&vs.key(), &RealServer::new(ip("10.251.2.2"), 5353, 1))
        .unwrap();

    // Backend: answer each datagram with "pong:<payload>", bounded in time.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_named_netns(backend, move || {
        let u = std::net::UdpSocket::bind("10.251.2.2:5353").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let reply = [b"pong:".as_slice(), &buf[..n]].concat();
            u.send_to(&reply, from).unwrap();
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let answer = in_named_netns(client, || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        // The first datagram may wait on ARP: retry a few times.
        for _ in 0..5 {
            u.send_to(b"ping", "10.96.0.53:53").unwrap();
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        None
    })
    .join()
    .unwrap();
    server.join().unwrap();
    let (text, from) = answer.expect("an answer through IPVS");
    assert_eq!(text, "pong:ping");
    // Masquerade in reverse: the answer comes from the service address.
    assert_eq!(from, "10.96.0.53:53".parse::<SocketAddr>().unwrap());
}

/// Figures for the kernel path alone (the engine's benchmark covers syncs):
/// printed with --nocapture; the bound only catches pathologies.
#[test]
fn bulk_programming_figures() {
    if !in_vm("bulk_programming_figures") {
        return;
    }
    let _turn = private_netns();
    let h = NetlinkIpvs::new().unwrap();
    let (n_svc, n_dest) = (500u32, 5u32);
    let vss: Vec<VirtualServer> = (0..n_svc)
        .map(|i| {
            // 10.99/16: no other test uses it.
            let a = IpAddr::from([10, 99, (i / 250) as u8, (i % 250) as u8 + 1]);
            VirtualServer::new(a, 80, Protocol::Tcp, "rr")
        })
        .collect();
    let t0 = Instant::now();
    for (i, vs) in vss.iter().enumerate() {
        h.add_service(vs).unwrap();
        for d in 0..n_dest {
            let a = IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8]);
            h.add_dest(&vs.key(), &RealServer::new(a, 8000 + d as u16, 1))
                .unwrap();
        }
    }
    let add = t0.elapsed();
    let t1 = Instant::now();
    let listed = h.list_services().unwrap();
    let list = t1.elapsed();
    // The private namespace holds these alone: the listing is exactly them.
    let mut got: Vec<_> = listed.iter().map(|(vs, _)| vs.key()).collect();
    let mut want: Vec<_> = vss.iter().map(|vs| vs.key()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let ours = &listed;
    assert!(ours.iter().all(|(_, d)| d.len() == n_dest as usize));
    let t2 = Instant::now();
    h.update_dest(&vss[0].key(), &RealServer::new(ip("10.244.0.0"), 8000, 0))
        .unwrap();
    let one = t2.elapsed();
    for vs in &vss {
        h.delete_service(&vs.key()).unwrap();
    }
    let ops = n_svc * (1 + n_dest);
    eprintln!(
        "figures (TCG guest): {ops} adds in {add:?} ({:?}/op), list of {n_svc} services + {} dests in {list:?}, one SET_DEST in {one:?}",
        add / ops,
        n_svc * n_dest
    );
    assert!(add < Duration::from_secs(120) && list < Duration::from_secs(60));
}

#[test]
fn batched_ops_get_their_own_results_from_the_kernel() {
    if !in_vm("batched_ops_get_their_own_results_from_the_kernel") {
        return;
    }
    let _turn = private_netns();
    let h = NetlinkIpvs::new().unwrap();
    let a = VirtualServer::new(ip("10.98.0.1"), 80, Protocol::Tcp, "rr");
    let missing = VirtualServer::new(ip("10.98.0.2"), 80, Protocol::Tcp, "rr");
    let bad = VirtualServer::new(ip("10.98.0.3"), 80, Protocol::Tcp, "nosuchsched");
    let d = |n: u8, w: u32| RealServer::new(IpAddr::from([10, 244, 98, n]), 8080, w);
    let (d1, d2, d3, d1w5) = (d(1, 1), d(2, 1), d(3, 1), d(1, 5));
    let gone = DestKey {
        addr: ip("10.244.98.9"),
        port: 8080,
    };
    let (ak, mk, bk) = (a.key(), missing.key(), bad.key());
    let ops = [
        IpvsOp::AddService(&a),
        IpvsOp::AddDest(&ak, &d1),
        IpvsOp::AddDest(&ak, &d2),
        IpvsOp::AddService(&a),
        IpvsOp::AddDest(&mk, &d3),
        IpvsOp::AddService(&bad),
        IpvsOp::AddDest(&bk, &d3),
        IpvsOp::DeleteDest(&ak, &gone),
        IpvsOp::AddDest(&ak, &d2),
        IpvsOp::UpdateDest(&ak, &d1w5),
        IpvsOp::AddDest(&ak, &d3),
        IpvsOp::DeleteDest(&ak, &d3.key()),
    ];
    let r = h.apply_batch(&ops);
    let kind = |r: &Result<(), IpvsError>| match r {
        Ok(()) => "ok",
        Err(IpvsError::Exists { .. }) => "exists",
        Err(IpvsError::NotFound { .. }) => "not_found",
        Err(IpvsError::Invalid { .. }) => "invalid",
        Err(e) => panic!("unexpected {e}"),
    };
    assert_eq!(
        r.iter().map(kind).collect::<Vec<_>>(),
        vec![
            "ok",
            "ok",
            "ok",
            "exists",
            // A dest of a service that does not exist, and of one whose
            // add failed in the same write: each fails on its own.
            "not_found",
            "invalid",
            "not_found",
            "not_found",
            "exists",
            "ok",
            "ok",
            "ok"
        ]
    );
    assert!(
        matches!(&r[4], Err(IpvsError::NotFound { op: "add_dest", target }) if target.contains("10.98.0.2")),
        "{:?}",
        r[4]
    );
    assert_eq!(
        ipvsadm_ln(),
        BTreeSet::from([adm(
            "TCP 10.98.0.1:80",
            "rr",
            "",
            &["10.244.98.1:8080 Masq 5", "10.244.98.2:8080 Masq 1"]
        )])
    );

    // Many writes' worth: 400 services x 5 dests, then all deleted, in
    // order, every op acknowledged.
    let vss: Vec<VirtualServer> = (0..400u32)
        .map(|i| {
            let addr = IpAddr::from([10, 98, 1 + (i / 250) as u8, (i % 250) as u8 + 1]);
            VirtualServer::new(addr, 80, Protocol::Tcp, "rr")
        })
        .collect();
    let keys: Vec<_> = vss.iter().map(|v| v.key()).collect();
    let dests: Vec<RealServer> = (0..5).map(|n| d(10 + n, 1)).collect();
    let mut ops = Vec::new();
    for (vs, k) in vss.iter().zip(&keys) {
        ops.push(IpvsOp::AddService(vs));
        ops.extend(dests.iter().map(|rs| IpvsOp::AddDest(k, rs)));
    }
    let t = Instant::now();
    let r = h.apply_batch(&ops);
    let took = t.elapsed();
    assert_eq!(r.len(), ops.len());
    assert!(
        r.iter().all(Result::is_ok),
        "{:?}",
        r.iter().find(|r| r.is_err())
    );
    let listed = h.list_services().unwrap();
    assert_eq!(listed.len(), 401);
    assert!(listed
        .iter()
        .filter(|(vs, _)| keys.contains(&vs.key()))
        .all(|(_, d)| d.len() == 5));
    let dels: Vec<IpvsOp<'_>> = keys.iter().map(IpvsOp::DeleteService).collect();
    assert!(h.apply_batch(&dels).iter().all(Result::is_ok));
    assert_eq!(h.list_services().unwrap().len(), 1);
    eprintln!(
        "figures (TCG guest): {} batched adds in {took:?} ({:?}/op)",
        ops.len(),
        took / ops.len() as u32
    );
}

/// `lbd proxy cleanup-kube-proxy --ipvs` on a real IPVS table, judged by
/// `ipvsadm -Ln` and `ip link`: kube-proxy's virtual servers (on a
/// kube-ipvs0 address, and NodePorts in the range on a host address) and
/// the kube-ipvs0 dummy go; a service on another address and one on a
/// host address outside the NodePort range stay; `--dry-run` changes
/// nothing; a second run finds nothing.
#[test]
fn cleanup_kube_proxy_ipvs_removes_only_kube_proxys_services() {
    if !in_vm("cleanup_kube_proxy_ipvs_removes_only_kube_proxys_services") {
        return;
    }
    let _turn = private_netns();
    sh("ip link add kube-ipvs0 type dummy && ip addr add 10.96.0.1/32 dev kube-ipvs0");
    sh("ip link add eth9 type dummy && ip addr add 192.168.50.10/24 dev eth9 && ip link set eth9 up");
    sh("ipvsadm -A -t 10.96.0.1:443 -s rr && ipvsadm -a -t 10.96.0.1:443 -r 10.244.0.5:6443 -m");
    sh("ipvsadm -A -u 192.168.50.10:30053 -s rr && ipvsadm -a -u 192.168.50.10:30053 -r 10.244.0.6:53 -m");
    sh("ipvsadm -A -t 192.168.50.10:8080 -s rr");
    sh("ipvsadm -A -t 10.200.0.1:80 -s wrr");
    let before = ipvsadm_ln();
    assert_eq!(before.len(), 4, "{before:#?}");
    let lbd = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args([
                "proxy",
                "cleanup-kube-proxy",
                "--ipvs",
                "-c",
                "/nonexistent/lbd.yaml",
            ])
            .args(extra)
            .output()
            .expect("run lbd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = lbd(&["--dry-run"]);
    assert_eq!(code, Some(0), "dry run: {out}{err}");
    assert!(
        out.contains("10.96.0.1:443") && out.contains("30053"),
        "{out}"
    );
    assert_eq!(ipvsadm_ln(), before, "a dry run changed the table");
    assert!(sh("ip -o link show").contains("kube-ipvs0"));

    let (code, out, err) = lbd(&[]);
    assert_eq!(code, Some(0), "cleanup: {out}{err}");
    let after: BTreeSet<String> = ipvsadm_ln().into_iter().map(|s| s.id).collect();
    assert_eq!(
        after,
        BTreeSet::from([
            "TCP 192.168.50.10:8080".to_string(),
            "TCP 10.200.0.1:80".to_string()
        ])
    );
    assert!(
        !sh("ip -o link show").contains("kube-ipvs0"),
        "kube-ipvs0 left"
    );
    assert!(sh("ip -o link show").contains("eth9"));

    let (code, out, err) = lbd(&[]);
    assert_eq!(code, Some(0), "second run: {out}{err}");
    assert!(out.contains("nothing to remove"), "{out}");
}
