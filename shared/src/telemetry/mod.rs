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
//! same as `rediss://`. A span export that fails is reported in one log line naming the endpoint and the cause,
//! not once per batch; the jobs go on, and a line says so when export works again. (Metrics and log records
//! that cannot be exported are reported by the SDK's own warning, once per export attempt.)
//!
//! Logs go to stderr: JSON lines carrying `trace_id` and `span_id` when stderr is not a terminal, plain text when
//! it is; `JOBSTREAM_LOG_FORMAT=json|text` overrides that and `RUST_LOG` filters them. Which spans are traced is
//! filtered separately (`JOBSTREAM_TRACE_FILTER`, default `info`), so quieter logs never cut a trace.
//!
//! Metrics and logs go out over OTLP too, each when its exporter variable asks for it: `OTEL_METRICS_EXPORTER=otlp`
//! exports the OpenTelemetry messaging metrics ([`crate::messaging_metrics`]) every `OTEL_METRIC_EXPORT_INTERVAL`
//! ms (60 s by default), and `OTEL_LOGS_EXPORTER=otlp` exports every log line that passes `RUST_LOG` as a log
//! record carrying the trace and span ids of the span it was logged in ([`logs`]). Both read the same
//! `OTEL_EXPORTER_OTLP_*` variables as spans, with their own `_METRICS_` and `_LOGS_` variants winning (endpoint,
//! protocol, certificate, headers, time-out). Unset, they stay off: the Prometheus endpoint and stderr are the
//! defaults, and nothing is exported twice unasked. stderr logs are unchanged either way.

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

pub mod logs;

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

/// The three OpenTelemetry signals, as the `OTEL_*` variables name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metric points.
    Metrics,
    /// Log records.
    Logs,
}

impl Signal {
    /// The OTLP/HTTP path, `v1/traces` …
    fn path(self) -> &'static str {
        match self {
            Self::Traces => "v1/traces",
            Self::Metrics => "v1/metrics",
            Self::Logs => "v1/logs",
        }
    }

    /// This signal's variant of `OTEL_EXPORTER_OTLP_<setting>`, e.g. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    fn var(self, setting: Setting) -> &'static str {
        use Setting::*;
        match (self, setting) {
            (Self::Traces, Endpoint) => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            (Self::Traces, Protocol) => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            (Self::Traces, Certificate) => "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            (Self::Traces, Timeout) => "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            (Self::Metrics, Endpoint) => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            (Self::Metrics, Protocol) => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            (Self::Metrics, Certificate) => "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
            (Self::Metrics, Timeout) => "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            (Self::Logs, Endpoint) => "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            (Self::Logs, Protocol) => "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            (Self::Logs, Certificate) => "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
            (Self::Logs, Timeout) => "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
        }
    }
}

/// An exporter setting with a variable per signal.
#[derive(Debug, Clone, Copy)]
enum Setting {
    Endpoint,
    Protocol,
    Certificate,
    Timeout,
}

/// The general variable of a setting, `OTEL_EXPORTER_OTLP_<setting>`.
fn general_var(setting: Setting) -> &'static str {
    match setting {
        Setting::Endpoint => "OTEL_EXPORTER_OTLP_ENDPOINT",
        Setting::Protocol => "OTEL_EXPORTER_OTLP_PROTOCOL",
        Setting::Certificate => "OTEL_EXPORTER_OTLP_CERTIFICATE",
        Setting::Timeout => "OTEL_EXPORTER_OTLP_TIMEOUT",
    }
}

