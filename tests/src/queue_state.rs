//! What a queue holds in Redis, read (or written) with plain commands for assertions. Key names come from the
//! library ([`keys`]), never spelled out here.

use std::collections::{BTreeMap, HashMap};

use jobstream::{Keys, QueueName};

/// The Redis keys of `queue` under the default prefix, named by the library.
pub fn keys(queue: &str) -> Keys {
    Keys::new("jobstream", &QueueName::parse(queue).expect("queue name")).expect("keys")
}

/// The `done` hash of a queue: job id → successful runs.
pub fn done_counts(conn: &mut redis::Connection, queue: &str) -> HashMap<String, u64> {
    redis::cmd("HGETALL").arg(keys(queue).done).query(conn).expect("HGETALL done")
}

/// Number of entries pending in the queue's group.
pub fn pending(conn: &mut redis::Connection, queue: &str, group: &str) -> u64 {
    let summary: redis::Value =
        redis::cmd("XPENDING").arg(keys(queue).stream).arg(group).query(conn).expect("XPENDING");
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// Number of entries pending for one consumer of the group.
pub fn pending_of(conn: &mut redis::Connection, queue: &str, group: &str, consumer: &str) -> u64 {
    let rows: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(keys(queue).stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query(conn)
        .expect("XPENDING for one consumer");
    rows.len() as u64
}

/// Writes an entry straight to a queue's stream, as any Redis client could; returns its id.
pub fn xadd_raw(conn: &mut redis::Connection, queue: &str, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys(queue).stream).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query(conn).expect("XADD")
}

/// The valid fields of a job of `kind`, as a producer in any language would write them.
pub fn job_fields(kind: &str) -> Vec<(String, String)> {
    vec![
        ("v".into(), "1".into()),
        ("id".into(), jobstream::JobId::new().to_string()),
        ("kind".into(), kind.into()),
        ("payload".into(), "{}".into()),
        ("enqueued_at".into(), jobstream::clock::now_ms().to_string()),
        ("attempt".into(), "1".into()),
    ]
}

/// The entries of stream `key`, fields as text (bytes that are not UTF-8 replaced).
pub fn entries_text(conn: &mut redis::Connection, key: &str) -> Vec<BTreeMap<String, String>> {
    let reply: Vec<(String, Vec<Vec<u8>>)> =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(conn).expect("XRANGE");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    reply.into_iter().map(|(_, flat)| flat.chunks(2).map(|kv| (text(&kv[0]), text(&kv[1]))).collect()).collect()
}

/// The dead stream's entries, fields as text.
pub fn dead_entries(conn: &mut redis::Connection, queue: &str) -> Vec<BTreeMap<String, String>> {
    entries_text(conn, &keys(queue).dead)
}

/// Length of a key's stream (0 when missing).
pub fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).expect("XLEN")
}
