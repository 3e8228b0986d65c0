//! `noop`: does nothing but, unless its payload says `"record": false`, record that it ran. For load tests
//! (the load generator sends `{"record": false}`, so a run costs Redis nothing beyond the queue's own work).

use std::time::Duration;

use jobstream::connection::Pool;
use jobstream::{results, Job, JobFailure, JobHandler};
use serde::Deserialize;

/// The `noop` handler.
pub struct Noop {
    pool: Pool,
    /// Key prefix of the queue; records go next to the queue each job came from.
    prefix: String,
    retention: Option<Duration>,
}

/// What a `noop` payload may say; other fields are ignored.
#[derive(Deserialize)]
struct NoopPayload {
    /// Count the run in the queue's `done` hash (so a test can check every job ran once).
    #[serde(default = "yes")]
    record: bool,
}

fn yes() -> bool {
    true
}

impl Noop {
    /// A handler recording runs in `keys.done`, a hash kept `retention` after its last write.
    pub fn new(pool: Pool, prefix: &str, retention: Option<Duration>) -> Self {
        Self { pool, prefix: prefix.to_owned(), retention }
    }
}

impl JobHandler for Noop {
    async fn handle(&self, job: Job) -> Result<(), JobFailure> {
        // Any payload is accepted; only an object with `"record": false` turns recording off.
        let record = job.payload.deserialize::<NoopPayload>().map_or(true, |p| p.record);
        if record {
            results::record_done(&self.pool, &super::keys_of(&self.prefix, &job)?, &job.id, self.retention).await?;
        }
        Ok(())
    }
}
