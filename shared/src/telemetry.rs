//! Tracing and logs for a jobstream process: one [`init`] called from `main`, one [`Telemetry::shutdown`] at
//! exit so buffered spans are flushed.
//!
//! Spans go out over OTLP as the standard `OTEL_*` variables say: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or
//! `grpc`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` (default
//! `parentbased_always_on`, so consumers follow the producer's sampled flag) and `OTEL_TRACES_EXPORTER`
//! (`otlp` or `none`). With no endpoint set, spans are still made, so trace ids propagate, but not exported.
//! Export runs in the SDK's batch processor on its own thread, off the job path.
//!
//! An `https://` endpoint is reached over TLS, with both protocols. The collector's certificate is checked
//! against the system's roots, or, when `OTEL_EXPORTER_OTLP_CERTIFICATE` (or `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`)
//! names a PEM file, against the CAs in that file alone. `OTEL_EXPORTER_OTLP_HEADERS` (e.g. `api-key=secret`)
//! and `OTEL_EXPORTER_OTLP_TIMEOUT` (ms), and their `_TRACES_` variants, which win, are honoured too (the
//! exporter reads the headers itself; they are never logged). TLS uses rustls with the `ring` provider, the
//! same as `rediss://`. An export that fails is reported in one log line naming the endpoint and the cause, not
//! once per batch; the jobs go on, and a line says so when export works again.
//!
//! Logs go to stderr: JSON lines carrying `trace_id` and `span_id` when stderr is not a terminal, plain text when
//! it is; `JOBSTREAM_LOG_FORMAT=json|text` overrides that and `RUST_LOG` filters them. Which spans are traced is
//! filtered separately (`JOBSTREAM_TRACE_FILTER`, default `info`), so quieter logs never cut a trace.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable names a format, exporter or protocol jobstream does not offer.
    #[error("{var}={value:?} is not supported; use {supported}")]
    Unsupported {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// The values it may take.
        supported: &'static str,
    },
    /// The OTLP exporter (or its HTTP client) could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `RUST_LOG` or `JOBSTREAM_TRACE_FILTER` is not a valid filter.
    #[error("invalid filter in {var}: {source}")]
    Filter {
        /// The variable's name.
        var: &'static str,
        /// Why the filter does not parse.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A variable's value cannot be used: a CA file that cannot be read or holds no CA certificate, a time-out
    /// that is not a number.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another global tracing subscriber was installed first (telemetry set up twice in one process).
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, with `trace_id` and `span_id`.
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// `JOBSTREAM_LOG_FORMAT` if set, else text on a terminal and JSON otherwise.
    pub fn from_env() -> Result<Self, TelemetryError> {
        match std::env::var("JOBSTREAM_LOG_FORMAT").ok().as_deref() {
            Some("json") => Ok(Self::Json),
            Some("text") => Ok(Self::Text),
            Some(other) => Err(TelemetryError::Unsupported {
                var: "JOBSTREAM_LOG_FORMAT",
                value: other.to_owned(),
                supported: "json or text",
            }),
            None if std::io::stderr().is_terminal() => Ok(Self::Text),
            None => Ok(Self::Json),
        }
    }
}

/// Where spans go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Nowhere: spans exist for propagation only.
    Off,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP over gRPC.
    Grpc,
}

impl Export {
    /// Reads the standard `OTEL_*` variables.
    pub fn from_env() -> Result<Self, TelemetryError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::Off);
        }
        let has_endpoint =
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None if !has_endpoint => return Ok(Self::Off),
            None | Some("otlp") => {}
            Some("none") => return Ok(Self::Off),
            Some(other) => {
                return Err(TelemetryError::Unsupported {
                    var: "OTEL_TRACES_EXPORTER",
                    value: other.to_owned(),
                    supported: "otlp or none",
                })
            }
        }
        let (name, protocol) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
            ),
        };
        match protocol.as_str() {
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "grpc" => Ok(Self::Grpc),
            _ => Err(TelemetryError::Unsupported { var: name, value: protocol, supported: "http/protobuf or grpc" }),
        }
    }
}

/// The installed telemetry; call [`Telemetry::shutdown`] before exiting.
pub struct Telemetry {
    provider: SdkTracerProvider,
    export: Export,
}

impl std::fmt::Debug for Telemetry {
    /// Shows where spans go, not the provider: its exporter holds the OTLP headers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("export", &self.export).finish_non_exhaustive()
    }
}

/// What [`init_with`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `service.name`, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names the service.
    pub service_name: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where spans go.
    pub export: Export,
    /// Base URL of the collector (`http://host:4318` or `http://host:4317`); `None` reads the `OTEL_*` variables.
    pub endpoint: Option<String>,
    /// Finished spans buffered for export unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise; a full buffer drops
    /// spans. A load generator, which makes spans in bursts, wants more than a service.
    pub span_queue: usize,
}

