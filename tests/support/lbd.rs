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
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lbd.sock");
        let config = dir.path().join("lbd.yaml");
        std::fs::write(&config, format!("{body}\n{}", admin_section(&socket))).unwrap();
        let log = dir.path().join("lbd.log");
        let child = Command::new(lbd_bin())
            .args(["run", "-c"])
            .arg(&config)
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
