//! A local OTLP trace receiver that counts spans and keeps none: the export target of the benchmarks.
//!
//! `otlp_counter [HTTP_ADDR] [GRPC_ADDR]` (defaults 127.0.0.1:4318 and 127.0.0.1:4317) serves
//! `POST /v1/traces` (http/protobuf) and the gRPC trace service, decoding every request like a collector would,
//! prints `spans <n>` to stdout every second, and exits on SIGTERM or SIGINT.
//!
//! `bench/run` builds it with `cargo build --release -p jobstream-otlp-sink --example otlp_counter`.

use std::time::Duration;

use jobstream_otlp_sink::OtlpSink;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let sink = OtlpSink::start_from_args(false).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => println!("spans {}", sink.received()),
        }
    }
    println!("spans {}", sink.received());
    Ok(())
}
