//! Enqueues the jobs of periodic schedules ([`crate::cron`]) as their ticks come due, one job per tick across
//! every consumer of the queue.
//!
//! Every worker process runs this duty once. Each round reads the schedules and their last ticks, and for each
//! running schedule whose latest due tick is newer than its last one, enqueues that tick through the
//! `cron_tick` script, which XADDs only if the tick is still newer: of all the consumers that race for a tick,
//! exactly one enqueues it. Before it makes the tick's `send` span a consumer sets a short-lived claim key
//! (`SET NX`), so that the others do not make a span for a job they will not enqueue; if that consumer dies,
//! the claim expires and another one enqueues the tick (the script, not the claim, keeps it to one job).
//! Rounds run every [`CHECK_EVERY`], or sooner when a tick is due sooner.

use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::backoff::Backoff;
use crate::connection::Pool;
use crate::cron::{self, Schedule};
use crate::job::Job;
use crate::keys::Keys;
use crate::trace::endpoint::Endpoint;
use crate::trace::{propagation, semconv, spans};

/// The longest pause between two rounds.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a consumer's claim on making a tick's span lasts at most: past it, another consumer enqueues the
/// tick. A quarter of the schedule's period when that is shorter, so that the claim of a consumer that died
/// holding it expires well before the next tick replaces this one.
const CLAIM_FOR: Duration = Duration::from_secs(3);

static CRON_TICK: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../lua/cron_tick.lua")));

/// What the scheduler needs: where the schedules and the jobs live, and who it is.
pub(super) struct Scheduler {
    pub(super) pool: Pool,
    /// Partition 0's keys: its `cron` hashes and its stream.
    pub(super) keys: Keys,
    /// This consumer's name, recorded on claims.
    pub(super) consumer: String,
}

/// Runs rounds until `stop`.
pub(super) async fn schedule(scheduler: Scheduler, stop: CancellationToken) {
    let mut backoff = Backoff::new(CHECK_EVERY, Duration::from_secs(10));
    let span_name = format!("send {}", scheduler.keys.queue());
    loop {
        let pause = match round(&scheduler, &span_name).await {
            Ok(next_due) => {
                backoff.reset();
                let until_due = next_due
                    .map_or(CHECK_EVERY, |due| Duration::from_millis(due.saturating_sub(crate::clock::now_ms())));
                until_due.min(CHECK_EVERY)
            }
            Err(error) => {
                if backoff.failures() == 0 {
                    tracing::warn!(%error, "running periodic schedules failed; retrying with back-off");
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Enqueues every due tick; returns the earliest next tick of the running schedules.
async fn round(scheduler: &Scheduler, span_name: &str) -> crate::Result<Option<u64>> {
    let now = crate::clock::now_ms();
    let mut next_due: Option<u64> = None;
    for stored in cron::load(&scheduler.pool, &scheduler.keys).await? {
        let schedule = match stored.schedule {
            Ok(schedule) => schedule,
            Err(error) => {
                tracing::warn!(schedule = %stored.name, %error, "schedule skipped: its spec cannot be read");
                continue;
            }
        };
        if schedule.paused {
            continue;
        }
        if let Some(next) = schedule.cadence.next_tick(now) {
            next_due = Some(next_due.map_or(next, |due| due.min(next)));
        }
        let Some(tick) = schedule.cadence.latest_tick(now) else { continue };
        if stored.last_tick_ms.is_some_and(|last| last >= tick) {
            continue;
        }
        let claim_ms = schedule.cadence.next_tick(tick).map_or(0, |next| (next - tick) / 4);
        let claim = Duration::from_millis(claim_ms.clamp(50, CLAIM_FOR.as_millis() as u64));
        enqueue_tick(scheduler, span_name, &schedule, &stored.spec, tick, claim).await?;
    }
    Ok(next_due)
}

/// Enqueues `schedule`'s job of `tick` unless another consumer does or did.
async fn enqueue_tick(
    scheduler: &Scheduler,
    span_name: &str,
    schedule: &Schedule,
    spec: &str,
    tick: u64,
    claim: Duration,
) -> crate::Result<()> {
    let keys = &scheduler.keys;
    let name = schedule.name.as_str();
    let mut conn = scheduler.pool.get().await?;
    let claimed: Option<String> = redis::cmd("SET")
        .arg(keys.cron_claim(name, tick))
        .arg(&scheduler.consumer)
        .arg("NX")
        .arg("PX")
        .arg(claim.as_millis() as u64)
        .query_async(&mut conn)
        .await?;
    if claimed.is_none() {
        return Ok(());
    }
    let mut job = Job::new(schedule.kind.clone(), schedule.payload.clone());
    job.extra.insert(cron::FIELD_CRON_NAME.to_owned(), name.to_owned());
    job.extra.insert(cron::FIELD_CRON_TICK.to_owned(), tick.to_string());
    let endpoint = Endpoint::producer(keys, scheduler.pool.server());
    let span = spans::send(span_name, &endpoint, &job);
    // A tick is the start of a trace, whatever span the worker happens to be in.
    let _ = span.set_parent(opentelemetry::Context::new());
    span.set_attribute(semconv::CRON_NAME, name.to_owned());
    span.set_attribute(semconv::CRON_TICK, tick as i64);
    let cx = span.context();
    job.trace = propagation::inject(&cx)?;
    let mut invocation = CRON_TICK.key(&keys.cron);
    invocation.key(&keys.cron_last).key(&keys.stream).key(keys.job(&job.id.to_string())).arg(name).arg(tick).arg(spec);
    for (field, value) in job.to_fields() {
        invocation.arg(field).arg(value);
    }
    let (status, detail): (i64, String) = invocation.invoke_async(&mut conn).await?;
    match status {
        1 => {
            span.record(semconv::MESSAGING_MESSAGE_ID, detail.as_str());
            tracing::info!(
                schedule = name,
                tick,
                job_id = %job.id,
                trace_id = %cx.span().span_context().trace_id(),
                "periodic job enqueued"
            );
        }
        0 => span.add_event("tick already enqueued", vec![opentelemetry::KeyValue::new("jobstream.cron.last", detail)]),
        _ => span.add_event("schedule changed before its tick was enqueued", vec![]),
    }
    Ok(())
}
