//! The producer's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jobstream::config::{duration_between, parse_duration, parse_time, QueueArgs, RedisArgs, Secret};
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
    /// Generate load: send many jobs (optionally at a fixed rate), wait for them, and report enqueue rate, drain
    /// rate and end-to-end latency percentiles measured by the consumers.
    ///
    /// Each job carries a probe mark (`load_run`, `load_sent_us` entry fields); the consumers record the time
    /// from the job's due send time to its handler's start and to its acknowledgement in HDR histograms and
    /// publish them to Redis, where this command merges them: it works across any number of consumer
    /// processes and costs the consumers no extra Redis command per job. With --rate, times are measured from
    /// when each job was due (open loop), so a generator that falls behind shows in the latency.
    #[command(verbatim_doc_comment)]
    Load(LoadArgs),
    /// Run the demo end to end: start consumers, send demo jobs, report what happened and one job's span tree.
    Demo(DemoArgs),
    /// Serve the HTTP API and the dashboard: POST /v1/jobs {kind, payload, delay?, run_at?} answers 202 {id,
    /// trace_id}; the dashboard at /ui/ and its JSON API (GET /v1/queues, /v1/queues/{queue},
    /// /v1/queues/{queue}/jobs, GET and DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result, POST
    /// /v1/queues/{queue}/pause|resume, POST /v1/queues/{queue}/dead/replay|purge); /healthz, /readyz, /metrics.
    /// Listens on loopback unless given a token (or --allow-unauthenticated). An incoming traceparent is continued
    /// through the queue to the worker.
    Serve(ServeArgs),
    /// Show a queue's numbers: length, lag, pending, oldest pending age, consumers, delayed and dead counts.
    Stats(StatsArgs),
    /// Inspect and act on dead-lettered jobs.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Periodic jobs: add, list, pause, resume and remove a queue's schedules; the consumers enqueue one job
    /// per tick.
    #[command(subcommand)]
    Cron(crate::cron::CronCommand),
    /// Pause or resume a whole queue: while paused, consumers start nothing new (running jobs finish).
    #[command(subcommand)]
    Queue(crate::queue::QueueCommand),
    /// One job by its id: show where it is (waiting, running, delayed, done, dead, cancelled, expired), cancel it,
    /// or print its result.
    #[command(subcommand)]
    Job(crate::job::JobCommand),
}

/// `producer serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Address to serve on. Loopback by default: without --api-token, any other address is refused unless
    /// --allow-unauthenticated says the API may be open to whoever reaches it.
    #[arg(long, env = "JOBSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Require this token on the API and the dashboard: `Authorization: Bearer <token>`, or the session cookie
    /// the dashboard's login sets. Never printed.
    #[arg(long, env = "JOBSTREAM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,
    /// Serve without a token on a non-loopback address: anyone who reaches the port can enqueue jobs, replay
    /// and purge dead letters, cancel jobs and pause queues.
    #[arg(long, env = "JOBSTREAM_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// The dashboard (/ui/) shows no action and the API refuses every one (replay, purge, cancel, pause,
    /// resume) with 403; enqueueing (POST /v1/jobs) stays.
    #[arg(long, env = "JOBSTREAM_UI_READ_ONLY")]
    pub ui_read_only: bool,
    /// Link every job and attempt on the dashboard to its trace: `{trace_id}` (and `{span_id}`) are replaced,
    /// e.g. http://localhost:16686/trace/{trace_id} for Jaeger.
    #[arg(long, env = "JOBSTREAM_TRACE_URL_TEMPLATE", default_value = "")]
    pub trace_url_template: String,
    /// How long an idempotency key is remembered.
    #[arg(long, env = "JOBSTREAM_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
    /// How long a request may take from its headers to its answer, its body included: a client that stalls
    /// is answered 408 and its connection closed.
    #[arg(long, env = "JOBSTREAM_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's line and headers, on a new connection or between
    /// requests on a kept-alive one: a client that stalls in them is disconnected.
    #[arg(long, env = "JOBSTREAM_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub header_read_timeout: Duration,
    /// Job kinds named in metric labels (comma-separated); jobs of other kinds are counted under `other`, so
    /// callers cannot create new series. Jobs of every kind are accepted.
    #[arg(long, env = "JOBSTREAM_METRIC_KINDS", value_delimiter = ',', default_value = "demo,noop,fanout")]
    pub metric_kinds: Vec<String>,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
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
    #[arg(long, default_value = "{}", conflicts_with = "payload_file")]
    pub payload: String,
    /// Read the job's data (JSON) from this file, or from standard input with `-`: for payloads too large for
    /// the command line (about 128 KiB). One over --max-payload-bytes is refused and nothing is enqueued.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
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
    /// Run the job(s) this long from now (e.g. 30s, 5m, 2h): they wait in the queue's delayed set until then.
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["at", "idempotency_key"])]
    pub delay: Option<Duration>,
    /// Run the job(s) at this time, RFC 3339 in UTC (e.g. 2026-12-01T09:00:00Z); a time in the past runs them
    /// at once.
    #[arg(long, value_parser = parse_time, conflicts_with = "idempotency_key")]
    pub at: Option<std::time::SystemTime>,
    /// Longest one attempt of the job(s) may run (e.g. 30s): wins over the consumer's --job-timeout-for and
    /// --job-timeout. Past it the handler is cancelled and the attempt fails with error.type=timeout.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Dead-letter the job(s) as `expired`, never run, if no attempt has started by this time (RFC 3339 in
    /// UTC, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_parser = parse_time, conflicts_with = "ttl")]
    pub deadline: Option<std::time::SystemTime>,
    /// Like --deadline, this long after enqueueing (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Refuse (exit 2) instead of warning when live workers of the queue advertise their kinds and none of them
    /// handles --kind: such a job would be dead-lettered as unknown_kind.
    #[arg(long, env = "JOBSTREAM_REQUIRE_HANDLED_KIND")]
    pub require_handled_kind: bool,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

