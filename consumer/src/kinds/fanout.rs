//! `fanout`: enqueues follow-up jobs from inside its `process` span, so their `send` spans, and the jobs'
//! own `process` spans after them, stay in the same trace: a multi-hop trace.
//!
//! Payload: `{"children": 2, "depth": 2, "leaf": "noop"}` (all optional). A job of depth d > 1 enqueues
//! `children` fanout jobs of depth d-1; a job of depth 1 enqueues `children` jobs of kind `leaf`.
//!
//! One request must not be able to flood the queue, so a job is refused with a permanent failure (dead-lettered
//! as `permanent_failure` with error type `fanout_limit`, never retried, nothing enqueued) unless
//! `children` ≤ [`MAX_CHILDREN`], 1 ≤ `depth` ≤ [`MAX_DEPTH`], all the jobs it causes at every depth
//! (`children + children² + … + children^depth`) number at most [`MAX_TOTAL`], and `leaf` is not `fanout`
//! (a leaf that fanned out again would escape the total). Each child is checked again when it runs; since a
//! child's total is smaller than its parent's, the bound holds for the whole tree of any job, however it
//! was enqueued.

use std::time::Duration;

use jobstream::connection::Pool;
use jobstream::{results, Job, JobFailure, JobHandler, JobKind, Payload, Producer};
use serde::{Deserialize, Serialize};

/// Most children one fanout job may enqueue.
pub const MAX_CHILDREN: u32 = 100;
/// Deepest fan-out.
pub const MAX_DEPTH: u32 = 5;
/// Most jobs one fanout job may cause in all, its descendants at every depth.
pub const MAX_TOTAL: u64 = 10_000;
/// The error type of a job refused for its size.
const LIMIT: &str = "fanout_limit";

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

impl Spec {
    /// The jobs this spec causes at every depth below it: `children + children² + … + children^depth`.
    /// Only called within the bounds on children and depth, where it cannot overflow (100⁵ < 2⁶⁴).
    fn descendants(&self) -> u64 {
        (1..=self.depth).map(|d| u64::from(self.children).pow(d)).sum()
    }

    /// Refuses a spec past the bounds, saying which one.
    fn check(&self) -> Result<(), JobFailure> {
        let refuse = |why: String| Err(JobFailure::permanent(LIMIT, why));
        if self.children > MAX_CHILDREN {
            return refuse(format!("children is {}; at most {MAX_CHILDREN}", self.children));
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return refuse(format!("depth is {}; 1 to {MAX_DEPTH}", self.depth));
        }
        if self.descendants() > MAX_TOTAL {
            return refuse(format!(
                "{} children at depth {} make {} jobs; at most {MAX_TOTAL} in all",
                self.children,
                self.depth,
                self.descendants()
            ));
        }
        if self.leaf == "fanout" {
            return refuse("the leaf kind cannot be fanout: use depth".to_owned());
        }
        Ok(())
    }
}

/// The `fanout` handler.
pub struct Fanout {
    pool: Pool,
    /// Key prefix of the queue; records go next to the queue each job came from.
    prefix: String,
    producer: Producer,
    retention: Option<Duration>,
}

impl Fanout {
    /// A fanout handler enqueueing follow-ups with `producer`, recording runs in a `done` hash kept `retention`.
    pub fn new(pool: Pool, prefix: &str, producer: Producer, retention: Option<Duration>) -> Self {
        Self { pool, prefix: prefix.to_owned(), producer, retention }
    }
}

impl JobHandler for Fanout {
    async fn handle(&self, job: Job) -> Result<(), JobFailure> {
        let spec: Spec =
            job.payload.deserialize().map_err(|e| JobFailure::permanent("invalid_payload", e.to_string()))?;
        spec.check()?;
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
        results::record_done(&self.pool, &super::keys_of(&self.prefix, &job)?, &job.id, self.retention)
            .await
            .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(children: u32, depth: u32, leaf: &str) -> Spec {
        Spec { children, depth, leaf: leaf.to_owned() }
    }

    fn refused(s: Spec) -> bool {
        s.check().is_err_and(|f| f.permanent && f.error_type == LIMIT)
    }

    #[test]
    fn the_bounds_hold_at_their_edges() {
        assert!(spec(MAX_CHILDREN, 1, "noop").check().is_ok());
        assert!(refused(spec(MAX_CHILDREN + 1, 1, "noop")));
        assert!(spec(1, MAX_DEPTH, "noop").check().is_ok());
        assert!(refused(spec(1, MAX_DEPTH + 1, "noop")));
        assert!(refused(spec(1, 0, "noop")));
        assert!(spec(0, 1, "noop").check().is_ok());
    }

    #[test]
    fn the_total_counts_every_depth() {
        assert_eq!(spec(3, 2, "noop").descendants(), 3 + 9);
        // 21 + 441 + 9261 = 9723: allowed; 22 + 484 + 10648 = 11154: refused.
        assert!(spec(21, 3, "noop").check().is_ok());
        assert!(refused(spec(22, 3, "noop")));
        // 100 + 10,000 = 10,100: past the total though each bound alone holds.
        assert!(refused(spec(MAX_CHILDREN, 2, "noop")));
        assert_eq!(spec(MAX_CHILDREN, MAX_DEPTH, "noop").descendants(), 10_101_010_100);
    }

    #[test]
    fn a_leaf_cannot_fan_out_again() {
        assert!(refused(spec(1, 1, "fanout")));
    }
}
