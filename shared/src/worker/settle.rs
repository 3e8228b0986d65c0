//! Settles an attempt's outcome: [`decide`] says what becomes of the entry (acknowledged, scheduled to run
//! again, or dead-lettered) without touching Redis; [`settle`] carries it out and says truthfully where the
//! job is.
//!
//! A retry and a dead letter are each one all-or-nothing move (a Lua script that also acknowledges the
//! entry), written only while the entry is still pending for this consumer: a move that did not happen leaves
//! the entry pending, and the log says so instead of claiming an outcome.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::acker::{Ack, AckSender, RecordUpdate};
use super::attempt::{Outcome, Tracked};
use super::{Shared, WorkerStats};
use crate::jobs::{field as record, Attempt, Finished, JobState};
use crate::loadprobe::Mark;
use crate::messaging_metrics::Settlement;
use crate::metrics::DeadLabels;
use crate::retry::RetryPolicy;
use crate::stream::{self, DeadLetter, DeadReason, Delivery, Settled};
use crate::trace::spans;

/// What becomes of an entry after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Acknowledge it: the job is done.
    Ack,
    /// Schedule attempt `next_attempt` to run after `delay`, and acknowledge this one.
    Retry { delay: Duration, next_attempt: u32 },
    /// Move it to the dead stream, with why and the last error, and acknowledge it.
    Dead(DeadReason, String),
}

impl Decision {
    /// The `settle` event that says it on the `process` span.
    fn event(&self) -> spans::Settled {
        match *self {
            Self::Ack => spans::Settled::Ack,
            Self::Retry { delay, next_attempt } => spans::Settled::Retry { delay, next_attempt },
            Self::Dead(..) => spans::Settled::Dead,
        }
    }
}

/// Decides what becomes of the entry after `outcome`: a failure is retried while the job's kind has attempts
/// left under `retry`, unless it is permanent; an entry never run is dead (a poison entry is one delivered more
/// than `max_deliveries` times).
pub(super) fn decide(outcome: &Outcome, retry: &RetryPolicy, max_deliveries: u64) -> Decision {
    match outcome {
        Outcome::Succeeded | Outcome::Cancelled { .. } => Decision::Ack,
        Outcome::Failed { failure, kind, attempt } => {
            let max_attempts = retry.max_attempts_for(kind);
            let reason = if failure.permanent {
                DeadReason::Permanent
            } else if *attempt >= max_attempts {
                DeadReason::MaxAttempts
            } else {
                return Decision::Retry { delay: retry.delay_after(*attempt), next_attempt: attempt + 1 };
            };
            Decision::Dead(reason, format!("attempt {attempt} of {max_attempts}: {failure}"))
        }
        Outcome::Poison { deliveries } => Decision::Dead(
            DeadReason::Poison,
            format!(
                "delivered {deliveries} times without an outcome (limit {max_deliveries}); it may crash its workers"
            ),
        ),
        Outcome::Dead(reason, error) => Decision::Dead(*reason, error.clone()),
    }
}

