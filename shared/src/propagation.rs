//! Trace context on the wire: the W3C `traceparent`, `tracestate` and `baggage` fields of a stream entry.
//!
//! Injection and extraction go through OpenTelemetry's standard text-map propagators (Trace Context and
//! Baggage) over [`TraceHeaders`], so any SDK in any language reads the same fields with no jobstream code.
//! This module adds what the propagators leave to the caller: the W3C size limits, and the reason a context
//! could not be continued, which the consumer records on the span of the new root trace it starts instead.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::job::{field, Fields};
use crate::limits::{BAGGAGE_MAX_BYTES, BAGGAGE_MAX_MEMBERS, TRACESTATE_MAX_CHARS, TRACESTATE_MAX_MEMBERS};

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![Box::new(TraceContextPropagator::new()), Box::new(BaggagePropagator::new())])
});

const TRACE_FIELDS: [&str; 3] = [field::TRACEPARENT, field::TRACESTATE, field::BAGGAGE];

/// The W3C trace fields of one entry: the carrier the propagators write to and read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders(BTreeMap<String, String>);

impl TraceHeaders {
    /// Moves the trace fields out of an entry's fields.
    pub fn take_from(fields: &mut Fields) -> Self {
        Self(TRACE_FIELDS.iter().filter_map(|name| fields.remove_entry(*name)).collect())
    }

    /// Builds headers from `(name, value)` pairs, keeping only the W3C trace fields.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(k, _)| TRACE_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k, v.to_owned()))
                .collect(),
        )
    }

    /// The fields present, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// One field's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// True when no trace field is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_ascii_lowercase(), value);
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(&key.to_ascii_lowercase()).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// A trace field that breaks the W3C limits.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("tracestate has {members} members and {chars} characters; W3C allows {TRACESTATE_MAX_MEMBERS} members and {TRACESTATE_MAX_CHARS} characters")]
    TracestateTooLarge { members: usize, chars: usize },
    #[error("baggage has {members} members and {bytes} bytes; W3C allows {BAGGAGE_MAX_MEMBERS} members and {BAGGAGE_MAX_BYTES} bytes")]
    BaggageTooLarge { members: usize, bytes: usize },
    #[error("traceparent {0:?} is malformed")]
    MalformedTraceparent(String),
}

impl ContextError {
    /// A short, stable label for span attributes and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TracestateTooLarge { .. } => "tracestate_too_large",
            Self::BaggageTooLarge { .. } => "baggage_too_large",
            Self::MalformedTraceparent(_) => "malformed_traceparent",
        }
    }
}

fn members(list: &str) -> usize {
    list.split(',').filter(|m| !m.trim().is_empty()).count()
}

fn check_limits(headers: &TraceHeaders) -> Result<(), ContextError> {
    if let Some(state) = headers.get(field::TRACESTATE) {
        let (members, chars) = (members(state), state.chars().count());
        if members > TRACESTATE_MAX_MEMBERS || chars > TRACESTATE_MAX_CHARS {
            return Err(ContextError::TracestateTooLarge { members, chars });
        }
    }
    if let Some(baggage) = headers.get(field::BAGGAGE) {
        let (members, bytes) = (members(baggage), baggage.len());
        if members > BAGGAGE_MAX_MEMBERS || bytes > BAGGAGE_MAX_BYTES {
            return Err(ContextError::BaggageTooLarge { members, bytes });
        }
    }
    Ok(())
}

/// Writes `cx` (its span context and baggage) as W3C fields, refusing fields past the W3C limits.
pub fn inject(cx: &Context) -> Result<TraceHeaders, ContextError> {
    let mut headers = TraceHeaders::default();
    PROPAGATOR.inject_context(cx, &mut headers);
    check_limits(&headers)?;
    Ok(headers)
}

/// What extraction found on an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextStatus {
    /// A valid remote context: the job continues that trace.
    Continued,
    /// No `traceparent`: the job starts a new root trace.
    Missing,
    /// A context that cannot be continued: the job starts a new root trace, and the span says why.
    Invalid(ContextError),
}

impl ContextStatus {
    /// Value of the `jobstream.trace.context` span attribute.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Continued => "continued",
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Reads the context of an entry. When it cannot be continued, the returned context is empty (a new root).
pub fn extract(headers: &TraceHeaders) -> (Context, ContextStatus) {
    let Some(traceparent) = headers.get(field::TRACEPARENT) else {
        return (Context::new(), ContextStatus::Missing);
    };
    if let Err(e) = check_limits(headers) {
        return (Context::new(), ContextStatus::Invalid(e));
    }
    let cx = PROPAGATOR.extract(headers);
    if cx.span().span_context().is_valid() {
        (cx, ContextStatus::Continued)
    } else {
        let shown: String = traceparent.chars().take(64).collect();
        (Context::new(), ContextStatus::Invalid(ContextError::MalformedTraceparent(shown)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(pairs: &[(&str, &str)]) -> TraceHeaders {
        TraceHeaders::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn inject_then_extract_continues_the_same_span() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let wire = inject(&cx).unwrap();
        assert_eq!(wire.get("traceparent"), Some(PARENT));
        assert_eq!(wire.get("tracestate"), Some("vendor=x"));
        let (back, status) = extract(&wire);
        assert_eq!(status, ContextStatus::Continued);
        let got = back.span().span_context().clone();
        assert_eq!((got.trace_id(), got.span_id(), got.is_sampled()), (sc.trace_id(), sc.span_id(), true));
        assert!(got.is_remote());
    }

    #[test]
    fn missing_and_malformed_contexts_start_a_new_root() {
        assert_eq!(extract(&headers(&[])).1, ContextStatus::Missing);
        let (cx, status) = extract(&headers(&[("traceparent", "garbage")]));
        assert!(matches!(status, ContextStatus::Invalid(ContextError::MalformedTraceparent(_))));
        assert!(!cx.span().span_context().is_valid());
        let zero = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
        assert_eq!(extract(&headers(&[("traceparent", zero)])).1.label(), "invalid");
    }

    #[test]
    fn oversized_tracestate_and_baggage_are_refused() {
        let big_state = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let (_, status) = extract(&headers(&[("traceparent", PARENT), ("tracestate", &big_state)]));
        assert!(matches!(status, ContextStatus::Invalid(ContextError::TracestateTooLarge { members: 33, .. })));
        let long_state = format!("k={}", "v".repeat(600));
        assert_eq!(extract(&headers(&[("traceparent", PARENT), ("tracestate", &long_state)])).1.label(), "invalid");
        let big_baggage = format!("k={}", "v".repeat(9000));
        let (_, status) = extract(&headers(&[("traceparent", PARENT), ("baggage", &big_baggage)]));
        assert!(matches!(status, ContextStatus::Invalid(ContextError::BaggageTooLarge { .. })));
    }

    #[test]
    fn only_trace_fields_are_taken_from_an_entry() {
        let mut fields: Fields = [("traceparent", PARENT), ("payload", "{}"), ("baggage", "a=b")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let taken = TraceHeaders::take_from(&mut fields);
        assert_eq!(taken.iter().count(), 2);
        assert_eq!(fields.keys().collect::<Vec<_>>(), vec!["payload"]);
    }
}