/// A set, non-blank variable's value.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Export {
    /// Reads the standard `OTEL_*` variables for spans.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::of(Signal::Traces)
    }

    /// Reads the standard `OTEL_*` variables for `signal`. Spans are exported when `OTEL_TRACES_EXPORTER` is
    /// `otlp`, or unset with an endpoint set; metrics and logs only when `OTEL_METRICS_EXPORTER` /
    /// `OTEL_LOGS_EXPORTER` is `otlp`.
    pub fn of(signal: Signal) -> Result<Self, TelemetryError> {
        if env_value("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::Off);
        }
        let (exporter_var, default_on) = match signal {
            Signal::Traces => ("OTEL_TRACES_EXPORTER", signal_var(Signal::Traces, Setting::Endpoint).is_some()),
            Signal::Metrics => ("OTEL_METRICS_EXPORTER", false),
            Signal::Logs => ("OTEL_LOGS_EXPORTER", false),
        };
        if signal == Signal::Traces {
            match env_value(exporter_var).as_deref() {
                None if !default_on => return Ok(Self::Off),
                None | Some("otlp") => {}
                Some("none") => return Ok(Self::Off),
                Some(other) => {
                    return Err(TelemetryError::Unsupported {
                        var: exporter_var,
                        value: other.to_owned(),
                        supported: "otlp or none",
                    })
                }
            }
        } else if !env_value(exporter_var).unwrap_or_default().split(',').any(|v| v.trim() == "otlp") {
            // For metrics and logs the variable is a list (`otlp,console`, `prometheus`): exported over OTLP when
            // it names `otlp`, off for anything else (the Prometheus endpoint and stderr stay) rather than refused.
            return Ok(Self::Off);
        }
        let (name, protocol) = signal_var(signal, Setting::Protocol)
            .unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()));
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
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    loggers: Option<opentelemetry_sdk::logs::SdkLoggerProvider>,
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
    /// Where metrics go (`OTEL_METRICS_EXPORTER=otlp`; off by default).
    pub metrics: Export,
    /// Where log records go, besides stderr (`OTEL_LOGS_EXPORTER=otlp`; off by default).
    pub logs: Export,
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
            metrics: Export::of(Signal::Metrics)?,
            logs: Export::of(Signal::Logs)?,
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
    let resource = resource(&settings);
    let provider = provider(&settings, resource.clone())?;
    let meters = meter_provider(&settings, resource.clone())?;
    let loggers = logger_provider(&settings, resource)?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    if let Some(meters) = &meters {
        opentelemetry::global::set_meter_provider(meters.clone());
    }
    opentelemetry::global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
        Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    ]));

    let trace_filter = filter("JOBSTREAM_TRACE_FILTER", "info")?;
    let log_filter = filter("RUST_LOG", "info")?;
    // Only the attributes the spans are made with: no `busy_ns`/`idle_ns` (time taken on every enter and exit),
    // no `target`, no `code.*` source location and no `thread.*` on every span. Each is encoded and exported per
    // span; together they were a fifth of a `process` span's attributes, and no convention asks for them.
    let scope = opentelemetry::InstrumentationScope::builder("jobstream")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(crate::trace::semconv::SCHEMA_URL)
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer_with_scope(scope))
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_location(false)
        .with_threads(false)
        .with_filter(trace_filter);
    // Export failures are reported once by `ReportingExporter`; the SDK's own line per failed batch is dropped.
    // Nor do the conventions' `messaging.*.exception` events reach stderr: they are span events and OTLP log
    // records; stderr has the worker's own line about the same failure (one per retry, dead letter or outage).
    let quiet = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("opentelemetry") && SDK_EXPORT_FAILURE_EVENTS.contains(&meta.name()))
            && meta.target() != crate::trace::spans::EXCEPTION_TARGET
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
                let spans = context.event_scope(event).into_iter().flatten().map(|span| span.id());
                if let Some(otel) = logs::traced_context(spans, &dispatch) {
                    let otel_span = otel.span();
                    let ids = otel_span.span_context();
                    let _ = writer.write_field("trace_id", ids.trace_id().to_string());
                    let _ = writer.write_field("span_id", ids.span_id().to_string());
                }
            });
            logs::NoSpanFields(json).with_filter(log_filter).with_filter(quiet).boxed()
        }
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter)
            .with_filter(quiet)
            .boxed(),
    };
    // Log records over OTLP pass the same filter as stderr's lines (which also keeps the exporters' own clients
    // out of the pipeline they feed).
    let otlp_logs = match &loggers {
        Some(loggers) => Some(logs::OtlpLogs::new(loggers, dispatch.clone()).with_filter(filter("RUST_LOG", "info")?)),
        None => None,
    };
    tracing_subscriber::registry().with(otel).with(logs).with(otlp_logs).with(CaptureDispatch(dispatch)).try_init()?;
    // A panic (a handler's, caught by the worker, or any other) is one log line with its message and place, in
    // the span it happened in, instead of the default multi-line report on stderr.
    std::panic::set_hook(Box::new(|info| {
        let message = crate::handler::panic_message(info.payload());
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(panic.message = %message, panic.location = %location, "panicked: {message}");
    }));
    tracing::debug!(?export, "telemetry ready");
    Ok(Telemetry { provider, meters, loggers, export })
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

