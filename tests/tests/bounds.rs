//! Bounds on a job's life: a timeout per queue, per kind and per job (a handler past it is cancelled, its
//! attempt fails with `error.type=timeout` and is retried), a deadline (`--ttl`, `--deadline`) past which a job
//! not yet started is dead-lettered as `expired`, and the cancellation token a library handler observes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobstream::{Handlers, Job, Producer, Queue, Worker, WorkerConfig};
use jobstream_tests::*;
use tokio_util::sync::CancellationToken;

const SPAN_WAIT: Duration = Duration::from_secs(20);

fn duration_ms(span: &ReceivedSpan) -> u64 {
    (span.end_ns - span.start_ns) / 1_000_000
}

fn has_event(span: &ReceivedSpan, name: &str) -> bool {
    span.events.iter().any(|(event, _)| event == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_handler_is_cancelled_and_retried() {
    let fx = Fixture::start().await;
    let queue = "slow";
    // The demo's steps take 140 ms × 1000 (minutes): only the timeout can end an attempt.
    let flags = ["--demo-latency-scale", "1000", "--job-timeout", "300ms", "--max-attempts", "2"];
    let worker = fx.spawn(fx.consumer(queue, "w", &[&flags[..], &["--retry-base-delay", "50ms"]].concat()), "w");
    let job = enqueue_with(fx.producer(), queue, "demo", &[]);
    let mut conn = fx.conn();
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(20), "the job to be dead-lettered", || xlen(&mut conn, &dead_key) == 1);
    assert_eq!(worker.terminate(), Some(0));
    let dead = dead_entries(&mut conn, queue);
    assert_eq!(dead[0]["id"], job.job_id);
    assert_eq!(dead[0]["dead.reason"], "max_attempts");
    assert_eq!(dead[0]["attempt"], "2");
    assert!(dead[0]["dead.error"].contains("timeout: "), "{}", dead[0]["dead.error"]);
    assert!(done_counts(&mut conn, queue).is_empty(), "no attempt finished");

    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| named(s, &job.trace_id, &name).len() == 2)
        .await
        .unwrap_or_else(|p| panic!("process spans missing: {} spans", p.len()));
    let mut attempts: Vec<&ReceivedSpan> = named(&spans, &job.trace_id, &name);
    attempts.sort_by_key(|s| s.start_ns);
    for (n, span) in attempts.iter().enumerate() {
        assert_eq!(span.attr("jobstream.job.attempt"), Some((n + 1).to_string().as_str()));
        assert_eq!(span.attr("error.type"), Some("timeout"), "attempt {}", n + 1);
        assert_eq!(span.attr("jobstream.job.timeout_ms"), Some("300"));
        assert!(has_event(span, "timed_out"), "attempt {} has a timed_out event", n + 1);
        let ms = duration_ms(span);
        eprintln!("attempt {} ran {ms} ms (timeout 300 ms)", n + 1);
        assert!((300..2000).contains(&ms), "attempt {} ended near its timeout, not after the demo: {ms} ms", n + 1);
    }
    // The handler's step was cut short with its future: it ended with the attempt.
    let steps = named(&spans, &job.trace_id, "http-request");
    assert!(steps.iter().all(|s| duration_ms(s) < 2000), "the running step stopped with the attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_s_own_timeout_wins_then_its_kind_s_then_the_queue_s() {
    let fx = Fixture::start().await;
    let queue = "bounded";
    let flags = [
        "--demo-latency-scale",
        "1000",
        "--job-timeout",
        "10s",
        "--job-timeout-for",
        "demo=300ms",
        "--max-attempts",
        "1",
    ];
    let worker = fx.spawn(fx.consumer(queue, "w", &flags), "w");
    let by_kind = enqueue_with(fx.producer(), queue, "demo", &[]);
    let own = enqueue_with(fx.producer(), queue, "demo", &["--timeout", "700ms"]);
    let by_queue = enqueue_with(fx.producer(), queue, "noop", &[]);
    let mut conn = fx.conn();
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(20), "both demo jobs dead, the noop done", || {
        xlen(&mut conn, &dead_key) == 2 && all_read_and_settled(&mut conn, queue, 3)
    });
    assert_eq!(worker.terminate(), Some(0));
    for entry in dead_entries(&mut conn, queue) {
        assert!(entry["id"] == by_kind.job_id || entry["id"] == own.job_id, "only the demo jobs die");
        assert_eq!(entry["dead.reason"], "max_attempts");
        assert!(entry["dead.error"].contains("timeout: "), "{}", entry["dead.error"]);
    }

    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| [&by_kind, &own, &by_queue].iter().all(|j| named(s, &j.trace_id, &name).len() == 1))
        .await
        .unwrap_or_else(|p| panic!("process spans missing: {} spans", p.len()));
    let process = |job: &EnqueuedLine| named(&spans, &job.trace_id, &name)[0].clone();
    let (kind_span, own_span, queue_span) = (process(&by_kind), process(&own), process(&by_queue));
    assert_eq!(kind_span.attr("jobstream.job.timeout_ms"), Some("300"), "the kind's timeout beats the queue's");
    assert_eq!(own_span.attr("jobstream.job.timeout_ms"), Some("700"), "the job's own beats its kind's");
    assert_eq!(queue_span.attr("jobstream.job.timeout_ms"), Some("10000"), "the queue's when nothing else");
    let (kind_ms, own_ms) = (duration_ms(&kind_span), duration_ms(&own_span));
    eprintln!("kind timeout: ran {kind_ms} ms; own timeout: ran {own_ms} ms");
    assert!((300..2000).contains(&kind_ms), "{kind_ms} ms");
    assert!((700..2400).contains(&own_ms), "{own_ms} ms");
    assert!(has_event(&kind_span, "timed_out") && has_event(&own_span, "timed_out"));
    assert!(!has_event(&queue_span, "timed_out"));
    assert_eq!(queue_span.attr("error.type"), None, "the noop job succeeded within the queue's timeout");
}

