//! A job's life by its id: `producer job show|cancel|result` and `GET|DELETE /v1/jobs/{id}` report each state
//! (waiting, running on which consumer, delayed until when, done with its result and progress, dead with the
//! reason, cancelled, expired); a cancelled waiting or delayed job never runs; a cancelled running job stops at
//! once and is not retried; the exported spans record each transition (progress, promoted, queue_paused,
//! cancelled).
//!
//! Real `redis-server`, real `producer` and `consumer` binaries, real OTLP spans.

use std::process::Output;
use std::time::{Duration, Instant};

use jobstream_tests::*;
use serde_json::Value;

const SPAN_WAIT: Duration = Duration::from_secs(20);

fn run(fx: &Fixture, args: &[&str]) -> Output {
    fx.producer().args(args).output().expect("run producer")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn enqueue(fx: &Fixture, queue: &str, kind: &str, flags: &[&str]) -> EnqueuedLine {
    let text = ok(run(fx, &[&["enqueue", "--queue", queue, "--kind", kind][..], flags].concat()));
    let (job_id, trace_id) = text.trim().split_once(' ').expect("<job id> <trace id>");
    EnqueuedLine { job_id: job_id.to_owned(), trace_id: trace_id.to_owned() }
}

/// `producer job show --json`.
fn show(fx: &Fixture, queue: &str, id: &str) -> Value {
    serde_json::from_str(&ok(run(fx, &["job", "show", "--queue", queue, "--json", id]))).expect("JSON status")
}

fn state(fx: &Fixture, queue: &str, id: &str) -> String {
    show(fx, queue, id)["state"].as_str().unwrap_or_default().to_owned()
}

fn has_event(span: &ReceivedSpan, name: &str) -> bool {
    span.events.iter().any(|(event, _)| event == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_waiting_and_delayed_jobs_never_run() {
    let fx = Fixture::start().await;
    let queue = "cancel-early";
    let mut conn = fx.conn();
    // No consumer yet: the job waits on the stream.
    let waiting = enqueue(&fx, queue, "noop", &[]);
    let status = show(&fx, queue, &waiting.job_id);
    assert_eq!(status["state"], "waiting", "{status}");
    assert_eq!(status["attempt"], 1);
    assert_eq!(status["kind"], "noop");
    assert_eq!(status["trace_id"], waiting.trace_id.as_str());
    assert_eq!(status["payload"], serde_json::json!({}));
    let out = ok(run(&fx, &["job", "cancel", "--queue", queue, &waiting.job_id]));
    assert!(out.contains("cancelled (it was waiting"), "{out}");
    assert_eq!(xlen(&mut conn, &keys(queue).stream), 0, "the entry is deleted");
    // Idempotent: a second cancel succeeds and says so.
    let again = ok(run(&fx, &["job", "cancel", "--queue", queue, &waiting.job_id]));
    assert!(again.contains("already cancelled"), "{again}");
    assert_eq!(state(&fx, queue, &waiting.job_id), "cancelled");

    // Delayed 2 s and cancelled at once: the consumer's promoter drops it when it comes due.
    let delayed = enqueue(&fx, queue, "noop", &["--delay", "2s"]);
    let status = show(&fx, queue, &delayed.job_id);
    assert_eq!(status["state"], "delayed", "{status}");
    let run_at = status["run_at"].as_u64().expect("run_at");
    let now = jobstream::clock::now_ms();
    assert!((now..now + 2_500).contains(&run_at), "due about 2 s from now: {run_at} vs {now}");
    let out: Value =
        serde_json::from_str(&ok(run(&fx, &["job", "cancel", "--queue", queue, "--json", &delayed.job_id]))).unwrap();
    assert_eq!(out, serde_json::json!({ "outcome": "cancelled", "from": "delayed" }));

    // A control job enqueued after both shows the consumer ran what it was given.
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let control = enqueue(&fx, queue, "noop", &["--delay", "2500ms"]);
    wait_until(Duration::from_secs(20), "the control job to run", || {
        done_counts(&mut conn, queue).contains_key(&control.job_id)
    });
    let delayed_set: u64 = redis::cmd("ZCARD").arg(keys(queue).delayed).query(&mut conn).unwrap();
    assert_eq!(delayed_set, 0, "the cancelled member was dropped when it came due");
    let done = done_counts(&mut conn, queue);
    assert_eq!(done.len(), 1, "only the control job ran: {done:?}");
    assert_eq!(state(&fx, queue, &delayed.job_id), "cancelled");
    assert_eq!(state(&fx, queue, &control.job_id), "done");
    assert!(worker.log().contains("cancelled dropped"), "the consumer says it dropped a cancelled job");
    assert_eq!(worker.terminate(), Some(0));

    // Neither cancelled job has a process span; the control job's says it was promoted.
    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| named(s, &control.trace_id, &name).len() == 1)
        .await
        .unwrap_or_else(|p| panic!("control span missing: {} spans", p.len()));
    assert!(named(&spans, &waiting.trace_id, &name).is_empty());
    assert!(named(&spans, &delayed.trace_id, &name).is_empty());
    assert!(has_event(named(&spans, &control.trace_id, &name)[0], "promoted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_running_job_stops_at_once_and_is_not_retried() {
    let fx = Fixture::start().await;
    let queue = "cancel-running";
    // Each demo step takes about a minute: only the cancel can end the attempt.
    let flags = ["--demo-latency-scale", "1000", "--demo-failure-rate", "0", "--max-attempts", "5"];
    let worker = fx.spawn(fx.consumer(queue, "w", &flags), "w");
    let job = enqueue(&fx, queue, "demo", &[]);
    wait_until(Duration::from_secs(20), "the job to run", || state(&fx, queue, &job.job_id) == "running");
    let status = show(&fx, queue, &job.job_id);
    assert_eq!(status["consumer"], "w", "{status}");
    assert_eq!(status["deliveries"], 1);
    let text = ok(run(&fx, &["job", "show", "--queue", queue, &job.job_id]));
    assert!(text.contains(": running on consumer w"), "{text}");

    let asked = Instant::now();
    let out = ok(run(&fx, &["job", "cancel", "--queue", queue, &job.job_id]));
    assert!(out.contains("running on w: asked to stop"), "{out}");
    wait_until(Duration::from_secs(10), "the job to be cancelled", || state(&fx, queue, &job.job_id) == "cancelled");
    let took = asked.elapsed();
    eprintln!("cancel to settled: {took:?}");
    assert!(took < Duration::from_secs(5), "stopped long before its step would end: {took:?}");
    let status = show(&fx, queue, &job.job_id);
    let attempts = status["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{status}");
    assert_eq!(attempts[0]["outcome"], "cancelled");
    assert_eq!(attempts[0]["consumer"], "w");
    let mut conn = fx.conn();
    assert_eq!(pending(&mut conn, queue, "workers"), 0, "acknowledged");
    let delayed: u64 = redis::cmd("ZCARD").arg(keys(queue).delayed).query(&mut conn).unwrap();
    assert_eq!((delayed, xlen(&mut conn, &keys(queue).dead)), (0, 0), "neither retried nor dead");
    // Cancelling a finished job is refused with its state.
    let out = run(&fx, &["job", "cancel", "--queue", queue, &job.job_id]);
    assert!(out.status.success(), "a cancelled job's cancel succeeds again");
    assert_eq!(worker.terminate(), Some(0));

    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| named(s, &job.trace_id, &name).len() == 1)
        .await
        .unwrap_or_else(|p| panic!("process span missing: {} spans", p.len()));
    let process = named(&spans, &job.trace_id, &name)[0];
    let cancelled = process.events.iter().find(|(e, _)| e == "cancelled").expect("a cancelled event");
    assert_eq!(cancelled.1.get("jobstream.cancel.started").map(String::as_str), Some("true"));
    let steps = named(&spans, &job.trace_id, "http-request");
    assert!(steps.iter().all(|s| (s.end_ns - s.start_ns) < 5_000_000_000), "the running step stopped with it");
    assert_eq!(named(&spans, &job.trace_id, &name).len(), 1, "no second attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_show_reports_done_with_result_and_progress_dead_and_expired() {
    let fx = Fixture::start().await;
    let queue = "states";
    let flags = ["--demo-latency-scale", "0.01", "--demo-failure-rate", "0"];
    let worker = fx.spawn(fx.consumer(queue, "w", &flags), "w");
    let done = enqueue(&fx, queue, "demo", &["--payload", r#"{"n":7}"#]);
    wait_until(Duration::from_secs(20), "the job to be done", || state(&fx, queue, &done.job_id) == "done");
    let status = show(&fx, queue, &done.job_id);
    assert_eq!(status["result"]["job_id"], done.job_id.as_str(), "{status}");
    assert_eq!(status["result"]["input"], serde_json::json!({ "n": 7 }));
    assert_eq!(status["progress"], serde_json::json!({ "step": "save-data", "done": 4, "of": 4 }));
    assert_eq!(status["trace_id"], done.trace_id.as_str());
    let attempt = &status["attempts"][0];
    assert_eq!((attempt["n"].as_u64(), attempt["outcome"].as_str()), (Some(1), Some("done")), "{status}");
    assert_eq!(attempt["trace_id"], done.trace_id.as_str());
    assert!(attempt["ended_at"].as_u64() >= attempt["started_at"].as_u64());
    let result: Value =
        serde_json::from_str(&ok(run(&fx, &["job", "result", "--queue", queue, &done.job_id]))).unwrap();
    assert_eq!(result, status["result"]);
    let out = run(&fx, &["job", "cancel", "--queue", queue, &done.job_id]);
    assert!(!out.status.success(), "cancelling a done job is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished (done)"));
    assert_eq!(worker.terminate(), Some(0));

    // Every attempt fails: dead with the reason after two, both attempts recorded.
    let failing = ["--demo-latency-scale", "0", "--demo-failure-rate", "1", "--max-attempts", "2"];
    let worker = fx.spawn(fx.consumer(queue, "w2", &[&failing[..], &["--retry-base-delay", "50ms"]].concat()), "w2");
    let dead = enqueue(&fx, queue, "demo", &[]);
    wait_until(Duration::from_secs(20), "the job to die", || state(&fx, queue, &dead.job_id) == "dead");
    let status = show(&fx, queue, &dead.job_id);
    assert_eq!(status["reason"], "max_attempts", "{status}");
    let outcomes: Vec<&str> =
        status["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["failed", "failed"]);
    assert!(status["error"].as_str().unwrap().contains("simulated_failure"), "{status}");
    let dead_id = status["dead_id"].as_str().expect("dead_id").to_owned();
    let mut conn = fx.conn();
    assert_eq!(dead_entries(&mut conn, queue)[0]["id"], dead.job_id, "the dead entry is {dead_id}");
    let text = ok(run(&fx, &["job", "show", "--queue", queue, &dead.job_id]));
    assert!(text.contains(": dead (reason max_attempts)"), "{text}");

    // A deadline already past: expired, never run, no attempt.
    let expired = enqueue(&fx, queue, "noop", &["--deadline", "2020-01-01T00:00:00Z"]);
    wait_until(Duration::from_secs(20), "the job to expire", || state(&fx, queue, &expired.job_id) == "expired");
    let status = show(&fx, queue, &expired.job_id);
    assert_eq!(status["reason"], "expired");
    assert_eq!(status["attempts"], serde_json::json!([]));
    assert_eq!(worker.terminate(), Some(0));

    // An unknown id is an error that says why.
    let unknown = run(&fx, &["job", "show", "--queue", queue, "0192f0e4-0000-7000-8000-000000000000"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no record of job"));

    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| named(s, &done.trace_id, &name).len() == 1)
        .await
        .unwrap_or_else(|p| panic!("process span missing: {} spans", p.len()));
    let process = named(&spans, &done.trace_id, &name)[0];
    let progress: Vec<&str> = process
        .events
        .iter()
        .filter(|(e, _)| e == "progress")
        .filter_map(|(_, attrs)| attrs.get("jobstream.job.progress").map(String::as_str))
        .collect();
    assert_eq!(progress.len(), 4, "one progress event per step: {progress:?}");
    assert!(progress[3].contains(r#""done":4"#), "{progress:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_waited_through_a_pause_says_so_in_its_span() {
    let fx = Fixture::start().await;
    let queue = "paused-wait";
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    ok(run(&fx, &["queue", "pause", queue]));
    wait_until(Duration::from_secs(10), "the consumer to see the pause", || worker.log().contains("queue paused"));
    let job = enqueue(&fx, queue, "noop", &[]);
    assert_eq!(state(&fx, queue, &job.job_id), "waiting");
    ok(run(&fx, &["queue", "resume", queue]));
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "the job to run", || done_counts(&mut conn, queue).contains_key(&job.job_id));
    assert_eq!(worker.terminate(), Some(0));
    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| named(s, &job.trace_id, &name).len() == 1)
        .await
        .unwrap_or_else(|p| panic!("process span missing: {} spans", p.len()));
    let process = named(&spans, &job.trace_id, &name)[0];
    let paused = process.events.iter().find(|(e, _)| e == "queue_paused").expect("a queue_paused event");
    let ms: u64 = paused.1["jobstream.queue.paused_ms"].parse().unwrap();
    assert!(ms > 0, "it waited while paused: {ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_routes_show_cancel_and_read_results_and_take_the_token() {
    let fx = Fixture::start().await;
    let queue = "web-jobs";
    let mut cmd = traced("producer", &fx.redis, &fx.sink, "test-api");
    cmd.args(["serve", "--queue", queue, "--listen", "127.0.0.1:0"]).env("JOBSTREAM_API_TOKEN", "s3cret");
    let api = fx.spawn(cmd, "api");
    let addr = api.listen_addr();
    wait_until(Duration::from_secs(20), "the API to be ready", || http_get(addr, "/readyz").0 == 200);
    let auth = [("Authorization", "Bearer s3cret")];
    let job = enqueue(&fx, queue, "noop", &[]);
    let path = format!("/v1/jobs/{}", job.job_id);

    assert_eq!(http_request(addr, "GET", &path, &[], "").0, 401);
    assert_eq!(http_request(addr, "DELETE", &path, &[], "").0, 401);
    assert_eq!(state(&fx, queue, &job.job_id), "waiting", "a refused DELETE changes nothing");
    let (status, body) = http_request(addr, "GET", &path, &auth, "");
    assert_eq!(status, 200, "{body}");
    let shown: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["state"], "waiting");
    assert_eq!(shown["id"], job.job_id.as_str());

    let (status, body) = http_request(addr, "DELETE", &path, &auth, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"outcome": "cancelled", "from": "waiting"})
    );
    let (status, body) = http_request(addr, "DELETE", &path, &auth, "");
    assert_eq!(status, 200, "idempotent: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["outcome"], "already");
    let (status, body) = http_request(addr, "GET", &format!("{path}/result?queue={queue}"), &auth, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"state": "cancelled", "result": null})
    );

    let (status, body) = http_request(addr, "GET", "/v1/jobs/not-a-uuid", &auth, "");
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_request(addr, "GET", "/v1/jobs/0192f0e4-0000-7000-8000-000000000000", &auth, "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no record of job"), "{body}");

    // A done job: its cancel is a conflict that names the state.
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let finished = enqueue(&fx, queue, "noop", &[]);
    wait_until(Duration::from_secs(20), "the job to be done", || state(&fx, queue, &finished.job_id) == "done");
    let (status, body) = http_request(addr, "DELETE", &format!("/v1/jobs/{}", finished.job_id), &auth, "");
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"outcome": "already", "state": "done"})
    );
    assert_eq!(worker.terminate(), Some(0));
}

