//! The span shapes of [`super`]: each built by one function here, so a name or an attribute changes in one place.

use std::time::Duration;

use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::KeyValue;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{self, ContextStatus, TraceHeaders};
use super::semconv;
use crate::job::Job;
use crate::stream::Delivery;
use crate::worker::TraceMode;

/// The `send <Q>` span of one job put on queue `queue`; `name` is `send <Q>`, made once by the producer.
pub(crate) fn send(name: &str, queue: &str, job: &Job) -> Span {
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
        jobstream.job.scheduled_for = Empty,
    )
}

/// Marks a `send` span as scheduling its job for `due_ms` (unix ms): the `jobstream.job.scheduled_for`
/// attribute and a `scheduled` event, which also says whether the job will run in a linked trace.
pub(crate) fn scheduled(span: &Span, due_ms: u64, linked: bool) {
    span.record(semconv::JOB_SCHEDULED_FOR, due_ms);
    span.add_event(
        "scheduled",
        vec![
            KeyValue::new(semconv::JOB_SCHEDULED_FOR, due_ms as i64),
            KeyValue::new(semconv::JOB_TRACE_MODE, if linked { "link" } else { "parent" }),
        ],
    );
}

/// The `send <Q>` span of dead entry `dead_id` put back on queue `queue` as `job`, linked to the trace it
/// died in (`old_trace`) when that context is valid.
pub(crate) fn replay(queue: &str, job: &Job, dead_id: &str, old_trace: &TraceHeaders) -> Span {
    let span = tracing::info_span!(
        "send",
        otel.name = format!("send {queue}"),
        otel.kind = "producer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "send",
        messaging.operation.name = "replay",
        messaging.destination.name = queue,
        jobstream.job.id = %job.id,
        jobstream.job.kind = %job.kind,
        jobstream.job.attempt = 1,
        jobstream.replay.of = dead_id,
    );
    if let (cx, ContextStatus::Continued) = propagation::extract(old_trace) {
        span.add_link(cx.span().span_context().clone());
    }
    span
}

/// What a consumer's `process` spans share: the span name (`process <Q>`, made once), the queue, the group
/// and the consumer's name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consumer<'a> {
    pub(crate) span_name: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) group: &'a str,
    pub(crate) consumer: &'a str,
}

/// The `process <Q>` span of one attempt at `delivery`; `job` is `None` when the entry did not decode.
pub(crate) fn process(consumer: Consumer<'_>, delivery: &Delivery, job: Option<&Job>) -> Span {
    // Values are recorded at creation (an absent `Option` records nothing): each later `record` costs a
    // lookup in the subscriber, per job.
    let job_id = job.map(|j| j.id.to_string());
    tracing::info_span!(
        "process",
        otel.name = consumer.span_name,
        otel.kind = "consumer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = consumer.queue,
        messaging.message.id = delivery.message_id.as_str(),
        messaging.consumer.group.name = consumer.group,
        messaging.client.id = consumer.consumer,
        jobstream.delivery.count = delivery.delivery_count,
        jobstream.reclaimed_from = delivery.reclaimed_from.as_ref().map(|(owner, _)| owner.as_str()),
        jobstream.reclaimed_idle_ms = delivery.reclaimed_from.as_ref().map(|(_, idle_ms)| *idle_ms),
        jobstream.job.id = job_id.as_deref(),
        jobstream.job.kind = job.map(|j| j.kind.as_str()),
        jobstream.job.attempt = job.map(|j| j.attempt),
        jobstream.queue.wait_ms = job.map(|j| crate::clock::now_ms().saturating_sub(j.enqueued_at_ms)),
        jobstream.trace.context = Empty,
        jobstream.trace.context_error = Empty,
        jobstream.job.timeout_ms = Empty,
        error.type = Empty,
    )
}

/// Makes the `process` span continue the trace in the entry's `trace` fields, as a child or with a link per
/// `mode`, and records what became of that context; an invalid one is logged and the span stays a new root.
pub(crate) fn continue_trace(span: &Span, trace: &TraceHeaders, mode: TraceMode, message_id: &str) {
    let (parent, status) = propagation::extract(trace);
    span.record(semconv::TRACE_CONTEXT, status.label());
    propagation::record_truncation(span, trace);
    match status {
        ContextStatus::Continued => match mode {
            TraceMode::Parent => {
                let _ = span.set_parent(parent);
            }
            TraceMode::Link => span.add_link(parent.span().span_context().clone()),
        },
        ContextStatus::Invalid(ref e) => {
            span.record(semconv::TRACE_CONTEXT_ERROR, e.to_string());
            tracing::warn!(parent: span, %message_id, error = %e, "trace context not continued; new root trace");
        }
        ContextStatus::Missing => {}
    }
}

/// Marks a `send` or `process` span failed: `error.type` and an error status with `message`.
pub(crate) fn record_error(span: &Span, error_type: &str, message: &str) {
    span.record(semconv::ERROR_TYPE, error_type);
    span.set_status(Status::error(message.to_owned()));
}

/// How an attempt was settled, as its `settle` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Acknowledged: the job is done.
    Ack,
    /// Scheduled to run again as attempt `next_attempt` after `delay`.
    Retry { delay: Duration, next_attempt: u32 },
    /// Moved to the dead stream.
    Dead,
}

/// Adds the `settle` event to a `process` span.
pub(crate) fn settle_event(span: &Span, settled: Settled) {
    let attributes = match settled {
        Settled::Ack => vec![KeyValue::new(semconv::SETTLE_OUTCOME, "ack")],
        Settled::Retry { delay, next_attempt } => vec![
            KeyValue::new(semconv::SETTLE_OUTCOME, "retry"),
            KeyValue::new(semconv::RETRY_DELAY_MS, delay.as_millis() as i64),
            KeyValue::new(semconv::RETRY_NEXT_ATTEMPT, i64::from(next_attempt)),
        ],
        Settled::Dead => vec![KeyValue::new(semconv::SETTLE_OUTCOME, "dead")],
    };
    span.add_event("settle", attributes);
}

/// Adds a `progress` event (the handler's report, JSON `text`) to a `process` span.
pub(crate) fn progress(span: &Span, text: &str) {
    span.add_event("progress", vec![KeyValue::new(semconv::JOB_PROGRESS, text.to_owned())]);
}

/// Adds the `promoted` event to a `process` span: its job came from the delayed set at `promoted_at_ms`.
pub(crate) fn promoted(span: &Span, promoted_at_ms: u64) {
    span.add_event("promoted", vec![KeyValue::new(semconv::JOB_PROMOTED_AT, promoted_at_ms as i64)]);
}

/// Adds the `queue_paused` event to a `process` span: its job waited `paused_ms` while the queue was paused.
pub(crate) fn queue_paused(span: &Span, paused_ms: u64) {
    span.add_event("queue_paused", vec![KeyValue::new(semconv::QUEUE_PAUSED_MS, paused_ms as i64)]);
}

/// Adds the `cancelled` event to a `process` span: the job was cancelled, while its handler ran (`started`) or
/// before it could start.
pub(crate) fn cancelled(span: &Span, started: bool) {
    span.add_event("cancelled", vec![KeyValue::new(semconv::CANCEL_STARTED, started)]);
}
