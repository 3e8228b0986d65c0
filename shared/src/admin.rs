//! Operating a queue: its numbers (length, lag, pending, oldest pending age, consumers, dead and delayed
//! counts), and the dead stream: list, show, replay, purge.
//!
//! A replayed job keeps its id and payload, starts again at attempt 1, and gets a new `send` span that links to
//! the trace it died in, so the new trace leads back to the old one.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use serde::Serialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::connection::Pool;
use crate::job::{field, fields_from_raw};
use crate::keys::Keys;
use crate::trace::propagation::{self, TraceHeaders};

static REPLAY_DEAD: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/replay_dead.lua")));

/// One consumer's numbers (Redis `XINFO CONSUMERS`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Consumer name.
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read, claimed or acknowledged.
    pub idle_ms: u64,
}

/// One consumer group's numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group (Redis 7 `lag`); `None` when Redis cannot tell, or when its
    /// `lag` contradicts the group's position in the stream ([`stats`]): unknown, never a false backlog.
    pub lag: Option<u64>,
    /// Age in ms of the oldest pending entry, from its stream id.
    pub oldest_pending_age_ms: Option<u64>,
    /// Entries the group acknowledged per second over the last minute (any outcome: done, retried, dead);
    /// see [`crate::counts`].
    pub acknowledged_per_s: Option<f64>,
    /// Each consumer of the group.
    pub consumer_list: Vec<ConsumerStats>,
}

/// A queue's numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Entries in the stream (acknowledged ones included until trimmed).
    pub length: u64,
    /// Jobs waiting for a retry or a scheduled time.
    pub delayed: u64,
    /// Entries in the dead stream.
    pub dead: u64,
    /// Whether the queue is paused ([`crate::pause`]); a partition shows its whole queue's state.
    pub paused: bool,
    /// Per consumer group.
    pub groups: Vec<GroupStats>,
    /// Enqueued and dead-lettered per second over the last minute ([`crate::counts`]).
    pub rates: crate::counts::Rates,
}

/// Reads a queue's numbers. A queue that does not exist yet has all zeros.
///
/// A group's `lag` is Redis's counter, checked against the group's position: whether any entry follows its
/// `last-delivered-id` (one `XRANGE … COUNT 1`). Redis 7.0 can report a lag with nothing unread after an AOF
/// rewrite and a restart; where the two disagree (nothing follows but lag > 0, or something follows but lag is
/// 0) the lag is reported unknown (`None`).
pub async fn stats(pool: &Pool, keys: &Keys) -> crate::Result<QueueStats> {
    let mut conn = pool.get().await?;
    Ok(stats_on(&mut conn, keys).await?)
}

async fn stats_on<C: ConnectionLike>(conn: &mut C, keys: &Keys) -> redis::RedisResult<QueueStats> {
    let (length, delayed, dead, paused): (u64, u64, u64, bool) = redis::pipe()
        .cmd("XLEN")
        .arg(&keys.stream)
        .cmd("ZCARD")
        .arg(&keys.delayed)
        .cmd("XLEN")
        .arg(&keys.dead)
        .cmd("EXISTS")
        .arg(&keys.paused)
        .query_async(conn)
        .await?;
    let groups: Vec<HashMap<String, redis::Value>> = if length > 0 || exists(conn, &keys.stream).await? {
        redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query_async(conn).await?
    } else {
        Vec::new()
    };
    let now = crate::clock::now_ms();
    let mut out = Vec::with_capacity(groups.len());
    let mut counters = Vec::with_capacity(groups.len());
    for group in groups {
        let name: String =
            group.get("name").map(|v| redis::from_redis_value(v.clone())).transpose()?.unwrap_or_default();
        let number =
            |key: &str| group.get(key).and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok().flatten());
        let oldest: redis::Value = redis::cmd("XPENDING").arg(&keys.stream).arg(&name).query_async(conn).await?;
        let oldest_id = match &oldest {
            redis::Value::Array(items) => {
                items.get(1).and_then(|v| redis::from_redis_value::<Option<String>>(v.clone()).ok().flatten())
            }
            _ => None,
        };
        let last_delivered: Option<String> =
            group.get("last-delivered-id").and_then(|v| redis::from_redis_value(v.clone()).ok());
        let lag = checked_lag(conn, keys, last_delivered.as_deref(), number("lag")).await?;
        counters.push(crate::counts::GroupCounts {
            name: name.clone(),
            // Redis may not know a new group's counter; one never delivered anything has read nothing.
            read: number("entries-read").or_else(|| (last_delivered.as_deref() == Some("0-0")).then_some(0)),
            pending: number("pending").unwrap_or(0),
        });
        out.push(GroupStats {
            consumers: number("consumers").unwrap_or(0),
            pending: number("pending").unwrap_or(0),
            lag,
            oldest_pending_age_ms: oldest_id.as_deref().and_then(id_ms).map(|ms| now.saturating_sub(ms)),
            acknowledged_per_s: None,
            consumer_list: consumers(conn, keys, &name).await.unwrap_or_default(),
            name,
        });
    }
    // Rates are extra: a user whose ACL lacks XINFO STREAM still gets the rest.
    let rates = async {
        let current = crate::counts::current(conn, keys, counters).await?;
        let baseline = crate::counts::baseline(conn, keys, current.t).await?;
        Ok::<_, redis::RedisError>(crate::counts::rates(baseline.as_ref(), &current))
    }
    .await;
    let rates = match rates {
        Ok((rates, per_group)) => {
            for (group, (_, acked)) in out.iter_mut().zip(per_group) {
                group.acknowledged_per_s = acked;
            }
            rates
        }
        Err(error) => {
            tracing::debug!(%error, "rates unknown");
            crate::counts::Rates::default()
        }
    };
    Ok(QueueStats { queue: keys.queue().to_string(), length, delayed, dead, paused, groups: out, rates })
}