impl TelemetrySettings {
    /// Settings from the environment, as [`init`] uses them.
    pub fn from_env(service_name: &str) -> Result<Self, TelemetryError> {
        Ok(Self {
            service_name: service_name.to_owned(),
            log_format: LogFormat::from_env()?,
            export: Export::from_env()?,
            endpoint: None,
            span_queue: DEFAULT_SPAN_QUEUE,
        })
    }
}

/// Installs telemetry as the environment says; see the module documentation. Call it inside a Tokio runtime.
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    init_with(TelemetrySettings::from_env(service_name)?)
}

/// Installs the global tracer provider, the W3C propagators and the tracing subscriber.
pub fn init_with(settings: TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let export = settings.export;
    let provider = provider(&settings)?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
        Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    ]));

    let trace_filter = filter("JOBSTREAM_TRACE_FILTER", "info")?;
    let log_filter = filter("RUST_LOG", "info")?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("jobstream")).with_filter(trace_filter);
    // Export failures are reported once by `ReportingExporter`; the SDK's own line per failed batch is dropped.
    let quiet = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("opentelemetry") && SDK_EXPORT_FAILURE_EVENTS.contains(&meta.name()))
    });
    let dispatch = Arc::new(std::sync::OnceLock::new());
    let logs = match settings.log_format {
        LogFormat::Json => {
            let mut json = json_subscriber::layer()
                .with_writer(std::io::stderr)
                .with_current_span(false)
                .with_span_list(false)
                .flatten_event(true);
            // `trace_id` and `span_id` as top-level fields, those of the event's span (or its nearest traced
            // ancestor); json-subscriber's own option nests them under `openTelemetry`.
            let dispatch = dispatch.clone();
            json.inner_layer_mut().add_multiple_dynamic_fields(move |event, context, writer| {
                let Some(dispatch) = dispatch.get().and_then(tracing::dispatcher::WeakDispatch::upgrade) else {
                    return;
                };
                for span in context.event_scope(event).into_iter().flatten() {
                    let Some(otel) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) else {
                        continue;
                    };
                    let otel_span = otel.span();
                    let ids = otel_span.span_context();
                    if ids.is_valid() {
                        let _ = writer.write_field("trace_id", ids.trace_id().to_string());
                        let _ = writer.write_field("span_id", ids.span_id().to_string());
                        return;
                    }
                }
            });
            json.with_filter(log_filter).with_filter(quiet).boxed()
        }
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter)
            .with_filter(quiet)
            .boxed(),
    };
    tracing_subscriber::registry().with(otel).with(logs).with(CaptureDispatch(dispatch)).try_init()?;
    // A panic (a handler's, caught by the worker, or any other) is one log line with its message and place, in
    // the span it happened in, instead of the default multi-line report on stderr.
    std::panic::set_hook(Box::new(|info| {
        let message = crate::handler::panic_message(info.payload());
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(panic.message = %message, panic.location = %location, "panicked: {message}");
    }));
    tracing::debug!(?export, "telemetry ready");
    Ok(Telemetry { provider, export })
}

/// Keeps the dispatcher the subscriber is installed as, for looking up a span's OpenTelemetry context from a
/// log line.
struct CaptureDispatch(Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>);

impl<S: tracing::Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

fn filter(var: &'static str, default: &str) -> Result<EnvFilter, TelemetryError> {
    let spec = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    // The exporter's own HTTP/gRPC clients must never trace themselves into the pipeline they feed.
    let spec = format!("{spec},h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,opentelemetry=warn");
    EnvFilter::builder().parse(spec).map_err(|source| TelemetryError::Filter { var, source })
}

/// The SDK's log events for a failed export, one per batch (and per retry): [`ReportingExporter`] says it once.
const SDK_EXPORT_FAILURE_EVENTS: &[&str] =
    &["BatchSpanProcessor.ExportError", "Export.Failed.DeadlineExceeded", "Export.Failed.NonRetryable"];

/// Spans buffered for export when `OTEL_BSP_MAX_QUEUE_SIZE` is not set. The SDK's default (2,048) overflows,
/// dropping spans, at a few thousand jobs per second; 8,192 finished `process` spans take about 16 MB.
pub const DEFAULT_SPAN_QUEUE: usize = 8_192;

/// The batch span processor's settings: `OTEL_BSP_*` where set, else the SDK's defaults but for the queue.
/// Export requests stay at the SDK's 512 spans: larger ones (2,048 was tried) make CPU bursts on the exporter
/// thread that doubled the p99 queue latency at 5,000 jobs/s on a 2-core machine (bench/README.md).
fn batch_config(span_queue: usize) -> BatchConfig {
    let mut config = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(span_queue);
    }
    config.build()
}

