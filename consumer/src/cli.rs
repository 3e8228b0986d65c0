//! The consumer's command line. Every flag has an environment variable; flags win.

use std::time::Duration;

use clap::Parser;
use jobstream::config::{parse_duration, QueueArgs, RedisArgs};
use jobstream::GroupName;

/// jobstream worker pool: reads jobs from a Redis stream as one consumer of a consumer group, runs each inside
/// a span that continues the producer's trace, and acknowledges it after success.
///
/// Runs until SIGTERM or SIGINT, then stops reading, lets running jobs finish within the grace period,
/// acknowledges them, flushes spans and exits 0. Jobs it could not finish stay pending for another worker.
///
/// Job kinds: demo (the four seed steps as child spans), noop (load tests), fanout (enqueues follow-up jobs).
/// Tracing follows the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL,
/// OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER...); with no endpoint set, spans are not exported.
#[derive(Parser, Debug)]
#[command(name = "consumer", version, verbatim_doc_comment)]
pub struct Cli {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Consumer group; created at the start of the stream if missing.
    #[arg(long, env = "JOBSTREAM_GROUP", default_value = jobstream::keys::DEFAULT_GROUP)]
    pub group: GroupName,
    /// Consumer name, unique per process [default: <hostname>-<pid>].
    #[arg(long, env = "JOBSTREAM_CONSUMER")]
    pub consumer: Option<String>,
    /// Most jobs running at once.
    #[arg(long, env = "JOBSTREAM_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Most entries fetched by one XREADGROUP.
    #[arg(long, env = "JOBSTREAM_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// How long one XREADGROUP waits for new entries (also bounds how long shutdown waits for the reader).
    #[arg(long, env = "JOBSTREAM_BLOCK", default_value = "2s", value_parser = parse_duration)]
    pub block: Duration,
    /// How long running jobs may take to finish after SIGTERM.
    #[arg(long, env = "JOBSTREAM_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Approximate cap on the dead-letter stream's length; 0 for none.
    #[arg(long, env = "JOBSTREAM_DEAD_MAXLEN", default_value_t = 100_000)]
    pub dead_maxlen: u64,
    /// demo kind: multiplies the simulated latency of each step; 0 for none.
    #[arg(long, env = "JOBSTREAM_DEMO_LATENCY_SCALE", default_value_t = 1.0)]
    pub demo_latency_scale: f64,
    /// demo kind: probability in [0, 1] that an attempt fails.
    #[arg(long, env = "JOBSTREAM_DEMO_FAILURE_RATE", default_value_t = 0.1, value_parser = probability)]
    pub demo_failure_rate: f64,
    /// demo kind: how long results stay in Redis.
    #[arg(long, env = "JOBSTREAM_RESULT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub result_ttl: Duration,
}

fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Ok(p) => Err(format!("{p} is not a probability between 0 and 1")),
        Err(e) => Err(e.to_string()),
    }
}
