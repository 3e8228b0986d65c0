//! One attempt at a delivery: decode it, open the `process` span that continues the entry's trace, run the
//! handler inside it (a panic caught and turned into a failure), and hand the outcome to [`super::settle`].

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::acker::AckSender;
use super::{settle, Shared, TraceMode};
use crate::handler::JobFailure;
use crate::job::{field, fields_from_raw, Job};
use crate::loadprobe::Mark;
use crate::stream::{DeadReason, Delivery};
use crate::trace::propagation::TraceHeaders;
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
}

/// Runs one attempt at `delivery` and settles its outcome; the entry counts as in flight (its claim renewed)
/// until it is settled.
pub(super) async fn run(shared: &Shared, delivery: Delivery, acks: &AckSender) {
    let decoded = fields_from_raw(&delivery.fields).and_then(|fields| Job::from_fields(fields, &shared.config.limits));
    let span = spans::process(shared.span_consumer(), &delivery, decoded.as_ref().ok());
    let mark = decoded.as_ref().ok().and_then(|job| shared.probes.mark(job));
    let trace = match &decoded {
        Ok(job) => job.trace.clone(),
        Err(_) => raw_trace_headers(&delivery),
    };
    // A job marked `trace_mode=link` (scheduled far ahead) is linked whatever the queue-wide mode.
    let mode = if delivery.field(field::TRACE_MODE) == Some(field::TRACE_MODE_LINK.as_bytes()) {
        TraceMode::Link
    } else {
        shared.config.trace_mode
    };
    spans::continue_trace(&span, &trace, mode, &delivery.message_id);

    shared.stats.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let in_flight = &shared.hot.in_flight;
    in_flight.inc();
    shared.in_flight.insert(&delivery.message_id);
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
        Ok(mut job) => {
            job.source = Some(shared.keys.queue().clone());
            run_handler(shared, job, &span, mark.as_ref()).await
        }
    };
    settle::settle(shared, &delivery, outcome, &span, acks, mark).await;
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
    let cancel = job.cancel.0.clone();
    let future = match shared.handlers.dispatch(job) {
        Some(future) => future,
        None => return Outcome::Dead(DeadReason::UnknownKind, format!("no handler for kind {:?}", kind.as_str())),
    };
    // A panicking handler fails its job instead of the worker; caught in place, which costs less than a task.
    let guarded = AssertUnwindSafe(future.instrument(span.clone())).catch_unwind();
    let result = match timeout {
        None => guarded.await,
        Some(timeout) => {
            span.record("jobstream.job.timeout_ms", timeout.as_millis() as u64);
            match tokio::time::timeout(timeout, guarded).await {
                Ok(result) => result,
                Err(_) => {
                    // Signal the handler's own work first, then drop its future (the timeout did).
                    cancel.cancel();
                    let ms = timeout.as_millis() as i64;
                    span.add_event("timed_out", vec![opentelemetry::KeyValue::new("jobstream.job.timeout_ms", ms)]);
                    Ok(Err(JobFailure::new("timeout", format!("the handler ran past its timeout of {timeout:?}"))))
                }
            }
        }
    };
    // Every registered kind has its handles, and only a registered kind's job gets this far.
    if let Some(hot) = shared.hot.kinds.get(kind.as_str()) {
        hot.processing.observe(started.elapsed().as_secs_f64());
        hot.queue_wait.observe(wait.as_secs_f64());
    }
    match result {
        Ok(Ok(())) => Outcome::Succeeded,
        Ok(Err(failure)) => Outcome::Failed { failure, kind: kind.as_str().to_owned(), attempt },
        Err(panic) => {
            // The panic hook (installed by `telemetry::init`) already logged it, in this span, as one line; the
            // settle line that follows carries the message too.
            let message = format!("handler panicked: {}", crate::handler::panic_message(&*panic));
            Outcome::Failed { failure: JobFailure::new("panic", message), kind: kind.as_str().to_owned(), attempt }
        }
    }
}

/// The trace fields of an entry that did not decode, so its `process` span still joins the producer's trace.
fn raw_trace_headers(delivery: &Delivery) -> TraceHeaders {
    TraceHeaders::from_pairs(
        delivery.fields.iter().filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))),
    )
}
