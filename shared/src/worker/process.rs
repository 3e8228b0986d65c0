//! One delivery, start to finish: decode it, open the `process` span that continues the entry's trace, run
//! the handler inside it, and settle the outcome (acknowledge, leave pending, or dead-letter).

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::KeyValue;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::acker::AckSender;
use super::{Shared, TraceMode, WorkerStats};
use std::time::{Duration, Instant};

use crate::handler::JobFailure;
use crate::job::{fields_from_raw, Job};
use crate::loadprobe::Mark;
use crate::metrics::DeadLabels;
use crate::propagation::{self, ContextStatus, TraceHeaders};
use crate::semconv;
use crate::stream::{self, DeadLetter, DeadReason, Delivery};

/// What became of one attempt.
enum Outcome {
    Succeeded,
    /// The handler failed; the job (of this kind, on this attempt) may run again.
    Failed {
        failure: JobFailure,
        kind: String,
        attempt: u32,
    },
    Dead(DeadReason, String),
}

pub(super) async fn run(shared: &Shared, delivery: Delivery, acks: &AckSender) {
    let decoded = fields_from_raw(&delivery.fields).and_then(|fields| Job::from_fields(fields, &shared.config.limits));
    let span = process_span(shared, &delivery, decoded.as_ref().ok());
    let mark = decoded.as_ref().ok().and_then(|job| shared.probes.mark(job));
    let trace = match &decoded {
        Ok(job) => job.trace.clone(),
        Err(_) => raw_trace_headers(&delivery),
    };
    let (parent, status) = propagation::extract(&trace);
    span.record(semconv::TRACE_CONTEXT, status.label());
    propagation::record_truncation(&span, &trace);
    match status {
        ContextStatus::Continued => match shared.config.trace_mode {
            TraceMode::Parent => {
                let _ = span.set_parent(parent);
            }
            TraceMode::Link => span.add_link(parent.span().span_context().clone()),
        },
        ContextStatus::Invalid(ref e) => {
            span.record(semconv::TRACE_CONTEXT_ERROR, e.to_string());
            tracing::warn!(parent: &span, message_id = %delivery.message_id, error = %e, "trace context not continued; new root trace");
        }
        ContextStatus::Missing => {}
    }

    shared.stats.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let in_flight = &shared.hot.in_flight;
    in_flight.inc();
    shared.in_flight.insert(&delivery.message_id);
    let outcome = match decoded {
        Err(e) => Outcome::Dead(DeadReason::Undecodable, e.to_string()),
        Ok(_) if delivery.delivery_count > shared.config.max_deliveries => Outcome::Dead(
            DeadReason::Poison,
            format!(
                "delivered {} times without an outcome (limit {}); it may crash its workers",
                delivery.delivery_count, shared.config.max_deliveries
            ),
        ),
        Ok(mut job) => {
            job.source = Some(shared.keys.queue().clone());
            run_handler(shared, job, &span, mark.as_ref()).await
        }
    };
    settle(shared, &delivery, outcome, &span, acks, mark).await;
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
    let future = match shared.handlers.dispatch(job) {
        Some(future) => future,
        None => return Outcome::Dead(DeadReason::UnknownKind, format!("no handler for kind {:?}", kind.as_str())),
    };
    // A panicking handler fails its job instead of the worker; caught in place, which costs less than a task.
    let result = AssertUnwindSafe(future.instrument(span.clone())).catch_unwind().await;
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

async fn settle(
    shared: &Shared,
    delivery: &Delivery,
    outcome: Outcome,
    span: &tracing::Span,
    acks: &AckSender,
    mark: Option<Mark>,
) {
    let stats = &shared.stats;
    match outcome {
        Outcome::Succeeded => {
            WorkerStats::add(&stats.succeeded, 1);
            // Only a registered kind's handler can succeed, so its handles exist.
            if let Some(hot) = shared.hot.kinds.get(kind_of(shared, delivery)) {
                hot.succeeded.inc();
            }
            span.add_event("settle", vec![KeyValue::new(semconv::SETTLE_OUTCOME, "ack")]);
            if !acks.send(delivery.message_id.clone(), mark) {
                tracing::warn!(parent: span, message_id = %delivery.message_id, "acker stopped; job stays pending");
            }
        }
        Outcome::Failed { failure, kind, attempt } => {
            WorkerStats::add(&stats.failed, 1);
            mark_error(span, &failure.error_type, &failure.message);
            let max_attempts = shared.config.retry.max_attempts_for(&kind);
            let dead = if failure.permanent {
                Some(DeadReason::Permanent)
            } else if attempt >= max_attempts {
                Some(DeadReason::MaxAttempts)
            } else {
                None
            };
            match dead {
                Some(reason) => {
                    dead_letter(
                        shared,
                        delivery,
                        reason,
                        &format!("attempt {attempt} of {max_attempts}: {failure}"),
                        span,
                    )
                    .await
                }
                None => schedule_retry(shared, delivery, attempt, &failure, span).await,
            }
        }
        Outcome::Dead(reason, error) => {
            mark_error(span, reason.as_str(), &error);
            dead_letter(shared, delivery, reason, &error, span).await;
        }
    }
}

/// Runs one settle move, trying again twice over about a quarter second when Redis refuses it (a dropped
/// connection, a moment at maxmemory). Every move is all or nothing, so an error always means nothing was
/// written and the entry is still pending.
async fn settle_move<F, Fut>(shared: &Shared, mut attempt_move: F) -> Result<stream::Settled, String>
where
    F: FnMut(crate::connection::Connection) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<stream::Settled>>,
{
    let mut last_error = String::new();
    for pause_ms in [0, 50, 200] {
        if pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        match shared.pool.get().await {
            Ok(conn) => match attempt_move(conn).await {
                Ok(settled) => return Ok(settled),
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(last_error)
}

/// What a move that did not happen means for the entry, for the log: the truth about where the job is.
fn not_moved(shared: &Shared, span: &tracing::Span, delivery: &Delivery, result: Result<stream::Settled, String>) {
    match result {
        Ok(stream::Settled::Moved) => {}
        Ok(stream::Settled::NotOurs) => tracing::warn!(
            parent: span,
            message_id = %delivery.message_id,
            consumer = %shared.config.consumer,
            "the entry is no longer pending for this consumer (taken over while this consumer was paused, or already settled); its new owner settles it, nothing was written"
        ),
        Err(error) => tracing::error!(
            parent: span,
            message_id = %delivery.message_id,
            consumer = %shared.config.consumer,
            %error,
            visibility_timeout = ?shared.config.visibility_timeout,
            "settling failed and nothing was written: the entry stays pending for this consumer and is delivered again after the visibility timeout"
        ),
    }
}

async fn dead_letter(shared: &Shared, delivery: &Delivery, reason: DeadReason, error: &str, span: &tracing::Span) {
    let letter =
        DeadLetter { reason, error, consumer: &shared.config.consumer, dead_maxlen: shared.config.dead_maxlen };
    let moved = settle_move(shared, |mut conn| {
        let letter = &letter;
        async move { stream::dead_letter(&mut conn, &shared.keys, &shared.config.group, delivery, letter).await }
    })
    .await;
    if let Ok(stream::Settled::Moved) = moved {
        WorkerStats::add(&shared.stats.dead_lettered, 1);
        let queue = shared.keys.queue().to_string();
        shared.metrics.settled(&queue, kind_of(shared, delivery), "dead");
        shared.metrics.dead_letters.get_or_create(&DeadLabels { queue, reason: reason.as_str().to_owned() }).inc();
        span.add_event("settle", vec![KeyValue::new(semconv::SETTLE_OUTCOME, "dead")]);
        tracing::warn!(parent: span, message_id = %delivery.message_id, reason = reason.as_str(), %error, "job dead-lettered");
    }
    not_moved(shared, span, delivery, moved);
}

async fn schedule_retry(
    shared: &Shared,
    delivery: &Delivery,
    attempt: u32,
    failure: &JobFailure,
    span: &tracing::Span,
) {
    let delay = shared.config.retry.delay_after(attempt);
    let due = crate::clock::now_ms() + delay.as_millis() as u64;
    let next_attempt = (attempt + 1).to_string();
    // The entry decoded as a job, so every name and value is UTF-8.
    let mut fields: Vec<(&str, &str)> = delivery
        .fields
        .iter()
        .filter(|(name, _)| name.as_slice() != crate::job::field::ATTEMPT.as_bytes())
        .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, std::str::from_utf8(value).ok()?)))
        .collect();
    fields.push((crate::job::field::ATTEMPT, &next_attempt));
    fields.sort_unstable();
    let scheduled = settle_move(shared, |mut conn| {
        let fields = &fields;
        async move {
            let config = &shared.config;
            stream::schedule_retry(
                &mut conn,
                &shared.keys,
                &config.group,
                &config.consumer,
                &delivery.message_id,
                due,
                fields,
            )
            .await
        }
    })
    .await;
    if let Ok(stream::Settled::Moved) = scheduled {
        WorkerStats::add(&shared.stats.retried, 1);
        shared.metrics.settled(shared.keys.queue().as_str(), kind_of(shared, delivery), "retried");
        span.add_event(
            "settle",
            vec![
                KeyValue::new(semconv::SETTLE_OUTCOME, "retry"),
                KeyValue::new(semconv::RETRY_DELAY_MS, delay.as_millis() as i64),
                KeyValue::new(semconv::RETRY_NEXT_ATTEMPT, i64::from(attempt) + 1),
            ],
        );
        tracing::info!(parent: span, message_id = %delivery.message_id, error = %failure, ?delay, "job failed; retry scheduled");
    }
    not_moved(shared, span, delivery, scheduled);
}

/// The entry's kind for metric labels when a handler knows it, else `unknown`, so that garbage on the stream
/// cannot blow up the number of label values.
fn kind_of<'a>(shared: &Shared, delivery: &'a Delivery) -> &'a str {
    delivery
        .field(crate::job::field::KIND)
        .and_then(|kind| std::str::from_utf8(kind).ok())
        .filter(|k| shared.handlers.knows(k))
        .unwrap_or("unknown")
}

