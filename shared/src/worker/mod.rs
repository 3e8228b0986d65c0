//! The worker pool: reads a queue's stream as one consumer of a consumer group and runs each job with its
//! kind's handler, at most `concurrency` at a time.
//!
//! The read loop takes a semaphore permit per job before it reads, so it never holds more entries than it can
//! run; each job runs in its own task and releases its permit when settled. Between reads of new entries it
//! takes over entries other consumers left idle past the visibility timeout (they died), page by page.
//! Alongside run the background duties: moving due retries back to the stream, renewing the claim on jobs
//! still running here, trimming, recording the queue's counters and publishing load-test probes. On shutdown
//! the loop stops reading, waits up to the grace period for running jobs, and sends their acknowledgements;
//! what does not finish stays pending, to be claimed by another worker.
//!
//! One file per duty: this one holds the configuration and the orchestration of `PartitionWorker::run`;
//! `read` (new and reclaimed entries, the group's creation), `attempt` (one attempt: decode, `process` span,
//! handler), `settle` (what becomes of the entry, decided without Redis, then done), `acker` (batched XACK),
//! and the background duties `promote`, `renew`, `trim`, `counts` and `probes`; `pause` watches the queue's
//! pause flag, which stops reading (new and reclaimed entries) and promotion, nothing else.

mod acker;
mod attempt;
mod control;
mod counts;
mod pause;
mod probes;
mod promote;
mod read;
mod renew;
mod schedule;
mod settle;
mod trim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::connection::Pool;
use crate::messaging_metrics::MessagingMetrics;
use crate::trace::endpoint::Endpoint;
use crate::trace::spans::BatchSpans;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::Handlers;
use crate::keys::{GroupName, Keys};
use crate::limits::Limits;
use crate::loadprobe::Probes;
use crate::metrics::{KindHandles, Metrics, QueueLabels};
use crate::queue::Queue;
use crate::retry::RetryPolicy;

/// How long the acknowledgements of finished jobs may take to send at shutdown.
const ACK_DRAIN: Duration = Duration::from_secs(5);
/// How often due retries are moved back to the stream.
const PROMOTE_EVERY: Duration = Duration::from_millis(200);
/// How often the retention policy is applied.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How a worker reads and runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Consumer group.
    pub group: GroupName,
    /// Consumer name: unique per process, stable for its life.
    pub consumer: String,
    /// Most jobs running at once.
    pub concurrency: usize,
    /// Most entries fetched by one XREADGROUP (never more than the free slots of `concurrency`).
    pub batch_size: usize,
    /// How long one XREADGROUP blocks waiting for entries. Bounds how long shutdown waits for the read loop.
    pub block: Duration,
    /// How long running jobs may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Limits applied when decoding entries.
    pub limits: Limits,
    /// Cap on the dead stream's length (approximate, `MAXLEN ~`); 0 for none.
    pub dead_maxlen: u64,
    /// An entry idle this long in another consumer's hands is taken over: that consumer is presumed dead.
    /// Running jobs renew their claim every third of it, so a live worker's slow job is never taken.
    pub visibility_timeout: Duration,
    /// An entry delivered more often than this without an outcome is dead-lettered as poison.
    pub max_deliveries: u64,
    /// When failed jobs run again.
    pub retry: RetryPolicy,
    /// How long one attempt may run (a job's own `timeout_ms` wins); past it the handler's token is
    /// cancelled, its future dropped, and the attempt fails with `error.type=timeout`. None by default.
    pub timeouts: crate::bounds::JobTimeouts,
    /// Acknowledged entries older than this are trimmed from the stream (never one a group still needs);
    /// `None` keeps them.
    pub retention: Option<Duration>,
    /// Dead entries older than this are trimmed; `None` keeps them (the length cap still applies).
    pub dead_retention: Option<Duration>,
    /// How an attempt's `process` span relates to the producer's trace.
    pub trace_mode: TraceMode,
    /// A consumer of the group idle this long that holds no pending entry (a process that is gone) is removed
    /// from the group by the trim task; `None` never removes one.
    pub remove_idle_consumers_after: Option<Duration>,
    /// Keep each job's status record ([`crate::jobs`]): its state, attempts, progress and result, updated with
    /// the writes settling does anyway. On by default; off saves a hash write per settled job.
    pub job_records: bool,
    /// How long a finished job's status record (and its result) is kept: 24 h by default.
    pub job_retention: Duration,
}

