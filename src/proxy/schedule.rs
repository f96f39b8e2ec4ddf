//! When the proxy syncs, and what kind of sync (pure: time is an input).
//!
//! kube-proxy's BoundedFrequencyRunner, plus what lbd adds between its full
//! syncs: watch events only mark the proxy dirty ([`Event::Changed`]); a
//! sync runs at most once per `min_sync_period` (a burst of events is one
//! sync) and at least once per `sync_period`; sooner when real servers
//! drain (their connection counters decide) and, after a failed kernel
//! operation, again after a backoff that doubles per failed sync. Nothing
//! runs before the caches have synced once ([`Event::CachesReady`]).
//!
//! A sync is *changed-only* (only the Services the events named) unless a
//! *full* one is due: the first, after a relist or new settings
//! ([`Event::FullRequested`]), and once per `sync_period`, when the kernel is
//! also listed again so drift made by others is repaired
//! ([`Schedule::listing_due`]). The engine adds its own reasons (a failure
//! dropped its view of the kernel, the node's addresses moved).
//!
//! The driver feeds events with [`Schedule::on`] and asks [`Schedule::decide`]
//! what to do at `now`: sync now, or sleep until a deadline or the next
//! event.

use std::time::{Duration, Instant};

/// The two periods of kube-proxy's `ipvs.minSyncPeriod` / `ipvs.syncPeriod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// At most one sync per this (0: no limit).
    pub min_sync_period: Duration,
    /// At least one sync per this, a full one with a kernel listing.
    pub sync_period: Duration,
}

impl ScheduleSettings {
    /// A failed sync is retried after this, doubled per consecutive failed
    /// sync, never later than one `sync_period`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let base = self.min_sync_period.max(Duration::from_secs(1));
        let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.sync_period.max(base))
    }
}

/// Which Services a sync recomputes and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Every Service, every virtual server and address.
    Full,
    /// Only the Services the watch events named (and draining ones).
    Changed,
}

/// What one sync did, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// When it started: the next one may start `min_sync_period` later.
    pub started: Instant,
    pub kind: SyncKind,
    /// Kernel operations that failed (0: the sync succeeded).
    pub failed: usize,
    /// It listed the whole kernel (drift repaired).
    pub listed: bool,
    /// Look again this soon even if nothing changes (draining real servers).
    pub recheck_in: Option<Duration>,
}

/// An input of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The Service, EndpointSlice and Node caches have synced once.
    CachesReady,
    /// A watch event marked something dirty.
    Changed,
    /// The next sync must be a full one: a relist, new settings, a changed
    /// node, or a changed-only sync the engine refused.
    FullRequested,
    /// A sync ended (`now` is when).
    Synced(SyncReport),
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sync now.
    Sync(SyncKind),
    /// Nothing to do until this deadline (None: until the next event).
    Wait(Option<Instant>),
}

/// The schedule's state between syncs: deadlines, not timers.
#[derive(Debug, Clone)]
pub struct Schedule {
    settings: ScheduleSettings,
    ready: bool,
    /// Something changed since the last sync started.
    pending: bool,
    /// The next sync must be a full one.
    full_pending: bool,
    last_start: Option<Instant>,
    /// The last full kernel listing.
    last_listing: Option<Instant>,
    /// Draining real servers want a look by then.
    recheck: Option<Instant>,
    /// Consecutive syncs with a failed operation.
    failures: u32,
    /// The retry after the last failure, by then.
    retry_at: Option<Instant>,
}

impl Schedule {
    pub fn new(settings: ScheduleSettings) -> Self {
        Schedule {
            settings,
            ready: false,
            // The first sync is due as soon as the caches are ready.
            pending: true,
            full_pending: true,
            last_start: None,
            last_listing: None,
            recheck: None,
            failures: 0,
            retry_at: None,
        }
    }

    pub fn settings(&self) -> ScheduleSettings {
        self.settings
    }

    /// New periods (a reload); the deadlines already set stand.
    pub fn set_settings(&mut self, settings: ScheduleSettings) {
        self.settings = settings;
    }

    /// Records one input.
    pub fn on(&mut self, now: Instant, event: Event) {
        match event {
            Event::CachesReady => self.ready = true,
            Event::Changed => self.pending = true,
            Event::FullRequested => {
                self.pending = true;
                self.full_pending = true;
            }
            Event::Synced(r) => self.synced(now, r),
        }
    }