fn mark_error(span: &tracing::Span, error_type: &str, message: &str) {
    span.record(semconv::ERROR_TYPE, error_type);
    span.set_status(Status::error(message.to_owned()));
}

/// The trace fields of an entry that did not decode, so its `process` span still joins the producer's trace.
fn raw_trace_headers(delivery: &Delivery) -> TraceHeaders {
    TraceHeaders::from_pairs(
        delivery.fields.iter().filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))),
    )
}

fn process_span(shared: &Shared, delivery: &Delivery, job: Option<&Job>) -> tracing::Span {
    // Values are recorded at creation (an absent `Option` records nothing): each later `record` costs a
    // lookup in the subscriber, per job.
    let job_id = job.map(|j| j.id.to_string());
    tracing::info_span!(
        "process",
        otel.name = shared.process_span_name.as_str(),
        otel.kind = "consumer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = shared.keys.queue().as_str(),
        messaging.message.id = delivery.message_id.as_str(),
        messaging.consumer.group.name = shared.config.group.as_str(),
        messaging.client.id = shared.config.consumer.as_str(),
        jobstream.delivery.count = delivery.delivery_count,
        jobstream.reclaimed_from = delivery.reclaimed_from.as_ref().map(|(owner, _)| owner.as_str()),
        jobstream.reclaimed_idle_ms = delivery.reclaimed_from.as_ref().map(|(_, idle_ms)| *idle_ms),
        jobstream.job.id = job_id.as_deref(),
        jobstream.job.kind = job.map(|j| j.kind.as_str()),
        jobstream.job.attempt = job.map(|j| j.attempt),
        jobstream.queue.wait_ms = job.map(|j| crate::clock::now_ms().saturating_sub(j.enqueued_at_ms)),
        jobstream.trace.context = Empty,
        jobstream.trace.context_error = Empty,
        error.type = Empty,
    )
}
