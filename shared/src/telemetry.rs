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
//! Logs go to stderr: JSON lines carrying `trace_id` and `span_id` when stderr is not a terminal, plain text when
//! it is; `JOBSTREAM_LOG_FORMAT=json|text` overrides that and `RUST_LOG` filters them. Which spans are traced is
//! filtered separately (`JOBSTREAM_TRACE_FILTER`, default `info`), so quieter logs never cut a trace.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?} is not supported; use {supported}")]
    Unsupported { var: &'static str, value: String, supported: &'static str },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("invalid filter in {var}: {source}")]
    Filter { var: &'static str, source: tracing_subscriber::filter::ParseError },
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
    let logs = match settings.log_format {
        LogFormat::Json => json_subscriber::layer()
            .with_writer(std::io::stderr)
            .with_opentelemetry_ids(true)
            .with_current_span(false)
            .with_span_list(false)
            .flatten_event(true)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(otel).with(logs).try_init()?;
    tracing::debug!(?export, "telemetry ready");
    Ok(Telemetry { provider, export })
}

fn filter(var: &'static str, default: &str) -> Result<EnvFilter, TelemetryError> {
    let spec = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    // The exporter's own HTTP/gRPC clients must never trace themselves into the pipeline they feed.
    let spec = format!("{spec},h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,opentelemetry=warn");
    EnvFilter::builder().parse(spec).map_err(|source| TelemetryError::Filter { var, source })
}

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
    let builder = match settings.export {
        Export::Off => builder,
        Export::HttpProtobuf => {
            let mut exporter =
                opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
            if let Some(base) = endpoint {
                exporter = exporter.with_endpoint(format!("{base}/v1/traces"));
            }
            builder.with_span_processor(
                BatchSpanProcessor::builder(exporter.build()?)
                    .with_batch_config(batch_config(settings.span_queue))
                    .build(),
            )
        }
        Export::Grpc => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(base) = endpoint {
                exporter = exporter.with_endpoint(base.to_owned());
            }
            builder.with_span_processor(
                BatchSpanProcessor::builder(exporter.build()?)
                    .with_batch_config(batch_config(settings.span_queue))
                    .build(),
            )
        }
    };
    Ok(builder.build())
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
