//! Prometheus metrics of a jobstream process, served on `/metrics` by `health` (feature `http`).
//!
//! Job metrics are updated as jobs settle; queue gauges (length, lag, pending, oldest pending age, delayed,
//! dead) are read from Redis when `/metrics` is scraped, so they are always current and cost nothing between
//! scrapes. Names follow Prometheus conventions: base units (seconds), `_total` for counters.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::admin::QueueStats;

/// Labels of per-job metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Queue name.
    pub queue: String,
    /// Job kind.
    pub kind: String,
}

/// Handles on the metrics every job of one (queue, kind) updates: they share storage with the families, so
/// updating them costs no label allocation or family lookup.
#[derive(Clone, Debug)]
pub struct KindHandles {
    /// `jobstream_processing_duration_seconds`.
    pub processing: Histogram,
    /// `jobstream_queue_wait_seconds`.
    pub queue_wait: Histogram,
    /// `jobstream_jobs_total{outcome="succeeded"}`.
    pub succeeded: Counter,
}

/// Labels of job outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Queue name.
    pub queue: String,
    /// Job kind.
    pub kind: String,
    /// `succeeded`, `retried`, `dead` or `cancelled`.
    pub outcome: String,
}

/// Labels of dead letters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLabels {
    /// Queue name.
    pub queue: String,
    /// The `dead.reason`.
    pub reason: String,
}

/// Labels of per-queue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Queue name.
    pub queue: String,
}

/// Labels of per-group metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Queue name.
    pub queue: String,
    /// Consumer group.
    pub group: String,
}

