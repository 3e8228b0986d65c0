//! One job by its id: where it is ([`show`]), stopping it ([`cancel`]) and what it returned ([`result`]).
//!
//! Each job has a status record, the hash `<prefix>:{Q}:job:<id>` in the slot of the partition the job goes to,
//! written only at transitions that write anyway, by the same command or script:
//!
//! | written by | fields |
//! |---|---|
//! | enqueue (and a replayed dead letter, a cron tick, a promoted delayed job) | `state=waiting`, `msg` (entry id) |
//! | a job scheduled for later | `state=delayed`, `run_at`, `kind`, `enqueued_at`, `traceparent` |
//! | a failed attempt that will run again | `state=delayed`, `run_at`, `attempts`, `a:<n>` |
//! | the last attempt, done or cancelled (with the XACK) | `state=done`/`cancelled`, `finished_at`, `attempts`, `a:<n>`, `result` |
//! | a dead letter (with the move) | `state=dead`/`expired`, `reason`, `error`, `dead_id`, `finished_at`, `attempts`, `a:<n>` |
//! | a handler reporting progress | `progress` |
//! | a cancel | `state=cancelled` or `cancel_requested_at` |
//!
//! `a:<n>` is attempt `n` as JSON ([`Attempt`]). A finished record expires after the worker's job retention
//! (24 h by default, the result with it); a waiting or delayed one has no time to live. `running` is not written:
//! a lookup finds a waiting job's entry in the consumer group's pending list, with its consumer. Records are a
//! view, never the job: a record that cannot be written (a key of another type) never stops a job, and a lookup
//! checks a `waiting` record against the stream.
//!
//! A worker or producer with records off ([`crate::WorkerConfig::job_records`],
//! [`crate::Producer::with_job_records`]) writes none of this; its jobs are then unknown to [`show`] and
//! [`cancel`] until a record-keeping worker settles them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::Pool;
use crate::job::JobId;
use crate::keys::{GroupName, Keys};
use crate::queue::Queue;

/// How long a finished job's record (and its result) is kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Field names of the status record.
pub(crate) mod field {
    pub(crate) const STATE: &str = "state";
    pub(crate) const MSG: &str = "msg";
    pub(crate) const RUN_AT: &str = "run_at";
    pub(crate) const KIND: &str = "kind";
    pub(crate) const ENQUEUED_AT: &str = "enqueued_at";
    pub(crate) const TRACEPARENT: &str = "traceparent";
    pub(crate) const ATTEMPTS: &str = "attempts";
    pub(crate) const FINISHED_AT: &str = "finished_at";
    pub(crate) const RESULT: &str = "result";
    pub(crate) const PROGRESS: &str = "progress";
    pub(crate) const REASON: &str = "reason";
    pub(crate) const ERROR: &str = "error";
    pub(crate) const DEAD_ID: &str = "dead_id";
    pub(crate) const CANCEL_REQUESTED_AT: &str = "cancel_requested_at";
    /// Prefix of the per-attempt fields, `a:<n>`.
    pub(crate) const ATTEMPT_PREFIX: &str = "a:";
}

static CANCEL: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/cancel.lua")));

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// On the stream, not yet delivered to a consumer.
    Waiting,
    /// Delivered to a consumer and not settled: running, or held by a consumer that stopped (taken over after
    /// the visibility timeout).
    Running,
    /// In the delayed set: scheduled for later, or a retry waiting for its back-off.
    Delayed,
    /// Its last attempt succeeded.
    Done,
    /// Dead-lettered (failed every attempt, failed permanently, or could not run).
    Dead,
    /// Cancelled: never ran, or stopped while running.
    Cancelled,
    /// Its deadline passed before an attempt started: dead-lettered with reason `expired`, never run.
    Expired,
}

