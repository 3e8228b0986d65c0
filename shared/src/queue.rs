//! The consumer side of a queue's stream: create the group, read new entries, acknowledge, dead-letter.
//!
//! Each function is one Redis round trip. Steps that must happen together run as one Lua script, so they stay
//! atomic and touch only the queue's slot (all its keys share the `{Q}` hash tag).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::StreamReadReply;

use crate::keys::{GroupName, Keys};

static DEAD_LETTER: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/dead_letter.lua")));

/// One stream entry as delivered to this consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream entry id.
    pub message_id: String,
    /// The entry's fields as Redis returned them.
    pub fields: HashMap<String, redis::Value>,
    /// How many times the entry has been delivered, this time included.
    pub delivery_count: u64,
}

/// Creates the consumer group at the start of the stream (and the stream itself) unless it exists.
pub async fn ensure_group<C: ConnectionLike>(conn: &mut C, keys: &Keys, group: &GroupName) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg(group.as_str())
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// True when the error says the group (or its stream) does not exist, e.g. after a restart without persistence.
pub fn is_no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Reads up to `count` entries never delivered to the group, blocking up to `block` for the first one.
pub async fn read_new<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    consumer: &str,
    count: usize,
    block: Duration,
) -> redis::RedisResult<Vec<Delivery>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
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
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|entry| Delivery { message_id: entry.id, fields: entry.map, delivery_count: 1 })
        .collect())
}

/// Acknowledges entries; returns how many were still pending.
pub async fn ack<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    ids: &[String],
) -> redis::RedisResult<u64> {
    redis::cmd("XACK").arg(&keys.stream).arg(group.as_str()).arg(ids).query_async(conn).await
}

/// Why a job was dead-lettered; the `dead.reason` field of the dead entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The entry could not be decoded into a job.
    Undecodable,
    /// No handler knows the job's kind.
    UnknownKind,
    /// The job failed on every allowed attempt.
    MaxAttempts,
    /// The entry was delivered too often without an outcome: it keeps killing its workers.
    Poison,
}

impl DeadReason {
    /// The wire form of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::UnknownKind => "unknown_kind",
            Self::MaxAttempts => "max_attempts",
            Self::Poison => "poison",
        }
    }
}

/// What a dead entry records besides the job's own fields.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Why it died.
    pub reason: DeadReason,
    /// The last error, as text.
    pub error: &'a str,
    /// The consumer that dead-lettered it.
    pub consumer: &'a str,
    /// Cap on the dead stream's length; 0 for none.
    pub dead_maxlen: u64,
}

/// Moves `delivery` to the dead stream, keeping all its fields (trace context included) byte for byte, and
/// acknowledges it, atomically. Returns false when the entry was no longer pending (another consumer settled it).
pub async fn dead_letter<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    group: &GroupName,
    delivery: &Delivery,
    letter: &DeadLetter<'_>,
) -> redis::RedisResult<bool> {
    let mut invocation = DEAD_LETTER.key(&keys.stream);
    invocation.key(&keys.dead).arg(group.as_str()).arg(&delivery.message_id).arg(letter.dead_maxlen);
    let mut names: Vec<&String> = delivery.fields.keys().filter(|k| !k.starts_with("dead.")).collect();
    names.sort_unstable();
    for name in names {
        invocation.arg(name).arg(raw_bytes(&delivery.fields[name]));
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
    Ok(moved == 1)
}

fn raw_bytes(value: &redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(bytes) => bytes.clone(),
        redis::Value::SimpleString(text) => text.as_bytes().to_vec(),
        redis::Value::Int(n) => n.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}
