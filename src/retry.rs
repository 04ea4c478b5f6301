//! The one backoff helper: exponential, with full jitter, bounded in total time. Used for Delta commit conflicts
//! and storage errors alike.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay's upper bound.
    pub base: Duration,
    /// No single delay is longer than this.
    pub max_delay: Duration,
    /// No retry starts after this much time since the first attempt.
    pub total: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(50), max_delay: Duration::from_secs(5), total: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The pause before retry `attempt` (0-based): uniform in `[0, min(max_delay, base * 2^attempt)]`, or `None`
    /// once the time budget since `started` is spent.
    pub fn delay(&self, attempt: u32, started: Instant) -> Option<Duration> {
        let cap = self.base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(self.max_delay);
        let delay = cap.mul_f64(fastrand::f64());
        let elapsed = started.elapsed();
        if elapsed + delay > self.total { None } else { Some(delay) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_jittered_and_stop() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            total: Duration::from_secs(3600),
        };
        let now = Instant::now();
        for attempt in 0..40 {
            let cap = Duration::from_millis((10u64 << attempt.min(20)).min(100));
            let d = b.delay(attempt, now).unwrap();
            assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| b.delay(5, now).unwrap()).collect();
        assert!(distinct.len() > 10, "full jitter spreads the delays");
        let spent = Backoff { total: Duration::ZERO, ..b };
        assert_eq!(spent.delay(0, now - Duration::from_millis(1)), None);
    }
}
