//! When to hedge a connect: the delay after which a backend that has not
//! answered the SYN gets company (the same client connection is also tried
//! on the next backend; the first to connect wins).
//!
//! The delay follows the connects this listener has seen: a few times their
//! 90th percentile, so a LAN's fraction of a millisecond hedges within the
//! floor, and a slow path does not hedge every connection. The floor keeps
//! an ordinary scheduling hiccup from counting as a dead backend; the cap
//! bounds what a client waits for a backend that silently dropped its SYN.
//! The computation is pure ([`hedge_delay`]); [`ConnectTimes`] is the ring
//! of recent samples the sessions write.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Recent connect times kept per listener.
pub const SAMPLES: usize = 64;

/// Fewer samples than this: the cap is used (nothing is known yet).
pub const MIN_SAMPLES: usize = 8;

/// The delay is this many times the 90th percentile.
pub const P90_FACTOR: u32 = 4;

/// The hedge delay for `samples` (connect times in microseconds, in any
/// order), between `floor` and `cap`.
pub fn hedge_delay(samples: &mut [u32], floor: Duration, cap: Duration) -> Duration {
    if samples.len() < MIN_SAMPLES {
        return cap.max(floor);
    }
    let rank = (samples.len() * 9).div_ceil(10) - 1;
    let (_, p90, _) = samples.select_nth_unstable(rank);
    let delay = Duration::from_micros(u64::from(*p90) * u64::from(P90_FACTOR));
    delay.clamp(floor, cap.max(floor))
}

/// The last [`SAMPLES`] successful connect times of one listener, written
/// by every session (lock-free; a lost update under a race only drops one
/// sample).
pub struct ConnectTimes {
    ring: [AtomicU32; SAMPLES],
    written: AtomicUsize,
}

impl Default for ConnectTimes {
    fn default() -> Self {
        ConnectTimes {
            ring: std::array::from_fn(|_| AtomicU32::new(0)),
            written: AtomicUsize::new(0),
        }
    }
}

impl ConnectTimes {
    pub fn record(&self, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let i = self.written.fetch_add(1, Relaxed);
        self.ring[i % SAMPLES].store(us, Relaxed);
    }

    /// The current delay between `floor` and `cap`.
    pub fn delay(&self, floor: Duration, cap: Duration) -> Duration {
        let n = self.written.load(Relaxed).min(SAMPLES);
        let mut samples = [0u32; SAMPLES];
        for (s, r) in samples.iter_mut().zip(&self.ring).take(n) {
            *s = r.load(Relaxed);
        }
        hedge_delay(&mut samples[..n], floor, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_millis(250);

    #[test]
    fn no_history_waits_the_cap() {
        assert_eq!(hedge_delay(&mut [], FLOOR, CAP), CAP);
        assert_eq!(hedge_delay(&mut [100; MIN_SAMPLES - 1], FLOOR, CAP), CAP);
    }

    #[test]
    fn a_lan_hedges_at_the_floor_and_a_slow_path_at_four_p90s_up_to_the_cap() {
        // 0.3 ms connects: 4 x 0.3 = 1.2 ms, below the floor.
        assert_eq!(hedge_delay(&mut [300; 20], FLOOR, CAP), FLOOR);
        // 90 of 100 samples at 5 ms, 10 outliers at 900 ms: the p90 is 5 ms.
        let mut s: Vec<u32> = (0..100)
            .map(|i| if i % 10 == 0 { 900_000 } else { 5_000 })
            .collect();
        assert_eq!(hedge_delay(&mut s, FLOOR, CAP), Duration::from_millis(20));
        // Slow everywhere: capped.
        assert_eq!(hedge_delay(&mut [200_000; 10], FLOOR, CAP), CAP);
        // A cap below the floor: the floor wins (never zero).
        assert_eq!(hedge_delay(&mut [1; 10], FLOOR, Duration::ZERO), FLOOR);
    }

    #[test]
    fn the_ring_keeps_the_last_samples() {
        let t = ConnectTimes::default();
        assert_eq!(t.delay(FLOOR, CAP), CAP);
        for _ in 0..SAMPLES {
            t.record(Duration::from_millis(50));
        }
        assert_eq!(t.delay(FLOOR, CAP), Duration::from_millis(200));
        // The slow history is overwritten by fast connects.
        for _ in 0..SAMPLES {
            t.record(Duration::from_micros(400));
        }
        assert_eq!(t.delay(FLOOR, CAP), FLOOR);
        t.record(Duration::from_secs(10_000)); // saturates, no overflow
        assert_eq!(t.delay(FLOOR, CAP), FLOOR);
    }
}
