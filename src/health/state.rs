//! Health hysteresis (pure): a backend flips only after `rise` consecutive
//! successes or `fall` consecutive failures, as haproxy's checks do.

use std::time::Duration;

crate::label::label_enum! {
    /// Why a probe failed: the `reason` label of
    /// `lbd_health_check_failures_total`.
    pub enum ProbeFailure {
        /// The TCP connect failed.
        Connect => "connect",
        /// No answer within the check's timeout.
        Timeout => "timeout",
        /// The TLS handshake failed (or the server name is unusable).
        Tls => "tls",
        /// The HTTP exchange failed.
        Http => "http",
        /// An answer, with another status than expected.
        Status => "status",
    }
}

/// Outcome of one probe, as the runner saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    Up {
        latency: Duration,
    },
    Down {
        reason: ProbeFailure,
        message: String,
        latency: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthState {
    pub rise: u32,
    pub fall: u32,
    /// None until the first probe: the backend is used optimistically so a
    /// restart of lbd does not refuse connections while the first checks run.
    pub healthy: Option<bool>,
    consecutive_ok: u32,
    consecutive_fail: u32,
    pub last_error: Option<String>,
    pub last_latency: Option<Duration>,
    pub checks: u64,
    pub failures: u64,
}

impl HealthState {
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_error: None,
            last_latency: None,
            checks: 0,
            failures: 0,
        }
    }

    /// Whether the backend may be chosen now.
    pub fn is_usable(&self) -> bool {
        self.healthy.unwrap_or(true)
    }

    /// Feeds one probe result; returns true when the usable state flipped.
    pub fn observe(&mut self, outcome: &ProbeOutcome) -> bool {
        let before = self.is_usable();
        self.checks += 1;
        match outcome {
            ProbeOutcome::Up { latency } => {
                self.last_latency = Some(*latency);
                self.consecutive_fail = 0;
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                match self.healthy {
                    // The first result decides at once: there is no earlier
                    // state worth protecting from flapping.
                    None => self.healthy = Some(true),
                    Some(false) if self.consecutive_ok >= self.rise => {
                        self.healthy = Some(true);
                    }
                    _ => {}
                }
                if self.healthy == Some(true) {
                    self.last_error = None;
                }
            }
            ProbeOutcome::Down {
                message, latency, ..
            } => {
                self.last_latency = Some(*latency);
                self.failures += 1;
                self.consecutive_ok = 0;
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.last_error = Some(message.clone());
                match self.healthy {
                    None => self.healthy = Some(false),
                    Some(true) if self.consecutive_fail >= self.fall => {
                        self.healthy = Some(false);
                    }
                    _ => {}
                }
            }
        }
        before != self.is_usable()
    }

    /// Carries counters over when the check parameters change on reload, so
    /// an unchanged backend keeps its state.
    pub fn with_thresholds(mut self, rise: u32, fall: u32) -> Self {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> ProbeOutcome {
        ProbeOutcome::Up {
            latency: Duration::from_millis(1),
        }
    }
    fn down() -> ProbeOutcome {
        ProbeOutcome::Down {
            reason: ProbeFailure::Status,
            message: "HTTP 500".into(),
            latency: Duration::from_millis(1),
        }
    }

    #[test]
    fn first_result_decides_then_hysteresis() {
        let mut s = HealthState::new(2, 3);
        assert!(s.is_usable());
        assert!(!s.observe(&up()));
        assert_eq!(s.healthy, Some(true));
        assert!(!s.observe(&down()));
        assert!(!s.observe(&down()));
        assert!(s.is_usable(), "two failures of fall=3 must not flip");
        assert!(s.observe(&down()));
        assert!(!s.is_usable());
        assert_eq!(s.last_error.as_deref(), Some("HTTP 500"));
        assert!(!s.observe(&up()));
        assert!(!s.observe(&down()), "a failure resets the rise count");
        assert!(!s.observe(&up()));
        assert!(s.observe(&up()));
        assert!(s.is_usable());
        assert_eq!(s.last_error, None);
    }

    #[test]
    fn first_failure_marks_down_at_once() {
        let mut s = HealthState::new(2, 2);
        assert!(s.observe(&down()));
        assert!(!s.is_usable());
    }
}
