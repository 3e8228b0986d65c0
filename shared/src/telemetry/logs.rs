//! Log records over OTLP (`OTEL_LOGS_EXPORTER=otlp`): every `tracing` event that passes `RUST_LOG` becomes an
//! OpenTelemetry log record through the standard bridge (`opentelemetry-appender-tracing`), carrying the trace and
//! span ids of the span it was logged in, so a collector joins each record to its trace.
//!
//! The bridge takes the ids from the OpenTelemetry context current when the event is emitted. jobstream logs many
//! lines with an explicit parent (`tracing::warn!(parent: span, …)`) outside that span's scope, so [`OtlpLogs`]
//! makes the context of the event's own span (its explicit parent, or the innermost traced span it sits in)
//! current for the bridge's call: the record's ids are those a reader of the line would expect.

use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The bridge to OTLP log records, with each record in its event's span context.
pub struct OtlpLogs {
    bridge: OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl std::fmt::Debug for OtlpLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpLogs").finish_non_exhaustive()
    }
}

impl OtlpLogs {
    /// Log records to `provider`; `dispatch` is filled with the subscriber once it is installed (the span
    /// contexts are looked up through it).
    pub(crate) fn new(provider: &SdkLoggerProvider, dispatch: Arc<OnceLock<WeakDispatch>>) -> Self {
        Self { bridge: OpenTelemetryTracingBridge::new(provider), dispatch }
    }
}

/// The OpenTelemetry context of the innermost of `spans` (innermost first) that has a valid span context.
pub(crate) fn traced_context(
    spans: impl Iterator<Item = tracing::span::Id>,
    dispatch: &Arc<OnceLock<WeakDispatch>>,
) -> Option<opentelemetry::Context> {
    let dispatch = dispatch.get().and_then(WeakDispatch::upgrade)?;
    spans
        .filter_map(|id| tracing_opentelemetry::get_otel_context(&id, &dispatch))
        .find(|cx| cx.span().span_context().is_valid())
}

impl<S> Layer<S> for OtlpLogs
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        // The SDK's own logs run with telemetry suppressed so that they never feed the pipeline they come from
        // (an emit after shutdown logs a warning, which would be emitted, …): attaching a span's context would
        // lift that, so a suppressed event goes to the bridge as it is (which drops it).
        let _attached = if opentelemetry::Context::is_current_telemetry_suppressed() {
            None
        } else {
            let spans = ctx.event_scope(event).into_iter().flatten().map(|span| span.id());
            traced_context(spans, &self.dispatch).map(opentelemetry::Context::attach)
        };
        self.bridge.on_event(event, ctx);
    }
}
