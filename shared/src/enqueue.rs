//! Putting jobs on a queue: XADD with the job's fields and the trace context of a `send <Q>` PRODUCER span.
//!
//! Each job gets its own `send` span, a child of the caller's current span, whose context is injected into the
//! entry; the consumer's `process` span becomes that span's child. A batch is written as one pipeline, so it
//! costs one round trip. An enqueue reports success only for entries Redis answered with an id; when Redis
//! refuses part of a pipeline (e.g. at `maxmemory`), the entries it did take are reported in the error.
//!
//! A producer checks the queue's partition record ([`crate::partitions`]) once, before its first enqueue
//! ([`Producer::check_partitions`]). An idempotency key remembers the kind and payload it was used with: the same
//! key with another job is refused ([`EnqueueError::IdempotencyConflict`]).
//!
//! A job may be scheduled to run later ([`Producer::enqueue_in`], [`Producer::enqueue_at`]): it waits in its
//! partition's delayed set (the one retries use; workers move due members to the stream every 200 ms), its
//! `send` span made when it is scheduled. A job scheduled further ahead than the producer's link threshold
//! ([`Producer::with_link_threshold`], 1 h by default) carries `trace_mode=link`, so that workers process it in
//! a new trace linked to its `send` span and traces stay bounded in time. Scheduling takes no idempotency key.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::connection::Pool;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::Error;
use crate::job::{Job, JobError, JobId, JobKind, Payload};
use crate::keys::{IdempotencyKey, Keys, QueueName};
use crate::limits::Limits;
use crate::messaging_metrics::MessagingMetrics;
use crate::metrics::{JobLabels, Metrics, QueueLabels};
use crate::partitions::PartitionRecord;
use crate::queue::Queue;
use crate::trace::endpoint::Endpoint;
use crate::trace::{propagation, semconv, spans};
use serde::Serialize;

static ENQUEUE_ONCE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/enqueue_once.lua")));

/// Why an enqueue failed: [`crate::Error`]. No job of a failed call is reported as enqueued, except those an
/// [`Error::Partial`] lists.
pub type EnqueueError = Error;

/// The metric label of job kinds outside [`Producer::with_metric_kinds`].
pub const OTHER_KIND_LABEL: &str = "other";

/// A job Redis has taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job id.
    pub job_id: JobId,
    /// The stream entry id Redis assigned.
    pub message_id: String,
    /// The trace the job belongs to; `None` when tracing is not set up.
    pub trace_id: Option<TraceId>,
    /// True when an idempotency key matched an earlier job: nothing was enqueued, and the fields above
    /// describe that earlier job.
    pub duplicate: bool,
    /// For a job scheduled to run later: the unix ms it is due at. It then waits in the delayed set and has no
    /// stream entry yet, so [`Enqueued::message_id`] is empty. `None` for a job put on the stream at once.
    pub scheduled_for_ms: Option<u64>,
}

/// How far ahead a job may be scheduled and still be processed in its creator's trace, by default
/// ([`Producer::with_link_threshold`]).
pub const DEFAULT_LINK_THRESHOLD: Duration = Duration::from_secs(3600);

/// Enqueues jobs on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    pool: Pool,
    /// The queue's partitions; one for an unpartitioned queue.
    partitions: Arc<[Partition]>,
    /// The queue's name (without a partition suffix), for span names and metric labels.
    queue: QueueName,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// `send <Q>`, made once.
    span_name: Arc<str>,
    /// The queue's partition record, checked once before the first enqueue; `None` for [`Producer::new`].
    record: Option<Arc<RecordCheck>>,
    /// The kinds metrics are labelled with; others count as [`OTHER_KIND_LABEL`]. `None`: every kind.
    metric_kinds: Option<Arc<HashSet<JobKind>>>,
    /// Jobs scheduled further ahead than this are processed in a new trace linked to their creation.
    link_threshold: Duration,
    /// Write each job's status record ([`crate::jobs`]) with its entry.
    job_records: bool,
}

/// One partition's keys, with the messaging attributes and metrics of the sends to it.
struct Partition {
    keys: Keys,
    endpoint: Endpoint,
    metrics: MessagingMetrics,
}

