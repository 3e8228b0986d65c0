//! One attempt at a delivery: decode it, open the `process` span that continues the entry's trace, run the
//! handler inside it (a panic caught and turned into a failure), and hand the outcome to [`super::settle`].

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use std::sync::Arc;

use opentelemetry::trace::TraceContextExt as _;

use super::acker::AckSender;
use super::{settle, Shared, TraceMode};
use crate::handler::JobFailure;
use crate::job::{field, AttemptContext, Context, Job, ProgressSink};
use crate::loadprobe::Mark;
use crate::stream::{DeadReason, Delivery};
use crate::trace::propagation::{self, TraceHeaders};
use crate::trace::spans;

/// What became of one attempt.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The handler succeeded.
    Succeeded,
    /// The handler failed (or panicked); the job (of this kind, on this attempt) may run again.
    Failed { failure: JobFailure, kind: String, attempt: u32 },
    /// Not run: the entry was delivered this many times without an outcome, more than the limit.
    Poison { deliveries: u64 },
    /// Not run, and never can be: the entry is not a job, or no handler knows its kind.
    Dead(DeadReason, String),
    /// The job was cancelled ([`crate::jobs::cancel`]): stopped while its handler ran (`started`), or found
    /// cancelled before it started. Acknowledged, never retried.
    Cancelled { started: bool },
}

/// What a job's status record needs from its attempt; `None` when records are off or the entry is not a job.
#[derive(Debug)]
pub(super) struct Tracked {
    /// The per-job hash's key.
    pub(super) key: String,
    pub(super) job_id: String,
    /// The entry this attempt came from.
    pub(super) message_id: String,
    pub(super) attempt: u32,
    pub(super) kind: String,
    pub(super) enqueued_at_ms: u64,
    pub(super) traceparent: Option<String>,
    /// When the attempt started (unix ms).
    pub(super) started_ms: u64,
    /// The attempt's `process` span: its ids for the record, and the `ack` span's link to it.
    pub(super) span_context: opentelemetry::trace::SpanContext,
    /// The attempt's context: its result.
    pub(super) context: Arc<AttemptContext>,
}

