//! A real Kubernetes control plane for tests: etcd and kube-apiserver built
//! from the Go modules of kubernetes v1.37.2 by `bench/kube-peers.sh`, run
//! on loopback only (free ports, data and certificates in a tempdir).
//!
//! - [`KubeCluster::start`] returns None, after printing why, where the
//!   binaries cannot be had (no Go): the test then skips.
//! - Clients reach the apiserver directly ([`KubeCluster::client`]) or
//!   through a [`Gate`], a loopback TCP relay the test can cut and restore
//!   ([`KubeCluster::gated_kubeconfig_yaml`]): the component under test is
//!   cut off while the test keeps writing.
//! - The apiserver can be stopped and started again on the same port and
//!   etcd; etcd history can be compacted ([`KubeCluster::compact`]) and keys
//!   deleted behind the apiserver's back ([`KubeCluster::etcd_delete`]).
//! - Everything is stopped on drop, panics included; the children also get
//!   SIGKILL if the test process dies (PR_SET_PDEATHSIG).
//!
//! Binaries: `LBD_KUBE_BIN` (a directory: the VM payload), else the
//! script's cache. `LBD_KUBE_PEERS=skip` skips without building.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::lbd::free_port;

/// The exit status of `bench/kube-peers.sh` when Go is missing.
const SKIPPED: i32 = 3;

/// The directory holding kube-apiserver, kube-proxy, etcd and etcdctl, or
/// why there is none. Built at most once per test process (the script
/// itself takes a lock across processes).
pub fn kube_binaries() -> Result<PathBuf, String> {
    static BINS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINS.get_or_init(find_or_build).clone()
}

fn find_or_build() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LBD_KUBE_BIN") {
        let dir = PathBuf::from(dir);
        return match missing_binary(&dir) {
            None => Ok(dir),
            Some(b) => Err(format!("LBD_KUBE_BIN={}: no {b}", dir.display())),
        };
    }
    if std::env::var_os("LBD_IN_VM").is_some() {
        // Nothing is built inside the VM: the runner copies the host's.
        return Err(
            "no LBD_KUBE_BIN in the VM payload (run bench/kube-peers.sh on the host)".into(),
        );
    }
    if std::env::var("LBD_KUBE_PEERS").as_deref() == Ok("skip") {
        return Err("LBD_KUBE_PEERS=skip".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/kube-peers.sh");
    eprintln!(
        "kube peers: {} (a cold build takes minutes)",
        script.display()
    );
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    match out.status.code() {
        Some(0) => {}
        Some(SKIPPED) => return Err("Go not found: the real peers cannot be built".into()),
        _ => return Err(format!("{} failed ({})", script.display(), out.status)),
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    match missing_binary(&dir) {
        None => Ok(dir),
        Some(b) => Err(format!("{}: no {b} after the build", dir.display())),
    }
}

fn missing_binary(dir: &Path) -> Option<&'static str> {
    ["kube-apiserver", "kube-proxy", "etcd", "etcdctl"]
        .into_iter()
        .find(|b| !dir.join(b).is_file())
}

/// How the control plane is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Both service CIDRs (IPv4 first), as a dual-stack cluster has.
    pub dual_stack: bool,
    /// The apiserver's watch cache. Off, every watch is served by etcd, so
    /// a watch from a compacted revision gets 410 Expired at once; on (the
    /// default, as in production), the cache serves at least 75 s of
    /// history whatever etcd compacted.
    pub watch_cache: bool,
    /// How long to wait for etcd and the apiserver (the VM is ~14x slower).
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let slow = std::env::var_os("LBD_IN_VM").is_some();
        ClusterOptions {
            dual_stack: true,
            watch_cache: true,
            ready_timeout: Duration::from_secs(if slow { 600 } else { 90 }),
        }
    }
}

pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

