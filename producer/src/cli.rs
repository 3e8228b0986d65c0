//! The producer's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jobstream::config::{parse_duration, QueueArgs, RedisArgs, Secret};
use jobstream::IdempotencyKey;

/// jobstream producer: puts jobs on a Redis stream, each carrying the W3C trace context of its `send` span.
///
/// Tracing follows the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL,
/// OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER...); with no endpoint set, spans are not exported but trace ids are
/// still made and propagated.
#[derive(Parser, Debug)]
#[command(name = "producer", version, verbatim_doc_comment, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enqueue jobs and print one line per job: `<job id> <trace id>`.
    Enqueue(EnqueueArgs),
    /// Run the demo end to end: start consumers, send demo jobs, report what happened and one job's span tree.
    Demo(DemoArgs),
    /// Serve the HTTP API: POST /v1/jobs {kind, payload} answers 202 {id, trace_id}; plus /healthz, /readyz,
    /// /metrics. An incoming traceparent is continued through the queue to the worker.
    Serve(ServeArgs),
    /// Show a queue's numbers: length, lag, pending, oldest pending age, consumers, delayed and dead counts.
    Stats(StatsArgs),
    /// Inspect and act on dead-lettered jobs.
    #[command(subcommand)]
    Dead(DeadCommand),
}

/// `producer serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Address to serve on.
    #[arg(long, env = "JOBSTREAM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Require `Authorization: Bearer <token>` on POST /v1/jobs. Never printed.
    #[arg(long, env = "JOBSTREAM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,
    /// How long an idempotency key is remembered.
    #[arg(long, env = "JOBSTREAM_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
}

/// `producer stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `producer dead …`.
#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List dead jobs, oldest first: `<dead id> <job id> <kind> <reason> attempt=<n> <error>`.
    List {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        queue: QueueArgs,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Start at this dead id (inclusive).
        #[arg(long, default_value = "-")]
        from: String,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show every field of one dead job, as JSON.
    Show {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        queue: QueueArgs,
        /// Its id in the dead stream.
        dead_id: String,
    },
    /// Put dead jobs back on the queue as attempt 1; each new trace links to the one the job died in.
    Replay {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        queue: QueueArgs,
        /// Replay every dead job (at the time of the call).
        #[arg(long, conflicts_with = "dead_ids")]
        all: bool,
        /// Ids in the dead stream.
        #[arg(required_unless_present = "all")]
        dead_ids: Vec<String>,
    },
    /// Delete every dead job of the queue.
    Purge {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        queue: QueueArgs,
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// `producer enqueue`.
#[derive(Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Job kind; routes the job to a handler.
    #[arg(long, env = "JOBSTREAM_KIND")]
    pub kind: String,
    /// The job's data, as JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// How many jobs to enqueue (sent in pipelined batches of 1000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Enqueue only if no job with this key was enqueued within --idempotency-ttl; otherwise print the
    /// earlier job's line and enqueue nothing. Only with --count 1.
    #[arg(long)]
    pub idempotency_key: Option<IdempotencyKey>,
    /// How long an idempotency key is remembered.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
}

/// `producer demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// How many consumer processes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub consumers: u32,
    /// How many demo jobs to send.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub jobs: u32,
    /// Jobs each consumer runs at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// Multiplies the demo steps' simulated latency; 0 for none.
    #[arg(long, default_value_t = 0.25)]
    pub latency_scale: f64,
    /// Probability that an attempt fails (it is then retried).
    #[arg(long, default_value_t = 0.1)]
    pub failure_rate: f64,
    /// Give up waiting for the jobs after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The consumer binary [default: `consumer` next to this program].
    #[arg(long)]
    pub consumer_bin: Option<PathBuf>,
    /// Keep the demo queue's keys in Redis afterwards (they are deleted by default).
    #[arg(long)]
    pub keep: bool,
}
