//! `demo`: the seed's worker as a job kind. Four steps, each a child span of `process`: `http-request`,
//! `load-data`, `process-data` (with simulated latency; one of these may fail at the configured rate) and
//! `save-data`, which stores the job's result in Redis so a run can be checked for completeness. It reports
//! progress after each step and gives its result to `Job::set_result`, so `producer job show` has both.
//!
//! A chain of jobs across workers: a payload with `"next": [{"queue": "<q>", "kind": "<k>"}, …]` makes the job,
//! once its four steps succeeded, enqueue ONE follow-up of `next[0].kind` on queue `next[0].queue` (under the
//! consumer's key prefix), from inside its `process` span: its `send <q>` span is that span's child, and the
//! follow-up continues the trace. The follow-up's payload is this one with the first element of `next` removed
//! (`next` dropped when nothing is left). The Node and Python example workers do the same (examples/), so one
//! request can run through all three. A `next` that is not a list of such objects with valid names fails the
//! job at once, permanently (`invalid_payload`); an enqueue that fails is a retryable failure (`enqueue_failed`).

use std::time::Duration;

use jobstream::connection::Pool;
use jobstream::{results, Job, JobFailure, JobHandler, JobKind, Limits, Payload, Producer, Queue};
use opentelemetry::trace::Status;
use rand::Rng;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The steps with their typical latency in ms at scale 1.
const STEPS: [(&str, u64); 4] = [("http-request", 40), ("load-data", 25), ("process-data", 60), ("save-data", 15)];

/// How the demo behaves.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// Multiplies every step's latency; 0 runs the steps without waiting.
    pub latency_scale: f64,
    /// Probability in [0, 1] that an attempt fails in one of its first three steps.
    pub failure_rate: f64,
    /// How long results stay in Redis.
    pub result_ttl: Duration,
    /// How long the queue's `done` hash stays after its last write; `None` keeps it.
    pub done_retention: Option<Duration>,
    /// Recorded in the result: which consumer ran the job.
    pub consumer: String,
}

/// What a `demo` payload may say; anything else is kept as the result's input.
#[derive(serde::Deserialize)]
struct DemoPayload {
    /// Panic in `process-data` with this message.
    panic: Option<String>,
    /// Fail `process-data` (error.type `simulated_failure`) on every attempt up to this one: a job that fails
    /// and then succeeds on its retry, for showing retries without chance.
    fail_until_attempt: Option<u32>,
}

/// The follow-up a `demo` payload asks for with `next`: its queue and kind, and its payload (this one without
/// `next[0]`).
#[derive(Debug)]
struct FollowUp {
    queue: Queue,
    kind: JobKind,
    payload: serde_json::Value,
}

/// Reads `next` from a demo payload: `None` when there is none (absent, `null` or an empty list; a payload that
/// is not an object has none), else the first hop and the payload that goes with it. A `next` that is not a
/// list of `{"queue": <queue name>, "kind": <job kind>}` objects is a permanent failure (`invalid_payload`):
/// every hop is checked here, so a bad one fails the first job, not a later one in another language.
fn follow_up(payload: &serde_json::Value, prefix: &str) -> Result<Option<FollowUp>, JobFailure> {
    let invalid = |why: String| JobFailure::permanent("invalid_payload", format!("next: {why}"));
    let Some(object) = payload.as_object() else { return Ok(None) };
    let hops = match object.get("next") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(hops)) => hops,
        Some(_) => return Err(invalid("not a list of {\"queue\", \"kind\"} objects".to_owned())),
    };
    let mut first = None;
    for (i, hop) in hops.iter().enumerate() {
        let field = |name: &str| {
            hop.get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| invalid(format!("element {i} has no text field {name:?}")))
        };
        let queue = Queue::new(field("queue")?)
            .and_then(|q| q.with_prefix(prefix))
            .map_err(|e| invalid(format!("element {i}: {e}")))?;
        let kind = JobKind::parse(field("kind")?).map_err(|e| invalid(format!("element {i}: {e}")))?;
        first.get_or_insert((queue, kind));
    }
    let Some((queue, kind)) = first else { return Ok(None) };
    let mut rest = object.clone();
    let remaining: Vec<serde_json::Value> = hops[1..].to_vec();
    if remaining.is_empty() {
        rest.remove("next");
    } else {
        rest.insert("next".to_owned(), serde_json::Value::Array(remaining));
    }
    Ok(Some(FollowUp { queue, kind, payload: serde_json::Value::Object(rest) }))
}

/// The `demo` handler.
pub struct Demo {
    pool: Pool,
    /// Key prefix of the queue; records go next to the queue each job came from, follow-ups under it.
    prefix: String,
    /// Applied to follow-up jobs.
    limits: Limits,
    settings: DemoSettings,
}

impl Demo {
    /// A demo handler storing results under `prefix`, enqueueing follow-ups (`next`) with `limits`.
    pub fn new(pool: Pool, prefix: &str, limits: Limits, settings: DemoSettings) -> Self {
        Self { pool, prefix: prefix.to_owned(), limits, settings }
    }

    /// Enqueues the follow-up, in the current (`process`) span: its `send` span is a child of it.
    async fn enqueue(&self, next: FollowUp) -> Result<(), JobFailure> {
        let payload = Payload::from_value(&next.payload, &self.limits)
            .map_err(|e| JobFailure::permanent("invalid_payload", format!("next: {e}")))?;
        let producer = Producer::new(self.pool.clone(), &next.queue).with_limits(self.limits);
        let sent = producer
            .enqueue_job(Job::new(next.kind.clone(), payload))
            .await
            .map_err(|e| JobFailure::new("enqueue_failed", format!("follow-up on {}: {e}", next.queue.name())))?;
        tracing::info!(queue = %next.queue.name(), kind = %next.kind, job_id = %sent.job_id, "follow-up enqueued");
        Ok(())
    }

