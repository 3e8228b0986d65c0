//! The `consumer` binary: parse flags, set up telemetry, run a worker pool until SIGTERM, flush, exit.

mod cli;
mod kinds;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use jobstream::worker::default_consumer_name;
use std::sync::Arc;

use jobstream::connection::Pool;
use jobstream::health::{self, HealthState};
use jobstream::metrics::Metrics;
use jobstream::{telemetry, Handlers, JobKind, Producer, Worker};
use tokio_util::sync::CancellationToken;

use crate::kinds::demo::{Demo, DemoSettings};
use crate::kinds::fanout::Fanout;
use crate::kinds::noop::Noop;

/// jemalloc: the job path allocates small, short-lived objects on many threads (and spans are freed on the
/// exporter's thread), where glibc's malloc spent a quarter of the consumer's CPU (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bad usage exits 2 with clap's message ([`cli::Cli::parse_valid`]); any other error is one line on stderr
/// (`error: <what>: <cause>`), whatever `RUST_BACKTRACE` says, and exits 1.
fn main() -> ExitCode {
    let cli = cli::Cli::parse_valid();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run_with_telemetry(cli)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_with_telemetry(cli: cli::Cli) -> ExitCode {
    let result = match telemetry::init("jobstream-consumer") {
        Ok(telemetry) => {
            let result = run(cli).await;
            telemetry.shutdown(Duration::from_secs(10)).await;
            result
        }
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", jobstream::config::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

/// The health server's default address, and the ports tried after it when another process holds it.
const DEFAULT_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 9090);
const FALLBACK_PORTS: std::ops::RangeInclusive<u16> = 9091..=9099;

/// Binds the health server: `--listen` as given (an error if it cannot be bound), or the default address,
/// falling back to the next free port (several consumers on one host), then to any free port.
async fn serve_health(
    listen: Option<std::net::SocketAddr>,
    app: axum::Router,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    if let Some(addr) = listen {
        let (_, server) = health::spawn(addr, app, stop).await.with_context(|| format!("cannot listen on {addr}"))?;
        return Ok(server);
    }
    let candidates = std::iter::once(DEFAULT_LISTEN.port()).chain(FALLBACK_PORTS).chain([0]);
    for port in candidates {
        let addr = std::net::SocketAddr::new(DEFAULT_LISTEN.ip(), port);
        match health::spawn(addr, app.clone(), stop.clone()).await {
            Ok((bound, server)) => {
                if port != DEFAULT_LISTEN.port() {
                    tracing::warn!(
                        default = %DEFAULT_LISTEN,
                        listen = %bound,
                        "the default health address is taken (another consumer on this host?); serving on another port; set --listen to choose"
                    );
                }
                return Ok(server);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(anyhow::Error::from(e).context(format!("cannot listen on {addr}"))),
        }
    }
    anyhow::bail!("no free port to serve /healthz, /readyz and /metrics on")
}

/// The shipped job kinds: their records go next to the queue (partition) each job came from; follow-up jobs
/// of `fanout` go through `producer`, those of `demo` (`next`) to their own queue with `producer`'s limits.
fn handlers(pool: &Pool, prefix: &str, producer: Producer, demo: DemoSettings) -> anyhow::Result<Handlers> {
    let retention = demo.done_retention;
    let limits = *producer.limits();
    Ok(Handlers::new()
        .register(JobKind::parse("demo")?, Demo::new(pool.clone(), prefix, limits, demo))
        .register(JobKind::parse("noop")?, Noop::new(pool.clone(), prefix, retention))
        .register(JobKind::parse("fanout")?, Fanout::new(pool.clone(), prefix, producer, retention)))
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let queue = cli.queue.queue()?;
    let partitions = cli.queue.partition_keys()?;
    let consumer = cli.consumer.clone().unwrap_or_else(default_consumer_name);
    let pool_size = (cli.concurrency as usize).clamp(2, 64) + 2 * partitions.len();
    let pool = cli.redis.pool(pool_size, cli.block + Duration::from_secs(5)).context("Redis connection")?;
    let shutdown = jobstream::shutdown::on_signals()?;

    let demo = DemoSettings {
        latency_scale: cli.demo_latency_scale,
        failure_rate: cli.demo_failure_rate,
        result_ttl: cli.result_ttl,
        done_retention: (!cli.retention.is_zero()).then_some(cli.retention),
        consumer: consumer.clone(),
    };
    let config = cli.worker_config(consumer);
    let metrics = Arc::new(Metrics::new());
    // The jobs handlers enqueue (fanout's children, demo's `next`) count in this process's /metrics.
    let producer = Producer::new(pool.clone(), &queue).with_limits(config.limits).with_metrics(metrics.clone());
    let handlers = handlers(&pool, queue.prefix(), producer, demo)?;
    let stop_serving = CancellationToken::new();
    let health = HealthState {
        pool: pool.clone(),
        keys: partitions.clone(),
        group: Some(config.group.clone()),
        metrics: metrics.clone(),
        draining: shutdown.clone(),
    };
    let server = serve_health(cli.listen, health::router(health), stop_serving.clone()).await?;
    let worker = Worker::new(pool.clone(), &queue, handlers, config)?.with_metrics(metrics.clone());
    let result = worker.run(shutdown.clone()).await.map_err(anyhow::Error::from);
    stop_serving.cancel();
    let _ = server.await;
    result
}
