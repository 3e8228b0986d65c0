//! Pausing a queue (`producer queue pause|resume`, `POST /v1/queues/{queue}/pause|resume`): a paused queue runs
//! nothing new until resumed, across consumer restarts; jobs running when it is paused finish; the consumer stays
//! ready; stats and metrics say paused; the HTTP routes take the API token.
//!
//! Real `redis-server`, real `producer` and `consumer` binaries. "Runs nothing" is observed in Redis: the
//! group's `entries-read` does not move and the `done` hash stays empty, over a bounded observation that starts
//! once the consumer has logged that it saw the pause (so the observation is not racing the consumer's poll).

use std::process::Output;
use std::time::{Duration, Instant};

use jobstream_tests::*;

fn queue_cmd(fx: &Fixture, args: &[&str]) -> Output {
    fx.producer().arg("queue").args(args).output().expect("run producer queue")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The group's `entries-read`: how many entries it was ever delivered.
fn entries_read(conn: &mut redis::Connection, queue: &str) -> u64 {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(keys(queue).stream).query(conn).unwrap_or_default();
    groups
        .iter()
        .find_map(|g| g.get("entries-read").and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok()))
        .flatten()
        .unwrap_or(0)
}

/// Waits until `worker` has logged `line` `times` times.
fn wait_for_log(worker: &Service, line: &str, times: usize) {
    wait_until(Duration::from_secs(10), &format!("the consumer to log {line:?} {times} time(s)"), || {
        worker.log().matches(line).count() >= times
    });
}

const PAUSED_LINE: &str = "queue paused: reading nothing new";
const RESUMED_LINE: &str = "queue resumed: reading again";