    /// Which step fails this attempt (if any) and the latency of each step.
    fn plan(&self) -> (Option<usize>, [Duration; 4]) {
        let mut rng = rand::rng();
        let fail_at = rng.random_bool(self.settings.failure_rate.clamp(0.0, 1.0)).then(|| rng.random_range(0..3));
        let latencies = STEPS.map(|(_, ms)| {
            let jittered = ms as f64 * rng.random_range(0.5..1.5) * self.settings.latency_scale.max(0.0);
            Duration::from_secs_f64(jittered / 1000.0)
        });
        (fail_at, latencies)
    }
}

impl JobHandler for Demo {
    async fn handle(&self, job: Job) -> Result<(), JobFailure> {
        let next = follow_up(&job.payload.deserialize::<serde_json::Value>().unwrap_or_default(), &self.prefix)?;
        let (fail_at, latencies) = self.plan();
        for (index, ((name, _), latency)) in STEPS.iter().zip(latencies).enumerate() {
            let span = tracing::info_span!(
                "step",
                otel.name = *name,
                demo.step = *name,
                demo.latency_ms = latency.as_millis() as i64
            );
            let result = async {
                if !latency.is_zero() {
                    // A cancel or a timeout stops the step at once.
                    let stop = job.cancelled();
                    tokio::select! {
                        () = tokio::time::sleep(latency) => {}
                        () = stop.cancelled() => {
                            return Err(JobFailure::new("cancelled", format!("{name} stopped: the attempt was cancelled")));
                        }
                    }
                }
                if fail_at == Some(index) {
                    return Err(JobFailure::new("simulated_failure", format!("{name} failed (simulated)")));
                }
                // `{"panic": "<message>"}` makes `process-data` panic: shows that a crashing handler fails its
                // attempt (retried, then dead with the message) and never its worker.
                if *name == "process-data" {
                    let payload = job.payload.deserialize::<DemoPayload>().ok();
                    if let Some(message) = payload.as_ref().and_then(|p| p.panic.clone()) {
                        panic!("{message}");
                    }
                    if payload.and_then(|p| p.fail_until_attempt).is_some_and(|until| job.attempt <= until) {
                        return Err(JobFailure::new(
                            "simulated_failure",
                            format!("process-data failed on purpose (fail_until_attempt, attempt {})", job.attempt),
                        ));
                    }
                }
                if *name == "save-data" {
                    let result = serde_json::json!({
                        "job_id": job.id.to_string(),
                        "attempt": job.attempt,
                        "consumer": self.settings.consumer,
                        "input": job.payload.deserialize::<serde_json::Value>().unwrap_or_default(),
                        "finished_at_ms": jobstream::clock::now_ms(),
                    });
                    job.set_result(&result)?;
                    results::store_result(
                        &self.pool,
                        &super::keys_of(&self.prefix, &job)?,
                        &job.id,
                        &result.to_string(),
                        self.settings.result_ttl,
                        self.settings.done_retention,
                    )
                    .await?;
                }
                Ok(())
            }
            .instrument(span.clone())
            .await;
            if let Err(failure) = result {
                span.set_status(Status::error(failure.message.clone()));
                span.set_attribute("error.type", failure.error_type.clone());
                return Err(failure);
            }
            // Progress after each step that took time (`{"step": <name>, "done": <steps done>, "of": 4}`); at
            // latency scale 0 the steps are instant and reporting them would only cost Redis writes. A record
            // that cannot be written does not stop the job.
            if !latency.is_zero() {
                let report = serde_json::json!({ "step": name, "done": index + 1, "of": STEPS.len() });
                if let Err(e) = job.progress(&report).await {
                    tracing::warn!(error = %e, "progress not recorded");
                }
            }
        }
        match next {
            Some(next) => self.enqueue(next).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn next_of(payload: serde_json::Value) -> Result<Option<(String, String, serde_json::Value)>, JobFailure> {
        follow_up(&payload, "p").map(|f| f.map(|f| (f.queue.name().to_string(), f.kind.to_string(), f.payload)))
    }

    #[test]
    fn the_first_hop_is_taken_and_the_rest_passed_on() {
        let two = json!({"order": 42, "next": [{"queue": "a", "kind": "demo"}, {"queue": "b", "kind": "noop"}]});
        assert_eq!(
            next_of(two).unwrap(),
            Some(("a".into(), "demo".into(), json!({"order": 42, "next": [{"queue": "b", "kind": "noop"}]})))
        );
        let last = json!({"order": 42, "next": [{"queue": "b", "kind": "noop"}]});
        assert_eq!(next_of(last).unwrap(), Some(("b".into(), "noop".into(), json!({"order": 42}))));
    }

    #[test]
    fn no_next_is_no_follow_up() {
        for payload in [json!({"order": 1}), json!({"next": []}), json!({"next": null}), json!([1]), json!(7)] {
            assert!(next_of(payload.clone()).unwrap().is_none(), "{payload}");
        }
    }

    #[test]
    fn a_bad_next_is_a_permanent_failure() {
        for payload in [
            json!({"next": "a"}),
            json!({"next": [{"queue": "a"}]}),
            json!({"next": [{"queue": "a", "kind": 1}]}),
            json!({"next": [{"queue": "a b", "kind": "demo"}]}),
            json!({"next": [{"queue": "a", "kind": "demo"}, {"queue": "b", "kind": "bad kind"}]}),
            json!({"next": [7]}),
        ] {
            let failure = next_of(payload.clone()).unwrap_err();
            assert!(failure.permanent && failure.error_type == "invalid_payload", "{payload}: {failure:?}");
        }
    }
}
