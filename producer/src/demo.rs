//! `producer demo`: the seed's demo on a real queue. Starts consumer processes, sends `demo` jobs on a fresh
//! queue, waits until every job has stored its result, stops the consumers with SIGTERM, and reports what
//! happened and the span tree of one job as it was exported.
//!
//! With no `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans go to an in-process OTLP receiver ([`OtlpSink`]) so the
//! tree can be printed; with one set (e.g. Jaeger on :4318), spans go there and the report says where to look.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use jobstream::telemetry::{self, Export, TelemetrySettings};
use jobstream::{results, Job, Keys, Producer, Queue};
use jobstream_otlp_sink::{render_trace, OtlpSink};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::cli::DemoArgs;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let sink = match Export::from_env()? {
        Export::Off => Some(OtlpSink::start().await.context("starting the in-process OTLP receiver")?),
        _ => None,
    };
    let mut settings = TelemetrySettings::from_env("jobstream-producer")?;
    if let Some(sink) = &sink {
        settings.export = Export::HttpProtobuf;
        settings.endpoint = Some(sink.http_endpoint());
    }
    let telemetry = telemetry::init_with(settings)?;
    let outcome = demo(&args, sink.as_ref()).await;
    telemetry.shutdown(Duration::from_secs(10)).await;
    let report = outcome?;
    writeln!(std::io::stdout().lock(), "{report}")?;
    Ok(())
}

async fn demo(args: &DemoArgs, sink: Option<&OtlpSink>) -> anyhow::Result<String> {
    let queue = Queue::new(&format!("demo-{}", jobstream::clock::now_ms()))?;
    let keys = Keys::new(queue.prefix(), queue.name())?;
    let pool = args.redis.pool(4, Duration::from_secs(10))?;
    pool.ping()
        .await
        .with_context(|| format!("cannot reach Redis at {}", jobstream::connection::redact(&args.redis.redis_url)))?;

    let log_dir = tempdir()?;
    let mut consumers = spawn_consumers(args, &queue, sink, &log_dir)?;
    eprintln!("started {} consumers on queue {queue} (logs in {})", consumers.len(), log_dir.display());

    let producer = Producer::new(pool.clone(), &queue);
    let jobs: Vec<Job> =
        (0..args.jobs).map(|i| producer.job("demo", &serde_json::json!({ "order": i }))).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let enqueued = producer.enqueue_batch(jobs).await.context("enqueueing the demo jobs")?;
    let ids: Vec<String> = enqueued.iter().map(|e| e.job_id.to_string()).collect();
    eprintln!("enqueued {} demo jobs", ids.len());

    let waited = wait_for_completion(&pool, &keys, &ids, args.timeout, &mut consumers).await;
    let elapsed = started.elapsed();
    stop_consumers(&mut consumers).await;
    let Progress { completion, dead } = waited?;
    let unresolved = completion.missing.saturating_sub(dead.len());

    let (attempts, retried_job) = attempts(&pool, &keys, &ids, &dead).await?;
    let mut report = format!(
        "\njobs: {} enqueued, {} done, {} missing, {} dead-lettered, {} ran twice\n\
         attempts: {} in all, {} failed and were retried or dead-lettered\n\
         throughput: {:.1} jobs/s ({} jobs settled in {:.2} s, {} consumers x {} concurrency)\n",
        ids.len(),
        completion.done,
        unresolved,
        dead.len(),
        completion.duplicated,
        attempts,
        attempts.saturating_sub(completion.done as u64),
        (completion.done + dead.len()) as f64 / elapsed.as_secs_f64(),
        completion.done + dead.len(),
        elapsed.as_secs_f64(),
        args.consumers,
        args.concurrency,
    );

    let shown = retried_job.map(|i| &enqueued[i]).unwrap_or(&enqueued[0]);
    let trace_id = shown.trace_id.map(|t| t.to_string()).unwrap_or_default();
    match sink {
        Some(sink) => {
            let id = shown.job_id.to_string();
            let spans = sink
                .wait_for(Duration::from_secs(10), |spans| {
                    spans.iter().any(|s| s.trace_id == trace_id && s.name == "save-data")
                        && spans.iter().any(|s| s.trace_id == trace_id && s.name.starts_with("send "))
                })
                .await
                .unwrap_or_else(|partial| partial);
            report.push_str(&format!("\nspan tree of job {id} (as exported over OTLP):\n"));
            report.push_str(&render_trace(&spans, &trace_id));
            report.push_str(&format!("({} spans received in all)\n", spans.len()));
        }
        None => report.push_str(&format!("\nspans exported to your collector; look up trace {trace_id}\n")),
    }
    if !args.keep {
        cleanup(&pool, &keys, &ids).await?;
    }
    if unresolved > 0 {
        bail!("{report}\n{unresolved} jobs were neither done nor dead-lettered within {:?}", args.timeout);
    }
    Ok(report)
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("jobstream-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn consumer_bin(args: &DemoArgs) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &args.consumer_bin {
        return Ok(bin.clone());
    }
    let here = std::env::current_exe()?;
    let bin = here.with_file_name("consumer");
    if !bin.exists() {
        bail!("no consumer binary at {}; build it (cargo build --bins) or pass --consumer-bin", bin.display());
    }
    Ok(bin)
}