struct RecordCheck {
    record: PartitionRecord,
    done: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut metric_kinds: Option<Vec<&str>> =
            self.metric_kinds.as_ref().map(|kinds| kinds.iter().map(JobKind::as_str).collect());
        if let Some(kinds) = &mut metric_kinds {
            kinds.sort_unstable();
        }
        f.debug_struct("Producer")
            .field("queue", &self.queue)
            .field("partitions", &self.partitions.len())
            .field("limits", &self.limits)
            .field("metric_kinds", &metric_kinds)
            .field("link_threshold", &self.link_threshold)
            .field("job_records", &self.job_records)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer for `queue`: each job goes to the partition its id picks, each idempotency key always to the
    /// same partition. Before its first enqueue it checks (and, on a queue's first use, records) the queue's
    /// partition count in Redis. Payloads are limited to [`Limits::default`]; see [`Producer::with_limits`].
    pub fn new(pool: Pool, queue: &Queue) -> Self {
        let partitions: Vec<Partition> = queue
            .partition_keys()
            .into_iter()
            .map(|keys| {
                let endpoint = Endpoint::producer(&keys, pool.server());
                Partition { metrics: MessagingMetrics::new(&endpoint), endpoint, keys }
            })
            .collect();
        let span_name = format!("send {queue}").into();
        let record = PartitionRecord::new(queue.prefix(), queue.name(), queue.partitions())
            .expect("the prefix was checked when the queue was made");
        Self {
            pool,
            partitions: partitions.into(),
            queue: queue.name().clone(),
            limits: Limits::default(),
            metrics: Arc::default(),
            span_name,
            record: Some(Arc::new(RecordCheck { record, done: tokio::sync::OnceCell::new() })),
            metric_kinds: None,
            link_threshold: DEFAULT_LINK_THRESHOLD,
            job_records: true,
        }
    }

    /// Whether a job scheduled for later ([`Producer::enqueue_job_at`]) and an idempotent one get a status
    /// record ([`crate::jobs`]) in the same step as their ZADD or XADD (on by default): what `producer job
    /// show|cancel` find a scheduled job by. A job enqueued to run at once never needs one (a bare XADD; a
    /// lookup finds its entry by the time in its id).
    pub fn with_job_records(mut self, on: bool) -> Self {
        self.job_records = on;
        self
    }

    /// Jobs scheduled further ahead than `threshold` ([`Producer::enqueue_at`]) are processed in a new trace
    /// linked to their `send` span (`trace_mode=link` on the entry) instead of as its children, so a trace does
    /// not span hours. [`DEFAULT_LINK_THRESHOLD`] (1 h) by default.
    pub fn with_link_threshold(mut self, threshold: Duration) -> Self {
        self.link_threshold = threshold;
        self
    }

    /// Applies `limits` to the jobs this producer builds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Records enqueues into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Labels metrics with these kinds only; jobs of any other kind count as [`OTHER_KIND_LABEL`], so callers
    /// who choose the kind (an HTTP API) cannot create new series.
    pub fn with_metric_kinds(mut self, kinds: impl IntoIterator<Item = JobKind>) -> Self {
        self.metric_kinds = Some(Arc::new(kinds.into_iter().collect()));
        self
    }

    /// Counts one job enqueued.
    fn count_enqueued(&self, kind: &JobKind) {
        let kind = match &self.metric_kinds {
            Some(known) if !known.contains(kind) => OTHER_KIND_LABEL.to_owned(),
            _ => kind.to_string(),
        };
        self.metrics.enqueued.get_or_create(&JobLabels { queue: self.queue.to_string(), kind }).inc();
    }

    /// Counts one failed enqueue call.
    fn count_error(&self) {
        self.metrics.enqueue_errors.get_or_create(&QueueLabels { queue: self.queue.to_string() }).inc();
    }

    /// Checks this producer's partition count against the queue's record in Redis, recording it on the queue's
    /// first use. Runs once per producer (and its clones); every enqueue calls it, so calling it first only
    /// moves the check earlier, e.g. to refuse to start.
    pub async fn check_partitions(&self) -> Result<(), EnqueueError> {
        let Some(check) = &self.record else { return Ok(()) };
        check
            .done
            .get_or_try_init(|| async {
                let mut conn = self.pool.get().await?;
                check.record.check_and_record(&mut conn).await?;
                Ok::<_, EnqueueError>(())
            })
            .await?;
        Ok(())
    }

