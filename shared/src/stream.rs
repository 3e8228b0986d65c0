//! The consumer side of a queue's stream: create the group, read new entries, acknowledge, dead-letter.
//!
//! Each function is one Redis round trip. Steps that must happen together run as one Lua script, so they stay
//! atomic and touch only the queue's slot (all its keys share the `{Q}` hash tag).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::keys::{GroupName, Keys};

static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/settle.lua")));
static PROMOTE_DUE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/promote_due.lua")));
static RENEW_CLAIMS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/renew_claims.lua")));
static CLAIM_STALE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/claim_stale.lua")));
static ENSURE_GROUP: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/ensure_group.lua")));

/// Most values (field names plus values) one XADD issued from a Lua script may carry: Lua's `unpack` fails
/// past about 8,000, and a script must never fail halfway. Wider entries are dead-lettered packed into one
/// field (see `lua/settle.lua`); wider delayed members are dead-lettered whole.
pub(crate) const MAX_SCRIPT_VALUES: usize = 7000;

/// An entry's fields exactly as Redis holds them: names and values are bytes, in the entry's order.
pub(crate) type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream entry as delivered to this consumer.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The stream entry id.
    pub message_id: String,
    /// The entry's fields, byte for byte.
    pub fields: RawFields,
    /// How many times the entry has been delivered, this time included.
    pub delivery_count: u64,
    /// When the entry was taken over from another consumer: that consumer and how long the entry had been idle.
    pub reclaimed_from: Option<(String, u64)>,
}

impl Delivery {
    /// The value of the first field named `name`.
    pub(crate) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

/// Creates the consumer group at the start of the stream (and the stream itself) unless it exists. Runs as a
/// script allowed under OOM, so consumers can start draining a queue while Redis is at maxmemory.
pub(crate) async fn ensure_group<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
) -> redis::RedisResult<()> {
    let _created: i64 = ENSURE_GROUP.key(&keys.stream).arg(group.as_str()).invoke_async(conn).await?;
    Ok(())
}

/// True when the error says the group (or its stream) does not exist, e.g. after a restart without persistence.
pub(crate) fn is_no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Reads up to `count` entries never delivered to the group, blocking up to `block` for the first one.
pub(crate) async fn read_new<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    consumer: &str,
    count: usize,
    block: Duration,
) -> redis::RedisResult<Vec<Delivery>> {
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group.as_str())
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(&keys.stream)
        .arg(">")
        .query_async(conn)
        .await?;
    // One stream was asked for: its entries are the second item of the first (and only) stream reply.
    let entries = match reply {
        redis::Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        other => array(other).into_iter().next().and_then(|stream| array(stream).into_iter().nth(1)),
    };
    Ok(entries
        .map(array)
        .unwrap_or_default()
        .into_iter()
        .filter_map(entry)
        .map(|(message_id, fields)| Delivery { message_id, fields, delivery_count: 1, reclaimed_from: None })
        .collect())
}

/// Entries of `key` from `start` to `end` (inclusive, XRANGE syntax), at most `count`, fields byte for byte.
pub(crate) async fn range<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    start: &str,
    end: &str,
    count: usize,
) -> redis::RedisResult<Vec<(String, RawFields)>> {
    let reply: redis::Value =
        redis::cmd("XRANGE").arg(key).arg(start).arg(end).arg("COUNT").arg(count).query_async(conn).await?;
    Ok(array(reply).into_iter().filter_map(entry).collect())
}

/// One entry of a stream reply, `[id, [name, value, ...]]`, decoded without assuming any text is UTF-8. An
/// entry whose fields are gone (nil: deleted while pending) has none.
fn entry(value: redis::Value) -> Option<(String, RawFields)> {
    let mut parts = array(value).into_iter();
    let id = text(parts.next()?);
    let mut values = parts.next().map(array).unwrap_or_default().into_iter().map(bytes);
    let mut fields = Vec::with_capacity(values.len() / 2);
    while let (Some(name), Some(value)) = (values.next(), values.next()) {
        fields.push((name, value));
    }
    Some((id, fields))
}

/// The XACK of entries `ids`; its reply is how many were still pending.
pub(crate) fn ack_cmd(keys: &Keys, group: &GroupName, ids: &[impl redis::ToRedisArgs + Sync]) -> redis::Cmd {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(&keys.stream).arg(group.as_str()).arg(ids);
    cmd
}

