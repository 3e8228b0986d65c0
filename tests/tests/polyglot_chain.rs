//! The seed's demo on the real queue, across three languages: an HTTP request to `producer serve` creates a
//! `demo` job on `orders`; the Rust consumer runs it and, as its payload's `next` asks, enqueues a follow-up on
//! `node-jobs` from inside its `process` span; the Node example worker runs that one and enqueues one on
//! `py-jobs`, which the Python example worker runs. The spans all four processes exported form ONE trace, from
//! the HTTP caller's span to the Python worker's last step, each `process` span the child of the `send` span
//! that enqueued its job. The trace is printed as a tree (`--no-capture` shows it; README.md, "Polyglot").
//!
//! And the chain's failures, the same in every language: a `next` that names no valid queue fails the job at
//! once, permanently (`invalid_payload`); a follow-up that cannot be enqueued is a retryable failure
//! (`enqueue_failed`).
//!
//! Node is `JOBSTREAM_NODE`, else `node`; Python `JOBSTREAM_PYTHON`, else target/venv, else `python3` (as in
//! polyglot_node.rs and polyglot.rs); the examples' packages come from scripts/setup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jobstream_tests::*;

/// The HTTP caller's trace and span: the request's `traceparent`.
const CALLER_TRACE: &str = "5ce0e9a5602f4f2bb2a4c6d1e8f7a901";
const CALLER_SPAN: &str = "a1b2c3d4e5f60718";
const TOKEN: &str = "s3cret";

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `cmd` with nothing but PATH, HOME, Redis and tracing to the sink as `service` in its environment.
fn example_env(mut cmd: Command, redis: &RedisServer, sink: &OtlpSink, service: &str) -> Command {
    cmd.env_clear()
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

/// The Node example worker serving `queue`, exiting after `count` settled jobs.
fn node_worker(fx: &Fixture, queue: &str, count: &str, extra: &[&str]) -> Command {
    let dir = examples().join("node-worker");
    assert!(
        dir.join("node_modules/ioredis").exists(),
        "{} has no node_modules: run scripts/setup (it runs `npm ci` there)",
        dir.display()
    );
    let mut cmd = Command::new(std::env::var_os("JOBSTREAM_NODE").unwrap_or_else(|| "node".into()));
    cmd.arg(dir.join("worker.js"));
    let mut cmd = example_env(cmd, &fx.redis, &fx.sink, "node-worker");
    cmd.args(["--queue", queue, "--consumer", "node-1", "--count", count, "--block-ms", "200"]).args(extra);
    cmd
}

/// The Python example worker serving `queue`, exiting after `count` settled jobs.
fn python_worker(fx: &Fixture, queue: &str, count: &str, extra: &[&str]) -> Command {
    let python = std::env::var_os("JOBSTREAM_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python3");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let mut cmd = Command::new(python);
    cmd.arg(examples().join("python-worker/worker.py"));
    let mut cmd = example_env(cmd, &fx.redis, &fx.sink, "python-worker");
    cmd.args(["--queue", queue, "--consumer", "py-1", "--count", count]).args(extra);
    cmd
}

/// The Rust consumer serving `queue`, exporting as `rust-worker`.
fn rust_worker(fx: &Fixture, queue: &str, extra: &[&str]) -> Command {
    let mut cmd = fx.consumer(queue, "rust-1", extra);
    cmd.env("OTEL_SERVICE_NAME", "rust-worker");
    cmd
}

/// Waits up to a minute for a worker given `--count` to exit 0 by itself (its spans flushed).
fn exits(mut worker: Service, what: &str) {
    let code = worker.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(Some(0)), "{what} did not exit 0 within 60 s: {}", worker.log());
}

/// The one span named `name` from `service` in the caller's trace.
fn one<'a>(spans: &'a [ReceivedSpan], name: &str, service: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = named(spans, CALLER_TRACE, name).into_iter().filter(|s| s.service_name == service).collect();
    assert_eq!(found.len(), 1, "one {name:?} span of {service}: {spans:#?}");
    found[0]
}

fn assert_parent(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "{} ({}) is a child of {} ({})",
        child.name,
        child.service_name,
        parent.name,
        parent.service_name
    );
}

