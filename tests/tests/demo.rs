//! `producer demo`, the README's first command after set-up: it starts its own consumers, reports every job
//! done or dead-lettered, and prints one job's span tree as it was exported.

use std::process::Command;
use std::time::{Duration, Instant};

use jobstream_tests::*;

fn demo(redis: &RedisServer, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = Command::new(bin("producer"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .arg("demo")
        .args(["--consumer-bin", bin("consumer").to_str().unwrap()])
        .args(args)
        .output()
        .expect("run producer demo");
    (out, started.elapsed())
}

#[test]
fn the_demo_reports_its_jobs_and_prints_a_span_tree() {
    let redis = RedisServer::start();
    let (out, _) = demo(&redis, &["--jobs", "20", "--latency-scale", "0.05", "--failure-rate", "0.2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("jobs: 20 enqueued, 20 done, 0 missing, 0 dead-lettered"), "{stdout}");
    for span in ["send demo-", "process demo-", "http-request", "load-data", "process-data", "save-data"] {
        assert!(stdout.contains(span), "the span tree shows {span}: {stdout}");
    }
}

#[test]
fn a_demo_whose_jobs_all_fail_reports_each_dead_letter_and_ends_when_all_are_dead() {
    let redis = RedisServer::start();
    // Every attempt fails: 5 attempts each (retries 100 ms apart, doubling), then the dead stream.
    let (out, elapsed) =
        demo(&redis, &["--jobs", "4", "--latency-scale", "0", "--failure-rate", "1", "--timeout", "90s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("jobs: 4 enqueued, 0 done, 0 missing, 4 dead-lettered"), "{stdout}");
    assert!(stdout.contains("attempts: 20 in all, 20 failed"), "attempts of dead jobs are counted: {stdout}");
    assert_eq!(stderr.matches("dead-lettered (max_attempts)").count(), 4, "each dead letter is told: {stderr}");
    assert!(elapsed < Duration::from_secs(60), "the demo ends when every job is dead, not at its timeout: {elapsed:?}");
}
