//! `producer enqueue`: enqueue jobs, print `<job id> <trace id>` for each.

use std::io::Write;
use std::time::Duration;

use jobstream::Producer;

use crate::cli::EnqueueArgs;

/// Jobs per pipelined round trip.
const BATCH: u64 = 1000;

pub async fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    let keys = args.queue.keys()?;
    let pool = args.redis.pool(2, Duration::from_secs(10))?;
    let producer = Producer::new(pool, keys, args.queue.limits());
    producer.job(&args.kind, &args.payload)?;
    let mut out = std::io::stdout().lock();
    let mut left = args.count;
    while left > 0 {
        let n = left.min(BATCH);
        let jobs = (0..n).map(|_| producer.job(&args.kind, &args.payload)).collect::<Result<Vec<_>, _>>()?;
        for done in producer.enqueue_batch(jobs).await? {
            let trace = done.trace_id.map_or_else(|| "-".to_owned(), |t| t.to_string());
            writeln!(out, "{} {trace}", done.job_id)?;
        }
        left -= n;
    }
    out.flush()?;
    Ok(())
}
