//! `producer enqueue`: enqueue jobs, print `<job id> <trace id>` for each.
//!
//! The payload comes from `--payload`, or from `--payload-file` (a file, or `-` for standard input) for payloads
//! larger than a command line holds. It is read and checked against `--max-payload-bytes` before Redis is
//! contacted: no more than the limit plus one byte is ever read, and a payload over it enqueues nothing.
//!
//! `--delay D` or `--at TIME` schedules the jobs: they wait in the queue's delayed set until then (one ZADD
//! each); the line printed is the same.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use jobstream::job::JobError;
use jobstream::{Enqueued, Producer};

use crate::cli::EnqueueArgs;
use crate::usage;

/// Jobs per pipelined round trip.
const BATCH: u64 = 1000;

pub async fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    if args.idempotency_key.is_some() && args.count != 1 {
        return Err(usage("--idempotency-key names one job; use it with --count 1"));
    }
    let limit = args.queue.max_payload_bytes;
    let payload = match &args.payload_file {
        Some(path) => read_payload(path, limit)?,
        None => args.payload.clone(),
    };
    let pool = args.redis.pool(2, Duration::from_secs(10))?;
    // A kind no live worker of the queue handles would be dead-lettered as unknown_kind: say so, or refuse.
    let partition0 = args.queue.partition_keys().map_err(usage)?.swap_remove(0);
    if let Ok(handled) = jobstream::kinds::handled(&pool, &partition0).await {
        if let Some(why) = jobstream::kinds::unhandled(&args.kind, &handled) {
            if args.require_handled_kind {
                return Err(usage(format!("refusing to enqueue: {why}")));
            }
            eprintln!("warning: {why}");
        }
    }
    let producer = Producer::new(pool, &args.queue.queue().map_err(usage)?)
        .with_limits(args.queue.limits())
        .with_link_threshold(args.schedule.link_threshold)
        .with_job_records(!args.schedule.no_job_records);
    let due = match (args.at, args.delay) {
        (Some(at), _) => Some(at),
        (None, Some(delay)) => {
            Some(SystemTime::now().checked_add(delay).ok_or_else(|| usage("--delay is too far in the future"))?)
        }
        (None, None) => None,
    };
    // Each job carries the bounds asked for (`timeout_ms`, `deadline_ms`).
    let bound = |mut job: jobstream::Job| {
        if let Some(timeout) = args.timeout {
            job = job.with_timeout(timeout);
        }
        if let Some(deadline) = args.deadline {
            job = job.with_deadline(deadline);
        }
        if let Some(ttl) = args.ttl {
            job = job.with_ttl(ttl);
        }
        job
    };
    // A job that cannot be built is refused before Redis is asked anything.
    let first = bound(producer.job_json(&args.kind, &payload).map_err(job_error)?);
    producer.check_partitions().await?;
    let mut out = std::io::stdout().lock();
    if let Some(key) = &args.idempotency_key {
        let done = producer.enqueue_job_once(first, key, args.idempotency_ttl).await?;
        writeln!(out, "{} {}", done.job_id, trace_text(&done))?;
        if done.duplicate {
            eprintln!("idempotency key matched job {}: nothing enqueued", done.job_id);
        }
        return Ok(());
    }
    if let Some(due) = due {
        let done = producer.enqueue_job_at(first, due).await?;
        writeln!(out, "{} {}", done.job_id, trace_text(&done))?;
        for _ in 1..args.count {
            let job = bound(producer.job_json(&args.kind, &payload)?);
            let done = producer.enqueue_job_at(job, due).await?;
            writeln!(out, "{} {}", done.job_id, trace_text(&done))?;
        }
        out.flush()?;
        return Ok(());
    }
    let mut left = args.count;
    while left > 0 {
        let n = left.min(BATCH);
        let jobs = (0..n).map(|_| producer.job_json(&args.kind, &payload).map(bound)).collect::<Result<Vec<_>, _>>()?;
        let sent = producer.enqueue_batch(jobs).await;
        // A partly refused batch: the jobs Redis took are printed, then the error.
        let done = match &sent {
            Ok(done) => done.as_slice(),
            Err(e) => e.enqueued(),
        };
        for done in done {
            writeln!(out, "{} {}", done.job_id, trace_text(done))?;
        }
        sent?;
        left -= n;
    }
    out.flush()?;
    Ok(())
}

fn trace_text(done: &Enqueued) -> String {
    done.trace_id.map_or_else(|| "-".to_owned(), |t| t.to_string())
}

/// A payload over the limit is a failure (exit 1): the command was well formed, the data is too large. A kind
/// or payload that is not valid is bad usage (exit 2).
fn job_error(e: JobError) -> anyhow::Error {
    match e {
        JobError::PayloadTooLarge { size, limit } => {
            anyhow::anyhow!("the payload is {size} bytes, over the limit of {limit} bytes (--max-payload-bytes)")
        }
        other => usage(other),
    }
}

/// Reads a payload from `path` (`-`: standard input), at most `limit` bytes; a larger one is refused naming its
/// size (a file's) or the limit it passed (a stream's, which is not read further).
fn read_payload(path: &Path, limit: usize) -> anyhow::Result<String> {
    let from_stdin = path == Path::new("-");
    let name = if from_stdin { "standard input".to_owned() } else { path.display().to_string() };
    let reader: Box<dyn Read> = if from_stdin {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read --payload-file {name}"))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if file.metadata().is_ok_and(|m| m.is_file()) && size > limit as u64 {
            return Err(job_error(JobError::PayloadTooLarge { size: size as usize, limit }));
        }
        Box::new(file)
    };
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read --payload-file {name}"))?;
    if bytes.len() > limit {
        anyhow::bail!("the payload from {name} is over the limit of {limit} bytes (--max-payload-bytes)");
    }
    String::from_utf8(bytes).map_err(|_| usage(format!("the payload from {name} is not UTF-8 text")))
}
