//! Span attribute names: the OpenTelemetry messaging semantic conventions plus jobstream's own
//! (`DESIGN.md` §4). Kept in one place so that producer, consumer and tests agree on every name.

/// `messaging.system`; always [`MESSAGING_SYSTEM_REDIS`].
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of `messaging.system`.
pub const MESSAGING_SYSTEM_REDIS: &str = "redis";
/// `messaging.operation.type`: `send`, `process`, `settle`.
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.operation.name`.
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.destination.name`: the queue name.
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.message.id`: the stream entry id.
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.consumer.group.name`.
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// `messaging.client.id`: the consumer name.
pub const MESSAGING_CLIENT_ID: &str = "messaging.client.id";
/// Times this entry was delivered (XREADGROUP/XCLAIM delivery counter).
pub const DELIVERY_COUNT: &str = "jobstream.delivery.count";
/// Milliseconds between the first enqueue and the start of this attempt.
pub const QUEUE_WAIT_MS: &str = "jobstream.queue.wait_ms";
/// The job id, stable across retries.
pub const JOB_ID: &str = "jobstream.job.id";
/// The job kind.
pub const JOB_KIND: &str = "jobstream.job.kind";
/// The attempt number, 1-based.
pub const JOB_ATTEMPT: &str = "jobstream.job.attempt";
/// `continued`, `missing` or `invalid`: what became of the entry's trace context.
pub const TRACE_CONTEXT: &str = "jobstream.trace.context";
/// Why an entry's trace context could not be continued.
pub const TRACE_CONTEXT_ERROR: &str = "jobstream.trace.context_error";
/// The entry's trace fields cut by whole members to the W3C sizes before the context was continued:
/// `tracestate`, `baggage` or `tracestate,baggage`. Absent when nothing was cut.
pub const TRACE_CONTEXT_TRUNCATED: &str = "jobstream.trace.context_truncated";
/// `error.type`: the class of a failure.
pub const ERROR_TYPE: &str = "error.type";
/// Outcome of settling a job: `ack`, `retry`, `dead`.
pub const SETTLE_OUTCOME: &str = "jobstream.settle.outcome";
/// Delay before the next attempt, on a `settle` event with outcome `retry`.
pub const RETRY_DELAY_MS: &str = "jobstream.retry.delay_ms";
/// The next attempt's number, on a `settle` event with outcome `retry`.
pub const RETRY_NEXT_ATTEMPT: &str = "jobstream.retry.next_attempt";
/// The consumer this entry was taken over from (it was idle past the visibility timeout).
pub const RECLAIMED_FROM: &str = "jobstream.reclaimed_from";
/// How long the entry had been idle when it was taken over.
pub const RECLAIMED_IDLE_MS: &str = "jobstream.reclaimed_idle_ms";
/// True on a `send` span whose idempotency key matched an earlier job (nothing was enqueued).
pub const IDEMPOTENT_DUPLICATE: &str = "jobstream.idempotent.duplicate";
/// Unix ms a scheduled job is due at, on its `send` span and `scheduled` event (absent for a job enqueued to run
/// at once).
pub const JOB_SCHEDULED_FOR: &str = "jobstream.job.scheduled_for";
/// `link` or `parent`: how the `process` spans of a scheduled job relate to its `send` span, on the `scheduled`
/// event (`link` when it was scheduled further ahead than the producer's link threshold).
pub const JOB_TRACE_MODE: &str = "jobstream.job.trace_mode";
/// On the root `send` span of a periodic job: the name of the schedule whose tick made it ([`crate::cron`]).
pub const CRON_NAME: &str = "jobstream.cron.name";
/// On the root `send` span of a periodic job: the tick's time, unix ms (when it was due, not when it ran).
pub const CRON_TICK: &str = "jobstream.cron.tick";
/// Event `progress`: what the handler reported ([`crate::Job::progress`]), as JSON text.
pub const JOB_PROGRESS: &str = "jobstream.job.progress";
/// Event `promoted`: when the job left the delayed set for the stream (unix ms; the entry's `promoted_at`).
pub const JOB_PROMOTED_AT: &str = "jobstream.job.promoted_at";
/// Event `queue_paused`: how long the job waited while its queue was paused (ms).
pub const QUEUE_PAUSED_MS: &str = "jobstream.queue.paused_ms";
/// Event `cancelled`: whether the handler had started (`true`) or the job was stopped before it ran.
pub const CANCEL_STARTED: &str = "jobstream.cancel.started";
/// The version of the OpenTelemetry semantic conventions the spans and metrics follow (`docs/design.md`).
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";
/// `messaging.destination.partition.id`: the partition of a partitioned queue (`0` … `n-1`).
pub const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
/// `messaging.batch.message_count`: on a span that settles or receives more than one message.
pub const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
/// `messaging.message.body.size`: the payload's size in bytes.
pub const MESSAGING_MESSAGE_BODY_SIZE: &str = "messaging.message.body.size";
/// `server.address`: the Redis server's host as configured (absent on a Cluster).
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`: the Redis server's port.
pub const SERVER_PORT: &str = "server.port";
/// `exception.type`, on a `messaging.*.exception` event.
pub const EXCEPTION_TYPE: &str = "exception.type";
/// `exception.message`, on a `messaging.*.exception` event.
pub const EXCEPTION_MESSAGE: &str = "exception.message";
/// On the `send` span of a replayed dead entry: the dead entry's id.
pub const REPLAY_OF: &str = "jobstream.replay.of";