/// True when the group has read `n` entries of `queue` and holds none pending: every job was settled.
fn all_read_and_settled(conn: &mut redis::Connection, queue: &str, n: u64) -> bool {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(keys(queue).stream).query(conn).unwrap_or_default();
    let read = groups.first().and_then(|g| g.get("entries-read")).and_then(|v| match v {
        redis::Value::Int(n) => Some(*n as u64),
        _ => None,
    });
    read == Some(n) && pending(conn, queue, "workers") == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_job_never_runs_and_is_dead_as_expired() {
    let fx = Fixture::start().await;
    let queue = "perishable";
    // No consumer runs yet: by the time one starts, the 1 ms has long passed.
    let job = enqueue_with(fx.producer(), queue, "demo", &["--ttl", "1ms"]);
    let past = enqueue_with(fx.producer(), queue, "demo", &["--deadline", "2020-01-01T00:00:00Z"]);
    let fresh = enqueue_with(fx.producer(), queue, "demo", &["--ttl", "1h"]);
    // A retry due after the deadline expires too: every attempt fails, the retry waits 1.5 s to 3 s, the
    // deadline is 1 s away.
    let retried_queue = "perishable-retried";
    let retried = enqueue_with(fx.producer(), retried_queue, "demo", &["--ttl", "1s"]);
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let retry_flags = ["--demo-failure-rate", "1", "--retry-base-delay", "3s", "--max-attempts", "5"];
    let retry_worker = fx.spawn(fx.consumer(retried_queue, "r", &retry_flags), "r");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "two expired jobs dead, the fresh one done", || {
        xlen(&mut conn, &keys(queue).dead) == 2 && done_counts(&mut conn, queue).contains_key(&fresh.job_id)
    });
    wait_until(Duration::from_secs(20), "the retried job dead", || xlen(&mut conn, &keys(retried_queue).dead) == 1);
    assert_eq!(worker.terminate(), Some(0));
    assert_eq!(retry_worker.terminate(), Some(0));

    let done = done_counts(&mut conn, queue);
    assert!(!done.contains_key(&job.job_id) && !done.contains_key(&past.job_id), "an expired job never ran");
    for entry in dead_entries(&mut conn, queue) {
        assert!(entry["id"] == job.job_id || entry["id"] == past.job_id);
        assert_eq!(entry["dead.reason"], "expired");
        assert_eq!(entry["attempt"], "1");
        assert!(entry.contains_key("deadline_ms"), "the field travels with the job");
    }
    let dead = dead_entries(&mut conn, retried_queue);
    assert_eq!(dead[0]["id"], retried.job_id);
    assert_eq!(dead[0]["dead.reason"], "expired", "{:?}", dead[0]);
    assert_eq!(dead[0]["attempt"], "2", "the first attempt ran; the retry, due after the deadline, did not");

    let name = format!("process {queue}");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| named(s, &job.trace_id, &name).len() == 1)
        .await
        .unwrap_or_else(|p| panic!("process span missing: {} spans", p.len()));
    let process = named(&spans, &job.trace_id, &name)[0];
    assert_eq!(process.attr("error.type"), Some("expired"));
    assert!(has_event(process, "expired"), "an expired event: {:?}", process.events);
    assert!(named(&spans, &job.trace_id, "http-request").is_empty(), "no handler step ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_handler_observes_its_cancellation_token_on_timeout() {
    let redis = RedisServer::start();
    let pool = || jobstream::connection::pool(&redis.url(), &Default::default()).unwrap();
    let queue = Queue::new("cancellable").unwrap();
    let producer = Producer::new(pool(), &queue);
    let job = Job::new("slow".parse().unwrap(), jobstream::Payload::parse("{}", &Default::default()).unwrap());
    producer.enqueue_job(job.with_timeout(Duration::from_millis(200))).await.unwrap();

    let (observed, finished) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let handlers = Handlers::new().register_fn("slow".parse().unwrap(), {
        let (observed, finished) = (observed.clone(), finished.clone());
        move |job: Job| {
            let (observed, finished) = (observed.clone(), finished.clone());
            async move {
                // Work the worker cannot drop by itself (a task of its own) watches the token.
                let token = job.cancelled();
                tokio::spawn(async move {
                    token.cancelled().await;
                    observed.store(true, Ordering::SeqCst);
                });
                tokio::time::sleep(Duration::from_secs(60)).await;
                finished.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
    });
    let mut config = WorkerConfig { block: Duration::from_millis(100), ..Default::default() };
    config.retry.max_attempts = 1;
    let worker = Worker::new(pool(), &queue, handlers, config).unwrap();
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    wait_until(Duration::from_secs(10), "the handler to see its token cancelled", || observed.load(Ordering::SeqCst));
    wait_until(Duration::from_secs(10), "the timed-out job dead", || stats.dead_lettered.load(Ordering::SeqCst) == 1);
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(!finished.load(Ordering::SeqCst), "the handler's future was dropped, not run to its end");
    let mut conn = redis.conn();
    let dead = dead_entries(&mut conn, "cancellable");
    assert_eq!(dead[0]["dead.reason"], "max_attempts");
    assert!(dead[0]["dead.error"].starts_with("attempt 1 of 1: timeout: "), "{}", dead[0]["dead.error"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_takes_a_timeout_and_a_deadline_or_ttl() {
    let fx = Fixture::start().await;
    let mut cmd = fx.producer();
    cmd.args(["serve", "--queue", "web", "--listen", "127.0.0.1:0"]);
    let api = fx.spawn(cmd, "api");
    let addr = api.listen_addr();
    let post = |body: &str| http_request(addr, "POST", "/v1/jobs", &[("content-type", "application/json")], body);
    let (status, body) = post(r#"{"kind":"demo","timeout":"1500ms","ttl":60000}"#);
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(r#"{"kind":"demo","timeout":250,"deadline":"2030-01-01T00:00:00Z"}"#);
    assert_eq!(status, 202, "{body}");
    for bad in [
        r#"{"kind":"demo","timeout":"soon"}"#,
        r#"{"kind":"demo","timeout":0}"#,
        r#"{"kind":"demo","deadline":"tomorrow"}"#,
        r#"{"kind":"demo","deadline":"2030-01-01T00:00:00Z","ttl":"1m"}"#,
    ] {
        let (status, body) = post(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("error"), "{bad}: {body}");
    }
    assert_eq!(api.terminate(), Some(0));
    let mut conn = fx.conn();
    let entries = entries_text(&mut conn, &keys("web").stream);
    assert_eq!(entries.len(), 2, "only the good requests enqueued");
    assert_eq!(entries[0]["timeout_ms"], "1500");
    let enqueued: u64 = entries[0]["enqueued_at"].parse().unwrap();
    assert_eq!(entries[0]["deadline_ms"], (enqueued + 60_000).to_string());
    assert_eq!(entries[1]["timeout_ms"], "250");
    assert_eq!(entries[1]["deadline_ms"], "1893456000000");
}