/// The payload of a queue's only entry, parsed.
fn only_payload(conn: &mut redis::Connection, queue: &str) -> serde_json::Value {
    let entries = entries_text(conn, &keys(queue).stream);
    assert_eq!(entries.len(), 1, "{queue}: one entry: {entries:#?}");
    serde_json::from_str(&entries[0]["payload"]).expect("a JSON payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_runs_through_rust_node_and_python_in_one_trace() {
    let started = std::time::Instant::now();
    let fx = Fixture::start().await;
    let mut api = traced("producer", &fx.redis, &fx.sink, "http-api");
    api.args(["serve", "--queue", "orders", "--listen", "127.0.0.1:0"]).env("JOBSTREAM_API_TOKEN", TOKEN);
    let api = fx.spawn(api, "http-api");
    // Small latencies, so the tree shows the steps taking time as in the seed.
    let rust = fx.spawn(rust_worker(&fx, "orders", &["--demo-latency-scale", "0.25"]), "rust-worker");
    let node = fx.spawn(node_worker(&fx, "node-jobs", "1", &["--demo-latency-scale", "0.25"]), "node-worker");
    let python = fx.spawn(python_worker(&fx, "py-jobs", "1", &[]), "python-worker");
    let addr = api.listen_addr();
    wait_until(Duration::from_secs(20), "the API to be ready", || http_get(addr, "/readyz").0 == 200);

    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let body = r#"{"kind":"demo","payload":{"order":42,"next":[{"queue":"node-jobs","kind":"demo"},{"queue":"py-jobs","kind":"demo"}]}}"#;
    let (status, answer) = http_request(
        addr,
        "POST",
        "/v1/jobs",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {TOKEN}")),
            ("traceparent", &traceparent),
        ],
        body,
    );
    assert_eq!(status, 202, "{answer}");
    let accepted: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(accepted["trace_id"], CALLER_TRACE, "the job joins the caller's trace");
    let job_id = accepted["id"].as_str().unwrap().to_owned();

    // The Node and Python workers exit after their one job, the Rust consumer and the API on SIGTERM: every span
    // is flushed.
    exits(node, "the Node worker");
    exits(python, "the Python worker");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "the Rust consumer to acknowledge its job", || {
        pending(&mut conn, "orders", "workers") == 0 && done_counts(&mut conn, "orders").contains_key(&job_id)
    });
    assert_eq!(rust.terminate(), Some(0));
    assert_eq!(api.terminate(), Some(0));

    // Every job acknowledged, and each follow-up enqueued once, with the rest of the chain as its payload.
    for queue in ["orders", "node-jobs", "py-jobs"] {
        assert_eq!(pending(&mut conn, queue, "workers"), 0, "{queue}: every job acknowledged");
        assert_eq!(xlen(&mut conn, &keys(queue).dead), 0, "{queue}: nothing dead");
        assert_eq!(xlen(&mut conn, &keys(queue).delayed), 0, "{queue}: nothing to retry");
    }
    let next = |queue: &str| serde_json::json!({"queue": queue, "kind": "demo"});
    assert_eq!(
        only_payload(&mut conn, "orders"),
        serde_json::json!({"order": 42, "next": [next("node-jobs"), next("py-jobs")]})
    );
    assert_eq!(only_payload(&mut conn, "node-jobs"), serde_json::json!({"order": 42, "next": [next("py-jobs")]}));
    assert_eq!(only_payload(&mut conn, "py-jobs"), serde_json::json!({"order": 42}), "`next` dropped when empty");

    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |spans| {
            named(spans, CALLER_TRACE, "save-data").iter().any(|s| s.service_name == "python-worker")
                && named(spans, CALLER_TRACE, "POST /v1/jobs").len() == 1
                && named(spans, CALLER_TRACE, "save-data").len() == 3
                && spans.iter().any(|s| s.name == "ack orders")
        })
        .await
        .unwrap_or_else(|spans| panic!("spans missing: {spans:#?}"));

    // One trace, four services. The Rust worker's batch spans (`receive`, `ack`) are roots of their own, each
    // linking into the caller's trace.
    let batch = |s: &ReceivedSpan| {
        s.parent_span_id.is_none() && matches!(s.attr("messaging.operation.type"), Some("receive" | "settle"))
    };
    for span in spans.iter().filter(|s| batch(s)) {
        assert!(span.links.iter().all(|(trace, _)| trace == CALLER_TRACE), "{span:?} links into the caller's trace");
    }
    let traces: BTreeSet<&str> = spans.iter().filter(|s| !batch(s)).map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces, BTreeSet::from([CALLER_TRACE]), "every span exported is in the caller's trace");
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service_name.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["http-api", "node-worker", "python-worker", "rust-worker"]));

    // The trace's shape across the three languages: three jobs each sent once and processed once under its
    // send, each settled (the Rust worker by an `ack` span, the Node and Python ones by their `settle` events);
    // the one span whose parent never arrived is the caller's own, which no process here exported.
    let report = jobstream_otlp_sink::shape::check(&spans, &jobstream_otlp_sink::shape::Rules::default());
    assert_eq!((report.jobs, report.sends, report.processes), (3, 3, 3), "{report}");
    let orphan = jobstream_otlp_sink::shape::Violation::Orphan;
    assert_eq!(report.violations, [(orphan, 1)].into(), "{report}");
    assert!(report.examples[&orphan][0].contains(CALLER_SPAN), "{report}");

    // The chain of parents: caller → POST → send orders → process orders → send node-jobs → process node-jobs →
    // send py-jobs → process py-jobs, each worker's steps under its process span.
    let post = one(&spans, "POST /v1/jobs", "http-api");
    assert_eq!(post.parent_span_id.as_deref(), Some(CALLER_SPAN), "the SERVER span continues the caller's");
    let mut parent = post;
    for (queue, sender, worker) in [
        ("orders", "http-api", "rust-worker"),
        ("node-jobs", "rust-worker", "node-worker"),
        ("py-jobs", "node-worker", "python-worker"),
    ] {
        let send = one(&spans, &format!("send {queue}"), sender);
        let process = one(&spans, &format!("process {queue}"), worker);
        assert_eq!((send.kind, process.kind), ("producer", "consumer"), "{queue}");
        assert_parent(send, parent);
        assert_parent(process, send);
        assert_eq!(process.attr("jobstream.job.id"), send.attr("jobstream.job.id"), "{queue}: the same job");
        assert_eq!(process.attr("jobstream.job.kind"), Some("demo"));
        assert_eq!(process.status, "unset", "{queue}: the job succeeded: {process:#?}");
        for step in ["http-request", "load-data", "process-data", "save-data"] {
            assert_parent(one(&spans, step, worker), process);
        }
        parent = process;
    }
    assert_eq!(one(&spans, "send orders", "http-api").attr("jobstream.job.id"), Some(job_id.as_str()));
    assert_eq!(spans.iter().filter(|s| s.name.starts_with("send ")).count(), 3, "three jobs sent, no more");

    let tree = jobstream_otlp_sink::render_trace(&spans, CALLER_TRACE);
    println!("{tree}");
    println!("({} spans; the test took {:.1} s)", spans.len(), started.elapsed().as_secs_f64());
}

