//! Asking a running instance to change: a reload in place, and the
//! operator's `lbd vrrp release|resume` through the admin socket.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::fsm::State;
use crate::config::VrrpInstanceConfig;

/// How long an instance may take to answer (it answers once the state
/// machine has the change: priority 0 is on the wire).
const ANSWER_BOUND: Duration = Duration::from_secs(2);

/// What an instance's task is asked.
#[derive(Debug)]
pub enum Control {
    /// Apply this config in place (same name, interface, vrid, version
    /// and family).
    Reconfigure {
        cfg: Box<VrrpInstanceConfig>,
        done: oneshot::Sender<()>,
    },
    Release(oneshot::Sender<Outcome>),
    Resume(oneshot::Sender<Outcome>),
}

/// What a release or resume did to one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub instance: String,
    /// False: it was released (resumed) already.
    pub changed: bool,
    /// The state right after.
    pub state: State,
    pub released: bool,
}

/// The verbs of `lbd vrrp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Release,
    Resume,
}

impl Verb {
    pub fn from_name(s: &str) -> Option<Verb> {
        match s {
            "release" => Some(Verb::Release),
            "resume" => Some(Verb::Resume),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Release => "release",
            Verb::Resume => "resume",
        }
    }
}

/// The answer to `lbd vrrp release|resume`: what each instance did, or why
/// nothing was done.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControlReport {
    pub done: Vec<Outcome>,
    /// Set when the request was refused (no such instance, no VRRP, an
    /// instance that did not answer).
    pub refused: Option<String>,
}

/// Each running instance's name and control channel.
pub(super) type Channels = Vec<(String, mpsc::Sender<Control>)>;

/// The running instances' control channels, for the admin server: a cheap
/// clone, swapped whole by `Vrrp` when the instance set changes.
#[derive(Clone, Default)]
pub struct VrrpControl(pub(super) Arc<ArcSwap<Channels>>);

impl VrrpControl {
    /// Releases or resumes `instance` (None: every instance), each at once.
    pub async fn apply(&self, verb: Verb, instance: Option<&str>) -> ControlReport {
        let all = self.0.load_full();
        let targets: Vec<&(String, mpsc::Sender<Control>)> = all
            .iter()
            .filter(|(name, _)| instance.is_none_or(|i| i == name))
            .collect();
        if targets.is_empty() {
            return ControlReport {
                done: Vec::new(),
                refused: Some(match instance {
                    Some(i) => format!("no VRRP instance named {i:?}"),
                    None => "no VRRP instance runs".into(),
                }),
            };
        }
        let mut report = ControlReport::default();
        for (name, tx) in targets {
            let (done, answer) = oneshot::channel();
            let msg = match verb {
                Verb::Release => Control::Release(done),
                Verb::Resume => Control::Resume(done),
            };
            let outcome = async {
                tx.send(msg).await.ok()?;
                tokio::time::timeout(ANSWER_BOUND, answer).await.ok()?.ok()
            }
            .await;
            match outcome {
                Some(o) => report.done.push(o),
                None => {
                    report.refused = Some(format!("instance {name:?} did not answer"));
                }
            }
        }
        report
    }
}
