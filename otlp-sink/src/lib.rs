//! A real OTLP receiver, in process: it accepts `http/protobuf` export requests on `POST /v1/traces`,
//! `/v1/metrics` and `/v1/logs` and the gRPC `TraceService`, `MetricsService` and `LogsService` `Export` calls,
//! decodes them with the OpenTelemetry protobuf definitions, and keeps the spans, metric points and log records
//! ([`received`]); [`shape`] checks the shape of the traces it received. The demo uses it to print the span tree
//! of a job when no collector is configured, and the tests use it to check the spans a process really exported;
//! the benchmarks count spans with it (`examples/otlp_counter.rs`); `producer load --check-traces` serves it for
//! a load test's consumers. It binds the addresses it is given (loopback in the tests and the demo).
//!
//! It is a crate of its own, not published, so that the `jobstream` library (a gRPC *client*, through the OTLP
//! exporter) does not pull a gRPC server into its users' builds.
//!
//! [`OtlpSink::start_tls`] serves both endpoints over TLS instead (HTTPS for `http/protobuf`, gRPC over TLS), with
//! a certificate the caller made, as a production collector does; it counts the TLS handshakes that failed and
//! keeps the headers of every export request, so a test can see a client's CA check and its API-key header.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod received;
pub mod shape;

pub use received::{ReceivedLog, ReceivedPoint, ReceivedSpan};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// What the receiver keeps: every span, metric point and log record, or (for benchmarks) only the number of
/// spans.
#[derive(Default)]
struct Spans {
    kept: Mutex<Vec<ReceivedSpan>>,
    points: Mutex<Vec<ReceivedPoint>>,
    logs: Mutex<Vec<ReceivedLog>>,
    keep: bool,
    received: AtomicU64,
    /// The headers (gRPC metadata) of every export request, when spans are kept.
    headers: Mutex<Vec<BTreeMap<String, String>>>,
    /// TLS handshakes that failed (a client that does not trust the certificate, or a plaintext one).
    tls_failures: AtomicU64,
}

type Store = Arc<Spans>;

/// The running receiver. Stops when dropped.
pub struct OtlpSink {
    http: SocketAddr,
    grpc: SocketAddr,
    tls: bool,
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
        Self::launch(keep, http, grpc, None).await
    }

    /// The examples' start: the endpoints on the addresses given as the program's first two arguments (defaults
    /// `127.0.0.1:4318` for http/protobuf and `127.0.0.1:4317` for gRPC), announced on stderr.
    pub async fn start_from_args(keep: bool) -> std::io::Result<Self> {
        let mut args = std::env::args().skip(1);
        let http = args.next().unwrap_or_else(|| "127.0.0.1:4318".to_owned());
        let grpc = args.next().unwrap_or_else(|| "127.0.0.1:4317".to_owned());
        let sink = Self::start_on(keep, &http, &grpc).await?;
        eprintln!("receiving OTLP on {} (http/protobuf) and {} (grpc)", sink.http_endpoint(), sink.grpc_endpoint());
        Ok(sink)
    }

    /// Starts both endpoints on free loopback ports over TLS, presenting `cert_pem` (the server certificate,
    /// then any intermediates) with its private key `key_pem`; keeps every span.
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<Self> {
        let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&e))?;
        Self::launch(true, "127.0.0.1:0", "127.0.0.1:0", Some(config)).await
    }

    async fn launch(keep: bool, http: &str, grpc: &str, tls: Option<rustls::ServerConfig>) -> std::io::Result<Self> {
        let spans = Arc::new(Spans { keep, ..Spans::default() });
        let stop = CancellationToken::new();
        // HTTP/1.1 for http/protobuf, HTTP/2 for gRPC, as a TLS client asks for them (ALPN).
        let acceptor = |alpn: &[u8]| {
            tls.clone().map(|mut config| {
                config.alpn_protocols = vec![alpn.to_vec()];
                tokio_rustls::TlsAcceptor::from(Arc::new(config))
            })
        };

        let http_listener = TcpListener::bind(http).await?;
        let http = http_listener.local_addr()?;
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .route("/v1/metrics", axum::routing::post(http_export_metrics))
            .route("/v1/logs", axum::routing::post(http_export_logs))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(spans.clone());
        let token = stop.clone();
        match acceptor(b"http/1.1") {
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(http_listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
                });
            }
            Some(acceptor) => {
                let incoming = tls_incoming(http_listener, acceptor, spans.clone(), stop.clone());
                let listener = TlsListener { incoming, local: http };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
                });
            }
        }

        let grpc_listener = TcpListener::bind(grpc).await?;
        let grpc = grpc_listener.local_addr()?;
        let service = TraceServiceServer::new(GrpcSink(spans.clone())).max_decoding_message_size(64 * 1024 * 1024);
        let token = stop.clone();
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(MetricsServiceServer::new(GrpcSink(spans.clone())).max_decoding_message_size(64 * 1024 * 1024))
            .add_service(LogsServiceServer::new(GrpcSink(spans.clone())).max_decoding_message_size(64 * 1024 * 1024));
        match acceptor(b"h2") {
            None => {
                tokio::spawn(async move {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
                    let _ = server.serve_with_incoming_shutdown(incoming, token.cancelled_owned()).await;
                });
            }
            Some(acceptor) => {
                let incoming = tls_incoming(grpc_listener, acceptor, spans.clone(), stop.clone());
                let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
                let incoming = futures_util::StreamExt::map(incoming, |(stream, _)| Ok::<_, std::io::Error>(stream));
                tokio::spawn(async move {
                    let _ = server.serve_with_incoming_shutdown(incoming, token.cancelled_owned()).await;
                });
            }
        }
        Ok(Self { http, grpc, tls: tls.is_some(), spans, stop })
    }

    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf` (`https://` when started with TLS).
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.http)
    }

    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc` (`https://` when started with TLS).
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc)
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The headers (gRPC metadata) of every export request received so far, names in lower case.
    pub fn request_headers(&self) -> Vec<BTreeMap<String, String>> {
        self.spans.headers.lock().expect("header store poisoned").clone()
    }

    /// How many TLS handshakes failed so far (only with [`OtlpSink::start_tls`]).
    pub fn tls_failures(&self) -> u64 {
        self.spans.tls_failures.load(Ordering::Relaxed)
    }

    /// Every span received so far (none when started not to keep them).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.kept.lock().expect("span store poisoned").clone()
    }

    /// Every metric data point received so far, in the order they arrived (a cumulative counter appears once per
    /// export; the last is the current total).
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.spans.points.lock().expect("point store poisoned").clone()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.spans.logs.lock().expect("log store poisoned").clone()
    }

    /// Waits until `done` holds for the metric points received, polling every 20 ms; on time-out returns what
    /// arrived.
    pub async fn wait_for_points(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedPoint]) -> bool,
    ) -> Result<Vec<ReceivedPoint>, Vec<ReceivedPoint>> {
        poll(timeout, || self.points(), done).await
    }

    /// Waits until `done` holds for the log records received, polling every 20 ms; on time-out returns what
    /// arrived.
    pub async fn wait_for_logs(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedLog]) -> bool,
    ) -> Result<Vec<ReceivedLog>, Vec<ReceivedLog>> {
        poll(timeout, || self.logs(), done).await
    }

    /// How many spans were received so far.
    pub fn received(&self) -> u64 {
        self.spans.received.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds for the spans received, polling every 20 ms; on time-out returns what arrived.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        poll(timeout, || self.spans(), done).await
    }
}

