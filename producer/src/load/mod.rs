//! `producer load`: the load generator. Sends marked jobs on a schedule ([`pace`]), batches in flight bounded
//! by `--concurrency`, then (with `--wait`) waits for the consumers to acknowledge them, and reports
//! ([`report`]) from the latency histograms the consumers published (see [`jobstream::loadprobe`]).
//!
//! The report is printed whatever happens once sending has started: when Redis fails mid-run it says how many
//! jobs Redis took (those of a partly refused pipeline included) and what failed, then the command exits 1.

mod pace;
mod report;
mod traces;

pub use traces::TraceCheck;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobstream::connection::Pool;
use jobstream::job::JobError;
use jobstream::loadprobe::{self, RunReport};
use jobstream::{Job, JobKind, Keys, Payload, Producer};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::cli::LoadArgs;
use crate::usage;
use pace::{Limit, Pace};
use report::{Latencies, Percentiles, Report};

/// How often progress and completion are polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let keys = args.queue.partition_keys().map_err(usage)?;
    let limits = args.queue.limits();
    // A batch in flight sends one pipeline per partition at once.
    let pool = args.redis.pool(args.concurrency as usize * keys.len() + 2, Duration::from_secs(10))?;
    let kind = JobKind::parse(&args.kind).map_err(usage)?;
    let payload =
        Payload::parse(padded(&args.payload, args.payload_bytes).map_err(usage)?, &limits).map_err(|e| match e {
            e @ JobError::PayloadTooLarge { .. } => anyhow::Error::from(e),
            other => usage(other),
        })?;
    let pace = Pace {
        limit: match (args.jobs, args.duration) {
            (_, Some(d)) => Limit::For(d),
            (Some(n), None) => Limit::Jobs(n),
            (None, None) => Limit::Jobs(10_000),
        },
        rate: args.rate,
    };
    let run = Uuid::now_v7();
    let dead_before = dead_len(&pool, &keys)
        .await
        .with_context(|| format!("cannot reach Redis at {}", jobstream::connection::redact(&args.redis.redis_url)))?;
    let progress = Progress::new(!args.no_progress && std::io::stderr().is_terminal(), pace.total());

    let producer = Producer::new(pool.clone(), &args.queue.queue().map_err(usage)?)
        .with_limits(limits)
        .with_job_records(!args.no_job_records);
    producer.check_partitions().await?;
    let sender = Sender { producer, kind, payload, run, counters: Arc::default() };
    let start = Instant::now();
    let start_us = jobstream::clock::now_us();
    let poller = progress.poll(pool.clone(), keys.clone(), run, sender.counters.clone(), dead_before);
    let sent = sender.send_all(&pace, &args, start, start_us).await;
    let enqueue_seconds = start.elapsed().as_secs_f64();
    // From here on the wait polls Redis anyway; it updates the bar itself.
    poller.abort();

    let results = if args.wait && sent.ok > 0 {
        wait_drained(&pool, &keys, run, sent.ok, dead_before, args.timeout, &progress).await
    } else {
        async {
            Ok((read_probe(&pool, &keys, run).await?, dead_len(&pool, &keys).await?.saturating_sub(dead_before), false))
        }
        .await
    };
    progress.finish();
    // Without Redis the consumers' figures are unknown; what was sent is still reported.
    let (probe, dead, timed_out, results_error) = match results {
        Ok((probe, dead, timed_out)) => (probe, dead, timed_out, None),
        Err(e) => (RunReport::default(), 0, false, Some(format!("{e:#}"))),
    };

    let done = probe.ack.len();
    let drain_seconds = (probe.last_ack_us > start_us).then(|| (probe.last_ack_us - start_us) as f64 / 1e6);
    let report = Report {
        run: run.to_string(),
        queue: args.queue.queue.to_string(),
        kind: args.kind.clone(),
        payload_bytes: sender.payload.as_str().len(),
        offered_rate: args.rate,
        sent: sent.ok,
        enqueue_errors: sent.failed,
        first_error: sent.first_error.clone(),
        results_error: results_error.clone(),
        enqueue_seconds,
        enqueue_rate: sent.ok as f64 / enqueue_seconds.max(1e-9),
        max_behind_ms: sent.max_behind.as_secs_f64() * 1000.0,
        waited: args.wait,
        timed_out,
        done,
        dead,
        drain_seconds: drain_seconds.filter(|_| args.wait && !timed_out),
        drain_rate: drain_seconds.filter(|_| args.wait && !timed_out).map(|s| done as f64 / s.max(1e-9)),
        consumers: probe.consumers,
        latency_ms: Latencies {
            enqueue_to_start: Percentiles::of(&probe.start),
            enqueue_to_ack: Percentiles::of(&probe.ack),
        },
    };
    // Written, not printed: a closed stdout (`| head`) is an error to report, not a panic.
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{report}")?;
    }
    out.flush()?;
    if let Some(error) = sent.first_error {
        bail!("enqueueing failed after {} jobs: {error}", sent.ok);
    }
    if let Some(error) = results_error {
        bail!("cannot read the run's results from Redis: {error}");
    }
    if timed_out {
        bail!("gave up after {:?}: {} jobs neither acknowledged nor dead", args.timeout, sent.ok - done.min(sent.ok));
    }
    Ok(())
}

