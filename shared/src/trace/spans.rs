//! The span shapes of [`super`]: each built by one function here, so a name or an attribute changes in one place.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::endpoint::Endpoint;
use super::propagation::{self, ContextStatus, TraceHeaders};
use super::semconv;
use crate::job::Job;
use crate::messaging_metrics::Settlement;
use crate::stream::Delivery;
use crate::worker::TraceMode;

/// The `send <Q>` span of one job put on the queue at `endpoint`; `name` is `send <Q>`, made once by the
/// producer.
pub(crate) fn send(name: &str, endpoint: &Endpoint, job: &Job) -> Span {
    send_as(name, "send", endpoint, job)
}

/// A `send` span whose `messaging.operation.name` is `operation` (`send`, or `replay`). Set at creation: a
/// value recorded later would be exported beside the first, not instead of it.
fn send_as(name: &str, operation: &str, endpoint: &Endpoint, job: &Job) -> Span {
    tracing::info_span!(
        "send",
        otel.name = name,
        otel.kind = "producer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.destination.name = &*endpoint.queue,
        messaging.destination.partition.id = endpoint.partition.as_deref(),
        messaging.message.id = Empty,
        messaging.message.body.size = int(job.payload.as_str().len()),
        server.address = endpoint.server_address(),
        server.port = endpoint.server_port(),
        jobstream.job.id = %job.id,
        jobstream.job.kind = job.kind.as_str(),
        jobstream.job.attempt = i64::from(job.attempt),
        error.type = Empty,
        jobstream.idempotent.duplicate = Empty,
        jobstream.job.scheduled_for = Empty,
        jobstream.replay.of = Empty,
    )
}

/// Marks a `send` span as scheduling its job for `due_ms` (unix ms): the `jobstream.job.scheduled_for`
/// attribute and a `scheduled` event, which also says whether the job will run in a linked trace.
pub(crate) fn scheduled(span: &Span, due_ms: u64, linked: bool) {
    span.record(semconv::JOB_SCHEDULED_FOR, int(due_ms));
    span.add_event(
        "scheduled",
        vec![
            KeyValue::new(semconv::JOB_SCHEDULED_FOR, due_ms as i64),
            KeyValue::new(semconv::JOB_TRACE_MODE, if linked { "link" } else { "parent" }),
        ],
    );
}

/// The `send <Q>` span of dead entry `dead_id` put back on the queue at `endpoint` as `job`: a `send` span
/// whose operation is `replay`, naming the dead entry, linked to the trace it died in (`old_trace`) when that
/// context is valid.
pub(crate) fn replay(endpoint: &Endpoint, job: &Job, dead_id: &str, old_trace: &TraceHeaders) -> Span {
    let span = send_as(&format!("send {}", endpoint.queue), "replay", endpoint, job);
    span.record(semconv::REPLAY_OF, dead_id);
    if let (cx, ContextStatus::Continued) = propagation::extract(old_trace) {
        span.add_link(cx.span().span_context().clone());
    }
    span
}

/// What a consumer's `process` spans share: the span name (`process <Q>`, made once) and where they run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consumer<'a> {
    pub(crate) span_name: &'a str,
    pub(crate) endpoint: &'a Endpoint,
}

/// The `process <Q>` span of one attempt at `delivery`; `job` (and its id as text, `job_id`) is `None` when the
/// entry did not decode; `context` is what became of the entry's trace context ([`ContextStatus::label`]).
pub(crate) fn process(
    consumer: Consumer<'_>,
    delivery: &Delivery,
    job: Option<&Job>,
    job_id: Option<&str>,
    context: &str,
) -> Span {
    let endpoint = consumer.endpoint;
    // Values are recorded at creation (an absent `Option` records nothing): each later `record` costs a
    // lookup in the subscriber, per job.
    tracing::info_span!(
        "process",
        otel.name = consumer.span_name,
        otel.kind = "consumer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = &*endpoint.queue,
        messaging.destination.partition.id = endpoint.partition.as_deref(),
        messaging.message.id = delivery.message_id.as_str(),
        messaging.message.body.size = job.map(|j| int(j.payload.as_str().len())),
        messaging.consumer.group.name = endpoint.group.as_deref(),
        messaging.client.id = endpoint.consumer.as_deref(),
        server.address = endpoint.server_address(),
        server.port = endpoint.server_port(),
        jobstream.delivery.count = int(delivery.delivery_count),
        jobstream.reclaimed_from = delivery.reclaimed_from.as_ref().map(|(owner, _)| owner.as_str()),
        jobstream.reclaimed_idle_ms = delivery.reclaimed_from.as_ref().map(|(_, idle_ms)| int(*idle_ms)),
        jobstream.job.id = job_id,
        jobstream.job.kind = job.map(|j| j.kind.as_str()),
        jobstream.job.attempt = job.map(|j| i64::from(j.attempt)),
        jobstream.queue.wait_ms = job.map(|j| int(crate::clock::now_ms().saturating_sub(j.enqueued_at_ms))),
        jobstream.trace.context = context,
        jobstream.trace.context_error = Empty,
        jobstream.job.timeout_ms = Empty,
        error.type = Empty,
    )
}

