//! A partitioned queue on a 3-node Redis Cluster: jobs spread over the shards and all run; when one primary's
//! process dies, jobs on the surviving shards keep running, and once the node returns (its AOF intact) its jobs
//! run too: nothing lost.

use std::process::Command;
use std::time::Duration;

use jobstream_tests::*;

const QUEUE: &str = "cl";
const PARTITIONS: usize = 6;

fn clustered(mut cmd: Command, cluster: &RedisCluster) -> Command {
    cmd.env("REDIS_URL", cluster.urls())
        .env("JOBSTREAM_REDIS_CLUSTER", "true")
        .env("JOBSTREAM_PARTITIONS", PARTITIONS.to_string());
    cmd
}

/// Sum over the partitions a node holds of `cmd(partition)`.
fn sum_on(node: &RedisServer, cmd: impl Fn(usize) -> redis::Cmd) -> u64 {
    (0..PARTITIONS).filter_map(|i| on_node::<u64>(node, &cmd(i))).sum()
}

fn queued_on(node: &RedisServer) -> u64 {
    sum_on(node, |i| redis::cmd("XLEN").arg(keys(&format!("{QUEUE}:{i}")).stream).clone())
}

fn done_on(node: &RedisServer) -> u64 {
    sum_on(node, |i| redis::cmd("HLEN").arg(keys(&format!("{QUEUE}:{i}")).done).clone())
}

fn runs_on(node: &RedisServer) -> u64 {
    (0..PARTITIONS)
        .filter_map(|i| {
            on_node::<std::collections::HashMap<String, u64>>(
                node,
                redis::cmd("HGETALL").arg(keys(&format!("{QUEUE}:{i}")).done),
            )
        })
        .flat_map(|runs| runs.into_values())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_queue_uses_every_shard_and_survives_a_primary_dying() {
    let mut cluster = RedisCluster::start(3);
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let jobs =
        enqueue(clustered(traced("producer", &cluster.nodes[0], &sink, "p"), &cluster), QUEUE, "noop", "{}", 600);
    assert_eq!(jobs.len(), 600);
    let per_node: Vec<u64> = cluster.nodes.iter().map(queued_on).collect();
    eprintln!("jobs per node: {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), 600, "every job is on some shard");
    assert!(per_node.iter().filter(|&&n| n > 0).count() >= 2, "the partitions spread over shards: {per_node:?}");

    // Kill the primary holding the most jobs; the others' jobs must still run.
    let victim = (0..3).max_by_key(|&i| per_node[i]).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let surviving_jobs: u64 = survivors.iter().map(|&i| per_node[i]).sum();
    cluster.nodes[victim].kill();

    let flags = ["--concurrency", "12", "--visibility-timeout", "5s"];
    let mut cmd = clustered(consumer(&cluster.nodes[survivors[0]], &sink, QUEUE, "w", &flags), &cluster);
    // The cluster client's own lines (a reconnect attempt every few ms while the node is down) would bury the
    // worker's in the log this test prints when it fails.
    cmd.env("RUST_LOG", "info,redis=error");
    let worker = Service::spawn(cmd, logs.path(), "w");
    wait_until(Duration::from_secs(60), "the surviving shards' jobs to run", || {
        survivors.iter().map(|&i| done_on(&cluster.nodes[i])).sum::<u64>() == surviving_jobs
    });
    assert_eq!(http_get(worker.listen_addr(), "/healthz").0, 200, "the worker lives on");

    cluster.nodes[victim].restart();
    cluster.wait_ok();
    wait_until(Duration::from_secs(60), "every job to run once the node is back", || {
        cluster.nodes.iter().map(done_on).sum::<u64>() == 600
    });
    let runs: u64 = cluster.nodes.iter().map(runs_on).sum();
    eprintln!("cluster: 600 jobs, 0 lost, {} extra runs; {surviving_jobs} ran while a primary was down", runs - 600);
    let pending: u64 = cluster
        .nodes
        .iter()
        .map(|node| {
            (0..PARTITIONS)
                .filter_map(|i| {
                    on_node::<(u64, redis::Value, redis::Value, redis::Value)>(
                        node,
                        redis::cmd("XPENDING").arg(keys(&format!("{QUEUE}:{i}")).stream).arg("workers"),
                    )
                })
                .map(|summary| summary.0)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(pending, 0);
    drop(worker);

    // Failures, retries (the delayed set) and dead letters run their Lua scripts on the partitions' shards.
    let flags = ["--demo-failure-rate", "0.5", "--max-attempts", "2", "--retry-base-delay", "20ms"];
    let _worker =
        Service::spawn(clustered(consumer(&cluster.nodes[0], &sink, QUEUE, "w2", &flags), &cluster), logs.path(), "w2");
    enqueue(clustered(traced("producer", &cluster.nodes[0], &sink, "p"), &cluster), QUEUE, "demo", "{}", 40);
    let dead_on =
        |node: &RedisServer| sum_on(node, |i| redis::cmd("XLEN").arg(keys(&format!("{QUEUE}:{i}")).dead).clone());
    wait_until(Duration::from_secs(60), "40 demo jobs done or dead", || {
        cluster.nodes.iter().map(|n| done_on(n) + dead_on(n)).sum::<u64>() == 640
    });
    let dead: u64 = cluster.nodes.iter().map(dead_on).sum();
    assert!(dead > 0 && dead < 40, "half the attempts fail, two attempts each: some die, most succeed ({dead} dead)");
}
