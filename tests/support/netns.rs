//! A reusable network-namespace lab for integration tests (root only).
//!
//! `Lab::new("vrrp")` gives namespaces named `lbdt-vrrp-<pid>-<n>-<name>`, a
//! bridge namespace joining them over veth pairs, and addresses that exist
//! only inside. Everything is removed on drop, panics included: processes
//! still running in the namespaces are killed first, then the namespaces
//! are deleted (which deletes their veths). Leftovers of a previous run
//! whose process is gone are removed at start.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root (network namespaces)");
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command to completion, returning its output (never panics).
pub fn run_output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command and panics with its stderr if it fails.
pub fn run(args: &[&str]) -> String {
    let out = run_output(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Labs of one test process running in parallel get distinct names.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    bridge: Option<String>,
    veths: u32,
    children: Vec<Child>,
}

impl Lab {
    /// `area` keeps labs of different test files apart.
    pub fn new(area: &str) -> Lab {
        let base = format!("lbdt-{area}-");
        remove_stale(&base);
        Lab {
            prefix: format!(
                "{base}{}-{}-",
                std::process::id(),
                NEXT_LAB.fetch_add(1, Ordering::Relaxed)
            ),
            namespaces: Vec::new(),
            bridge: None,
            veths: 0,
            children: Vec::new(),
        }
    }

    /// Full name of the namespace `name` of this lab.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Creates a namespace with loopback up; returns its full name.
    pub fn add_ns(&mut self, name: &str) -> String {
        let ns = self.name(name);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace holding bridge `br0`, created on first use.
    pub fn bridge(&mut self) -> String {
        if let Some(b) = &self.bridge {
            return b.clone();
        }
        let ns = self.add_ns("br");
        run(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
        // No STP delay, no multicast snooping: VRRP multicast must flood
        // from the first packet.
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        self.bridge = Some(ns.clone());
        ns
    }

    /// Connects namespace `ns` to the bridge with a veth named `ifname`
    /// inside `ns`, brings it up and adds `addrs` (CIDR strings). Returns
    /// the bridge-side port name.
    pub fn attach(&mut self, ns: &str, ifname: &str, addrs: &[&str]) -> String {
        let br = self.bridge();
        self.veths += 1;
        let port = format!("p{}", self.veths);
        // Created inside the bridge namespace so no name reaches the host.
        run(&[
            "ip", "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns",
            ns,
        ]);
        run(&["ip", "-n", &br, "link", "set", &port, "master", "br0", "up"]);
        for a in addrs {
            let mut args = vec!["ip", "-n", ns, "addr", "add", a, "dev", ifname];
            if a.contains(':') {
                // Usable at once: no duplicate address detection wait.
                args.push("nodad");
            }
            run(&args);
        }
        run(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        port
    }

    /// Runs a command inside `ns` and returns its output.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run_output(&full)
    }

    /// Like `exec` but panics on failure; returns stdout.
    pub fn sh(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts a long-running process inside `ns`; it is killed on drop of
    /// the lab unless the test reaps it first. Returns its index.
    pub fn spawn(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        stderr_to: Option<&std::path::Path>,
    ) -> usize {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null());
        match stderr_to {
            Some(p) => {
                let f = std::fs::File::create(p).expect("log file");
                cmd.stderr(f.try_clone().expect("dup")).stdout(f);
            }
            None => {
                cmd.stderr(Stdio::null()).stdout(Stdio::null());
            }
        }
        // `ip netns exec` execs the program: the pid is the program's.
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// Sends `sig` to a spawned process.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.children[i].id().to_string();
        run(&["kill", "-s", sig, &pid]);
    }

    /// Waits up to `limit` for a spawned process to exit.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.children[i].try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Whether `ip` (an address without prefix) is configured in `ns`.
    pub fn has_addr(&self, ns: &str, ip: &str) -> bool {
        let out = run_output(&["ip", "-n", ns, "-o", "addr", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(ip))
    }

    /// `ip -o addr show` inside `ns`, for assertions and failure messages.
    pub fn addrs(&self, ns: &str) -> String {
        String::from_utf8_lossy(&run_output(&["ip", "-n", ns, "-o", "addr", "show"]).stdout)
            .into_owned()
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

/// Polls `f` every 10 ms until it holds or `limit` passes; returns the time
/// it took, None on timeout.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
            let _ = run_output(&["ip", "netns", "del", ns]);
        }
    }
}

fn kill_all_in(ns: &str) {
    let out = run_output(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = run_output(&["kill", "-9", pid]);
    }
}

/// Deletes namespaces `<base><pid>-*` whose test process no longer exists.
fn remove_stale(base: &str) {
    let out = run_output(&["ip", "netns", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(base) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            let _ = run_output(&["ip", "netns", "del", name]);
        }
    }
}
