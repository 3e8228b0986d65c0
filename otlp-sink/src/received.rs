//! What the receiver keeps of an export request: spans, metric data points and log records, flattened from the
//! OTLP protobuf messages into plain values for assertions and printing (attribute values rendered as text).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as AnyValueMessage, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use opentelemetry_proto::tonic::resource::v1::Resource;

/// One span as it arrived, flattened for assertions and printing.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service_name: String,
    /// Trace id, lower-case hex.
    pub trace_id: String,
    /// Span id, lower-case hex.
    pub span_id: String,
    /// Parent span id, `None` for a root.
    pub parent_span_id: Option<String>,
    /// Span name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer`, `internal` or `unspecified`.
    pub kind: &'static str,
    /// Attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// Each attribute's type as it was exported: `string`, `int`, `double`, `bool`, `array`, `kvlist` or `bytes`.
    pub attribute_types: BTreeMap<String, &'static str>,
    /// `unset`, `ok` or `error`.
    pub status: &'static str,
    /// Status message, empty unless the span failed.
    pub status_message: String,
    /// Event names with their attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// Links as (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Start time, unix ns.
    pub start_ns: u64,
    /// End time, unix ns.
    pub end_ns: u64,
}

impl ReceivedSpan {
    /// One attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One metric data point as it arrived: a sum's or gauge's value, or a histogram's count, sum and buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPoint {
    /// `service.name` of the exporting process.
    pub service_name: String,
    /// Instrumentation scope (meter) name.
    pub scope: String,
    /// Metric name.
    pub name: String,
    /// Unit, as UCUM (`s`, `{message}`).
    pub unit: String,
    /// `sum`, `gauge`, `histogram`, `exponential_histogram` or `summary`.
    pub kind: &'static str,
    /// For a sum: whether it is monotonic (a counter).
    pub monotonic: bool,
    /// `delta`, `cumulative` or `unspecified`.
    pub temporality: &'static str,
    /// The point's attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// A sum's or gauge's value; a histogram's sum.
    pub value: f64,
    /// A histogram's count of measurements; 0 for a sum or gauge.
    pub count: u64,
    /// A histogram's explicit bucket boundaries.
    pub bounds: Vec<f64>,
}

impl ReceivedPoint {
    /// One attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One log record as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedLog {
    /// `service.name` of the exporting process.
    pub service_name: String,
    /// `INFO`, `WARN`, …, as the exporter wrote it.
    pub severity_text: String,
    /// The OpenTelemetry severity number (9 = INFO, 13 = WARN, 17 = ERROR).
    pub severity_number: i32,
    /// The body, rendered as text.
    pub body: String,
    /// The record's event name (for a `tracing` event, its name).
    pub event_name: String,
    /// Attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// Trace id, lower-case hex; `None` outside any span.
    pub trace_id: Option<String>,
    /// Span id, lower-case hex; `None` outside any span.
    pub span_id: Option<String>,
}

impl ReceivedLog {
    /// One attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// How many spans an export request holds.
pub(crate) fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|scope| scope.spans.len()).sum()
}

fn service_name(resource: Option<&Resource>) -> String {
    resource.and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name")).map(value_of).unwrap_or_default()
}

/// The spans of an export request.
pub(crate) fn spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::with_capacity(span_count(&request));
    for resource_spans in request.resource_spans {
        let service_name = service_name(resource_spans.resource.as_ref());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    kind: match span.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    attributes: attributes(&span.attributes),
                    attribute_types: span.attributes.iter().map(|kv| (kv.key.clone(), type_of(kv))).collect(),
                    status: match status.code {
                        1 => "ok",
                        2 => "error",
                        _ => "unset",
                    },
                    status_message: status.message,
                    events: span.events.iter().map(|e| (e.name.clone(), attributes(&e.attributes))).collect(),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn temporality(code: i32) -> &'static str {
    match code {
        1 => "delta",
        2 => "cumulative",
        _ => "unspecified",
    }
}

