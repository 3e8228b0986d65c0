//! The spans a process exported, as the OTLP sink received them.

pub use jobstream_otlp_sink::{OtlpSink, ReceivedSpan};

/// The spans of one trace with a given name.
pub fn named<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace_id && s.name == name).collect()
}
