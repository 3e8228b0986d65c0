//! When a failed job runs again: exponential back-off with jitter, up to a number of attempts per queue that a
//! job kind may override.

use std::collections::HashMap;
use std::time::Duration;

/// A retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last failure the job is dead-lettered.
    pub max_attempts: u32,
    /// Delay after the first failure; doubles after each further one.
    pub base_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// `max_attempts` per job kind, overriding the queue's.
    pub max_attempts_by_kind: HashMap<String, u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts_by_kind: HashMap::new(),
        }
    }
}

impl RetryPolicy {
    /// Attempts allowed for jobs of `kind`.
    pub fn max_attempts_for(&self, kind: &str) -> u32 {
        self.max_attempts_by_kind.get(kind).copied().unwrap_or(self.max_attempts)
    }

    /// The delay before the attempt after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        crate::backoff::jittered(self.base_delay, self.max_delay, attempt.saturating_sub(1))
    }
}

/// Parses `kind=N`, the form of a per-kind override on the command line.
pub fn parse_kind_attempts(text: &str) -> Result<(String, u32), String> {
    let (kind, n) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KIND=N"))?;
    crate::job::JobKind::parse(kind).map_err(|e| e.to_string())?;
    match n.parse::<u32>() {
        Ok(n) if n >= 1 => Ok((kind.to_owned(), n)),
        _ => Err(format!("{n:?} is not a number of attempts (1 or more)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..Default::default()
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let d = policy.delay_after(attempt).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} ms not in [{}, {full}]", full / 2);
        }
    }

    #[test]
    fn kinds_override_the_queue() {
        let mut policy = RetryPolicy::default();
        policy.max_attempts_by_kind.insert("email".into(), 9);
        assert_eq!(policy.max_attempts_for("email"), 9);
        assert_eq!(policy.max_attempts_for("other"), 5);
        assert_eq!(parse_kind_attempts("email=3"), Ok(("email".into(), 3)));
        assert!(parse_kind_attempts("email=0").is_err());
        assert!(parse_kind_attempts("bad kind=2").is_err());
    }
}
