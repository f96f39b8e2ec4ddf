//! The real `lbd` binary, run from a temp dir with its own admin socket,
//! and the polling helpers tests wait with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::config::admin_section;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real daemon, run from a temp dir with its own admin socket.
pub struct Lbd {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

pub fn lbd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lbd")
}

impl Lbd {
    /// Writes `body` (a config without `admin:`) and starts `lbd run`;
    /// returns once the admin socket answers.
    pub async fn start(body: &str) -> Lbd {
        Self::start_with(&[], body).await
    }

    /// [`Lbd::start`] with global options before `run` (`--log-format json`).
    pub async fn start_with(options: &[&str], body: &str) -> Lbd {
        Self::start_in(options, &[], &[], body).await
    }

    /// [`Lbd::start_with`] with options of `run` (`--node-name`) and
    /// environment variables (a pod's `KUBERNETES_SERVICE_HOST`).
    pub async fn start_in(
        options: &[&str],
        run_options: &[&str],
        env: &[(&str, &str)],
        body: &str,
    ) -> Lbd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lbd.sock");
        let config = dir.path().join("lbd.yaml");
        std::fs::write(&config, format!("{body}\n{}", admin_section(&socket))).unwrap();
        let log = dir.path().join("lbd.log");
        let child = Command::new(lbd_bin())
            .args(options)
            .args(["run", "-c"])
            .arg(&config)
            .args(run_options)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lbd = Lbd {
            child,
            dir,
            config,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while lbd::status::client::fetch(&lbd.socket).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "lbd did not start:\n{}",
                lbd.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lbd
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = lbd::status::client::fetch(&self.socket)
            .await
            .expect("status");
        serde_json::to_value(r).unwrap()
    }

    /// Rewrites the config (keeping the admin section) and sends SIGHUP.
    pub fn reload(&self, body: &str) {
        std::fs::write(
            &self.config,
            format!("{body}\n{}", admin_section(&self.socket)),
        )
        .unwrap();
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Listener `listener`'s backend `addr` in a status object.
pub fn backend_of(status: &serde_json::Value, listener: usize, addr: &str) -> serde_json::Value {
    status["tcplb"][listener]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in {status}"))
}

/// Polls `cond` every 20 ms until true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real daemon inside a lab's namespace: its files in a temp dir (the
/// admin socket works from the host: it is a file), the process in the lab.
pub struct NsLbd {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The lab's child index.
    pub child: usize,
}

impl NsLbd {
    /// Writes `body` (without `admin:`), starts `lbd run` in `ns`; returns
    /// once the admin socket answers.
    pub async fn start(lab: &mut super::netns::Lab, ns: &str, body: &str) -> NsLbd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lbd.sock");
        let config = dir.path().join("lbd.yaml");
        let log = dir.path().join("lbd.log");
        std::fs::write(&config, format!("{body}\n{}", admin_section(&socket))).unwrap();
        let child = spawn_in_ns(lab, ns, &config, &log);
        let me = NsLbd {
            dir,
            config,
            socket,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while lbd::status::client::fetch(&me.socket).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "lbd did not start in {ns}:\n{}",
                me.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        me
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = lbd::status::client::fetch(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("status: {e}\n{}", self.logs()));
        serde_json::to_value(r).unwrap()
    }

    /// Listener `listener`'s backend `addr` in the status.
    pub async fn backend(&self, listener: usize, addr: &str) -> serde_json::Value {
        backend_of(&self.status().await, listener, addr)
    }
}

/// Starts `lbd run -c config` inside namespace `ns` of `lab`, logging to
/// `log`; returns the lab's child index.
pub fn spawn_in_ns(lab: &mut super::netns::Lab, ns: &str, config: &Path, log: &Path) -> usize {
    let config = config.to_str().expect("UTF-8 path");
    lab.spawn(
        ns,
        "env",
        &["RUST_LOG=info", lbd_bin(), "run", "-c", config],
        Some(log),
    )
}

/// Polls `cond` every 20 ms until true; panics naming `what` after `within`.
pub fn eventually_sync(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
