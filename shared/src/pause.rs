//! Pausing a queue: while paused, its consumers read nothing new (no new entries, no take-over of dead
//! consumers' entries) and move no due delayed job to the stream; jobs already running finish, are acknowledged
//! and keep renewing their claim. Enqueueing still works: new jobs wait in the stream until the queue is resumed.
//!
//! The state is one key under the queue's hash tag, `<prefix>:{Q}:paused` ([`crate::Keys::paused`]), so it
//! survives consumer restarts; a partitioned queue has one flag for all its partitions, under the base name's tag.
//! Workers poll it (see `worker/pause.rs`), so a pause takes effect within about a quarter of a second plus the
//! read that may be blocking at that moment (`--block`).
//!
//! ```no_run
//! # async fn run(pool: jobstream::connection::Pool) -> jobstream::Result<()> {
//! let queue = jobstream::Queue::new("emails")?;
//! jobstream::pause::pause(&pool, &queue).await?;
//! assert!(jobstream::pause::is_paused(&pool, &queue).await?);
//! jobstream::pause::resume(&pool, &queue).await?;
//! # Ok(()) }
//! ```

use crate::connection::Pool;
use crate::keys::Keys;
use crate::queue::Queue;

fn flag(queue: &Queue) -> String {
    queue.partition_keys().swap_remove(0).paused
}

/// Pauses `queue`. Idempotent: answers whether it was running before (`false` when it was already paused).
pub async fn pause(pool: &Pool, queue: &Queue) -> crate::Result<bool> {
    let mut conn = pool.get().await?;
    let set: Option<String> =
        redis::cmd("SET").arg(flag(queue)).arg(crate::clock::now_ms()).arg("NX").query_async(&mut conn).await?;
    Ok(set.is_some())
}

/// Resumes `queue`. Idempotent: answers whether it was paused before.
pub async fn resume(pool: &Pool, queue: &Queue) -> crate::Result<bool> {
    let mut conn = pool.get().await?;
    let removed: u64 = redis::cmd("DEL").arg(flag(queue)).query_async(&mut conn).await?;
    Ok(removed > 0)
}

/// Whether `queue` is paused.
pub async fn is_paused(pool: &Pool, queue: &Queue) -> crate::Result<bool> {
    let mut conn = pool.get().await?;
    Ok(read_flag(&mut conn, &queue.partition_keys()[0]).await?)
}

/// Whether the queue of `keys` (any of its partitions) is paused.
pub(crate) async fn read_flag<C: redis::aio::ConnectionLike>(conn: &mut C, keys: &Keys) -> redis::RedisResult<bool> {
    let exists: u64 = redis::cmd("EXISTS").arg(&keys.paused).query_async(conn).await?;
    Ok(exists > 0)
}
