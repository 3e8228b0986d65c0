//! Exponential back-off with equal jitter (each delay drawn from `[d/2, d]`, not full jitter's `[0, d]`): the
//! worker's loops retry Redis with it after an error (reads, acks, promotion of due retries) without a busy
//! loop or a thundering herd, and [`crate::retry::RetryPolicy`] spaces a failed job's attempts with [`jittered`].

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `max`, each drawn uniformly from `[d/2, d]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A back-off starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, failures: 0 }
    }

    /// The delay before the next try; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.base, self.max, self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `base · 2^exponent`, capped at `max`, then drawn uniformly from `[d/2, d]` ("equal jitter"): delays grow
/// exponentially but never synchronise across workers.
pub fn jittered(base: Duration, max: Duration, exponent: u32) -> Duration {
    let cap = base.saturating_mul(1u32 << exponent.min(20)).min(max);
    let half = cap / 2;
    half + rand::rng().random_range(Duration::ZERO..=cap - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        assert!(b.next_delay() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
