//! The consumer's command line. Every flag has an environment variable; flags win.

use std::time::Duration;

use clap::Parser;
use jobstream::bounds::{parse_kind_timeout, JobTimeouts};
use jobstream::config::{duration_between, QueueArgs, RedisArgs};
use jobstream::retry::parse_kind_attempts;
use jobstream::retry::RetryPolicy;
use jobstream::WorkerConfig;
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
    /// Consumer name, unique per process: 1 to 200 characters, no control characters
    /// [default: <hostname>-<pid>].
    #[arg(long, env = "JOBSTREAM_CONSUMER", value_parser = consumer_name)]
    pub consumer: Option<String>,
    /// Address of the /healthz, /readyz and /metrics endpoints. Unset: 0.0.0.0:9090, or when another process
    /// (a second consumer on this host) holds it, the next free port up to 9099, then any free port, logged;
    /// an address given here that cannot be bound is an error
    /// [default: 0.0.0.0:9090].
    #[arg(long, env = "JOBSTREAM_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Most jobs running at once.
    #[arg(long, env = "JOBSTREAM_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Threads of the async runtime, which run the jobs (and the reads, acknowledgements and health server), 1 to
    /// 1024 [default: TOKIO_WORKER_THREADS when set, else the CPUs this process may use, its cgroup's CPU quota
    /// included]. 1 costs less CPU per job where the consumer shares its cores with Redis or other processes
    /// (bench/RESULTS.md); more let CPU-heavy handlers run on more cores at once.
    #[arg(long, env = "JOBSTREAM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Most entries fetched by one XREADGROUP, never more than the free slots of --concurrency (which bound it at
    /// the default concurrency). Larger reads cost less CPU per job at high concurrency (bench/RESULTS.md).
    #[arg(long, env = "JOBSTREAM_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// How long one XREADGROUP waits for new entries (also bounds how long shutdown waits for the reader):
    /// 10ms to 60s, and shorter than the visibility timeout.
    #[arg(long, env = "JOBSTREAM_BLOCK", default_value = "2s", value_parser = duration_between(BLOCK_MIN, BLOCK_MAX))]
    pub block: Duration,
    /// How long running jobs may take to finish after SIGTERM (at most 24h).
    #[arg(long, env = "JOBSTREAM_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration_between(Duration::ZERO, DAY))]
    pub shutdown_grace: Duration,
    /// A job idle this long in another consumer's hands is taken over (that consumer is presumed dead).
    /// Running jobs renew their claim every third of it, so a slow job of a live worker is never taken.
    /// 100ms to 24h.
    #[arg(long, env = "JOBSTREAM_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = duration_between(VISIBILITY_MIN, DAY))]
    pub visibility_timeout: Duration,
    /// Attempts per job, the first included; then the job is dead-lettered.
    #[arg(long, env = "JOBSTREAM_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Attempts for one job kind, overriding --max-attempts: KIND=N (repeatable; env: comma-separated).
    #[arg(long, env = "JOBSTREAM_MAX_ATTEMPTS_FOR", value_delimiter = ',', value_parser = parse_kind_attempts)]
    pub max_attempts_for: Vec<(String, u32)>,
    /// Longest one attempt may run (e.g. 30s): past it the handler is cancelled and the attempt fails with
    /// error.type=timeout, then follows the retry policy. A job's own timeout (enqueue --timeout) wins, then
    /// --job-timeout-for. Default: none.
    #[arg(long, env = "JOBSTREAM_JOB_TIMEOUT", value_parser = duration_between(Duration::from_millis(1), 30 * DAY))]
    pub job_timeout: Option<Duration>,
    /// Timeout for one job kind, overriding --job-timeout: KIND=D (repeatable; env: comma-separated).
    #[arg(long, env = "JOBSTREAM_JOB_TIMEOUT_FOR", value_delimiter = ',', value_parser = parse_kind_timeout)]
    pub job_timeout_for: Vec<(String, Duration)>,
    /// Delay before the second attempt; it doubles for each further one (with jitter).
    #[arg(long, env = "JOBSTREAM_RETRY_BASE_DELAY", default_value = "1s", value_parser = duration_between(Duration::ZERO, 30 * DAY))]
    pub retry_base_delay: Duration,
    /// Longest delay between attempts (at most 30 days).
    #[arg(long, env = "JOBSTREAM_RETRY_MAX_DELAY", default_value = "5m", value_parser = duration_between(Duration::ZERO, 30 * DAY))]
    pub retry_max_delay: Duration,
    /// A job delivered more often than this without an outcome (it crashes its workers) is dead-lettered.
    #[arg(long, env = "JOBSTREAM_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,
    /// Acknowledged jobs older than this are trimmed from the stream; an entry a group has not acknowledged
    /// or received is never trimmed. 0 keeps everything. The shipped kinds' `done` hash expires this long after
    /// its last write. At most 365 days.
    #[arg(long, env = "JOBSTREAM_RETENTION", default_value = "1h", value_parser = duration_between(Duration::ZERO, YEAR))]
    pub retention: Duration,
    /// Dead jobs older than this are trimmed. 0 keeps them (the --dead-maxlen cap still applies). At most 365 days.
    #[arg(long, env = "JOBSTREAM_DEAD_RETENTION", default_value = "7days", value_parser = duration_between(Duration::ZERO, YEAR))]
    pub dead_retention: Duration,
    /// parent: each attempt's span continues the producer's trace. link: each attempt starts a new trace
    /// linked to the producer's span (for long delays or very large fan-outs).
    #[arg(long, env = "JOBSTREAM_TRACE_MODE", value_enum, default_value_t = TraceMode::Parent)]
    pub trace_mode: TraceMode,
    /// Approximate cap on the dead-letter stream's length; 0 for none.
    #[arg(long, env = "JOBSTREAM_DEAD_MAXLEN", default_value_t = 100_000)]
    pub dead_maxlen: u64,
    /// demo kind: multiplies the simulated latency of each step; 0 for none, at most 1000.
    #[arg(long, env = "JOBSTREAM_DEMO_LATENCY_SCALE", default_value_t = 1.0, value_parser = latency_scale)]
    pub demo_latency_scale: f64,
    /// demo kind: probability in [0, 1] that an attempt fails.
    #[arg(long, env = "JOBSTREAM_DEMO_FAILURE_RATE", default_value_t = 0.1, value_parser = probability)]
    pub demo_failure_rate: f64,
    /// demo kind: how long results stay in Redis (at most 365 days).
    #[arg(long, env = "JOBSTREAM_RESULT_TTL", default_value = "24h", value_parser = duration_between(Duration::ZERO, YEAR))]
    pub result_ttl: Duration,
    /// A consumer of the group idle this long that holds no pending entry (a process that is gone) is removed
    /// from the group; 0 never removes one. 1s to 365 days [default: 1h or 10 × the visibility timeout,
    /// whichever is longer].
    #[arg(long, env = "JOBSTREAM_REMOVE_IDLE_CONSUMERS_AFTER", value_parser = idle_consumer_bound)]
    pub remove_idle_consumers_after: Option<Duration>,
    /// How long a finished job's status record (state, attempts, progress, result) is kept for `producer job
    /// show|result`, 1s to 365 days.
    #[arg(long, env = "JOBSTREAM_JOB_RETENTION", default_value = "24h", value_parser = duration_between(Duration::from_secs(1), YEAR))]
    pub job_retention: Duration,
    /// Keep no status records: settling a job then writes nothing but its acknowledgement (or move), and
    /// `producer job show` knows only what producers recorded.
    #[arg(long, env = "JOBSTREAM_NO_JOB_RECORDS")]
    pub no_job_records: bool,
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shorter blocking reads spin: a read a millisecond costs Redis and the worker CPU for nothing.
const BLOCK_MIN: Duration = Duration::from_millis(10);
/// SIGTERM is noticed between reads, so the block time bounds how late shutdown starts.
const BLOCK_MAX: Duration = Duration::from_secs(60);
/// Claims are renewed every third of the visibility timeout; below this a renewal cannot be relied on to land
/// in time, and a worker takes its own running jobs over.
const VISIBILITY_MIN: Duration = Duration::from_millis(100);
/// The shortest idle time after which a consumer holding nothing is removed from the group.
const IDLE_CONSUMER_MIN: Duration = Duration::from_secs(1);

