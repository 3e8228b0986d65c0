//! `producer stats` and `producer dead …`: the operator's view of a queue.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use jobstream::admin;
use jobstream::config::{QueueArgs, RedisArgs};

use crate::cli::{DeadCommand, StatsArgs};
use crate::usage;

pub(crate) async fn connect(redis: &RedisArgs) -> anyhow::Result<jobstream::connection::Pool> {
    let pool = redis.pool(1, Duration::from_secs(10))?;
    pool.ping()
        .await
        .with_context(|| format!("cannot reach Redis at {}", jobstream::connection::redact(&redis.redis_url)))?;
    Ok(pool)
}

/// The queue's numbers as text, or as one JSON object (`--json`): a queue of one partition is its
/// [`admin::QueueStats`]; a partitioned queue is `{"queue", "paused", "partitions": [QueueStats, …]}`.
pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let record = args.queue.partition_record().map_err(usage)?;
    let partitions = args.queue.partition_keys().map_err(usage)?;
    let conn = connect(&args.redis).await?;
    // Read-only: a count other than the recorded one would show empty partitions, not the queue's.
    record.check(&conn).await?;
    let mut all = Vec::with_capacity(partitions.len());
    for keys in &partitions {
        all.push(admin::stats(&conn, keys).await?);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = match all.as_slice() {
            [one] => serde_json::to_string(one)?,
            _ => serde_json::to_string(&serde_json::json!({
                "queue": args.queue.queue.to_string(),
                "paused": all.iter().any(|s| s.paused),
                "partitions": all
            }))?,
        };
        writeln!(out, "{json}")?;
        return Ok(());
    }
    for stats in &all {
        write_text(&mut out, stats)?;
    }
    Ok(())
}

fn write_text(out: &mut impl Write, stats: &admin::QueueStats) -> std::io::Result<()> {
    let rate = |r: Option<f64>| r.map_or_else(|| "?".to_owned(), |r| format!("{r:.2}"));
    let paused = if stats.paused { ", paused" } else { "" };
    writeln!(
        out,
        "queue {}: {} entries, {} delayed, {} dead{paused}",
        stats.queue, stats.length, stats.delayed, stats.dead
    )?;
    match stats.rates.window_s {
        Some(window) => writeln!(
            out,
            "  last {window:.0}s: {} enqueued/s, {} dead/s",
            rate(stats.rates.enqueued_per_s),
            rate(stats.rates.dead_per_s)
        )?,
        None => writeln!(out, "  rates unknown: no worker has recorded the queue's counters yet")?,
    }
    for g in &stats.groups {
        let lag = g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string());
        let oldest = g.oldest_pending_age_ms.map_or_else(|| "-".to_owned(), seconds);
        writeln!(
            out,
            "  group {}: {} consumers, lag {lag}, {} pending, oldest pending {oldest}, {} acknowledged/s",
            g.name,
            g.consumers,
            g.pending,
            rate(g.acknowledged_per_s)
        )?;
        for c in &g.consumer_list {
            writeln!(out, "    consumer {}: {} pending, idle {}", c.name, c.pending, seconds(c.idle_ms))?;
        }
    }
    Ok(())
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

pub async fn dead(command: DeadCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        DeadCommand::List { redis, queue, count, from, json } => {
            let (conn, keys) = open(&redis, &queue).await?;
            for entry in admin::dead_list(&conn, &keys, &from, count).await? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&entry)?)?;
                } else {
                    let f = |name: &str| entry.fields.get(name).map(String::as_str).unwrap_or("-");
                    writeln!(
                        out,
                        "{} {} {} {} attempt={} {}",
                        entry.dead_id,
                        f("id"),
                        f("kind"),
                        f("dead.reason"),
                        f("attempt"),
                        f("dead.error")
                    )?;
                }
            }
        }
        DeadCommand::Show { redis, queue, dead_id } => {
            let (conn, keys) = open(&redis, &queue).await?;
            match admin::dead_show(&conn, &keys, &dead_id).await? {
                Some(entry) => writeln!(out, "{}", serde_json::to_string_pretty(&entry)?)?,
                None => bail!("no dead entry {dead_id} in queue {}", keys.queue()),
            }
        }
        DeadCommand::Replay { redis, queue, all, dead_ids } => {
            let (conn, keys) = open(&redis, &queue).await?;
            let ids = if all {
                let mut ids = Vec::new();
                let mut from = "-".to_owned();
                loop {
                    let page = admin::dead_list(&conn, &keys, &from, 1000).await?;
                    let Some(last) = page.last() else { break };
                    from = format!("({}", last.dead_id);
                    ids.extend(page.into_iter().map(|e| e.dead_id));
                }
                ids
            } else {
                dead_ids
            };
            let mut failed = 0;
            for id in ids {
                match admin::replay(&conn, &keys, &id).await {
                    Ok(r) => writeln!(out, "{} -> {} {}", r.dead_id, r.message_id, r.job_id)?,
                    Err(e) => {
                        failed += 1;
                        eprintln!("{e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} dead entries were not replayed");
            }
        }
        DeadCommand::Purge { redis, queue, yes } => {
            if !yes {
                return Err(usage(format!(
                    "purge deletes every dead job of queue {}; add --yes to confirm",
                    queue.queue
                )));
            }
            let (conn, keys) = open(&redis, &queue).await?;
            let n = admin::dead_purge(&conn, &keys).await?;
            writeln!(out, "deleted {n} dead jobs")?;
        }
    }
    Ok(())
}

async fn open(redis: &RedisArgs, queue: &QueueArgs) -> anyhow::Result<(jobstream::connection::Pool, jobstream::Keys)> {
    if queue.partitions > 1 {
        return Err(usage(format!(
            "dead-letter commands act on one partition: name it as the queue (--queue {}:0) without --partitions",
            queue.queue
        )));
    }
    let keys = queue.keys().map_err(usage)?;
    Ok((connect(redis).await?, keys))
}
