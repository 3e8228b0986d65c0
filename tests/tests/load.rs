//! `producer load` against real consumer processes: every job is accounted for, the latencies the consumers
//! measured come back merged, dead letters are counted, and an undrained run fails.

use std::process::Output;
use std::time::Duration;

use jobstream_tests::*;
use serde_json::Value;

fn load(redis: &RedisServer, sink: &OtlpSink, args: &[&str]) -> (Output, Value) {
    let out = traced("producer", redis, sink, "test-load")
        .args(["load", "--json", "--no-progress"])
        .args(args)
        .output()
        .expect("run producer load");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out, report)
}

fn ms(report: &Value, which: &str, what: &str) -> f64 {
    report["latency_ms"][which][what].as_f64().unwrap_or_else(|| panic!("{which}.{what} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_run_is_measured_by_every_consumer_and_fully_accounted_for() {
    let fx = Fixture::start().await;
    let queue = "load";
    let _a = fx.spawn(fx.consumer(queue, "a", &["--concurrency", "32"]), "a");
    let _b = fx.spawn(fx.consumer(queue, "b", &["--concurrency", "32"]), "b");
    for worker in [&_a, &_b] {
        let addr = worker.listen_addr();
        wait_until(Duration::from_secs(20), "consumer ready", || http_get(addr, "/readyz").0 == 200);
    }

    let (out, report) = load(
        &fx.redis,
        &fx.sink,
        &["--queue", queue, "--jobs", "3000", "--batch", "50", "--concurrency", "2", "--wait", "--timeout", "60s"],
    );
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["sent"], 3000, "{report}");
    assert_eq!(report["done"], 3000, "{report}");
    assert_eq!(report["dead"], 0, "{report}");
    assert_eq!(report["enqueue_errors"], 0, "{report}");
    assert_eq!(report["consumers"], 2, "both consumers took part: {report}");
    for which in ["enqueue_to_start", "enqueue_to_ack"] {
        assert_eq!(report["latency_ms"][which]["count"], 3000, "{report}");
        let (p50, p99, max) = (ms(&report, which, "p50"), ms(&report, which, "p99"), ms(&report, which, "max"));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{which}: {report}");
    }
    // Every job is acknowledged after its handler started, so each quantile of the one bounds the other.
    assert!(ms(&report, "enqueue_to_start", "p50") <= ms(&report, "enqueue_to_ack", "p50"), "{report}");
    assert!(ms(&report, "enqueue_to_start", "max") <= ms(&report, "enqueue_to_ack", "max"), "{report}");
    assert!(report["drain_rate"].as_f64().unwrap() > 0.0, "{report}");
    // `noop` was told not to record runs: the load costs Redis nothing beyond the queue's own work.
    let mut conn = fx.conn();
    assert!(done_counts(&mut conn, queue).is_empty());
    assert_eq!(pending(&mut conn, queue, "workers"), 0);

    // Open loop: 200 jobs at 400/s take at least the 0.4975 s the schedule spans.
    let (out, paced) = load(&fx.redis, &fx.sink, &["--queue", queue, "--jobs", "200", "--rate", "400", "--wait"]);
    assert!(out.status.success(), "{paced}");
    assert_eq!((paced["sent"].as_u64(), paced["done"].as_u64()), (Some(200), Some(200)), "{paced}");
    assert_eq!(paced["offered_rate"], 400.0);
    assert!(paced["enqueue_seconds"].as_f64().unwrap() >= 0.4975, "{paced}");

    // Jobs no consumer can run are dead-lettered, and counted as such.
    let (out, dead) =
        load(&fx.redis, &fx.sink, &["--queue", queue, "--kind", "no-such-kind", "--jobs", "40", "--wait"]);
    assert!(out.status.success(), "{dead}");
    assert_eq!((dead["done"].as_u64(), dead["dead"].as_u64()), (Some(0), Some(40)), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_nobody_drains_fails_with_a_report() {
    let fx = Fixture::start().await;
    let (out, report) = load(&fx.redis, &fx.sink, &["--queue", "idle", "--jobs", "25", "--wait", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!((report["sent"].as_u64(), report["done"].as_u64()), (Some(25), Some(0)), "{report}");
    assert_eq!(report["timed_out"], true);
    assert!(String::from_utf8_lossy(&out.stderr).contains("25 jobs neither acknowledged nor dead"));
    let mut conn = fx.conn();
    assert_eq!(xlen(&mut conn, &keys("idle").stream), 25, "the jobs are still queued");
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let redis = RedisServer::start();
    for args in [
        &["--rate", "0"][..],
        &["--jobs", "5", "--duration", "1s"],
        &["--payload", "[1]", "--payload-bytes", "64"],
        &["--kind", "bad kind!"],
    ] {
        let out = std::process::Command::new(bin("producer"))
            .env("REDIS_URL", redis.url())
            .args(["load", "--queue", "args"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{args:?}");
    }
    let mut conn = redis.conn();
    assert_eq!(xlen(&mut conn, &keys("args").stream), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_is_measured_across_its_partitions() {
    let fx = Fixture::start().await;
    let worker = fx.spawn(fx.consumer("parts", "only", &["--partitions", "3", "--concurrency", "12"]), "only");
    let addr = worker.listen_addr();
    wait_until(Duration::from_secs(20), "groups on every partition", || http_get(addr, "/readyz").0 == 200);
    let (out, report) =
        load(&fx.redis, &fx.sink, &["--queue", "parts", "--partitions", "3", "--jobs", "600", "--wait"]);
    assert!(out.status.success(), "{report}");
    assert_eq!((report["sent"].as_u64(), report["done"].as_u64()), (Some(600), Some(600)), "{report}");
    assert_eq!(report["consumers"], 1, "one process, counted once over its partitions: {report}");
    let mut conn = fx.conn();
    let per_partition: Vec<u64> = (0..3).map(|i| xlen(&mut conn, &keys(&format!("parts:{i}")).stream)).collect();
    assert_eq!(per_partition.iter().sum::<u64>(), 600, "{per_partition:?}");
    assert!(per_partition.iter().all(|&n| n > 100), "jobs spread over the partitions: {per_partition:?}");
    assert_eq!(xlen(&mut conn, &keys("parts").stream), 0, "nothing on the unpartitioned stream");
}

/// `producer load --check-traces`: the producer serves the receiver, the consumers export to it, and the report
/// counts the run's traces with no violation; every job has its send, process and ack spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_run_checks_the_shape_of_its_traces() {
    let fx = Fixture::start().await;
    let queue = "shapes";
    let receiver = format!("127.0.0.1:{}", free_port());
    let mut consumer = fx.consumer(queue, "a", &["--concurrency", "32"]);
    consumer.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"));
    let consumer = fx.spawn(consumer, "a");
    let addr = consumer.listen_addr();
    wait_until(Duration::from_secs(20), "consumer ready", || http_get(addr, "/readyz").0 == 200);

    let (out, report) = load(
        &fx.redis,
        &fx.sink,
        &["--queue", queue, "--jobs", "500", "--wait", "--check-traces", &receiver, "--check-traces-quiet", "1s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}\n{stderr}");
    assert_eq!(report["done"], 500, "{report}");
    let shape = stderr.lines().find(|l| l.starts_with("trace shapes:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(shape.contains("500 jobs, 500 sends, 500 process spans"), "{shape}");
    assert!(stderr.contains("violations: none"), "{stderr}");
}
