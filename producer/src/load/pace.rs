//! When each job of a load run is due: all at once (unthrottled) or job `i` at `i / rate` seconds after the
//! start (open loop, so the offered load does not depend on how fast Redis answers).

use std::time::Duration;

/// How long a run sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// This many jobs.
    Jobs(u64),
    /// Until this long after the start.
    For(Duration),
}

/// The send schedule of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub limit: Limit,
    /// Jobs per second; `None` sends as fast as the batches in flight allow.
    pub rate: Option<f64>,
}

impl Pace {
    /// How many jobs the run sends in all, when that is known in advance.
    pub fn total(&self) -> Option<u64> {
        match (self.limit, self.rate) {
            (Limit::Jobs(n), _) => Some(n),
            (Limit::For(d), Some(rate)) => Some((d.as_secs_f64() * rate).ceil() as u64),
            (Limit::For(_), None) => None,
        }
    }

    /// How many jobs are due `elapsed` after the start (capped at the total).
    pub fn due(&self, elapsed: Duration) -> u64 {
        let by_time = match (self.limit, self.rate) {
            (_, Some(rate)) => (elapsed.as_secs_f64() * rate).floor() as u64 + 1,
            (Limit::For(d), None) if elapsed >= d => 0,
            _ => u64::MAX,
        };
        self.total().map_or(by_time, |total| by_time.min(total))
    }

    /// Whether a run that has sent `sent` jobs, `elapsed` after its start, is over.
    pub fn finished(&self, sent: u64, elapsed: Duration) -> bool {
        match (self.total(), self.limit) {
            (Some(total), _) => sent >= total,
            (None, Limit::For(d)) => elapsed >= d,
            (None, Limit::Jobs(_)) => unreachable!("a job count is a total"),
        }
    }

    /// When job `index` is due, after the start; `None` when unthrottled (due at once).
    pub fn due_at(&self, index: u64) -> Option<Duration> {
        self.rate.map(|rate| Duration::from_secs_f64(index as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_releases_jobs_at_the_rate() {
        let pace = Pace { limit: Limit::Jobs(10), rate: Some(100.0) };
        assert_eq!(pace.due(Duration::ZERO), 1);
        assert_eq!(pace.due(Duration::from_millis(55)), 6);
        assert_eq!(pace.due(Duration::from_secs(5)), 10);
        assert_eq!(pace.due_at(3), Some(Duration::from_millis(30)));
        assert!(!pace.finished(9, Duration::from_secs(9)));
        assert!(pace.finished(10, Duration::ZERO));
    }

    #[test]
    fn a_duration_at_a_rate_is_a_job_count() {
        let pace = Pace { limit: Limit::For(Duration::from_secs(2)), rate: Some(250.0) };
        assert_eq!(pace.total(), Some(500));
        assert_eq!(pace.due(Duration::from_secs(3)), 500);
    }

    #[test]
    fn unthrottled_runs_send_everything_or_until_time_is_up() {
        let jobs = Pace { limit: Limit::Jobs(7), rate: None };
        assert_eq!(jobs.due(Duration::ZERO), 7);
        assert_eq!(jobs.due_at(5), None);
        let timed = Pace { limit: Limit::For(Duration::from_secs(1)), rate: None };
        assert_eq!(timed.total(), None);
        assert_eq!(timed.due(Duration::from_millis(10)), u64::MAX);
        assert!(!timed.finished(1_000_000, Duration::from_millis(999)));
        assert!(timed.finished(0, Duration::from_secs(1)));
        assert_eq!(timed.due(Duration::from_secs(1)), 0);
    }
}