/// The resource every signal's records carry: `service.name` (unless the environment names it) and
/// `service.version`, plus `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(settings: &TelemetrySettings) -> Resource {
    let mut resource = Resource::builder();
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name(settings.service_name.clone());
    }
    resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build()
}

/// Builds one signal's OTLP exporter from `$builder` (e.g. `opentelemetry_otlp::SpanExporter::builder()`) as
/// `$export` and the variables say: over HTTP with jobstream's TLS client, or over gRPC with tonic's TLS. Gives
/// the exporter, the URL it sends to (for messages) and the HTTP client's last failure cause.
macro_rules! otlp_exporter {
    ($builder:expr, $signal:expr, $export:expr, $base:expr) => {{
        let (signal, base): (Signal, Option<&str>) = ($signal, $base);
        let shown = shown_endpoint(signal, $export, base);
        // Read only for a signal that is exported: a CA file or time-out is not checked for one that is off.
        let tls = || TlsSettings::from_env(signal);
        match $export {
            Export::Grpc => {
                let tls = tls()?;
                let mut exporter = $builder.with_tonic();
                if let Some(base) = base {
                    exporter = exporter.with_endpoint(base.to_owned());
                }
                if shown.starts_with("https://") {
                    install_tls_provider();
                    let config = tonic::transport::ClientTlsConfig::new();
                    let config = match &tls.ca {
                        Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem)),
                        None => config.with_native_roots(),
                    };
                    exporter = exporter.with_tls_config(config);
                }
                Some((exporter.build()?, shown, LastCause::default()))
            }
            Export::HttpProtobuf => {
                let tls = tls()?;
                let cause = LastCause::default();
                let client = http_client(&tls, cause.clone())?;
                let mut exporter = $builder.with_http().with_protocol(Protocol::HttpBinary).with_http_client(client);
                if base.is_some() {
                    exporter = exporter.with_endpoint(shown.clone());
                }
                Some((exporter.build()?, shown, cause))
            }
            Export::Off => None,
        }
    }};
}

fn provider(settings: &TelemetrySettings, resource: Resource) -> Result<SdkTracerProvider, TelemetryError> {
    // Batch spans (`receive`, `ack`) link to every message they account for ([`crate::trace::spans`]).
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_SPAN_LINK_COUNT_LIMIT").is_none() {
        builder = builder.with_max_links_per_span(crate::trace::spans::MAX_BATCH_LINKS as u32);
    }
    let base = settings.endpoint.as_deref().map(|base| base.trim_end_matches('/'));
    let exporter = otlp_exporter!(opentelemetry_otlp::SpanExporter::builder(), Signal::Traces, settings.export, base);
    if let Some((exporter, shown, cause)) = exporter {
        let processor = BatchSpanProcessor::builder(ReportingExporter::new(exporter, shown, cause))
            .with_batch_config(batch_config(settings.span_queue))
            .build();
        builder = builder.with_span_processor(processor);
    }
    Ok(builder.build())
}

