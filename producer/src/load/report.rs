//! The load run's report: what was sent, what was done, and the latency percentiles, as text or JSON.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of a histogram in µs; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// Enqueue → handler start and enqueue → acknowledgement.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latencies {
    pub enqueue_to_start: Option<Percentiles>,
    pub enqueue_to_ack: Option<Percentiles>,
}

/// Everything a load run measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub run: String,
    pub queue: String,
    pub kind: String,
    pub payload_bytes: usize,
    /// Jobs per second asked for; `None` when unthrottled.
    pub offered_rate: Option<f64>,
    /// Jobs Redis took.
    pub sent: u64,
    /// Jobs whose enqueue failed.
    pub enqueue_errors: u64,
    pub first_error: Option<String>,
    /// Why the consumers' figures (done, dead, latencies) could not be read, e.g. Redis failed mid-run.
    pub results_error: Option<String>,
    pub enqueue_seconds: f64,
    pub enqueue_rate: f64,
    /// How far the generator fell behind its schedule at worst (open loop only), ms.
    pub max_behind_ms: f64,
    pub waited: bool,
    pub timed_out: bool,
    /// Acknowledgements the consumers reported.
    pub done: u64,
    /// Entries added to the dead stream during the run.
    pub dead: u64,
    /// From the start to the last acknowledgement.
    pub drain_seconds: Option<f64>,
    pub drain_rate: Option<f64>,
    /// Consumer processes that reported latencies.
    pub consumers: usize,
    pub latency_ms: Latencies,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offered = self.offered_rate.map_or_else(|| "unthrottled".to_owned(), |r| format!("{r} jobs/s offered"));
        writeln!(f, "load run {} on queue {} ({} jobs, {offered})", self.run, self.queue, self.kind)?;
        writeln!(
            f,
            "enqueue: {} jobs in {:.2} s = {:.0} jobs/s, {} errors",
            self.sent, self.enqueue_seconds, self.enqueue_rate, self.enqueue_errors
        )?;
        if let Some(error) = &self.first_error {
            writeln!(f, "  first error: {error}")?;
        }
        if let Some(error) = &self.results_error {
            writeln!(f, "  results unknown: {error}")?;
        }
        if self.offered_rate.is_some() {
            writeln!(f, "  most behind schedule: {:.1} ms", self.max_behind_ms)?;
        }
        match (self.drain_seconds, self.drain_rate) {
            (Some(seconds), Some(rate)) => writeln!(
                f,
                "drain: {} done, {} dead-lettered; last ack {:.2} s after the start = {:.0} jobs/s ({} consumers)",
                self.done, self.dead, seconds, rate, self.consumers
            )?,
            _ => writeln!(f, "drain: {} done, {} dead-lettered so far", self.done, self.dead)?,
        }
        if self.timed_out {
            writeln!(
                f,
                "  gave up waiting: {} jobs neither done nor dead",
                self.sent.saturating_sub(self.done + self.dead)
            )?;
        } else if !self.waited {
            writeln!(f, "  not waited for (--wait); figures below are partial")?;
        }
        writeln!(f, "latency (ms)         count      p50      p90      p99    p99.9      max")?;
        for (name, p) in [
            ("enqueue -> start", &self.latency_ms.enqueue_to_start),
            ("enqueue -> ack", &self.latency_ms.enqueue_to_ack),
        ] {
            match p {
                Some(p) => writeln!(
                    f,
                    "  {name:<17} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                    p.count, p.p50, p.p90, p.p99, p.p999, p.max
                )?,
                None => writeln!(f, "  {name:<17} {:>8}", 0)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = jobstream::loadprobe::histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h).unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(Percentiles::of(&jobstream::loadprobe::histogram()), None);
    }
}
