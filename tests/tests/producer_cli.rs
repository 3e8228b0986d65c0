//! The `producer` command line as a user meets it: payloads from a file or stdin, `stats` with per-consumer
//! numbers and last-minute rates (text and `--json`), HTTP servers that cut off clients stalling in their
//! headers, and one-line errors with exit status 2 for bad usage and 1 for failures. Real `redis-server`, real
//! binaries, `RUST_BACKTRACE=1` in every environment.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobstream_tests::*;

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).stdin(Stdio::null()).output().expect("run producer")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The payload field of the only entry of a queue's stream.
fn stored_payloads(conn: &mut redis::Connection, queue: &str) -> Vec<String> {
    entries_text(conn, &keys(queue).stream).into_iter().map(|mut e| e.remove("payload").unwrap()).collect()
}

#[test]
fn enqueue_takes_a_600_kib_payload_from_a_file_or_stdin_and_refuses_one_over_the_limit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let payload = format!(r#"{{"blob":"{}"}}"#, "x".repeat(600 * 1024));
    let file = dir.path().join("payload.json");
    std::fs::write(&file, &payload).unwrap();
    let path = file.to_str().unwrap();

    let out = run(plain("producer", &redis), &["enqueue", "--queue", "big", "--kind", "noop", "--payload-file", path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let mut child = plain("producer", &redis)
        .args(["enqueue", "--queue", "big", "--kind", "noop", "--payload-file", "-", "--count", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    let mut conn = redis.conn();
    let stored = stored_payloads(&mut conn, "big");
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|p| p == &payload), "the payloads are stored byte for byte");

    // Over the limit: one line naming the size and the limit, exit 1, nothing enqueued.
    let out = run(
        plain("producer", &redis),
        &["enqueue", "--queue", "big", "--kind", "noop", "--payload-file", path, "--max-payload-bytes", "100000"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].contains(&payload.len().to_string()) && lines[0].contains("100000"), "{lines:?}");
    assert_eq!(xlen(&mut conn, &keys("big").stream), 3, "nothing more enqueued");

    // A missing file is a failure in one line; --payload and --payload-file together are bad usage.
    let out =
        run(plain("producer", &redis), &["enqueue", "--queue", "big", "--kind", "noop", "--payload-file", "/nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stderr_lines(&out).len(), 1, "{out:?}");
    let out = run(
        plain("producer", &redis),
        &["enqueue", "--queue", "big", "--kind", "noop", "--payload", "{}", "--payload-file", path],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn stats_show_each_consumer_and_the_last_minute_rates_in_text_and_json() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let mut conn = redis.conn();
    let mut worker = plain("consumer", &redis);
    worker.args(["--queue", "rates", "--consumer", "busy", "--block", "200ms", "--listen", "127.0.0.1:0"]);
    let worker = Service::spawn(worker, logs.path(), "consumer");
    // The worker records the queue's counters when it starts: the rates are measured from there.
    wait_until(Duration::from_secs(20), "the worker's first record of the counters", || {
        redis::cmd("ZCARD").arg("jobstream:{rates}:counts").query::<u64>(&mut conn).unwrap_or(0) > 0
    });

    let out = run(plain("producer", &redis), &["enqueue", "--queue", "rates", "--kind", "noop", "--count", "40"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(plain("producer", &redis), &["enqueue", "--queue", "rates", "--kind", "nobody-runs-this"]);
    assert!(out.status.success());
    wait_until(Duration::from_secs(30), "every job done or dead", || {
        done_counts(&mut conn, "rates").len() == 40
            && xlen(&mut conn, &keys("rates").dead) == 1
            && pending(&mut conn, "rates", "workers") == 0
    });
    assert_eq!(worker.terminate(), Some(0));
    // Another consumer takes two jobs and holds them.
    run(plain("producer", &redis), &["enqueue", "--queue", "rates", "--kind", "noop", "--count", "2"]);
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("stuck")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&keys("rates").stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();

    let out = run(plain("producer", &redis), &["stats", "--queue", "rates", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    let stats = json(&text);
    let group = &stats["groups"][0];
    let consumers = group["consumer_list"].as_array().unwrap_or_else(|| panic!("per consumer: {stats}"));
    let busy = consumers.iter().find(|c| c["name"] == "busy").unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(busy["pending"], 0, "{stats}");
    assert!(busy["idle_ms"].as_u64().is_some(), "{stats}");
    let stuck = consumers.iter().find(|c| c["name"] == "stuck").unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(stuck["pending"], 2, "{stats}");
    let rates = &stats["rates"];
    let window = rates["window_s"].as_f64().unwrap_or_else(|| panic!("a rate window: {stats}"));
    assert!(window > 0.0 && window <= 70.0, "{stats}");
    let per_s = |name: &str, of: &serde_json::Value| of[name].as_f64().unwrap_or_else(|| panic!("{name}: {stats}"));
    assert!((per_s("enqueued_per_s", rates) * window - 43.0).abs() < 0.5, "43 enqueued in the window: {stats}");
    assert!((per_s("dead_per_s", rates) * window - 1.0).abs() < 0.05, "one dead in the window: {stats}");
    let acked = per_s("acknowledged_per_s", group) * window;
    assert!((acked - 41.0).abs() < 0.5, "41 acknowledged in the window (done and dead): {stats}");

    let out = run(plain("producer", &redis), &["stats", "--queue", "rates"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("consumer busy: 0 pending, idle "), "{text}");
    assert!(text.contains("consumer stuck: 2 pending, idle "), "{text}");
    assert!(text.contains("enqueued/s") && text.contains("acknowledged/s") && text.contains("dead/s"), "{text}");
}

#[test]
fn stats_json_of_a_partitioned_queue_is_one_object() {
    let redis = RedisServer::start();
    let out = run(
        plain("producer", &redis),
        &["enqueue", "--queue", "parts", "--partitions", "2", "--kind", "noop", "--count", "4"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(plain("producer", &redis), &["stats", "--queue", "parts", "--partitions", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(stats["queue"], "parts", "{stats}");
    let partitions = stats["partitions"].as_array().unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions.iter().map(|p| p["length"].as_u64().unwrap()).sum::<u64>(), 4, "{stats}");
}

/// Sends half a request (a request line and one header, no blank line) and waits for the server to close.
fn stalled_client_cut_off_after(addr: std::net::SocketAddr) -> Duration {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    let waited = start.elapsed();
    assert!(read.is_ok(), "the server never cut the stalled headers off: {read:?} after {waited:?}");
    waited
}

#[test]
fn servers_cut_off_a_client_that_stalls_in_its_headers() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let mut api = plain("producer", &redis);
    api.args(["serve", "--queue", "web", "--listen", "127.0.0.1:0", "--header-read-timeout", "1s"]);
    let api = Service::spawn(api, logs.path(), "api");
    let addr = api.listen_addr();
    let waited = stalled_client_cut_off_after(addr);
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(http_get(addr, "/healthz").0, 200, "the server still serves others");

    // The consumer's health server takes the bound from the environment.
    let mut worker = plain("consumer", &redis);
    worker.args(["--queue", "web", "--listen", "127.0.0.1:0"]).env("JOBSTREAM_HEADER_READ_TIMEOUT", "1s");
    let worker = Service::spawn(worker, logs.path(), "consumer");
    let waited = stalled_client_cut_off_after(worker.listen_addr());
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");

    assert_eq!(api.terminate(), Some(0), "graceful shutdown still works");
    assert_eq!(worker.terminate(), Some(0));
}

/// What a user must see for an error: exit `status`, and for our own errors one line, no backtrace.
fn assert_error(out: &Output, status: i32, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "{what}: {stderr}");
    assert!(!stderr.contains("backtrace") && !stderr.contains("panicked"), "{what}: {stderr}");
    let lines = stderr_lines(out);
    assert!(lines.first().is_some_and(|l| l.starts_with("error: ")), "{what}: {lines:?}");
    // clap's usage errors add the usage and a hint; ours are one line.
    if !lines.iter().any(|l| l.starts_with("Usage:") || l.starts_with("For more information")) {
        assert_eq!(lines.len(), 1, "{what}: one line: {lines:?}");
    }
}

#[test]
fn every_subcommand_exits_2_for_bad_usage_and_1_for_failures_in_one_line() {
    let redis = RedisServer::start();
    let p = || plain("producer", &redis);
    let usage: &[(&str, &[&str])] = &[
        ("unknown flag", &["enqueue", "--kind", "noop", "--nope"]),
        ("idempotency key with several jobs", &["enqueue", "--kind", "noop", "--count", "2", "--idempotency-key", "k"]),
        ("payload not JSON", &["enqueue", "--kind", "noop", "--payload", "not json"]),
        ("bad kind", &["enqueue", "--kind", "no spaces", "--payload", "{}"]),
        ("bad prefix", &["stats", "--prefix", "a b"]),
        ("purge without --yes", &["dead", "purge", "--queue", "q"]),
        ("dead list of a partitioned queue", &["dead", "list", "--queue", "q", "--partitions", "2"]),
        ("load payload not JSON", &["load", "--payload", "nope", "--jobs", "1"]),
        ("load payload bytes too small", &["load", "--payload-bytes", "3", "--jobs", "1"]),
        ("serve bad metric kind", &["serve", "--listen", "127.0.0.1:0", "--metric-kinds", "a b"]),
        ("demo failure rate above 1", &["demo", "--failure-rate", "2"]),
        ("demo latency scale not finite", &["demo", "--latency-scale", "inf"]),
    ];
    for (what, args) in usage {
        assert_error(&run(p(), args), 2, what);
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let gone = format!("redis://127.0.0.1:{}", free_port());
    let failures: Vec<(&str, Vec<&str>)> = vec![
        ("no such dead entry", vec!["dead", "show", "--queue", "q", "1-1"]),
        ("listen address taken", vec!["serve", "--queue", "q", "--listen", &taken]),
        ("Redis unreachable: stats", vec!["stats", "--redis-url", &gone]),
        ("Redis unreachable: enqueue", vec!["enqueue", "--kind", "noop", "--redis-url", &gone]),
        ("Redis unreachable: dead list", vec!["dead", "list", "--redis-url", &gone]),
        ("Redis unreachable: load", vec!["load", "--jobs", "1", "--no-progress", "--redis-url", &gone]),
    ];
    for (what, args) in &failures {
        assert_error(&run(p(), args), 1, what);
    }
}