    /// The limits applied to jobs.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Builds a job of `kind` whose payload is `payload` serialized as JSON, applying the payload limit.
    pub fn job<T: Serialize + ?Sized>(&self, kind: &str, payload: &T) -> Result<Job, JobError> {
        Ok(Job::new(JobKind::parse(kind)?, Payload::from_value(payload, &self.limits)?))
    }

    /// Builds a job from a kind and JSON text (checked to be JSON), applying the payload limit.
    pub fn job_json(&self, kind: &str, payload_json: &str) -> Result<Job, JobError> {
        Ok(Job::new(JobKind::parse(kind)?, Payload::parse(payload_json, &self.limits)?))
    }

    /// Enqueues one job of `kind` with `payload` (any `Serialize` value, sent as JSON).
    ///
    /// ```no_run
    /// # async fn send(producer: &jobstream::Producer) -> jobstream::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Email<'a> { to: &'a str }
    /// let sent = producer.enqueue("send-email", &Email { to: "a@example.com" }).await?;
    /// println!("{} in trace {:?}", sent.job_id, sent.trace_id);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue<T: Serialize + ?Sized>(&self, kind: &str, payload: &T) -> Result<Enqueued, EnqueueError> {
        self.enqueue_job(self.job(kind, payload)?).await
    }

    /// Enqueues a job of `kind` with `payload` unless the idempotency key `key` was used in the last `ttl`
    /// ([`Producer::enqueue_job_once`]).
    pub async fn enqueue_once<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        key: &IdempotencyKey,
        ttl: Duration,
    ) -> Result<Enqueued, EnqueueError> {
        self.enqueue_job_once(self.job(kind, payload)?, key, ttl).await
    }

    /// Enqueues one job built with [`Producer::job`].
    pub async fn enqueue_job(&self, job: Job) -> Result<Enqueued, EnqueueError> {
        let mut done = self.enqueue_batch(vec![job]).await?;
        Ok(done.remove(0))
    }

    /// Enqueues jobs, one pipelined round trip per partition they go to, and reports them in order. Either
    /// every job is reported enqueued or the call fails. When Redis refused only some of them, the error is
    /// [`EnqueueError::Partial`] with the ones it took. After any other failure (a lost connection) some
    /// entries may still have been written (a retry may then duplicate them, which at-least-once allows).
    pub async fn enqueue_batch(&self, jobs: Vec<Job>) -> Result<Vec<Enqueued>, EnqueueError> {
        if let Err(e) = self.check_partitions().await {
            self.count_error();
            return Err(e);
        }
        let n = self.partitions.len();
        if n == 1 {
            return self.send(&self.partitions[0], jobs).await;
        }
        let total = jobs.len();
        let mut groups: Vec<(Vec<usize>, Vec<Job>)> = (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, job) in jobs.into_iter().enumerate() {
            let group = &mut groups[job.id.partition(n)];
            group.0.push(i);
            group.1.push(job);
        }
        // One pipeline per partition (a cluster routes a pipeline to one shard), all in flight at once.
        let (positions, sends): (Vec<Vec<usize>>, Vec<_>) = groups
            .into_iter()
            .zip(self.partitions.iter())
            .filter(|((_, jobs), _)| !jobs.is_empty())
            .map(|((positions, jobs), keys)| (positions, self.send(keys, jobs)))
            .unzip();
        let mut out: Vec<Option<Enqueued>> = (0..total).map(|_| None).collect();
        // Every partition's outcome is awaited, so that what the others wrote is known when one fails.
        let mut written = Vec::new();
        let mut failed = 0;
        let mut first_error = None;
        for (positions, sent) in positions.into_iter().zip(futures_util::future::join_all(sends).await) {
            match sent {
                Ok(sent) => {
                    for (position, done) in positions.into_iter().zip(sent) {
                        out[position] = Some(done);
                    }
                }
                Err(EnqueueError::Partial { enqueued, failed: refused, source }) => {
                    written.extend(enqueued);
                    failed += refused;
                    first_error.get_or_insert(*source);
                }
                Err(e) => {
                    failed += positions.len();
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(error) = first_error else {
            return Ok(out.into_iter().map(|done| done.expect("every job was sent")).collect());
        };
        written.extend(out.into_iter().flatten());
        if written.is_empty() {
            return Err(error);
        }
        Err(EnqueueError::Partial { enqueued: written, failed, source: Box::new(error) })
    }

    /// Enqueues jobs on one partition in one pipelined round trip.
    async fn send(&self, partition: &Partition, mut jobs: Vec<Job>) -> Result<Vec<Enqueued>, EnqueueError> {
        let keys = &partition.keys;
        let mut spans = Vec::with_capacity(jobs.len());
        let mut pipe = redis::pipe();
        for job in &mut jobs {
            let span = spans::send(&self.span_name, &partition.endpoint, job);
            let cx = span.context();
            job.trace = propagation::inject(&cx)?;
            // A bare XADD: a waiting job needs no record, a lookup finds its entry by the time in its id.
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&keys.stream).arg("*");
            for (name, value) in job.to_fields() {
                cmd.arg(name).arg(value);
            }
            pipe.add_command(cmd);
            spans.push((span, cx.span().span_context().trace_id()));
        }
        // Each XADD's own reply: when Redis refuses some (at maxmemory), the others were still written.
        pipe.ignore_errors();
        let started = Instant::now();
        let replies: Result<Vec<redis::RedisResult<String>>, EnqueueError> = async {
            let mut conn = self.pool.get().await?;
            Ok(pipe.query_async(&mut conn).await?)
        }
        .await;
        let took = started.elapsed();
        let replies = match replies {
            Ok(replies) => replies,
            Err(e) => {
                for (span, _) in &spans {
                    send_failed(span, error_type(&e), &e.to_string());
                }
                partition.metrics.sent(0, jobs.len() as u64, took, error_type(&e));
                self.count_error();
                return Err(e);
            }
        };
        let refused = replies.iter().filter(|reply| reply.is_err()).count() as u64;
        partition.metrics.sent(jobs.len() as u64 - refused, refused, took, "redis_error");
        let mut enqueued = Vec::with_capacity(jobs.len());
        let mut failed = 0;
        let mut first_error = None;
        for ((job, reply), (span, trace_id)) in jobs.iter().zip(replies).zip(spans) {
            match reply {
                Ok(message_id) => {
                    span.record(semconv::MESSAGING_MESSAGE_ID, message_id.as_str());
                    self.count_enqueued(&job.kind);
                    enqueued.push(Enqueued {
                        job_id: job.id,
                        message_id,
                        trace_id: (trace_id != TraceId::INVALID).then_some(trace_id),
                        duplicate: false,
                        scheduled_for_ms: None,
                    });
                }
                Err(e) => {
                    send_failed(&span, "redis_error", &e.to_string());
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(error) = first_error else { return Ok(enqueued) };
        self.count_error();
        if enqueued.is_empty() {
            return Err(error.into());
        }
        Err(EnqueueError::Partial { enqueued, failed, source: Box::new(error.into()) })
    }
}

impl Producer {
    /// Enqueues `job` unless a job with the same idempotency key was enqueued in the last `ttl`. When that
    /// earlier job had the same kind and payload (byte for byte), returns it, marked [`Enqueued::duplicate`];
    /// when it had another, fails with [`EnqueueError::IdempotencyConflict`] naming it. Either way nothing is
    /// enqueued. The check and the enqueue are one atomic step.
    pub async fn enqueue_job_once(
        &self,
        mut job: Job,
        key: &IdempotencyKey,
        ttl: Duration,
    ) -> Result<Enqueued, EnqueueError> {
        if let Err(e) = self.check_partitions().await {
            self.count_error();
            return Err(e);
        }
        let partition = &self.partitions[fnv1a(key.as_str().as_bytes()) as usize % self.partitions.len()];
        let keys = &partition.keys;
        let span = spans::send(&self.span_name, &partition.endpoint, &job);
        let cx = span.context();
        job.trace = propagation::inject(&cx)?;
        let trace_id = cx.span().span_context().trace_id();
        let mut invocation = ENQUEUE_ONCE.key(&keys.stream);
        invocation.key(keys.idempotency(key));
        if self.job_records {
            invocation.key(keys.job(&job.id.to_string()));
        }
        invocation.arg(ttl.as_millis().max(1) as u64).arg(format!("{} {trace_id}", job.id)).arg(fingerprint(&job));
        for (name, value) in job.to_fields() {
            invocation.arg(name).arg(value);
        }
        let started = Instant::now();
        let result: Result<(i64, String, String), EnqueueError> = async {
            let mut conn = self.pool.get().await?;
            Ok(invocation.invoke_async(&mut conn).await?)
        }
        .await;
        match &result {
            Ok((1, _, _)) => {
                self.count_enqueued(&job.kind);
                partition.metrics.sent(1, 0, started.elapsed(), "");
            }
            Ok(_) => {}
            Err(e) => {
                self.count_error();
                partition.metrics.sent(0, 1, started.elapsed(), error_type(e));
            }
        }
        let (created, record, message_id) = result.inspect_err(|e| {
            send_failed(&span, error_type(e), &e.to_string());
        })?;
        let (job_id, trace) = record.split_once(' ').unwrap_or((record.as_str(), ""));
        if created < 0 {
            let e =
                EnqueueError::IdempotencyConflict { key: key.clone(), job_id: JobId::parse(job_id).unwrap_or(job.id) };
            send_failed(&span, error_type(&e), &e.to_string());
            return Err(e);
        }
        let duplicate = created == 0;
        if duplicate {
            span.record(semconv::IDEMPOTENT_DUPLICATE, true);
        }
        span.record(semconv::MESSAGING_MESSAGE_ID, message_id.as_str());
        Ok(Enqueued {
            job_id: JobId::parse(job_id).unwrap_or(job.id),
            message_id,
            trace_id: TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID),
            duplicate,
            scheduled_for_ms: None,
        })
    }
}

impl Producer {
    /// Enqueues one job of `kind` with `payload` to run `delay` from now ([`Producer::enqueue_job_at`]).
    ///
    /// ```no_run
    /// # async fn send(producer: &jobstream::Producer) -> jobstream::Result<()> {
    /// let sent = producer.enqueue_in("send-email", &"a@example.com", std::time::Duration::from_secs(30)).await?;
    /// println!("{} due at {:?}", sent.job_id, sent.scheduled_for_ms);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        delay: Duration,
    ) -> Result<Enqueued, EnqueueError> {
        let job = self.job(kind, payload)?;
        let due = SystemTime::now().checked_add(delay).unwrap_or(UNIX_EPOCH + Duration::from_millis(LATEST_DUE_MS));
        self.enqueue_job_at(job, due).await
    }

    /// Enqueues one job of `kind` with `payload` to run at `due` ([`Producer::enqueue_job_at`]).
    pub async fn enqueue_at<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
        due: SystemTime,
    ) -> Result<Enqueued, EnqueueError> {
        self.enqueue_job_at(self.job(kind, payload)?, due).await
    }

    /// Schedules `job` to run at `due`: it waits in its partition's delayed set until then and is put on the
    /// stream by a worker (within the workers' 200 ms promotion period; with no worker running it waits). A due
    /// time now or in the past enqueues it at once, as [`Producer::enqueue_job`] does. The `send` span is made
    /// now, with the `jobstream.job.scheduled_for` attribute and a `scheduled` event; a job due further ahead
    /// than the link threshold ([`Producer::with_link_threshold`]) is marked `trace_mode=link`. A scheduled
    /// job's [`Enqueued::message_id`] is empty (it has no entry yet) and [`Enqueued::scheduled_for_ms`] is set.
    pub async fn enqueue_job_at(&self, mut job: Job, due: SystemTime) -> Result<Enqueued, EnqueueError> {
        let due_ms = due.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis().min(u128::from(LATEST_DUE_MS)) as u64);
        let now_ms = crate::clock::now_ms();
        if due_ms <= now_ms {
            return self.enqueue_job(job).await;
        }
        if let Err(e) = self.check_partitions().await {
            self.count_error();
            return Err(e);
        }
        let partition = &self.partitions[job.id.partition(self.partitions.len())];
        let keys = &partition.keys;
        let linked = Duration::from_millis(due_ms - now_ms) > self.link_threshold;
        if linked {
            job.extra.insert(crate::job::field::TRACE_MODE.to_owned(), crate::job::field::TRACE_MODE_LINK.to_owned());
        }
        let span = spans::send(&self.span_name, &partition.endpoint, &job);
        spans::scheduled(&span, due_ms, linked);
        let cx = span.context();
        job.trace = propagation::inject(&cx)?;
        let trace_id = cx.span().span_context().trace_id();
        // The member is the entry's field/value strings as one JSON array: exactly what a retry leaves there.
        let fields = job.to_fields();
        let member: Vec<&str> = fields.iter().flat_map(|(k, v)| [*k, v.as_str()]).collect();
        let member = serde_json::to_string(&member).expect("strings always serialize");
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("ZADD").arg(&keys.delayed).arg(due_ms).arg(member).ignore();
        if self.job_records {
            // The record in the same MULTI; its `traceparent` is the `send` span's, for a lookup's trace link.
            let record = keys.job(&job.id.to_string());
            let mut hset = redis::cmd("HSET");
            hset.arg(&record)
                .arg(crate::jobs::field::STATE)
                .arg(crate::jobs::JobState::Delayed.as_str())
                .arg(crate::jobs::field::RUN_AT)
                .arg(due_ms)
                .arg(crate::jobs::field::KIND)
                .arg(job.kind.as_str())
                .arg(crate::jobs::field::ENQUEUED_AT)
                .arg(job.enqueued_at_ms);
            if let Some(traceparent) = job.trace.get(crate::job::field::TRACEPARENT) {
                hset.arg(crate::jobs::field::TRACEPARENT).arg(traceparent);
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("PERSIST").arg(&record).ignore();
        }
        let started = Instant::now();
        let result: Result<(), EnqueueError> = async {
            let mut conn = self.pool.get().await?;
            Ok(pipe.query_async(&mut conn).await?)
        }
        .await;
        if let Err(e) = result {
            send_failed(&span, error_type(&e), &e.to_string());
            partition.metrics.sent(0, 1, started.elapsed(), error_type(&e));
            self.count_error();
            return Err(e);
        }
        partition.metrics.sent(1, 0, started.elapsed(), "");
        self.count_enqueued(&job.kind);
        Ok(Enqueued {
            job_id: job.id,
            message_id: String::new(),
            trace_id: (trace_id != TraceId::INVALID).then_some(trace_id),
            duplicate: false,
            scheduled_for_ms: Some(due_ms),
        })
    }
}

/// The latest due time a schedule records, in unix ms: 2^53, the largest a sorted set's score (a double) holds
/// exactly; later times are cut to it.
const LATEST_DUE_MS: u64 = 1 << 53;

/// What an idempotency key is compared by: the hex SHA-1 of `<kind>\n<payload>` (a kind holds no newline), the
/// payload as its JSON text, byte for byte.
fn fingerprint(job: &Job) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(job.kind.as_str().as_bytes());
    sha.update(b"\n");
    sha.update(job.payload.as_str().as_bytes());
    sha.digest().to_string()
}

/// FNV-1a: a hash every producer computes alike, whatever its version, so a key always picks one partition.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Marks a `send` span failed: `error.type`, an error status and the `messaging.send.exception` event.
fn send_failed(span: &tracing::Span, error_type: &str, message: &str) {
    spans::record_error(span, error_type, message);
    spans::exception(span, spans::Operation::Send, error_type, message);
}

fn error_type(e: &EnqueueError) -> &'static str {
    match e {
        EnqueueError::Job(_) => "invalid_job",
        EnqueueError::Context(_) => "invalid_context",
        EnqueueError::Unavailable(_) => "redis_unavailable",
        EnqueueError::IdempotencyConflict { .. } => "idempotency_conflict",
        EnqueueError::Partitions(_) => "partition_mismatch",
        _ => "redis_error",
    }
}
