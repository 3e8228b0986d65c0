//! The job envelope and its codec: one job is one stream entry, a flat map of string fields (`DESIGN.md` §2).
//!
//! Decoding parses every field into a typed value, so a [`Job`] that exists is valid. Trace fields are carried
//! as they came ([`TraceHeaders`]); whether they hold a usable context is decided by
//! [`crate::propagation::extract`], because a bad context must not stop a job from running.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::keys::QueueName;
use crate::limits::Limits;
use crate::propagation::TraceHeaders;

/// The wire version this code writes and reads.
pub const WIRE_VERSION: &str = "1";

/// Field names of the wire format.
pub mod field {
    /// Wire version.
    pub const VERSION: &str = "v";
    /// Job id (UUID, v7 when written by jobstream).
    pub const ID: &str = "id";
    /// Job kind.
    pub const KIND: &str = "kind";
    /// JSON payload.
    pub const PAYLOAD: &str = "payload";
    /// Unix time in ms of the first enqueue.
    pub const ENQUEUED_AT: &str = "enqueued_at";
    /// Attempt number, 1-based.
    pub const ATTEMPT: &str = "attempt";
    /// W3C `traceparent`.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C `tracestate`.
    pub const TRACESTATE: &str = "tracestate";
    /// W3C `baggage`.
    pub const BAGGAGE: &str = "baggage";
    /// Optional: `link` asks workers to process the job in a new trace linked to its `send` span, whatever
    /// their queue-wide trace mode (set on jobs scheduled further ahead than the producer's link threshold).
    /// Other values are ignored; workers that do not know the field run the job as usual.
    pub const TRACE_MODE: &str = "trace_mode";
    /// The value of [`TRACE_MODE`] that asks for a linked trace.
    pub const TRACE_MODE_LINK: &str = "link";
    /// Optional: the longest one attempt may run, in ms; past it the handler is cancelled and the attempt fails
    /// with `error.type=timeout`. Wins over the worker's per-kind and queue-wide timeouts. A value that is not
    /// a whole number of ms above 0 is ignored.
    pub const TIMEOUT_MS: &str = "timeout_ms";
    /// Optional: unix time in ms by which an attempt must have started; a job found later (a retry due after
    /// it included) is dead-lettered with reason `expired`, never run. A value that is not a whole number is
    /// ignored.
    pub const DEADLINE_MS: &str = "deadline_ms";
    /// Set by the worker that moves a job from the delayed set to the stream (a scheduled job, a retry): when,
    /// in unix ms. Replaced at each promotion; the `process` span shows it as a `promoted` event.
    pub const PROMOTED_AT: &str = "promoted_at";
}

/// A stream entry's fields as strings, ordered by name.
pub type Fields = BTreeMap<String, String>;

/// Why an entry could not be decoded into a job. Such an entry is dead-lettered with this text as the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A field the wire format requires is absent; holds its name.
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    /// A field's value is not UTF-8; holds the field's name.
    #[error("field `{0}` is not valid UTF-8")]
    NotUtf8(String),
    /// The `v` field names a wire version other than [`WIRE_VERSION`]; holds that version.
    #[error("wire version {0:?} is not supported (this worker reads version {WIRE_VERSION})")]
    UnsupportedVersion(String),
    /// A field is present but its value does not parse (id, kind, payload, enqueue time or attempt).
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// Why its value was refused.
        reason: String,
    },
    /// The payload is longer than the worker's [`Limits::max_payload_bytes`].
    #[error("payload is {size} bytes; the limit is {limit}")]
    PayloadTooLarge {
        /// The payload's length in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A field name is not UTF-8; holds the name with invalid bytes replaced by U+FFFD.
    #[error("a field name is not valid UTF-8: {0:?}")]
    NameNotUtf8(String),
    /// The entry has more than [`MAX_FIELDS`] fields.
    #[error("the entry has {count} fields; a job has at most {MAX_FIELDS}")]
    TooManyFields {
        /// How many fields the entry has.
        count: usize,
    },
}

/// Most fields a job's entry may have: the wire format's nine plus room for other producers' own fields.
/// A wider entry is dead-lettered as undecodable.
pub const MAX_FIELDS: usize = 256;

