//! Trace context on the wire: the W3C `traceparent`, `tracestate` and `baggage` fields of a stream entry.
//!
//! Injection and extraction go through OpenTelemetry's standard text-map propagators (Trace Context and
//! Baggage) over [`TraceHeaders`], so any SDK in any language reads the same fields with no jobstream code.
//! This module adds what the propagators leave to the caller: the W3C size limits, and the reason a context
//! could not be continued, which the consumer records on the span of the new root trace it starts instead.
//!
//! The sizes are what every vendor must propagate *at least*, so a reader does not give up a trace over them:
//! a valid `traceparent` is always continued, and an oversized `tracestate` or `baggage` is cut by whole list
//! members as the specifications describe (see [`TraceHeaders::truncated`]); the `process` span then says so
//! in `jobstream.trace.context_truncated`. A writer ([`inject`]) still refuses to write fields past them.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::semconv;
use crate::job::{field, Fields};
use crate::limits::{
    BAGGAGE_MAX_BYTES, BAGGAGE_MAX_MEMBERS, TRACESTATE_LONG_MEMBER_CHARS, TRACESTATE_MAX_CHARS, TRACESTATE_MAX_MEMBERS,
};

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![Box::new(TraceContextPropagator::new()), Box::new(BaggagePropagator::new())])
});

/// The Trace Context propagator alone: what an entry with no `baggage` needs (the composite's baggage half would
/// only copy the context).
static TRACE_CONTEXT: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

const TRACE_FIELDS: [&str; 3] = [field::TRACEPARENT, field::TRACESTATE, field::BAGGAGE];

/// The W3C trace fields of one entry: the carrier the propagators write to and read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders(BTreeMap<String, String>);

impl TraceHeaders {
    /// Moves the trace fields out of an entry's fields.
    pub fn take_from(fields: &mut Fields) -> Self {
        Self(TRACE_FIELDS.iter().filter_map(|name| fields.remove_entry(*name)).collect())
    }

    /// Sets the trace field `name` (one of the three, as the entry names it) to `value`.
    pub(crate) fn insert(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_owned(), value.to_owned());
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

    /// These headers cut by whole list members to the W3C sizes, with which fields were cut (`tracestate`,
    /// `baggage` or `tracestate,baggage`); `None` when every field is within them. The `traceparent` is never
    /// touched. A field cut to nothing is left out.
    ///
    /// `tracestate` (W3C Trace Context, "tracestate limits"): the first 32 members are kept; then, while it is
    /// longer than 512 characters, members longer than 128 characters go first, the last one first, then
    /// members from the end. `baggage` (W3C Baggage, "limits"): members go from the end until at most 64
    /// remain and the whole is at most 8192 bytes.
    pub fn truncated(&self) -> Option<(TraceHeaders, &'static str)> {
        let state = self.get(field::TRACESTATE).and_then(truncate_tracestate);
        let baggage = self.get(field::BAGGAGE).and_then(truncate_baggage);
        let label = match (&state, &baggage) {
            (None, None) => return None,
            (Some(_), None) => "tracestate",
            (None, Some(_)) => "baggage",
            (Some(_), Some(_)) => "tracestate,baggage",
        };
        let mut cut = self.clone();
        for (name, value) in [(field::TRACESTATE, state), (field::BAGGAGE, baggage)] {
            match value {
                Some(value) if value.is_empty() => {
                    cut.0.remove(name);
                }
                Some(value) => {
                    cut.0.insert(name.to_owned(), value);
                }
                None => {}
            }
        }
        Some((cut, label))
    }
}

/// The non-empty members of a W3C list, without the optional white space around them.
fn list_members(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|m| !m.is_empty()).collect()
}

/// Length of the members joined with commas, counted by `measure`.
fn joined_length(members: &[&str], measure: impl Fn(&str) -> usize) -> usize {
    members.iter().map(|m| measure(m)).sum::<usize>() + members.len().saturating_sub(1)
}

fn truncate_tracestate(value: &str) -> Option<String> {
    let chars = |m: &str| m.chars().count();
    let mut kept = list_members(value);
    if kept.len() <= TRACESTATE_MAX_MEMBERS && chars(value) <= TRACESTATE_MAX_CHARS {
        return None;
    }
    kept.truncate(TRACESTATE_MAX_MEMBERS);
    while joined_length(&kept, chars) > TRACESTATE_MAX_CHARS {
        match kept.iter().rposition(|m| chars(m) > TRACESTATE_LONG_MEMBER_CHARS) {
            Some(long) => kept.remove(long),
            None => kept.pop().expect("an empty list has length 0"),
        };
    }
    Some(kept.join(","))
}

