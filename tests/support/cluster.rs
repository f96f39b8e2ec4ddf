//! Two or three `lbd run` nodes in network namespaces on one bridge
//! (10.213.NET.1-3, fd00:db8:NET::1-3, VIP .100), as the VRRP tests run
//! them: config, start, signals, status, logs, the RFC timers of each node.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{admin_section, node_section, vrrp_section, VrrpInstanceYaml};
use super::lbd::{lbd_bin, spawn_in_ns};
use super::netns::{run, wait_for, Lab};
use super::vrrp::{master_down_interval, skew_time, VipWatch};

/// Per-instance settings of one test scenario.
#[derive(Clone)]
pub struct Scenario {
    pub version: u8,
    pub interval_ms: u64,
    pub v6: bool,
    pub preempt: bool,
    pub unicast: bool,
    pub vip_lifetime: Option<&'static str>,
    pub auth_pass: Option<&'static str>,
    /// Extra YAML lines appended to the instance (indented 6 spaces).
    pub extra: String,
    /// Whole `tcplb:` section, if any.
    pub tcplb: String,
    /// The VRRP interface in every node (IFNAMSIZ: at most 15 bytes).
    pub ifname: String,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            version: 3,
            interval_ms: 100,
            v6: false,
            preempt: true,
            unicast: false,
            vip_lifetime: None,
            auth_pass: None,
            extra: String::new(),
            tcplb: String::new(),
            ifname: "eth0".into(),
        }
    }
}

pub struct Cluster {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub ns: Vec<String>,
    /// Lab child index of each node's lbd, if running.
    pub procs: Vec<Option<usize>>,
    pub net: u8,
    pub sc: Scenario,
    pub prios: Vec<u8>,
}

impl Cluster {
    /// Three nodes 10.213.<net>.1-3 (fd00:db8:<net>::1-3), VIP .100.
    pub fn new(net: u8, sc: Scenario, prios: &[u8]) -> Cluster {
        let mut lab = Lab::new("vrrp");
        let mut ns = Vec::new();
        for i in 1..=prios.len() {
            let n = lab.add_ns(&format!("n{i}"));
            let v4 = format!("10.213.{net}.{i}/24");
            let v6 = format!("fd00:db8:{net}::{i}/64");
            lab.attach(&n, &sc.ifname, &[&v4, &v6]);
            ns.push(n);
        }
        // IPv6 link-local addresses need a moment (DAD) before they are
        // usable as VRRP source.
        if sc.v6 {
            for n in &ns {
                let ok = wait_for(Duration::from_secs(5), || {
                    let a = lab.addrs(n);
                    a.contains("fe80::") && !a.contains("tentative")
                });
                assert!(
                    ok.is_some(),
                    "no link-local address in {n}: {}",
                    lab.addrs(n)
                );
            }
        }
        Cluster {
            lab,
            dir: tempfile::tempdir().unwrap(),
            procs: vec![None; prios.len()],
            ns,
            net,
            sc,
            prios: prios.to_vec(),
        }
    }

    pub fn vip(&self) -> IpAddr {
        if self.sc.v6 {
            format!("fd00:db8:{}::100", self.net).parse().unwrap()
        } else {
            format!("10.213.{}.100", self.net).parse().unwrap()
        }
    }

