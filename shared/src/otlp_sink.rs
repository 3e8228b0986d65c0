//! A real OTLP trace receiver, in process: it accepts `http/protobuf` export requests on `POST /v1/traces` and
//! gRPC `TraceService/Export` calls, decodes them with the OpenTelemetry protobuf definitions, and keeps the
//! spans. The demo uses it to print the span tree of a job when no collector is configured, and the tests use
//! it to check the spans a process really exported. It binds loopback only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// What the receiver keeps: every span, or (for benchmarks) only their number.
#[derive(Default)]
struct Spans {
    kept: Mutex<Vec<ReceivedSpan>>,
    keep: bool,
    received: std::sync::atomic::AtomicU64,
}

type Store = Arc<Spans>;

/// The running receiver. Stops when dropped.
pub struct OtlpSink {
    http: SocketAddr,
    grpc: SocketAddr,
    spans: Store,
    stop: CancellationToken,
}

impl OtlpSink {
    /// Starts both endpoints on free loopback ports, keeping every span received.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(true, "127.0.0.1:0", "127.0.0.1:0").await
    }

    /// Starts the endpoints on the given addresses; with `keep` false spans are decoded and counted but not
    /// kept, so a long benchmark does not grow the receiver.
    pub async fn start_on(keep: bool, http: &str, grpc: &str) -> std::io::Result<Self> {
        let spans = Arc::new(Spans { keep, ..Spans::default() });
        let stop = CancellationToken::new();

        let http_listener = TcpListener::bind(http).await?;
        let http = http_listener.local_addr()?;
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(spans.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(http_listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
        });

        let grpc_listener = TcpListener::bind(grpc).await?;
        let grpc = grpc_listener.local_addr()?;
        let service = TraceServiceServer::new(GrpcSink(spans.clone())).max_decoding_message_size(64 * 1024 * 1024);
        let token = stop.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await;
        });
        Ok(Self { http, grpc, spans, stop })
    }

    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Every span received so far (none when started not to keep them).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.kept.lock().expect("span store poisoned").clone()
    }

    /// How many spans were received so far.
    pub fn received(&self) -> u64 {
        self.spans.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `done` holds for the spans received, polling every 20 ms; on time-out returns what arrived.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn http_export(State(spans): State<Store>, body: Bytes) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            store(&spans, request);
            let reply = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("not an OTLP trace export request: {e}")).into_response(),
    }
}

struct GrpcSink(Store);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn store(spans: &Store, request: ExportTraceServiceRequest) {
    let count: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|scope| scope.spans.len()).sum();
    spans.received.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
    if !spans.keep {
        return;
    }
    let mut out = Vec::with_capacity(count);
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
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
    spans.kept.lock().expect("span store poisoned").extend(out);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// Renders one trace as an indented tree: name, kind, service, duration, status, ordered by start time.
pub fn render_trace(spans: &[ReceivedSpan], trace_id: &str) -> String {
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let ids: std::collections::HashSet<&str> = in_trace.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in &in_trace {
        let parent = span.parent_span_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_ns);
    }
    let mut out = format!("trace {trace_id}\n");
    fn walk(
        out: &mut String,
        children: &BTreeMap<Option<&str>, Vec<&ReceivedSpan>>,
        parent: Option<&str>,
        depth: usize,
    ) {
        for span in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            let ms = span.end_ns.saturating_sub(span.start_ns) as f64 / 1e6;
            let status =
                if span.status == "error" { format!("  ERROR {}", span.status_message) } else { String::new() };
            let attempt = span.attr("jobstream.job.attempt").map(|a| format!(" attempt {a}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{}{}{} [{}] {} {:.1} ms{}",
                "  ".repeat(depth + 1),
                span.name,
                attempt,
                span.kind,
                span.service_name,
                ms,
                status
            );
            walk(out, children, Some(&span.span_id), depth + 1);
        }
    }
    walk(&mut out, &children, None, 0);
    out
}