impl Cli {
    /// Parses the command line and environment; a flag out of range, or flags that contradict each other,
    /// end the process with one `error:` line and exit status 2, as clap does for any bad usage.
    pub fn parse_valid() -> Self {
        let cli = Self::parse();
        if let Err(message) = cli.check() {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n")).exit();
        }
        cli
    }

    /// What no single flag's parser can see.
    fn check(&self) -> Result<(), String> {
        if self.block >= self.visibility_timeout {
            return Err(format!(
                "--block ({:?}) must be shorter than --visibility-timeout ({:?}): dead workers' jobs are taken over between reads",
                self.block, self.visibility_timeout
            ));
        }
        Ok(())
    }

    /// The worker's configuration from these flags, for the consumer named `consumer`.
    pub fn worker_config(&self, consumer: String) -> WorkerConfig {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let mut config = WorkerConfig::named(consumer);
        config.group = self.group.clone();
        config.concurrency = self.concurrency as usize;
        config.batch_size = self.batch_size as usize;
        config.block = self.block;
        config.shutdown_grace = self.shutdown_grace;
        config.limits = self.queue.limits();
        config.dead_maxlen = self.dead_maxlen;
        config.visibility_timeout = self.visibility_timeout;
        config.max_deliveries = self.max_deliveries;
        config.trace_mode = self.trace_mode;
        config.retention = nonzero(self.retention);
        config.dead_retention = nonzero(self.dead_retention);
        config.remove_idle_consumers_after = self.idle_consumer_bound();
        config.job_records = !self.no_job_records;
        config.job_retention = self.job_retention;
        config.timeouts =
            JobTimeouts { default: self.job_timeout, by_kind: self.job_timeout_for.iter().cloned().collect() };
        config.retry = RetryPolicy {
            max_attempts: self.max_attempts,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
            max_attempts_by_kind: self.max_attempts_for.iter().cloned().collect(),
        };
        config
    }

