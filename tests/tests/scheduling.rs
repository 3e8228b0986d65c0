//! Jobs scheduled to run later (`--delay`, `--at`, HTTP `delay`/`run_at`, the library's `enqueue_in`): they wait
//! in the queue's delayed set, run at or after their time and not before, and a job scheduled past the link
//! threshold is processed in a new trace linked to its `send` span.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobstream::{Handlers, Producer, Queue, Worker, WorkerConfig};
use jobstream_tests::*;
use tokio_util::sync::CancellationToken;

const SPAN_WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The delayed set of `queue`: (member, score) pairs.
fn delayed(conn: &mut redis::Connection, queue: &str) -> Vec<(String, u64)> {
    redis::cmd("ZRANGE").arg(keys(queue).delayed).arg(0).arg(-1).arg("WITHSCORES").query(conn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_delayed_2s_runs_after_2s_and_not_before() {
    let fx = Fixture::start().await;
    let queue = "later";
    let worker = fx.spawn(fx.consumer(queue, "c0", &[]), "c0");
    let mut conn = fx.conn();
    let before = now_ms();
    let job = enqueue_with(fx.producer(), queue, "demo", &["--delay", "2s"]);
    let after = now_ms();

    let waiting = delayed(&mut conn, queue);
    assert_eq!(waiting.len(), 1, "the job waits in the delayed set");
    let due = waiting[0].1;
    assert!((before + 2000..=after + 2000).contains(&due), "due 2 s after the enqueue: {due} vs {before}..{after}");
    assert!(waiting[0].0.contains(&job.job_id), "the member is the job's entry");

    // Polled every 10 ms: the job must not be done while the clock is before its due time.
    let mut done_at = None;
    wait_until(Duration::from_secs(15), "the delayed job to run", || {
        let now = now_ms();
        if done_counts(&mut conn, queue).contains_key(&job.job_id) {
            done_at = Some(now);
            return true;
        }
        false
    });
    let done_at = done_at.unwrap();
    eprintln!("delayed 2 s: due {} ms after the enqueue began, done seen {} ms after due", due - before, done_at - due);
    assert!(done_at >= due, "done at {done_at}, before its due time {due}");
    assert!(done_at <= due + 3000, "done at {done_at}, long after its due time {due}");
    assert!(delayed(&mut conn, queue).is_empty(), "promoted out of the delayed set");
    assert_eq!(worker.terminate(), Some(0));

    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| {
            !named(s, &job.trace_id, "save-data").is_empty() && !named(s, &job.trace_id, "send later").is_empty()
        })
        .await
        .unwrap_or_else(|p| panic!("spans missing: {} spans", p.len()));
    let send = named(&spans, &job.trace_id, "send later")[0];
    let process = named(&spans, &job.trace_id, "process later")[0];
    assert!(send.start_ns / 1_000_000 <= after, "the send span is made when the job is scheduled");
    assert_eq!(send.attr("jobstream.job.scheduled_for"), Some(due.to_string().as_str()));
    let (_, scheduled) = send.events.iter().find(|(name, _)| name == "scheduled").expect("a scheduled event");
    assert_eq!(scheduled.get("jobstream.job.scheduled_for").map(String::as_str), Some(due.to_string().as_str()));
    assert_eq!(scheduled.get("jobstream.job.trace_mode").map(String::as_str), Some("parent"));
    eprintln!("process span started {} ms after due", (process.start_ns / 1_000_000) as i64 - due as i64);
    assert!(process.start_ns / 1_000_000 >= due, "process started {} before due {due}", process.start_ns / 1_000_000);
    assert!(process.start_ns >= send.start_ns + 2_000_000_000, "process starts 2 s or more after send");
    assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()), "under the threshold: one trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_in_the_past_enqueues_at_once_and_at_in_the_future_waits() {
    let fx = Fixture::start().await;
    let queue = "at";
    let mut conn = fx.conn();
    // No worker yet: a past time goes straight to the stream, a future one to the delayed set.
    let past = enqueue_with(fx.producer(), queue, "noop", &["--at", "2020-01-01T00:00:00Z"]);
    assert_eq!(xlen(&mut conn, &keys(queue).stream), 1, "a time in the past is enqueued at once");
    assert!(delayed(&mut conn, queue).is_empty());
    let future = enqueue_with(fx.producer(), queue, "noop", &["--at", "2099-01-01T00:00:00Z"]);
    let waiting = delayed(&mut conn, queue);
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].1, 4_070_908_800_000, "scored with the due unix ms");
    assert!(waiting[0].0.contains(&future.job_id));
    assert!(waiting[0].0.contains("\"trace_mode\",\"link\""), "far ahead: processed in a linked trace");

    let worker = fx.spawn(fx.consumer(queue, "c0", &[]), "c0");
    wait_until(Duration::from_secs(15), "the past job to run", || {
        done_counts(&mut conn, queue).contains_key(&past.job_id)
    });
    assert!(!done_counts(&mut conn, queue).contains_key(&future.job_id), "the future job waits");
    assert_eq!(delayed(&mut conn, queue).len(), 1);
    assert_eq!(worker.terminate(), Some(0));

    // Flags that do not go together are refused before anything is enqueued.
    for flags in [
        &["--delay", "1s", "--at", "2099-01-01T00:00:00Z"][..],
        &["--delay", "1s", "--idempotency-key", "k"][..],
        &["--at", "2099-01-01T00:00:00Z", "--idempotency-key", "k"][..],
        &["--at", "tomorrow"][..],
        &["--delay", "soon"][..],
    ] {
        let out = fx.producer().args(["enqueue", "--queue", queue, "--kind", "noop"]).args(flags).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(delayed(&mut conn, queue).len(), 1, "nothing more was scheduled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_scheduled_past_the_link_threshold_runs_in_a_new_linked_trace() {
    let fx = Fixture::start().await;
    let queue = "far";
    // The consumer's queue-wide mode stays `parent`: the entry's `trace_mode=link` decides.
    let worker = fx.spawn(fx.consumer(queue, "c0", &[]), "c0");
    let mut cmd = fx.producer();
    cmd.env("JOBSTREAM_LINK_THRESHOLD", "500ms");
    let job = enqueue_with(cmd, queue, "demo", &["--delay", "1s"]);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(15), "the job", || done_counts(&mut conn, queue).contains_key(&job.job_id));
    assert_eq!(worker.terminate(), Some(0));
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| {
            s.iter().any(|s| s.name == "process far") && !named(s, &job.trace_id, "send far").is_empty()
        })
        .await
        .unwrap();
    let send = named(&spans, &job.trace_id, "send far")[0];
    let (_, scheduled) = send.events.iter().find(|(name, _)| name == "scheduled").expect("a scheduled event");
    assert_eq!(scheduled.get("jobstream.job.trace_mode").map(String::as_str), Some("link"));
    let process = spans.iter().find(|s| s.name == "process far").unwrap();
    assert_ne!(process.trace_id, job.trace_id, "a new trace");
    assert!(process.parent_span_id.is_none(), "rooted in the consumer");
    assert_eq!(process.links, vec![(job.trace_id.clone(), send.span_id.clone())], "linked to the send span");
    assert_eq!(named(&spans, &process.trace_id, "save-data").len(), 1, "the handler's spans follow the new trace");

    // A job under the threshold from the same producer settings stays in its trace.
    let mut cmd = fx.producer();
    cmd.env("JOBSTREAM_LINK_THRESHOLD", "1h");
    enqueue_with(cmd, queue, "noop", &["--delay", "1h"]);
    assert!(!delayed(&mut conn, queue)[0].0.contains("trace_mode"), "not marked under the threshold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_delay_schedules_and_bad_times_are_400() {
    let fx = Fixture::start().await;
    let mut cmd = traced("producer", &fx.redis, &fx.sink, "test-api");
    cmd.args(["serve", "--queue", "web", "--listen", "127.0.0.1:0"]);
    let api = fx.spawn(cmd, "api");
    let addr = api.listen_addr();
    let post = |body: &str| {
        let (status, body) = http_request(addr, "POST", "/v1/jobs", &[("content-type", "application/json")], body);
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|_| panic!("JSON body: {body}")))
    };
    let mut conn = fx.conn();

    let before = now_ms();
    let (status, text) = post(r#"{"kind":"noop","delay":"1s"}"#);
    assert_eq!(status, 202, "{text}");
    let due = text["scheduled_for"].as_u64().expect("scheduled_for in the answer");
    assert!((before + 1000..=now_ms() + 1000).contains(&due), "{due}");
    assert_eq!(text["message_id"], "", "no stream entry yet");
    let job_id = text["id"].as_str().unwrap().to_owned();
    let (status, text) = post(r#"{"kind":"noop","delay":1500}"#);
    assert_eq!(status, 202, "{text}");
    assert!(text["scheduled_for"].as_u64().unwrap() >= before + 1500, "a number is milliseconds");
    let (status, text) = post(r#"{"kind":"noop","run_at":"2020-01-01T00:00:00Z"}"#);
    assert_eq!(status, 202, "{text}");
    assert!(text.get("scheduled_for").is_none(), "a past run_at enqueues at once: {text}");
    assert_eq!(delayed(&mut conn, "web").len(), 2);
    assert_eq!(xlen(&mut conn, &keys("web").stream), 1);

    for (body, word) in [
        (r#"{"kind":"noop","run_at":"tomorrow"}"#, "run_at"),
        (r#"{"kind":"noop","run_at":"2026-12-01 09:00"}"#, "run_at"),
        (r#"{"kind":"noop","delay":"soon"}"#, "delay"),
        (r#"{"kind":"noop","delay":-5}"#, "delay"),
        (r#"{"kind":"noop","delay":true}"#, "delay"),
        (r#"{"kind":"noop","delay":"1s","run_at":"2099-01-01T00:00:00Z"}"#, "not both"),
        (r#"{"kind":"noop","delay":"1s","idempotency_key":"k"}"#, "idempotency"),
    ] {
        let (status, text) = post(body);
        assert_eq!(status, 400, "{body}: {text}");
        let error = text["error"].as_str().unwrap_or_else(|| panic!("a JSON error: {text}"));
        assert!(error.contains(word), "{body}: {error}");
    }
    assert_eq!(delayed(&mut conn, "web").len(), 2, "bad requests scheduled nothing");

    let worker = fx.spawn(fx.consumer("web", "w", &[]), "w");
    let mut done_at = None;
    wait_until(Duration::from_secs(15), "the HTTP-delayed job", || {
        let now = now_ms();
        if done_counts(&mut conn, "web").contains_key(&job_id) {
            done_at = Some(now);
            return true;
        }
        false
    });
    assert!(done_at.unwrap() >= due, "ran at or after its time");
    assert_eq!(worker.terminate(), Some(0));
    assert_eq!(api.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_enqueue_in_runs_the_job_after_its_delay_on_a_partitioned_queue() {
    let redis = RedisServer::start();
    let pool = || jobstream::connection::pool(&redis.url(), &Default::default()).unwrap();
    let queue = Queue::new("lib").unwrap().with_partitions(3).unwrap();
    let producer = Producer::new(pool(), &queue);
    let before = now_ms();
    let mut scheduled = Vec::new();
    for n in 0..6 {
        let sent = producer.enqueue_in("tick", &n, Duration::from_millis(1500)).await.unwrap();
        let due = sent.scheduled_for_ms.expect("scheduled");
        assert!(due >= before + 1500);
        assert!(sent.message_id.is_empty(), "no entry until it is due");
        scheduled.push((sent.job_id, due));
    }
    let now = producer.enqueue_at("tick", &99, SystemTime::now() - Duration::from_secs(5)).await.unwrap();
    assert!(now.scheduled_for_ms.is_none() && !now.message_id.is_empty(), "a past time enqueues at once");
    let in_sets: usize = (0..3)
        .map(|i| {
            let keys = jobstream::Keys::new("jobstream", &jobstream::QueueName::parse(&format!("lib:{i}")).unwrap());
            redis::cmd("ZCARD").arg(keys.unwrap().delayed).query::<usize>(&mut redis.conn()).unwrap()
        })
        .sum();
    assert_eq!(in_sets, 6, "each waits in its partition's delayed set");

    let ran = Arc::new(Mutex::new(Vec::new()));
    let handlers = Handlers::new().register_fn("tick".parse().unwrap(), {
        let ran = ran.clone();
        move |job| {
            let ran = ran.clone();
            async move {
                ran.lock().unwrap().push((job.id, now_ms()));
                Ok(())
            }
        }
    });
    let config = WorkerConfig { block: Duration::from_millis(100), ..Default::default() };
    let worker = Worker::new(pool(), &queue, handlers, config).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    wait_until(Duration::from_secs(15), "7 jobs", || ran.lock().unwrap().len() >= 7);
    stop.cancel();
    task.await.unwrap().unwrap();
    let ran = ran.lock().unwrap();
    assert_eq!(ran.len(), 7, "each ran once");
    for (id, due) in &scheduled {
        let (_, at) = ran.iter().find(|(ran_id, _)| ran_id == id).expect("every scheduled job ran");
        assert!(at >= due, "job {id} ran at {at}, before {due}");
    }
}