fn provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let mut resource = Resource::builder();
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name(settings.service_name.clone());
    }
    let resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = settings.endpoint.as_deref().map(|base| base.trim_end_matches('/'));
    let batch =
        |exporter| BatchSpanProcessor::builder(exporter).with_batch_config(batch_config(settings.span_queue)).build();
    let builder = match settings.export {
        Export::Off => builder,
        Export::HttpProtobuf => {
            let tls = TlsSettings::from_env()?;
            let cause = LastCause::default();
            let client = http_client(&tls, cause.clone())?;
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_http_client(client);
            let shown =
                match endpoint {
                    Some(base) => {
                        exporter = exporter.with_endpoint(format!("{base}/v1/traces"));
                        format!("{base}/v1/traces")
                    }
                    None => env_endpoint()
                        .map(|(var, url)| {
                            if var == TRACES_ENDPOINT {
                                url
                            } else {
                                format!("{}/v1/traces", url.trim_end_matches('/'))
                            }
                        })
                        .unwrap_or_else(|| "http://localhost:4318/v1/traces".into()),
                };
            builder.with_span_processor(batch(ReportingExporter::new(exporter.build()?, shown, cause)))
        }
        Export::Grpc => {
            let tls = TlsSettings::from_env()?;
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            let shown = match endpoint {
                Some(base) => {
                    exporter = exporter.with_endpoint(base.to_owned());
                    base.to_owned()
                }
                None => env_endpoint().map(|(_, url)| url).unwrap_or_else(|| "http://localhost:4317".into()),
            };
            if shown.starts_with("https://") {
                install_tls_provider();
                let config = tonic::transport::ClientTlsConfig::new();
                let config = match &tls.ca {
                    Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem)),
                    None => config.with_native_roots(),
                };
                exporter = exporter.with_tls_config(config);
            }
            builder.with_span_processor(batch(ReportingExporter::new(exporter.build()?, shown, LastCause::default())))
        }
    };
    Ok(builder.build())
}

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// A variable's value, the `_TRACES_` one first: `(which, value)`.
fn signal_var(traces: &'static str, general: &'static str) -> Option<(&'static str, String)> {
    let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| (name, v));
    var(traces).or_else(|| var(general))
}

fn env_endpoint() -> Option<(&'static str, String)> {
    signal_var(TRACES_ENDPOINT, "OTEL_EXPORTER_OTLP_ENDPOINT")
}

/// rustls needs one process-wide crypto provider: the same `ring` one the Redis connections install.
fn install_tls_provider() {
    crate::connection::install_tls_provider();
}

/// A CA file's certificates.
struct CaFile {
    var: &'static str,
    path: String,
    pem: Vec<u8>,
    certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// What the standard variables say about the exporter's connection beyond the endpoint.
struct TlsSettings {
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`: trust only these CAs.
    ca: Option<CaFile>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`, ms (the exporter reads it too, for its retries' deadline).
    timeout: Option<Duration>,
}

impl TlsSettings {
    fn from_env() -> Result<Self, TelemetryError> {
        let ca = match signal_var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE") {
            None => None,
            Some((var, path)) => {
                let invalid = |reason: String| TelemetryError::Invalid { var, value: path.clone(), reason };
                let pem = std::fs::read(&path).map_err(|e| invalid(format!("cannot read the CA file: {e}")))?;
                use rustls::pki_types::pem::PemObject;
                let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
                if certificates.is_empty() {
                    return Err(invalid("no PEM certificate in the file".into()));
                }
                Some(CaFile { var, path, pem, certificates })
            }
        };
        let timeout = match signal_var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            None => None,
            Some((var, value)) => match value.trim().parse::<u64>() {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    return Err(TelemetryError::Invalid { var, value, reason: "not a number of milliseconds".into() })
                }
            },
        };
        Ok(Self { ca, timeout })
    }
}

/// The HTTP exporter's client: TLS (rustls, ring) for `https://`, checking the collector against the CA file or
/// the system's roots; the exporter's time-out; the cause of a failed request kept for the one log line.
fn http_client(tls: &TlsSettings, cause: LastCause) -> Result<CauseKeepingClient, TelemetryError> {
    install_tls_provider();
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for certificate in &ca.certificates {
                roots.add(certificate.clone()).map_err(|e| TelemetryError::Invalid {
                    var: ca.var,
                    value: ca.path.clone(),
                    reason: format!("not a CA certificate: {e}"),
                })?;
            }
        }
        // The same roots as gRPC's (tonic's native roots) and `rediss://`'s.
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| opentelemetry_otlp::ExporterBuildError::InternalFailure(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let timeout = tls.timeout.unwrap_or(opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT);
    let builder = reqwest::blocking::Client::builder().timeout(timeout).tls_backend_preconfigured(config);
    // The blocking client runs its own runtime, which must not be built (or dropped) on a Tokio thread.
    let client = std::thread::spawn(move || builder.build())
        .join()
        .map_err(|_| {
            opentelemetry_otlp::ExporterBuildError::InternalFailure("building the HTTP client panicked".into())
        })?
        .map_err(|e| {
            opentelemetry_otlp::ExporterBuildError::InternalFailure(format!("cannot build the HTTP client: {e}"))
        })?;
    Ok(CauseKeepingClient { client, cause })
}

