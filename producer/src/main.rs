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
            let telemetry = telemetry::init("jobstream-producer")?;
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