/// The meter provider exporting over OTLP, when `OTEL_METRICS_EXPORTER=otlp`.
fn meter_provider(
    settings: &TelemetrySettings,
    resource: Resource,
) -> Result<Option<opentelemetry_sdk::metrics::SdkMeterProvider>, TelemetryError> {
    let base = settings.endpoint.as_deref().map(|base| base.trim_end_matches('/'));
    let exporter =
        otlp_exporter!(opentelemetry_otlp::MetricExporter::builder(), Signal::Metrics, settings.metrics, base);
    Ok(exporter.map(|(exporter, _, _)| {
        opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(exporter)
            .build()
    }))
}

/// The logger provider exporting over OTLP, when `OTEL_LOGS_EXPORTER=otlp`.
fn logger_provider(
    settings: &TelemetrySettings,
    resource: Resource,
) -> Result<Option<opentelemetry_sdk::logs::SdkLoggerProvider>, TelemetryError> {
    let base = settings.endpoint.as_deref().map(|base| base.trim_end_matches('/'));
    let exporter = otlp_exporter!(opentelemetry_otlp::LogExporter::builder(), Signal::Logs, settings.logs, base);
    Ok(exporter.map(|(exporter, _, _)| {
        opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build()
    }))
}

/// A setting's variable and value for `signal`, its own variable first: `(which, value)`.
fn signal_var(signal: Signal, setting: Setting) -> Option<(&'static str, String)> {
    let var = |name: &'static str| env_value(name).map(|v| (name, v));
    var(signal.var(setting)).or_else(|| var(general_var(setting)))
}

/// The URL `signal` is exported to, for messages: the configured base (or the signal's own full URL), or the
/// protocol's default.
fn shown_endpoint(signal: Signal, export: Export, base: Option<&str>) -> String {
    let default = match export {
        Export::Grpc => "http://localhost:4317",
        _ => "http://localhost:4318",
    };
    let (own, url) = match base {
        Some(base) => (false, base.to_owned()),
        None => match signal_var(signal, Setting::Endpoint) {
            Some((var, url)) => (var == signal.var(Setting::Endpoint), url),
            None => (false, default.to_owned()),
        },
    };
    match export {
        Export::HttpProtobuf if !own => format!("{}/{}", url.trim_end_matches('/'), signal.path()),
        _ => url,
    }
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
    fn from_env(signal: Signal) -> Result<Self, TelemetryError> {
        let ca = match signal_var(signal, Setting::Certificate) {
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
        let timeout = match signal_var(signal, Setting::Timeout) {
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

    /// Exports every finished span, the metrics as they stand and every log record now; returns once the
    /// exporters answered.
    pub async fn flush(&self) {
        let (provider, meters, loggers) = (self.provider.clone(), self.meters.clone(), self.loggers.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            if let Some(meters) = meters {
                let _ = meters.force_flush();
            }
            if let Some(loggers) = loggers {
                let _ = loggers.force_flush();
            }
        })
        .await;
    }

    /// Flushes buffered spans, metrics and log records and stops the exporters, waiting at most `timeout` for
    /// each.
    pub async fn shutdown(self, timeout: Duration) {
        let Self { provider, meters, loggers, .. } = self;
        let result = tokio::task::spawn_blocking(move || {
            // One deadline for the three, so that a collector that is down costs `timeout` in all, not three
            // times it (a pod's grace period covers the drain and this). Spans first: they matter most.
            let deadline = std::time::Instant::now() + timeout;
            let left = || deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1));
            let spans = provider.shutdown_with_timeout(left());
            let meters = meters.map(|m| m.shutdown_with_timeout(left()));
            let loggers = loggers.map(|l| l.shutdown_with_timeout(left()));
            (spans, meters, loggers)
        })
        .await;
        if let Ok((spans, meters, loggers)) = result {
            for (what, result) in [("spans", Some(spans)), ("metrics", meters), ("log records", loggers)] {
                if let Some(Err(e)) = result {
                    eprintln!("jobstream: flushing {what} at exit failed: {e}");
                }
            }
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