/// Makes the `process` span continue `parent`, the context [`propagation::extract`] read from the entry's
/// `trace` fields with `status`, as a child or with a link per `mode`; records the fields it cut; an invalid
/// context is logged and the span stays a new root.
pub(crate) fn continue_trace(
    span: &Span,
    parent: opentelemetry::Context,
    status: &ContextStatus,
    trace: &TraceHeaders,
    mode: TraceMode,
    message_id: &str,
) {
    propagation::record_truncation(span, trace);
    match status {
        ContextStatus::Continued => match mode {
            TraceMode::Parent => {
                let _ = span.set_parent(parent);
            }
            TraceMode::Link => span.add_link(parent.span().span_context().clone()),
        },
        ContextStatus::Invalid(e) => {
            span.record(semconv::TRACE_CONTEXT_ERROR, e.to_string());
            tracing::warn!(parent: span, %message_id, error = %e, "trace context not continued; new root trace");
        }
        ContextStatus::Missing => {}
    }
}

/// An unsigned count or time as the `int` attribute the conventions type it as (OTLP integers are signed 64-bit).
/// A `tracing` field given a `u64` (or `usize`, `u32`) reaches the `tracing` bridge as a `u64`, which it exports
/// as its decimal text, a string attribute; one given an `i64` is exported as an integer.
pub(crate) fn int(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Marks a `send` or `process` span failed: `error.type` and an error status with `message`.
pub(crate) fn record_error(span: &Span, error_type: &str, message: &str) {
    span.record(semconv::ERROR_TYPE, error_type);
    span.set_status(Status::error(message.to_owned()));
}

/// The `tracing` target of the `messaging.*.exception` events: span events and OTLP log records, kept off
/// stderr (`telemetry::init`), where the worker's own line tells the same failure.
pub(crate) const EXCEPTION_TARGET: &str = "jobstream::exception";

/// Which operation failed, as the name of its `messaging.<operation>.exception` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// XADD (or the enqueue script) of a `send` span.
    Send,
    /// A handler's run, in its `process` span.
    Process,
    /// An acknowledgement, retry or dead-letter move.
    Settle,
}

/// Records the `messaging.<operation>.exception` event of the conventions (v1.44, "messaging exceptions"): a log
/// record in `span`'s context with `exception.type` and `exception.message` (ERROR for a process failure, WARN
/// otherwise), which the trace layer also adds to `span` as a span event of that name. It carries no message
/// field, so that the span event keeps the convention's name; the log line's fields say it.
pub(crate) fn exception(span: &Span, operation: Operation, exception_type: &str, message: &str) {
    // Event names are static: one `event!` per name. The field names hold a dot and a reserved word, so they are
    // given as the constants' values.
    macro_rules! exception_event {
        ($name:literal, $level:expr) => {
            tracing::event!(
                name: $name,
                target: EXCEPTION_TARGET,
                parent: span,
                $level,
                { semconv::EXCEPTION_TYPE } = exception_type,
                { semconv::EXCEPTION_MESSAGE } = message,
            )
        };
    }
    match operation {
        Operation::Process => exception_event!("messaging.process.exception", tracing::Level::ERROR),
        Operation::Send => exception_event!("messaging.send.exception", tracing::Level::WARN),
        Operation::Settle => exception_event!("messaging.settle.exception", tracing::Level::WARN),
    }
}

/// The span of one retry or dead-letter move of the message `message_id`: a CLIENT `retry <Q>` or
/// `dead_letter <Q>` span, child of the attempt's `process` span (one message: no batch count).
pub(crate) fn settle_move(process: &Span, endpoint: &Endpoint, how: Settlement, message_id: &str) -> Span {
    let name = format!("{} {}", how.name(), endpoint.queue);
    tracing::info_span!(
        parent: process,
        "settle",
        otel.name = name,
        otel.kind = "client",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "settle",
        messaging.operation.name = how.name(),
        messaging.destination.name = &*endpoint.queue,
        messaging.destination.partition.id = endpoint.partition.as_deref(),
        messaging.message.id = message_id,
        messaging.consumer.group.name = endpoint.group.as_deref(),
        messaging.client.id = endpoint.consumer.as_deref(),
        server.address = endpoint.server_address(),
        server.port = endpoint.server_port(),
        error.type = Empty,
    )
}

/// Spans made with the OpenTelemetry API directly, for operations on many messages at once (a read, an
/// acknowledgement batch): each is a new root with a link to each message's span, so they are made only when one
/// of those is sampled.
pub(crate) struct BatchSpans {
    tracer: opentelemetry::global::BoxedTracer,
    endpoint: Endpoint,
    receive_name: String,
    ack_name: String,
}

