//! The operator's dashboard: a web UI under `/ui/` and the JSON API it uses under `/v1/` — every queue with its
//! numbers and last hour, each queue's consumers, waiting, running, delayed and dead jobs and schedules, each job
//! with its attempts and a link to its trace — plus the actions (replay and purge dead letters, cancel a job,
//! pause and resume a queue). The UI calls nothing a script cannot: every action is one of the JSON routes.
//!
//! Mount [`Dashboard::router`] in an application's router (`producer serve` does). Its assets are compiled in:
//! no CDN, nothing fetched at run time.
//!
//! Security: with a token ([`Dashboard::with_token`]) every API route needs `Authorization: Bearer <token>` or
//! the session cookie `POST /ui/login` sets (`HttpOnly; Secure; SameSite=Strict`); the UI's own files are public
//! (they hold no data). Requests that change anything are refused (403) when the browser says they come from
//! another site (`Sec-Fetch-Site`, or an `Origin` that is not the `Host`): a page elsewhere cannot make a logged-in
//! browser act. [`Dashboard::read_only`] refuses every action (403) and the UI hides them. Every value the UI
//! shows is set as text, never as HTML, and a Content-Security-Policy allows only the dashboard's own script.

mod api;
mod auth;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::connection::Pool;
use crate::keys::GroupName;
use crate::queue::Queue;

pub use auth::SESSION_COOKIE;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The dashboard's settings; [`Dashboard::router`] serves it.
#[derive(Clone)]
pub struct Dashboard {
    pub(crate) pool: Pool,
    pub(crate) prefix: String,
    pub(crate) group: GroupName,
    pub(crate) queue: Option<Queue>,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) read_only: bool,
    pub(crate) trace_url_template: Option<String>,
    pub(crate) sessions: Arc<auth::Sessions>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .field("queue", &self.queue)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("read_only", &self.read_only)
            .field("trace_url_template", &self.trace_url_template)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard of the queues under key prefix `prefix` (found with SCAN), open to anyone who reaches it:
    /// serve it on loopback, or set a token.
    pub fn new(pool: Pool, prefix: &str) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            group: GroupName::default(),
            queue: None,
            token: None,
            read_only: false,
            trace_url_template: None,
            sessions: Arc::default(),
        }
    }

    /// Requires `token` (bearer, or the session cookie set by logging in with it) on every API route.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = (!token.is_empty()).then(|| Arc::from(token));
        self
    }

    /// The consumer group whose pending list says a job is running (default `workers`).
    pub fn with_group(mut self, group: GroupName) -> Self {
        self.group = group;
        self
    }

    /// A queue listed even before it has a stream, and searched first for a job id given without a queue.
    pub fn with_queue(mut self, queue: Queue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Refuses every action (replay, purge, cancel, pause, resume) with 403; the UI hides them.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// How a trace id becomes a link, e.g. `http://localhost:16686/trace/{trace_id}` (Jaeger); `{span_id}` is
    /// replaced too. Without one the UI shows trace ids as text.
    pub fn with_trace_url_template(mut self, template: &str) -> Self {
        self.trace_url_template = (!template.is_empty()).then(|| template.to_owned());
        self
    }

    /// The UI (`/ui/`, `/ui/app.js`, `/ui/app.css`, `/ui/config.json`, `POST /ui/login|logout`) and the API:
    /// `GET /v1/queues`, `GET /v1/queues/{queue}`, `GET /v1/queues/{queue}/jobs?state=waiting|running|delayed|dead`,
    /// `POST /v1/queues/{queue}/pause|resume`, `POST /v1/queues/{queue}/dead/replay|purge`,
    /// `GET|DELETE /v1/jobs/{id}`, `GET /v1/jobs/{id}/result`.
    pub fn router(self) -> Router {
        let state = Arc::new(self);
        let api = Router::new()
            .route("/v1/queues", get(api::queues))
            .route("/v1/queues/{queue}", get(api::queue))
            .route("/v1/queues/{queue}/jobs", get(api::jobs))
            .route("/v1/queues/{queue}/pause", post(api::pause))
            .route("/v1/queues/{queue}/resume", post(api::resume))
            .route("/v1/queues/{queue}/dead/replay", post(api::replay))
            .route("/v1/queues/{queue}/dead/purge", post(api::purge))
            .route("/v1/jobs/{id}", get(api::show_job).delete(api::cancel_job))
            .route("/v1/jobs/{id}/result", get(api::job_result))
            .route("/ui/config.json", get(api::config))
            .layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard));
        let ui = Router::new()
            .route("/ui", get(|| async { axum::response::Redirect::permanent("/ui/") }))
            .route("/ui/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
            .route("/ui/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
            .route("/ui/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
            .route("/ui/login", post(auth::login))
            .route("/ui/logout", post(auth::logout));
        api.merge(ui).with_state(state)
    }
}

/// One of the compiled-in files, with headers that keep it to itself: only its own script and style run, it
/// is never framed, and its type is not guessed.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An API error: its status and `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Redis did not answer, or refused: 503 with the reason (the UI shows it as a banner).
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "dashboard request failed on Redis");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, format!("Redis is unavailable: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="jobstream""#));
        }
        response
    }
}
