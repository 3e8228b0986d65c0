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

/// The JSON log layer without its span bookkeeping: `json-subscriber` formats every span's fields into a JSON
/// string when the span is made (and again on each `record`), for printing the span beside each line; jobstream's
/// lines print no span (`with_current_span(false)`, `with_span_list(false)`), only the trace and span ids, so that
/// work was done for nothing, on every job's `process` span at the default `RUST_LOG=info`. Everything else
/// reaches the inner layer unchanged.
pub(crate) struct NoSpanFields<L>(pub(crate) L);

impl<S, L> Layer<S> for NoSpanFields<L>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        self.0.on_event(event, ctx);
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Default)]
    struct Seen {
        spans: AtomicUsize,
        records: AtomicUsize,
        events: AtomicUsize,
    }

    struct Counting(Arc<Seen>);

    impl<S: tracing::Subscriber> Layer<S> for Counting {
        fn on_new_span(&self, _: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
            self.0.spans.fetch_add(1, Ordering::Relaxed);
        }
        fn on_record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>, _: Context<'_, S>) {
            self.0.records.fetch_add(1, Ordering::Relaxed);
        }
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_json_layer_gets_events_but_formats_no_span_fields() {
        let seen = Arc::new(Seen::default());
        let subscriber = tracing_subscriber::registry().with(NoSpanFields(Counting(seen.clone())));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("process", job = "a", error = tracing::field::Empty);
            span.record("error", "x");
            span.in_scope(|| tracing::info!("inside"));
            tracing::info!(parent: &span, "with a parent");
        });
        assert_eq!(seen.events.load(Ordering::Relaxed), 2, "every event reaches the layer");
        assert_eq!(seen.spans.load(Ordering::Relaxed), 0, "no span's fields are formatted when it is made");
        assert_eq!(seen.records.load(Ordering::Relaxed), 0, "nor when a field is recorded");
    }
}