/// The cause of the last failed export, in words, where the transport tells more than the exporter passes on
/// (the HTTP exporter reduces every failure to "network error").
#[derive(Debug, Default, Clone)]
struct LastCause(Arc<Mutex<Option<String>>>);

impl LastCause {
    fn set(&self, cause: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause);
    }

    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The blocking reqwest client, keeping the cause of a failed request (its whole source chain: the TLS error is
/// at the bottom of it).
#[derive(Debug)]
struct CauseKeepingClient {
    client: reqwest::blocking::Client,
    cause: LastCause,
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for CauseKeepingClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let result = self.client.send_bytes(request).await;
        if let Err(e) = &result {
            self.cause.set(error_chain(e.as_ref()));
        }
        result
    }
}

/// An error and its sources, each once, joined with `: `.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// A failure's text without the SDK's "Operation failed: " and without a cause repeated at its end.
fn tidy(cause: &str) -> String {
    let cause = cause.strip_prefix("Operation failed: ").unwrap_or(cause);
    let mut parts: Vec<&str> = Vec::new();
    for part in cause.split(": ") {
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Whether export is failing, so that a failure is reported once, not once per batch.
#[derive(Debug, Default)]
struct FailureReport {
    failing: AtomicBool,
    failures: AtomicU64,
}

impl FailureReport {
    /// Records a failed export; true for the first of a run of failures, the one to report.
    fn failed(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// Records a successful export; the number of failed exports before it when it ends a run of failures.
    fn succeeded(&self) -> Option<u64> {
        self.failing.swap(false, Ordering::Relaxed).then(|| self.failures.swap(0, Ordering::Relaxed))
    }
}

/// The OTLP exporter, reporting a failed export in one clear log line (endpoint and cause) until export works
/// again. The SDK's own line per failed batch is filtered out of the logs.
#[derive(Debug)]
struct ReportingExporter<E> {
    inner: E,
    endpoint: String,
    cause: LastCause,
    report: FailureReport,
}

impl<E> ReportingExporter<E> {
    fn new(inner: E, endpoint: String, cause: LastCause) -> Self {
        Self { inner, endpoint, cause, report: FailureReport::default() }
    }
}

impl<E: SpanExporter> SpanExporter for ReportingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) => {
                let cause = tidy(&self.cause.take().unwrap_or_else(|| e.to_string()));
                if self.report.failed() {
                    tracing::error!(
                        "cannot export spans to {}: {cause}; spans are dropped until export works again \
                         (reported once; jobs are not affected)",
                        self.endpoint
                    );
                } else {
                    tracing::debug!(spans, "span export still failing: {cause}");
                }
            }
            Ok(()) => {
                if let Some(failed) = self.report.succeeded() {
                    tracing::info!(endpoint = %self.endpoint, failed, "span export works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl Telemetry {
    /// Where spans go.
    pub fn export(&self) -> Export {
        self.export
    }

    /// Exports every finished span now; returns once the exporter answered.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Flushes buffered spans and stops the exporter, waiting at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let provider = self.provider;
        let result = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        if let Ok(Err(e)) = result {
            eprintln!("jobstream: flushing spans at exit failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failed_exports_is_reported_once_and_its_end_once() {
        let report = FailureReport::default();
        assert_eq!(report.succeeded(), None, "nothing to report while export works");
        assert!(report.failed(), "the first failure is reported");
        assert!(!report.failed(), "the next batches' failures are not");
        assert!(!report.failed());
        assert_eq!(report.succeeded(), Some(3), "the recovery is reported once, with the failures it ends");
        assert_eq!(report.succeeded(), None);
        assert!(report.failed(), "a new run of failures is reported again");
    }

    #[test]
    fn a_cause_is_told_once_without_the_sdk_prefix() {
        assert_eq!(
            tidy(
                "Operation failed: TonicTracesClient export failed with gRPC code: Unavailable: transport error: \
                  invalid peer certificate: BadSignature: invalid peer certificate: BadSignature"
            ),
            "TonicTracesClient export failed with gRPC code: Unavailable: transport error: invalid peer certificate: \
             BadSignature"
        );
        assert_eq!(tidy("connection refused"), "connection refused");
    }
}
