//! `fanout`: enqueues follow-up jobs from inside its `process` span, so their `send` spans, and the jobs'
//! own `process` spans after them, stay in the same trace: a multi-hop trace.
//!
//! Payload: `{"children": 2, "depth": 2, "leaf": "noop"}` (all optional). A job of depth d > 1 enqueues
//! `children` fanout jobs of depth d-1; a job of depth 1 enqueues `children` jobs of kind `leaf`.

use jobstream::connection::Pool;
use jobstream::{results, Job, JobFailure, JobHandler, JobKind, Keys, Payload, Producer};
use serde::{Deserialize, Serialize};

/// Most children one fanout job may enqueue, so a typo cannot flood the queue.
const MAX_CHILDREN: u32 = 100;
/// Deepest fanout allowed.
const MAX_DEPTH: u32 = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default = "two")]
    children: u32,
    #[serde(default = "two")]
    depth: u32,
    #[serde(default = "noop")]
    leaf: String,
}

fn two() -> u32 {
    2
}

fn noop() -> String {
    "noop".to_owned()
}

/// The `fanout` handler.
pub struct Fanout {
    pool: Pool,
    keys: Keys,
    producer: Producer,
}

impl Fanout {
    /// A fanout handler enqueueing follow-ups with `producer`.
    pub fn new(pool: Pool, keys: Keys, producer: Producer) -> Self {
        Self { pool, keys, producer }
    }
}

impl JobHandler for Fanout {
    async fn handle(&self, job: Job) -> Result<(), JobFailure> {
        let spec: Spec =
            job.payload.deserialize().map_err(|e| JobFailure::permanent("invalid_payload", e.to_string()))?;
        if spec.children > MAX_CHILDREN || spec.depth == 0 || spec.depth > MAX_DEPTH {
            return Err(JobFailure::permanent(
                "invalid_payload",
                format!("children must be at most {MAX_CHILDREN} and depth 1 to {MAX_DEPTH}"),
            ));
        }
        let limits = *self.producer.limits();
        let invalid = |e: jobstream::job::JobError| JobFailure::permanent("invalid_payload", e.to_string());
        let (kind, payload) = if spec.depth > 1 {
            let next = Spec { depth: spec.depth - 1, ..spec.clone() };
            (JobKind::parse("fanout").map_err(invalid)?, Payload::from_value(&next, &limits).map_err(invalid)?)
        } else {
            (JobKind::parse(&spec.leaf).map_err(invalid)?, Payload::parse("{}", &limits).map_err(invalid)?)
        };
        let jobs = (0..spec.children).map(|_| Job::new(kind.clone(), payload.clone())).collect();
        self.producer.enqueue_batch(jobs).await.map_err(|e| JobFailure::new("enqueue_failed", e.to_string()))?;
        results::record_done(&self.pool, &self.keys, &job.id).await
    }
}