/// Why a job could not be built for enqueueing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// The kind is empty, longer than 64 characters or has a character outside `[A-Za-z0-9._:-]`; holds it.
    #[error("job kind {0:?} is invalid: use 1 to 64 characters of letters, digits and . _ - :")]
    InvalidKind(String),
    /// The payload text does not parse as JSON, or the value does not serialize to it; holds serde's message.
    #[error("payload is not JSON: {0}")]
    PayloadNotJson(String),
    /// The payload is longer than [`Limits::max_payload_bytes`].
    #[error("payload is {size} bytes; the limit is {limit}")]
    PayloadTooLarge {
        /// The payload's length in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// A job id: a UUID, time-ordered (v7) when minted here, the same across retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    /// Mints a new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Which of `n` partitions the job goes to: its id's random low bits, so jobs spread evenly.
    pub fn partition(&self, n: usize) -> usize {
        (self.0.as_u128() % n.max(1) as u128) as usize
    }

    /// When a time-ordered (v7) id was made, in unix ms; `None` for another kind of UUID.
    pub fn created_ms(&self) -> Option<u64> {
        (self.0.get_version_num() == 7).then(|| (self.0.as_u128() >> 80) as u64)
    }

    /// Parses the wire form of an id.
    pub fn parse(value: &str) -> Result<Self, uuid::Error> {
        Uuid::try_parse(value).map(Self)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A job kind: routes a job to its handler. 1 to 64 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKind(String);

impl JobKind {
    /// Parses a kind.
    pub fn parse(value: &str) -> Result<Self, JobError> {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(JobError::InvalidKind(value.to_owned()))
        }
    }
}

crate::keys::text_name!(JobKind, JobError);

/// A job's data: JSON text, checked to be JSON and within the payload limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    /// Parses JSON text as a payload.
    pub fn parse(text: impl Into<String>, limits: &Limits) -> Result<Self, JobError> {
        let text = text.into();
        if text.len() > limits.max_payload_bytes {
            return Err(JobError::PayloadTooLarge { size: text.len(), limit: limits.max_payload_bytes });
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| JobError::PayloadNotJson(e.to_string()))?;
        Ok(Self(text))
    }

    /// Serializes a value as the payload.
    pub fn from_value<T: Serialize + ?Sized>(value: &T, limits: &Limits) -> Result<Self, JobError> {
        let text = serde_json::to_string(value).map_err(|e| JobError::PayloadNotJson(e.to_string()))?;
        Self::parse(text, limits)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Deserializes the payload.
    pub fn deserialize<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

/// One job as it travels on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Stable id, the same across retries.
    pub id: JobId,
    /// Routes the job to a handler.
    pub kind: JobKind,
    /// The job's data.
    pub payload: Payload,
    /// Unix time in ms when the job was first enqueued.
    pub enqueued_at_ms: u64,
    /// 1 for the first run, +1 on each retry.
    pub attempt: u32,
    /// The W3C trace fields, as found on the entry.
    pub trace: TraceHeaders,
    /// Fields this version does not know; kept so that a retry or dead letter carries them on.
    pub extra: Fields,
    /// The queue (the partition's, `<queue>:<i>`, for a partitioned queue) a worker read the job from; `None`
    /// for a job not read from a queue.
    pub(crate) source: Option<QueueName>,
    /// The attempt's context: its cancellation token, result and progress sink; see [`Job::cancelled`].
    pub(crate) context: Context,
}

/// What one attempt shares with the worker running it. Not part of a job's identity: two jobs are equal
/// whatever their contexts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context(pub(crate) std::sync::Arc<AttemptContext>);

impl PartialEq for Context {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Context {}

/// The worker's side of one attempt.
#[derive(Debug, Default)]
pub(crate) struct AttemptContext {
    /// Cancelled when the attempt must stop: its timeout passed, or the job was cancelled.
    pub(crate) token: CancellationToken,
    /// Set (before the token is cancelled) when the stop is a cancel of the job, not a timeout.
    pub(crate) cancel_requested: std::sync::atomic::AtomicBool,
    /// The JSON the handler gave [`Job::set_result`].
    pub(crate) result: std::sync::Mutex<Option<String>>,
    /// Where progress goes; `None` for a job not run by a worker.
    pub(crate) sink: Option<ProgressSink>,
}

impl AttemptContext {
    /// Stops the attempt because its job was cancelled.
    pub(crate) fn request_cancel(&self) {
        self.cancel_requested.store(true, std::sync::atomic::Ordering::SeqCst);
        self.token.cancel();
    }

    /// True when the job was cancelled (not timed out).
    pub(crate) fn is_cancel_requested(&self) -> bool {
        self.cancel_requested.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Where a running attempt's progress is reported: its `process` span, and its status record if it has one.
#[derive(Debug)]
pub(crate) struct ProgressSink {
    pub(crate) span: tracing::Span,
    /// The pool, the per-job hash and how long it is kept.
    pub(crate) record: Option<(crate::connection::Pool, String, Duration)>,
    /// Most bytes a result may have (the payload limit).
    pub(crate) max_result_bytes: usize,
}

/// Most bytes one progress report may have.
pub const MAX_PROGRESS_BYTES: usize = 4096;

impl Job {
    /// The payload as a `T`. A payload that is not a `T` fails the attempt *permanently*
    /// (`error.type=bad_payload`): running it again cannot help, so it goes straight to the dead stream.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::handler::JobFailure> {
        serde_json::from_str(self.payload.as_str()).map_err(|e| {
            crate::handler::JobFailure::permanent(
                "bad_payload",
                format!("the payload is not what kind {} takes: {e}", self.kind),
            )
        })
    }

    /// The queue the job was read from (the partition's, `<queue>:<i>`, for a partitioned queue); `None` for
    /// a job not read from a queue.
    pub fn queue(&self) -> Option<&QueueName> {
        self.source.as_ref()
    }

    /// The attempt's cancellation signal: cancelled when the worker gives up on the attempt (its timeout
    /// passed), just before it drops the handler's future. A handler doing work that does not yield often
    /// (blocking calls in `spawn_blocking`, loops, calls to other services) watches it
    /// (`token.cancelled().await` in a `select!`, or `token.is_cancelled()`) to stop that work too. A job not
    /// run by a worker has a token that is never cancelled.
    ///
    /// A cancel of the job (`producer job cancel`, [`crate::jobs::cancel`]) cancels it too: the worker then
    /// drops the handler's future and settles the job as `cancelled` (not retried).
    pub fn cancelled(&self) -> CancellationToken {
        self.context.0.token.clone()
    }

    /// Keeps `value` as the job's result: stored (as JSON) in its status record when the attempt succeeds,
    /// shown by `producer job show|result` and [`crate::jobs::result`], and kept for the job retention (24 h by
    /// default). A later call replaces an earlier one. Fails, permanently (`error.type=result_too_large`), when
    /// the JSON is longer than the payload limit, and with `bad_result` when `value` does not serialize.
    pub fn set_result<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), crate::handler::JobFailure> {
        let text = serde_json::to_string(value)
            .map_err(|e| crate::handler::JobFailure::permanent("bad_result", format!("the result is not JSON: {e}")))?;
        let limit = self.context.0.sink.as_ref().map_or(usize::MAX, |sink| sink.max_result_bytes);
        if text.len() > limit {
            return Err(crate::handler::JobFailure::permanent(
                "result_too_large",
                format!("the result is {} bytes; the limit is {limit} (the payload limit)", text.len()),
            ));
        }
        *self.context.0.result.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
        Ok(())
    }

    /// Reports progress: `value` (a number, or small JSON of at most [`MAX_PROGRESS_BYTES`]) becomes a
    /// `progress` event on the attempt's `process` span (attribute `jobstream.job.progress`, the JSON text) and
    /// the `progress` field of the job's status record, shown by `producer job show`. Fails with `bad_progress`
    /// when the value is too large or not JSON, and with `redis_unavailable` or `redis_error` when the record
    /// cannot be written; the job itself goes on, so a handler may ignore the error.
    pub async fn progress<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), crate::handler::JobFailure> {
        let text = serde_json::to_string(value)
            .map_err(|e| crate::handler::JobFailure::new("bad_progress", format!("progress is not JSON: {e}")))?;
        if text.len() > MAX_PROGRESS_BYTES {
            return Err(crate::handler::JobFailure::new(
                "bad_progress",
                format!("progress is {} bytes; at most {MAX_PROGRESS_BYTES} are kept", text.len()),
            ));
        }
        let Some(sink) = &self.context.0.sink else { return Ok(()) };
        crate::trace::spans::progress(&sink.span, &text);
        if let Some((pool, record, keep)) = &sink.record {
            let mut conn = pool.get().await.map_err(crate::Error::from)?;
            // Kept the job retention from the last report: a job that finishes keeps its progress as long as its
            // final record; a retry or dead letter sets the hash's own time to live.
            redis::pipe()
                .cmd("HSET")
                .arg(record)
                .arg(crate::jobs::field::PROGRESS)
                .arg(&text)
                .ignore()
                .cmd("PEXPIRE")
                .arg(record)
                .arg(keep.as_millis().max(1) as u64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(crate::Error::from)?;
        }
        Ok(())
    }

    /// Bounds every attempt of the job to `timeout` (the `timeout_ms` field, in whole ms, at least 1): it wins
    /// over the worker's per-kind and queue-wide timeouts.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        let ms = (timeout.as_millis().min(u64::MAX as u128) as u64).max(1);
        self.extra.insert(field::TIMEOUT_MS.to_owned(), ms.to_string());
        self
    }

    /// Gives the job a deadline (the `deadline_ms` field): an attempt not started by then never runs, and the
    /// job is dead-lettered with reason `expired`.
    pub fn with_deadline(mut self, deadline: SystemTime) -> Self {
        let ms = deadline.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64);
        self.extra.insert(field::DEADLINE_MS.to_owned(), ms.to_string());
        self
    }

    /// Gives the job a deadline `ttl` after it was enqueued ([`Job::with_deadline`]).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        let ms = self.enqueued_at_ms.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64);
        self.extra.insert(field::DEADLINE_MS.to_owned(), ms.to_string());
        self
    }

    /// The job's own timeout (`timeout_ms`), if it has a valid one.
    pub fn timeout(&self) -> Option<Duration> {
        let ms = self.extra.get(field::TIMEOUT_MS)?.parse::<u64>().ok().filter(|&ms| ms > 0)?;
        Some(Duration::from_millis(ms))
    }

    /// The job's deadline (`deadline_ms`) in unix ms, if it has a valid one.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.extra.get(field::DEADLINE_MS)?.parse::<u64>().ok()
    }

    /// A new job, first attempt, enqueued now, with no trace context yet.
    pub fn new(kind: JobKind, payload: Payload) -> Self {
        Self {
            id: JobId::new(),
            kind,
            payload,
            enqueued_at_ms: crate::clock::now_ms(),
            attempt: 1,
            trace: TraceHeaders::default(),
            extra: Fields::new(),
            source: None,
            context: Context::default(),
        }
    }

    /// The entry's fields, in wire order: required fields first, then trace fields, then unknown ones.
    pub fn to_fields(&self) -> Vec<(&str, String)> {
        let mut out = Vec::with_capacity(6 + 3 + self.extra.len());
        out.push((field::VERSION, WIRE_VERSION.to_owned()));
        out.push((field::ID, self.id.to_string()));
        out.push((field::KIND, self.kind.0.clone()));
        out.push((field::PAYLOAD, self.payload.0.clone()));
        out.push((field::ENQUEUED_AT, self.enqueued_at_ms.to_string()));
        out.push((field::ATTEMPT, self.attempt.to_string()));
        out.extend(self.trace.iter().map(|(k, v)| (k, v.to_owned())));
        out.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        out
    }

    /// Decodes an entry's fields. Unknown fields are kept in [`Job::extra`].
    pub fn from_fields(fields: Fields, limits: &Limits) -> Result<Self, DecodeError> {
        Self::from_pairs(fields.iter().map(|(name, value)| Ok((name.as_str(), value.as_str()))), limits)
    }

    /// Decodes an entry's fields byte for byte as Redis holds them: [`fields_from_raw`] then
    /// [`Job::from_fields`], with the same result and errors, but without building the field map first (what a
    /// worker does for every delivery).
    pub fn from_raw(raw: &[(Vec<u8>, Vec<u8>)], limits: &Limits) -> Result<Self, DecodeError> {
        if raw.len() > MAX_FIELDS {
            return Err(DecodeError::TooManyFields { count: raw.len() });
        }
        Self::from_pairs(raw.iter().map(|(name, value)| utf8_field(name, value)), limits)
    }

    /// Decodes `(name, value)` pairs in entry order; a later pair with a name overrides an earlier one, as in a
    /// field map.
    fn from_pairs<'a>(
        pairs: impl Iterator<Item = Result<(&'a str, &'a str), DecodeError>>,
        limits: &Limits,
    ) -> Result<Self, DecodeError> {
        let (mut version, mut id, mut kind, mut payload, mut enqueued_at, mut attempt) =
            (None, None, None, None, None, None);
        let mut trace = TraceHeaders::default();
        let mut extra = Fields::new();
        for pair in pairs {
            let (name, value) = pair?;
            match name {
                field::VERSION => version = Some(value),
                field::ID => id = Some(value),
                field::KIND => kind = Some(value),
                field::PAYLOAD => payload = Some(value),
                field::ENQUEUED_AT => enqueued_at = Some(value),
                field::ATTEMPT => attempt = Some(value),
                field::TRACEPARENT | field::TRACESTATE | field::BAGGAGE => trace.insert(name, value),
                _ => {
                    extra.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        let take = |value: Option<&'a str>, name: &'static str| value.ok_or(DecodeError::MissingField(name));
        let version = take(version, field::VERSION)?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version.to_owned()));
        }
        let id = JobId::parse(take(id, field::ID)?).map_err(|e| invalid(field::ID, e))?;
        let kind = JobKind::parse(take(kind, field::KIND)?).map_err(|e| invalid(field::KIND, e))?;
        let payload = take(payload, field::PAYLOAD)?;
        if payload.len() > limits.max_payload_bytes {
            return Err(DecodeError::PayloadTooLarge { size: payload.len(), limit: limits.max_payload_bytes });
        }
        let payload = Payload::parse(payload, limits).map_err(|e| invalid(field::PAYLOAD, e))?;
        let enqueued_at_ms =
            take(enqueued_at, field::ENQUEUED_AT)?.parse::<u64>().map_err(|e| invalid(field::ENQUEUED_AT, e))?;
        let attempt = take(attempt, field::ATTEMPT)?.parse::<u32>().map_err(|e| invalid(field::ATTEMPT, e))?;
        if attempt == 0 {
            return Err(invalid(field::ATTEMPT, "must be 1 or more"));
        }
        Ok(Self { id, kind, payload, enqueued_at_ms, attempt, trace, extra, source: None, context: Context::default() })
    }
}