impl JobState {
    /// The state's name, as the JSON has it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::Delayed => "delayed",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "waiting" => Self::Waiting,
            "running" => Self::Running,
            "delayed" => Self::Delayed,
            "done" => Self::Done,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// True for the states a job never leaves (done, dead, cancelled, expired).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Dead | Self::Cancelled | Self::Expired)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished attempt, as the record's `a:<n>` field holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The attempt's number, 1-based.
    pub n: u32,
    /// The consumer that ran it.
    pub consumer: String,
    /// When it started (unix ms).
    pub started_at: u64,
    /// When it ended (unix ms).
    pub ended_at: u64,
    /// `done`, `failed`, `timeout`, `cancelled`, or the dead-letter reason of an attempt that never ran.
    pub outcome: String,
    /// The failure, `<error.type>: <message>`, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The trace of its `process` span (32 hex digits).
    pub trace_id: String,
    /// Its `process` span (16 hex digits).
    pub span_id: String,
}

/// Everything known about one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// The job's id.
    pub id: String,
    /// The queue (the partition's, `<queue>:<i>`, for a partitioned queue) it is on.
    pub queue: String,
    /// Where it is.
    pub state: JobState,
    /// Its kind, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// When it was first enqueued (unix ms), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<u64>,
    /// The attempt now running or next to run (waiting, running, delayed), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The consumer running it (`running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// How many times its entry was delivered (`running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    /// When it is due (`delayed`, unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<u64>,
    /// Its stream entry id (waiting, running, and after it finished while the entry is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Its payload, when the entry is still readable (JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Its finished attempts, in order.
    pub attempts: Vec<Attempt>,
    /// The last progress its handler reported (JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    /// What its handler returned (JSON), once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The dead-letter reason (`dead`, `expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last error (`dead`, `expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its entry in the dead stream (`dead`, `expired`), for `producer dead show|replay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_id: Option<String>,
    /// When it reached its final state (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// When a cancel was asked for (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<u64>,
    /// The trace it was enqueued in (32 hex digits), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The keys of the partition holding job `id`'s record: the one its id picks, where every job but an
/// idempotent one (placed by its key) or a periodic one (partition 0) is; the others are looked at after it.
/// `None` when no partition has a record of it.
async fn keys_of(conn: &mut crate::connection::Connection, queue: &Queue, id: &JobId) -> crate::Result<Option<Keys>> {
    let mut partitions = queue.partition_keys();
    let first = id.partition(partitions.len());
    partitions.swap(0, first);
    let id = id.to_string();
    for keys in partitions {
        let exists: bool = redis::cmd("EXISTS").arg(keys.job(&id)).query_async(conn).await?;
        if exists {
            return Ok(Some(keys));
        }
    }
    Ok(None)
}

