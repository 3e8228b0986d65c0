//! Polyglot traces: a Rust producer's jobs run by the Python example worker, and a Python producer's jobs run by
//! the Rust consumer, each checked on the spans both sides exported over OTLP (same trace, correct parent); and
//! the settle protocol of docs/wire-format.md: a job failing in the Python worker is retried through the delayed
//! set and dead-lettered exactly as by the Rust consumer.
//! The Python side uses only redis-py and the standard OpenTelemetry SDK (examples/python-worker).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobstream_tests::*;

/// The Python interpreter with the example's packages: `JOBSTREAM_PYTHON` (scripts/test sets it), else the
/// virtual environment scripts/setup makes in target/venv, else `python3` on the PATH.
fn python3() -> PathBuf {
    if let Some(python) = std::env::var_os("JOBSTREAM_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn python(script: &str, redis: &RedisServer, sink: &OtlpSink, service: &str) -> Command {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python-worker");
    let mut cmd = Command::new(python3());
    cmd.arg(dir.join(script))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.http_endpoint())
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    cmd
}

fn one<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str, service: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = named(spans, trace_id, name).into_iter().filter(|s| s.service_name == service).collect();
    assert_eq!(found.len(), 1, "one {name:?} span of {service} in trace {trace_id}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_continues_the_rust_producers_trace() {
    let fx = Fixture::start().await;
    let jobs = enqueue(traced("producer", &fx.redis, &fx.sink, "rust-producer"), "poly", "py-demo", r#"{"n":1}"#, 3);

    let mut worker = python("worker.py", &fx.redis, &fx.sink, "python-worker")
        .args(["--queue", "poly", "--count", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut status = None;
    wait_until(Duration::from_secs(60), "the Python worker to run 3 jobs and exit", || {
        status = worker.try_wait().expect("wait for python3");
        status.is_some()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.unwrap().success(), "the Python worker failed: {stderr}");
    assert!(stderr.contains("acknowledged 3 jobs"), "{stderr}");
    let mut conn = fx.conn();
    assert_eq!(pending(&mut conn, "poly", "workers"), 0, "every job acknowledged");

    let steps = ["http-request", "load-data", "process-data", "save-data"];
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            jobs.iter().all(|job| {
                named(spans, &job.trace_id, "save-data").len() == 1
                    && named(spans, &job.trace_id, "send poly").len() == 1
            })
        })
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    for job in &jobs {
        let send = one(&spans, &job.trace_id, "send poly", "rust-producer");
        let process = one(&spans, &job.trace_id, "process poly", "python-worker");
        assert_eq!(process.kind, "consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()), "process is send's child");
        assert_eq!(process.attr("jobstream.job.id"), Some(job.job_id.as_str()));
        for step in steps {
            let span = one(&spans, &job.trace_id, step, "python-worker");
            assert_eq!(span.parent_span_id.as_deref(), Some(process.span_id.as_str()), "{step} under process");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_consumer_continues_a_python_producers_trace() {
    let fx = Fixture::start().await;
    let out = python("producer.py", &fx.redis, &fx.sink, "python-producer")
        .args(["--queue", "poly", "--kind", "noop", "--payload", r#"{"from":"python"}"#, "--count", "3"])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split_once(' ').map(|(j, t)| (j.to_owned(), t.to_owned())).expect("<job id> <trace id>"))
        .collect();
    assert_eq!(jobs.len(), 3);

    let _worker = fx.spawn(fx.consumer("poly", "rust", &[]), "rust");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "3 jobs done", || done_counts(&mut conn, "poly").len() == 3);
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            jobs.iter().all(|(_, trace)| {
                named(spans, trace, "process poly").len() == 1 && named(spans, trace, "send poly").len() == 1
            })
        })
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    for (job_id, trace_id) in &jobs {
        let send = one(&spans, trace_id, "send poly", "python-producer");
        assert_eq!(send.kind, "producer");
        let process = one(&spans, trace_id, "process poly", "test-consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()), "process is send's child");
        assert_eq!(process.attr("jobstream.job.id"), Some(job_id.as_str()));
        assert_eq!(process.attr("jobstream.trace.context"), Some("continued"));
    }
}

/// The delayed-set member of the next attempt after `entry` failed, by the settle protocol (docs/wire-format.md):
/// the entry's fields without `attempt` and `promoted_at`, plus `attempt` + 1, sorted by name, as one flat JSON
/// array of strings.
fn next_attempt_member(entry: &BTreeMap<String, String>) -> String {
    let next = (entry["attempt"].parse::<u32>().unwrap() + 1).to_string();
    let mut fields: Vec<(&str, &str)> = entry
        .iter()
        .filter(|(name, _)| *name != "attempt" && *name != "promoted_at")
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    fields.push(("attempt", &next));
    fields.sort_unstable();
    serde_json::to_string(&fields.iter().flat_map(|(name, value)| [*name, *value]).collect::<Vec<_>>()).unwrap()
}

/// The queue's one delayed member, as soon as it is there (polled every 2 ms for 30 s: a retry due in 250 ms or
/// more stays at least that long).
fn delayed_member(conn: &mut redis::Connection, queue: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members: Vec<String> = redis::cmd("ZRANGE").arg(keys(queue).delayed).arg(0).arg(-1).query(conn).unwrap();
        if let Some(member) = members.into_iter().next() {
            return member;
        }
        assert!(Instant::now() < deadline, "no retry reached the delayed set of {queue}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits up to a minute for `worker` (a Python worker given `--count`) to exit by itself; its log, once it is
/// known to have succeeded.
fn exited(mut worker: Service, what: &str) -> String {
    let code = worker.wait_exit(Duration::from_secs(60));
    let log = worker.log();
    assert_eq!(code, Some(Some(0)), "{what}: {log}");
    log
}

/// What a `process` span says about how its attempt settled: attempt, `error.type`, status and its message,
/// whether a `promoted` event came before, and the `settle` event's attributes (the random delay checked against
/// the back-off of a 500 ms base, then left out).
fn settled_story(span: &ReceivedSpan) -> (String, String, &'static str, String, bool, BTreeMap<String, String>) {
    let events = |name: &str| -> Vec<BTreeMap<String, String>> {
        span.events.iter().filter(|(n, _)| n == name).map(|(_, attributes)| attributes.clone()).collect()
    };
    let settles = events("settle");
    assert_eq!(settles.len(), 1, "one settle event: {span:#?}");
    let mut settle = settles[0].clone();
    if let Some(delay) = settle.remove("jobstream.retry.delay_ms") {
        let delay: u64 = delay.parse().unwrap();
        assert!((250..=500).contains(&delay), "the first retry's delay is in [base/2, base]: {span:#?}");
    }
    (
        span.attr("jobstream.job.attempt").unwrap_or_default().to_owned(),
        span.attr("error.type").unwrap_or_default().to_owned(),
        span.status,
        span.status_message.clone(),
        !events("promoted").is_empty(),
        settle,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_then_dead_lettered_by_python_exactly_as_by_rust() {
    let fx = Fixture::start().await;
    let mut conn = fx.conn();
    // Fails every attempt up to the 9th; two are allowed. The note checks that text past ASCII is kept as is.
    let payload = r#"{"fail_until_attempt":9,"note":"é ✓"}"#;
    let producer = || traced("producer", &fx.redis, &fx.sink, "rust-producer");
    let mut jobs = BTreeMap::new();
    for queue in ["py-settle", "rs-settle"] {
        let job = enqueue(producer(), queue, "demo", payload, 1).remove(0);
        let entry = entries_text(&mut conn, &keys(queue).stream).remove(0);
        // The first failure puts attempt 2 in the delayed set, as the member the protocol says; it is promoted
        // after 250 to 500 ms, fails again and is dead-lettered.
        let expected = next_attempt_member(&entry);
        if queue == "py-settle" {
            let mut worker = python("worker.py", &fx.redis, &fx.sink, "python-worker");
            worker.args(["--queue", queue, "--consumer", "py-1", "--count", "2"]);
            worker.args(["--max-attempts", "2", "--retry-base-delay-ms", "500"]);
            let worker = fx.spawn(worker, "py-1");
            assert_eq!(delayed_member(&mut conn, queue), expected, "{queue}: the delayed member of attempt 2");
            let log = exited(worker, "the Python worker to settle 2 attempts and exit");
            assert!(log.contains("acknowledged 0 jobs, retried 1, dead-lettered 1"), "{log}");
        } else {
            let flags = ["--max-attempts", "2", "--retry-base-delay", "500ms"];
            let rust = fx.spawn(fx.consumer(queue, "rs-1", &flags), "rs-1");
            assert_eq!(delayed_member(&mut conn, queue), expected, "{queue}: the delayed member of attempt 2");
            wait_until(Duration::from_secs(30), "the Rust consumer to dead-letter the job", || {
                xlen(&mut conn, &keys(queue).dead) == 1
            });
            assert_eq!(rust.terminate(), Some(0), "the Rust consumer stops cleanly (and flushes its spans)");
        }
        jobs.insert(queue, (job, entry));
    }
    let dead = |conn: &mut redis::Connection, queue: &str| {
        let mut dead = dead_entries(conn, queue);
        assert_eq!(dead.len(), 1, "{queue}: one dead entry: {dead:#?}");
        assert_eq!(xlen(conn, &keys(queue).delayed), 0, "{queue}: nothing left delayed");
        assert_eq!(pending(conn, queue, "workers"), 0, "{queue}: nothing left pending");
        dead.remove(0)
    };
    let (py, rs) = (dead(&mut conn, "py-settle"), dead(&mut conn, "rs-settle"));

    // The same dead entry: the same fields, and the same values but for ids, times and the consumer's name.
    assert_eq!(py.keys().collect::<Vec<_>>(), rs.keys().collect::<Vec<_>>(), "dead entry fields");
    let varying = ["id", "enqueued_at", "traceparent", "promoted_at", "dead.source_id", "dead.consumer", "dead.at"];
    let same = |entry: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        entry
            .iter()
            .filter(|(name, _)| !varying.contains(&name.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(same(&py), same(&rs), "dead entries (ids, times and consumers aside)");
    assert_eq!(py["dead.reason"], "max_attempts");
    assert_eq!(
        py["dead.error"],
        "attempt 2 of 2: simulated_failure: process-data failed on purpose (fail_until_attempt, attempt 2)"
    );
    assert_eq!((py["attempt"].as_str(), py["payload"].as_str(), py["dead.deliveries"].as_str()), ("2", payload, "1"));
    for (queue, entry, consumer) in [("py-settle", &py, "py-1"), ("rs-settle", &rs, "rs-1")] {
        let (job, first) = &jobs[queue];
        assert_eq!(entry["id"], job.job_id, "{queue}: the job keeps its id");
        assert_eq!((&entry["enqueued_at"], &entry["traceparent"]), (&first["enqueued_at"], &first["traceparent"]));
        assert_eq!(entry["dead.consumer"], consumer);
        // Attempt 2 ran from the entry the promotion made, which is the source of the dead entry.
        let promoted_at: u64 = entry["promoted_at"].parse().expect("promoted_at is unix ms");
        let dead_at: u64 = entry["dead.at"].parse().expect("dead.at is unix ms");
        assert!(promoted_at <= dead_at, "{queue}: promoted at {promoted_at}, dead at {dead_at}");
        let stream: Vec<(String, BTreeMap<String, String>)> =
            redis::cmd("XRANGE").arg(keys(queue).stream).arg("-").arg("+").query(&mut conn).unwrap();
        assert_eq!(stream.len(), 2, "{queue}: the first entry and the promoted one: {stream:#?}");
        assert_eq!(entry["dead.source_id"], stream[1].0, "{queue}: the dead entry's source is the promoted one");
        assert_eq!(stream[1].1.get("promoted_at"), Some(&entry["promoted_at"]), "{queue}: {stream:#?}");
    }

    // The same story on the `process` spans: attempt 1 retried (error.type, status, settle event), attempt 2
    // promoted and dead.
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            [("py-settle", "python-worker"), ("rs-settle", "test-consumer")].iter().all(|(queue, service)| {
                let trace = &jobs[queue].0.trace_id;
                let name = format!("process {queue}");
                named(spans, trace, &name).iter().filter(|s| s.service_name == *service).count() == 2
            })
        })
        .await
        .unwrap_or_else(|spans| panic!("process spans missing: {spans:#?}"));
    let stories = |queue: &str, service: &str| {
        let mut process: Vec<_> = named(&spans, &jobs[queue].0.trace_id, &format!("process {queue}"))
            .into_iter()
            .filter(|s| s.service_name == service)
            .collect();
        process.sort_by_key(|s| s.start_ns);
        process.into_iter().map(settled_story).collect::<Vec<_>>()
    };
    let python_stories = stories("py-settle", "python-worker");
    assert_eq!(python_stories, stories("rs-settle", "test-consumer"), "the process spans of both workers");
    let failed = |n: u32| format!("process-data failed on purpose (fail_until_attempt, attempt {n})");
    let settle = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(
        python_stories,
        [
            (
                "1".into(),
                "simulated_failure".into(),
                "error",
                failed(1),
                false,
                settle(&[("jobstream.settle.outcome", "retry"), ("jobstream.retry.next_attempt", "2")])
            ),
            (
                "2".into(),
                "simulated_failure".into(),
                "error",
                failed(2),
                true,
                settle(&[("jobstream.settle.outcome", "dead")])
            ),
        ]
    );

    // Replayed, the job dead-lettered by Python runs again as attempt 1.
    let out = fx.producer().args(["dead", "replay", "--queue", "py-settle", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xlen(&mut conn, &keys("py-settle").dead), 0, "the dead entry left the dead stream");
    let mut worker = python("worker.py", &fx.redis, &fx.sink, "python-worker");
    worker.args(["--queue", "py-settle", "--consumer", "py-2", "--count", "1", "--max-attempts", "1"]);
    let log = exited(fx.spawn(worker, "py-2"), "the Python worker to run the replayed job and exit");
    assert!(log.contains("acknowledged 0 jobs, retried 0, dead-lettered 1"), "{log}");
    let again = dead(&mut conn, "py-settle");
    assert_eq!(again["id"], jobs["py-settle"].0.job_id);
    assert_eq!(again["attempt"], "1", "{again:#?}");
    assert_eq!(again["dead.consumer"], "py-2");
    assert_eq!(again["dead.error"], format!("attempt 1 of 1: simulated_failure: {}", failed(1)));
}

/// The Python worker's `noop` records each run in the queue's `done` hash, as the Rust `noop` does, so a run can
/// be checked for completeness whichever language ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_noop_records_its_runs_like_the_rust_one() {
    let fx = Fixture::start().await;
    let jobs = enqueue(fx.producer(), "py-noop", "noop", "{}", 3);
    let quiet = enqueue(fx.producer(), "py-noop", "noop", r#"{"record":false}"#, 1);
    let mut worker = python("worker.py", &fx.redis, &fx.sink, "python-worker")
        .args(["--queue", "py-noop", "--count", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut status = None;
    wait_until(Duration::from_secs(60), "the Python worker to run 4 jobs and exit", || {
        status = worker.try_wait().expect("wait for python3");
        status.is_some()
    });
    assert!(status.unwrap().success());
    let mut conn = fx.conn();
    let done = done_counts(&mut conn, "py-noop");
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(jobs.iter().all(|j| done.get(&j.job_id) == Some(&1)), "{done:?}");
    assert!(!done.contains_key(&quiet[0].job_id), "record:false records nothing");
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{}:done", keys("py-noop").stream)).query(&mut conn).unwrap();
    assert!((1..=3_600_000).contains(&ttl), "the done hash expires with the retention: {ttl}");
}
