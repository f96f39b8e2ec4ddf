//! Notify scripts, run as keepalived runs them (keepalived.conf(5)):
//!
//! - `notify_master`, `notify_backup`, `notify_fault`: on entering that
//!   state; `notify_stop`: when the instance stops. Run as written, no
//!   arguments added.
//! - `notify`: on every change, after the one above, with four arguments
//!   appended: `INSTANCE`, the instance name, the new state (`MASTER`,
//!   `BACKUP`, `FAULT`, or `STOP` when it stops) and its priority now.
//!
//! Each runs through `/bin/sh -c`, so a command line with arguments, as
//! keepalived's quoted form, works. One instance's scripts run one after
//! the other in the order of the changes (a script that records the state
//! ends with the last one); lbd waits for each at most [`SCRIPT_WAIT`]
//! before starting the next (the late one runs on, its end is logged), and
//! never waits on its own path: a slow script delays no advert.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::fsm::State;
use crate::config::VrrpInstanceConfig;

/// How long one script may hold the queue.
pub const SCRIPT_WAIT: Duration = Duration::from_secs(30);

/// Changes queued while scripts run; beyond, a change's scripts are
/// skipped (and logged).
const QUEUE: usize = 64;

/// The keepalived word for a state lbd enters (`STOP` for the end).
pub fn state_word(to: State) -> &'static str {
    match to {
        State::Initialize => "STOP",
        other => other.as_str(),
    }
}

/// One command line to run, with the arguments `sh -c` passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub command: String,
    /// Appended (`"$@"`), for `notify`.
    pub args: Vec<String>,
}

/// What one state change runs, in order (pure).
pub fn scripts_for(cfg: &VrrpInstanceConfig, to: State, priority: u8) -> Vec<Script> {
    let specific = match to {
        State::Master => &cfg.notify_master,
        State::Backup => &cfg.notify_backup,
        State::Fault => &cfg.notify_fault,
        State::Initialize => &cfg.notify_stop,
    };
    let mut out: Vec<Script> = specific
        .iter()
        .map(|c| Script {
            command: c.clone(),
            args: Vec::new(),
        })
        .collect();
    if let Some(c) = &cfg.notify {
        out.push(Script {
            command: c.clone(),
            args: vec![
                "INSTANCE".into(),
                cfg.name.clone(),
                state_word(to).into(),
                priority.to_string(),
            ],
        });
    }
    out
}

/// What the queue task is asked to do.
enum Job {
    Run(Vec<Script>),
    /// Answer once everything queued before has been started.
    Flush(oneshot::Sender<()>),
}

/// Runs an instance's scripts in order on a task of its own.
pub struct Notifier {
    tx: Option<mpsc::Sender<Job>>,
    instance: String,
}

impl Notifier {
    /// No task when no script is configured.
    pub fn new(cfg: &VrrpInstanceConfig) -> Notifier {
        let any = [
            &cfg.notify,
            &cfg.notify_master,
            &cfg.notify_backup,
            &cfg.notify_fault,
            &cfg.notify_stop,
        ]
        .iter()
        .any(|s| s.is_some());
        let tx = any.then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run_queue(rx, cfg.name.clone()));
            tx
        });
        Notifier {
            tx,
            instance: cfg.name.clone(),
        }
    }

    /// Queues the scripts of one change.
    pub fn queue(&self, scripts: Vec<Script>) {
        let Some(tx) = &self.tx else {
            return;
        };
        if scripts.is_empty() {
            return;
        }
        if tx.try_send(Job::Run(scripts)).is_err() {
            tracing::warn!(instance = %self.instance, "notify scripts back up: this change's scripts are skipped");
        }
    }

    /// The instance stops: waits (at most `bound`) until every queued
    /// script has been started, so the STOP notification is not lost with
    /// the process.
    pub async fn flush(self, bound: Duration) {
        let Some(tx) = self.tx else {
            return;
        };
        let (done, started) = oneshot::channel();
        let flushed = tokio::time::timeout(bound, async {
            tx.send(Job::Flush(done)).await.is_ok() && started.await.is_ok()
        })
        .await;
        if flushed != Ok(true) {
            tracing::warn!(instance = %self.instance, waited = ?bound,
                "notify scripts still busy at stop: the last ones may not run");
        }
    }
}

async fn run_queue(mut rx: mpsc::Receiver<Job>, instance: String) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Run(scripts) => {
                for s in scripts {
                    run_one(&s, &instance).await;
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Starts one script, waits for it at most [`SCRIPT_WAIT`]; its failure
/// is logged, never fatal.
async fn run_one(s: &Script, instance: &str) {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(if s.args.is_empty() {
            s.command.clone()
        } else {
            format!("{} \"$@\"", s.command)
        })
        .arg("lbd-notify")
        .args(&s.args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    let mut child = match c.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(instance, notify = %s.command, error = %e, "cannot run notify script");
            return;
        }
    };
    match tokio::time::timeout(SCRIPT_WAIT, child.wait()).await {
        Ok(Ok(st)) if st.success() => {}
        Ok(Ok(st)) => {
            tracing::warn!(instance, notify = %s.command, status = %st, "notify script failed")
        }
        Ok(Err(e)) => tracing::warn!(instance, notify = %s.command, error = %e, "notify script"),
        Err(_) => {
            tracing::warn!(instance, notify = %s.command, "notify script still running after 30s: not waited for");
            let command = s.command.clone();
            let instance = instance.to_string();
            tokio::spawn(async move {
                if let Ok(st) = child.wait().await {
                    tracing::info!(instance, notify = %command, status = %st, "late notify script ended");
                }
            });
        }
    }
}
