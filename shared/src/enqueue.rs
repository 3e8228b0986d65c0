//! Putting jobs on a queue: XADD with the job's fields and the trace context of a `send <Q>` PRODUCER span.
//!
//! Each job gets its own `send` span, a child of the caller's current span, whose context is injected into the
//! entry; the consumer's `process` span becomes that span's child. A batch is written as one pipeline, so it
//! costs one round trip. An enqueue reports success only for entries Redis answered with an id.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::connection::Pool;
use opentelemetry::trace::{Status, TraceContextExt, TraceId};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::job::{Job, JobError, JobId, JobKind, Payload};
use crate::keys::{IdempotencyKey, Keys, QueueName};
use crate::limits::Limits;
use crate::metrics::{JobLabels, Metrics, QueueLabels};
use crate::propagation::{self, ContextError};
use crate::semconv;

static ENQUEUE_ONCE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/enqueue_once.lua")));

/// Why an enqueue failed. No job of a failed call is reported as enqueued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("cannot propagate the trace context: {0}")]
    Context(#[from] ContextError),
    #[error("no Redis connection: {0}")]
    Pool(#[from] crate::connection::PoolError),
    #[error("Redis refused the enqueue: {0}")]
    Redis(#[from] redis::RedisError),
}

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
}

/// Enqueues jobs on one queue. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    pool: Pool,
    /// The queue's partitions; one for an unpartitioned queue.
    partitions: Arc<[Keys]>,
    /// The queue's name (without a partition suffix), for span names and metric labels.
    queue: QueueName,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// `send <Q>`, made once.
    span_name: Arc<str>,
}

impl Producer {
    /// A producer for the queue whose keys are `keys`.
    pub fn new(pool: Pool, keys: Keys, limits: Limits) -> Self {
        let queue = keys.queue().clone();
        Self::partitioned(pool, &queue, vec![keys], limits)
    }

    /// A producer for `queue` split into `partitions` ([`Keys::partitioned`]): each job goes to the partition its
    /// id picks, each idempotency key always to the same partition.
    pub fn partitioned(pool: Pool, queue: &QueueName, partitions: Vec<Keys>, limits: Limits) -> Self {
        assert!(!partitions.is_empty(), "a queue has at least one partition");
        let span_name = format!("send {queue}").into();
        Self { pool, partitions: partitions.into(), queue: queue.clone(), limits, metrics: Arc::default(), span_name }
    }

    /// Records enqueues into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts jobs enqueued (`ok`) or one failed enqueue call.
    fn count<'a>(&self, ok: bool, kinds: impl Iterator<Item = &'a JobKind>) {
        let queue = self.queue.to_string();
        if ok {
            for kind in kinds {
                self.metrics.enqueued.get_or_create(&JobLabels { queue: queue.clone(), kind: kind.to_string() }).inc();
            }
        } else {
            self.metrics.enqueue_errors.get_or_create(&QueueLabels { queue }).inc();
        }
    }

    /// The queue's keys.
    pub fn keys(&self) -> &Keys {
        &self.partitions[0]
    }

    /// The limits applied to jobs.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Builds a job from a kind and JSON text, applying the payload limit.
    pub fn job(&self, kind: &str, payload_json: &str) -> Result<Job, JobError> {
        Ok(Job::new(JobKind::parse(kind)?, Payload::parse(payload_json, &self.limits)?))
    }

    /// Enqueues one job.
    pub async fn enqueue(&self, job: Job) -> Result<Enqueued, EnqueueError> {
        let mut done = self.enqueue_batch(vec![job]).await?;
        Ok(done.remove(0))
    }

    /// Enqueues jobs, one pipelined round trip per partition they go to, and reports them in order. Either
    /// every job is reported enqueued or the call fails; after a failure some entries may still have been
    /// written (the caller's retry may then duplicate them, which at-least-once delivery allows).
    pub async fn enqueue_batch(&self, jobs: Vec<Job>) -> Result<Vec<Enqueued>, EnqueueError> {
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
        for (positions, sent) in positions.into_iter().zip(futures_util::future::try_join_all(sends).await?) {
            for (position, done) in positions.into_iter().zip(sent) {
                out[position] = Some(done);
            }
        }
        Ok(out.into_iter().map(|done| done.expect("every job was sent")).collect())
    }

    /// Enqueues jobs on one partition in one pipelined round trip.
    async fn send(&self, keys: &Keys, mut jobs: Vec<Job>) -> Result<Vec<Enqueued>, EnqueueError> {
        let queue = keys.queue().as_str();
        let mut spans = Vec::with_capacity(jobs.len());
        let mut pipe = redis::pipe();
        for job in &mut jobs {
            let span = send_span(&self.span_name, queue, job);
            let cx = span.context();
            job.trace = propagation::inject(&cx)?;
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&keys.stream).arg("*");
            for (name, value) in job.to_fields() {
                cmd.arg(name).arg(value);
            }
            pipe.add_command(cmd);
            spans.push((span, cx.span().span_context().trace_id()));
        }
        let result: Result<Vec<String>, EnqueueError> = async {
            let mut conn = self.pool.get().await?;
            Ok(pipe.query_async(&mut conn).await?)
        }
        .await;
        let result = match result {
            Ok(ids) => Ok(jobs
                .iter()
                .zip(ids)
                .zip(spans)
                .map(|((job, message_id), (span, trace_id))| {
                    span.record(semconv::MESSAGING_MESSAGE_ID, message_id.as_str());
                    Enqueued {
                        job_id: job.id,
                        message_id,
                        trace_id: (trace_id != TraceId::INVALID).then_some(trace_id),
                        duplicate: false,
                    }
                })
                .collect()),
            Err(e) => {
                for (span, _) in &spans {
                    span.record(semconv::ERROR_TYPE, error_type(&e));
                    span.set_status(Status::error(e.to_string()));
                }
                Err(e)
            }
        };
        self.count(result.is_ok(), jobs.iter().map(|j| &j.kind));
        result
    }
}