/// A dead letter that last came from the delayed set carries `promoted_at`; replaying it starts a new life, so
/// the new entry must not carry it (its `process` span would show a false `promoted` event).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_dead_letter_does_not_carry_its_old_promotion() {
    let fx = Fixture::start().await;
    let queue = "replayed";
    let flags = ["--max-attempts", "2", "--retry-base-delay", "50ms", "--demo-latency-scale", "0"];
    let worker = fx.spawn(fx.consumer(queue, "w", &flags), "w");
    let job = enqueue(&fx, queue, "demo", &["--payload", r#"{"fail_until_attempt":9}"#]);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "the job to die", || xlen(&mut conn, &keys(queue).dead) == 1);
    assert_eq!(worker.terminate(), Some(0));
    let dead = dead_entries(&mut conn, queue);
    assert!(dead[0].contains_key("promoted_at"), "its last attempt came from the delayed set: {:?}", dead[0]);

    ok(run(&fx, &["dead", "replay", "--queue", queue, "--all"]));
    let entries = entries_text(&mut conn, &keys(queue).stream);
    let replayed = entries.iter().rev().find(|e| e["id"] == job.job_id).expect("the replayed entry");
    assert_eq!(replayed["attempt"], "1");
    assert!(!replayed.contains_key("promoted_at"), "the replayed entry starts a new life: {replayed:?}");
}
