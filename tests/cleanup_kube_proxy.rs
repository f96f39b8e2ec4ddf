//! `lbd proxy cleanup-kube-proxy` against the real tools, in a network
//! namespace (root only; iptables, ipsets and nftables are per namespace):
//! kube-proxy-like leftovers beside the kubelet's, a user's and lbd's own;
//! a dry run changes nothing, a run removes exactly kube-proxy's, a second
//! run finds nothing; a process named kube-proxy makes it refuse; `--ipvs`
//! removes kube-ipvs0 unless lbd's proxy is configured.
//!
//! Nothing here sends a packet.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use support::netns::{require_root, Lab};

/// The fake kube-proxy is seen host-wide (/proc is not per network
/// namespace): the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const IPV4: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:MY-RULES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 198.51.100.0/24 -j MY-RULES
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A MY-RULES -j MASQUERADE
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:MY-RULES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -p tcp -m tcp --dport 22 -j MY-RULES
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A MY-RULES -m set --match-set myset src -j ACCEPT
COMMIT
*mangle
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
"#;

const IPV6: &str = r#"*nat
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
COMMIT
"#;

/// What the legacy backend holds on a node that switched backends once.
const LEGACY: &str = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-DROP - [0:0]
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-DROP -j MARK --or-mark 0x8000
COMMIT
"#;