/// Reads `read` every 20 ms until `done` holds for it or `timeout` passed.
async fn poll<T>(timeout: Duration, read: impl Fn() -> Vec<T>, done: impl Fn(&[T]) -> bool) -> Result<Vec<T>, Vec<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        let items = read();
        if done(&items) {
            return Ok(items);
        }
        if Instant::now() >= deadline {
            return Err(items);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("http", &self.http_endpoint())
            .field("grpc", &self.grpc_endpoint())
            .field("received", &self.received())
            .finish()
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Accepts TCP connections and completes their TLS handshakes, each in its own task so that a slow or failing
/// client holds up no other; hands over the connections that completed, counts those that did not.
fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    spans: Store,
    stop: CancellationToken,
) -> tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let (acceptor, sender, spans) = (acceptor.clone(), sender.clone(), spans.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send((stream, peer)).await;
                    }
                    _ => {
                        spans.tls_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    receiver
}

/// The TLS connections of [`tls_incoming`] as a listener for `axum::serve`.
struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The acceptor stopped with the sink: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn keep_headers(spans: &Store, headers: &HeaderMap) {
    if !spans.keep {
        return;
    }
    let headers = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    spans.headers.lock().expect("header store poisoned").push(headers);
}

/// An OTLP/HTTP reply: 200 with the encoded response, or 400 when the body is not a request of `what`.
fn reply<R: Message, A: Message>(
    decoded: Result<R, prost::DecodeError>,
    what: &str,
    keep: impl FnOnce(R) -> A,
) -> axum::response::Response {
    match decoded {
        Ok(request) => {
            let reply = keep(request).encode_to_vec();
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], reply).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("not an OTLP {what} export request: {e}")).into_response(),
    }
}

async fn http_export(State(spans): State<Store>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    keep_headers(&spans, &headers);
    reply(ExportTraceServiceRequest::decode(body), "trace", |request| {
        store(&spans, request);
        ExportTraceServiceResponse { partial_success: None }
    })
}

async fn http_export_metrics(State(spans): State<Store>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    keep_headers(&spans, &headers);
    reply(ExportMetricsServiceRequest::decode(body), "metrics", |request| {
        store_points(&spans, request);
        ExportMetricsServiceResponse { partial_success: None }
    })
}

async fn http_export_logs(State(spans): State<Store>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    keep_headers(&spans, &headers);
    reply(ExportLogsServiceRequest::decode(body), "logs", |request| {
        store_logs(&spans, request);
        ExportLogsServiceResponse { partial_success: None }
    })
}

struct GrpcSink(Store);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep_headers(&self.0, &request.metadata().clone().into_headers());
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        keep_headers(&self.0, &request.metadata().clone().into_headers());
        store_points(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        keep_headers(&self.0, &request.metadata().clone().into_headers());
        store_logs(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

fn store(spans: &Store, request: ExportTraceServiceRequest) {
    spans.received.fetch_add(received::span_count(&request) as u64, Ordering::Relaxed);
    if spans.keep {
        let decoded = received::spans(request);
        spans.kept.lock().expect("span store poisoned").extend(decoded);
    }
}

fn store_points(spans: &Store, request: ExportMetricsServiceRequest) {
    if spans.keep {
        let decoded = received::points(request);
        spans.points.lock().expect("point store poisoned").extend(decoded);
    }
}

fn store_logs(spans: &Store, request: ExportLogsServiceRequest) {
    if spans.keep {
        let decoded = received::logs(request);
        spans.logs.lock().expect("log store poisoned").extend(decoded);
    }
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
