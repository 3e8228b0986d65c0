//! One delivery, start to finish: decode it, open the `process` span that continues the entry's trace, run
//! the handler inside it, and settle the outcome (acknowledge, leave pending, or dead-letter).

use opentelemetry::trace::Status;
use opentelemetry::KeyValue;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::acker::AckSender;
use super::{Shared, WorkerStats};
use crate::handler::JobFailure;
use crate::job::{fields_from_redis, Job};
use crate::propagation::{self, ContextStatus, TraceHeaders};
use crate::queue::{self, DeadLetter, DeadReason, Delivery};
use crate::semconv;

/// What became of one attempt.
enum Outcome {
    Succeeded,
    Failed(JobFailure),
    Dead(DeadReason, String),
}

pub(super) async fn run(shared: &Shared, delivery: Delivery, acks: &AckSender) {
    let decoded =
        fields_from_redis(delivery.fields.clone()).and_then(|fields| Job::from_fields(fields, &shared.config.limits));
    let span = process_span(shared, &delivery, decoded.as_ref().ok());
    let trace = match &decoded {
        Ok(job) => job.trace.clone(),
        Err(_) => raw_trace_headers(&delivery),
    };
    let (parent, status) = propagation::extract(&trace);
    span.record(semconv::TRACE_CONTEXT, status.label());
    match status {
        ContextStatus::Continued => {
            let _ = span.set_parent(parent);
        }
        ContextStatus::Invalid(ref e) => {
            span.record(semconv::TRACE_CONTEXT_ERROR, e.to_string());
            tracing::warn!(parent: &span, message_id = %delivery.message_id, error = %e, "trace context not continued; new root trace");
        }
        ContextStatus::Missing => {}
    }

    shared.stats.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outcome = match decoded {
        Err(e) => Outcome::Dead(DeadReason::Undecodable, e.to_string()),
        Ok(job) => run_handler(shared, job, &span).await,
    };
    shared.stats.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    settle(shared, &delivery, outcome, &span, acks).await;
}

async fn run_handler(shared: &Shared, job: Job, span: &tracing::Span) -> Outcome {
    let kind = job.kind.clone();
    let future = match shared.handlers.dispatch(job) {
        Some(future) => future,
        None => return Outcome::Dead(DeadReason::UnknownKind, format!("no handler for kind {:?}", kind.as_str())),
    };
    // Its own task, so that a panicking handler fails its job instead of the worker.
    match tokio::spawn(future.instrument(span.clone())).await {
        Ok(Ok(())) => Outcome::Succeeded,
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(join) => {
            let message = if join.is_panic() { "handler panicked" } else { "handler was cancelled" };
            tracing::error!(parent: span, kind = %kind, "{message}");
            Outcome::Failed(JobFailure::new("panic", message))
        }
    }
}

async fn settle(shared: &Shared, delivery: &Delivery, outcome: Outcome, span: &tracing::Span, acks: &AckSender) {
    let stats = &shared.stats;
    match outcome {
        Outcome::Succeeded => {
            WorkerStats::add(&stats.succeeded, 1);
            span.add_event("settle", vec![KeyValue::new(semconv::SETTLE_OUTCOME, "ack")]);
            if !acks.send(delivery.message_id.clone()) {
                tracing::warn!(parent: span, message_id = %delivery.message_id, "acker stopped; job stays pending");
            }
        }
        Outcome::Failed(failure) => {
            WorkerStats::add(&stats.failed, 1);
            mark_error(span, &failure.error_type, &failure.message);
            span.add_event("settle", vec![KeyValue::new(semconv::SETTLE_OUTCOME, "pending")]);
            tracing::warn!(parent: span, message_id = %delivery.message_id, error = %failure, "job failed; it stays pending");
        }
        Outcome::Dead(reason, error) => {
            mark_error(span, reason.as_str(), &error);
            let letter = DeadLetter {
                reason,
                error: &error,
                consumer: &shared.config.consumer,
                dead_maxlen: shared.config.dead_maxlen,
            };
            let moved = async {
                let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
                queue::dead_letter(&mut conn, &shared.keys, &shared.config.group, delivery, &letter)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match moved {
                Ok(true) => {
                    WorkerStats::add(&stats.dead_lettered, 1);
                    span.add_event("settle", vec![KeyValue::new(semconv::SETTLE_OUTCOME, "dead")]);
                    tracing::warn!(parent: span, message_id = %delivery.message_id, reason = reason.as_str(), %error, "job dead-lettered");
                }
                Ok(false) => {
                    tracing::info!(parent: span, message_id = %delivery.message_id, "entry was settled by another consumer");
                }
                Err(e) => {
                    tracing::error!(parent: span, message_id = %delivery.message_id, error = %e, "dead-lettering failed; entry stays pending");
                }
            }
        }
    }
}

fn mark_error(span: &tracing::Span, error_type: &str, message: &str) {
    span.record(semconv::ERROR_TYPE, error_type);
    span.set_status(Status::error(message.to_owned()));
}

/// The trace fields of an entry that did not decode, so its `process` span still joins the producer's trace.
fn raw_trace_headers(delivery: &Delivery) -> TraceHeaders {
    let texts: Vec<(String, String)> = delivery
        .fields
        .iter()
        .filter_map(|(k, v)| match v {
            redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(|s| (k.clone(), s.to_owned())),
            _ => None,
        })
        .collect();
    TraceHeaders::from_pairs(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn process_span(shared: &Shared, delivery: &Delivery, job: Option<&Job>) -> tracing::Span {
    let queue = shared.keys.queue().as_str();
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = semconv::MESSAGING_SYSTEM_REDIS,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.message.id = %delivery.message_id,
        messaging.consumer.group.name = %shared.config.group,
        messaging.client.id = %shared.config.consumer,
        jobstream.delivery.count = delivery.delivery_count,
        jobstream.job.id = Empty,
        jobstream.job.kind = Empty,
        jobstream.job.attempt = Empty,
        jobstream.queue.wait_ms = Empty,
        jobstream.trace.context = Empty,
        jobstream.trace.context_error = Empty,
        error.type = Empty,
    );
    if let Some(job) = job {
        span.record(semconv::JOB_ID, job.id.to_string());
        span.record(semconv::JOB_KIND, job.kind.as_str());
        span.record(semconv::JOB_ATTEMPT, job.attempt);
        span.record(semconv::QUEUE_WAIT_MS, crate::clock::now_ms().saturating_sub(job.enqueued_at_ms));
    }
    span
}