/// Why a job was dead-lettered; the `dead.reason` field of the dead entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// The entry could not be decoded into a job.
    Undecodable,
    /// No handler knows the job's kind.
    UnknownKind,
    /// The job failed on every allowed attempt.
    MaxAttempts,
    /// The entry was delivered too often without an outcome: it keeps killing its workers.
    Poison,
    /// The handler said retrying cannot help.
    Permanent,
    /// The job's deadline (`deadline_ms`) passed before an attempt started: it never ran.
    Expired,
}

impl DeadReason {
    /// The wire form of the reason.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::UnknownKind => "unknown_kind",
            Self::MaxAttempts => "max_attempts",
            Self::Poison => "poison",
            Self::Permanent => "permanent_failure",
            Self::Expired => "expired",
        }
    }
}

/// What a dead entry records besides the job's own fields.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter<'a> {
    /// Why it died.
    pub reason: DeadReason,
    /// The last error, as text.
    pub error: &'a str,
    /// The consumer that dead-lettered it; the entry must still be pending for it.
    pub consumer: &'a str,
    /// Cap on the dead stream's length; 0 for none.
    pub dead_maxlen: u64,
    /// The job's status record: its key, its update (a JSON array of field/value strings) and time to live.
    pub record: Option<(&'a str, &'a str, u64)>,
}

/// A stream length cap as XADD takes it: Redis reads MAXLEN as a signed 64-bit number, so larger caps (which
/// mean "no cap" in practice) are sent as the largest it takes.
fn maxlen_arg(cap: u64) -> u64 {
    cap.min(i64::MAX as u64)
}

/// How a settle step ended when Redis ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The move happened: the entry is acknowledged and its job is where it was sent.
    Moved,
    /// Nothing was written: the entry is no longer pending for this consumer (it was taken over while this
    /// consumer was paused past the visibility timeout, or already settled).
    NotOurs,
}

impl Settled {
    fn from_reply(moved: i64) -> Self {
        if moved == 1 {
            Self::Moved
        } else {
            Self::NotOurs
        }
    }
}

/// Moves `delivery` to the dead stream, keeping all its fields (trace context included) byte for byte, and
/// acknowledges it, all or nothing; nothing is written unless the entry is still pending for
/// `letter.consumer`. On an error nothing was written either: the entry stays pending.
pub(crate) async fn dead_letter<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    delivery: &Delivery,
    letter: &DeadLetter<'_>,
) -> redis::RedisResult<Settled> {
    let mut invocation = SETTLE.key(&keys.stream);
    invocation.key(&keys.dead);
    let (record_json, record_ttl) = match letter.record {
        Some((key, json, ttl)) => {
            invocation.key(key);
            (json, ttl)
        }
        None => ("", 0),
    };
    invocation
        .arg(group.as_str())
        .arg(letter.consumer)
        .arg(&delivery.message_id)
        .arg("dead")
        .arg(record_json)
        .arg(record_ttl)
        .arg(maxlen_arg(letter.dead_maxlen))
        .arg(MAX_SCRIPT_VALUES)
        .arg(12);
    for (name, value) in delivery.fields.iter().filter(|(name, _)| !name.starts_with(b"dead.")) {
        invocation.arg(name.as_slice()).arg(value.as_slice());
    }
    invocation
        .arg("dead.reason")
        .arg(letter.reason.as_str())
        .arg("dead.error")
        .arg(letter.error)
        .arg("dead.source_id")
        .arg(&delivery.message_id)
        .arg("dead.deliveries")
        .arg(delivery.delivery_count)
        .arg("dead.consumer")
        .arg(letter.consumer)
        .arg("dead.at")
        .arg(crate::clock::now_ms());
    let moved: i64 = invocation.invoke_async(conn).await?;
    Ok(Settled::from_reply(moved))
}

