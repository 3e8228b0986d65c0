//! `producer serve`: the HTTP API. `POST /v1/jobs` with `{"kind", "payload", "idempotency_key"?}` answers
//! `202 {"id", "trace_id"}`. `delay` (a duration text such as `"30s"`, or a whole number of milliseconds) or
//! `run_at` (RFC 3339 in UTC, e.g. `"2026-12-01T09:00:00Z"`) schedules the job for later; the answer then has
//! `scheduled_for` (unix ms) and an empty `message_id`. `POST /v1/queues/{queue}/pause` and `…/resume` pause and
//! resume a queue (under the server's key prefix) and answer `200 {"queue", "paused", "changed"}`. A schedule
//! takes no idempotency key. `timeout` (duration text or ms) bounds each attempt of the job; `deadline` (RFC
//! 3339, UTC) or `ttl` (duration) expires it if no attempt started by then. The request's `traceparent` (and
//! `tracestate`, `baggage`) is continued: the
//! SERVER span is its child and the job's `send` span the SERVER span's child, so one trace runs from the
//! caller through the queue to the worker. `/healthz`, `/readyz` and `/metrics` are served on the same port.
//!
//! Every error is JSON `{"error": …}` with its standard status: 400 a bad request, 401 (with
//! `WWW-Authenticate: Bearer`) a missing or wrong token, 404/405 an unknown route or method, 408 a request not
//! received and answered within `--request-timeout`, 409 an idempotency key used for another job (the body
//! names it in `id`), 413 a body or payload too large, 503 Redis unavailable. A caller's job kinds label metrics
//! only when listed in `--metric-kinds`, so callers cannot create new series.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::body::{Body, HttpBody as _};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use jobstream::health::{self, HealthState};
use jobstream::job::JobError;
use jobstream::metrics::Metrics;
use jobstream::partitions::PartitionError;
use jobstream::propagation::{self, ContextStatus, TraceHeaders};
use jobstream::{Error as EnqueueError, IdempotencyKey, JobKind, Producer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::cli::ServeArgs;
use crate::usage;

#[derive(Clone)]
struct Api {
    producer: Producer,
    token: Option<Arc<str>>,
    idempotency_ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    kind: String,
    payload: Option<Box<RawValue>>,
    idempotency_key: Option<String>,
    /// Run the job this long from now: `"30s"`-style text or whole milliseconds.
    delay: Option<serde_json::Value>,
    /// Run the job at this RFC 3339 time (UTC).
    run_at: Option<String>,
    /// Longest one attempt may run: `"30s"`-style text or whole milliseconds.
    timeout: Option<serde_json::Value>,
    /// Dead-letter the job as `expired` if no attempt started by this RFC 3339 time (UTC).
    deadline: Option<String>,
    /// Like `deadline`, this long after enqueueing: `"10m"`-style text or whole milliseconds.
    ttl: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Accepted {
    id: String,
    trace_id: Option<String>,
    message_id: String,
    duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_for: Option<u64>,
}

/// An API error: a status and a JSON body `{"error", "id"?}`, with a `WWW-Authenticate` challenge on 401.
struct ApiError {
    status: StatusCode,
    message: String,
    /// The earlier job, on an idempotency conflict.
    id: Option<String>,
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), id: None, challenge: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.id {
            Some(id) => serde_json::json!({ "error": self.message, "id": id }),
            None => serde_json::json!({ "error": self.message }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let has_token = args.api_token.as_ref().is_some_and(|t| !t.expose().is_empty());
    if !has_token && !args.listen.ip().is_loopback() && !args.allow_unauthenticated {
        return Err(usage(format!(
            "refusing to serve on {} without a token: anyone who reaches it could enqueue jobs, replay and purge dead \
             letters, cancel jobs and pause queues. Set --api-token (JOBSTREAM_API_TOKEN), listen on loopback \
             (the default, 127.0.0.1:8080), or pass --allow-unauthenticated to accept an open API",
            args.listen
        )));
    }
    let keys = args.queue.partition_keys().map_err(usage)?;
    let pool = args.redis.pool(32, Duration::from_secs(10))?;
    let metrics = Arc::new(Metrics::new());
    let metric_kinds = args
        .metric_kinds
        .iter()
        .map(|k| JobKind::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(format!("--metric-kinds: {e}")))?;
    let producer = Producer::new(pool.clone(), &args.queue.queue().map_err(usage)?)
        .with_limits(args.queue.limits())
        .with_metrics(metrics.clone())
        .with_metric_kinds(metric_kinds)
        .with_link_threshold(args.schedule.link_threshold)
        .with_job_records(!args.schedule.no_job_records);
    // Refuse to start on a queue recorded with another partition count. If Redis does not answer yet, the
    // check runs again before the first enqueue.
    match producer.check_partitions().await {
        Err(EnqueueError::Partitions(e @ (PartitionError::Mismatch { .. } | PartitionError::Unreadable { .. }))) => {
            return Err(e.into())
        }
        Err(e) => tracing::warn!(error = %e, "the queue's partition count is not checked yet"),
        Ok(()) => {}
    }
    let shutdown = jobstream::shutdown::on_signals()?;
    let api = Api {
        producer,
        token: args.api_token.as_ref().map(|t| t.expose()).filter(|t| !t.is_empty()).map(Arc::from),
        idempotency_ttl: args.idempotency_ttl,
    };
    let mut dashboard = jobstream::dashboard::Dashboard::new(pool.clone(), &args.queue.prefix)
        .with_queue(args.queue.queue().map_err(usage)?)
        .read_only(args.ui_read_only)
        .with_trace_url_template(&args.trace_url_template);
    if let Some(token) = &api.token {
        dashboard = dashboard.with_token(token);
    }
    let health = HealthState { pool, keys, group: None, metrics, draining: shutdown.clone() };
    let app = Router::new()
        .route("/v1/jobs", post(create_job))
        .layer(DefaultBodyLimit::max(args.queue.max_payload_bytes + 4096))
        .with_state(api)
        .merge(dashboard.router())
        .merge(health::router(health))
        // The whole request, body included, within the bound: a client that stalls is answered 408.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, args.request_timeout))
        .layer(axum::middleware::map_response(json_errors));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        "serving POST /v1/jobs, the dashboard at /ui/ and its API under /v1/, /healthz, /readyz and /metrics"
    );
    let limits = health::ConnectionLimits { header_read_timeout: args.header_read_timeout };
    health::serve_with(listener, app, shutdown, limits).await?;
    Ok(())
}

async fn create_job(State(api): State<Api>, headers: HeaderMap, body: Result<Json<NewJob>, JsonRejection>) -> Response {
    let incoming = TraceHeaders::from_pairs(headers.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))));
    let span = tracing::info_span!(
        "POST /v1/jobs",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/jobs",
        http.response.status_code = tracing::field::Empty,
        jobstream.trace.context = tracing::field::Empty,
    );
    let (parent, status) = propagation::extract(&incoming);
    span.record("jobstream.trace.context", status.label());
    if status == ContextStatus::Continued {
        let _ = span.set_parent(parent);
    }
    let response = async {
        authorize(&api, &headers)?;
        let Json(new) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let key = idempotency_key(new.idempotency_key.as_deref(), &headers)?;
        let due = due_time(new.delay.as_ref(), new.run_at.as_deref())?;
        if key.is_some() && due.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "an idempotency key cannot be used with delay or run_at: send one or the other",
            ));
        }
        let payload = new.payload.as_deref().map_or("{}", RawValue::get);
        let job = bounds(api.producer.job_json(&new.kind, payload).map_err(job_error)?, &new)?;
        let done = match (key, due) {
            (Some(key), _) => api.producer.enqueue_job_once(job, &key, api.idempotency_ttl).await,
            (None, Some(due)) => api.producer.enqueue_job_at(job, due).await,
            (None, None) => api.producer.enqueue_job(job).await,
        }
        .map_err(enqueue_error)?;
        let status = if done.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
        Ok::<_, ApiError>((
            status,
            Json(Accepted {
                id: done.job_id.to_string(),
                trace_id: done.trace_id.map(|t| t.to_string()),
                message_id: done.message_id,
                duplicate: done.duplicate,
                scheduled_for: done.scheduled_for_ms,
            }),
        ))
    }
    .instrument(span.clone())
    .await;
    let response = response.into_response();
    span.record("http.response.status_code", i64::from(response.status().as_u16()));
    if response.status().is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(response.status().to_string()));
    }
    response
}

