//! A queue's rates over the last minute: jobs enqueued, acknowledged and dead-lettered per second.
//!
//! Redis keeps cumulative counters but no history: a stream's `entries-added` (every XADD ever, from any
//! producer in any language, retries and replays included), the dead stream's `entries-added`, and per group
//! `entries-read` (entries first delivered) and `pending`; `entries-read - pending` is how many entries left the
//! group's pending list, i.e. were acknowledged, whatever the outcome (done, retry scheduled, dead-lettered).
//! A rate over the last minute needs those counters as they were a minute ago. Counting entries by their ids
//! (`XRANGE <now-60000> +`) would cost one reply entry per job, payloads included, and cannot see
//! acknowledgements at all; so the workers record the counters instead: every [`RECORD_EVERY`] one worker
//! (whichever comes first; a Lua script keeps it to one record per period for any number of workers) adds one
//! small JSON member to the sorted set `<prefix>:{Q}:counts`, kept [`KEEP`]. `producer stats` (and every
//! reader) compares the counters now with the newest record at least 60 s old, or the oldest record when the
//! workers started less than a minute ago; `window_s` says which span the rates cover. The cost is bounded and
//! constant: one script per period per queue for the workers (a few XINFO replies, each with at most two
//! entries), two XINFO STREAM and one ZRANGEBYSCORE of at most ~30 members for a reader.
//!
//! Rates are unknown (`None`) when no worker has recorded yet, when Redis cannot tell a group's `entries-read`,
//! or when a counter went backwards (the stream was deleted and made again, or Redis lost its data).

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::keys::Keys;

static RECORD: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/record_counts.lua")));

/// How often the workers record the counters.
pub const RECORD_EVERY: Duration = Duration::from_secs(5);
/// How long records are kept: an hour, which the dashboard draws (720 small members per queue).
pub const KEEP: Duration = Duration::from_secs(3600);
/// The span rates are measured over, when records that old exist.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The sorted set of a queue's recorded counters.
pub fn key(keys: &Keys) -> String {
    format!("{}:counts", keys.stream)
}

/// Records the queue's counters unless a record younger than [`RECORD_EVERY`] exists; true when it recorded.
pub(crate) async fn record<C: ConnectionLike>(conn: &mut C, keys: &Keys) -> redis::RedisResult<bool> {
    let recorded: i64 = RECORD
        .key(&keys.stream)
        .key(&keys.dead)
        .key(key(keys))
        .arg(crate::clock::now_ms())
        .arg(RECORD_EVERY.as_millis() as u64 - 100)
        .arg(KEEP.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(recorded == 1)
}

/// One group's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCounts {
    /// The consumer group's name.
    pub name: String,
    /// `entries-read`, when Redis can tell.
    pub read: Option<u64>,
    /// `pending`: entries delivered to the group and not yet acknowledged.
    pub pending: u64,
}

/// The queue's cumulative counters at time `t` (unix ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// When the counters were read, in unix ms.
    pub t: u64,
    /// The stream's `entries-added`: every entry ever added to it.
    pub added: u64,
    /// The dead stream's `entries-added` (0 while it does not exist).
    pub dead: u64,
    /// Every consumer group of the stream.
    pub groups: Vec<GroupCounts>,
}