    fn synced(&mut self, now: Instant, r: SyncReport) {
        self.last_start = Some(r.started);
        self.pending = false;
        if r.kind == SyncKind::Full {
            self.full_pending = false;
        }
        if r.listed {
            self.last_listing = Some(r.started);
        }
        self.recheck = r.recheck_in.map(|d| now + d);
        if r.failed == 0 {
            self.failures = 0;
            self.retry_at = None;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(now + self.settings.backoff(self.failures));
        }
    }

    /// Whether the next sync must be a full one. The engine may want one
    /// for reasons of its own (`Engine::needs_full`: a failure dropped its
    /// view of the kernel, the node's addresses moved).
    pub fn full_due(&self, now: Instant) -> bool {
        self.full_pending || self.listing_due(now)
    }

    /// Whether a full sync should list the kernel again: once per
    /// `sync_period`, so changes made by others are repaired.
    pub fn listing_due(&self, now: Instant) -> bool {
        self.last_listing
            .is_none_or(|t| now.saturating_duration_since(t) >= self.settings.sync_period)
    }

    /// The caches have synced once.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Something changed since the last sync started.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Consecutive failed syncs and when the next retry is due.
    pub fn failing(&self) -> Option<(u32, Instant)> {
        self.retry_at.map(|t| (self.failures, t))
    }

    /// What to do at `now`.
    pub fn decide(&self, now: Instant) -> Decision {
        if !self.ready {
            return Decision::Wait(None);
        }
        match self.due() {
            Some(t) if t > now => Decision::Wait(Some(t)),
            _ if self.full_due(now) => Decision::Sync(SyncKind::Full),
            _ => Decision::Sync(SyncKind::Changed),
        }
    }