/// One raw field as text, or why it is not.
fn utf8_field<'a>(name: &'a [u8], value: &'a [u8]) -> Result<(&'a str, &'a str), DecodeError> {
    let name =
        std::str::from_utf8(name).map_err(|_| DecodeError::NameNotUtf8(String::from_utf8_lossy(name).into_owned()))?;
    let value = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8(name.to_owned()))?;
    Ok((name, value))
}

fn invalid(field: &'static str, reason: impl fmt::Display) -> DecodeError {
    DecodeError::InvalidField { field, reason: reason.to_string() }
}

/// Converts an entry's fields, byte for byte as Redis holds them, into [`Fields`]: names and values must be
/// UTF-8 text and there may be at most [`MAX_FIELDS`] of them.
pub fn fields_from_raw(raw: &[(Vec<u8>, Vec<u8>)]) -> Result<Fields, DecodeError> {
    if raw.len() > MAX_FIELDS {
        return Err(DecodeError::TooManyFields { count: raw.len() });
    }
    raw.iter()
        .map(|(name, value)| utf8_field(name, value).map(|(name, value)| (name.to_owned(), value.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn sample() -> Job {
        let mut job = Job::new(JobKind::parse("demo").unwrap(), Payload::parse(r#"{"n":1}"#, &limits()).unwrap());
        job.extra.insert("x-future".into(), "kept".into());
        job
    }

    fn wire(job: &Job) -> Fields {
        job.to_fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let job = sample();
        assert_eq!(Job::from_fields(wire(&job), &limits()).unwrap(), job);
    }

    #[test]
    fn bounds_travel_as_fields() {
        let job = sample().with_timeout(Duration::from_millis(1500)).with_ttl(Duration::from_millis(10));
        let back = Job::from_fields(wire(&job), &limits()).unwrap();
        assert_eq!(back.timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(back.deadline_ms(), Some(job.enqueued_at_ms + 10));
        assert!(!back.cancelled().is_cancelled());
    }

    #[test]
    fn missing_fields_are_named() {
        for name in [field::VERSION, field::ID, field::KIND, field::PAYLOAD, field::ENQUEUED_AT, field::ATTEMPT] {
            let mut fields = wire(&sample());
            fields.remove(name);
            assert_eq!(Job::from_fields(fields, &limits()), Err(DecodeError::MissingField(name)));
        }
    }

    #[test]
    fn bad_json_unknown_version_and_bad_numbers_are_typed() {
        let mut fields = wire(&sample());
        fields.insert(field::PAYLOAD.into(), "{not json".into());
        assert!(matches!(Job::from_fields(fields, &limits()), Err(DecodeError::InvalidField { field: "payload", .. })));

        let mut fields = wire(&sample());
        fields.insert(field::VERSION.into(), "2".into());
        assert_eq!(Job::from_fields(fields, &limits()), Err(DecodeError::UnsupportedVersion("2".into())));

        for (name, value) in
            [(field::ATTEMPT, "0"), (field::ATTEMPT, "-1"), (field::ENQUEUED_AT, "soon"), (field::ID, "42")]
        {
            let mut fields = wire(&sample());
            fields.insert(name.into(), value.into());
            assert!(
                matches!(Job::from_fields(fields, &limits()), Err(DecodeError::InvalidField { field, .. }) if field == name),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn oversized_payload_is_refused_on_both_sides() {
        let small = Limits { max_payload_bytes: 8 };
        assert!(matches!(Payload::parse(r#"{"long":"value"}"#, &small), Err(JobError::PayloadTooLarge { .. })));
        assert!(matches!(
            Job::from_fields(wire(&sample()), &Limits { max_payload_bytes: 3 }),
            Err(DecodeError::PayloadTooLarge { size: 7, limit: 3 })
        ));
    }

    #[test]
    fn raw_fields_are_checked_name_by_name() {
        let ok = vec![(b"v".to_vec(), b"1".to_vec())];
        assert_eq!(fields_from_raw(&ok).unwrap().get("v").map(String::as_str), Some("1"));
        let bad_name = vec![(vec![0xff, b'x'], b"1".to_vec())];
        assert!(matches!(fields_from_raw(&bad_name), Err(DecodeError::NameNotUtf8(_))));
        let bad_value = vec![(b"payload".to_vec(), vec![0xc3])];
        assert_eq!(fields_from_raw(&bad_value), Err(DecodeError::NotUtf8("payload".into())));
        let wide: Vec<_> = (0..=MAX_FIELDS).map(|i| (i.to_string().into_bytes(), Vec::new())).collect();
        assert_eq!(fields_from_raw(&wide), Err(DecodeError::TooManyFields { count: MAX_FIELDS + 1 }));
    }

    proptest::proptest! {
        /// The worker's direct decoding agrees with the field map's, job for job and error for error: fields in
        /// any order, duplicated, missing, malformed, or not UTF-8.
        #[test]
        fn decoding_raw_fields_agrees_with_the_field_map(
            pairs in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "v", "id", "kind", "payload", "enqueued_at", "attempt", "traceparent", "tracestate",
                        "baggage", "x", "TraceParent", "\u{ff}",
                    ]),
                    proptest::sample::select(vec![
                        "1", "2", "0", "01960000-0000-7000-8000-000000000000", "demo", "{}", "[1]", "not json",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "", "\u{ff}",
                    ]),
                ),
                0..14,
            ),
            valid_at in proptest::option::of(0usize..14),
        ) {
            // "\u{ff}" stands for bytes that are not UTF-8.
            let bytes = |s: &str| if s == "\u{ff}" { vec![0xff, 0xfe] } else { s.as_bytes().to_vec() };
            let mut raw: Vec<(Vec<u8>, Vec<u8>)> = pairs.iter().map(|(n, v)| (bytes(n), bytes(v))).collect();
            // Often a whole valid job among them, so that both decodings also succeed.
            if let Some(at) = valid_at {
                let job = sample();
                let job = job.to_fields();
                let at = at.min(raw.len());
                raw.splice(at..at, job.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())));
            }
            let via_map = fields_from_raw(&raw).and_then(|fields| Job::from_fields(fields, &limits()));
            let direct = Job::from_raw(&raw, &limits());
            match (via_map, direct) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(
                    (a.id, a.kind, a.payload, a.enqueued_at_ms, a.attempt, a.trace, a.extra),
                    (b.id, b.kind, b.payload, b.enqueued_at_ms, b.attempt, b.trace, b.extra)
                ),
                (a, b) => proptest::prop_assert_eq!(a.err(), b.err()),
            }
        }
    }
}
