//! `producer load --check-traces`: an in-process OTLP receiver ([`OtlpSink`]) the producer and the consumers
//! export to during a load run, and the check of the traces it received ([`shape`]) once they stop arriving.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jobstream::telemetry::{Export, TelemetrySettings};
use jobstream_otlp_sink::shape::{self, Rules};
use jobstream_otlp_sink::OtlpSink;

use crate::cli::LoadArgs;

/// The receiver of a run whose traces are checked.
pub struct TraceCheck {
    sink: OtlpSink,
    quiet: Duration,
    rules: Rules,
}

impl TraceCheck {
    /// Starts the receiver on `addr` (gRPC on a free port beside it) and points this process's span export at
    /// it.
    pub async fn start(addr: SocketAddr, args: &LoadArgs, settings: &mut TelemetrySettings) -> anyhow::Result<Self> {
        let grpc = SocketAddr::new(addr.ip(), 0).to_string();
        let sink = OtlpSink::start_on(true, &addr.to_string(), &grpc)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve the OTLP receiver on {addr}: {e}"))?;
        settings.export = Export::HttpProtobuf;
        settings.endpoint = Some(sink.http_endpoint());
        // The endpoint would apply to every signal: this run's own metrics and log records stay off rather than
        // go to the receiver (which checks traces) instead of the configured collector.
        settings.metrics = Export::Off;
        settings.logs = Export::Off;
        eprintln!(
            "checking trace shapes: OTLP receiver on {} (http/protobuf) and {} (grpc); point the consumers' \
             OTEL_EXPORTER_OTLP_ENDPOINT at it",
            sink.http_endpoint(),
            sink.grpc_endpoint()
        );
        let rules = Rules { max_spans_per_trace: args.check_traces_max_spans, max_attempts: None };
        Ok(Self { sink, quiet: args.check_traces_quiet, rules })
    }

    /// Waits until no span arrived for the quiet period (at most ten of them: a cron tick or a failing read
    /// keeps spans coming), checks every trace and prints the report on stderr; fails when a trace breaks a rule.
    pub async fn finish(self) -> anyhow::Result<()> {
        let mut last = (self.sink.received(), Instant::now());
        let give_up = Instant::now() + self.quiet * 10;
        while last.1.elapsed() < self.quiet && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let received = self.sink.received();
            if received != last.0 {
                last = (received, Instant::now());
            }
        }
        let report = shape::check(&self.sink.spans(), &self.rules);
        eprint!("{report}");
        if report.is_clean() {
            Ok(())
        } else {
            let total: usize = report.violations.values().sum();
            anyhow::bail!("{total} trace shape violations (see the report above)")
        }
    }
}
