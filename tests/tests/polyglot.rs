//! Polyglot traces: a Rust producer's jobs run by the Python example worker, and a Python producer's jobs run by
//! the Rust consumer, each checked on the spans both sides exported over OTLP (same trace, correct parent).
//! The Python side uses only redis-py and the standard OpenTelemetry SDK (examples/python-worker).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

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