/// The request's idempotency key, from the `idempotency_key` field or the `Idempotency-Key` header, by the one
/// rule of [`IdempotencyKey`]: a header is never skipped for being non-ASCII, it is refused like the field.
fn idempotency_key(field: Option<&str>, headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let bad = |e: jobstream::keys::NameError| ApiError::new(StatusCode::BAD_REQUEST, e.to_string());
    let mut values = headers.get_all("idempotency-key").iter();
    let header = values.next().map(|v| IdempotencyKey::from_bytes(v.as_bytes())).transpose().map_err(bad)?;
    if values.next().is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "send one Idempotency-Key header"));
    }
    let field = field.map(IdempotencyKey::parse).transpose().map_err(bad)?;
    match (field, header) {
        (Some(field), Some(header)) if field != header => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the idempotency_key field and the Idempotency-Key header differ; send one",
        )),
        (field, header) => Ok(field.or(header)),
    }
}

/// `value` (`"30s"`-style text or whole milliseconds) as a duration; `name` is the field's, for the error.
fn duration_value(name: &str, value: &serde_json::Value) -> Result<Duration, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    match value {
        serde_json::Value::Number(ms) => ms.as_u64().map(Duration::from_millis).ok_or_else(|| {
            bad(format!("{name} {ms} is not a whole number of milliseconds (or a text such as \"30s\")"))
        }),
        serde_json::Value::String(text) => jobstream::config::parse_duration(text)
            .map_err(|e| bad(format!("{name} {text:?} is not a duration such as \"30s\": {e}"))),
        other => Err(bad(format!("{name} must be a text such as \"30s\" or milliseconds, not {other}"))),
    }
}

