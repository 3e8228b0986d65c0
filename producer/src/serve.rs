//! `producer serve`: the HTTP API. `POST /v1/jobs` with `{"kind", "payload", "idempotency_key"?}` answers
//! `202 {"id", "trace_id"}`. The request's `traceparent` (and `tracestate`, `baggage`) is continued: the
//! SERVER span is its child and the job's `send` span the SERVER span's child, so one trace runs from the
//! caller through the queue to the worker. Errors are JSON `{"error": …}` with a 4xx or 503 status.
//! `/healthz`, `/readyz` and `/metrics` are served on the same port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use jobstream::health::{self, HealthState};
use jobstream::metrics::Metrics;
use jobstream::propagation::{self, ContextStatus, TraceHeaders};
use jobstream::{EnqueueError, IdempotencyKey, Producer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::cli::ServeArgs;

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
}

#[derive(Serialize)]
struct Accepted {
    id: String,
    trace_id: Option<String>,
    message_id: String,
    duplicate: bool,
}

/// An API error: a status and a JSON body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let keys = args.queue.partition_keys()?;
    let pool = args.redis.pool(32, Duration::from_secs(10))?;
    let metrics = Arc::new(Metrics::new());
    let producer = Producer::partitioned(pool.clone(), &args.queue.queue, keys.clone(), args.queue.limits())
        .with_metrics(metrics.clone());
    let shutdown = jobstream::shutdown::on_signals()?;
    let api = Api {
        producer,
        token: args.api_token.as_ref().map(|t| t.expose()).filter(|t| !t.is_empty()).map(Arc::from),
        idempotency_ttl: args.idempotency_ttl,
    };
    let health = HealthState { pool, keys, group: None, metrics, draining: shutdown.clone() };
    let app = Router::new()
        .route("/v1/jobs", post(create_job))
        .layer(DefaultBodyLimit::max(args.queue.max_payload_bytes + 4096))
        .with_state(api)
        .merge(health::router(health));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving POST /v1/jobs, /healthz, /readyz and /metrics");
    health::serve(listener, app, shutdown).await?;
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
        let Json(new) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
        let key = new
            .idempotency_key
            .as_deref()
            .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()))
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let payload = new.payload.as_deref().map_or("{}", RawValue::get);
        let job = api.producer.job(&new.kind, payload).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let done = match key {
            Some(key) => api.producer.enqueue_once(job, &key, api.idempotency_ttl).await,
            None => api.producer.enqueue(job).await,
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
            }),
        ))
    }
    .instrument(span.clone())
    .await;
    let response = response.into_response();
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(response.status().to_string()));
    }
    response
}

fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &api.token else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(StatusCode::UNAUTHORIZED, "invalid bearer token".into())),
        None => Err(ApiError(StatusCode::UNAUTHORIZED, "missing bearer token (Authorization: Bearer …)".into())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn enqueue_error(e: EnqueueError) -> ApiError {
    match e {
        EnqueueError::Job(_) | EnqueueError::Context(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        EnqueueError::Pool(_) | EnqueueError::Redis(_) => {
            tracing::warn!(error = %e, "enqueue failed");
            ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("the queue is unavailable: {e}"))
        }
    }
}