fn spawn_consumers(
    args: &DemoArgs,
    queue: &Queue,
    sink: Option<&OtlpSink>,
    logs: &std::path::Path,
) -> anyhow::Result<Vec<Child>> {
    let bin = consumer_bin(args)?;
    (0..args.consumers)
        .map(|i| {
            let log = std::fs::File::create(logs.join(format!("consumer-{i}.log")))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--queue")
                .arg(queue.name().as_str())
                .arg("--consumer")
                .arg(format!("demo-consumer-{i}"))
                .arg("--concurrency")
                .arg(args.concurrency.to_string())
                .arg("--block")
                .arg("500ms")
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--retry-base-delay")
                .arg("100ms")
                .arg("--demo-latency-scale")
                .arg(args.latency_scale.to_string())
                .arg("--demo-failure-rate")
                .arg(args.failure_rate.to_string())
                .env("REDIS_URL", &args.redis.redis_url)
                .env("JOBSTREAM_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true);
            if let Some(sink) = sink {
                cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.http_endpoint())
                    .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                    .env("OTEL_SERVICE_NAME", "jobstream-consumer")
                    .env_remove("OTEL_TRACES_EXPORTER");
            }
            cmd.spawn().with_context(|| format!("starting {}", bin.display()))
        })
        .collect()
}

/// Where the demo's jobs stand: done (from the `done` hash) and dead-lettered (job id → attempts it had).
struct Progress {
    completion: results::Completion,
    dead: HashMap<String, u64>,
}

/// Waits until every job is done or dead-lettered, or `timeout`; prints each dead letter as it happens.
async fn wait_for_completion(
    pool: &jobstream::connection::Pool,
    keys: &Keys,
    ids: &[String],
    timeout: Duration,
    consumers: &mut [Child],
) -> anyhow::Result<Progress> {
    let deadline = Instant::now() + timeout;
    let ours: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut dead = HashMap::new();
    let mut dead_cursor = "-".to_owned();
    loop {
        let completion = results::completion(pool, keys, ids).await?;
        for entry in jobstream::admin::dead_list(pool, keys, &dead_cursor, 1000).await? {
            dead_cursor = format!("({}", entry.dead_id);
            let field = |name: &str| entry.fields.get(name).map(String::as_str).unwrap_or("");
            if !ours.contains(field("id")) {
                continue;
            }
            eprintln!("\rjob {} dead-lettered ({}): {}", field("id"), field("dead.reason"), field("dead.error"));
            dead.insert(field("id").to_owned(), field("attempt").parse().unwrap_or(0));
        }
        eprint!("\r{} of {} jobs done, {} dead-lettered", completion.done, ids.len(), dead.len());
        if completion.missing <= dead.len() || Instant::now() >= deadline {
            eprintln!();
            return Ok(Progress { completion, dead });
        }
        for child in consumers.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("a consumer exited early ({status}); see its log");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_consumers(consumers: &mut [Child]) {
    for child in consumers.iter() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for child in consumers.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("a consumer exited with {status}"),
            _ => {
                eprintln!("a consumer did not stop within 30 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Attempts in all, from the results the jobs stored and the dead entries (`dead`: job id → its last attempt),
/// and the index of a job that succeeded after more than one.
async fn attempts(
    pool: &jobstream::connection::Pool,
    keys: &Keys,
    ids: &[String],
    dead: &HashMap<String, u64>,
) -> anyhow::Result<(u64, Option<usize>)> {
    let stored = results::stored_results(pool, keys, ids).await?;
    let mut total = dead.values().sum();
    let mut retried = None;
    for (i, result) in stored.iter().enumerate() {
        let attempt = result
            .as_deref()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .and_then(|v| v["attempt"].as_u64())
            .unwrap_or(0);
        total += attempt;
        if attempt > 1 && retried.is_none() {
            retried = Some(i);
        }
    }
    Ok((total, retried))
}

async fn cleanup(pool: &jobstream::connection::Pool, keys: &Keys, ids: &[String]) -> anyhow::Result<()> {
    Ok(results::delete_queue(pool, keys, ids).await?)
}