fn have(program: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

/// Root and the tools, else a printed reason and false.
fn ready(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    for p in [
        "iptables-nft-restore",
        "ip6tables-nft-restore",
        "ipset",
        "nft",
    ] {
        if !have(p) {
            eprintln!("skipping {test}: {p} not installed");
            return false;
        }
    }
    true
}

fn lbd(lab: &Lab, ns: &str, args: &[&str]) -> Output {
    let mut full = vec![env!("CARGO_BIN_EXE_lbd"), "proxy", "cleanup-kube-proxy"];
    full.extend_from_slice(args);
    lab.exec(ns, &full)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Feeds `doc` to `program` inside `ns`.
fn restore(ns: &str, program: &str, doc: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program, "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(doc.as_bytes())
        .expect("write rules");
    child.wait_with_output().expect("wait")
}

/// A namespace with kube-proxy's leftovers beside the kubelet's, a user's
/// and lbd's own nft table. Returns whether the legacy backend was set up
/// too (it needs the x_tables modules).
fn leftovers(lab: &Lab, ns: &str) -> bool {
    for set in [
        &["ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port"][..],
        &[
            "ipset",
            "create",
            "KUBE-6-CLUSTER-IP",
            "hash:ip,port",
            "family",
            "inet6",
        ],
        &["ipset", "create", "myset", "hash:ip"],
    ] {
        lab.sh(ns, set);
    }
    for (program, doc) in [
        ("iptables-nft-restore", IPV4),
        ("ip6tables-nft-restore", IPV6),
    ] {
        let o = restore(ns, program, doc);
        assert!(
            o.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for t in [
        "add table ip kube-proxy",
        "add chain ip kube-proxy services",
        "add table ip6 kube-proxy",
        "add table inet mytable",
        "add table inet lbd-proxy",
    ] {
        let mut args = vec!["nft"];
        args.extend(t.split(' '));
        lab.sh(ns, &args);
    }
    if !have("iptables-legacy-restore") {
        eprintln!("note: iptables-legacy not installed; its part is not tested");
        return false;
    }
    let o = restore(ns, "iptables-legacy-restore", LEGACY);
    if !o.status.success() {
        eprintln!(
            "note: iptables-legacy unusable here ({}); its part is not tested",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return false;
    }
    true
}

/// Every table, set and nft table of the namespace, comments (timestamps)
/// and counters left out.
fn snapshot(lab: &Lab, ns: &str) -> String {
    let mut out = String::new();
    for cmd in [
        &["iptables-nft-save"][..],
        &["ip6tables-nft-save"],
        &["iptables-legacy-save"],
        &["ipset", "list", "-n"],
        &["nft", "list", "tables"],
    ] {
        if !have(cmd[0]) {
            continue;
        }
        out.push_str(&format!("== {}\n", cmd.join(" ")));
        for line in lab.sh(ns, cmd).lines() {
            if line.starts_with('#') {
                continue;
            }
            let line = match line.find(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn kube_proxy_running() -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.take(1 << 20).flatten().any(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "kube-proxy")
            })
        })
        .unwrap_or(false)
}

#[test]
fn removes_exactly_kube_proxys_leftovers() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !ready("removes_exactly_kube_proxys_leftovers") {
        return;
    }
    if kube_proxy_running() {
        eprintln!("skipping removes_exactly_kube_proxys_leftovers: a kube-proxy runs on this host");
        return;
    }
    let mut lab = Lab::new("cu");
    let ns = lab.add_ns("node");
    let legacy = leftovers(&lab, &ns);
    let before = snapshot(&lab, &ns);
    for kube in ["KUBE-SERVICES", "KUBE-CLUSTER-IP", "kube-proxy"] {
        assert!(before.contains(kube), "setup: {kube} missing:\n{before}");
    }

    // A dry run lists and changes nothing.
    let dry = lbd(&lab, &ns, &["--dry-run"]);
    let text = stdout(&dry);
    assert_eq!(dry.status.code(), Some(0), "{text}");
    assert_eq!(snapshot(&lab, &ns), before, "the dry run changed something");
    for line in [
        "would remove: iptables-nft nat: rule -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "would remove: iptables-nft nat: chain KUBE-SERVICES",
        "would remove: iptables-nft filter: chain KUBE-FORWARD",
        "would remove: iptables-nft mangle: chain KUBE-PROXY-CANARY",
        "would remove: ip6tables-nft nat: chain KUBE-SERVICES",
        "would remove: ipset KUBE-CLUSTER-IP",
        "would remove: ipset KUBE-6-CLUSTER-IP",
        "would remove: nft table ip kube-proxy",
        "would remove: nft table ip6 kube-proxy",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    if legacy {
        assert!(text.contains("would remove: iptables-legacy nat: chain KUBE-SERVICES"));
    }
    assert!(text.contains("nothing changed"), "{text}");

    // The real run.
    let run = lbd(&lab, &ns, &[]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert!(text.contains("removed: ipset KUBE-CLUSTER-IP"), "{text}");
    assert!(text.contains(", 0 failed"), "{text}");
    assert!(!text.contains("failed:"), "{text}");

    let nat = lab.sh(&ns, &["iptables-nft-save", "-t", "nat"]);
    let filter = lab.sh(&ns, &["iptables-nft-save", "-t", "filter"]);
    let mangle = lab.sh(&ns, &["iptables-nft-save", "-t", "mangle"]);
    let nat6 = lab.sh(&ns, &["ip6tables-nft-save", "-t", "nat"]);
    let filter6 = lab.sh(&ns, &["ip6tables-nft-save", "-t", "filter"]);
    for gone in [
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-NODE-PORT",
    ] {
        assert!(!nat.contains(gone), "{gone} left in nat:\n{nat}");
    }
    assert!(!filter.contains("KUBE-FORWARD"), "{filter}");
    assert!(!mangle.contains("KUBE-PROXY-CANARY"), "{mangle}");
    assert!(!nat6.contains("KUBE-SERVICES"), "{nat6}");
    // The kubelet's and the user's, rules included.
    for (table, kept) in [
        (&nat, ":KUBE-KUBELET-CANARY - "),
        (&nat, "-A POSTROUTING -s 198.51.100.0/24 -j MY-RULES"),
        (&nat, "-A MY-RULES -j MASQUERADE"),
        (&filter, "-A INPUT -j KUBE-FIREWALL"),
        (&filter, "-A OUTPUT -j KUBE-FIREWALL"),
        (&filter, "block incoming localnet connections"),
        (&filter, ":KUBE-KUBELET-CANARY - "),
        (&filter, "-A INPUT -p tcp -m tcp --dport 22 -j MY-RULES"),
        (
            &filter,
            "-A MY-RULES -m set --match-set myset src -j ACCEPT",
        ),
        (&mangle, ":KUBE-KUBELET-CANARY - "),
        (&filter6, "-A INPUT -j KUBE-FIREWALL"),
    ] {
        assert!(table.contains(kept), "{kept:?} gone:\n{table}");
    }
    let sets = lab.sh(&ns, &["ipset", "list", "-n"]);
    assert_eq!(sets.trim(), "myset", "{sets}");
    let tables = lab.sh(&ns, &["nft", "list", "tables"]);
    assert!(!tables.contains("table ip kube-proxy"), "{tables}");
    assert!(!tables.contains("table ip6 kube-proxy"), "{tables}");
    assert!(tables.contains("table inet mytable"), "{tables}");
    assert!(tables.contains("table inet lbd-proxy"), "{tables}");
    if legacy {
        let l = lab.sh(&ns, &["iptables-legacy-save", "-t", "nat"]);
        assert!(!l.contains("KUBE-SERVICES"), "{l}");
        assert!(
            l.contains("-A KUBE-MARK-DROP -j MARK"),
            "the kubelet's: {l}"
        );
    }

    // Idempotent.
    let after = snapshot(&lab, &ns);
    let again = lbd(&lab, &ns, &[]);
    let text = stdout(&again);
    assert_eq!(again.status.code(), Some(0), "{text}");
    assert!(text.contains("nothing to remove"), "{text}");
    assert_eq!(snapshot(&lab, &ns), after);
}

/// A process named kube-proxy, killed on drop.
struct FakeKubeProxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl FakeKubeProxy {
    fn start() -> FakeKubeProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("kube-proxy");
        std::fs::copy("/bin/sleep", &bin).expect("copy sleep");
        // Spawn returns once the exec happened: comm is set by then.
        let child = Command::new(&bin)
            .arg("120")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the fake kube-proxy");
        FakeKubeProxy { child, _dir: dir }
    }
}

impl Drop for FakeKubeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn refused_while_kube_proxy_runs_unless_forced() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !ready("refused_while_kube_proxy_runs_unless_forced") {
        return;
    }
    let mut lab = Lab::new("cu");
    let ns = lab.add_ns("node");
    leftovers(&lab, &ns);
    let fake = FakeKubeProxy::start();

    let before = snapshot(&lab, &ns);
    let refused = lbd(&lab, &ns, &[]);
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("refused: kube-proxy is running"), "{text}");
    assert!(text.contains(&fake.child.id().to_string()), "{text}");
    assert_eq!(snapshot(&lab, &ns), before, "refused, yet changed");

    let forced = lbd(&lab, &ns, &["--force"]);
    let text = stdout(&forced);
    assert_eq!(forced.status.code(), Some(0), "{text}");
    assert!(
        text.contains("removed: iptables-nft nat: chain KUBE-SERVICES"),
        "{text}"
    );
    drop(fake);
}

#[test]
fn ipvs_removes_kube_ipvs0_unless_lbds_proxy_is_configured() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !ready("ipvs_removes_kube_ipvs0_unless_lbds_proxy_is_configured") {
        return;
    }
    if kube_proxy_running() {
        eprintln!("skipping ipvs_removes_kube_ipvs0...: a kube-proxy runs on this host");
        return;
    }
    let mut lab = Lab::new("cu");
    let ns = lab.add_ns("node");
    // kube-proxy's kube-ipvs0 is a dummy; a kernel without dummy links
    // gets a veth of that name instead, which must be kept.
    let dummy = lab
        .exec(&ns, &["ip", "link", "add", "kube-ipvs0", "type", "dummy"])
        .status
        .success();
    if !dummy {
        eprintln!("note: no dummy links in this kernel; kube-ipvs0 is a veth, which must stay");
        lab.sh(
            &ns,
            &[
                "ip",
                "link",
                "add",
                "kube-ipvs0",
                "type",
                "veth",
                "peer",
                "name",
                "kipvs-peer",
            ],
        );
    }
    lab.sh(
        &ns,
        &["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
    )
    .expect("kubeconfig");
    let cfg = dir.path().join("lbd.yaml");
    std::fs::write(
        &cfg,
        format!("proxy:\n  mode: ipvs\n  kubeconfig: {}\n", kc.display()),
    )
    .expect("config");
    let cfg = cfg.display().to_string();

    let refused = lbd(&lab, &ns, &["--ipvs", "-c", &cfg]);
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("lbd's proxy is configured"), "{text}");
    assert!(lab
        .exec(&ns, &["ip", "link", "show", "kube-ipvs0"])
        .status
        .success());

    // Without --ipvs the link is never touched.
    let plain = lbd(&lab, &ns, &["-c", &cfg]);
    assert_eq!(plain.status.code(), Some(0), "{}", stdout(&plain));
    assert!(lab
        .exec(&ns, &["ip", "link", "show", "kube-ipvs0"])
        .status
        .success());

    let absent = dir.path().join("absent.yaml").display().to_string();
    let dry = lbd(&lab, &ns, &["--ipvs", "--dry-run", "-c", &absent]);
    let text = stdout(&dry);
    assert_eq!(dry.status.code(), Some(0), "{text}");
    if !dummy {
        assert!(
            text.contains("kept: link kube-ipvs0: not a dummy link"),
            "{text}"
        );
        assert!(!text.contains("link kube-ipvs0\n"), "{text}");
        let run = lbd(&lab, &ns, &["--ipvs", "-c", &absent]);
        assert_eq!(run.status.code(), Some(0), "{}", stdout(&run));
        assert!(lab
            .exec(&ns, &["ip", "link", "show", "kube-ipvs0"])
            .status
            .success());
        return;
    }
    assert!(text.contains("would remove: link kube-ipvs0"), "{text}");
    assert!(lab
        .exec(&ns, &["ip", "link", "show", "kube-ipvs0"])
        .status
        .success());

    let run = lbd(&lab, &ns, &["--ipvs", "-c", &absent]);
    let text = stdout(&run);
    assert_eq!(run.status.code(), Some(0), "{text}");
    assert!(text.contains("removed: link kube-ipvs0"), "{text}");
    assert!(!lab
        .exec(&ns, &["ip", "link", "show", "kube-ipvs0"])
        .status
        .success());
    let again = lbd(&lab, &ns, &["--ipvs", "-c", &absent]);
    assert!(
        stdout(&again).contains("nothing to remove"),
        "{}",
        stdout(&again)
    );
}