/// Certificates and keys of one cluster, as PEM files in its tempdir.
struct Pki {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    service_account_key: PathBuf,
    service_account_pub: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "lbd test kubernetes CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate().unwrap();
        let mut serving = CertificateParams::new(
            [
                "127.0.0.1",
                "::1",
                "localhost",
                "kubernetes",
                "kubernetes.default.svc",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap();
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer).unwrap();

        // system:masters: every right, through RBAC or AlwaysAllow alike.
        let admin_key = KeyPair::generate().unwrap();
        let mut admin = CertificateParams::new(Vec::<String>::new()).unwrap();
        admin
            .distinguished_name
            .push(DnType::CommonName, "lbd-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer).unwrap();

        let sa_key = KeyPair::generate().unwrap();
        let files = [
            ("ca.crt", ca_cert.pem()),
            ("apiserver.crt", serving_cert.pem()),
            ("apiserver.key", serving_key.serialize_pem()),
            ("admin.crt", admin_cert.pem()),
            ("admin.key", admin_key.serialize_pem()),
            ("sa.key", sa_key.serialize_pem()),
            ("sa.pub", sa_key.public_key_pem()),
        ];
        for (name, pem) in &files {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Pki {
            ca: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        }
    }
}

/// Starts `cmd` with its output in `log`, killed with us if we die.
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of a log file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One plain-HTTP GET on loopback: the status code, or None.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = StdStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split(' ').nth(1)?.parse().ok()
}

/// A loopback TCP relay in front of the apiserver that the test can cut
/// (every relayed connection closed, new ones closed on accept) and
/// restore: an outage as the component under test sees it, while the
/// apiserver stays up for the test's own writes.
pub struct Gate {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    cut: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    /// Connections accepted while open (the component reconnected).
    pub relayed: Arc<AtomicUsize>,
}

impl Gate {
    async fn start(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Gate {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(Mutex::new(upstream)),
            cut: Arc::default(),
            generation: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
            relayed: Arc::default(),
        };
        let (upstream, cut, generation, stop, relayed) = (
            gate.upstream.clone(),
            gate.cut.clone(),
            gate.generation.clone(),
            gate.stop.clone(),
            gate.relayed.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut down, _)) = accepted else {
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                relayed.fetch_add(1, Ordering::SeqCst);
                let gen = generation.lock().unwrap().clone();
                let upstream = *upstream.lock().unwrap();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = gen.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    }
                });
            }
        });
        gate
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().unwrap().cancel();
    }
}

/// etcd + kube-apiserver on loopback, stopped on drop.
pub struct KubeCluster {
    pub dir: tempfile::TempDir,
    bins: PathBuf,
    pub options: ClusterOptions,
    pki: Pki,
    etcd: Child,
    etcd_client: SocketAddr,
    apiserver: Option<Child>,
    pub apiserver_addr: SocketAddr,
    pub gate: Gate,
    /// How long the last apiserver start took until /readyz said ok.
    pub last_start: Duration,
    /// Apiserver runs so far (one log file each).
    starts: u32,
}

impl KubeCluster {
    /// Starts etcd and the apiserver and waits until both are ready; None
    /// (with the reason printed) where the binaries cannot be had.
    pub async fn start(test: &str, options: ClusterOptions) -> Option<KubeCluster> {
        let bins = match kube_binaries() {
            Ok(b) => b,
            Err(why) => {
                eprintln!("skipping {test}: real kube-apiserver unavailable: {why}");
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("lbd-kube-")
            .tempdir()
            .unwrap();
        let pki = Pki::write(dir.path());
        let (etcd, etcd_client) = start_etcd(&bins, dir.path(), options.ready_timeout);
        let apiserver_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let gate = Gate::start(apiserver_addr).await;
        let mut c = KubeCluster {
            dir,
            bins,
            options,
            pki,
            etcd,
            etcd_client,
            apiserver: None,
            apiserver_addr,
            gate,
            last_start: Duration::ZERO,
            starts: 0,
        };
        c.start_apiserver().await;
        Some(c)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts the apiserver (again) and waits for /readyz. The first start
    /// moves to another port if its free port was taken meanwhile.
    pub async fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "apiserver already running");
        let started = Instant::now();
        // A restart keeps its port: clients and the Gate know it.
        let first = self.starts == 0;
        for attempt in 1..=3 {
            match self.try_start_apiserver(started).await {
                Ok(child) => {
                    self.last_start = started.elapsed();
                    self.apiserver = Some(child);
                    return;
                }
                Err(log) if first && attempt < 3 && port_taken(&log) => {
                    self.apiserver_addr.set_port(free_port());
                    *self.gate.upstream.lock().unwrap() = self.apiserver_addr;
                }
                Err(log) => panic!("kube-apiserver exited:\n{log}"),
            }
        }
    }

    /// One start: the running child, or the tail of its log if it exited.
    async fn try_start_apiserver(&mut self, started: Instant) -> Result<Child, String> {
        let mut cmd = Command::new(self.bins.join("kube-apiserver"));
        cmd.args(self.apiserver_args());
        self.starts += 1;
        let log = self.log(&format!("apiserver-{}", self.starts));
        let mut child = spawn_logged(cmd, &log);
        let client = self.client().await;
        let deadline = started + self.options.ready_timeout;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(body) = client.request_text(req).await {
                if body.trim() == "ok" {
                    return Ok(child);
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("({status})\n{}", tail(&log, 40)));
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {:?}:\n{}",
                self.options.ready_timeout,
                tail(&log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL after 5 s. The graceful shutdown stops
    /// listening at once but waits up to --request-timeout (60 s) for open
    /// watches to end, and kube-rs keeps them open: kubelet would kill it
    /// after 30 s; the test need not wait that long to see the same.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
    }

    pub async fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver().await;
    }

    fn apiserver_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mut cidrs = SERVICE_CIDR_V4.to_string();
        if self.options.dual_stack {
            cidrs = format!("{cidrs},{SERVICE_CIDR_V6}");
        }
        let mut args = vec![
            format!("--etcd-servers=http://{}", self.etcd_client),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.apiserver_addr.port()),
            // Published nowhere: no endpoint reconciler (below); set so the
            // apiserver does not look for a default route (the VM has none).
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", p(self.dir.path())),
            format!("--tls-cert-file={}", p(&self.pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&self.pki.serving_key)),
            format!("--client-ca-file={}", p(&self.pki.ca)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!(
                "--service-account-key-file={}",
                p(&self.pki.service_account_pub)
            ),
            format!(
                "--service-account-signing-key-file={}",
                p(&self.pki.service_account_key)
            ),
            format!("--service-cluster-ip-range={cidrs}"),
            // The test compacts when it wants (KubeCluster::compact).
            "--etcd-compaction-interval=0".into(),
            "--profiling=false".into(),
            "--enable-priority-and-fairness=false".into(),
        ];
        if !self.options.watch_cache {
            args.push("--watch-cache=false".into());
        }
        args
    }

    fn kubeconfig(&self, server: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{server}\n    certificate-authority: {}\n\
             users:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
            self.pki.ca.display(),
            self.pki.admin_cert.display(),
            self.pki.admin_key.display(),
        )
    }