impl Producer {
    /// Enqueues `job` unless a job with the same idempotency key was enqueued in the last `ttl`; then returns
    /// that earlier job, marked [`Enqueued::duplicate`]. The check and the enqueue are one atomic step.
    pub async fn enqueue_once(
        &self,
        mut job: Job,
        key: &IdempotencyKey,
        ttl: Duration,
    ) -> Result<Enqueued, EnqueueError> {
        let keys = &self.partitions[fnv1a(key.as_str().as_bytes()) as usize % self.partitions.len()];
        let span = send_span(&self.span_name, keys.queue().as_str(), &job);
        let cx = span.context();
        job.trace = propagation::inject(&cx)?;
        let trace_id = cx.span().span_context().trace_id();
        let mut invocation = ENQUEUE_ONCE.key(&keys.stream);
        invocation.key(keys.idempotency(key)).arg(ttl.as_millis().max(1) as u64).arg(format!("{} {trace_id}", job.id));
        for (name, value) in job.to_fields() {
            invocation.arg(name).arg(value);
        }
        let result: Result<(i64, String, String), EnqueueError> = async {
            let mut conn = self.pool.get().await?;
            Ok(invocation.invoke_async(&mut conn).await?)
        }
        .await;
        if !result.as_ref().is_ok_and(|(created, _, _)| *created == 0) {
            self.count(result.is_ok(), std::iter::once(&job.kind));
        }
        let (created, record, message_id) = result.inspect_err(|e| {
            span.record(semconv::ERROR_TYPE, error_type(e));
            span.set_status(Status::error(e.to_string()));
        })?;
        let (job_id, trace) = record.split_once(' ').unwrap_or((record.as_str(), ""));
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
        })
    }
}

/// FNV-1a: a hash every producer computes alike, whatever its version, so a key always picks one partition.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn error_type(e: &EnqueueError) -> &'static str {
    match e {
        EnqueueError::Job(_) => "invalid_job",
        EnqueueError::Context(_) => "invalid_context",
        EnqueueError::Pool(_) => "redis_unavailable",
        EnqueueError::Redis(_) => "redis_error",
    }
}

fn send_span(name: &str, queue: &str, job: &Job) -> tracing::Span {
    tracing::info_span!(
        "send",
        otel.name = name,
        otel.kind = "producer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = queue,
        messaging.message.id = Empty,
        jobstream.job.id = %job.id,
        jobstream.job.kind = job.kind.as_str(),
        jobstream.job.attempt = job.attempt,
        error.type = Empty,
        jobstream.idempotent.duplicate = Empty,
    )
}