/// Puts a failed attempt's successor (`next_fields`, attempt already incremented) in the delayed set, due at
/// `due_ms`, and acknowledges the attempt, all or nothing; nothing is written unless the entry is still
/// pending for `consumer`. `record` is the job's status record: key, update (a JSON array of field/value
/// strings) and time to live.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn schedule_retry<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    consumer: &str,
    message_id: &str,
    due_ms: u64,
    next_fields: &[(&str, &str)],
    record: Option<(&str, &str, u64)>,
) -> redis::RedisResult<Settled> {
    let member: Vec<&str> = next_fields.iter().flat_map(|(k, v)| [*k, *v]).collect();
    let member = serde_json::to_string(&member).expect("strings always serialize");
    let mut invocation = SETTLE.key(&keys.stream);
    invocation.key(&keys.delayed);
    let (record_json, record_ttl) = match record {
        Some((key, json, ttl)) => {
            invocation.key(key);
            (json, ttl)
        }
        None => ("", 0),
    };
    let moved: i64 = invocation
        .arg(group.as_str())
        .arg(consumer)
        .arg(message_id)
        .arg("retry")
        .arg(record_json)
        .arg(record_ttl)
        .arg(due_ms)
        .arg(member)
        .invoke_async(conn)
        .await?;
    Ok(Settled::from_reply(moved))
}

/// What one run of [`promote_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Promoted {
    /// Due jobs moved to the stream.
    pub moved: usize,
    /// Due members that could not become an entry, moved to the dead stream with the reason.
    pub dead_lettered: usize,
    /// Due members that could not become an entry and stayed: the dead stream's key holds another type.
    pub stuck: usize,
    /// Due jobs dropped because their status record says they were cancelled.
    pub cancelled: usize,
}

impl Promoted {
    /// Members taken out of the delayed set.
    pub(crate) fn total(&self) -> usize {
        self.moved + self.dead_lettered + self.stuck + self.cancelled
    }
}

/// Moves up to `limit` jobs due by `now_ms` from the delayed set to the stream; a member that cannot be moved
/// goes to the dead stream (capped at `dead_maxlen`, 0 for none) with the reason, so it never blocks the rest.
/// With `records`, a job whose status record says cancelled is dropped, and a moved job's record is updated.
pub(crate) async fn promote_due<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    now_ms: u64,
    limit: usize,
    dead_maxlen: u64,
    consumer: &str,
    records: bool,
) -> redis::RedisResult<Promoted> {
    let (moved, dead_lettered, stuck, cancelled): (usize, usize, usize, usize) = PROMOTE_DUE
        .key(&keys.delayed)
        .key(&keys.stream)
        .key(&keys.dead)
        .arg(now_ms)
        .arg(limit)
        .arg(maxlen_arg(dead_maxlen))
        .arg(MAX_SCRIPT_VALUES)
        .arg(consumer)
        .arg(if records { keys.job_prefix.as_str() } else { "" })
        .invoke_async(conn)
        .await?;
    Ok(Promoted { moved, dead_lettered, stuck, cancelled })
}

/// Resets the idle time of entries this consumer still owns; returns the ids it no longer owns.
pub(crate) async fn renew_claims<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    consumer: &str,
    ids: &[String],
) -> redis::RedisResult<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    RENEW_CLAIMS.key(&keys.stream).arg(group.as_str()).arg(consumer).arg(ids).invoke_async(conn).await
}

/// One page of [`claim_stale`].
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// Where the next page starts; `0-0` when the scan wrapped around.
    pub next_cursor: String,
    /// Entries now owned by this consumer.
    pub deliveries: Vec<Delivery>,
    /// Pending ids whose entries no longer exist in the stream (Redis removed them from the group).
    pub deleted: Vec<String>,
}