    /// The cluster's CA certificate (it signed the apiserver's serving
    /// certificate): a pod's `ca.crt`.
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca
    }

    /// An admin kubeconfig straight to the apiserver.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig(self.apiserver_addr)
    }

    /// An admin kubeconfig through the [`Gate`].
    pub fn gated_kubeconfig_yaml(&self) -> String {
        self.kubeconfig(self.gate.addr)
    }

    /// Writes a kubeconfig into the cluster's dir (for kube-proxy, lbd).
    pub fn write_kubeconfig(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// An admin client straight to the apiserver.
    pub async fn client(&self) -> kube::Client {
        client_from_yaml(&self.kubeconfig_yaml()).await
    }

    /// etcdctl against this cluster's etcd; panics with its stderr on
    /// failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new(self.bins.join("etcdctl"))
            .arg(format!("--endpoints=http://{}", self.etcd_client))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// etcd's current revision (the resourceVersion of the last write).
    pub fn etcd_revision(&self) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&self.etcdctl(&["endpoint", "status", "-w", "json"])).unwrap();
        v[0]["Status"]["header"]["revision"].as_u64().unwrap()
    }

    /// Compacts etcd's history up to its current revision: watches from
    /// any older resourceVersion that reach etcd get 410 Expired.
    pub fn compact(&self) -> u64 {
        let rev = self.etcd_revision();
        self.etcdctl(&["compact", &rev.to_string(), "--physical"]);
        rev
    }

    /// Deletes a key in etcd, under the apiserver (e.g.
    /// `/registry/services/specs/default/web`): a change no running
    /// apiserver sends as a watch event. Returns how many keys went.
    pub fn etcd_delete(&self, key: &str) -> u64 {
        self.etcdctl(&["del", key]).trim().parse().unwrap_or(0)
    }

    /// The apiserver's log so far, all runs.
    pub fn apiserver_log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.log(&format!("apiserver-{n}"))).unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
        stop_child(&mut self.etcd, Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!(
                "kube-apiserver log (last lines):\n{}",
                tail(&self.log(&format!("apiserver-{}", self.starts)), 30)
            );
        }
    }
}

/// A listener of a child lost the race for its free port.
fn port_taken(log: &str) -> bool {
    log.contains("address already in use")
}

/// etcd on two free loopback ports (client, peer), healthy; tries other
/// ports if one was taken meanwhile.
fn start_etcd(bins: &Path, dir: &Path, timeout: Duration) -> (Child, SocketAddr) {
    for attempt in 1..=3 {
        match try_start_etcd(bins, dir, timeout) {
            Ok(started) => return started,
            Err(log) if attempt < 3 && port_taken(&log) => {
                let _ = std::fs::remove_dir_all(dir.join("etcd"));
            }
            Err(log) => panic!("etcd exited:\n{log}"),
        }
    }
    unreachable!("the last attempt panics")
}

fn try_start_etcd(
    bins: &Path,
    dir: &Path,
    timeout: Duration,
) -> Result<(Child, SocketAddr), String> {
    let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bins.join("etcd"));
    cmd.args([
        "--name=lbd-test".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls=http://{client}"),
        format!("--advertise-client-urls=http://{client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=lbd-test={peer}"),
        // Test data: durability is not wanted, speed is.
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]);
    let log = dir.join("etcd.log");
    let mut child = spawn_logged(cmd, &log);
    let deadline = Instant::now() + timeout;
    while http_status(client, "/health") != Some(200) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("({status})\n{}", tail(&log, 30)));
        }
        assert!(
            Instant::now() < deadline,
            "etcd not healthy:\n{}",
            tail(&log, 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, client))
}

pub async fn client_from_yaml(yaml: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}