/// `json` with a `pad` string added so that it is `bytes` long; unchanged when `bytes` is 0.
fn padded(json: &str, bytes: usize) -> anyhow::Result<String> {
    if bytes == 0 {
        return Ok(json.to_owned());
    }
    let mut value: serde_json::Value = serde_json::from_str(json).context("--payload is not JSON")?;
    let Some(object) = value.as_object_mut() else { bail!("--payload-bytes needs --payload to be a JSON object") };
    object.insert("pad".to_owned(), serde_json::Value::String(String::new()));
    let bare = serde_json::to_string(&value)?.len();
    if bare > bytes {
        bail!("--payload-bytes {bytes} is smaller than the payload itself ({bare} bytes with an empty pad)");
    }
    value["pad"] = serde_json::Value::String("x".repeat(bytes - bare));
    Ok(serde_json::to_string(&value)?)
}

/// Counts shared by the sending tasks and the progress display.
#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
}

/// What the sending phase did.
struct Sent {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    max_behind: Duration,
}

struct Sender {
    producer: Producer,
    kind: JobKind,
    payload: Payload,
    run: Uuid,
    counters: Arc<Counters>,
}

impl Sender {
    /// Sends on schedule until the run is over or an enqueue fails, then waits for the batches in flight.
    async fn send_all(&self, pace: &Pace, args: &LoadArgs, start: Instant, start_us: u64) -> Sent {
        let permits = Arc::new(Semaphore::new(args.concurrency as usize));
        let mut next = 0u64;
        let mut max_behind = Duration::ZERO;
        while !self.counters.stop.load(Ordering::Relaxed) && !pace.finished(next, start.elapsed()) {
            let due = pace.due(start.elapsed());
            if due <= next {
                let wait = pace.due_at(next).map_or(Duration::from_millis(1), |at| at.saturating_sub(start.elapsed()));
                tokio::time::sleep(wait).await;
                continue;
            }
            let n = (due - next).min(args.batch);
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let now = start.elapsed();
            if let Some(at) = pace.due_at(next) {
                max_behind = max_behind.max(now.saturating_sub(at));
            }
            let jobs: Vec<Job> = (next..next + n)
                .map(|i| {
                    let sent_us =
                        pace.due_at(i).map_or_else(jobstream::clock::now_us, |at| start_us + at.as_micros() as u64);
                    let mut job = Job::new(self.kind.clone(), self.payload.clone());
                    job.extra.extend(loadprobe::mark_fields(&self.run, sent_us));
                    job
                })
                .collect();
            next += n;
            let (producer, counters) = (self.producer.clone(), self.counters.clone());
            tokio::spawn(async move {
                match producer.enqueue_batch(jobs).await {
                    Ok(done) => {
                        counters.ok.fetch_add(done.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // What a partly refused pipeline wrote was sent.
                        let written = e.enqueued().len() as u64;
                        counters.ok.fetch_add(written, Ordering::Relaxed);
                        counters.failed.fetch_add(n - written, Ordering::Relaxed);
                        counters.stop.store(true, Ordering::Relaxed);
                        counters.first_error.lock().expect("not poisoned").get_or_insert_with(|| e.to_string());
                    }
                }
                drop(permit);
            });
        }
        let _all = permits.acquire_many(args.concurrency as u32).await.expect("the semaphore is never closed");
        Sent {
            ok: self.counters.ok.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            first_error: self.counters.first_error.lock().expect("not poisoned").clone(),
            max_behind,
        }
    }
}

/// Dead entries of every partition.
async fn dead_len(pool: &Pool, keys: &[Keys]) -> anyhow::Result<u64> {
    let mut total = 0;
    for partition in keys {
        total += jobstream::admin::dead_len(pool, partition).await?;
    }
    Ok(total)
}

async fn read_probe(pool: &Pool, keys: &[Keys], run: Uuid) -> anyhow::Result<RunReport> {
    Ok(loadprobe::read(pool, keys, &run).await?)
}

/// Waits until `sent` jobs are acknowledged or dead-lettered, or `timeout` passes. Returns the merged probe,
/// the dead-letter count of the run, and whether it timed out.
async fn wait_drained(
    pool: &Pool,
    keys: &[Keys],
    run: Uuid,
    sent: u64,
    dead_before: u64,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<(RunReport, u64, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        let probe = read_probe(pool, keys, run).await?;
        let dead = dead_len(pool, keys).await?.saturating_sub(dead_before);
        progress.show(sent, probe.ack.len(), dead);
        if probe.ack.len() + dead >= sent {
            return Ok((probe, dead, false));
        }
        if Instant::now() >= deadline {
            return Ok((probe, dead, true));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The progress line on stderr: jobs sent, done, dead, and the rates.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
    start: Instant,
}

impl Progress {
    fn new(visible: bool, total: Option<u64>) -> Self {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30} done {pos}/{len} {msg}")
                    .expect("valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] done {pos} {msg}").expect("valid template"),
            ),
        };
        if !visible {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self { bar, start: Instant::now() }
    }

    /// Shows jobs sent, done and dead, with rates since the start.
    fn show(&self, sent: u64, done: u64, dead: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(done);
        self.bar.set_message(format!(
            "sent {sent} ({:.0}/s) dead {dead} ({:.0} done/s)",
            sent as f64 / secs,
            done as f64 / secs
        ));
    }

    /// Polls Redis for completion while jobs are being sent and the bar is shown; nothing when it is hidden.
    fn poll(
        &self,
        pool: Pool,
        keys: Vec<Keys>,
        run: Uuid,
        counters: Arc<Counters>,
        dead_before: u64,
    ) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        tokio::spawn(async move {
            if progress.bar.is_hidden() {
                return;
            }
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                let done = read_probe(&pool, &keys, run).await.map(|p| p.ack.len()).unwrap_or(0);
                let dead = dead_len(&pool, &keys).await.unwrap_or(dead_before).saturating_sub(dead_before);
                progress.show(counters.ok.load(Ordering::Relaxed), done, dead);
            }
        })
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_makes_the_payload_exactly_as_long_as_asked() {
        let p = padded(r#"{"record":false}"#, 256).unwrap();
        assert_eq!(p.len(), 256);
        assert!(p.starts_with(r#"{"pad":"xx"#) || p.contains(r#""record":false"#), "{p}");
        assert_eq!(padded("[1]", 0).unwrap(), "[1]");
        assert!(padded("[1]", 100).is_err());
        assert!(padded(r#"{"a":1}"#, 5).is_err());
    }
}
