//! The extension point for users' job kinds: a [`JobHandler`] per kind, collected in [`Handlers`].
//!
//! A handler runs inside the job's `process` span, so spans it opens (with `tracing`) are children of it and
//! jobs it enqueues carry the same trace on. Its result decides the job's fate: `Ok` acknowledges the job,
//! `Err` marks the attempt failed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::job::{Job, JobKind};

/// Why an attempt failed. `error_type` becomes the span's `error.type` and a metric label, so keep it a short,
/// low-cardinality class (`timeout`, `http_503`); `message` carries the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// A short class of the failure.
    pub error_type: String,
    /// What happened.
    pub message: String,
    /// True when retrying cannot help (bad payload): the job is dead-lettered at once.
    pub permanent: bool,
}

impl JobFailure {
    /// A failure of class `error_type`; the job is retried while attempts remain.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error_type: error_type.into(), message: message.into(), permanent: false }
    }

    /// A failure that retrying cannot fix: the job is dead-lettered at once.
    pub fn permanent(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { permanent: true, ..Self::new(error_type, message) }
    }
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for JobFailure {}

impl From<crate::Error> for JobFailure {
    /// A library call that failed inside a handler fails the attempt (retried): `redis_unavailable` when Redis
    /// could not be reached, `redis_error` otherwise.
    fn from(e: crate::Error) -> Self {
        let error_type = if matches!(e, crate::Error::Unavailable(_)) { "redis_unavailable" } else { "redis_error" };
        Self::new(error_type, e.to_string())
    }
}

/// Runs jobs of one kind.
///
/// An attempt may be bounded in time (the job's `timeout_ms`, else the worker's per-kind or queue-wide timeout,
/// [`crate::WorkerConfig::timeouts`]). Past it the worker cancels the job's token ([`Job::cancelled`], a
/// `tokio_util::sync::CancellationToken`) and then drops the handler's future: the attempt fails with
/// `error.type=timeout` and is retried per the policy. Work the future does not own — a spawned task, a
/// `spawn_blocking` call, a loop that checks between steps — should watch the token
/// (`token.cancelled().await`, `token.is_cancelled()`) to stop too. A job whose deadline passed before the
/// attempt started never reaches the handler (it is dead-lettered as `expired`).
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one attempt of `job`.
    fn handle(&self, job: Job) -> impl Future<Output = Result<(), JobFailure>> + Send;
}

/// A handler made from an async closure.
pub struct HandlerFn<F>(pub F);

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HandlerFn").finish_non_exhaustive()
    }
}

impl<F, Fut> JobHandler for HandlerFn<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobFailure>> + Send + 'static,
{
    fn handle(&self, job: Job) -> impl Future<Output = Result<(), JobFailure>> + Send {
        (self.0)(job)
    }
}

/// The boxed future a type-erased handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), JobFailure>> + Send + 'static>>;

trait ErasedHandler: Send + Sync {
    fn call(self: Arc<Self>, job: Job) -> HandlerFuture;
}

impl<H: JobHandler> ErasedHandler for H {
    fn call(self: Arc<Self>, job: Job) -> HandlerFuture {
        Box::pin(async move { self.handle(job).await })
    }
}

/// The handlers of a worker, by job kind.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn ErasedHandler>>,
}

impl fmt::Debug for Handlers {
    /// Shows the kinds that have a handler.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers").field("kinds", &self.kinds()).finish_non_exhaustive()
    }
}

impl Handlers {
    /// No handlers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes jobs of `kind` to `handler`, replacing any earlier one.
    pub fn register(mut self, kind: JobKind, handler: impl JobHandler) -> Self {
        self.by_kind.insert(kind.as_str().to_owned(), Arc::new(handler));
        self
    }

    /// Routes jobs of `kind` to an async closure.
    pub fn register_fn<F, Fut>(self, kind: JobKind, f: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobFailure>> + Send + 'static,
    {
        self.register(kind, HandlerFn(f))
    }

    /// The kinds that have a handler, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.by_kind.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }

    /// True when a handler is registered for `kind`.
    pub fn knows(&self, kind: &str) -> bool {
        self.by_kind.contains_key(kind)
    }

    /// Starts the handler of `job.kind`; `None` when no handler knows the kind.
    pub fn dispatch(&self, job: Job) -> Option<HandlerFuture> {
        let handler = self.by_kind.get(job.kind.as_str())?;
        Some(handler.clone().call(job))
    }
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".to_owned(),
    }
}