/// Settles `outcome`: records it on `span` and in the counters, then acknowledges the entry (through the
/// batching acker), schedules its retry or dead-letters it.
pub(super) async fn settle(
    shared: &Shared,
    delivery: &Delivery,
    outcome: Outcome,
    span: &tracing::Span,
    acks: &AckSender,
    mark: Option<Mark>,
    tracked: Option<Tracked>,
) {
    let decision = decide(&outcome, &shared.config.retry, shared.config.max_deliveries);
    // The `process` span's context, looked up once per attempt: a tracked attempt has it already.
    let process = tracked.as_ref().map(|tracked| tracked.span_context.clone());
    let (finished, hash) = match tracked.map(|tracked| record_update(shared, &tracked, &outcome, &decision)) {
        Some(Record::Finished(update)) => (Some(update), None),
        Some(Record::Hash(update)) => (None, Some(update)),
        None => (None, None),
    };
    match (&outcome, &decision) {
        (Outcome::Succeeded, _) => {
            WorkerStats::add(&shared.stats.succeeded, 1);
            // Only a registered kind's handler can succeed, so its handles exist.
            if let Some(hot) = shared.hot.kinds.get(kind_of(shared, delivery)) {
                hot.succeeded.inc();
            }
        }
        (Outcome::Failed { failure, .. }, _) => {
            WorkerStats::add(&shared.stats.failed, 1);
            spans::record_error(span, &failure.error_type, &failure.message);
            spans::exception(span, spans::Operation::Process, &failure.error_type, &failure.message);
        }
        (Outcome::Cancelled { started }, _) => {
            WorkerStats::add(&shared.stats.cancelled, 1);
            spans::cancelled(span, *started);
            shared.metrics.settled(shared.keys.queue().as_str(), kind_of(shared, delivery), "cancelled");
            tracing::info!(parent: span, message_id = %delivery.message_id, started, "job cancelled");
        }
        // Not run and never will be (not a job, no handler for its kind, delivered too often, past its
        // deadline): as failed as a handler's error, with the same exception event.
        (_, Decision::Dead(reason, error)) => {
            spans::record_error(span, reason.as_str(), error);
            spans::exception(span, spans::Operation::Process, reason.as_str(), error);
        }
        (_, _) => {}
    }
    let moved = match &decision {
        Decision::Ack => {
            spans::settle_event(span, decision.event());
            let process = process.unwrap_or_else(|| span.context().span().span_context().clone());
            if !acks.send(Ack { id: delivery.message_id.clone(), mark, record: finished, process }) {
                tracing::warn!(parent: span, message_id = %delivery.message_id, "acker stopped; job stays pending");
            }
            return;
        }
        Decision::Retry { .. } | Decision::Dead(..) => {
            let how = if let Decision::Retry { .. } = decision { Settlement::Retry } else { Settlement::DeadLetter };
            let settle_span = spans::settle_move(span, &shared.endpoint, how, &delivery.message_id);
            let started = Instant::now();
            // The moves are boxed, each in a statement of its own: a Redis round trip's future is kilobytes, and
            // held inline (or as a temporary of the statement that awaits it) it would be part of every attempt's
            // task, copied whole for each job that is simply acknowledged.
            let moving: BoxFuture<'_, Result<Settled, String>> = match &decision {
                Decision::Retry { delay, next_attempt } => {
                    schedule_retry(shared, delivery, *delay, *next_attempt, hash.as_ref()).boxed()
                }
                _ => {
                    let Decision::Dead(reason, error) = &decision else { unreachable!("matched above") };
                    dead_letter(shared, delivery, *reason, error, hash.as_ref()).boxed()
                }
            };
            let moved = moving.instrument(settle_span.clone()).await;
            let failed = match &moved {
                Ok(Settled::Moved) => None,
                Ok(Settled::NotOurs) => Some(("not_pending", "the entry is no longer pending for this consumer")),
                Err(error) => Some(("redis_error", error.as_str())),
            };
            if let Some((error_type, message)) = failed {
                spans::record_error(&settle_span, error_type, message);
                spans::exception(&settle_span, spans::Operation::Settle, error_type, message);
            }
            shared.messaging.settled(how, started.elapsed(), failed.map(|(t, _)| t));
            moved
        }
    };
    match moved {
        Ok(Settled::Moved) => moved_to(shared, delivery, span, &decision, &outcome),
        Ok(Settled::NotOurs) => tracing::warn!(
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

/// Records a move that happened: the counters, the metric, the `settle` event and the log line saying where
/// the job went.
fn moved_to(shared: &Shared, delivery: &Delivery, span: &tracing::Span, decision: &Decision, outcome: &Outcome) {
    let queue = shared.keys.queue().as_str();
    let kind = kind_of(shared, delivery);
    spans::settle_event(span, decision.event());
    match decision {
        Decision::Retry { delay, .. } => {
            WorkerStats::add(&shared.stats.retried, 1);
            shared.metrics.settled(queue, kind, "retried");
            if let Outcome::Failed { failure, .. } = outcome {
                tracing::info!(parent: span, message_id = %delivery.message_id, error = %failure, ?delay, "job failed; retry scheduled");
            }
        }
        Decision::Dead(reason, error) => {
            WorkerStats::add(&shared.stats.dead_lettered, 1);
            shared.metrics.settled(queue, kind, "dead");
            let labels = DeadLabels { queue: queue.to_owned(), reason: reason.as_str().to_owned() };
            shared.metrics.dead_letters.get_or_create(&labels).inc();
            tracing::warn!(parent: span, message_id = %delivery.message_id, reason = reason.as_str(), %error, "job dead-lettered");
        }
        Decision::Ack => {}
    }
}

/// What a job's records get after `outcome` and `decision`: the final record of a done or cancelled job (sent
/// with the acknowledgement), or the per-job hash's update of a retry or a dead letter (written by the settle
/// script).
enum Record {
    Finished(RecordUpdate),
    Hash(HashUpdate),
}

/// A per-job hash's new fields, and its time to live (0: none).
struct HashUpdate {
    key: String,
    fields: Vec<(Cow<'static, str>, String)>,
    ttl_ms: u64,
}

fn record_update(shared: &Shared, tracked: &Tracked, outcome: &Outcome, decision: &Decision) -> Record {
    let now = crate::clock::now_ms();
    let ran = match outcome {
        Outcome::Succeeded => Some(("done".to_owned(), None)),
        Outcome::Failed { failure, .. } => {
            let class = if failure.error_type == "timeout" { "timeout" } else { "failed" };
            Some((class.to_owned(), Some(failure.to_string())))
        }
        Outcome::Cancelled { started: true } => Some(("cancelled".to_owned(), None)),
        Outcome::Cancelled { started: false } | Outcome::Poison { .. } | Outcome::Dead(..) => None,
    };
    let attempt = ran.map(|(outcome, error)| Attempt {
        n: tracked.attempt,
        consumer: shared.config.consumer.clone(),
        started_at: tracked.started_ms,
        ended_at: now,
        outcome,
        error,
        trace_id: tracked.span_context.trace_id().to_string(),
        span_id: tracked.span_context.span_id().to_string(),
    });
    if let Decision::Ack = decision {
        let state = if matches!(outcome, Outcome::Cancelled { .. }) { JobState::Cancelled } else { JobState::Done };
        let result = tracked.context.result.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let finished = Finished {
            state,
            kind: tracked.kind.clone(),
            enqueued_at: tracked.enqueued_at_ms,
            traceparent: tracked.traceparent.clone(),
            msg: tracked.message_id.clone(),
            finished_at: now,
            attempt,
            result: result
                .filter(|_| state == JobState::Done)
                .and_then(|r| serde_json::value::RawValue::from_string(r).ok()),
        };
        let hour = now / crate::jobs::HOUR_MS;
        return Record::Finished(RecordUpdate {
            key: shared.keys.finished(hour),
            job_id: tracked.job_id.clone(),
            json: serde_json::to_string(&finished).expect("a final record always serializes"),
            // The hash lives the retention after its hour ends.
            expire_at_ms: (hour + 1) * crate::jobs::HOUR_MS + retention_ms(shared),
        });
    }
    let mut fields: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(12);
    let (state, ttl_ms) = match decision {
        Decision::Dead(DeadReason::Expired, _) => (JobState::Expired, retention_ms(shared)),
        Decision::Dead(..) => (JobState::Dead, retention_ms(shared)),
        _ => (JobState::Delayed, 0),
    };
    fields.push((Cow::Borrowed(record::STATE), state.as_str().to_owned()));
    fields.push((Cow::Borrowed(record::KIND), tracked.kind.clone()));
    fields.push((Cow::Borrowed(record::ENQUEUED_AT), tracked.enqueued_at_ms.to_string()));
    if let Some(traceparent) = &tracked.traceparent {
        fields.push((Cow::Borrowed(record::TRACEPARENT), traceparent.clone()));
    }
    if let Some(attempt) = attempt {
        fields.push((Cow::Borrowed(record::ATTEMPTS), tracked.attempt.to_string()));
        let json = serde_json::to_string(&attempt).expect("an attempt always serializes");
        fields.push((attempt_field(tracked.attempt), json));
    }
    match decision {
        Decision::Retry { delay, .. } => {
            fields.push((Cow::Borrowed(record::RUN_AT), (now + delay.as_millis() as u64).to_string()))
        }
        Decision::Dead(reason, error) => {
            fields.push((Cow::Borrowed(record::REASON), reason.as_str().to_owned()));
            fields.push((Cow::Borrowed(record::ERROR), error.clone()));
            fields.push((Cow::Borrowed(record::FINISHED_AT), now.to_string()));
        }
        Decision::Ack => {}
    }
    Record::Hash(HashUpdate { key: tracked.key.clone(), fields, ttl_ms })
}

fn retention_ms(shared: &Shared) -> u64 {
    (shared.config.job_retention.as_millis() as u64).max(1)
}

/// The record field of attempt `n`, `a:<n>`: the first ten names made once, later ones per call.
fn attempt_field(n: u32) -> Cow<'static, str> {
    const NAMES: [&str; 10] = ["a:0", "a:1", "a:2", "a:3", "a:4", "a:5", "a:6", "a:7", "a:8", "a:9"];
    match NAMES.get(n as usize) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("{}{n}", record::ATTEMPT_PREFIX)),
    }
}