/// The job with the bounds the request asks for: `timeout`, and `deadline` (RFC 3339, UTC) or `ttl`.
fn bounds(mut job: jobstream::Job, new: &NewJob) -> Result<jobstream::Job, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    if let Some(timeout) = &new.timeout {
        let timeout = duration_value("timeout", timeout)?;
        if timeout.is_zero() {
            return Err(bad("timeout must be above 0".to_owned()));
        }
        job = job.with_timeout(timeout);
    }
    match (&new.deadline, &new.ttl) {
        (Some(_), Some(_)) => return Err(bad("send deadline or ttl, not both".to_owned())),
        (Some(text), None) => {
            let deadline = jobstream::config::parse_time(text).map_err(|e| {
                bad(format!("deadline {text:?} is not an RFC 3339 time in UTC such as \"2026-12-01T09:00:00Z\": {e}"))
            })?;
            job = job.with_deadline(deadline);
        }
        (None, Some(ttl)) => job = job.with_ttl(duration_value("ttl", ttl)?),
        (None, None) => {}
    }
    Ok(job)
}

/// When the job is to run: `delay` (`"30s"`-style text or whole milliseconds) or `run_at` (RFC 3339, UTC)
/// from now; `None` for at once.
fn due_time(delay: Option<&serde_json::Value>, run_at: Option<&str>) -> Result<Option<SystemTime>, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    match (delay, run_at) {
        (Some(_), Some(_)) => Err(bad("send delay or run_at, not both".to_owned())),
        (Some(delay), None) => {
            let delay = match delay {
                serde_json::Value::Number(ms) => ms.as_u64().map(Duration::from_millis).ok_or_else(|| {
                    bad(format!("delay {ms} is not a whole number of milliseconds (or a text such as \"30s\")"))
                })?,
                serde_json::Value::String(text) => jobstream::config::parse_duration(text)
                    .map_err(|e| bad(format!("delay {text:?} is not a duration such as \"30s\": {e}")))?,
                other => return Err(bad(format!("delay must be a text such as \"30s\" or milliseconds, not {other}"))),
            };
            SystemTime::now()
                .checked_add(delay)
                .map(Some)
                .ok_or_else(|| bad("delay is too far in the future".to_owned()))
        }
        (None, Some(text)) => jobstream::config::parse_time(text).map(Some).map_err(|e| {
            bad(format!("run_at {text:?} is not an RFC 3339 time in UTC such as \"2026-12-01T09:00:00Z\": {e}"))
        }),
        (None, None) => Ok(None),
    }
}

/// Checks `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &api.token else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, credentials) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim_start())
    });
    let (message, challenge) = match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => return Ok(()),
        Some(_) => ("invalid bearer token", r#"Bearer realm="jobstream", error="invalid_token""#),
        None => ("missing bearer token (Authorization: Bearer …)", r#"Bearer realm="jobstream""#),
    };
    Err(ApiError { challenge: Some(challenge), ..ApiError::new(StatusCode::UNAUTHORIZED, message) })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn job_error(e: JobError) -> ApiError {
    let status = match e {
        JobError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

fn enqueue_error(e: EnqueueError) -> ApiError {
    match e {
        EnqueueError::Job(e) => job_error(e),
        EnqueueError::Context(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        EnqueueError::IdempotencyConflict { job_id, .. } => {
            ApiError { id: Some(job_id.to_string()), ..ApiError::new(StatusCode::CONFLICT, e.to_string()) }
        }
        EnqueueError::Partitions(_) => {
            tracing::error!(error = %e, "enqueue refused");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the queue is unavailable: {e}"))
        }
        _ => {
            tracing::warn!(error = %e, "enqueue failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the queue is unavailable: {e}"))
        }
    }
}

/// Gives the errors axum and tower-http answer themselves (404, 405, 408, …, with an empty or text body) the
/// API's JSON body, keeping their status and headers (`Allow` on 405).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let empty = response.body().size_hint().exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error()) || is_json || !empty {
        return response;
    }
    let message = match status {
        StatusCode::NOT_FOUND => {
            "no such route: the API is POST /v1/jobs, GET|DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result and POST /v1/queues/{queue}/pause|resume".to_owned()
        }
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_owned(),
        StatusCode::REQUEST_TIMEOUT => "the request was not received and answered in time".to_owned(),
        other => other.canonical_reason().unwrap_or("error").to_owned(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(serde_json::json!({ "error": message }).to_string()))
}
