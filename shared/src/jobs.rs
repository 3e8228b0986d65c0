//! One job by its id: where it is ([`show`]), stopping it ([`cancel`]) and what it returned ([`result`]).
//!
//! What a job's life writes is kept as cheap as the queue's hot path allows (measured in `bench/LIFECYCLE.md`):
//!
//! - A job enqueued to run at once writes nothing but its entry. A lookup finds a waiting or running job's entry
//!   by the time in its id (a UUIDv7 holds its creation time in ms; the stream id holds Redis's time of the XADD):
//!   it reads the stream from 10 s before to 10 s after, at most 100,000 entries, and the group's pending list
//!   says whether it runs and where.
//! - A job that finishes — done, or cancelled by its worker — gets one field in the hash of its hour,
//!   `<prefix>:{Q}:finished:<hour>` (job id → its final record, JSON: [`Finished`]), written in the acknowledgement
//!   batch's round trip with one HSET per batch; the hash expires the job retention (24 h by default) after its
//!   hour ends. A lookup reads the last 8 days of hours.
//! - Everything rarer keeps a per-job hash, `<prefix>:{Q}:job:<id>`, written by the step that happens anyway: a
//!   scheduled job (`state=delayed`, `run_at`, `kind`, `enqueued_at`, `traceparent`, with its ZADD), a failed
//!   attempt that runs again (`state=delayed`, `run_at`, `attempts`, `a:<n>`, in the settle script), a dead letter
//!   (`state=dead`/`expired`, `reason`, `error`, `dead_id`, `finished_at`, `a:<n>`, in the settle script), a
//!   promotion, a replay, a cron tick or an idempotent enqueue (`state=waiting`, `msg`, in their scripts), a
//!   handler's progress (`progress`), a cancel (`state=cancelled`, `cancel_requested_at`). It has no time to live
//!   while the job waits, and the job retention once it is final.
//!
//! `a:<n>` and a final record's `attempt` are attempt `n` as JSON ([`Attempt`]). Records are a view, never the
//! job: one that cannot be written (a key of another type, Redis full) never stops a job.
//!
//! A worker or producer with records off ([`crate::WorkerConfig::job_records`],
//! [`crate::Producer::with_job_records`]) writes none of this; a lookup then still finds a job waiting or running.

use std::time::Duration;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::connection::{Connection, Pool};
use crate::job::JobId;
use crate::keys::{GroupName, Keys};
use crate::queue::Queue;

/// How long a finished job's record (and its result) is kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest job retention a lookup sees: it reads this far back in the hourly hashes of finished jobs.
pub const MAX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The span of one hash of finished jobs.
pub(crate) const HOUR_MS: u64 = 3_600_000;
/// How far around the time in a job's id a lookup reads the stream for its entry.
const ENTRY_WINDOW_MS: u64 = 10_000;
/// Most entries a lookup reads for a job's entry.
const MAX_ENTRY_SCAN: usize = 100_000;

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

/// A finished job's final record: a field of the hourly hash `<prefix>:{Q}:finished:<hour>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    /// `done` or `cancelled`.
    pub state: JobState,
    /// Its kind.
    pub kind: String,
    /// When it was first enqueued (unix ms).
    pub enqueued_at: u64,
    /// The `traceparent` it was enqueued with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Its last stream entry.
    pub msg: String,
    /// When it finished (unix ms).
    pub finished_at: u64,
    /// Its last attempt; `None` when it was cancelled before it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
    /// What its handler gave [`crate::Job::set_result`] (JSON), if it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
}

/// What the keys of one partition hold about a job.
struct Found {
    keys: Keys,
    record: HashMap<String, String>,
    finished: Option<Finished>,
    /// Its entry on the stream (id, fields as text), when the record says where or a search found it.
    entry: Option<(String, Vec<(String, String)>)>,
}

/// Reads what partition `keys` holds about job `id`: its per-job hash and its final record (the hourly hashes of
/// the last [`MAX_RETENTION`] and an hour), in one round trip.
async fn read_records(conn: &mut Connection, keys: &Keys, id: &str) -> crate::Result<Found> {
    let hour = crate::clock::now_ms() / HOUR_MS;
    let hours = MAX_RETENTION.as_millis() as u64 / HOUR_MS + 1;
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL").arg(keys.job(id));
    for h in (hour.saturating_sub(hours)..=hour).rev() {
        pipe.cmd("HGET").arg(keys.finished(h)).arg(id);
    }
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let record: HashMap<String, String> = redis::from_redis_value(replies.remove(0)).unwrap_or_default();
    let finished = replies
        .into_iter()
        .find_map(|v| redis::from_redis_value::<Option<String>>(v).ok().flatten())
        .and_then(|json| serde_json::from_str(&json).ok());
    Ok(Found { keys: keys.clone(), record, finished, entry: None })
}