    /// How long a consumer holding nothing may stay idle before it is removed from the group; `None` never.
    pub fn idle_consumer_bound(&self) -> Option<Duration> {
        match self.remove_idle_consumers_after {
            Some(bound) if bound.is_zero() => None,
            Some(bound) => Some(bound),
            None => Some((10 * self.visibility_timeout).max(Duration::from_secs(3600))),
        }
    }
}

fn consumer_name(text: &str) -> Result<String, String> {
    let length = text.chars().count();
    if text.trim().is_empty() || length > 200 || text.chars().any(char::is_control) {
        return Err("a consumer name is 1 to 200 characters, not all blank, with no control characters".to_owned());
    }
    Ok(text.to_owned())
}

fn latency_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if (0.0..=1000.0).contains(&scale) => Ok(scale),
        Ok(scale) => Err(format!("{scale} is not a factor from 0 to 1000")),
        Err(e) => Err(e.to_string()),
    }
}

fn idle_consumer_bound(text: &str) -> Result<Duration, String> {
    match duration_between(Duration::ZERO, YEAR)(text)? {
        bound if !bound.is_zero() && bound < IDLE_CONSUMER_MIN => {
            Err("must be 0 (never) or from 1s to 365days".to_owned())
        }
        bound => Ok(bound),
    }
}

fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Ok(p) => Err(format!("{p} is not a probability between 0 and 1")),
        Err(e) => Err(e.to_string()),
    }
}
