//! How long one attempt of a job may run: a job's own `timeout_ms` wins, then its kind's timeout, then the
//! queue-wide one; with none of them an attempt runs as long as its handler does.

use std::collections::HashMap;
use std::time::Duration;

/// A worker's timeouts for attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTimeouts {
    /// The queue-wide timeout; `None` for none.
    pub default: Option<Duration>,
    /// Timeouts per job kind, overriding the queue-wide one.
    pub by_kind: HashMap<String, Duration>,
}

impl JobTimeouts {
    /// The timeout of an attempt of a job of `kind` whose own timeout is `own`: the job's, else its kind's,
    /// else the queue-wide one.
    pub fn resolve(&self, own: Option<Duration>, kind: &str) -> Option<Duration> {
        own.or_else(|| self.by_kind.get(kind).copied()).or(self.default)
    }
}

/// Parses `kind=D` (a duration such as `30s`, above 0), the form of a per-kind timeout on the command line.
#[cfg(feature = "cli")]
pub fn parse_kind_timeout(text: &str) -> Result<(String, Duration), String> {
    let (kind, d) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KIND=DURATION"))?;
    crate::job::JobKind::parse(kind).map_err(|e| e.to_string())?;
    match humantime::parse_duration(d) {
        Ok(d) if !d.is_zero() => Ok((kind.to_owned(), d)),
        Ok(_) => Err("a timeout must be above 0".to_owned()),
        Err(e) => Err(format!("{d:?} is not a duration such as 30s: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_wins_then_the_kind_then_the_queue() {
        let s = Duration::from_secs;
        let timeouts = JobTimeouts { default: Some(s(30)), by_kind: [("email".to_owned(), s(5))].into() };
        assert_eq!(timeouts.resolve(Some(s(1)), "email"), Some(s(1)));
        assert_eq!(timeouts.resolve(None, "email"), Some(s(5)));
        assert_eq!(timeouts.resolve(None, "other"), Some(s(30)));
        assert_eq!(JobTimeouts::default().resolve(None, "other"), None);
    }
}