impl Counts {
    fn parse(member: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(member).ok()?;
        // cjson encodes an empty list as `{}`.
        let groups = match &v["groups"] {
            serde_json::Value::Array(groups) => groups
                .iter()
                .filter_map(|g| {
                    Some(GroupCounts {
                        name: g["name"].as_str()?.to_owned(),
                        read: g["read"].as_u64(),
                        pending: g["pending"].as_u64()?,
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(Self { t: v["t"].as_u64()?, added: v["added"].as_u64()?, dead: v["dead"].as_u64()?, groups })
    }

    /// Acknowledged so far by `group`: `entries-read - pending`.
    pub fn acked(&self, group: &str) -> Option<u64> {
        let g = self.groups.iter().find(|g| g.name == group)?;
        g.read?.checked_sub(g.pending)
    }
}

/// A queue's rates; `None` where unknown (see the module's doc).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rates {
    /// The span the rates cover, in seconds: 60 (up to 65) once the workers have recorded for a minute, less
    /// before; `None` when nothing was recorded yet.
    pub window_s: Option<f64>,
    /// Entries added to the stream per second (new jobs, retries and replays).
    pub enqueued_per_s: Option<f64>,
    /// Entries added to the dead stream per second.
    pub dead_per_s: Option<f64>,
}

/// The record to measure from at `now`: the newest at least [`WINDOW`] old, else the oldest.
pub(crate) async fn baseline<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    now: u64,
) -> redis::RedisResult<Option<Counts>> {
    let since = now.saturating_sub(WINDOW.as_millis() as u64 + 2 * RECORD_EVERY.as_millis() as u64);
    let mut members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(key(keys))
        .arg(since)
        .arg(now)
        .arg("LIMIT")
        .arg(0)
        .arg(64)
        .query_async(conn)
        .await?;
    if members.is_empty() {
        members = redis::cmd("ZRANGEBYSCORE")
            .arg(key(keys))
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(conn)
            .await?;
    }
    let records: Vec<Counts> = members.iter().filter_map(|m| Counts::parse(m)).filter(|c| c.t < now).collect();
    let cutoff = now.saturating_sub(WINDOW.as_millis() as u64);
    Ok(records.iter().rev().find(|c| c.t <= cutoff).or(records.first()).cloned())
}

/// Every record since `since_ms` (unix ms), oldest first.
pub async fn since<C: ConnectionLike>(conn: &mut C, keys: &Keys, since_ms: u64) -> redis::RedisResult<Vec<Counts>> {
    let members: Vec<String> =
        redis::cmd("ZRANGEBYSCORE").arg(key(keys)).arg(since_ms).arg("+inf").query_async(conn).await?;
    Ok(members.iter().filter_map(|m| Counts::parse(m)).collect())
}

/// The counters now: the streams' `entries-added` (XINFO STREAM) and the groups' given numbers.
pub(crate) async fn current<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    groups: Vec<GroupCounts>,
) -> redis::RedisResult<Counts> {
    let t = crate::clock::now_ms();
    let added = entries_added(conn, &keys.stream).await?;
    let dead = entries_added(conn, &keys.dead).await?;
    Ok(Counts { t, added, dead, groups })
}

async fn entries_added<C: ConnectionLike>(conn: &mut C, stream: &str) -> redis::RedisResult<u64> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    if !exists {
        return Ok(0);
    }
    let info: std::collections::HashMap<String, redis::Value> =
        redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(conn).await?;
    Ok(info.get("entries-added").and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok()).unwrap_or(0))
}

/// The queue's rates from `then` to `now`, and each group's acknowledgements per second (by name).
pub fn rates(then: Option<&Counts>, now: &Counts) -> (Rates, Vec<(String, Option<f64>)>) {
    let Some(then) = then.filter(|then| now.t > then.t) else {
        return (Rates::default(), now.groups.iter().map(|g| (g.name.clone(), None)).collect());
    };
    let seconds = (now.t - then.t) as f64 / 1000.0;
    let per_s = |now: Option<u64>, then: Option<u64>| Some(now?.checked_sub(then?)? as f64 / seconds);
    let rates = Rates {
        window_s: Some(seconds),
        enqueued_per_s: per_s(Some(now.added), Some(then.added)),
        dead_per_s: per_s(Some(now.dead), Some(then.dead)),
    };
    let groups = now.groups.iter().map(|g| (g.name.clone(), per_s(now.acked(&g.name), then.acked(&g.name)))).collect();
    (rates, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_rates_follow_the_counters() {
        let then = Counts::parse(r#"{"t":1000,"added":10,"dead":1,"groups":[{"name":"w","read":8,"pending":2}]}"#);
        let then = then.unwrap();
        assert_eq!(Counts::parse(r#"{"t":1,"added":0,"dead":0,"groups":{}}"#).unwrap().groups, vec![]);
        let now = Counts {
            t: 3000,
            added: 30,
            dead: 3,
            groups: vec![GroupCounts { name: "w".into(), read: Some(30), pending: 0 }],
        };
        let (r, groups) = rates(Some(&then), &now);
        assert_eq!(r, Rates { window_s: Some(2.0), enqueued_per_s: Some(10.0), dead_per_s: Some(1.0) });
        assert_eq!(groups, vec![("w".to_owned(), Some(12.0))]);
        let restarted = Counts { added: 5, ..now.clone() };
        assert_eq!(rates(Some(&then), &restarted).0.enqueued_per_s, None, "a counter that went back is unknown");
        assert_eq!(rates(None, &now).0, Rates::default());
    }
}
