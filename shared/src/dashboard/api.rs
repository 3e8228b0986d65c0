//! The dashboard's JSON routes. Each answers `{"error": …}` with 400 (bad input), 404 (unknown job), 409 (a
//! cancel of a finished job) or 503 (Redis unavailable).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, Dashboard};
use crate::admin;
use crate::connection::Connection;
use crate::counts;
use crate::jobs::{self, CancelOutcome};
use crate::keys::{GroupName, Keys, QueueName};
use crate::queue::Queue;

type Shared = State<Arc<Dashboard>>;
type Answer = Result<Response, ApiError>;

/// Most queues listed: SCAN stops after this many streams.
const MAX_QUEUES: usize = 1000;
/// Most jobs one page lists.
const MAX_PAGE: usize = 200;
/// Most entries one page looks at to find its matches when filtering.
const MAX_SCANNED: usize = 5000;
/// Most dead letters one replay or purge of "all" moves.
const MAX_BULK: usize = 10_000;
/// Longest payload text a list shows.
const PREVIEW_CHARS: usize = 160;

fn queue_named(dashboard: &Dashboard, name: &str) -> Result<Queue, ApiError> {
    match &dashboard.queue {
        Some(queue) if queue.name().as_str() == name => Ok(queue.clone()),
        _ => Queue::new(name).and_then(|q| q.with_prefix(&dashboard.prefix)).map_err(|e| ApiError::bad(e.to_string())),
    }
}

fn keys_of(dashboard: &Dashboard, name: &str) -> Result<Keys, ApiError> {
    let queue = QueueName::parse(name).map_err(|e| ApiError::bad(e.to_string()))?;
    Keys::new(&dashboard.prefix, &queue).map_err(|e| ApiError::bad(e.to_string()))
}

async fn conn(dashboard: &Dashboard) -> Result<Connection, ApiError> {
    dashboard.pool.get().await.map_err(ApiError::unavailable)
}

/// The names of the queues under the prefix: every stream `<prefix>:{Q}` (a partition `<prefix>:{Q:i}` is listed
/// as `Q:i`), found with SCAN (never KEYS), and the dashboard's own queue; sorted.
async fn queue_names(dashboard: &Dashboard) -> Result<Vec<String>, ApiError> {
    let mut conn = conn(dashboard).await?;
    let pattern = format!("{}:{{*}}", dashboard.prefix);
    let mut names = std::collections::BTreeSet::new();
    if let Some(queue) = &dashboard.queue {
        for keys in queue.partition_keys() {
            names.insert(keys.queue().to_string());
        }
    }
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut conn)
            .await
            .map_err(ApiError::unavailable)?;
        for key in found {
            let inner = key.strip_prefix(&format!("{}:{{", dashboard.prefix)).and_then(|rest| rest.strip_suffix('}'));
            if let Some(name) = inner.filter(|n| QueueName::parse(n).is_ok()) {
                names.insert(name.to_owned());
            }
        }
        cursor = next;
        if cursor == 0 || names.len() >= MAX_QUEUES {
            break;
        }
    }
    Ok(names.into_iter().collect())
}

/// One point of a queue's last hour: per-minute counts.
#[derive(Debug, Serialize)]
struct Point {
    /// The minute's end (unix ms).
    t: u64,
    enqueued: u64,
    acknowledged: u64,
    dead: u64,
}

/// The queue's last hour from the workers' counter records ([`counts`]): one point per minute.
async fn history(conn: &mut Connection, keys: &Keys, group: &GroupName) -> Result<Vec<Point>, ApiError> {
    let records = counts::since(conn, keys, crate::clock::now_ms().saturating_sub(3_600_000))
        .await
        .map_err(ApiError::unavailable)?;
    let mut points = Vec::new();
    let mut last: Option<&counts::Counts> = None;
    for record in &records {
        let Some(prev) = last else {
            last = Some(record);
            continue;
        };
        if record.t < prev.t + 60_000 && !std::ptr::eq(record, records.last().expect("not empty")) {
            continue;
        }
        let delta = |now: Option<u64>, then: Option<u64>| now.zip(then).map_or(0, |(n, t)| n.saturating_sub(t));
        points.push(Point {
            t: record.t,
            enqueued: record.added.saturating_sub(prev.added),
            acknowledged: delta(record.acked(group.as_str()), prev.acked(group.as_str())),
            dead: record.dead.saturating_sub(prev.dead),
        });
        last = Some(record);
    }
    Ok(points)
}

