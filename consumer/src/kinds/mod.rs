//! The job kinds the consumer ships: `demo` (the seed's four steps), `noop` (load tests) and `fanout`
//! (follow-up jobs: a multi-hop trace). Each records its completion in the queue's `done` hash
//! ([`jobstream::results`]) so a run can be checked for lost and duplicated jobs.

pub mod demo;
pub mod fanout;
pub mod noop;

/// The keys of the queue (partition) `job` was read from, under `prefix`: where its records go.
fn keys_of(prefix: &str, job: &jobstream::Job) -> Result<jobstream::Keys, jobstream::JobFailure> {
    let queue =
        job.queue().ok_or_else(|| jobstream::JobFailure::new("no_queue", "the job was not read from a queue"))?;
    jobstream::Keys::new(prefix, queue).map_err(|e| jobstream::JobFailure::new("bad_queue", e.to_string()))
}
