//! The `producer` binary: parse flags, set up telemetry, run the subcommand, flush spans, exit.

mod admin;
mod cli;
mod cron;
mod demo;
mod enqueue;
mod job;
mod load;
mod queue;
mod serve;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jobstream::telemetry::{self, TelemetrySettings};

/// jemalloc: the job path allocates small, short-lived objects on many threads (and spans are freed on the
/// exporter's thread), where glibc's malloc spent a quarter of the consumer's CPU (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Errors are one line on stderr (`error: <what>: <cause>`), whatever `RUST_BACKTRACE` says. Exit status 2 for
/// bad usage (clap's own errors and every [`Usage`] error of ours), 1 for failures.
#[tokio::main]
async fn main() -> ExitCode {
    match run(cli::Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", jobstream::config::one_line(e.chain()));
            if e.chain().any(|cause| cause.is::<Usage>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command line that asks for something impossible or malformed, found after clap parsed it (flags that
/// depend on each other's values, a payload that is not JSON, a name that is not valid): exit status 2, as
/// clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error with this text.
pub fn usage(text: impl std::fmt::Display) -> anyhow::Error {
    Usage(text.to_string()).into()
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let settings = || TelemetrySettings::from_env(SERVICE);
    match cli.command {
        cli::Command::Enqueue(args) => traced(settings()?, enqueue::run(args)).await,
        cli::Command::Load(args) => {
            let mut settings = settings()?;
            // Bursts at full speed (~100,000 jobs/s, one `send` span each) outrun the exporter: buffer ~64 MB of spans.
            settings.span_queue = 1 << 16;
            let check = match args.check_traces {
                Some(addr) => Some(load::TraceCheck::start(addr, &args, &mut settings).await?),
                None => None,
            };
            let result = traced(settings, load::run(args)).await;
            match check {
                // The producer's spans are flushed by now; the consumers' arrive within the quiet period.
                Some(check) if result.is_ok() => check.finish().await,
                _ => result,
            }
        }
        cli::Command::Demo(args) => demo::run(args).await,
        cli::Command::Stats(args) => admin::stats(args).await,
        cli::Command::Serve(args) => traced(settings()?, serve::run(args)).await,
        cli::Command::Dead(command) => traced(settings()?, admin::dead(command)).await,
        cli::Command::Cron(command) => cron::run(command).await,
        cli::Command::Queue(command) => queue::run(command).await,
        cli::Command::Job(command) => job::run(command).await,
    }
}

const SERVICE: &str = "jobstream-producer";

/// Runs `work` with telemetry installed from `settings`, and flushes its spans before returning its result.
async fn traced(settings: TelemetrySettings, work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let telemetry = telemetry::init_with(settings)?;
    let result = work.await;
    telemetry.shutdown(Duration::from_secs(10)).await;
    result
}