/// Looks job `id` up on `queue` (its pending list read in `group`); `None` when it has no record (never
/// enqueued here, enqueued with records off, or finished longer ago than the retention).
pub async fn show(pool: &Pool, queue: &Queue, group: &GroupName, id: &JobId) -> crate::Result<Option<JobStatus>> {
    let mut conn = pool.get().await?;
    let Some(keys) = keys_of(&mut conn, queue, id).await? else { return Ok(None) };
    let record: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(keys.job(&id.to_string())).query_async(&mut conn).await?;
    let Some(mut state) = record.get(field::STATE).and_then(|s| JobState::parse(s)) else {
        return Ok(None);
    };
    let number = |name: &str| record.get(name).and_then(|v| v.parse::<u64>().ok());
    let json = |name: &str| {
        record.get(name).map(|v| serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone())))
    };
    let mut attempts: Vec<Attempt> = record
        .iter()
        .filter(|(name, _)| name.starts_with(field::ATTEMPT_PREFIX))
        .filter_map(|(_, value)| serde_json::from_str(value).ok())
        .collect();
    attempts.sort_by_key(|a| a.n);
    let mut status = JobStatus {
        id: id.to_string(),
        queue: keys.queue().to_string(),
        state,
        kind: record.get(field::KIND).cloned(),
        enqueued_at: number(field::ENQUEUED_AT),
        attempt: None,
        consumer: None,
        deliveries: None,
        run_at: number(field::RUN_AT).filter(|_| state == JobState::Delayed),
        message_id: record.get(field::MSG).cloned(),
        payload: None,
        attempts,
        progress: json(field::PROGRESS),
        result: json(field::RESULT),
        reason: record.get(field::REASON).cloned(),
        error: record.get(field::ERROR).cloned(),
        dead_id: record.get(field::DEAD_ID).cloned(),
        finished_at: number(field::FINISHED_AT),
        cancel_requested_at: number(field::CANCEL_REQUESTED_AT),
        trace_id: record.get(field::TRACEPARENT).and_then(|tp| trace_id_of(tp)),
    };
    if state == JobState::Delayed {
        status.attempt = Some(status.attempts.last().map_or(1, |a| a.n + 1));
    }
    // The entry the job is (or was) on: the stream's while it waits or runs, the dead stream's once dead.
    let entry = match (state, &status.message_id, &status.dead_id) {
        (JobState::Dead | JobState::Expired, _, Some(dead_id)) => read_entry(&mut conn, &keys.dead, dead_id).await?,
        (_, Some(msg), _) => read_entry(&mut conn, &keys.stream, msg).await?,
        _ => None,
    };
    if let Some(fields) = &entry {
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        status.kind = status.kind.or_else(|| get(crate::job::field::KIND));
        status.enqueued_at = status.enqueued_at.or_else(|| get(crate::job::field::ENQUEUED_AT)?.parse().ok());
        status.trace_id = status.trace_id.or_else(|| trace_id_of(&get(crate::job::field::TRACEPARENT)?));
        status.payload =
            get(crate::job::field::PAYLOAD).map(|p| serde_json::from_str(&p).unwrap_or(serde_json::Value::String(p)));
        if state == JobState::Waiting {
            status.attempt = get(crate::job::field::ATTEMPT).and_then(|a| a.parse().ok());
        }
    }
    if state == JobState::Waiting {
        if let Some(msg) = status.message_id.clone() {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&keys.stream)
                .arg(group.as_str())
                .arg(&msg)
                .arg(&msg)
                .arg(1)
                .query_async(&mut conn)
                .await
                .or_else(|e| if crate::stream::is_no_group(&e) { Ok(Vec::new()) } else { Err(e) })?;
            if let Some((_, consumer, _idle, deliveries)) = pending.into_iter().next() {
                state = JobState::Running;
                status.consumer = Some(consumer);
                status.deliveries = Some(deliveries);
            } else if entry.is_none() || delivered(&mut conn, &keys, group, &msg).await? {
                // Acknowledged (or trimmed) while its record still says waiting: the settle's record update
                // did not land (Redis was full) or is on its way. It is not waiting any more.
                state = JobState::Done;
            }
        }
    }
    status.state = state;
    Ok(Some(status))
}

/// The trace id in a `traceparent` value.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_owned())
}

/// The fields of entry `id` of `stream`, as text, if it exists.
async fn read_entry(
    conn: &mut crate::connection::Connection,
    stream: &str,
    id: &str,
) -> crate::Result<Option<Vec<(String, String)>>> {
    let found: redis::streams::StreamRangeReply =
        match redis::cmd("XRANGE").arg(stream).arg(id).arg(id).query_async(conn).await {
            Ok(found) => found,
            // Not a stream (or not an id): nothing to show from it.
            Err(e) if e.code() == Some("WRONGTYPE") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    let Some(entry) = found.ids.into_iter().find(|e| e.id == id) else { return Ok(None) };
    Ok(Some(entry.map.into_iter().filter_map(|(k, v)| Some((k, redis::from_redis_value::<String>(v).ok()?))).collect()))
}

/// True when entry `msg` was delivered to `group` already (its id is not after the group's last delivered one).
async fn delivered(
    conn: &mut crate::connection::Connection,
    keys: &Keys,
    group: &GroupName,
    msg: &str,
) -> crate::Result<bool> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        match redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query_async(conn).await {
            Ok(groups) => groups,
            Err(_) => return Ok(false),
        };
    let last = groups.into_iter().find_map(|g| {
        let name: String = redis::from_redis_value(g.get("name")?.clone()).ok()?;
        (name == group.as_str()).then(|| redis::from_redis_value::<String>(g.get("last-delivered-id")?.clone()).ok())?
    });
    Ok(last.is_some_and(|last| parse_id(msg) <= parse_id(&last)))
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// What a [`cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job was waiting (`from: waiting`, its entry deleted) or delayed (`from: delayed`): it never runs.
    Cancelled {
        /// The state it was cancelled from.
        from: JobState,
    },
    /// The job is running: its consumer's worker cancels the attempt's token within a poll period (250 ms) and
    /// settles it as `cancelled` (not retried); a consumer that stopped leaves it to the one that takes it over.
    Signalled {
        /// The consumer that holds it.
        consumer: String,
    },
    /// Nothing to do: the job was already cancelled, or finished (`done`, `dead`, `expired`).
    Already {
        /// Its state.
        state: JobState,
    },
    /// No record of the job (see [`show`]).
    NotFound,
}