/// The data points of an export request, one [`ReceivedPoint`] each.
pub(crate) fn points(request: ExportMetricsServiceRequest) -> Vec<ReceivedPoint> {
    let mut out = Vec::new();
    for resource_metrics in request.resource_metrics {
        let service_name = service_name(resource_metrics.resource.as_ref());
        for scope_metrics in resource_metrics.scope_metrics {
            let scope = scope_metrics.scope.map(|s| s.name).unwrap_or_default();
            for metric in scope_metrics.metrics {
                let point =
                    |kind, monotonic, temporality, attributes: &[KeyValue], value, count, bounds| ReceivedPoint {
                        service_name: service_name.clone(),
                        scope: scope.clone(),
                        name: metric.name.clone(),
                        unit: metric.unit.clone(),
                        kind,
                        monotonic,
                        temporality,
                        attributes: self::attributes(attributes),
                        value,
                        count,
                        bounds,
                    };
                let number = |v: &Option<NumberValue>| match v {
                    Some(NumberValue::AsDouble(d)) => *d,
                    Some(NumberValue::AsInt(i)) => *i as f64,
                    None => 0.0,
                };
                match &metric.data {
                    Some(Data::Sum(sum)) => {
                        for p in &sum.data_points {
                            let t = temporality(sum.aggregation_temporality);
                            out.push(point("sum", sum.is_monotonic, t, &p.attributes, number(&p.value), 0, vec![]));
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            out.push(point("gauge", false, "unspecified", &p.attributes, number(&p.value), 0, vec![]));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let t = temporality(h.aggregation_temporality);
                            let sum = p.sum.unwrap_or_default();
                            let bounds = p.explicit_bounds.clone();
                            out.push(point("histogram", false, t, &p.attributes, sum, p.count, bounds));
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            let t = temporality(h.aggregation_temporality);
                            let sum = p.sum.unwrap_or_default();
                            out.push(point("exponential_histogram", false, t, &p.attributes, sum, p.count, vec![]));
                        }
                    }
                    Some(Data::Summary(s)) => {
                        for p in &s.data_points {
                            out.push(point("summary", false, "unspecified", &p.attributes, p.sum, p.count, vec![]));
                        }
                    }
                    None => {}
                }
            }
        }
    }
    out
}

/// The log records of an export request.
pub(crate) fn logs(request: ExportLogsServiceRequest) -> Vec<ReceivedLog> {
    let mut out = Vec::new();
    for resource_logs in request.resource_logs {
        let service_name = service_name(resource_logs.resource.as_ref());
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                out.push(ReceivedLog {
                    service_name: service_name.clone(),
                    severity_text: record.severity_text,
                    severity_number: record.severity_number,
                    body: record.body.as_ref().map(render).unwrap_or_default(),
                    event_name: record.event_name,
                    attributes: attributes(&record.attributes),
                    trace_id: (!record.trace_id.is_empty()).then(|| hex(&record.trace_id)),
                    span_id: (!record.span_id.is_empty()).then(|| hex(&record.span_id)),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn render(value: &AnyValueMessage) -> String {
    match value.value.as_ref() {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The type name of an attribute's value, as the specification's attribute tables name them.
fn type_of(kv: &KeyValue) -> &'static str {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(_)) => "string",
        Some(AnyValue::BoolValue(_)) => "bool",
        Some(AnyValue::IntValue(_)) => "int",
        Some(AnyValue::DoubleValue(_)) => "double",
        Some(AnyValue::ArrayValue(_)) => "array",
        Some(AnyValue::KvlistValue(_)) => "kvlist",
        Some(AnyValue::BytesValue(_)) => "bytes",
        Some(AnyValue::StringValueStrindex(_)) => "string",
        None => "empty",
    }
}

fn value_of(kv: &KeyValue) -> String {
    kv.value.as_ref().map(render).unwrap_or_default()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), value_of(kv))).collect()
}