impl std::fmt::Debug for BatchSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSpans").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// Most links one batch span carries: the SDK's default limit (128, `OTEL_SPAN_LINK_COUNT_LIMIT`) would drop
/// the rest, so the provider jobstream installs allows this many ([`crate::telemetry`]), as many as one XACK
/// acknowledges.
pub(crate) const MAX_BATCH_LINKS: usize = 1024;

/// One batch operation's outcome and times, for [`BatchSpans`].
#[derive(Debug)]
pub(crate) struct BatchOperation<'a> {
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    /// `(error.type, message)` when it failed.
    pub(crate) error: Option<(&'a str, &'a str)>,
}

impl BatchSpans {
    /// Batch spans of the partition at `endpoint`, from the global tracer provider.
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        let scope = InstrumentationScope::builder("jobstream")
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_schema_url(semconv::SCHEMA_URL)
            .build();
        let tracer = opentelemetry::global::tracer_provider().tracer_with_scope(scope);
        let receive_name = format!("receive {}", endpoint.queue);
        let ack_name = format!("ack {}", endpoint.queue);
        Self { tracer, endpoint, receive_name, ack_name }
    }

    /// The `ack <Q>` CLIENT span of one XACK of `messages` (each the `process` span that settled it, with its
    /// entry id), linking to each; nothing when none of them is sampled.
    pub(crate) fn ack<'m>(
        &self,
        messages: impl ExactSizeIterator<Item = (&'m SpanContext, &'m str)> + Clone,
        operation: BatchOperation<'_>,
    ) {
        self.batch(&self.ack_name, "settle", Settlement::Ack.name(), messages, operation);
    }

    /// The `receive <Q>` CLIENT span of one XREADGROUP (or take-over) that delivered `messages` (each the
    /// creation context its entry carries, with its entry id), linking to each; a failed read (no messages) is
    /// always recorded.
    pub(crate) fn receive<'m>(
        &self,
        messages: impl ExactSizeIterator<Item = (&'m SpanContext, &'m str)> + Clone,
        operation: BatchOperation<'_>,
    ) {
        self.batch(&self.receive_name, "receive", "receive", messages, operation);
    }

    fn batch<'m>(
        &self,
        name: &str,
        operation_type: &'static str,
        operation_name: &'static str,
        messages: impl ExactSizeIterator<Item = (&'m SpanContext, &'m str)> + Clone,
        operation: BatchOperation<'_>,
    ) {
        let count = messages.len();
        if operation.error.is_none() && !messages.clone().any(|(cx, _)| cx.is_sampled()) {
            return;
        }
        let endpoint = &self.endpoint;
        let mut attributes = vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, semconv::MESSAGING_SYSTEM_REDIS),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, operation_type),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation_name),
            KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, endpoint.queue.to_string()),
        ];
        if let Some(partition) = &endpoint.partition {
            attributes.push(KeyValue::new(semconv::MESSAGING_DESTINATION_PARTITION_ID, partition.to_string()));
        }
        if let Some(group) = &endpoint.group {
            attributes.push(KeyValue::new(semconv::MESSAGING_CONSUMER_GROUP_NAME, group.to_string()));
        }
        if let Some(consumer) = &endpoint.consumer {
            attributes.push(KeyValue::new(semconv::MESSAGING_CLIENT_ID, consumer.to_string()));
        }
        endpoint.push_server(&mut attributes);
        match count {
            1 => {
                let (_, id) = messages.clone().next().expect("one message");
                attributes.push(KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id.to_owned()));
            }
            0 => {}
            n => attributes.push(KeyValue::new(semconv::MESSAGING_BATCH_MESSAGE_COUNT, n as i64)),
        }
        if let Some((error_type, _)) = operation.error {
            attributes.push(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
        }
        let links = messages
            .filter(|(cx, _)| cx.is_valid())
            .take(MAX_BATCH_LINKS)
            .map(|(cx, id)| {
                let mut link = Link::with_context(cx.clone());
                link.attributes.push(KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id.to_owned()));
                link
            })
            .collect();
        // A root whatever context is current (a caller may have instrumented the worker's task). The sampler then
        // decides as for any root: the default parent-based sampler's root sampler samples every one.
        let builder = self
            .tracer
            .span_builder(name.to_owned())
            .with_kind(SpanKind::Client)
            .with_start_time(operation.start)
            .with_attributes(attributes)
            .with_links(links);
        let mut span = self.tracer.build_with_context(builder, &opentelemetry::Context::new());
        // A failed batch operation's exception is a span event only: the caller logs a run of failures once
        // (a read retried through an outage would otherwise log a line per retry).
        if let Some((error_type, message)) = operation.error {
            use opentelemetry::trace::Span as _;
            let event = format!("messaging.{operation_type}.exception");
            span.add_event(
                event,
                vec![
                    KeyValue::new(semconv::EXCEPTION_TYPE, error_type.to_owned()),
                    KeyValue::new(semconv::EXCEPTION_MESSAGE, message.to_owned()),
                ],
            );
            span.set_status(Status::error(message.to_owned()));
        }
        opentelemetry::trace::Span::end_with_timestamp(&mut span, operation.end);
    }
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