/// Finds job `id`'s records: the partition its id picks first, then the others (an idempotent job goes where its
/// key picks, a periodic one to partition 0); with none, its entry on its partition's stream.
async fn locate(conn: &mut Connection, queue: &Queue, id: &JobId) -> crate::Result<Option<Found>> {
    let mut partitions = queue.partition_keys();
    let first = id.partition(partitions.len());
    partitions.swap(0, first);
    let text = id.to_string();
    for keys in &partitions {
        let found = read_records(conn, keys, &text).await?;
        if !found.record.is_empty() || found.finished.is_some() {
            return Ok(Some(found));
        }
    }
    let keys = partitions.swap_remove(0);
    Ok(search_entry(conn, &keys.stream, id).await?.map(|entry| Found {
        keys,
        record: HashMap::new(),
        finished: None,
        entry: Some(entry),
    }))
}

/// Searches `stream` for job `id`'s entry around the time in its id (a UUIDv7's first 48 bits), or from the
/// start for another kind of id; at most [`MAX_ENTRY_SCAN`] entries.
async fn search_entry(
    conn: &mut Connection,
    stream: &str,
    id: &JobId,
) -> crate::Result<Option<(String, Vec<(String, String)>)>> {
    let (mut start, end) = match id.created_ms() {
        Some(ms) => (format!("{}", ms.saturating_sub(ENTRY_WINDOW_MS)), format!("{}", ms + ENTRY_WINDOW_MS)),
        None => ("-".to_owned(), "+".to_owned()),
    };
    let wanted = id.to_string();
    let mut scanned = 0;
    while scanned < MAX_ENTRY_SCAN {
        let page = match crate::stream::range(conn, stream, &start, &end, 1000).await {
            Ok(page) => page,
            Err(e) if e.code() == Some("WRONGTYPE") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let last = page.len() < 1000;
        for (entry_id, raw) in page {
            scanned += 1;
            let is_it = raw.iter().any(|(k, v)| k.as_slice() == b"id" && v.as_slice() == wanted.as_bytes());
            if is_it {
                let fields = raw
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                return Ok(Some((entry_id, fields)));
            }
            start = format!("({entry_id}");
        }
        if last {
            break;
        }
    }
    Ok(None)
}

/// Looks job `id` up on `queue` (its pending list read in `group`); `None` when nothing is known of it (never
/// enqueued there, finished longer ago than the retention, or waiting with a producer clock more than 10 s off).
pub async fn show(pool: &Pool, queue: &Queue, group: &GroupName, id: &JobId) -> crate::Result<Option<JobStatus>> {
    let mut conn = pool.get().await?;
    let Some(mut found) = locate(&mut conn, queue, id).await? else { return Ok(None) };
    let record = &found.record;
    let keys = found.keys.clone();
    let number = |name: &str| record.get(name).and_then(|v| v.parse::<u64>().ok());
    let json = |text: &str| serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
    let mut attempts: Vec<Attempt> = record
        .iter()
        .filter(|(name, _)| name.starts_with(field::ATTEMPT_PREFIX))
        .filter_map(|(_, value)| serde_json::from_str(value).ok())
        .collect();
    let recorded = record.get(field::STATE).and_then(|s| JobState::parse(s));
    // A final record loses to a dead or expired state in the hash, whenever it was written: a consumer paused past
    // the visibility timeout may resume, finish the job and acknowledge it after its new owner dead-lettered it
    // (the acknowledgement finds nothing pending; the record goes with it in the same round trip). Only a replay
    // runs a dead job again, and a replay sets the hash back to `waiting`. Against the other final states the
    // later one wins.
    let finished = found.finished.take().filter(|f| match recorded {
        Some(JobState::Dead | JobState::Expired) => false,
        Some(state) if state.is_final() => number(field::FINISHED_AT).is_none_or(|at| at <= f.finished_at),
        _ => true,
    });
    let mut state = finished.as_ref().map(|f| f.state).or(recorded).unwrap_or(JobState::Waiting);
    if let Some(last) = finished.as_ref().and_then(|f| f.attempt.clone()) {
        attempts.retain(|a| a.n != last.n);
        attempts.push(last);
    }
    attempts.sort_by_key(|a| a.n);
    let mut status = JobStatus {
        id: id.to_string(),
        queue: keys.queue().to_string(),
        state,
        kind: finished.as_ref().map(|f| f.kind.clone()).or_else(|| record.get(field::KIND).cloned()),
        enqueued_at: finished.as_ref().map(|f| f.enqueued_at).or_else(|| number(field::ENQUEUED_AT)),
        attempt: None,
        consumer: None,
        deliveries: None,
        run_at: number(field::RUN_AT).filter(|_| state == JobState::Delayed),
        message_id: finished.as_ref().map(|f| f.msg.clone()).or_else(|| record.get(field::MSG).cloned()),
        payload: None,
        attempts,
        progress: record.get(field::PROGRESS).map(|p| json(p)),
        result: finished.as_ref().and_then(|f| f.result.as_ref()).map(|r| json(r.get())),
        reason: record.get(field::REASON).cloned(),
        error: record.get(field::ERROR).cloned(),
        dead_id: record.get(field::DEAD_ID).cloned(),
        finished_at: finished.as_ref().map(|f| f.finished_at).or_else(|| number(field::FINISHED_AT)),
        cancel_requested_at: number(field::CANCEL_REQUESTED_AT),
        trace_id: finished
            .as_ref()
            .and_then(|f| f.traceparent.as_deref())
            .or(record.get(field::TRACEPARENT).map(String::as_str))
            .and_then(trace_id_of),
    };
    if state == JobState::Delayed {
        status.attempt = Some(status.attempts.last().map_or(1, |a| a.n + 1));
    }
    // The entry the job is (or was) on: the stream's while it waits or runs, the dead stream's once dead.
    let entry = match (state, found.entry.take(), &status.message_id, &status.dead_id) {
        (_, Some((msg, fields)), _, _) => {
            status.message_id = Some(msg);
            Some(fields)
        }
        (JobState::Dead | JobState::Expired, _, _, Some(dead_id)) => read_entry(&mut conn, &keys.dead, dead_id).await?,
        (_, _, Some(msg), _) => read_entry(&mut conn, &keys.stream, msg).await?,
        (JobState::Waiting, None, None, _) => match search_entry(&mut conn, &keys.stream, id).await? {
            Some((msg, fields)) => {
                status.message_id = Some(msg);
                Some(fields)
            }
            None => None,
        },
        _ => None,
    };
    if let Some(fields) = &entry {
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        status.kind = status.kind.or_else(|| get(crate::job::field::KIND));
        status.enqueued_at = status.enqueued_at.or_else(|| get(crate::job::field::ENQUEUED_AT)?.parse().ok());
        status.trace_id = status.trace_id.or_else(|| trace_id_of(&get(crate::job::field::TRACEPARENT)?));
        status.payload = get(crate::job::field::PAYLOAD).map(|p| json(&p));
        if state == JobState::Waiting {
            status.attempt = get(crate::job::field::ATTEMPT).and_then(|a| a.parse().ok());
        }
    }
    if state == JobState::Waiting {
        let Some(msg) = status.message_id.clone() else { return Ok(None) };
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
            // Acknowledged (or trimmed) with no final record: its record's write did not land (Redis was full,
            // or records are off). It is not waiting any more.
            state = JobState::Done;
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
async fn read_entry(conn: &mut Connection, stream: &str, id: &str) -> crate::Result<Option<Vec<(String, String)>>> {
    let found = match crate::stream::range(conn, stream, id, id, 1).await {
        Ok(found) => found,
        // Not a stream (or not an id): nothing to show from it.
        Err(e) if matches!(e.code(), Some("WRONGTYPE") | Some("ERR")) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(found.into_iter().find(|(entry, _)| entry == id).map(|(_, raw)| {
        raw.into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }))
}

/// True when entry `msg` was delivered to `group` already (its id is not after the group's last delivered one).
async fn delivered(conn: &mut Connection, keys: &Keys, group: &GroupName, msg: &str) -> crate::Result<bool> {
    let groups: Vec<HashMap<String, redis::Value>> =
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
    /// Nothing is known of the job (see [`show`]).
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
    let Some(found) = locate(&mut conn, queue, id).await? else { return Ok(CancelOutcome::NotFound) };
    if let Some(finished) = &found.finished {
        return Ok(CancelOutcome::Already { state: finished.state });
    }
    let keys = &found.keys;
    // The entry to act on when the record does not name it: found by the search, or searched now.
    let msg = match (&found.entry, found.record.contains_key(field::STATE) || found.record.contains_key(field::MSG)) {
        (Some((msg, _)), _) => msg.clone(),
        (None, true) => String::new(),
        (None, false) => search_entry(&mut conn, &keys.stream, id).await?.map(|(msg, _)| msg).unwrap_or_default(),
    };
    let (outcome, detail): (String, String) = CANCEL
        .key(keys.job(&id.to_string()))
        .key(&keys.stream)
        .arg(group.as_str())
        .arg(now)
        .arg(retention.as_millis().max(1) as u64)
        .arg(&msg)
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

/// A job's state and result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredResult {
    /// The job's state, as [`show`] says.
    pub state: JobState,
    /// What its handler returned (JSON), if it is done and returned something.
    pub result: Option<serde_json::Value>,
}

/// The result of job `id` on `queue`; `None` when nothing is known of it.
pub async fn result(pool: &Pool, queue: &Queue, group: &GroupName, id: &JobId) -> crate::Result<Option<StoredResult>> {
    Ok(show(pool, queue, group, id).await?.map(|status| StoredResult { state: status.state, result: status.result }))
}
