//! A local OTLP receiver that keeps what it receives and prints it on exit: to see what a process exports.
//!
//! `otlp_dump [HTTP_ADDR] [GRPC_ADDR]` (defaults 127.0.0.1:4318 and 127.0.0.1:4317) serves the three signals over
//! http/protobuf and gRPC, decodes every request as a collector would, and on SIGTERM or SIGINT prints each trace as
//! a tree, then each span, metric point and log record it received (`{:#?}` of [`ReceivedSpan`], [`ReceivedPoint`] and [`ReceivedLog`]:
//! attribute values as text, with each attribute's exported type for spans).
//!
//! ```sh
//! cargo run -p jobstream-otlp-sink --example otlp_dump &
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_METRICS_EXPORTER=otlp OTEL_LOGS_EXPORTER=otlp \
//!     target/debug/consumer --queue q ...
//! kill -INT %1
//! ```

use jobstream_otlp_sink::{render_trace, OtlpSink, ReceivedLog, ReceivedPoint, ReceivedSpan};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let sink = OtlpSink::start_from_args(true).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    let (spans, points, logs): (Vec<ReceivedSpan>, Vec<ReceivedPoint>, Vec<ReceivedLog>) =
        (sink.spans(), sink.points(), sink.logs());
    println!("# {} spans, {} metric points, {} log records", spans.len(), points.len(), logs.len());
    let mut traces: Vec<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    traces.sort_unstable();
    traces.dedup();
    for trace_id in traces {
        println!("{}", render_trace(&spans, trace_id));
    }
    for span in &spans {
        println!("{span:#?}");
    }
    for point in &points {
        println!("{point:#?}");
    }
    for log in &logs {
        println!("{log:#?}");
    }
    Ok(())
}