/// A queue's row: its stats, the dashboard group's numbers pulled up, and its last hour.
#[derive(Serialize)]
struct QueueRow {
    #[serde(flatten)]
    stats: admin::QueueStats,
    pending: u64,
    lag: Option<u64>,
    oldest_pending_age_ms: Option<u64>,
    consumers: u64,
    history: Vec<Point>,
}

async fn row(dashboard: &Dashboard, name: &str) -> Result<QueueRow, ApiError> {
    let keys = keys_of(dashboard, name)?;
    let stats = admin::stats(&dashboard.pool, &keys).await.map_err(ApiError::unavailable)?;
    let mut conn = conn(dashboard).await?;
    let history = history(&mut conn, &keys, &dashboard.group).await?;
    let group = stats.groups.iter().find(|g| g.name == dashboard.group.as_str());
    Ok(QueueRow {
        pending: group.map_or(0, |g| g.pending),
        lag: group.and_then(|g| g.lag),
        oldest_pending_age_ms: group.and_then(|g| g.oldest_pending_age_ms),
        consumers: group.map_or(0, |g| g.consumers),
        history,
        stats,
    })
}

/// `GET /v1/queues`: `{"queues": [row…]}`, each row a queue's stats (as `producer stats --json`) with the
/// group's `pending`, `lag`, `oldest_pending_age_ms` and `consumers`, and `history` (per-minute counts).
pub(crate) async fn queues(State(dashboard): Shared) -> Answer {
    let mut rows = Vec::new();
    for name in queue_names(&dashboard).await? {
        rows.push(row(&dashboard, &name).await?);
    }
    Ok(Json(serde_json::json!({ "queues": rows, "group": dashboard.group.as_str() })).into_response())
}

/// `GET /v1/queues/{queue}`: its row and its periodic schedules.
pub(crate) async fn queue(State(dashboard): Shared, Path(name): Path<String>) -> Answer {
    let row = row(&dashboard, &name).await?;
    let queue = queue_named(&dashboard, &name)?;
    let schedules = crate::cron::list(&dashboard.pool, &queue).await.map_err(ApiError::unavailable)?;
    let schedules: Vec<serde_json::Value> = schedules
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "name": s.schedule.name.to_string(),
                "cadence": s.schedule.cadence.to_string(),
                "kind": s.schedule.kind.to_string(),
                "paused": s.schedule.paused,
                "last_tick_ms": s.last_tick_ms,
                "next_tick_ms": s.next_tick_ms,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "queue": row, "schedules": schedules })).into_response())
}

/// `?state=&start=&count=&kind=&text=` of the job lists.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobsQuery {
    state: String,
    start: Option<String>,
    count: Option<usize>,
    kind: Option<String>,
    text: Option<String>,
}

/// One job in a list.
#[derive(Serialize, Default)]
struct JobRow {
    id: String,
    kind: String,
    state: &'static str,
    /// The stream entry (waiting, running) or dead entry (dead).
    entry: String,
    attempt: Option<u32>,
    enqueued_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    trace_id: Option<String>,
    payload: String,
}

impl JobRow {
    fn from_fields(state: &'static str, entry: String, fields: &BTreeMap<String, String>) -> Self {
        let get = |name: &str| fields.get(name).cloned();
        let payload = get("payload").unwrap_or_default();
        Self {
            id: get("id").unwrap_or_default(),
            kind: get("kind").unwrap_or_default(),
            state,
            entry,
            attempt: get("attempt").and_then(|a| a.parse().ok()),
            enqueued_at: get("enqueued_at").and_then(|a| a.parse().ok()),
            reason: get("dead.reason"),
            error: get("dead.error"),
            trace_id: get("traceparent").and_then(|tp| tp.split('-').nth(1).map(str::to_owned)),
            payload: if payload.chars().count() > PREVIEW_CHARS {
                format!("{}…", payload.chars().take(PREVIEW_CHARS).collect::<String>())
            } else {
                payload
            },
            ..Self::default()
        }
    }

    fn matches(&self, kind: Option<&str>, text: Option<&str>) -> bool {
        kind.is_none_or(|k| self.kind == k)
            && text.is_none_or(|t| {
                let t = t.to_lowercase();
                [&self.id, &self.payload, &self.entry].iter().any(|f| f.to_lowercase().contains(&t))
                    || self.error.as_deref().is_some_and(|e| e.to_lowercase().contains(&t))
            })
    }
}