/// How a `process` span relates to the context found on the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum TraceMode {
    /// The span is a child of the producer's `send` span: one trace from producer to every attempt.
    #[default]
    Parent,
    /// Each attempt starts a new trace with a span link to the producer's `send` span: for jobs delayed for
    /// hours or fan-outs too large for one trace.
    Link,
}

impl Default for WorkerConfig {
    /// The defaults, for a consumer named `<hostname>-<pid>` ([`default_consumer_name`]): unique per process,
    /// so replicas never share a name.
    fn default() -> Self {
        Self::named(default_consumer_name())
    }
}

impl WorkerConfig {
    /// The defaults for a consumer with a fixed name: an explicit choice, for a process that keeps its name
    /// across restarts (a pod name). Two live processes must never share one.
    pub fn named(consumer: impl Into<String>) -> Self {
        Self {
            group: GroupName::default(),
            consumer: consumer.into(),
            concurrency: 16,
            batch_size: 256,
            block: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            limits: Limits::default(),
            dead_maxlen: 100_000,
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 5,
            retry: RetryPolicy::default(),
            timeouts: crate::bounds::JobTimeouts::default(),
            retention: Some(Duration::from_secs(3600)),
            dead_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            trace_mode: TraceMode::Parent,
            remove_idle_consumers_after: Some(Duration::from_secs(3600)),
            job_records: true,
            job_retention: crate::jobs::DEFAULT_RETENTION,
        }
    }

    /// Checks every setting and their relations; [`Worker::new`] calls it, so a worker that exists has a valid
    /// configuration.
    pub fn validate(&self) -> crate::Result<()> {
        let fail = |message: String| Err(crate::Error::Config(message));
        let name = &self.consumer;
        if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return fail(format!("consumer name {name:?}: use 1 to 200 characters, no control characters"));
        }
        if self.concurrency == 0 || self.batch_size == 0 || self.retry.max_attempts == 0 || self.max_deliveries == 0 {
            return fail("concurrency, batch size, max attempts and max deliveries must be at least 1".into());
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.block) {
            return fail(format!("block time {:?}: use 10ms to 60s", self.block));
        }
        if self.visibility_timeout < Duration::from_millis(100) {
            return fail(format!("visibility timeout {:?}: use at least 100ms", self.visibility_timeout));
        }
        if self.block >= self.visibility_timeout {
            return fail(format!(
                "block time {:?} must be shorter than the visibility timeout {:?}: dead workers' jobs are taken over between reads",
                self.block, self.visibility_timeout
            ));
        }
        if self.retry.base_delay > self.retry.max_delay {
            return fail(format!(
                "retry base delay {:?} is longer than the longest retry delay {:?}",
                self.retry.base_delay, self.retry.max_delay
            ));
        }
        Ok(())
    }

    fn reclaim_every(&self) -> Duration {
        (self.visibility_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// `<hostname>-<pid>`: the default consumer name.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Counts of what a worker did, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Entries received from Redis, new and reclaimed.
    pub received: AtomicU64,
    /// Entries taken over from other consumers.
    pub reclaimed: AtomicU64,
    /// Jobs whose handler succeeded.
    pub succeeded: AtomicU64,
    /// Attempts that failed.
    pub failed: AtomicU64,
    /// Failed attempts scheduled to run again.
    pub retried: AtomicU64,
    /// Entries moved to the dead stream.
    pub dead_lettered: AtomicU64,
    /// Jobs cancelled, running or before they started.
    pub cancelled: AtomicU64,
    /// Jobs running now.
    pub in_flight: AtomicU64,
}

impl WorkerStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// State every task of a worker shares.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) keys: Keys,
    pub(crate) config: WorkerConfig,
    pub(crate) handlers: Handlers,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) in_flight: renew::InFlight,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) probes: Arc<Probes>,
    /// Metric handles of every registered kind, and the in-flight gauge, resolved once.
    pub(crate) hot: HotMetrics,
    /// `process <Q>`, made once.
    pub(crate) process_span_name: String,
    /// The messaging attributes of this partition's spans and metric points.
    pub(crate) endpoint: Endpoint,
    /// The OpenTelemetry messaging metrics.
    pub(crate) messaging: MessagingMetrics,
    /// The `receive` and `ack` spans.
    pub(crate) batch_spans: Arc<BatchSpans>,
    /// Whether the queue is paused, as last read by the process's pause watch.
    pub(crate) pause: pause::PauseState,
    /// Cancel requests and running attempts, shared by the process's partitions and its pause watch.
    pub(crate) control: Arc<control::Control>,
}