    pub fn config(&self, i: usize) -> String {
        let sc = &self.sc;
        let net = self.net;
        let vip = if sc.v6 {
            format!("fd00:db8:{net}::100/64")
        } else {
            format!("10.213.{net}.100/24")
        };
        let mut inst = VrrpInstanceYaml::new(self.prios[i], &vip);
        inst.version = sc.version;
        inst.advert_interval = self.interval();
        inst.preempt = Some(sc.preempt);
        if sc.unicast {
            inst.unicast_peers = (1..=self.prios.len())
                .filter(|j| *j != i + 1)
                .map(|j| {
                    if sc.v6 {
                        format!("fd00:db8:{net}::{j}")
                    } else {
                        format!("10.213.{net}.{j}")
                    }
                })
                .collect();
        }
        inst.vip_lifetime = sc.vip_lifetime.map(str::to_string);
        inst.auth_pass = sc.auth_pass.map(str::to_string);
        inst.extra = sc.extra.clone();
        inst.interface = sc.ifname.clone();
        let sock = self.socket(i);
        node_section(&format!("n{}", i + 1))
            + &vrrp_section(&[inst])
            + &sc.tcplb
            + &admin_section(&sock)
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}.log", i + 1))
    }

    pub fn start(&mut self, i: usize) {
        let conf = self.dir.path().join(format!("n{}.yaml", i + 1));
        std::fs::write(&conf, self.config(i)).unwrap();
        self.start_with(i, &conf);
    }

    pub fn start_with(&mut self, i: usize, conf: &std::path::Path) {
        let (ns, log) = (self.ns[i].clone(), self.log(i));
        self.procs[i] = Some(spawn_in_ns(&mut self.lab, &ns, conf, &log));
    }

    pub fn start_all(&mut self) {
        for i in 0..self.ns.len() {
            self.start(i);
        }
    }

    pub fn kill(&mut self, i: usize, sig: &str) {
        let idx = self.procs[i].take().expect("node not running");
        self.lab.signal(idx, sig);
        let st = self.lab.wait_exit(idx, Duration::from_secs(5));
        assert!(st.is_some(), "n{} did not exit on {sig}", i + 1);
    }

    pub fn watch(&self) -> VipWatch {
        VipWatch::start(&self.ns, &self.sc.ifname, self.vip())
    }

    pub fn logs(&self) -> String {
        (0..self.ns.len())
            .map(|i| {
                format!(
                    "--- n{} ---\n{}",
                    i + 1,
                    std::fs::read_to_string(self.log(i)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Master_Down_Interval of node `i` as RFC 5798 section 6.1 defines it.
    pub fn master_down(&self, i: usize) -> Duration {
        master_down_interval(self.sc.version, self.interval(), self.prios[i])
    }

    pub fn skew(&self, i: usize) -> Duration {
        skew_time(self.sc.version, self.interval(), self.prios[i])
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.sc.interval_ms)
    }
}

impl Cluster {
    /// Node `i`'s admin socket.
    /// Node `i`'s admin socket, in a directory of its own: lbd keeps its
    /// VRRP state files beside it, and two nodes sharing one would read
    /// each other's.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.run_dir(i).join("lbd.sock")
    }

    /// Node `i`'s runtime directory (its /run/lbd): socket, state files.
    pub fn run_dir(&self, i: usize) -> PathBuf {
        let d = self.dir.path().join(format!("n{}", i + 1));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `lbd status --json` of node `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let sock = self.socket(i);
        let out = run(&[
            lbd_bin(),
            "status",
            "--json",
            "--answered",
            "--socket",
            sock.to_str().unwrap(),
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The first instance's status on node `i`.
    pub fn instance(&self, i: usize) -> serde_json::Value {
        self.status(i)["vrrp"][0].clone()
    }

    /// Like [`instance`](Self::instance), None while node `i` does not
    /// answer (starting, stopped).
    pub fn try_instance(&self, i: usize) -> Option<serde_json::Value> {
        let sock = self.socket(i);
        let out = super::netns::run_output(&[
            lbd_bin(),
            "status",
            "--json",
            "--answered",
            "--socket",
            sock.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["vrrp"][0].clone())
    }

    /// Rewrites node `i`'s config (as `config(i)` with `edit` applied) and
    /// sends SIGHUP.
    pub fn reload(&mut self, i: usize, edit: impl Fn(String) -> String) {
        let conf = self.dir.path().join(format!("n{}.yaml", i + 1));
        std::fs::write(&conf, edit(self.config(i))).unwrap();
        let idx = self.procs[i].expect("node not running");
        self.lab.signal(idx, "HUP");
    }

    /// The supervisor's pid of node `i` (what systemd and kubelet see).
    pub fn pid(&mut self, i: usize) -> u32 {
        let idx = self.procs[i].expect("node not running");
        self.lab.child(idx).id()
    }

    /// The worker's pid of node `i`: the supervisor's child named
    /// `lbd-worker` (waits for it to exist, at most 5 s).
    pub fn worker_pid(&mut self, i: usize) -> u32 {
        let parent = self.pid(i);
        let found = wait_for(Duration::from_secs(5), || worker_of(parent).is_some());
        assert!(found.is_some(), "no worker under supervisor {parent}");
        worker_of(parent).unwrap()
    }
}

/// The `lbd-worker` child of process `parent`, if any.
pub fn worker_of(parent: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == lbd::supervisor::WORKER_NAME)
        })
}

/// SIGKILL of an `lbd run` supervisor and its worker at once (a node
/// crash, the cgroup killed): both stopped first, so neither can react to
/// the other's death. Returns the worker's PID, if there was one.
pub fn kill_process_tree(supervisor: u32) -> Option<u32> {
    let worker = worker_of(supervisor);
    let pids: Vec<String> = worker
        .into_iter()
        .chain([supervisor])
        .map(|p| p.to_string())
        .collect();
    for sig in ["-STOP", "-KILL"] {
        let mut cmd = vec!["kill", sig];
        cmd.extend(pids.iter().map(String::as_str));
        run(&cmd);
    }
    worker
}

impl Cluster {
    /// The whole process tree of node `i` dies at once
    /// ([`kill_process_tree`]); waits until both are gone.
    pub fn kill_tree(&mut self, i: usize) {
        let worker = kill_process_tree(self.pid(i));
        let idx = self.procs[i].take().unwrap();
        let st = self.lab.wait_exit(idx, Duration::from_secs(5));
        assert!(st.is_some(), "n{} did not die", i + 1);
        if let Some(w) = worker {
            let gone = wait_for(Duration::from_secs(5), || {
                !std::path::Path::new(&format!("/proc/{w}")).exists()
                    || std::fs::read_to_string(format!("/proc/{w}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            });
            assert!(gone.is_some(), "worker {w} survived SIGKILL");
        }
    }
}
