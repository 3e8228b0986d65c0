//! The Node example (examples/node-worker: ioredis and the stock OpenTelemetry JS SDK, no jobstream code) against
//! the Rust side: traces cross both ways with the right parents, and a Node worker settles jobs exactly as the
//! Rust consumer does — the same retry member, the same dead entries and status records, written by the same
//! Lua scripts — checked by running the same scenario through both and comparing what Redis holds.
//!
//! Node is `JOBSTREAM_NODE`, else `node` on the PATH; the example's packages come from `npm ci` (scripts/setup).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jobstream_tests::*;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/node-worker")
}

/// A command running `script` of the Node example against the test's Redis, tracing to its sink as `service`.
fn node(script: &str, redis: &RedisServer, sink: &OtlpSink, service: &str) -> Command {
    let dir = example_dir();
    assert!(
        dir.join("node_modules/ioredis").exists() && dir.join("node_modules/@opentelemetry/sdk-trace-node").exists(),
        "{} has no node_modules: run scripts/setup (it runs `npm ci` there)",
        dir.display()
    );
    let mut cmd = Command::new(std::env::var_os("JOBSTREAM_NODE").unwrap_or_else(|| "node".into()));
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

/// Runs the Node worker with `args` until it exits by itself (`--count`); returns its log (stderr).
fn run_node_worker(fx: &Fixture, name: &str, args: &[&str]) -> String {
    let mut cmd = node("worker.js", &fx.redis, &fx.sink, "node-worker");
    cmd.args(args);
    let mut worker = fx.spawn(cmd, name);
    let exit = worker.wait_exit(Duration::from_secs(60));
    let log = worker.log();
    assert_eq!(exit, Some(Some(0)), "the Node worker did not exit 0 within 60 s: {log}");
    log
}

fn one<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str, service: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = named(spans, trace_id, name).into_iter().filter(|s| s.service_name == service).collect();
    assert_eq!(found.len(), 1, "one {name:?} span of {service} in trace {trace_id}: {spans:#?}");
    found[0]
}

/// The attributes of a span's first event named `name`.
fn event<'a>(span: &'a ReceivedSpan, name: &str) -> Option<&'a BTreeMap<String, String>> {
    span.events.iter().find(|(n, _)| n == name).map(|(_, attributes)| attributes)
}

/// The `process` spans of one trace from `service`, by attempt.
fn attempts<'a>(spans: &'a [ReceivedSpan], trace_id: &str, name: &str, service: &str) -> Vec<&'a ReceivedSpan> {
    let mut found: Vec<_> = named(spans, trace_id, name).into_iter().filter(|s| s.service_name == service).collect();
    found.sort_by_key(|s| s.attr("jobstream.job.attempt").and_then(|a| a.parse::<u32>().ok()));
    found
}

/// What settling an attempt shows on its `process` span, to compare the Node and Rust workers: attempt, status,
/// error.type, settle outcome and next attempt, and whether it came from the delayed set.
fn settled_shape(span: &ReceivedSpan) -> (String, &'static str, String, String, String, bool) {
    let settle = event(span, "settle").unwrap_or_else(|| panic!("no settle event on {span:#?}"));
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    (
        text(span.attributes.get("jobstream.job.attempt")),
        span.status,
        text(span.attributes.get("error.type")),
        text(settle.get("jobstream.settle.outcome")),
        text(settle.get("jobstream.retry.next_attempt")),
        event(span, "promoted").is_some(),
    )
}

fn hash(conn: &mut redis::Connection, key: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(conn).expect("HGETALL")
}

fn delayed_members(conn: &mut redis::Connection, queue: &str) -> Vec<Vec<String>> {
    let members: Vec<String> =
        redis::cmd("ZRANGE").arg(keys(queue).delayed).arg(0).arg(-1).query(conn).expect("ZRANGE delayed");
    members.iter().map(|m| serde_json::from_str(m).expect("a delayed member is a JSON array of strings")).collect()
}