/// Runs one attempt at `delivery` and settles its outcome; the entry counts as in flight (its claim renewed)
/// until it is settled.
pub(super) async fn run(shared: &Shared, delivery: Delivery, acks: &AckSender) {
    let decoded = Job::from_raw(&delivery.fields, &shared.config.limits);
    let raw_trace;
    let trace = match &decoded {
        Ok(job) => &job.trace,
        Err(_) => {
            raw_trace = raw_trace_headers(&delivery);
            &raw_trace
        }
    };
    // Extracted first, so that what became of the context is recorded when the span is made.
    let (parent, status) = propagation::extract(trace);
    // The job's id as text, formatted once: the span, the record, the cancel checks.
    let job_id = decoded.as_ref().ok().map(|job| job.id.to_string());
    let span =
        spans::process(shared.span_consumer(), &delivery, decoded.as_ref().ok(), job_id.as_deref(), status.label());
    let mark = decoded.as_ref().ok().and_then(|job| shared.probes.mark(job));
    // A job marked `trace_mode=link` (scheduled far ahead) is linked whatever the queue-wide mode.
    let mode = if delivery.field(field::TRACE_MODE) == Some(field::TRACE_MODE_LINK.as_bytes()) {
        TraceMode::Link
    } else {
        shared.config.trace_mode
    };
    spans::continue_trace(&span, parent, &status, trace, mode, &delivery.message_id);

    shared.stats.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let in_flight = &shared.hot.in_flight;
    in_flight.inc();
    shared.in_flight.insert(&delivery.message_id);
    // The attempt's context: cancellation, result, progress (to the span, and the record when kept).
    let mut decoded = decoded;
    let mut tracked = None;
    if let (Ok(job), Some(id)) = (&mut decoded, &job_id) {
        let record = shared.config.job_records.then(|| shared.keys.job(id));
        let context = Arc::new(AttemptContext {
            sink: Some(ProgressSink {
                span: span.clone(),
                record: record.clone().map(|key| (shared.pool.clone(), key, shared.config.job_retention)),
                max_result_bytes: shared.config.limits.max_payload_bytes,
            }),
            ..AttemptContext::default()
        });
        job.context = Context(context.clone());
        if let Some(key) = record {
            tracked = Some(Tracked {
                key,
                job_id: id.clone(),
                message_id: delivery.message_id.clone(),
                attempt: job.attempt,
                kind: job.kind.as_str().to_owned(),
                enqueued_at_ms: job.enqueued_at_ms,
                traceparent: job.trace.get(field::TRACEPARENT).map(str::to_owned),
                started_ms: crate::clock::now_ms(),
                span_context: span.context().span().span_context().clone(),
                context: context.clone(),
            });
        }
        shared.control.started(id, &context);
        // Transitions before this attempt: promoted from the delayed set, waited while the queue was paused.
        let promoted = delivery.field(field::PROMOTED_AT).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        if let Some(at) = promoted {
            spans::promoted(&span, at);
        }
        if let Some(paused_ms) = shared.control.paused_while_waiting(promoted.unwrap_or(job.enqueued_at_ms)) {
            spans::queue_paused(&span, paused_ms);
        }
    }
    let outcome = match decoded {
        Err(e) => Outcome::Dead(DeadReason::Undecodable, e.to_string()),
        Ok(_) if delivery.delivery_count > shared.config.max_deliveries => {
            Outcome::Poison { deliveries: delivery.delivery_count }
        }
        // A job whose deadline passed before this attempt could start never runs.
        Ok(job) if job.deadline_ms().is_some_and(|deadline| crate::clock::now_ms() >= deadline) => {
            let deadline = job.deadline_ms().unwrap_or_default();
            span.add_event("expired", vec![opentelemetry::KeyValue::new("jobstream.job.deadline_ms", deadline as i64)]);
            Outcome::Dead(
                DeadReason::Expired,
                format!("deadline {deadline} (unix ms) passed before attempt {} started", job.attempt),
            )
        }
        // Cancelled while it waited to be taken over, or between the cancel and its delivery.
        Ok(_) if job_id.as_deref().is_some_and(|id| shared.control.is_cancelled(id)) => {
            Outcome::Cancelled { started: false }
        }
        Ok(mut job) => {
            job.source = Some(shared.keys.queue().clone());
            // Awaited in place, as is the settling below: both keep their rare Redis round trips boxed, so they
            // are under a kilobyte each and the task spawned per job ~3 KB (9.5 KB when those round trips were
            // inline: the copy of the task into its cell, and of each into a box, was most of the `memmove`
            // that took 9 % of the consumer's CPU).
            run_handler(shared, job, &span, mark.as_ref()).await
        }
    };
    if let Some(id) = &job_id {
        shared.control.finished(id);
    }
    settle::settle(shared, &delivery, outcome, &span, acks, mark, tracked).await;
    shared.in_flight.remove(&delivery.message_id);
    in_flight.dec();
    shared.stats.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn run_handler(shared: &Shared, job: Job, span: &tracing::Span, mark: Option<&Mark>) -> Outcome {
    let (kind, attempt) = (job.kind.clone(), job.attempt);
    if let Some(mark) = mark.filter(|_| attempt == 1) {
        shared.probes.started(mark);
    }
    let wait = Duration::from_millis(crate::clock::now_ms().saturating_sub(job.enqueued_at_ms));
    let started = Instant::now();
    let timeout = shared.config.timeouts.resolve(job.timeout(), kind.as_str());
    let context = job.context.0.clone();
    let future = match shared.handlers.dispatch(job) {
        Some(future) => future,
        None => {
            let mut error = format!("no handler for kind {:?}", kind.as_str());
            // A mixed group: name who does handle it, so the misrouting is plain in the dead letter.
            // Boxed in a statement of its own: this rare round trip's future would otherwise be part of every
            // attempt's task (see `settle`'s moves).
            let looking = Box::pin(crate::kinds::handled(&shared.pool, &shared.keys));
            if let Ok(handled) = looking.await {
                if let Some(other) = handled.get(kind.as_str()).filter(|h| h.consumer != shared.config.consumer) {
                    error.push_str(&format!(
                        "; consumer {} ({}) of this queue handles it: every worker of a group must handle every kind \
                         it may read, so give kind {:?} its own queue",
                        other.consumer,
                        other.language,
                        kind.as_str()
                    ));
                }
            }
            return Outcome::Dead(DeadReason::UnknownKind, error);
        }
    };
    // A panicking handler fails its job instead of the worker; caught in place, which costs less than a task.
    let guarded = AssertUnwindSafe(future.instrument(span.clone())).catch_unwind();
    // A cancel of the job cancels the token: the handler's future is dropped (`None`).
    let token = context.token.clone();
    let cancellable = async {
        tokio::select! {
            biased;
            result = guarded => Some(result),
            () = token.cancelled() => None,
        }
    };
    let result = match timeout {
        None => cancellable.await,
        Some(timeout) => {
            span.record("jobstream.job.timeout_ms", spans::int(timeout.as_millis()));
            match tokio::time::timeout(timeout, cancellable).await {
                Ok(result) => result,
                Err(_) => {
                    // Signal the handler's own work first, then drop its future (the timeout did).
                    context.token.cancel();
                    let ms = timeout.as_millis() as i64;
                    span.add_event("timed_out", vec![opentelemetry::KeyValue::new("jobstream.job.timeout_ms", ms)]);
                    Some(Ok(Err(JobFailure::new(
                        "timeout",
                        format!("the handler ran past its timeout of {timeout:?}"),
                    ))))
                }
            }
        }
    };
    // Every registered kind has its handles, and only a registered kind's job gets this far.
    if let Some(hot) = shared.hot.kinds.get(kind.as_str()) {
        hot.processing.observe(started.elapsed().as_secs_f64());
        hot.queue_wait.observe(wait.as_secs_f64());
    }
    let outcome = match result {
        Some(Ok(Ok(()))) => Outcome::Succeeded,
        // Cancelled: the future was dropped, or the handler saw the token and returned its own error first.
        _ if context.is_cancel_requested() => Outcome::Cancelled { started: true },
        None => Outcome::Cancelled { started: true },
        Some(Ok(Err(failure))) => Outcome::Failed { failure, kind: kind.as_str().to_owned(), attempt },
        Some(Err(panic)) => {
            // The panic hook (installed by `telemetry::init`) already logged it, in this span, as one line; the
            // settle line that follows carries the message too.
            let message = format!("handler panicked: {}", crate::handler::panic_message(&*panic));
            Outcome::Failed { failure: JobFailure::new("panic", message), kind: kind.as_str().to_owned(), attempt }
        }
    };
    let error_type = match &outcome {
        Outcome::Failed { failure, .. } => Some(failure.error_type.as_str()),
        Outcome::Cancelled { .. } => Some("cancelled"),
        _ => None,
    };
    shared.messaging.processed(started.elapsed(), error_type);
    outcome
}

/// The trace fields of an entry that did not decode, so its `process` span still joins the producer's trace.
fn raw_trace_headers(delivery: &Delivery) -> TraceHeaders {
    TraceHeaders::from_pairs(
        delivery.fields.iter().filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))),
    )
}