/// Takes over up to `count` entries idle for at least `min_idle`, starting at `cursor` (XAUTOCLAIM). The
/// owner, idle time and delivery count of each are read in the same script, so they describe exactly the
/// entries claimed; the script runs while Redis is at maxmemory.
pub(crate) async fn claim_stale<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    consumer: &str,
    min_idle: Duration,
    cursor: &str,
    count: usize,
) -> redis::RedisResult<Claimed> {
    let (pending, claimed): (redis::Value, redis::Value) = CLAIM_STALE
        .key(&keys.stream)
        .arg(group.as_str())
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(cursor)
        .arg(count)
        .invoke_async(conn)
        .await?;
    let mut before: HashMap<String, (String, u64, u64)> = HashMap::new();
    for row in array(pending) {
        if let [id, owner, idle, deliveries] = &array(row)[..] {
            before.insert(text(id), (text(owner), int(idle), int(deliveries)));
        }
    }
    let mut parts = array(claimed).into_iter();
    let next_cursor = parts.next().map(text).unwrap_or_else(|| "0-0".to_owned());
    let deliveries = parts
        .next()
        .map(array)
        .unwrap_or_default()
        .into_iter()
        .filter_map(entry)
        .map(|(message_id, fields)| {
            let (owner, idle, deliveries) = before.get(&message_id).cloned().unwrap_or_default();
            Delivery { message_id, fields, delivery_count: deliveries + 1, reclaimed_from: Some((owner, idle)) }
        })
        .collect();
    let deleted = parts.next().map(array).unwrap_or_default().into_iter().map(text).collect();
    Ok(Claimed { next_cursor, deliveries, deleted })
}

fn array(value: redis::Value) -> Vec<redis::Value> {
    match value {
        redis::Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// A reply item's bytes: bulk and simple strings as they are, numbers as their decimal text.
fn bytes(value: redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(bytes) => bytes,
        redis::Value::SimpleString(text) => text.into_bytes(),
        redis::Value::Int(n) => n.to_string().into_bytes(),
        redis::Value::VerbatimString { text, .. } => text.into_bytes(),
        _ => Vec::new(),
    }
}

fn text(value: impl std::borrow::Borrow<redis::Value>) -> String {
    match value.borrow() {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(text) | redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

fn int(value: &redis::Value) -> u64 {
    match value {
        redis::Value::Int(n) => (*n).max(0) as u64,
        other => text(other).parse().unwrap_or(0),
    }
}

/// The first stream id no consumer group may still need: below it every entry was delivered to every group
/// and acknowledged. `None` when the stream has no group (then nothing is safe to trim).
pub(crate) async fn oldest_needed<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Option<(u64, u64)>> {
    let groups: Vec<HashMap<String, redis::Value>> =
        match redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query_async(conn).await {
            Ok(groups) => groups,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => return Ok(None),
            Err(e) => return Err(e),
        };
    let mut needed: Option<(u64, u64)> = None;
    for group in groups {
        let name = group.get("name").map(text).unwrap_or_default();
        let last_delivered = group.get("last-delivered-id").map(text).and_then(|id| parse_id(&id)).unwrap_or((0, 0));
        let summary: redis::Value = redis::cmd("XPENDING").arg(&keys.stream).arg(&name).query_async(conn).await?;
        let oldest_pending = match summary {
            redis::Value::Array(items) => items.get(1).map(text).and_then(|id| parse_id(&id)),
            _ => None,
        };
        // Everything after last-delivered-id is undelivered; the oldest pending entry is not acknowledged.
        let first_undelivered = (last_delivered.0, last_delivered.1.saturating_add(1));
        let bound = oldest_pending.map_or(first_undelivered, |p| p.min(first_undelivered));
        needed = Some(needed.map_or(bound, |n| n.min(bound)));
    }
    Ok(needed)
}

/// Removes acknowledged entries older than `max_age` from the stream, never an entry some group has not
/// acknowledged or not yet received (XTRIM MINID below [`oldest_needed`]); and dead entries older than
/// `dead_max_age`. Returns how many entries each trim removed.
pub(crate) async fn trim<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    max_age: Option<Duration>,
    dead_max_age: Option<Duration>,
) -> redis::RedisResult<(u64, u64)> {
    let now = crate::clock::now_ms();
    let mut removed = (0, 0);
    if let Some(max_age) = max_age {
        if let Some(needed) = oldest_needed(conn, keys).await? {
            let by_age = (now.saturating_sub(max_age.as_millis() as u64), 0);
            let (ms, seq) = needed.min(by_age);
            removed.0 =
                redis::cmd("XTRIM").arg(&keys.stream).arg("MINID").arg(format!("{ms}-{seq}")).query_async(conn).await?;
        }
    }
    if let Some(dead_max_age) = dead_max_age {
        let ms = now.saturating_sub(dead_max_age.as_millis() as u64);
        removed.1 = redis::cmd("XTRIM").arg(&keys.dead).arg("MINID").arg(format!("{ms}-0")).query_async(conn).await?;
    }
    Ok(removed)
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