fn is_entry_id(text: &str) -> bool {
    text.split_once('-').is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_continues_the_rust_producers_trace() {
    let fx = Fixture::start().await;
    let jobs = enqueue(fx.producer(), "poly", "demo", r#"{"n":1}"#, 3);

    // A small latency: the steps take time, so progress is reported as in the Rust demo.
    let log = run_node_worker(
        &fx,
        "node-worker",
        &["--queue", "poly", "--consumer", "node-1", "--count", "3", "--demo-latency-scale", "0.05"],
    );
    assert!(log.contains("settled 3 jobs (acknowledged 3, retried 0, dead-lettered 0)"), "{log}");
    let mut conn = fx.conn();
    assert_eq!(pending(&mut conn, "poly", "workers"), 0, "every job acknowledged");
    let done = done_counts(&mut conn, "poly");
    for job in &jobs {
        assert_eq!(done.get(&job.job_id), Some(&1), "{} ran once: {done:?}", job.job_id);
    }

    let steps = ["http-request", "load-data", "process-data", "save-data"];
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            jobs.iter().all(|job| {
                named(spans, &job.trace_id, "save-data").len() == 1
                    && named(spans, &job.trace_id, "process poly").len() == 1
                    && named(spans, &job.trace_id, "send poly").len() == 1
            })
        })
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    for job in &jobs {
        let send = one(&spans, &job.trace_id, "send poly", "test-producer");
        let process = one(&spans, &job.trace_id, "process poly", "node-worker");
        assert_eq!(process.kind, "consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()), "process is send's child");
        for (key, value) in [
            ("messaging.system", "redis"),
            ("messaging.operation.type", "process"),
            ("messaging.destination.name", "poly"),
            ("messaging.consumer.group.name", "workers"),
            ("messaging.client.id", "node-1"),
            ("jobstream.job.id", job.job_id.as_str()),
            ("jobstream.job.kind", "demo"),
            ("jobstream.job.attempt", "1"),
            ("jobstream.delivery.count", "1"),
            ("jobstream.trace.context", "continued"),
        ] {
            assert_eq!(process.attr(key), Some(value), "{key} on {process:#?}");
        }
        assert!(process.attr("messaging.message.id").is_some_and(is_entry_id), "{process:#?}");
        assert!(process.attr("jobstream.queue.wait_ms").is_some_and(|ms| ms.parse::<u64>().is_ok()), "{process:#?}");
        assert_eq!(
            event(process, "settle").and_then(|e| e.get("jobstream.settle.outcome")).map(String::as_str),
            Some("ack")
        );
        assert_eq!(process.events.iter().filter(|(name, _)| name == "progress").count(), 4, "{process:#?}");
        for step in steps {
            let span = one(&spans, &job.trace_id, step, "node-worker");
            assert_eq!(span.parent_span_id.as_deref(), Some(process.span_id.as_str()), "{step} under process");
            assert_eq!(span.attr("demo.step"), Some(step));
        }
    }

    // The final record the Node worker wrote is read by the Rust side's lookup like its own.
    let out = fx.producer().args(["job", "show", &jobs[0].job_id, "--queue", "poly", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job show --json");
    assert_eq!(shown["state"], "done", "{shown}");
    assert_eq!(shown["result"]["job_id"], jobs[0].job_id.as_str(), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_consumer_continues_a_node_producers_trace() {
    let fx = Fixture::start().await;
    let out = node("producer.js", &fx.redis, &fx.sink, "node-producer")
        .args(["--queue", "poly", "--kind", "noop", "--payload", r#"{"from":"node"}"#, "--count", "3"])
        .output()
        .expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split_once(' ').map(|(j, t)| (j.to_owned(), t.to_owned())).expect("<job id> <trace id>"))
        .collect();
    assert_eq!(jobs.len(), 3);
    for (job_id, _) in &jobs {
        assert_eq!(job_id.len(), 36, "{job_id}");
        assert_eq!(&job_id[14..15], "7", "a UUIDv7: {job_id}");
    }

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
        let send = one(&spans, trace_id, "send poly", "node-producer");
        assert_eq!(send.kind, "producer");
        assert_eq!(send.attr("jobstream.job.id"), Some(job_id.as_str()));
        assert!(send.attr("messaging.message.id").is_some_and(is_entry_id), "{send:#?}");
        let process = one(&spans, trace_id, "process poly", "test-consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()), "process is send's child");
        assert_eq!(process.attr("jobstream.job.id"), Some(job_id.as_str()));
        assert_eq!(process.attr("jobstream.trace.context"), Some("continued"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_and_dead_lettered_by_node_as_by_rust() {
    let fx = Fixture::start().await;
    let payload = r#"{"fail_until_attempt":9}"#;
    let node_job = enqueue(fx.producer(), "node-fail", "demo", payload, 1).remove(0);
    let rust_job = enqueue(fx.producer(), "rust-fail", "demo", payload, 1).remove(0);

    let log = run_node_worker(
        &fx,
        "node-worker",
        &[
            "--queue",
            "node-fail",
            "--consumer",
            "node-1",
            "--count",
            "2",
            "--max-attempts",
            "2",
            "--retry-base-delay-ms",
            "50",
            "--demo-latency-scale",
            "0",
        ],
    );
    assert!(log.contains("settled 2 jobs (acknowledged 0, retried 1, dead-lettered 1)"), "{log}");
    let rust =
        fx.spawn(fx.consumer("rust-fail", "rust-1", &["--max-attempts", "2", "--retry-base-delay", "50ms"]), "rust");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "the Rust consumer to dead-letter its job", || {
        dead_entries(&mut conn, "rust-fail").len() == 1
    });

    // The dead entries: the same fields, the same reason and error.
    let (node_dead, rust_dead) = (dead_entries(&mut conn, "node-fail"), dead_entries(&mut conn, "rust-fail"));
    assert_eq!(node_dead.len(), 1, "{node_dead:?}");
    let (n, r) = (&node_dead[0], &rust_dead[0]);
    assert_eq!(n.keys().collect::<Vec<_>>(), r.keys().collect::<Vec<_>>(), "the same fields:\n{n:#?}\n{r:#?}");
    for field in ["v", "kind", "payload", "attempt", "dead.reason", "dead.error", "dead.deliveries"] {
        assert_eq!(n[field], r[field], "{field}:\n{n:#?}\n{r:#?}");
    }
    assert_eq!(n["dead.reason"], "max_attempts");
    assert_eq!(
        n["dead.error"],
        "attempt 2 of 2: simulated_failure: process-data failed on purpose (fail_until_attempt, attempt 2)"
    );
    assert_eq!((n["id"].as_str(), n["dead.consumer"].as_str()), (node_job.job_id.as_str(), "node-1"));
    assert_eq!((r["id"].as_str(), r["dead.consumer"].as_str()), (rust_job.job_id.as_str(), "rust-1"));
    for (dead, job) in [(n, &node_job), (r, &rust_job)] {
        assert!(is_entry_id(&dead["dead.source_id"]), "{dead:?}");
        assert!(dead["dead.at"].parse::<u64>().is_ok() && dead["promoted_at"].parse::<u64>().is_ok(), "{dead:?}");
        assert!(dead["traceparent"].contains(&job.trace_id), "the trace context travels: {dead:?}");
    }
    for queue in ["node-fail", "rust-fail"] {
        assert_eq!(pending(&mut conn, queue, "workers"), 0, "{queue}");
        assert!(delayed_members(&mut conn, queue).is_empty(), "{queue}");
    }

    // The status records: the same fields, the same attempts.
    let node_record = hash(&mut conn, &keys("node-fail").job(&node_job.job_id));
    let rust_record = hash(&mut conn, &keys("rust-fail").job(&rust_job.job_id));
    assert_eq!(
        node_record.keys().collect::<Vec<_>>(),
        rust_record.keys().collect::<Vec<_>>(),
        "the same record fields:\n{node_record:#?}\n{rust_record:#?}"
    );
    for field in ["state", "kind", "attempts", "reason", "error"] {
        assert_eq!(node_record[field], rust_record[field], "{field}");
    }
    for a in ["a:1", "a:2"] {
        let (na, ra): (serde_json::Value, serde_json::Value) =
            (serde_json::from_str(&node_record[a]).unwrap(), serde_json::from_str(&rust_record[a]).unwrap());
        let fields = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(fields(&na), fields(&ra), "{a}: {na} / {ra}");
        for field in ["n", "outcome", "error"] {
            assert_eq!(na[field], ra[field], "{a}.{field}");
        }
        assert_eq!(na["consumer"], "node-1");
    }

    // The spans: per attempt, the same status, error.type, settle event and promotion.
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            attempts(spans, &node_job.trace_id, "process node-fail", "node-worker").len() == 2
                && attempts(spans, &rust_job.trace_id, "process rust-fail", "test-consumer").len() == 2
        })
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    let node_spans = attempts(&spans, &node_job.trace_id, "process node-fail", "node-worker");
    let rust_spans = attempts(&spans, &rust_job.trace_id, "process rust-fail", "test-consumer");
    let send = one(&spans, &node_job.trace_id, "send node-fail", "test-producer");
    for span in &node_spans {
        assert_eq!(span.parent_span_id.as_deref(), Some(send.span_id.as_str()), "every attempt under send");
        assert_eq!(
            span.status_message,
            "process-data failed on purpose (fail_until_attempt, attempt ".to_owned()
                + span.attr("jobstream.job.attempt").unwrap()
                + ")"
        );
    }
    let shapes = |spans: &[&ReceivedSpan]| spans.iter().map(|s| settled_shape(s)).collect::<Vec<_>>();
    assert_eq!(shapes(&node_spans), shapes(&rust_spans));
    assert_eq!(
        shapes(&node_spans),
        vec![
            ("1".into(), "error", "simulated_failure".into(), "retry".into(), "2".into(), false),
            ("2".into(), "error", "simulated_failure".into(), "dead".into(), String::new(), true),
        ]
    );
    let delay: u64 = event(node_spans[0], "settle").unwrap()["jobstream.retry.delay_ms"].parse().unwrap();
    assert!((25..=50).contains(&delay), "equal jitter of 50 ms: {delay}");

    // Replayed, both jobs run again as attempt 1 and fail: the retry members the two workers write are the
    // same array (fields sorted by name, attempt 2, no promoted_at), only the job's own values differ.
    rust.terminate();
    for queue in ["node-fail", "rust-fail"] {
        let out = fx.producer().args(["dead", "replay", "--queue", queue, "--all"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(dead_entries(&mut conn, queue).is_empty(), "{queue}");
    }
    let log = run_node_worker(
        &fx,
        "node-worker-2",
        &[
            "--queue",
            "node-fail",
            "--consumer",
            "node-2",
            "--count",
            "1",
            "--max-attempts",
            "2",
            "--retry-base-delay-ms",
            "300000",
            "--demo-latency-scale",
            "0",
        ],
    );
    assert!(log.contains("settled 1 jobs (acknowledged 0, retried 1, dead-lettered 0)"), "{log}");
    let _rust =
        fx.spawn(fx.consumer("rust-fail", "rust-2", &["--max-attempts", "2", "--retry-base-delay", "5m"]), "rust-2");
    wait_until(Duration::from_secs(30), "the Rust consumer to schedule the replayed job's retry", || {
        delayed_members(&mut conn, "rust-fail").len() == 1
    });
    let (node_member, rust_member) =
        (delayed_members(&mut conn, "node-fail").remove(0), delayed_members(&mut conn, "rust-fail").remove(0));
    let names = |m: &[String]| m.chunks(2).map(|kv| kv[0].clone()).collect::<Vec<_>>();
    assert_eq!(names(&node_member), names(&rust_member), "{node_member:?}\n{rust_member:?}");
    let mut sorted = names(&node_member);
    sorted.sort();
    assert_eq!(names(&node_member), sorted, "sorted by field name");
    assert!(!names(&node_member).contains(&"promoted_at".to_owned()));
    let value = |m: &[String], name: &str| m.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].clone());
    for (member, job) in [(&node_member, &node_job), (&rust_member, &rust_job)] {
        assert_eq!(value(member, "attempt").as_deref(), Some("2"));
        assert_eq!(value(member, "id").as_deref(), Some(job.job_id.as_str()));
    }
    for name in names(&node_member) {
        if !["id", "enqueued_at", "traceparent"].contains(&name.as_str()) {
            assert_eq!(value(&node_member, &name), value(&rust_member, &name), "{name}");
        }
    }

    // The replayed attempt 1 ran in the replay's new trace, under its `send` span.
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| {
                s.service_name == "node-worker"
                    && s.attr("jobstream.job.id") == Some(node_job.job_id.as_str())
                    && s.attr("messaging.client.id") == Some("node-2")
            })
        })
        .await
        .unwrap_or_else(|spans| panic!("the replayed attempt's span is missing: {spans:#?}"));
    let replayed = spans
        .iter()
        .find(|s| s.service_name == "node-worker" && s.attr("messaging.client.id") == Some("node-2"))
        .unwrap();
    assert_eq!(replayed.attr("jobstream.job.attempt"), Some("1"));
    assert_ne!(replayed.trace_id, node_job.trace_id, "a replay starts a new trace");
    let replay_send = one(&spans, &replayed.trace_id, "send node-fail", "test-producer");
    assert!(replay_send.attr("jobstream.replay.of").is_some(), "{replay_send:#?}");
    assert_eq!(replayed.parent_span_id.as_deref(), Some(replay_send.span_id.as_str()));
    assert_eq!(settled_shape(replayed).3, "retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_node_worker_cannot_run_are_dead_lettered_as_by_rust() {
    let fx = Fixture::start().await;
    let mut conn = fx.conn();
    for queue in ["node-bad", "rust-bad"] {
        let unknown = job_fields("no-such-kind");
        let fields: Vec<(&str, &[u8])> = unknown.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        xadd_raw(&mut conn, queue, &fields);
        xadd_raw(&mut conn, queue, &[("v", b"1"), ("kind", b"demo"), ("x-mine", b"kept")]);
        let mut bytes = job_fields("demo");
        bytes.retain(|(k, _)| k != "payload");
        let mut fields: Vec<(&str, &[u8])> = bytes.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        fields.push(("payload", b"{\"a\":\"\xff\xfe\"}"));
        fields.push(("dead.reason", b"forged"));
        xadd_raw(&mut conn, queue, &fields);
    }
    let log = run_node_worker(&fx, "node-worker", &["--queue", "node-bad", "--consumer", "node-1", "--count", "3"]);
    assert!(log.contains("settled 3 jobs (acknowledged 0, retried 0, dead-lettered 3)"), "{log}");
    let _rust = fx.spawn(fx.consumer("rust-bad", "rust-1", &[]), "rust");
    wait_until(Duration::from_secs(30), "the Rust consumer to dead-letter 3 entries", || {
        dead_entries(&mut conn, "rust-bad").len() == 3
    });

    // Raw bytes, in the order the reasons and errors sort.
    let raw = |conn: &mut redis::Connection, queue: &str| {
        let reply: Vec<(String, Vec<Vec<u8>>)> =
            redis::cmd("XRANGE").arg(keys(queue).dead).arg("-").arg("+").query(conn).expect("XRANGE");
        let mut entries: Vec<BTreeMap<String, Vec<u8>>> = reply
            .into_iter()
            .map(|(_, flat)| {
                flat.chunks(2).map(|kv| (String::from_utf8_lossy(&kv[0]).into_owned(), kv[1].clone())).collect()
            })
            .collect();
        entries.sort_by_key(|e| (e["dead.reason"].clone(), e["dead.error"].clone()));
        entries
    };
    let (node_dead, rust_dead) = (raw(&mut conn, "node-bad"), raw(&mut conn, "rust-bad"));
    let text = |e: &BTreeMap<String, Vec<u8>>, k: &str| String::from_utf8_lossy(&e[k]).into_owned();
    let summary = |entries: &[BTreeMap<String, Vec<u8>>]| {
        entries
            .iter()
            .map(|e| (e.keys().cloned().collect::<Vec<_>>(), text(e, "dead.reason"), text(e, "dead.error")))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&node_dead), summary(&rust_dead));
    let reasons: Vec<(String, String)> = summary(&node_dead).into_iter().map(|(_, r, e)| (r, e)).collect();
    assert_eq!(
        reasons,
        vec![
            ("undecodable".to_owned(), "field `id` is missing".to_owned()),
            ("undecodable".to_owned(), "field `payload` is not valid UTF-8".to_owned()),
            ("unknown_kind".to_owned(), "no handler for kind \"no-such-kind\"".to_owned()),
        ]
    );
    assert_eq!(node_dead[1]["payload"], b"{\"a\":\"\xff\xfe\"}".to_vec(), "bytes kept as they were");
    assert_eq!(node_dead[0]["x-mine"], b"kept".to_vec(), "unknown fields kept");
    let flat: Vec<(String, Vec<Vec<u8>>)> =
        redis::cmd("XRANGE").arg(keys("node-bad").dead).arg("-").arg("+").query(&mut conn).expect("XRANGE");
    for (_, fields) in &flat {
        let reasons = fields.iter().step_by(2).filter(|name| name.as_slice() == b"dead.reason").count();
        assert_eq!(reasons, 1, "a forged dead.* field is dropped");
    }
    assert_eq!(pending(&mut conn, "node-bad", "workers"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_node_workers_running_job_finish() {
    let fx = Fixture::start().await;
    let job = enqueue(fx.producer(), "slow", "demo", "{}", 1).remove(0);
    // Latency × 20: the four steps take about 2.8 s.
    let mut cmd = node("worker.js", &fx.redis, &fx.sink, "node-worker");
    cmd.args(["--queue", "slow", "--consumer", "node-1", "--demo-latency-scale", "20", "--block-ms", "200"]);
    let mut worker = fx.spawn(cmd, "node-worker");
    let mut conn = fx.conn();
    // The group exists once the worker made it: until then XPENDING fails.
    wait_until(Duration::from_secs(20), "the Node worker to start the job", || {
        redis::cmd("XPENDING")
            .arg(keys("slow").stream)
            .arg("workers")
            .query::<(u64, redis::Value, redis::Value, redis::Value)>(&mut conn)
            .is_ok_and(|(n, ..)| n == 1)
    });
    worker.signal_term();
    let exit = worker.wait_exit(Duration::from_secs(30));
    let log = worker.log();
    assert_eq!(exit, Some(Some(0)), "{log}");
    assert!(log.contains("SIGTERM: stopping") && log.contains("settled 1 jobs (acknowledged 1"), "{log}");
    assert_eq!(pending(&mut conn, "slow", "workers"), 0, "the running job finished and was acknowledged");
    assert_eq!(done_counts(&mut conn, "slow").get(&job.job_id), Some(&1));
    // Its spans were flushed before the exit.
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(10), |spans| named(spans, &job.trace_id, "save-data").len() == 1)
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    let process = one(&spans, &job.trace_id, "process slow", "node-worker");
    let save = one(&spans, &job.trace_id, "save-data", "node-worker");
    assert_eq!(save.parent_span_id.as_deref(), Some(process.span_id.as_str()));
}

/// XPENDING's count, 0 while the group does not exist yet.
fn pending_or_none(conn: &mut redis::Connection, queue: &str) -> u64 {
    redis::cmd("XPENDING")
        .arg(keys(queue).stream)
        .arg("workers")
        .query::<(u64, redis::Value, redis::Value, redis::Value)>(conn)
        .map_or(0, |(n, ..)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_takes_over_the_job_of_a_dead_consumer() {
    let fx = Fixture::start().await;
    let job = enqueue(fx.producer(), "orphan", "demo", "{}", 1).remove(0);
    let mut cmd = node("worker.js", &fx.redis, &fx.sink, "node-worker");
    cmd.args(["--queue", "orphan", "--consumer", "node-a", "--demo-latency-scale", "100"]);
    let crashed = fx.spawn(cmd, "node-a");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "node-a to start the job", || pending_or_none(&mut conn, "orphan") == 1);
    crashed.kill9();

    let log = run_node_worker(
        &fx,
        "node-b",
        &[
            "--queue",
            "orphan",
            "--consumer",
            "node-b",
            "--count",
            "1",
            "--visibility-timeout-ms",
            "500",
            "--block-ms",
            "100",
            "--demo-latency-scale",
            "0",
        ],
    );
    assert!(log.contains("took over jobs idle past the visibility timeout"), "{log}");
    assert!(log.contains("settled 1 jobs (acknowledged 1"), "{log}");
    assert_eq!(pending(&mut conn, "orphan", "workers"), 0);
    assert_eq!(done_counts(&mut conn, "orphan").get(&job.job_id), Some(&1));
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            named(spans, &job.trace_id, "process orphan")
                .iter()
                .any(|s| s.attr("messaging.client.id") == Some("node-b"))
        })
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    let taken = named(&spans, &job.trace_id, "process orphan")
        .into_iter()
        .find(|s| s.attr("messaging.client.id") == Some("node-b"))
        .unwrap();
    assert_eq!(taken.attr("jobstream.reclaimed_from"), Some("node-a"), "{taken:#?}");
    assert_eq!(taken.attr("jobstream.delivery.count"), Some("2"), "{taken:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_reads_nothing_from_a_paused_queue() {
    let fx = Fixture::start().await;
    let out = fx.producer().args(["queue", "pause", "held"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = enqueue(fx.producer(), "held", "noop", "{}", 1).remove(0);
    let mut cmd = node("worker.js", &fx.redis, &fx.sink, "node-worker");
    cmd.args(["--queue", "held", "--consumer", "node-1", "--count", "1", "--block-ms", "100"]);
    let mut worker = fx.spawn(cmd, "node-worker");
    wait_until(Duration::from_secs(20), "the Node worker to see the pause", || worker.log().contains("queue paused"));
    std::thread::sleep(Duration::from_millis(700));
    let mut conn = fx.conn();
    assert_eq!(pending_or_none(&mut conn, "held"), 0, "nothing read while paused");
    assert!(done_counts(&mut conn, "held").is_empty());

    let out = fx.producer().args(["queue", "resume", "held"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exit = worker.wait_exit(Duration::from_secs(30));
    let log = worker.log();
    assert_eq!(exit, Some(Some(0)), "{log}");
    assert_eq!(done_counts(&mut conn, "held").get(&job.job_id), Some(&1));
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| named(spans, &job.trace_id, "process held").len() == 1)
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    let process = one(&spans, &job.trace_id, "process held", "node-worker");
    let waited: u64 =
        event(process, "queue_paused").expect("a queue_paused event")["jobstream.queue.paused_ms"].parse().unwrap();
    assert!(waited >= 500, "{waited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_in_the_node_worker() {
    let fx = Fixture::start().await;
    let job = enqueue(fx.producer(), "stop", "demo", "{}", 1).remove(0);
    let mut cmd = node("worker.js", &fx.redis, &fx.sink, "node-worker");
    cmd.args(["--queue", "stop", "--consumer", "node-1", "--count", "1", "--demo-latency-scale", "100"]);
    let mut worker = fx.spawn(cmd, "node-worker");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "the Node worker to start the job", || pending_or_none(&mut conn, "stop") == 1);
    let out = fx.producer().args(["job", "cancel", &job.job_id, "--queue", "stop"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exit = worker.wait_exit(Duration::from_secs(10));
    let log = worker.log();
    assert_eq!(exit, Some(Some(0)), "stopped within the 250 ms poll, long before the job's ~14 s: {log}");
    assert!(log.contains("job cancelled while running"), "{log}");
    assert_eq!(pending(&mut conn, "stop", "workers"), 0, "acknowledged");
    assert!(done_counts(&mut conn, "stop").is_empty(), "never finished");
    let out = fx.producer().args(["job", "show", &job.job_id, "--queue", "stop", "--json"]).output().unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("job show --json");
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert_eq!(shown["attempts"][0]["outcome"], "cancelled", "{shown}");
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| named(spans, &job.trace_id, "process stop").len() == 1)
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    let process = one(&spans, &job.trace_id, "process stop", "node-worker");
    assert_eq!(event(process, "cancelled").map(|e| e["jobstream.cancel.started"].as_str()), Some("true"));
    assert_eq!(event(process, "settle").map(|e| e["jobstream.settle.outcome"].as_str()), Some("ack"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_dead_lettered_by_node_as_by_rust() {
    let fx = Fixture::start().await;
    let mut conn = fx.conn();
    // An entry delivered six times to consumers that never settled it (they crashed on it).
    for queue in ["node-poison", "rust-poison"] {
        enqueue(fx.producer(), queue, "demo", "{}", 1);
        let stream = keys(queue).stream;
        let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&stream).arg("workers").arg("0").query(&mut conn).unwrap();
        let read: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg("ghost")
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query(&mut conn)
            .unwrap();
        assert!(!matches!(read, redis::Value::Nil));
        let ids: Vec<(String, redis::Value)> =
            redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(&mut conn).unwrap();
        for _ in 0..5 {
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg("workers")
                .arg("ghost")
                .arg(0)
                .arg(&ids[0].0)
                .query(&mut conn)
                .unwrap();
        }
    }
    let log = run_node_worker(
        &fx,
        "node-worker",
        &[
            "--queue",
            "node-poison",
            "--consumer",
            "node-1",
            "--count",
            "1",
            "--visibility-timeout-ms",
            "200",
            "--block-ms",
            "100",
        ],
    );
    assert!(log.contains("dead-lettered 1"), "{log}");
    let _rust =
        fx.spawn(fx.consumer("rust-poison", "rust-1", &["--visibility-timeout", "200ms", "--block", "100ms"]), "rust");
    wait_until(Duration::from_secs(30), "the Rust consumer to dead-letter the entry", || {
        dead_entries(&mut conn, "rust-poison").len() == 1
    });
    let (n, r) = (&dead_entries(&mut conn, "node-poison")[0], &dead_entries(&mut conn, "rust-poison")[0]);
    assert_eq!(n.keys().collect::<Vec<_>>(), r.keys().collect::<Vec<_>>(), "{n:#?}\n{r:#?}");
    for field in ["dead.reason", "dead.error", "dead.deliveries"] {
        assert_eq!(n[field], r[field], "{field}");
    }
    assert_eq!(n["dead.reason"], "poison");
    assert_eq!(n["dead.error"], "delivered 7 times without an outcome (limit 5); it may crash its workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_worker_reads_trace_contexts_as_the_rust_worker_does() {
    let fx = Fixture::start().await;
    let mut conn = fx.conn();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let entry = |conn: &mut redis::Connection, extra: &[(&str, &str)]| {
        let mut fields = job_fields("noop");
        fields.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let id = fields[1].1.clone();
        let raw: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        xadd_raw(conn, "ctx", &raw);
        id
    };
    let long_state = (0..40).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let linked = entry(&mut conn, &[("traceparent", parent), ("trace_mode", "link")]);
    let cut = entry(&mut conn, &[("traceparent", parent), ("tracestate", &long_state)]);
    let invalid = entry(&mut conn, &[("traceparent", "garbage")]);
    let missing = entry(&mut conn, &[]);
    run_node_worker(&fx, "node-worker", &["--queue", "ctx", "--consumer", "node-1", "--count", "4"]);

    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| spans.iter().filter(|s| s.name == "process ctx").count() == 4)
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));
    let of = |id: &str| spans.iter().find(|s| s.attr("jobstream.job.id") == Some(id)).expect("a process span");
    let (parent_trace, parent_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");

    let span = of(&linked);
    assert_ne!(span.trace_id, parent_trace, "trace_mode=link: a new trace");
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.links, vec![(parent_trace.to_owned(), parent_span.to_owned())]);
    assert_eq!(span.attr("jobstream.trace.context"), Some("continued"));

    let span = of(&cut);
    assert_eq!((span.trace_id.as_str(), span.parent_span_id.as_deref()), (parent_trace, Some(parent_span)));
    assert_eq!(span.attr("jobstream.trace.context_truncated"), Some("tracestate"), "cut to 32 members, kept");

    let span = of(&invalid);
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.attr("jobstream.trace.context"), Some("invalid"));
    assert_eq!(span.attr("jobstream.trace.context_error"), Some("traceparent \"garbage\" is malformed"));

    let span = of(&missing);
    assert_eq!((span.parent_span_id.as_deref(), span.attr("jobstream.trace.context")), (None, Some("missing")));
    assert_eq!(done_counts(&mut conn, "ctx").len(), 4, "every job ran");
}
