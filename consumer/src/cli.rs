//! The consumer's command line. Every flag has an environment variable; flags win.

use std::time::Duration;

use clap::Parser;
use jobstream::config::{parse_duration, QueueArgs, RedisArgs};
use jobstream::retry::parse_kind_attempts;
use jobstream::{GroupName, TraceMode};

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
#[command(name = "consumer", version, verbatim_doc_comment, args_override_self = true)]
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
    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, env = "JOBSTREAM_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: std::net::SocketAddr,
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
    /// A job idle this long in another consumer's hands is taken over (that consumer is presumed dead).
    /// Running jobs renew their claim every third of it, so a slow job of a live worker is never taken.
    #[arg(long, env = "JOBSTREAM_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub visibility_timeout: Duration,
    /// Attempts per job, the first included; then the job is dead-lettered.
    #[arg(long, env = "JOBSTREAM_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Attempts for one job kind, overriding --max-attempts: KIND=N (repeatable; env: comma-separated).
    #[arg(long, env = "JOBSTREAM_MAX_ATTEMPTS_FOR", value_delimiter = ',', value_parser = parse_kind_attempts)]
    pub max_attempts_for: Vec<(String, u32)>,
    /// Delay before the second attempt; it doubles for each further one (with jitter).
    #[arg(long, env = "JOBSTREAM_RETRY_BASE_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub retry_base_delay: Duration,
    /// Longest delay between attempts.
    #[arg(long, env = "JOBSTREAM_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// A job delivered more often than this without an outcome (it crashes its workers) is dead-lettered.
    #[arg(long, env = "JOBSTREAM_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,
    /// Acknowledged jobs older than this are trimmed from the stream; an entry a group has not acknowledged
    /// or received is never trimmed. 0 keeps everything.
    #[arg(long, env = "JOBSTREAM_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Dead jobs older than this are trimmed. 0 keeps them (the --dead-maxlen cap still applies).
    #[arg(long, env = "JOBSTREAM_DEAD_RETENTION", default_value = "7days", value_parser = parse_duration)]
    pub dead_retention: Duration,
    /// parent: each attempt's span continues the producer's trace. link: each attempt starts a new trace
    /// linked to the producer's span (for long delays or very large fan-outs).
    #[arg(long, env = "JOBSTREAM_TRACE_MODE", value_enum, default_value_t = TraceMode::Parent)]
    pub trace_mode: TraceMode,
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