fn text_fields(raw: Vec<(Vec<u8>, Vec<u8>)>) -> BTreeMap<String, String> {
    raw.into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// The group's last delivered id: entries after it wait.
async fn last_delivered(conn: &mut Connection, keys: &Keys, group: &GroupName) -> Result<Option<String>, ApiError> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        match redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query_async(conn).await {
            Ok(groups) => groups,
            Err(e) if e.code() == Some("ERR") || e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(ApiError::unavailable(e)),
        };
    Ok(groups.into_iter().find_map(|g| {
        let name: String = redis::from_redis_value(g.get("name")?.clone()).ok()?;
        (name == group.as_str()).then(|| redis::from_redis_value(g.get("last-delivered-id")?.clone()).ok())?
    }))
}

/// `GET /v1/queues/{queue}/jobs?state=waiting|running|delayed|dead[&start=][&count=50][&kind=K][&text=T]`:
/// `{"jobs": [row…], "next": cursor|null}`; `next` is the `start` of the following page. `kind` keeps one kind,
/// `text` the jobs whose id, payload, entry or error contains it (case-insensitive); a page looks at up to 5,000
/// entries to find its matches.
pub(crate) async fn jobs(
    State(dashboard): Shared,
    Path(name): Path<String>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Answer {
    let Query(query) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let keys = keys_of(&dashboard, &name)?;
    let count = query.count.unwrap_or(50).clamp(1, MAX_PAGE);
    let (kind, text) =
        (query.kind.as_deref().filter(|k| !k.is_empty()), query.text.as_deref().filter(|t| !t.is_empty()));
    let mut conn = conn(&dashboard).await?;
    let mut rows = Vec::new();
    let mut scanned = 0;
    let mut next = None;
    match query.state.as_str() {
        "waiting" | "dead" => {
            let dead = query.state == "dead";
            let key = if dead { &keys.dead } else { &keys.stream };
            let mut start = match (&query.start, dead) {
                (Some(start), _) => start.clone(),
                (None, true) => "-".to_owned(),
                (None, false) => match last_delivered(&mut conn, &keys, &dashboard.group).await? {
                    Some(last) => format!("({last}"),
                    None => "-".to_owned(),
                },
            };
            'pages: loop {
                let page =
                    crate::stream::range(&mut conn, key, &start, "+", 200).await.map_err(ApiError::unavailable)?;
                let exhausted = page.len() < 200;
                for (id, raw) in page {
                    scanned += 1;
                    start = format!("({id}");
                    let row = JobRow::from_fields(if dead { "dead" } else { "waiting" }, id, &text_fields(raw));
                    if row.matches(kind, text) {
                        rows.push(row);
                    }
                    if rows.len() == count || scanned >= MAX_SCANNED {
                        next = Some(start.clone());
                        break 'pages;
                    }
                }
                if exhausted {
                    break;
                }
            }
        }
        "running" => {
            let start = query.start.clone().unwrap_or_else(|| "-".to_owned());
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&keys.stream)
                .arg(dashboard.group.as_str())
                .arg(&start)
                .arg("+")
                .arg(count)
                .query_async(&mut conn)
                .await
                .or_else(|e| if crate::stream::is_no_group(&e) { Ok(Vec::new()) } else { Err(e) })
                .map_err(ApiError::unavailable)?;
            if pending.len() == count {
                next = pending.last().map(|(id, ..)| format!("({id}"));
            }
            for (id, consumer, idle_ms, _) in pending {
                let found =
                    crate::stream::range(&mut conn, &keys.stream, &id, &id, 1).await.map_err(ApiError::unavailable)?;
                let fields = found.into_iter().next().map(|(_, raw)| text_fields(raw)).unwrap_or_default();
                let mut row = JobRow::from_fields("running", id, &fields);
                row.consumer = Some(consumer);
                row.idle_ms = Some(idle_ms);
                if row.matches(kind, text) {
                    rows.push(row);
                }
            }
        }
        "delayed" => {
            let mut offset: usize = match &query.start {
                Some(start) => start.parse().map_err(|_| ApiError::bad("start of a delayed page is an offset"))?,
                None => 0,
            };
            'delayed: loop {
                let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(&keys.delayed)
                    .arg(offset)
                    .arg(offset + 199)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .map_err(ApiError::unavailable)?;
                let exhausted = members.len() < 200;
                for (member, due) in members {
                    offset += 1;
                    scanned += 1;
                    let values: Vec<String> = serde_json::from_str(&member).unwrap_or_default();
                    let fields: BTreeMap<String, String> =
                        values.chunks(2).filter(|p| p.len() == 2).map(|p| (p[0].clone(), p[1].clone())).collect();
                    let mut row = JobRow::from_fields("delayed", String::new(), &fields);
                    row.run_at = Some(due as u64);
                    if row.matches(kind, text) {
                        rows.push(row);
                    }
                    if rows.len() == count || scanned >= MAX_SCANNED {
                        next = Some(offset.to_string());
                        break 'delayed;
                    }
                }
                if exhausted {
                    break;
                }
            }
        }
        other => return Err(ApiError::bad(format!("state {other:?}: use waiting, running, delayed or dead"))),
    }
    Ok(Json(serde_json::json!({ "jobs": rows, "next": next, "scanned": scanned })).into_response())
}

