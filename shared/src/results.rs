//! Completion records of the shipped job kinds, so that a run can be checked: no job lost, none run twice.
//!
//! A successful run increments the job's field in the `<prefix>:{Q}:done` hash; the `demo` kind also stores its
//! result under `<prefix>:{Q}:result:<job id>` with a time to live. Both are written after the handler's work
//! and before the acknowledgement, so a crash in between shows as a count of 2: a duplicate, not a loss.
//!
//! The `done` hash lives as long as the acknowledged entries it describes: each write sets its time to live to
//! the consumer's retention (`--retention`) in the same MULTI, so it expires that long after the last job
//! recorded in it instead of growing forever. With no retention (0), it is kept like the entries.

use std::collections::HashMap;
use std::time::Duration;

use crate::connection::Pool;

use crate::job::JobId;
use crate::keys::Keys;

/// Counts one successful run of `job_id`; the `done` hash then expires `retention` after this write (`None`:
/// never), in the same MULTI.
pub async fn record_done(pool: &Pool, keys: &Keys, job_id: &JobId, retention: Option<Duration>) -> crate::Result<()> {
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("HINCRBY").arg(&keys.done).arg(job_id.to_string()).arg(1).ignore();
    expire_done(&mut pipe, keys, retention);
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// Stores a job's result for `ttl` and counts the run, in one MULTI so both or neither are written; the `done`
/// hash expires `retention` after this write, as in [`record_done`].
pub async fn store_result(
    pool: &Pool,
    keys: &Keys,
    job_id: &JobId,
    result_json: &str,
    ttl: Duration,
    retention: Option<Duration>,
) -> crate::Result<()> {
    let id = job_id.to_string();
    let mut conn = pool.get().await?;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(keys.result(&id))
        .arg(result_json)
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .ignore()
        .cmd("HINCRBY")
        .arg(&keys.done)
        .arg(&id)
        .arg(1)
        .ignore();
    expire_done(&mut pipe, keys, retention);
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

fn expire_done(pipe: &mut redis::Pipeline, keys: &Keys, retention: Option<Duration>) {
    if let Some(retention) = retention {
        pipe.cmd("PEXPIRE").arg(&keys.done).arg(retention.as_millis().max(1) as u64).ignore();
    }
}

/// How many of a set of jobs completed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// Jobs that ran successfully at least once.
    pub done: usize,
    /// Jobs that ran successfully more than once.
    pub duplicated: usize,
    /// Extra runs beyond the first, summed.
    pub extra_runs: u64,
    /// Jobs with no successful run yet.
    pub missing: usize,
}

/// Reads the completion of `ids` from the `done` hash, in chunks of 1000.
pub async fn completion(pool: &Pool, keys: &Keys, ids: &[String]) -> crate::Result<Completion> {
    let mut conn = pool.get().await?;
    let mut out = Completion::default();
    for chunk in ids.chunks(1000) {
        let counts: Vec<Option<u64>> = redis::cmd("HMGET").arg(&keys.done).arg(chunk).query_async(&mut conn).await?;
        for count in counts {
            match count {
                None | Some(0) => out.missing += 1,
                Some(n) => {
                    out.done += 1;
                    if n > 1 {
                        out.duplicated += 1;
                        out.extra_runs += n - 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Every job id in the `done` hash with its run count.
pub async fn all_runs(pool: &Pool, keys: &Keys) -> crate::Result<HashMap<String, u64>> {
    let mut conn = pool.get().await?;
    Ok(redis::cmd("HGETALL").arg(&keys.done).query_async(&mut conn).await?)
}

/// The results the shipped `demo` kind stored for `ids` (`None` where none is stored), in order.
pub async fn stored_results(pool: &Pool, keys: &Keys, ids: &[String]) -> crate::Result<Vec<Option<String>>> {
    let mut conn = pool.get().await?;
    let mut stored = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let keys_of: Vec<String> = chunk.iter().map(|id| keys.result(id)).collect();
        let part: Vec<Option<String>> = redis::cmd("MGET").arg(&keys_of).query_async(&mut conn).await?;
        stored.extend(part);
    }
    Ok(stored)
}

/// Deletes a queue's keys (stream, dead stream, delayed set, `done` hash) and the results of `ids`: what a demo
/// run leaves behind.
pub async fn delete_queue(pool: &Pool, keys: &Keys, ids: &[String]) -> crate::Result<()> {
    let mut conn = pool.get().await?;
    let mut doomed: Vec<String> = vec![keys.stream.clone(), keys.dead.clone(), keys.delayed.clone(), keys.done.clone()];
    doomed.extend(ids.iter().map(|id| keys.result(id)));
    for chunk in doomed.chunks(500) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(&mut conn).await?;
    }
    Ok(())
}