/// Every metric a jobstream process exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Attempts settled, by kind and outcome.
    pub jobs: Family<OutcomeLabels, Counter>,
    /// How long handlers ran.
    pub processing: Family<JobLabels, Histogram>,
    /// Time from first enqueue to the start of an attempt.
    pub queue_wait: Family<JobLabels, Histogram>,
    /// Dead letters by reason.
    pub dead_letters: Family<DeadLabels, Counter>,
    /// Entries taken over from consumers presumed dead.
    pub reclaims: Family<QueueLabels, Counter>,
    /// Jobs running now.
    pub in_flight: Family<QueueLabels, Gauge>,
    /// Jobs enqueued by this process.
    pub enqueued: Family<JobLabels, Counter>,
    /// Enqueue calls that failed.
    pub enqueue_errors: Family<QueueLabels, Counter>,
    queue_length: Family<QueueLabels, Gauge>,
    queue_delayed: Family<QueueLabels, Gauge>,
    queue_dead: Family<QueueLabels, Gauge>,
    queue_paused: Family<QueueLabels, Gauge>,
    group_lag: Family<GroupLabels, Gauge>,
    group_pending: Family<GroupLabels, Gauge>,
    group_consumers: Family<GroupLabels, Gauge>,
    group_oldest_pending_age: Family<GroupLabels, Gauge<f64, AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jobstream");
        let jobs = Family::<OutcomeLabels, Counter>::default();
        let processing = Family::<JobLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let queue_wait = Family::<JobLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let metrics = Self {
            jobs: jobs.clone(),
            processing: processing.clone(),
            queue_wait: queue_wait.clone(),
            dead_letters: Family::default(),
            reclaims: Family::default(),
            in_flight: Family::default(),
            enqueued: Family::default(),
            enqueue_errors: Family::default(),
            queue_length: Family::default(),
            queue_delayed: Family::default(),
            queue_dead: Family::default(),
            queue_paused: Family::default(),
            group_lag: Family::default(),
            group_pending: Family::default(),
            group_consumers: Family::default(),
            group_oldest_pending_age: Family::default(),
            registry: Registry::default(),
        };
        registry.register("jobs", "Job attempts settled, by kind and outcome", metrics.jobs.clone());
        registry.register_with_unit(
            "processing_duration",
            "Time a handler ran",
            prometheus_client::registry::Unit::Seconds,
            metrics.processing.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "Time from first enqueue to the start of an attempt",
            prometheus_client::registry::Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        registry.register("dead_letters", "Jobs moved to the dead stream, by reason", metrics.dead_letters.clone());
        registry.register(
            "reclaims",
            "Entries taken over from consumers idle past the visibility timeout",
            metrics.reclaims.clone(),
        );
        registry.register("jobs_in_flight", "Jobs running now", metrics.in_flight.clone());
        registry.register("enqueued", "Jobs enqueued by this process", metrics.enqueued.clone());
        registry.register("enqueue_errors", "Enqueue calls that failed", metrics.enqueue_errors.clone());
        registry.register(
            "queue_length",
            "Entries in the stream, acknowledged ones included until trimmed",
            metrics.queue_length.clone(),
        );
        registry.register("queue_delayed", "Jobs waiting in the delayed set", metrics.queue_delayed.clone());
        registry.register("queue_dead", "Entries in the dead stream", metrics.queue_dead.clone());
        registry.register("queue_paused", "1 while the queue is paused, else 0", metrics.queue_paused.clone());
        registry.register("group_lag", "Entries not yet delivered to the group", metrics.group_lag.clone());
        registry.register("group_pending", "Entries delivered and not yet acknowledged", metrics.group_pending.clone());
        registry.register("group_consumers", "Consumers known to the group", metrics.group_consumers.clone());
        registry.register_with_unit(
            "group_oldest_pending_age",
            "Age of the oldest pending entry",
            prometheus_client::registry::Unit::Seconds,
            metrics.group_oldest_pending_age.clone(),
        );
        Self { registry, ..metrics }
    }

    /// Records one settled attempt.
    pub fn settled(&self, queue: &str, kind: &str, outcome: &str) {
        self.jobs
            .get_or_create(&OutcomeLabels { queue: queue.into(), kind: kind.into(), outcome: outcome.into() })
            .inc();
    }

    /// The hot-path metrics of one queue and job kind, resolved once.
    pub fn kind_handles(&self, queue: &str, kind: &str) -> KindHandles {
        let labels = JobLabels { queue: queue.into(), kind: kind.into() };
        let outcome = OutcomeLabels { queue: queue.into(), kind: kind.into(), outcome: "succeeded".into() };
        KindHandles {
            processing: self.processing.get_or_create(&labels).clone(),
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            succeeded: self.jobs.get_or_create(&outcome).clone(),
        }
    }

    /// Sets the queue gauges from fresh statistics.
    pub fn observe_queue(&self, stats: &QueueStats) {
        let queue = QueueLabels { queue: stats.queue.clone() };
        self.queue_length.get_or_create(&queue).set(stats.length as i64);
        self.queue_delayed.get_or_create(&queue).set(stats.delayed as i64);
        self.queue_dead.get_or_create(&queue).set(stats.dead as i64);
        self.queue_paused.get_or_create(&queue).set(i64::from(stats.paused));
        for group in &stats.groups {
            let labels = GroupLabels { queue: stats.queue.clone(), group: group.name.clone() };
            // An unknown lag (Redis cannot tell, or contradicts itself) is no series at all, never a false 0
            // or a false backlog.
            match group.lag {
                Some(lag) => {
                    self.group_lag.get_or_create(&labels).set(lag as i64);
                }
                None => {
                    self.group_lag.remove(&labels);
                }
            }
            self.group_pending.get_or_create(&labels).set(group.pending as i64);
            self.group_consumers.get_or_create(&labels).set(group.consumers as i64);
            self.group_oldest_pending_age
                .get_or_create(&labels)
                .set(group.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The registry in the classic Prometheus text format (0.0.4), for scrapers and tools (`promtool`) that do
    /// not speak OpenMetrics: counter families carry their `_total` name, and `# UNIT`/`# EOF` are left out.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total_and_drops_openmetrics_only_lines() {
        let metrics = Metrics::new();
        metrics.settled("q", "noop", "succeeded");
        let text = metrics.encode_prometheus();
        assert!(text.contains("# HELP jobstream_jobs_total Job attempts settled"), "{text}");
        assert!(text.contains("# TYPE jobstream_jobs_total counter"));
        assert!(text.contains(r#"jobstream_jobs_total{queue="q",kind="noop",outcome="succeeded"} 1"#));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(metrics.encode_openmetrics().ends_with("# EOF\n"));
    }
}
