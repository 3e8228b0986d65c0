//! The OpenTelemetry messaging metrics (semantic conventions v1.44): `messaging.client.sent.messages`,
//! `messaging.client.consumed.messages`, `messaging.process.duration` and `messaging.client.operation.duration`,
//! with the attributes the conventions require, recorded through the global meter provider.
//!
//! The binaries install an OTLP meter provider when `OTEL_METRICS_EXPORTER=otlp` ([`crate::telemetry`]); with
//! none installed (the default) every instrument is the API's no-op and costs a call. A library user who wants
//! them installs a meter provider before building a [`crate::Producer`] or [`crate::Worker`]: the instruments
//! are made when those are. The Prometheus `/metrics` endpoint ([`crate::metrics`]) is separate and stays.
//!
//! Operation names (`messaging.operation.name`): `send` (XADD), `receive` (XREADGROUP, and XAUTOCLAIM taking over
//! stale entries), `process` (a handler's run), and the settlements `ack` (XACK of a batch), `retry` (the move to
//! the delayed set) and `dead_letter` (the move to the dead stream).

use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::{InstrumentationScope, KeyValue};

use crate::trace::endpoint::Endpoint;
use crate::trace::semconv;

/// Bucket boundaries the conventions recommend for both duration histograms (seconds).
const DURATION_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// How a message was settled: the `messaging.operation.name` of a settle operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// XACK: the job is done (or cancelled).
    Ack,
    /// Moved to the delayed set to run again.
    Retry,
    /// Moved to the dead stream.
    DeadLetter,
}

impl Settlement {
    /// The operation's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Retry => "retry",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// The four instruments, with the attributes of one partition's operations made once.
#[derive(Debug, Clone)]
pub(crate) struct MessagingMetrics {
    sent: Counter<u64>,
    consumed: Counter<u64>,
    process: Histogram<f64>,
    operation: Histogram<f64>,
    send_attributes: Vec<KeyValue>,
    send_operation: Vec<KeyValue>,
    receive_attributes: Vec<KeyValue>,
    receive_operation: Vec<KeyValue>,
    process_attributes: Vec<KeyValue>,
    settle_operations: [Vec<KeyValue>; 3],
}

impl MessagingMetrics {
    /// The instruments of the global meter provider, for operations at `endpoint`.
    pub(crate) fn new(endpoint: &Endpoint) -> Self {
        let scope = InstrumentationScope::builder("jobstream")
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_schema_url(semconv::SCHEMA_URL)
            .build();
        let meter = opentelemetry::global::meter_with_scope(scope);
        let with_type = |mut kvs: Vec<KeyValue>, kind: &'static str| {
            kvs.insert(2, KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, kind));
            kvs
        };
        let settle = |s: Settlement| with_type(endpoint.metric_attributes(s.name(), true), "settle");
        Self {
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
            process: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            operation: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_unit("s")
                .with_description("Duration of messaging operation initiated by a producer or consumer client.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            send_attributes: endpoint.metric_attributes("send", false),
            send_operation: with_type(endpoint.metric_attributes("send", false), "send"),
            receive_attributes: endpoint.metric_attributes("receive", true),
            receive_operation: with_type(endpoint.metric_attributes("receive", true), "receive"),
            process_attributes: endpoint.metric_attributes("process", true),
            settle_operations: [settle(Settlement::Ack), settle(Settlement::Retry), settle(Settlement::DeadLetter)],
        }
    }

    /// One send round trip that took `took`: `taken` messages Redis took, and `refused` it refused with the
    /// `error.type` `error` (all of them when the round trip itself failed). The operation counts as failed,
    /// with that `error.type`, when any was refused.
    pub(crate) fn sent(&self, taken: u64, refused: u64, took: Duration, error: &str) {
        if taken > 0 {
            self.sent.add(taken, &self.send_attributes);
        }
        let error = (refused > 0).then_some(error);
        if let Some(error) = error {
            self.sent.add(refused, &with_error(&self.send_attributes, Some(error)));
        }
        self.operation.record(took.as_secs_f64(), &with_error(&self.send_operation, error));
    }

    /// `messages` delivered by one read that took `took`; `error` is its `error.type` when it failed.
    pub(crate) fn received(&self, messages: u64, took: Duration, error: Option<&str>) {
        if messages > 0 {
            self.consumed.add(messages, &self.receive_attributes);
        }
        self.operation.record(took.as_secs_f64(), &with_error(&self.receive_operation, error));
    }

    /// One attempt that ran for `took`; `error` is the failure's `error.type`.
    pub(crate) fn processed(&self, took: Duration, error: Option<&str>) {
        self.process.record(took.as_secs_f64(), &with_error(&self.process_attributes, error));
    }

    /// One settle operation that took `took`; `error` is its `error.type` when it failed.
    pub(crate) fn settled(&self, how: Settlement, took: Duration, error: Option<&str>) {
        let attributes = &self.settle_operations[how as usize];
        self.operation.record(took.as_secs_f64(), &with_error(attributes, error));
    }
}

/// `attributes`, plus `error.type` when there is one (borrowed as they are otherwise).
fn with_error<'a>(attributes: &'a [KeyValue], error: Option<&str>) -> std::borrow::Cow<'a, [KeyValue]> {
    match error {
        None => std::borrow::Cow::Borrowed(attributes),
        Some(error) => {
            let mut kvs = attributes.to_vec();
            kvs.push(KeyValue::new(semconv::ERROR_TYPE, error.to_owned()));
            std::borrow::Cow::Owned(kvs)
        }
    }
}
