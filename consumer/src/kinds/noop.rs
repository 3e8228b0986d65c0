//! `noop`: does nothing but record that it ran. For load tests.

use deadpool_redis::Pool;
use jobstream::{results, Job, JobFailure, JobHandler, Keys};

/// The `noop` handler.
pub struct Noop {
    pool: Pool,
    keys: Keys,
}

impl Noop {
    /// A handler recording runs in `keys.done`.
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }
}

impl JobHandler for Noop {
    async fn handle(&self, job: Job) -> Result<(), JobFailure> {
        results::record_done(&self.pool, &self.keys, &job.id).await
    }
}