async fn set_paused(dashboard: &Dashboard, name: &str, pause: bool) -> Answer {
    let queue = queue_named(dashboard, name)?;
    let changed = if pause {
        crate::pause::pause(&dashboard.pool, &queue).await
    } else {
        crate::pause::resume(&dashboard.pool, &queue).await
    }
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the queue is unavailable: {e}")))?;
    tracing::info!(%queue, paused = pause, changed, "queue pause state set");
    Ok(Json(serde_json::json!({ "queue": queue.name().as_str(), "paused": pause, "changed": changed })).into_response())
}

/// `POST /v1/queues/{queue}/pause`: `200 {"queue", "paused": true, "changed"}`.
pub(crate) async fn pause(State(dashboard): Shared, Path(name): Path<String>) -> Answer {
    set_paused(&dashboard, &name, true).await
}

/// `POST /v1/queues/{queue}/resume`: `200 {"queue", "paused": false, "changed"}`.
pub(crate) async fn resume(State(dashboard): Shared, Path(name): Path<String>) -> Answer {
    set_paused(&dashboard, &name, false).await
}

/// The dead letters an action applies to: `{"ids": [dead entry ids]}` or `{"all": true}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

fn selection(body: Result<Json<Selection>, JsonRejection>) -> Result<Selection, ApiError> {
    let Json(selection) = body.map_err(|e| ApiError::bad(e.body_text()))?;
    if selection.all != selection.ids.is_empty() {
        return Err(ApiError::bad("give either \"ids\" (dead entry ids) or \"all\": true"));
    }
    if selection.ids.len() > MAX_BULK {
        return Err(ApiError::bad(format!("at most {MAX_BULK} ids at once")));
    }
    Ok(selection)
}

/// `POST /v1/queues/{queue}/dead/replay {"ids"|"all"}`: puts the dead letters back on the queue as attempt 1
/// (new trace linked to the old one). `200 {"replayed": [{dead_id, message_id, job_id}], "failed": [{dead_id,
/// error}]}`.
pub(crate) async fn replay(
    State(dashboard): Shared,
    Path(name): Path<String>,
    body: Result<Json<Selection>, JsonRejection>,
) -> Answer {
    let selection = selection(body)?;
    let keys = keys_of(&dashboard, &name)?;
    let ids = if selection.all {
        admin::dead_list(&dashboard.pool, &keys, "-", MAX_BULK)
            .await
            .map_err(ApiError::unavailable)?
            .into_iter()
            .map(|d| d.dead_id)
            .collect()
    } else {
        selection.ids
    };
    let (mut replayed, mut failed) = (Vec::new(), Vec::new());
    for id in ids {
        match admin::replay(&dashboard.pool, &keys, &id).await {
            Ok(done) => replayed.push(serde_json::json!({
                "dead_id": done.dead_id, "message_id": done.message_id, "job_id": done.job_id
            })),
            Err(e @ crate::Error::Unavailable(_)) => return Err(ApiError::unavailable(e)),
            Err(e) => failed.push(serde_json::json!({ "dead_id": id, "error": e.to_string() })),
        }
    }
    tracing::info!(queue = %name, replayed = replayed.len(), failed = failed.len(), "dead letters replayed");
    Ok(Json(serde_json::json!({ "replayed": replayed, "failed": failed })).into_response())
}

/// `POST /v1/queues/{queue}/dead/purge {"ids"|"all"}`: deletes dead letters. `200 {"purged": n}`.
pub(crate) async fn purge(
    State(dashboard): Shared,
    Path(name): Path<String>,
    body: Result<Json<Selection>, JsonRejection>,
) -> Answer {
    let selection = selection(body)?;
    let keys = keys_of(&dashboard, &name)?;
    let purged = if selection.all {
        admin::dead_purge(&dashboard.pool, &keys).await.map_err(ApiError::unavailable)?
    } else {
        let mut conn = conn(&dashboard).await?;
        redis::cmd("XDEL")
            .arg(&keys.dead)
            .arg(&selection.ids)
            .query_async(&mut conn)
            .await
            .map_err(ApiError::unavailable)?
    };
    tracing::info!(queue = %name, purged, "dead letters purged");
    Ok(Json(serde_json::json!({ "purged": purged })).into_response())
}

