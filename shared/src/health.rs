//! The operations endpoints every long-running jobstream process serves: `/healthz` (the process is alive),
//! `/readyz` (Redis answers, the consumer group exists, the process is not draining) and `/metrics`
//! (Prometheus text format).
//!
//! A draining worker reports not ready, so a load balancer or Kubernetes stops counting on it, while `/healthz`
//! stays up until it has finished, so it is not killed mid-drain.

use std::sync::Arc;
use std::time::Duration;

use crate::connection::Pool;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::keys::{GroupName, Keys};
use crate::metrics::Metrics;

/// How long a probe may wait for Redis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints look at.
#[derive(Clone, Debug)]
pub struct HealthState {
    /// The process's Redis pool.
    pub pool: Pool,
    /// The queue (all its partitions) whose numbers `/metrics` reports and whose group `/readyz` checks.
    pub keys: Vec<Keys>,
    /// The group that must exist for `/readyz` (a consumer's); `None` for a producer.
    pub group: Option<GroupName>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the process starts draining: `/readyz` then answers 503.
    pub draining: CancellationToken,
}

/// The router with the three endpoints; merge it into an application's router or serve it alone.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    match tokio::time::timeout(PROBE_TIMEOUT, check(&state)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(reason)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "Redis did not answer in time\n".to_owned()),
    }
}

async fn check(state: &HealthState) -> Result<(), String> {
    let mut conn = state.pool.get().await.map_err(|e| format!("Redis unreachable: {e}"))?;
    redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| format!("Redis unreachable: {e}"))?;
    let Some(group) = &state.group else { return Ok(()) };
    for keys in &state.keys {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query_async(&mut conn).await.unwrap_or_default();
        let exists = groups.iter().any(|g| {
            g.get("name").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()).as_deref()
                == Some(group.as_str())
        });
        if !exists {
            return Err(format!("consumer group {group} does not exist yet on {}", keys.stream));
        }
    }
    Ok(())
}

async fn metrics(State(state): State<HealthState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let stats = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut all = Vec::with_capacity(state.keys.len());
        for keys in &state.keys {
            all.push(crate::admin::stats(&state.pool, keys).await.map_err(|e| e.to_string())?);
        }
        Ok::<_, String>(all)
    })
    .await;
    match stats {
        Ok(Ok(stats)) => stats.iter().for_each(|s| state.metrics.observe_queue(s)),
        Ok(Err(error)) => tracing::debug!(%error, "queue gauges not refreshed"),
        Err(_) => tracing::debug!("queue gauges not refreshed: Redis did not answer in time"),
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            state.metrics.encode_openmetrics(),
        )
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode_prometheus())
    }
}

/// Bounds on what one connection may hold the server for.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request line and its headers: on a new connection (from accept to
    /// the first request, protocol detection included) and between requests on a kept-alive HTTP/1 connection.
    /// A client that stalls in them is disconnected.
    pub header_read_timeout: Duration,
}

/// The header bound when none is configured.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ConnectionLimits {
    /// [`DEFAULT_HEADER_READ_TIMEOUT`], or `JOBSTREAM_HEADER_READ_TIMEOUT` (e.g. `2s`) when set, so that a binary
    /// without a flag for it (the consumer's health server) can be configured too.
    fn default() -> Self {
        let header_read_timeout = std::env::var("JOBSTREAM_HEADER_READ_TIMEOUT")
            .ok()
            .and_then(|text| humantime::parse_duration(&text).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
        Self { header_read_timeout }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, with [`ConnectionLimits::default`].
pub async fn serve(listener: tokio::net::TcpListener, app: Router, stop: CancellationToken) -> std::io::Result<()> {
    serve_with(listener, app, stop, ConnectionLimits::default()).await
}

/// Serves `app` on `listener` until `stop` is cancelled, then stops accepting and lets the open connections
/// finish (graceful shutdown).
///
/// The accept loop is axum-server's (axum's own `serve` cannot configure hyper): hyper's HTTP/1
/// `header_read_timeout` with a Tokio timer bounds the headers of every request, and axum-server's
/// `first_request_timeout` bounds a new connection until its first request is read, which also covers the
/// protocol detection (HTTP/1 or HTTP/2) that hyper does not time. The body and the answer are bounded by the
/// application (`producer serve`'s `--request-timeout`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let mut server = axum_server::Server::<std::net::SocketAddr>::from_listener(listener)
        .handle(handle.clone())
        .first_request_timeout(limits.header_read_timeout)
        .accept_error_handler(|_, error| tracing::warn!(%error, "accepting a connection failed"));
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let stopper = tokio::spawn(async move {
        stop.cancelled().await;
        handle.graceful_shutdown(None);
    });
    let served = server.serve(app.into_make_service()).await;
    stopper.abort();
    served
}

/// Binds `addr` and serves `app` in the background until `stop`; returns the bound address (useful with port 0).
pub async fn spawn(
    addr: std::net::SocketAddr,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "serving /healthz, /readyz and /metrics");
    Ok((bound, tokio::spawn(serve(listener, app, stop))))
}