/// A queue recorded with 4 partitions: the examples serve and enqueue on unpartitioned queues only, and the Rust
/// producer of an unpartitioned queue refuses it, so a follow-up sent there cannot be enqueued.
const PARTITIONED: &str = "parted";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_next_or_a_failed_follow_up_fails_the_job_alike_in_every_language() {
    let fx = Fixture::start().await;
    let mut conn = fx.conn();
    let record = jobstream::Keys::partition_record("jobstream", &jobstream::QueueName::parse(PARTITIONED).unwrap());
    let _: () = redis::cmd("SET").arg(record.unwrap()).arg("4").query(&mut conn).unwrap();
    let bad = r#"{"order":1,"next":[{"queue":"node-jobs","kind":"demo"},{"queue":"no such queue","kind":"demo"}]}"#;
    let unreachable = format!(r#"{{"order":2,"next":[{{"queue":"{PARTITIONED}","kind":"demo"}}]}}"#);
    let attempts = ["--max-attempts", "1"];
    for (queue, language) in [("rs-chain", "rust"), ("node-chain", "node"), ("py-chain", "python")] {
        for payload in [bad, unreachable.as_str()] {
            enqueue(fx.producer(), queue, "demo", payload, 1);
        }
        match language {
            "rust" => {
                let worker = fx.spawn(rust_worker(&fx, queue, &attempts), "rust-worker");
                wait_until(Duration::from_secs(30), "the Rust consumer to dead-letter both jobs", || {
                    xlen(&mut conn, &keys(queue).dead) == 2
                });
                assert_eq!(worker.terminate(), Some(0));
            }
            "node" => exits(fx.spawn(node_worker(&fx, queue, "2", &attempts), "node-worker"), "the Node worker"),
            _ => exits(fx.spawn(python_worker(&fx, queue, "2", &attempts), "python-worker"), "the Python worker"),
        }
        let dead: BTreeMap<String, (String, String)> = dead_entries(&mut conn, queue)
            .into_iter()
            .map(|e| (e["payload"].clone(), (e["dead.reason"].clone(), e["dead.error"].clone())))
            .collect();
        let (reason, error) = &dead[bad];
        assert_eq!(reason, "permanent_failure", "{language}: {dead:#?}");
        assert!(error.starts_with("attempt 1 of 1: invalid_payload: next: element 1"), "{language}: {error}");
        let (reason, error) = &dead[&unreachable];
        assert_eq!(reason, "max_attempts", "{language}: a retryable failure, out of attempts: {dead:#?}");
        assert!(
            error.starts_with(&format!("attempt 1 of 1: enqueue_failed: follow-up on {PARTITIONED}: ")),
            "{language}: {error}"
        );
        assert_eq!(pending(&mut conn, queue, "workers"), 0, "{language}: nothing left pending");
    }
    // Nothing was enqueued anywhere: not even the valid first hop of the bad chain.
    assert_eq!(xlen(&mut conn, &keys("node-jobs").stream), 0);
    assert_eq!(xlen(&mut conn, &keys(PARTITIONED).stream), 0);
}