/// `?queue=Q&group=G` on the job routes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobQuery {
    queue: Option<String>,
    group: Option<String>,
}

/// The queues a job route looks in: the one named, else the dashboard's own queue then every other.
async fn job_target(
    dashboard: &Dashboard,
    id: &str,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<(Vec<Queue>, GroupName, crate::JobId), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let id = crate::JobId::parse(id).map_err(|e| ApiError::bad(format!("not a job id (a UUID): {e}")))?;
    let group = match query.group {
        Some(group) => GroupName::parse(&group).map_err(|e| ApiError::bad(e.to_string()))?,
        None => dashboard.group.clone(),
    };
    let queues = match query.queue {
        Some(name) => vec![queue_named(dashboard, &name)?],
        None => {
            let mut queues: Vec<Queue> = dashboard.queue.iter().cloned().collect();
            let own: Vec<String> =
                queues.iter().flat_map(|q| q.partition_keys()).map(|k| k.queue().to_string()).collect();
            for name in queue_names(dashboard).await? {
                if !own.contains(&name) {
                    queues.push(queue_named(dashboard, &name)?);
                }
            }
            queues
        }
    };
    Ok((queues, group, id))
}

fn no_record(id: &crate::JobId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no record of job {id}"))
}

/// The status of job `id` in the first of `queues` that knows it.
async fn find_status(
    dashboard: &Dashboard,
    queues: &[Queue],
    group: &GroupName,
    id: &crate::JobId,
) -> Result<jobs::JobStatus, ApiError> {
    for queue in queues {
        if let Some(status) = jobs::show(&dashboard.pool, queue, group, id).await.map_err(ApiError::unavailable)? {
            return Ok(status);
        }
    }
    Err(no_record(id))
}

/// `GET /v1/jobs/{id}[?queue=Q][&group=G]`: `200` the job's status ([`jobs::JobStatus`], `state` at the top
/// level), `404` when no queue has a record of it.
pub(crate) async fn show_job(
    State(dashboard): Shared,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Answer {
    let (queues, group, id) = job_target(&dashboard, &id, query).await?;
    Ok(Json(find_status(&dashboard, &queues, &group, &id).await?).into_response())
}

/// `DELETE /v1/jobs/{id}[?queue=Q]`: cancels the job. `200 {"outcome": "cancelled"|"signalled"|"already", …}`
/// while it is (or already was) cancelled, `409` with the outcome when it already finished, `404` unknown.
pub(crate) async fn cancel_job(
    State(dashboard): Shared,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Answer {
    let (queues, group, id) = job_target(&dashboard, &id, query).await?;
    for queue in &queues {
        let outcome = jobs::cancel(&dashboard.pool, queue, &group, &id, jobs::DEFAULT_RETENTION)
            .await
            .map_err(ApiError::unavailable)?;
        if outcome == CancelOutcome::NotFound {
            continue;
        }
        tracing::info!(job_id = %id, %queue, ?outcome, "cancel requested");
        let status = if outcome.is_cancelled() { StatusCode::OK } else { StatusCode::CONFLICT };
        return Ok((status, Json(outcome)).into_response());
    }
    Err(no_record(&id))
}

/// `GET /v1/jobs/{id}/result[?queue=Q]`: `200 {"state", "result"}` (`result` null until done or when the
/// handler gave none), `404` unknown.
pub(crate) async fn job_result(
    State(dashboard): Shared,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Answer {
    let (queues, group, id) = job_target(&dashboard, &id, query).await?;
    let status = find_status(&dashboard, &queues, &group, &id).await?;
    Ok(Json(jobs::StoredResult { state: status.state, result: status.result }).into_response())
}

/// `GET /ui/config.json`: what the UI needs to know: read-only, the trace link template, the group.
pub(crate) async fn config(State(dashboard): Shared) -> Answer {
    Ok(Json(serde_json::json!({
        "read_only": dashboard.read_only,
        "trace_url_template": dashboard.trace_url_template,
        "group": dashboard.group.as_str(),
        "prefix": dashboard.prefix,
        "token_required": dashboard.token.is_some(),
    }))
    .into_response())
}