/// The consumers of `group` with their pending count and idle time.
async fn consumers<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &str,
) -> redis::RedisResult<Vec<ConsumerStats>> {
    let rows: Vec<HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(&keys.stream).arg(group).query_async(conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let number = |key: &str| row.get(key).and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok());
            ConsumerStats {
                name: row.get("name").and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or_default(),
                pending: number("pending").unwrap_or(0),
                idle_ms: number("idle").unwrap_or(0),
            }
        })
        .collect())
}

/// `lag` when the stream agrees with it: an entry follows `last_delivered` exactly when the lag is above 0.
async fn checked_lag<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    last_delivered: Option<&str>,
    lag: Option<u64>,
) -> redis::RedisResult<Option<u64>> {
    let (Some(lag), Some(last_delivered)) = (lag, last_delivered) else { return Ok(None) };
    let next: redis::Value = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg(format!("({last_delivered}"))
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let unread = matches!(next, redis::Value::Array(items) if !items.is_empty());
    Ok((unread == (lag > 0)).then_some(lag))
}

async fn exists<C: ConnectionLike>(conn: &mut C, key: &str) -> redis::RedisResult<bool> {
    redis::cmd("EXISTS").arg(key).query_async(conn).await
}

/// The millisecond part of a stream id.
pub fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// One dead entry: its id in the dead stream and its fields (non-UTF-8 bytes shown lossily).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadEntry {
    /// Id in the dead stream.
    pub dead_id: String,
    /// Every field, the job's and the `dead.*` ones.
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Up to `count` dead entries from `start` (inclusive; `-` for the oldest).
pub async fn dead_list(pool: &Pool, keys: &Keys, start: &str, count: usize) -> crate::Result<Vec<DeadEntry>> {
    let mut conn = pool.get().await?;
    let entries = crate::stream::range(&mut conn, &keys.dead, start, "+", count).await?;
    Ok(entries.into_iter().map(|(dead_id, fields)| DeadEntry { dead_id, fields: lossy_raw(&fields) }).collect())
}

/// Raw fields as text (invalid UTF-8 replaced), so one entry with bytes in a field name cannot make a whole
/// page unreadable.
fn lossy_raw(fields: &crate::stream::RawFields) -> std::collections::BTreeMap<String, String> {
    fields
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// One dead entry by its id in the dead stream.
pub async fn dead_show(pool: &Pool, keys: &Keys, dead_id: &str) -> crate::Result<Option<DeadEntry>> {
    let mut conn = pool.get().await?;
    let entries = crate::stream::range(&mut conn, &keys.dead, dead_id, dead_id, 1).await?;
    Ok(entries.into_iter().next().map(|(dead_id, fields)| DeadEntry { dead_id, fields: lossy_raw(&fields) }))
}

/// A dead entry put back on the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Its old id in the dead stream.
    pub dead_id: String,
    /// Its new id in the stream.
    pub message_id: String,
    /// The job id (unchanged).
    pub job_id: String,
}