/// A record update as the settle script takes it: its field/value pairs as one JSON array of strings.
fn record_json(record: Option<&HashUpdate>) -> (String, u64) {
    match record {
        None => (String::new(), 0),
        Some(record) => {
            let pairs: Vec<&str> = record.fields.iter().flat_map(|(k, v)| [k.as_ref(), v.as_str()]).collect();
            (serde_json::to_string(&pairs).expect("strings always serialize"), record.ttl_ms)
        }
    }
}

/// Puts the job's next attempt in the delayed set, due after `delay`, and acknowledges this one.
async fn schedule_retry(
    shared: &Shared,
    delivery: &Delivery,
    delay: Duration,
    next_attempt: u32,
    record: Option<&HashUpdate>,
) -> Result<Settled, String> {
    let due = crate::clock::now_ms() + delay.as_millis() as u64;
    let next_attempt = next_attempt.to_string();
    let record_key = record.map(|r| r.key.as_str());
    let record = record_json(record);
    // The entry decoded as a job, so every name and value is UTF-8; `promoted_at` is set again when it is.
    let mut fields: Vec<(&str, &str)> = delivery
        .fields
        .iter()
        .filter(|(name, _)| {
            name.as_slice() != crate::job::field::ATTEMPT.as_bytes()
                && name.as_slice() != crate::job::field::PROMOTED_AT.as_bytes()
        })
        .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, std::str::from_utf8(value).ok()?)))
        .collect();
    fields.push((crate::job::field::ATTEMPT, &next_attempt));
    fields.sort_unstable();
    let config = &shared.config;
    settle_move(shared, |mut conn| {
        let (fields, record) = (&fields, record_key.map(|key| (key, record.0.as_str(), record.1)));
        async move {
            stream::schedule_retry(
                &mut conn,
                &shared.keys,
                &config.group,
                &config.consumer,
                &delivery.message_id,
                due,
                fields,
                record,
            )
            .await
        }
    })
    .await
}