/// Metric handles the job path updates for every job.
pub(crate) struct HotMetrics {
    pub(crate) kinds: std::collections::HashMap<String, KindHandles>,
    pub(crate) in_flight: prometheus_client::metrics::gauge::Gauge,
}

impl Shared {
    /// What every `process` span of this worker shares.
    pub(crate) fn span_consumer(&self) -> crate::trace::spans::Consumer<'_> {
        crate::trace::spans::Consumer { span_name: &self.process_span_name, endpoint: &self.endpoint }
    }
}

impl HotMetrics {
    fn new(metrics: &Metrics, keys: &Keys, handlers: &Handlers) -> Self {
        let queue = keys.queue().as_str();
        Self {
            kinds: handlers.kinds().iter().map(|k| (k.to_string(), metrics.kind_handles(queue, k))).collect(),
            in_flight: metrics.in_flight.get_or_create(&QueueLabels { queue: queue.to_owned() }).clone(),
        }
    }
}

/// One consumer of a queue's consumer group, reading every partition of the queue, running each job with its
/// kind's handler, at most `concurrency` at once in all.
///
/// ```no_run
/// # async fn run(pool: jobstream::connection::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use jobstream::{Handlers, Queue, Worker, WorkerConfig};
/// let handlers = Handlers::new().register_fn("send-email".parse()?, |job| async move {
///     let to: String = job.payload()?;
///     tracing::info!(%to, "sending");
///     Ok(())
/// });
/// let worker = Worker::new(pool, &Queue::new("emails")?, handlers, WorkerConfig::default())?;
/// worker.run(jobstream::shutdown::on_signals()?).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    pool: Pool,
    queue: Queue,
    handlers: Handlers,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("queue", &self.queue).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for every partition of `queue`. Fails when `config` is invalid ([`WorkerConfig::validate`]) or
    /// no handler is registered.
    pub fn new(pool: Pool, queue: &Queue, handlers: Handlers, config: WorkerConfig) -> crate::Result<Self> {
        config.validate()?;
        if handlers.kinds().is_empty() {
            return Err(crate::Error::Config("the worker has no handler; register at least one job kind".into()));
        }
        Ok(Self { pool, queue: queue.clone(), handlers, config, metrics: Arc::default(), stats: Arc::default() })
    }

    /// Records into `metrics` (a registry the caller serves, e.g. with `health::router`, feature `http`) instead
    /// of a private one.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The registry this worker records into: encode it for a `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The counters of this worker, over all partitions.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Checks the queue's partition count against its record in Redis (recording it on first use), then runs
    /// one reader per partition until `shutdown` is cancelled, and drains. Redis being unreachable is not an
    /// error: the worker retries with back-off until Redis returns or shutdown is requested.
    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        let record =
            crate::partitions::PartitionRecord::new(self.queue.prefix(), self.queue.name(), self.queue.partitions())?;
        // The readers stop when the caller says so, or when the partition record disagrees with this worker.
        let stop = shutdown.child_token();
        // The check runs beside the readers, not before them: the record lives on one node of a Cluster, and
        // while that node is down the partitions on the others must keep running. A disagreement found at any
        // point stops the worker with that error (a reader of the wrong partitions finds nothing to run).
        let checker = tokio::spawn({
            let (pool, stop) = (self.pool.clone(), stop.clone());
            async move {
                let checked = record.check_at_start(&pool, &stop).await;
                if checked.is_err() {
                    stop.cancel();
                }
                checked
            }
        });
        let partitions = self.queue.partition_keys();
        // One pause watch per process: every partition names the base queue's flag.
        let control = Arc::new(control::Control::default());
        let (pause_state, pause_watch) =
            pause::spawn(self.pool.clone(), partitions[0].clone(), control.clone(), stop.clone());
        // Periodic schedules live under partition 0's keys; one scheduler per process enqueues their ticks.
        let scheduler = tokio::spawn(schedule::schedule(
            schedule::Scheduler {
                pool: self.pool.clone(),
                keys: partitions[0].clone(),
                consumer: self.config.consumer.clone(),
            },
            stop.clone(),
        ));
        let mut config = self.config;
        // Each partition runs its share of the concurrency.
        config.concurrency = config.concurrency.div_ceil(partitions.len()).max(1);
        let mut readers = tokio::task::JoinSet::new();
        for keys in partitions {
            let worker = PartitionWorker::new(self.pool.clone(), keys, self.handlers.clone(), config.clone())
                .with_metrics(self.metrics.clone())
                .with_stats(self.stats.clone())
                .with_pause(pause_state.clone(), control.clone());
            readers.spawn(worker.run(stop.clone()));
        }
        let mut result = Ok(());
        while let Some(finished) = readers.join_next().await {
            if let Err(e) = finished {
                stop.cancel();
                result = Err(crate::Error::Config(format!("a partition's reader failed: {e}")));
            }
        }
        // `check_at_start` and the scheduler return once `stop` is cancelled, so these waits are short.
        stop.cancel();
        let _ = scheduler.await;
        let _ = pause_watch.await;
        match checker.await {
            Ok(Err(refused)) => Err(refused.into()),
            _ => result,
        }
    }
}