/// Puts one dead entry back on the queue as attempt 1 with a new `send` span linked to its old trace, and
/// removes it from the dead stream, atomically.
/// Fails with [`crate::Error::NotFound`] when there is no such dead entry, [`crate::Error::NotAJob`] when it
/// cannot run again.
pub async fn replay(pool: &Pool, keys: &Keys, dead_id: &str) -> crate::Result<Replayed> {
    let mut conn = pool.get().await?;
    let (dead_id, raw) = crate::stream::range(&mut conn, &keys.dead, dead_id, dead_id, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| crate::Error::NotFound(format!("dead entry {dead_id}")))?;
    let dead_id = dead_id.as_str();
    let not_a_job = |reason: String| crate::Error::NotAJob { id: dead_id.to_owned(), reason };
    let mut fields = fields_from_raw(&raw).map_err(|e| not_a_job(e.to_string()))?;
    // What the dead entry says about its last life is not the new job's: its `dead.*` fields and the time it
    // was last promoted from the delayed set.
    fields.retain(|name, _| !name.starts_with("dead.") && name != field::PROMOTED_AT);
    let old_trace = TraceHeaders::take_from(&mut fields);
    fields.insert(field::ATTEMPT.to_owned(), "1".to_owned());
    let mut job = crate::job::Job::from_fields(fields, &crate::limits::Limits { max_payload_bytes: usize::MAX })
        .map_err(|e| not_a_job(e.to_string()))?;

    let endpoint = crate::trace::endpoint::Endpoint::producer(keys, pool.server());
    let span = crate::trace::spans::replay(&endpoint, &job, dead_id, &old_trace);
    job.trace = propagation::inject(&span.context()).unwrap_or_default();
    let mut invocation = REPLAY_DEAD.key(&keys.dead);
    // The job's status record (if it has one, or gets one now) goes back to `waiting` on the new entry.
    invocation.key(&keys.stream).key(keys.job(&job.id.to_string())).arg(dead_id).arg(crate::stream::MAX_SCRIPT_VALUES);
    for (name, value) in job.to_fields() {
        invocation.arg(name).arg(value);
    }
    let message_id: Option<String> = invocation.invoke_async(&mut conn).await.inspect_err(|e| {
        crate::trace::spans::record_error(&span, "redis_error", &e.to_string());
        crate::trace::spans::exception(&span, crate::trace::spans::Operation::Send, "redis_error", &e.to_string());
    })?;
    let message_id = message_id.ok_or_else(|| crate::Error::NotFound(format!("dead entry {dead_id}")))?;
    span.record(crate::trace::semconv::MESSAGING_MESSAGE_ID, message_id.as_str());
    Ok(Replayed { dead_id: dead_id.to_owned(), message_id, job_id: job.id.to_string() })
}

/// Removes acknowledged entries older than `max_age` (never one a group still needs) and dead entries older
/// than `dead_max_age`, as workers do on their own every few seconds; returns how many each trim removed.
pub async fn trim(
    pool: &Pool,
    keys: &Keys,
    max_age: Option<std::time::Duration>,
    dead_max_age: Option<std::time::Duration>,
) -> crate::Result<(u64, u64)> {
    let mut conn = pool.get().await?;
    Ok(crate::stream::trim(&mut conn, keys, max_age, dead_max_age).await?)
}

/// How many entries the dead stream holds.
pub async fn dead_len(pool: &Pool, keys: &Keys) -> crate::Result<u64> {
    let mut conn = pool.get().await?;
    Ok(redis::cmd("XLEN").arg(&keys.dead).query_async(&mut conn).await?)
}

/// Deletes the dead stream; returns how many entries it held.
pub async fn dead_purge(pool: &Pool, keys: &Keys) -> crate::Result<u64> {
    let mut conn = pool.get().await?;
    let (len, _): (u64, u64) =
        redis::pipe().atomic().cmd("XLEN").arg(&keys.dead).cmd("DEL").arg(&keys.dead).query_async(&mut conn).await?;
    Ok(len)
}