/// Moves the entry to the dead stream with `reason` and `error`, and acknowledges it.
async fn dead_letter(
    shared: &Shared,
    delivery: &Delivery,
    reason: DeadReason,
    error: &str,
    record: Option<&HashUpdate>,
) -> Result<Settled, String> {
    let config = &shared.config;
    let (json, ttl) = record_json(record);
    let record = record.map(|r| (r.key.as_str(), json.as_str(), ttl));
    let letter = DeadLetter { reason, error, consumer: &config.consumer, dead_maxlen: config.dead_maxlen, record };
    settle_move(shared, |mut conn| {
        let letter = &letter;
        async move { stream::dead_letter(&mut conn, &shared.keys, &config.group, delivery, letter).await }
    })
    .await
}

/// Runs one settle move, trying again twice over about a quarter second when Redis refuses it (a dropped
/// connection, a moment at maxmemory). Every move is all or nothing, so an error always means nothing was
/// written and the entry is still pending.
async fn settle_move<F, Fut>(shared: &Shared, mut attempt_move: F) -> Result<Settled, String>
where
    F: FnMut(crate::connection::Connection) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<Settled>>,
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

/// The entry's kind for metric labels when a handler knows it, else `unknown`, so that garbage on the stream
/// cannot blow up the number of label values.
fn kind_of<'a>(shared: &Shared, delivery: &'a Delivery) -> &'a str {
    delivery
        .field(crate::job::field::KIND)
        .and_then(|kind| std::str::from_utf8(kind).ok())
        .filter(|k| shared.handlers.knows(k))
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::JobFailure;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..Default::default()
        }
    }

    fn failed(failure: JobFailure, attempt: u32) -> Outcome {
        Outcome::Failed { failure, kind: "email".into(), attempt }
    }

    #[test]
    fn a_success_is_acknowledged() {
        assert_eq!(decide(&Outcome::Succeeded, &policy(), 5), Decision::Ack);
    }

    #[test]
    fn a_failure_with_attempts_left_runs_again_after_the_back_off() {
        for (attempt, full_ms) in [(1, 100), (2, 200)] {
            match decide(&failed(JobFailure::new("timeout", "slow"), attempt), &policy(), 5) {
                Decision::Retry { delay, next_attempt } => {
                    assert_eq!(next_attempt, attempt + 1);
                    let ms = delay.as_millis() as u64;
                    assert!((full_ms / 2..=full_ms).contains(&ms), "attempt {attempt}: {ms} ms");
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_last_attempt_dies_with_its_error() {
        assert_eq!(
            decide(&failed(JobFailure::new("timeout", "slow"), 3), &policy(), 5),
            Decision::Dead(DeadReason::MaxAttempts, "attempt 3 of 3: timeout: slow".into())
        );
    }

    #[test]
    fn a_permanent_failure_dies_at_once() {
        assert_eq!(
            decide(&failed(JobFailure::permanent("bad_payload", "not JSON"), 1), &policy(), 5),
            Decision::Dead(DeadReason::Permanent, "attempt 1 of 3: bad_payload: not JSON".into())
        );
    }

    #[test]
    fn a_kind_s_own_attempts_override_the_queue_s() {
        let mut policy = policy();
        policy.max_attempts_by_kind.insert("email".into(), 1);
        assert_eq!(
            decide(&failed(JobFailure::new("timeout", "slow"), 1), &policy, 5),
            Decision::Dead(DeadReason::MaxAttempts, "attempt 1 of 1: timeout: slow".into())
        );
    }

    #[test]
    fn an_entry_never_run_is_dead() {
        assert_eq!(
            decide(&Outcome::Poison { deliveries: 6 }, &policy(), 5),
            Decision::Dead(
                DeadReason::Poison,
                "delivered 6 times without an outcome (limit 5); it may crash its workers".into()
            )
        );
        let unknown = Outcome::Dead(DeadReason::UnknownKind, "no handler for kind \"x\"".into());
        assert_eq!(
            decide(&unknown, &policy(), 5),
            Decision::Dead(DeadReason::UnknownKind, "no handler for kind \"x\"".into())
        );
    }
}