/// Asserts that for `window`, `queue` delivers nothing and runs nothing.
fn assert_runs_nothing(conn: &mut redis::Connection, queue: &str, read_before: u64, window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert_eq!(entries_read(conn, queue), read_before, "an entry was delivered while paused");
        assert!(done_counts(conn, queue).is_empty(), "a job ran while paused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_queue_runs_nothing_until_resumed_even_across_a_restart() {
    let fx = Fixture::start().await;
    let queue = "mail";
    let worker = fx.spawn(fx.consumer(queue, "w1", &[]), "w1");
    let addr = worker.listen_addr();
    wait_until(Duration::from_secs(20), "readiness", || http_get(addr, "/readyz").0 == 200);

    // Q positional, and the answer says what happened.
    assert_eq!(ok(queue_cmd(&fx, &["pause", queue])).trim(), "queue mail paused");
    assert_eq!(ok(queue_cmd(&fx, &["pause", "--queue", queue])).trim(), "queue mail was already paused");
    wait_for_log(&worker, PAUSED_LINE, 1);
    let mut conn = fx.conn();
    let read_before = entries_read(&mut conn, queue);
    enqueue(fx.producer(), queue, "noop", "{}", 20);
    // A delayed job that comes due while paused stays delayed.
    let out = fx
        .producer()
        .args(["enqueue", "--queue", queue, "--kind", "noop", "--delay", "300ms"])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_runs_nothing(&mut conn, queue, read_before, Duration::from_millis(1500));
    assert_eq!(xlen(&mut conn, &keys(queue).stream), 20, "the 20 wait in the stream");
    let delayed: u64 = redis::cmd("ZCARD").arg(keys(queue).delayed).query(&mut conn).unwrap();
    assert_eq!(delayed, 1, "the due delayed job was not promoted while paused");

    // Paused is not unready, and stats and metrics say paused.
    assert_eq!(http_get(addr, "/readyz").0, 200, "a paused consumer stays ready");
    let (_, metrics) = http_get(addr, "/metrics");
    assert!(metrics.lines().any(|l| l == r#"jobstream_queue_paused{queue="mail"} 1"#), "{metrics}");
    let text = ok(fx.producer().args(["stats", "--queue", queue]).output().unwrap());
    assert!(text.lines().next().unwrap().ends_with(", paused"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(fx.producer().args(["stats", "--queue", queue, "--json"]).output().unwrap())).unwrap();
    assert_eq!(json["paused"], true, "{json}");

    // A restarted consumer finds the queue still paused and reads nothing.
    assert_eq!(worker.terminate(), Some(0));
    let worker = fx.spawn(fx.consumer(queue, "w2", &[]), "w2");
    wait_for_log(&worker, PAUSED_LINE, 1);
    assert_runs_nothing(&mut conn, queue, read_before, Duration::from_millis(1000));

    assert_eq!(ok(queue_cmd(&fx, &["resume", queue])).trim(), "queue mail resumed");
    wait_for_log(&worker, RESUMED_LINE, 1);
    wait_until(Duration::from_secs(20), "all 21 jobs to run after the resume", || {
        done_counts(&mut conn, queue).len() == 21
    });
    assert!(done_counts(&mut conn, queue).values().all(|&runs| runs == 1));
    assert_eq!(ok(queue_cmd(&fx, &["resume", queue])).trim(), "queue mail was not paused");
    let (_, metrics) = http_get(worker.listen_addr(), "/metrics");
    assert!(metrics.lines().any(|l| l == r#"jobstream_queue_paused{queue="mail"} 0"#), "{metrics}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(fx.producer().args(["stats", "--queue", queue, "--json"]).output().unwrap())).unwrap();
    assert_eq!(json["paused"], false, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_running_when_the_queue_is_paused_finish_and_are_acknowledged() {
    let fx = Fixture::start().await;
    let queue = "midrun";
    // Demo jobs of about 2 s each, four at a time.
    let worker = fx.spawn(fx.consumer(queue, "w", &["--demo-latency-scale", "15", "--concurrency", "4"]), "w");
    wait_until(Duration::from_secs(20), "readiness", || http_get(worker.listen_addr(), "/readyz").0 == 200);
    let mut conn = fx.conn();
    let running = enqueue(fx.producer(), queue, "demo", "{}", 4);
    wait_until(Duration::from_secs(10), "the 4 jobs to start", || pending(&mut conn, queue, "workers") == 4);
    ok(queue_cmd(&fx, &["pause", "--queue", queue]));
    wait_for_log(&worker, PAUSED_LINE, 1);
    assert!(done_counts(&mut conn, queue).len() < 4, "the jobs were still running when paused");
    let waiting = enqueue(fx.producer(), queue, "demo", "{}", 3);

    wait_until(Duration::from_secs(20), "the running jobs to finish and be acknowledged", || {
        done_counts(&mut conn, queue).len() == 4 && pending(&mut conn, queue, "workers") == 0
    });
    let done = done_counts(&mut conn, queue);
    assert!(running.iter().all(|j| done.contains_key(&j.job_id)), "{done:?}");
    assert!(waiting.iter().all(|j| !done.contains_key(&j.job_id)), "a job enqueued while paused ran: {done:?}");
    assert_eq!(entries_read(&mut conn, queue), 4, "nothing new was delivered");

    ok(queue_cmd(&fx, &["resume", queue]));
    wait_until(Duration::from_secs(30), "the waiting jobs to run after the resume", || {
        done_counts(&mut conn, queue).len() == 7
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_routes_pause_and_resume_and_take_the_token() {
    let fx = Fixture::start().await;
    let mut cmd = traced("producer", &fx.redis, &fx.sink, "test-api");
    cmd.args(["serve", "--queue", "web", "--listen", "127.0.0.1:0"]).env("JOBSTREAM_API_TOKEN", "s3cret");
    let api = fx.spawn(cmd, "api");
    let addr = api.listen_addr();
    wait_until(Duration::from_secs(20), "the API to be ready", || http_get(addr, "/readyz").0 == 200);
    let auth = [("Authorization", "Bearer s3cret")];
    let mut conn = fx.conn();
    let flag = keys("other").paused;
    let exists = |conn: &mut redis::Connection| -> bool { redis::cmd("EXISTS").arg(&flag).query(conn).unwrap() };

    let (status, body) = http_request(addr, "POST", "/v1/queues/other/pause", &[], "");
    assert_eq!(status, 401, "{body}");
    let (status, _) = http_request(addr, "POST", "/v1/queues/other/pause", &[("Authorization", "Bearer nope")], "");
    assert_eq!(status, 401);
    assert!(!exists(&mut conn), "refused requests change nothing");

    let (status, body) = http_request(addr, "POST", "/v1/queues/other/pause", &auth, "");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer, serde_json::json!({ "queue": "other", "paused": true, "changed": true }));
    assert!(exists(&mut conn));
    let (_, body) = http_request(addr, "POST", "/v1/queues/other/pause", &auth, "");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["changed"], false);

    let (status, _) = http_request(addr, "POST", "/v1/queues/other/resume", &[], "");
    assert_eq!(status, 401);
    assert!(exists(&mut conn));
    let (status, body) = http_request(addr, "POST", "/v1/queues/other/resume", &auth, "");
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer, serde_json::json!({ "queue": "other", "paused": false, "changed": true }));
    assert!(!exists(&mut conn));

    let (status, body) = http_request(addr, "POST", "/v1/queues/bad%20name/pause", &auth, "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"), "{body}");
}
