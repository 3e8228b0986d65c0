//! Which job kinds the workers of a queue handle, so that a kind routed to the wrong queue is never lost in
//! silence.
//!
//! The rule: every worker of a consumer group must handle every kind the group may read, because Redis hands an
//! entry to whichever consumer asks next — a worker that does not know a kind dead-letters it as `unknown_kind`
//! (it cannot leave it pending: it would be delivered to it again and again). Kinds that only some workers know
//! (a Node-only kind next to Rust workers) get their own queue.
//!
//! To make a mistake visible, each worker advertises its kinds every [`ADVERTISE_EVERY`] in the hash
//! `<prefix>:{Q}:kinds` (per partition): kind → `{"consumer", "language", "seen_at"}` of the last worker that
//! advertised it. With it, `producer enqueue` warns (or with `--require-handled-kind` refuses) when no live worker
//! of the queue handles the kind, and a worker that dead-letters an unknown kind names the consumers of its group
//! that do handle it. Workers in other languages write the same hash (`docs/wire-format.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::Pool;
use crate::keys::Keys;

/// How often a worker advertises its kinds.
pub const ADVERTISE_EVERY: Duration = Duration::from_secs(5);
/// An advertisement older than this is no longer a live worker's.
pub const LIVE_FOR: Duration = Duration::from_secs(60);

/// The worker that last advertised a kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handler {
    /// Its consumer name.
    pub consumer: String,
    /// `rust`, `node`, `python`…
    pub language: String,
    /// When it advertised (unix ms).
    pub seen_at: u64,
}

/// The hash of a queue's (partition's) advertised kinds: `<prefix>:{Q}:kinds`.
pub fn key(keys: &Keys) -> String {
    format!("{}:kinds", keys.stream)
}

/// Advertises that `consumer` (a Rust worker) handles `kinds`.
pub(crate) async fn advertise<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    kinds: &[&str],
    consumer: &str,
) -> redis::RedisResult<()> {
    if kinds.is_empty() {
        return Ok(());
    }
    let handler =
        Handler { consumer: consumer.to_owned(), language: "rust".to_owned(), seen_at: crate::clock::now_ms() };
    let json = serde_json::to_string(&handler).expect("a handler always serializes");
    let mut hset = redis::cmd("HSET");
    hset.arg(key(keys));
    for kind in kinds {
        hset.arg(*kind).arg(&json);
    }
    hset.query_async(conn).await
}

/// The kinds live workers of the queue (partition) `keys` advertised in the last [`LIVE_FOR`], with who.
pub async fn handled(pool: &Pool, keys: &Keys) -> crate::Result<BTreeMap<String, Handler>> {
    let mut conn = pool.get().await?;
    let all: BTreeMap<String, String> = redis::cmd("HGETALL").arg(key(keys)).query_async(&mut conn).await?;
    let since = crate::clock::now_ms().saturating_sub(LIVE_FOR.as_millis() as u64);
    Ok(all
        .into_iter()
        .filter_map(|(kind, json)| Some((kind, serde_json::from_str::<Handler>(&json).ok()?)))
        .filter(|(_, handler)| handler.seen_at >= since)
        .collect())
}

/// Why a kind is refused or warned about: live workers advertise kinds, and none of them is this one.
pub fn unhandled(kind: &str, handled: &BTreeMap<String, Handler>) -> Option<String> {
    if handled.is_empty() || handled.contains_key(kind) {
        return None;
    }
    let known: Vec<&str> = handled.keys().map(String::as_str).collect();
    Some(format!(
        "no live worker of this queue handles kind {kind:?} (its workers handle: {}); a worker that does not \
         know a kind dead-letters it as unknown_kind — enqueue it on the queue whose workers handle it",
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_unhandled_only_when_live_workers_advertise_others() {
        let mut handled = BTreeMap::new();
        assert_eq!(unhandled("resize", &handled), None, "no worker seen: nothing to say");
        handled.insert("email".to_owned(), Handler { consumer: "c".into(), language: "rust".into(), seen_at: 1 });
        assert_eq!(unhandled("email", &handled), None);
        let why = unhandled("resize", &handled).unwrap();
        assert!(why.contains("\"resize\"") && why.contains("email"), "{why}");
    }
}