fn truncate_baggage(value: &str) -> Option<String> {
    let mut kept = list_members(value);
    if kept.len() <= BAGGAGE_MAX_MEMBERS && value.len() <= BAGGAGE_MAX_BYTES {
        return None;
    }
    kept.truncate(BAGGAGE_MAX_MEMBERS);
    while joined_length(&kept, str::len) > BAGGAGE_MAX_BYTES {
        kept.pop();
    }
    Some(kept.join(","))
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
    /// The `tracestate` to inject has more members or characters than W3C allows.
    #[error("tracestate has {members} members and {chars} characters; W3C allows {TRACESTATE_MAX_MEMBERS} members and {TRACESTATE_MAX_CHARS} characters")]
    TracestateTooLarge {
        /// How many list members it has.
        members: usize,
        /// Its length in characters.
        chars: usize,
    },
    /// The `baggage` to inject has more members or bytes than W3C allows.
    #[error("baggage has {members} members and {bytes} bytes; W3C allows {BAGGAGE_MAX_MEMBERS} members and {BAGGAGE_MAX_BYTES} bytes")]
    BaggageTooLarge {
        /// How many list members it has.
        members: usize,
        /// Its length in bytes.
        bytes: usize,
    },
    /// An entry's `traceparent` holds no valid span context; holds its first 64 characters.
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

/// Writes `cx` (its span context and baggage) as W3C fields, refusing fields past the W3C limits. An empty
/// `tracestate` (the propagator writes one for every context) is left out: W3C treats a missing and an empty
/// header alike, and every entry would otherwise carry a field of nothing.
pub fn inject(cx: &Context) -> Result<TraceHeaders, ContextError> {
    let mut headers = TraceHeaders::default();
    PROPAGATOR.inject_context(cx, &mut headers);
    headers.0.retain(|_, value| !value.is_empty());
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

/// Reads the context of an entry, its `tracestate` and `baggage` cut to the W3C sizes first
/// ([`TraceHeaders::truncated`]). When it cannot be continued, the returned context is empty (a new root).
pub fn extract(headers: &TraceHeaders) -> (Context, ContextStatus) {
    let Some(traceparent) = headers.get(field::TRACEPARENT) else {
        return (Context::new(), ContextStatus::Missing);
    };
    let cut = headers.truncated();
    let headers = cut.as_ref().map_or(headers, |(cut, _)| cut);
    let cx = match headers.get(field::BAGGAGE) {
        None => TRACE_CONTEXT.extract(headers),
        Some(_) => PROPAGATOR.extract(headers),
    };
    if cx.span().span_context().is_valid() {
        (cx, ContextStatus::Continued)
    } else {
        let shown: String = traceparent.chars().take(64).collect();
        (Context::new(), ContextStatus::Invalid(ContextError::MalformedTraceparent(shown)))
    }
}

/// Whether a `traceparent` value says its trace is sampled (the low bit of its last hex digit, the flags), read
/// without parsing it: a cheap test before [`span_context_of`], which parses.
pub(crate) fn says_sampled(traceparent: &[u8]) -> bool {
    // The flags are the fourth part (later versions may add parts after it; the propagator trims white space).
    let flags = traceparent.trim_ascii().split(|b| *b == b'-').nth(3).unwrap_or_default();
    flags.get(1).is_some_and(|last| matches!(last, b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'))
}

/// The span context in a `traceparent` value alone (no `tracestate`, no baggage): what a link to a message's
/// creation context needs. `None` when it is not a valid context.
pub(crate) fn span_context_of(traceparent: &[u8]) -> Option<opentelemetry::trace::SpanContext> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == field::TRACEPARENT).then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec![field::TRACEPARENT]
        }
    }
    let value = std::str::from_utf8(traceparent).ok()?;
    let cx = TRACE_CONTEXT.extract(&One(value));
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Records on `span`, as [`semconv::TRACE_CONTEXT_TRUNCATED`], which trace fields [`extract`] cut to the W3C
/// sizes before continuing the context of these headers; nothing when it cut none.
pub fn record_truncation(span: &tracing::Span, headers: &TraceHeaders) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if headers.get(field::TRACEPARENT).is_none() {
        return;
    }
    if let Some((_, label)) = headers.truncated() {
        span.set_attribute(semconv::TRACE_CONTEXT_TRUNCATED, label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::baggage::BaggageExt;
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

    fn list(members: impl IntoIterator<Item = String>) -> String {
        members.into_iter().collect::<Vec<_>>().join(",")
    }

    #[test]
    fn an_oversized_tracestate_keeps_the_trace_and_loses_whole_members() {
        // 33 members: the 33rd goes, the parent and the first 32 stay.
        let many = list((0..33).map(|i| format!("k{i}=v")));
        let (cx, status) = extract(&headers(&[("traceparent", PARENT), ("tracestate", &many)]));
        assert_eq!(status, ContextStatus::Continued);
        let state = cx.span().span_context().trace_state().clone();
        assert_eq!(state.get("k31"), Some("v"));
        assert_eq!(state.get("k32"), None);
        assert_eq!(state.header().split(',').count(), 32);

        // Over 512 characters: the long members go first, the last first, then from the end.
        let long = |k: &str| format!("{k}={}", "l".repeat(200));
        let short = |k: &str| format!("{k}={}", "s".repeat(60));
        let mixed = list([short("a"), long("b"), short("c"), long("d"), short("e"), short("f"), short("g")]);
        assert!(mixed.len() > 512);
        let cut = headers(&[("traceparent", PARENT), ("tracestate", &mixed)]).truncated().unwrap();
        // Without d: 5·62 + 202 + 5 commas = 517, still too long; without b too: 314.
        assert_eq!(
            cut.0.get("tracestate"),
            Some(list([short("a"), short("c"), short("e"), short("f"), short("g")]).as_str())
        );
        assert_eq!(cut.1, "tracestate");
        let shorts = list((0..10).map(|i| short(&format!("k{i}"))));
        let cut = headers(&[("tracestate", &shorts)]).truncated().unwrap().0;
        assert_eq!(
            cut.get("tracestate"),
            Some(list((0..8).map(|i| short(&format!("k{i}")))).as_str()),
            "8·63 + 7 = 511"
        );
        assert_eq!(cut.get("traceparent"), None, "nothing added");

        // One member past the limit alone: the field goes, the trace stays.
        let huge = headers(&[("traceparent", PARENT), ("tracestate", &format!("k={}", "v".repeat(600)))]);
        assert_eq!(huge.truncated().unwrap().0.get("tracestate"), None);
        assert_eq!(extract(&huge).1, ContextStatus::Continued);
    }

    #[test]
    fn an_oversized_baggage_loses_members_from_the_end() {
        let big = list((0..60).map(|i| format!("k{i:02}={}", "y".repeat(150))));
        let (cut, label) = headers(&[("traceparent", PARENT), ("baggage", &big)]).truncated().unwrap();
        assert_eq!(label, "baggage");
        let kept = cut.get("baggage").unwrap();
        assert!(kept.len() <= 8192 && kept.len() > 8192 - 155, "{}", kept.len());
        assert!(big.starts_with(kept), "a prefix of whole members");
        assert_eq!(cut.get("traceparent"), Some(PARENT));
        let (cx, status) = extract(&headers(&[("traceparent", PARENT), ("baggage", &big)]));
        assert_eq!(status, ContextStatus::Continued);
        assert_eq!(cx.baggage().len(), kept.split(',').count());

        let many = list((0..100).map(|i| format!("m{i}=1")));
        let cut = headers(&[("baggage", &many)]).truncated().unwrap().0;
        assert_eq!(cut.get("baggage").unwrap().split(',').count(), 64);

        let both = headers(&[("tracestate", &format!("k={}", "v".repeat(600))), ("baggage", &many)]);
        assert_eq!(both.truncated().unwrap().1, "tracestate,baggage");
        assert_eq!(
            headers(&[("traceparent", PARENT), ("tracestate", "a=1, b=2"), ("baggage", "k=v")]).truncated(),
            None
        );
    }

    #[test]
    fn inject_still_refuses_fields_past_the_limits() {
        let state = TraceState::from_key_value((0..10).map(|i| (format!("k{i}"), "v".repeat(60)))).unwrap();
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        let refused = inject(&Context::new().with_remote_span_context(sc));
        assert!(matches!(refused, Err(ContextError::TracestateTooLarge { members: 10, .. })));
    }

    #[test]
    fn the_sampled_flag_is_read_without_parsing() {
        assert!(says_sampled(PARENT.as_bytes()));
        assert!(!says_sampled(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
        assert!(says_sampled(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"), "other flags set too");
        assert!(!says_sampled(b""));
        assert!(says_sampled(b" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 "), "white space");
        assert!(says_sampled(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later"), "a later version");
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