/// One consumer of one partition's stream.
pub(crate) struct PartitionWorker {
    shared: Arc<Shared>,
}

impl PartitionWorker {
    /// A worker for the partition whose keys are `keys`.
    pub(crate) fn new(pool: Pool, keys: Keys, handlers: Handlers, config: WorkerConfig) -> Self {
        let metrics = Arc::<Metrics>::default();
        let hot = HotMetrics::new(&metrics, &keys, &handlers);
        let process_span_name = format!("process {}", keys.base_queue());
        let endpoint = Endpoint::consumer(&keys, pool.server(), config.group.as_str(), &config.consumer);
        Self {
            shared: Arc::new(Shared {
                messaging: MessagingMetrics::new(&endpoint),
                batch_spans: Arc::new(BatchSpans::new(endpoint.clone())),
                endpoint,
                pool,
                keys,
                config,
                handlers,
                stats: Arc::default(),
                in_flight: renew::InFlight::default(),
                metrics,
                probes: Arc::default(),
                hot,
                process_span_name,
                pause: pause::never_paused(),
                control: Arc::default(),
            }),
        }
    }

    /// Records into `metrics` instead of a private registry.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("not running yet");
        shared.hot = HotMetrics::new(&metrics, &shared.keys, &shared.handlers);
        shared.metrics = metrics;
        self
    }

    /// Counts into `stats`, shared with the other partitions' workers.
    pub(crate) fn with_stats(mut self, stats: Arc<WorkerStats>) -> Self {
        Arc::get_mut(&mut self.shared).expect("not running yet").stats = stats;
        self
    }

    /// Waits while the queue is paused, as `state` says, and stops the jobs `control` says are cancelled.
    pub(crate) fn with_pause(mut self, state: pause::PauseState, control: Arc<control::Control>) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("not running yet");
        shared.pause = state;
        shared.control = control;
        self
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let shared = self.shared;
        let config = &shared.config;
        let give_up_acks = CancellationToken::new();
        let (acks, acker) = acker::spawn(&shared, give_up_acks.clone());
        let maintenance_stop = CancellationToken::new();
        let promoter = tokio::spawn(promote::promote(shared.clone(), PROMOTE_EVERY, maintenance_stop.clone()));
        let renewer =
            tokio::spawn(renew::renew(shared.clone(), config.visibility_timeout / 3, maintenance_stop.clone()));
        let trimmer = tokio::spawn(trim::trim(shared.clone(), TRIM_EVERY, maintenance_stop.clone()));
        let recorder = tokio::spawn(counts::record(shared.clone(), maintenance_stop.clone()));
        let probe_stop = CancellationToken::new();
        let prober = tokio::spawn(probes::publish(shared.clone(), probe_stop.clone()));
        let permits = Arc::new(Semaphore::new(config.concurrency));
        let tasks = TaskTracker::new();
        let mut reader = read::Reader::new(&shared);
        let mut gate = pause::Gate::new(shared.pause.clone());
        tracing::info!(
            queue = %shared.keys.queue(),
            group = %config.group,
            consumer = %config.consumer,
            concurrency = config.concurrency,
            kinds = ?shared.handlers.kinds(),
            "worker started"
        );

        while !shutdown.is_cancelled() {
            if permits.available_permits() == 0 {
                reader.release();
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let held = take_more(first, &permits, config.batch_size);
            // Checked right before each read (new entries and reclaimed ones alike): while paused nothing starts.
            if !pause::running(&shared.pause) {
                reader.release();
            }
            if !gate.wait_until_running(&shutdown, shared.keys.queue().as_str()).await {
                break;
            }
            let deliveries = match reader.next(held.len()).await {
                Ok(deliveries) => deliveries,
                Err(delay) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            WorkerStats::add(&shared.stats.received, deliveries.len() as u64);
            for (delivery, permit) in deliveries.into_iter().zip(held) {
                let shared = shared.clone();
                let acks = acks.clone();
                tasks.spawn(async move {
                    attempt::run(&shared, delivery, &acks).await;
                    drop(permit);
                });
            }
        }

        drop(reader);
        tasks.close();
        let running = tasks.len();
        if running > 0 {
            tracing::info!(running, grace = ?config.shutdown_grace, "draining running jobs");
        }
        if tokio::time::timeout(config.shutdown_grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                unfinished = tasks.len(),
                "grace period over; unfinished jobs stay pending for another worker"
            );
        }
        maintenance_stop.cancel();
        let _ = tokio::join!(promoter, renewer, trimmer, recorder);
        drop(acks);
        let mut acker = acker;
        let unsent = match tokio::time::timeout(ACK_DRAIN, &mut acker).await {
            Ok(done) => done.unwrap_or(0),
            Err(_) => {
                give_up_acks.cancel();
                acker.await.unwrap_or(0)
            }
        };
        if unsent > 0 {
            tracing::warn!(unsent, "acknowledgements not sent; those jobs will be redelivered");
        }
        probe_stop.cancel();
        let _ = prober.await;
        tracing::info!("worker stopped");
    }
}

/// Takes up to `max` permits in all, without waiting, starting with `first`.
fn take_more(first: OwnedSemaphorePermit, permits: &Arc<Semaphore>, max: usize) -> Vec<OwnedSemaphorePermit> {
    let mut held = vec![first];
    while held.len() < max {
        match permits.clone().try_acquire_owned() {
            Ok(permit) => held.push(permit),
            Err(_) => break,
        }
    }
    held
}
