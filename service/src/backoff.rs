//! Capped exponential backoff with jitter, for broker and database outages.
//!
//! Invariant: delays never exceed the cap and never drop below half the
//! un-jittered value, so several relays spread out without starving.

use std::time::Duration;

use rand::Rng;

/// Backoff state: call [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, failures: 0 }
    }

    /// The un-jittered delay for the current failure count.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(30));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (jittered into `[ceiling/2, ceiling]`), counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let jitter = rand::rng().random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..20 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling && d >= ceiling / 2, "{d:?} not in [{:?}, {ceiling:?}]", ceiling / 2);
            assert!(ceiling >= last_ceiling);
            assert!(ceiling <= Duration::from_secs(5));
            last_ceiling = ceiling;
        }
        assert_eq!(last_ceiling, Duration::from_secs(5));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
