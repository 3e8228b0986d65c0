//! `producer enqueue`: enqueue jobs, print `<job id> <trace id>` for each.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use jobstream::{Enqueued, Producer};

use crate::cli::EnqueueArgs;

/// Jobs per pipelined round trip.
const BATCH: u64 = 1000;

pub async fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    let keys = args.queue.partition_keys()?;
    let pool = args.redis.pool(2, Duration::from_secs(10))?;
    let producer = Producer::partitioned(pool, &args.queue.queue, keys, args.queue.limits());
    producer.check_partitions().await?;
    let first = producer.job(&args.kind, &args.payload)?;
    let mut out = std::io::stdout().lock();
    if let Some(key) = &args.idempotency_key {
        if args.count != 1 {
            bail!("--idempotency-key names one job; use it with --count 1");
        }
        let done = producer.enqueue_once(first, key, args.idempotency_ttl).await?;
        writeln!(out, "{} {}", done.job_id, trace_text(&done))?;
        if done.duplicate {
            eprintln!("idempotency key matched job {}: nothing enqueued", done.job_id);
        }
        return Ok(());
    }
    let mut left = args.count;
    while left > 0 {
        let n = left.min(BATCH);
        let jobs = (0..n).map(|_| producer.job(&args.kind, &args.payload)).collect::<Result<Vec<_>, _>>()?;
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
