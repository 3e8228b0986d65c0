//! What operators and orchestrators see: `/healthz`, `/readyz` (not ready while draining) and `/metrics`.

use std::time::Duration;

use jobstream_tests::*;

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_and_metrics_tell_the_truth() {
    let fx = Fixture::start().await;
    let queue = "ops";
    let flags = ["--max-attempts", "1", "--demo-failure-rate", "1"];
    let worker = fx.spawn(fx.consumer(queue, "w", &flags), "w");
    let addr = worker.listen_addr();
    assert_eq!(http_get(addr, "/healthz").0, 200);
    wait_until(Duration::from_secs(20), "readiness once the group exists", || http_get(addr, "/readyz").0 == 200);

    enqueue(fx.producer(), queue, "noop", "{}", 5);
    enqueue(fx.producer(), queue, "demo", "{}", 2);
    let mut conn = fx.conn();
    xadd_raw(&mut conn, queue, &[("v", b"1")]);
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(30), "5 done and 3 dead", || {
        done_counts(&mut conn, queue).len() == 5 && xlen(&mut conn, &dead_key) == 3
    });

    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let q = r#"queue="ops""#;
    assert_eq!(
        metric(&text, &format!(r#"jobstream_jobs_total{{{q},kind="noop",outcome="succeeded"}}"#)),
        Some(5.0),
        "{text}"
    );
    assert_eq!(metric(&text, &format!(r#"jobstream_jobs_total{{{q},kind="demo",outcome="dead"}}"#)), Some(2.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_jobs_total{{{q},kind="unknown",outcome="dead"}}"#)), Some(1.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_dead_letters_total{{{q},reason="max_attempts"}}"#)), Some(2.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_dead_letters_total{{{q},reason="undecodable"}}"#)), Some(1.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_processing_duration_seconds_count{{{q},kind="noop"}}"#)), Some(5.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_queue_wait_seconds_count{{{q},kind="demo"}}"#)), Some(2.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_queue_length{{{q}}}"#)), Some(8.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_queue_dead{{{q}}}"#)), Some(3.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_group_pending{{{q},group="workers"}}"#)), Some(0.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_group_lag{{{q},group="workers"}}"#)), Some(0.0));
    assert_eq!(metric(&text, &format!(r#"jobstream_jobs_in_flight{{{q}}}"#)), Some(0.0));
    if let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("promtool not installed: metric names not linted (scripts/setup installs it)");
    }
    assert_eq!(worker.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_that_handlers_enqueue_count_in_the_consumers_metrics() {
    let fx = Fixture::start().await;
    let queue = "children";
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let addr = worker.listen_addr();
    enqueue(fx.producer(), queue, "fanout", r#"{"children":3,"depth":1,"leaf":"noop"}"#, 1);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "the fanout job and its 3 children done", || {
        done_counts(&mut conn, queue).len() == 4
    });
    let (_, text) = http_get(addr, "/metrics");
    assert_eq!(metric(&text, r#"jobstream_enqueued_total{queue="children",kind="noop"}"#), Some(3.0), "{text}");
    assert_eq!(worker.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_worker_is_alive_but_not_ready() {
    let fx = Fixture::start().await;
    let queue = "draining";
    // One demo job of about 4 s keeps the worker draining long enough to probe it.
    let worker = fx.spawn(fx.consumer(queue, "w", &["--demo-latency-scale", "30"]), "w");
    let addr = worker.listen_addr();
    enqueue(fx.producer(), queue, "demo", "{}", 1);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "the job to start", || pending(&mut conn, queue, "workers") == 1);
    assert_eq!(http_get(addr, "/readyz").0, 200);
    worker.signal_term();
    wait_until(Duration::from_secs(10), "readiness to drop", || http_get(addr, "/readyz").0 == 503);
    assert_eq!(http_get(addr, "/healthz").0, 200, "still alive while draining");
    assert_eq!(done_counts(&mut conn, queue).len(), 0, "the job is still running");
    assert_eq!(worker.wait(), Some(0));
    assert_eq!(done_counts(&mut conn, queue).len(), 1, "the drain finished the job");
    assert_eq!(pending(&mut conn, queue, "workers"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_with_default_flags_on_one_host_both_run_and_serve_probes() {
    let fx = Fixture::start().await;
    let queue = "twohosts";
    // No --listen: both want 0.0.0.0:9090; the second (or both, if something else holds it) takes another port.
    let start = |name: &str| {
        let mut cmd = traced("consumer", &fx.redis, &fx.sink, "test-consumer");
        cmd.args(["--queue", queue, "--consumer", name, "--block", "200ms", "--concurrency", "2"]);
        cmd.args(["--demo-latency-scale", "0.05", "--demo-failure-rate", "0"]);
        fx.spawn(cmd, name)
    };
    let workers = [start("first"), start("second")];
    let addrs: Vec<_> = workers.iter().map(Service::listen_addr).collect();
    assert_ne!(addrs[0].port(), addrs[1].port(), "each consumer serves its own port");
    for addr in &addrs {
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
        assert_eq!(http_get(local, "/healthz").0, 200);
    }
    enqueue(fx.producer(), queue, "demo", "{}", 40);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "every job done", || done_counts(&mut conn, queue).len() == 40);
    for (worker, addr) in workers.iter().zip(&addrs) {
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
        let (_, text) = http_get(local, "/metrics");
        let ran = metric(&text, r#"jobstream_jobs_total{queue="twohosts",kind="demo",outcome="succeeded"}"#);
        assert!(ran.unwrap_or(0.0) > 0.0, "both consumers ran jobs: {}", worker.log());
    }
    for worker in workers {
        assert_eq!(worker.terminate(), Some(0));
    }
}

#[test]
fn a_listen_address_given_explicitly_that_is_taken_is_an_error_in_one_line() {
    let redis = RedisServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(bin("consumer"))
        .env("REDIS_URL", redis.url())
        .env("RUST_BACKTRACE", "1")
        .env("OTEL_TRACES_EXPORTER", "none")
        .args(["--queue", "q", "--listen", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!stderr.contains("backtrace") && !stderr.contains("Caused by"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_one_json_line_and_its_dead_entry_keeps_the_message() {
    let fx = Fixture::start().await;
    let queue = "panics";
    let mut cmd = fx.consumer(queue, "w", &["--max-attempts", "2", "--retry-base-delay", "10ms"]);
    cmd.env("RUST_BACKTRACE", "1");
    let worker = fx.spawn(cmd, "w");
    let job = enqueue(fx.producer(), queue, "demo", r#"{"panic":"boom 42"}"#, 1).remove(0);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(20), "the job to die", || !dead_entries(&mut conn, queue).is_empty());
    let dead = dead_entries(&mut conn, queue).remove(0);
    assert_eq!(dead.get("dead.reason").map(String::as_str), Some("max_attempts"));
    assert!(dead["dead.error"].contains("handler panicked: boom 42"), "{dead:?}");
    let log = worker.log();
    let panics: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("boom 42"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not one JSON line: {l}")))
        .filter(|v: &serde_json::Value| v["message"].as_str().is_some_and(|m| m.starts_with("panicked")))
        .collect();
    assert_eq!(panics.len(), 2, "one line per panic (two attempts): {log}");
    assert_eq!(panics[0]["trace_id"].as_str(), Some(job.trace_id.as_str()), "in the job's trace");
    assert!(!log.contains("stack backtrace") && !log.contains("note: run with"), "{log}");
    assert_eq!(worker.terminate(), Some(0), "the worker survived");
}
