//! The `producer` binary: parse flags, set up telemetry, run the subcommand, flush spans, exit.

mod admin;
mod cli;
mod demo;
mod enqueue;
mod load;
mod serve;

use std::time::Duration;

use clap::Parser;
use jobstream::telemetry;

/// jemalloc: the job path allocates small, short-lived objects on many threads (and spans are freed on the
/// exporter's thread), where glibc's malloc spent a quarter of the consumer's CPU (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Enqueue(args) => {
            let telemetry = telemetry::init("jobstream-producer")?;
            let result = enqueue::run(args).await;
            telemetry.shutdown(Duration::from_secs(10)).await;
            result
        }
        cli::Command::Load(args) => {
            let mut settings = telemetry::TelemetrySettings::from_env("jobstream-producer")?;
            // Bursts at full speed (~100,000 jobs/s, one `send` span each) outrun the exporter: buffer ~64 MB of spans.
            settings.span_queue = 1 << 16;
            let telemetry = telemetry::init_with(settings)?;
            let result = load::run(args).await;
            telemetry.shutdown(Duration::from_secs(10)).await;
            result
        }
        cli::Command::Demo(args) => demo::run(args).await,
        cli::Command::Stats(args) => admin::stats(args).await,
        cli::Command::Serve(args) => {
            let telemetry = telemetry::init("jobstream-producer")?;
            let result = serve::run(args).await;
            telemetry.shutdown(Duration::from_secs(10)).await;
            result
        }
        cli::Command::Dead(command) => {
            let telemetry = telemetry::init("jobstream-producer")?;
            let result = admin::dead(command).await;
            telemetry.shutdown(Duration::from_secs(10)).await;
            result
        }
    }
}