impl CancelOutcome {
    /// True when the job is (or will be) cancelled, or already was: a repeated cancel succeeds.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled { .. } | Self::Signalled { .. } | Self::Already { state: JobState::Cancelled })
    }
}

/// Cancels job `id` on `queue` (`group` is the consumer group whose delivery of it counts as running): see
/// [`CancelOutcome`]. Idempotent. A cancelled record expires after `retention`.
pub async fn cancel(
    pool: &Pool,
    queue: &Queue,
    group: &GroupName,
    id: &JobId,
    retention: Duration,
) -> crate::Result<CancelOutcome> {
    let now = crate::clock::now_ms();
    let mut conn = pool.get().await?;
    let Some(keys) = keys_of(&mut conn, queue, id).await? else { return Ok(CancelOutcome::NotFound) };
    let (outcome, detail): (String, String) = CANCEL
        .key(keys.job(&id.to_string()))
        .key(&keys.stream)
        .arg(group.as_str())
        .arg(now)
        .arg(retention.as_millis().max(1) as u64)
        .invoke_async(&mut conn)
        .await?;
    let state = |text: &str| JobState::parse(text).unwrap_or(JobState::Done);
    Ok(match outcome.as_str() {
        "cancelled" => CancelOutcome::Cancelled { from: state(&detail) },
        "signalled" => {
            // Every worker process of the queue polls this set; trimmed to a day and 100,000 ids.
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD")
                .arg(&keys.cancels)
                .arg(now)
                .arg(id.to_string())
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&keys.cancels)
                .arg("-inf")
                .arg(now.saturating_sub(CANCEL_MEMORY.as_millis() as u64))
                .ignore()
                .cmd("ZREMRANGEBYRANK")
                .arg(&keys.cancels)
                .arg(0)
                .arg(-(MAX_CANCELS as i64) - 1)
                .ignore();
            pipe.query_async::<()>(&mut conn).await?;
            CancelOutcome::Signalled { consumer: detail }
        }
        "already" => CancelOutcome::Already { state: state(&detail) },
        "gone" => CancelOutcome::Already { state: JobState::Done },
        _ => CancelOutcome::NotFound,
    })
}

/// How long a running job's cancel request stays in the queue's cancel set (a consumer that takes the job over
/// later than this runs it).
pub(crate) const CANCEL_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Most ids the cancel set keeps.
pub(crate) const MAX_CANCELS: usize = 100_000;

/// A job's state and result, read with one command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredResult {
    /// The job's state as its record says (`waiting` covers `running`).
    pub state: JobState,
    /// What its handler returned (JSON), if it is done and returned something.
    pub result: Option<serde_json::Value>,
}

/// The result of job `id` on `queue`; `None` when it has no record.
pub async fn result(pool: &Pool, queue: &Queue, id: &JobId) -> crate::Result<Option<StoredResult>> {
    let mut conn = pool.get().await?;
    let Some(keys) = keys_of(&mut conn, queue, id).await? else { return Ok(None) };
    let (state, result): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.job(&id.to_string()))
        .arg(field::STATE)
        .arg(field::RESULT)
        .query_async(&mut conn)
        .await?;
    let Some(state) = state.as_deref().and_then(JobState::parse) else { return Ok(None) };
    let result = result.map(|r| serde_json::from_str(&r).unwrap_or(serde_json::Value::String(r)));
    Ok(Some(StoredResult { state, result }))
}
