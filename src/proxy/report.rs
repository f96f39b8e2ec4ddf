//! The proxy's status: a snapshot the runner publishes after each sync
//! (readers never lock), turned into the typed [`ProxyStatus`] of `lbd
//! status` when asked, so "seconds ago" is counted at report time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::status::{ProxyDataPlane, ProxyStatus};

/// What the proxy last did.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySnapshot {
    pub mode: ProxyDataPlane,
    pub last_sync: Option<LastSync>,
    /// Why the proxy is not running (could not start, stopped); the status
    /// then shows only this.
    pub error: Option<String>,
}

/// The last sync's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct LastSync {
    pub at: Instant,
    pub duration: Duration,
    pub services: usize,
    pub real_servers: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

/// Shared by the runner (writes) and the admin server (reads). None: no
/// proxy (`mode: none` or no `proxy` section).
#[derive(Debug, Clone, Default)]
pub struct ProxyReporter(Arc<ArcSwap<Option<ProxySnapshot>>>);

impl ProxyReporter {
    /// The proxy's status now.
    pub fn report(&self) -> Option<ProxyStatus> {
        let snap = self.0.load_full();
        let s = snap.as_ref().as_ref()?;
        if let Some(e) = &s.error {
            return Some(ProxyStatus {
                mode: s.mode,
                synced: false,
                services: 0,
                real_servers: 0,
                last_sync_seconds_ago: None,
                last_sync_duration_ms: None,
                last_error: Some(e.clone()),
            });
        }
        let last = s.last_sync.as_ref();
        Some(ProxyStatus {
            mode: s.mode,
            synced: last.is_some_and(|l| l.failed == 0),
            services: last.map_or(0, |l| l.services as u64),
            real_servers: last.map_or(0, |l| l.real_servers as u64),
            last_sync_seconds_ago: last.map(|l| l.at.elapsed().as_secs()),
            last_sync_duration_ms: last.map(|l| l.duration.as_secs_f64() * 1000.0),
            last_error: last.and_then(|l| l.first_error.clone()),
        })
    }

    pub fn snapshot(&self) -> Option<ProxySnapshot> {
        self.0.load_full().as_ref().clone()
    }

    /// A proxy of this mode that has not synced yet.
    pub fn starting(&self, mode: ProxyDataPlane) {
        self.store(Some(ProxySnapshot {
            mode,
            last_sync: None,
            error: None,
        }));
    }

    /// The proxy is not running, and why.
    pub fn failed(&self, mode: ProxyDataPlane, error: String) {
        self.store(Some(ProxySnapshot {
            mode,
            last_sync: None,
            error: Some(error),
        }));
    }

    /// A sync ended.
    pub fn synced(&self, last: LastSync) {
        let mode = self.snapshot().map_or(ProxyDataPlane::Ipvs, |s| s.mode);
        self.store(Some(ProxySnapshot {
            mode,
            last_sync: Some(last),
            error: None,
        }));
    }

    /// No proxy.
    pub fn off(&self) {
        self.store(None);
    }

    fn store(&self, s: Option<ProxySnapshot>) {
        self.0.store(Arc::new(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_last_sync_and_an_error_hides_it() {
        let r = ProxyReporter::default();
        assert_eq!(r.report(), None);
        r.starting(ProxyDataPlane::Ipvs);
        let s = r.report().unwrap();
        assert!(!s.synced && s.last_sync_seconds_ago.is_none());
        r.synced(LastSync {
            at: Instant::now(),
            duration: Duration::from_millis(5),
            services: 3,
            real_servers: 7,
            failed: 0,
            first_error: None,
        });
        let s = r.report().unwrap();
        assert!(s.synced);
        assert_eq!((s.services, s.real_servers), (3, 7));
        assert_eq!(s.last_sync_duration_ms, Some(5.0));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["mode"],
            serde_json::json!("ipvs")
        );
        r.failed(ProxyDataPlane::Nftables, "not implemented".into());
        let s = r.report().unwrap();
        assert!(!s.synced && s.services == 0);
        assert_eq!(s.last_error.as_deref(), Some("not implemented"));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["mode"],
            serde_json::json!("nftables")
        );
    }
}
