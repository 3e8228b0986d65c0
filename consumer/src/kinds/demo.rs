//! `demo`: the seed's worker as a job kind. Four steps, each a child span of `process`: `http-request`,
//! `load-data`, `process-data` (with simulated latency; one of these may fail at the configured rate) and
//! `save-data`, which stores the job's result in Redis so a run can be checked for completeness. It reports
//! progress after each step and gives its result to `Job::set_result`, so `producer job show` has both.

use std::time::Duration;

use jobstream::connection::Pool;
use jobstream::{results, Job, JobFailure, JobHandler};
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

/// The `demo` handler.
pub struct Demo {
    pool: Pool,
    /// Key prefix of the queue; records go next to the queue each job came from.
    prefix: String,
    settings: DemoSettings,
}

impl Demo {
    /// A demo handler storing results under `keys`.
    pub fn new(pool: Pool, prefix: &str, settings: DemoSettings) -> Self {
        Self { pool, prefix: prefix.to_owned(), settings }
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
        let (fail_at, latencies) = self.plan();
        for (index, ((name, _), latency)) in STEPS.iter().zip(latencies).enumerate() {
            let span = tracing::info_span!(
                "step",
                otel.name = *name,
                demo.step = *name,
                demo.latency_ms = latency.as_millis() as u64
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
        Ok(())
    }
}