    /// When the next sync is due, whatever arrives before; None: at once
    /// (never synced yet).
    fn due(&self) -> Option<Instant> {
        let last = self.last_start?;
        let allowed = last + self.settings.min_sync_period;
        let due = if self.pending {
            // Changes wait for the minimum period only: the retry after a
            // failure does not hold them back (their sync retries as well).
            allowed
        } else {
            let forced = last + self.settings.sync_period;
            [self.recheck, self.retry_at]
                .into_iter()
                .flatten()
                .fold(forced, Instant::min)
        };
        Some(due.max(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn schedule() -> Schedule {
        Schedule::new(ScheduleSettings {
            min_sync_period: MIN,
            sync_period: MAX,
        })
    }

    /// Runs the sync the schedule asks for at `now` (it must ask for one)
    /// and reports it; returns its kind.
    fn sync(
        s: &mut Schedule,
        now: Instant,
        failed: usize,
        recheck_in: Option<Duration>,
    ) -> SyncKind {
        let Decision::Sync(kind) = s.decide(now) else {
            panic!("no sync due at {now:?}: {:?}", s.decide(now));
        };
        let listed = kind == SyncKind::Full && s.listing_due(now);
        s.on(
            now,
            Event::Synced(SyncReport {
                started: now,
                kind,
                failed,
                listed,
                recheck_in,
            }),
        );
        kind
    }

    /// A schedule that has run its first sync at `t0`.
    fn started(t0: Instant) -> Schedule {
        let mut s = schedule();
        s.on(t0, Event::CachesReady);
        assert_eq!(sync(&mut s, t0, 0, None), SyncKind::Full);
        s
    }

    #[test]
    fn nothing_before_the_caches_are_ready_then_a_full_sync_at_once() {
        let t0 = Instant::now();
        let mut s = schedule();
        s.on(t0, Event::Changed);
        assert_eq!(s.decide(t0 + MAX * 10), Decision::Wait(None));
        s.on(t0 + ms(5), Event::CachesReady);
        assert_eq!(s.decide(t0 + ms(5)), Decision::Sync(SyncKind::Full));
    }

    #[test]
    fn a_burst_of_changes_is_one_changed_only_sync_after_the_minimum_period() {
        let t0 = Instant::now();
        let mut s = started(t0);
        for i in 0..50 {
            s.on(t0 + ms(10 * i), Event::Changed);
            assert_eq!(s.decide(t0 + ms(10 * i)), Decision::Wait(Some(t0 + MIN)));
        }
        assert_eq!(sync(&mut s, t0 + MIN, 0, None), SyncKind::Changed);
        // The burst is spent: nothing until the period forces a full sync.
        assert_eq!(s.decide(t0 + MIN), Decision::Wait(Some(t0 + MIN + MAX)));
    }

    #[test]
    fn min_and_max_period_bound_the_syncs() {
        let t0 = Instant::now();
        let mut s = started(t0);
        // A change long after the last sync goes at once.
        let t1 = t0 + Duration::from_secs(10);
        s.on(t1, Event::Changed);
        assert_eq!(sync(&mut s, t1, 0, None), SyncKind::Changed);
        // The next one waits for the minimum period.
        s.on(t1 + ms(1), Event::Changed);
        assert_eq!(s.decide(t1 + ms(1)), Decision::Wait(Some(t1 + MIN)));
        assert_eq!(sync(&mut s, t1 + MIN, 0, None), SyncKind::Changed);
        // Without changes, one full sync per sync_period, which also lists
        // the kernel (the last listing was at t0).
        let t2 = t1 + MIN;
        assert_eq!(s.decide(t2), Decision::Wait(Some(t2 + MAX)));
        assert!(s.listing_due(t2 + MAX));
        assert_eq!(sync(&mut s, t2 + MAX, 0, None), SyncKind::Full);
        assert!(!s.listing_due(t2 + MAX + ms(1)));
    }

    #[test]
    fn relists_and_new_settings_ask_for_a_full_sync() {
        let t0 = Instant::now();
        let mut s = started(t0);
        s.on(t0 + ms(100), Event::FullRequested);
        assert_eq!(sync(&mut s, t0 + MIN, 0, None), SyncKind::Full);
        s.on(t0 + MIN + ms(1), Event::Changed);
        assert_eq!(sync(&mut s, t0 + MIN * 2, 0, None), SyncKind::Changed);
        // New, shorter periods apply to the next deadline.
        s.set_settings(ScheduleSettings {
            min_sync_period: ms(100),
            sync_period: Duration::from_secs(5),
        });
        s.on(t0 + MIN * 2, Event::FullRequested);
        assert_eq!(
            sync(&mut s, t0 + MIN * 2 + ms(100), 0, None),
            SyncKind::Full
        );
    }

    #[test]
    fn a_failed_sync_is_retried_with_backoff_and_reported() {
        let t0 = Instant::now();
        let mut s = started(t0);
        let mut now = t0 + Duration::from_secs(5);
        s.on(now, Event::Changed);
        sync(&mut s, now, 3, None);
        // Retries after 1 s, 2 s, 4 s ... capped at sync_period.
        for (failures, wait) in [
            (1u32, 1u64),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 30),
            (7, 30),
        ] {
            assert_eq!(
                s.failing(),
                Some((failures, now + Duration::from_secs(wait)))
            );
            let retry = now + Duration::from_secs(wait);
            assert_eq!(s.decide(now + ms(1)), Decision::Wait(Some(retry)));
            now = retry;
            sync(&mut s, now, 1, None);
        }
        // A success ends it.
        let retry = s.failing().unwrap().1;
        sync(&mut s, retry, 0, None);
        assert_eq!(s.failing(), None);
        assert_eq!(s.decide(retry), Decision::Wait(Some(retry + MAX)));
    }

    #[test]
    fn changes_after_a_partial_failure_are_not_held_back_by_the_backoff() {
        let t0 = Instant::now();
        let mut s = started(t0);
        let t1 = t0 + Duration::from_secs(5);
        s.on(t1, Event::Changed);
        // One change of many failed (the rest is applied, see the engine's
        // tests): a retry is due after the backoff...
        sync(&mut s, t1, 1, None);
        assert_eq!(s.decide(t1 + ms(10)), Decision::Wait(Some(t1 + MIN)));
        // ... and a new change goes after the minimum period as usual;
        // its sync is the retry.
        s.on(t1 + ms(10), Event::Changed);
        assert_eq!(s.decide(t1 + ms(10)), Decision::Wait(Some(t1 + MIN)));
        assert_eq!(sync(&mut s, t1 + MIN, 0, None), SyncKind::Changed);
        assert_eq!(s.failing(), None);
    }

    #[test]
    fn draining_real_servers_are_looked_at_again_by_their_recheck() {
        let t0 = Instant::now();
        let mut s = started(t0);
        let t1 = t0 + Duration::from_secs(3);
        s.on(t1, Event::Changed);
        sync(&mut s, t1, 0, Some(Duration::from_secs(2)));
        assert_eq!(
            s.decide(t1),
            Decision::Wait(Some(t1 + Duration::from_secs(2)))
        );
        assert_eq!(
            sync(&mut s, t1 + Duration::from_secs(2), 0, None),
            SyncKind::Changed
        );
        // A recheck sooner than the minimum period waits for it.
        let t2 = t1 + Duration::from_secs(2);
        s.on(
            t2,
            Event::Synced(SyncReport {
                started: t2,
                kind: SyncKind::Changed,
                failed: 0,
                listed: false,
                recheck_in: Some(ms(10)),
            }),
        );
        assert_eq!(s.decide(t2), Decision::Wait(Some(t2 + MIN)));
    }
}