/// How scheduled jobs are traced, and whether jobs get status records.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// A job scheduled further ahead than this is processed in a new trace linked to its `send` span
    /// (`trace_mode=link` on the entry), so traces stay bounded.
    #[arg(long, env = "JOBSTREAM_LINK_THRESHOLD", default_value = "1h", value_parser = parse_duration)]
    pub link_threshold: Duration,
    /// Write no status record with each job (`<prefix>:{Q}:job:<id>`): an enqueue is then a bare XADD, and
    /// `producer job show|cancel` cannot find the job until a consumer settles it.
    #[arg(long, env = "JOBSTREAM_NO_JOB_RECORDS")]
    pub no_job_records: bool,
}

/// `producer load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Job kind to send.
    #[arg(long, env = "JOBSTREAM_KIND", default_value = "noop")]
    pub kind: String,
    /// How many jobs to send [default: 10000 when --duration is not given].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub jobs: Option<u64>,
    /// Send for this long instead of a number of jobs (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Offered load in jobs per second (open loop); unthrottled when absent.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Each job's payload, as JSON. The default tells `noop` not to record its run.
    #[arg(long, default_value = r#"{"record":false}"#)]
    pub payload: String,
    /// Pad the payload (a JSON object) with a `pad` string so it is this many bytes; 0 leaves it as it is.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Jobs per pipelined round trip (at most; at a low --rate batches are smaller).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,
    /// After sending, wait until every job is acknowledged or dead-lettered, and report drain rate and
    /// enqueue → ack latency.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit status 1).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Write no status record with each job (`<prefix>:{Q}:job:<id>`), as `producer enqueue --no-job-records`:
    /// for measuring what records cost (`bench/run --lifecycle`).
    #[arg(long, env = "JOBSTREAM_NO_JOB_RECORDS")]
    pub no_job_records: bool,
    /// Check the shape of the run's traces: serve an OTLP receiver on this address (http/protobuf; gRPC on a
    /// free port, both printed), export this producer's spans to it, and point the consumers'
    /// OTEL_EXPORTER_OTLP_ENDPOINT at it (http://ADDR). After the run (needs --wait) and a quiet period, a report
    /// on stderr counts each violation: a job sent twice, a process span without its send span as parent or
    /// link, two process spans for one attempt, an attempt no settle span accounts for, a span whose parent never
    /// arrived, a trace over --check-traces-max-spans, a job sent but never processed, a context lost on the way.
    /// Exit status 1 when any is found. The receiver keeps every span in memory (~1 KiB each): size --jobs to
    /// it. This run's own metrics and log records are not exported.
    #[arg(long, value_name = "ADDR", requires = "wait")]
    pub check_traces: Option<std::net::SocketAddr>,
    /// With --check-traces: how long no new span must arrive before the check (consumers export every
    /// OTEL_BSP_SCHEDULE_DELAY, 5s by default).
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub check_traces_quiet: Duration,
    /// With --check-traces: most spans one trace may have.
    #[arg(long, default_value_t = 10_000)]
    pub check_traces_max_spans: usize,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate in jobs per second (above 0, at most 10000000)")),
    }
}

/// A flag's parser for a finite number from 0 to `max`.
fn fraction_up_to(max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.parse::<f64>() {
        Ok(value) if value.is_finite() && (0.0..=max).contains(&value) => Ok(value),
        _ => Err(format!("must be a number from 0 to {max}")),
    }
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
    /// Multiplies the demo steps' simulated latency; 0 for none, at most 1000.
    #[arg(long, default_value_t = 0.25, value_parser = fraction_up_to(1000.0))]
    pub latency_scale: f64,
    /// Probability that an attempt fails (it is then retried), from 0 to 1.
    #[arg(long, default_value_t = 0.1, value_parser = fraction_up_to(1.0))]
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
