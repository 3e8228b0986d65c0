//! Abuse of the consumer and unbounded growth (issue 10): fan-out bounds, flags out of range, dead consumers
//! left in the group, the `done` hash's retention, and trace headers past the W3C sizes. Real `redis-server`,
//! real `consumer` binary, real OTLP bytes.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobstream::{GroupName, Keys, QueueName};
use jobstream_tests::*;

const SETTLE: Duration = Duration::from_secs(30);

/// Writes a job of `kind` with `payload` (and any further fields) straight to the queue's stream.
fn xadd_job(conn: &mut redis::Connection, queue: &str, kind: &str, payload: &str, extra: &[(&str, &str)]) -> String {
    let mut fields = job_fields(kind);
    for (name, value) in fields.iter_mut() {
        if name == "payload" {
            *value = payload.to_owned();
        }
    }
    fields.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let pairs: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
    xadd_raw(conn, queue, &pairs)
}

/// The names in `XINFO CONSUMERS` with their pending counts.
fn consumers(conn: &mut redis::Connection, queue: &str) -> BTreeMap<String, u64> {
    let rows: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("CONSUMERS").arg(format!("jobstream:{{{queue}}}")).arg("workers").query(conn).unwrap();
    rows.into_iter()
        .map(|row| {
            let name = match &row["name"] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("name {other:?}"),
            };
            let pending = match &row["pending"] {
                redis::Value::Int(n) => *n as u64,
                other => panic!("pending {other:?}"),
            };
            (name, pending)
        })
        .collect()
}

fn pttl(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(conn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fanout_past_its_bounds_is_dead_lettered_as_a_permanent_failure_and_enqueues_nothing() {
    let redis = RedisServer::start();
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let queue = "fan-bounds";
    let mut conn = redis.conn();
    let refused = [
        r#"{"children":101,"depth":1}"#,               // children per job
        r#"{"children":1,"depth":6}"#,                 // depth
        r#"{"children":30,"depth":3}"#,                // 30 + 900 + 27,000 jobs in all
        r#"{"children":1,"depth":1,"leaf":"fanout"}"#, // a leaf that fans out again escapes the total
    ];
    for payload in refused {
        xadd_job(&mut conn, queue, "fanout", payload, &[]);
    }
    // Allowed: 3 + 9 descendants, 13 jobs counting the root.
    xadd_job(&mut conn, queue, "fanout", r#"{"children":3,"depth":2}"#, &[]);
    let _worker = Service::spawn(consumer(&redis, &sink, queue, "w", &["--concurrency", "4"]), logs.path(), "w");

    let settled = |conn: &mut redis::Connection| {
        dead_entries(conn, queue).len() + done_counts(conn, queue).len() >= refused.len() + 13
            || xlen(conn, &format!("jobstream:{{{queue}}}")) > 5 + 12
    };
    wait_until(SETTLE, "every fanout job to settle", || settled(&mut conn));
    assert_eq!(xlen(&mut conn, &format!("jobstream:{{{queue}}}")), 5 + 12, "refused jobs enqueued nothing");
    wait_until(SETTLE, "nothing left pending", || pending(&mut conn, queue, "workers") == 0);
    assert_eq!(done_counts(&mut conn, queue).len(), 13, "the allowed fan-out ran whole");
    let dead = dead_entries(&mut conn, queue);
    let mut dead_payloads: Vec<&str> = dead.iter().map(|d| d["payload"].as_str()).collect();
    dead_payloads.sort_unstable();
    let mut expected = refused.to_vec();
    expected.sort_unstable();
    assert_eq!(dead_payloads, expected, "each refused job is dead, once");
    for entry in &dead {
        assert_eq!(entry["dead.reason"], "permanent_failure", "{entry:?}");
        assert!(entry["dead.error"].contains("fanout_limit"), "{entry:?}");
        assert_eq!(entry["attempt"], "1", "never retried: {entry:?}");
    }
}

/// Runs the consumer with `args` (and `env`) against a private Redis, waits at most 10 s for it to exit by itself;
/// returns its exit code (`None` if it had to be killed) and its stderr.
fn run_consumer(redis: &RedisServer, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let logs = tempfile::tempdir().unwrap();
    let err = logs.path().join("stderr");
    let mut child = Command::new(bin("consumer"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .env("OTEL_TRACES_EXPORTER", "none")
        .envs(env.iter().copied())
        .args(["--queue", "flags", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (code, std::fs::read_to_string(err).unwrap())
}

/// Arguments, environment, and the flag the error must name.
type Case = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

#[test]
fn consumer_flags_out_of_range_are_refused_at_start_with_one_line_and_status_2() {
    let redis = RedisServer::start();
    let cases: &[Case] = &[
        (&["--block", "0s"], &[], "--block"),
        (&["--block", "5ms"], &[], "--block"),
        (&["--block", "1y"], &[], "--block"),
        (&["--block", "61s"], &[], "--block"),
        (&[], &[("JOBSTREAM_BLOCK", "0s")], "--block"),
        (&["--visibility-timeout", "0s"], &[], "--visibility-timeout"),
        (&["--visibility-timeout", "50ms", "--block", "10ms"], &[], "--visibility-timeout"),
        (&["--visibility-timeout", "100years"], &[], "--visibility-timeout"),
        (&["--visibility-timeout", "1s"], &[], "--block"), // the default 2 s block is not below it
        (&["--demo-latency-scale", "inf"], &[], "--demo-latency-scale"),
        (&["--demo-latency-scale", "NaN"], &[], "--demo-latency-scale"),
        (&["--demo-latency-scale=-1"], &[], "--demo-latency-scale"),
        (&["--demo-latency-scale", "1e300"], &[], "--demo-latency-scale"),
        (&["--consumer", ""], &[], "--consumer"),
        (&["--consumer", "  "], &[], "--consumer"),
        (&["--consumer", "a\tb"], &[], "--consumer"),
        (&[], &[("JOBSTREAM_CONSUMER", "")], "--consumer"),
        (&["--concurrency", "0"], &[], "--concurrency"),
        (&["--batch-size", "0"], &[], "--batch-size"),
        (&["--max-payload-bytes", "0"], &[], "--max-payload-bytes"),
        (&["--shutdown-grace", "100years"], &[], "--shutdown-grace"),
        (&["--retry-base-delay", "100years"], &[], "--retry-base-delay"),
        (&["--retry-max-delay", "100years"], &[], "--retry-max-delay"),
        (&["--retention", "100years"], &[], "--retention"),
        (&["--result-ttl", "100years"], &[], "--result-ttl"),
        (&["--remove-idle-consumers-after", "10ms"], &[], "--remove-idle-consumers-after"),
    ];
    let mut wrong = Vec::new();
    for (args, env, flag) in cases {
        let (code, stderr) = run_consumer(&redis, args, env);
        let first = stderr.lines().next().unwrap_or_default();
        let other_lines: Vec<&str> = stderr.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
        let one_line = other_lines.iter().all(|l| l.starts_with("For more information"));
        if code != Some(2) || !first.starts_with("error: ") || !first.contains(flag) || !one_line {
            wrong.push(format!("{args:?} {env:?}: exit {code:?}, stderr {stderr:?}"));
        }
    }
    assert!(wrong.is_empty(), "not refused as bad usage:\n{}", wrong.join("\n"));

    // The bounds themselves are accepted: the consumer starts, and stops on SIGTERM.
    let logs = tempfile::tempdir().unwrap();
    let sink_less = {
        let mut cmd = Command::new(bin("consumer"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REDIS_URL", redis.url())
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("JOBSTREAM_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .args(["--queue", "flags", "--listen", "127.0.0.1:0", "--block", "10ms", "--visibility-timeout", "100ms"])
            .args(["--demo-latency-scale", "1000", "--consumer", "edge", "--remove-idle-consumers-after", "1s"]);
        cmd
    };
    let edge = Service::spawn(sink_less, logs.path(), "edge");
    let addr = edge.listen_addr();
    wait_until(Duration::from_secs(20), "the consumer at the bounds to be ready", || {
        http_get(addr, "/readyz").0 == 200
    });
    assert_eq!(edge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_removal_script_removes_an_idle_consumer_with_nothing_pending_and_keeps_one_holding_entries() {
    let redis = RedisServer::start();
    let queue = "ghosts";
    let keys = Keys::new("jobstream", &QueueName::parse(queue).unwrap()).unwrap();
    let mut sync = redis.conn();
    let stream = keys.stream.as_str();
    let _: () = redis::cmd("XGROUP").arg(&["CREATE", stream, "workers", "0", "MKSTREAM"][..]).query(&mut sync).unwrap();
    for name in ["empty", "holding", "me"] {
        let _: i64 =
            redis::cmd("XGROUP").arg(&["CREATECONSUMER", stream, "workers", name][..]).query(&mut sync).unwrap();
    }
    let entry = xadd_job(&mut sync, queue, "noop", "{}", &[]);
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "workers", "holding", "COUNT", "1", "STREAMS", stream, ">"][..])
        .query(&mut sync)
        .unwrap();
    assert_eq!(pending_of(&mut sync, queue, "workers", "holding"), 1);

    let pool = jobstream::connection::pool(&redis.url(), &Default::default()).unwrap();
    let group = GroupName::default();
    // Idle for less than the bound: nothing goes.
    let removed =
        jobstream::consumers::remove_idle(&pool, &keys, &group, Duration::from_secs(3600), "me").await.unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(consumers(&mut sync, queue).len(), 3);

    wait_until(Duration::from_secs(5), "the consumers to be idle for 50 ms", || {
        let idle: Vec<Vec<redis::Value>> =
            redis::cmd("XINFO").arg(&["CONSUMERS", stream, "workers"][..]).query(&mut sync).unwrap();
        idle.iter().all(|row| matches!(row.get(5), Some(redis::Value::Int(ms)) if *ms >= 50))
    });
    let removed =
        jobstream::consumers::remove_idle(&pool, &keys, &group, Duration::from_millis(50), "me").await.unwrap();
    assert_eq!(removed, vec!["empty".to_owned()], "only the idle consumer holding nothing");
    let left = consumers(&mut sync, queue);
    assert_eq!(left, BTreeMap::from([("holding".to_owned(), 1), ("me".to_owned(), 0)]), "the caller is kept too");
    let claimed: redis::Value =
        redis::cmd("XPENDING").arg(&[stream, "workers", "-", "+", "10"][..]).query(&mut sync).unwrap();
    assert!(format!("{claimed:?}").contains(&entry), "the held entry is still pending: {claimed:?}");

    // A missing stream or group is no error: nothing to remove.
    let other = Keys::new("jobstream", &QueueName::parse("nowhere").unwrap()).unwrap();
    assert!(jobstream::consumers::remove_idle(&pool, &other, &group, Duration::ZERO, "me").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_removes_dead_consumers_holding_nothing_and_says_so() {
    let redis = RedisServer::start();
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let queue = "stale";
    let stream = format!("jobstream:{{{queue}}}");
    let mut conn = redis.conn();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    for name in ["ghost-empty", "ghost-holding"] {
        let _: i64 =
            redis::cmd("XGROUP").arg("CREATECONSUMER").arg(&stream).arg("workers").arg(name).query(&mut conn).unwrap();
    }
    xadd_job(&mut conn, queue, "noop", "{}", &[]);
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "workers", "ghost-holding", "COUNT", "1", "STREAMS", stream.as_str(), ">"][..])
        .query(&mut conn)
        .unwrap();

    // The visibility timeout (60 s) keeps ghost-holding's entry its own for the whole test.
    let worker = Service::spawn(
        consumer(&redis, &sink, queue, "live", &["--remove-idle-consumers-after", "1s"]),
        logs.path(),
        "live",
    );
    wait_until(SETTLE, "ghost-empty to be removed from the group", || {
        !consumers(&mut conn, queue).contains_key("ghost-empty")
    });
    let left = consumers(&mut conn, queue);
    assert_eq!(left.get("ghost-holding"), Some(&1), "a consumer holding an entry stays: {left:?}");
    let said = worker.log().lines().any(|line| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
            v["level"] == "INFO"
                && v["consumer"] == "ghost-empty"
                && v["message"].as_str().is_some_and(|m| m.contains("removed"))
        })
    });
    assert!(said, "an info line names the removed consumer:\n{}", worker.log());
    assert_eq!(worker.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_done_hash_expires_with_the_retention_of_acknowledged_entries() {
    let redis = RedisServer::start();
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let queue = "kept-done";
    let done = format!("jobstream:{{{queue}}}:done");
    let mut conn = redis.conn();
    let worker = Service::spawn(consumer(&redis, &sink, queue, "w", &["--retention", "30m"]), logs.path(), "w");
    let thirty_minutes = 30 * 60 * 1000;

    for (n, (kind, payload)) in
        [("noop", "{}"), ("demo", "{}"), ("fanout", r#"{"children":1,"depth":1}"#)].iter().enumerate()
    {
        let _: i64 = redis::cmd("PERSIST").arg(&done).query(&mut conn).unwrap();
        xadd_job(&mut conn, queue, kind, payload, &[]);
        let expected = if *kind == "fanout" { n + 2 } else { n + 1 };
        wait_until(SETTLE, &format!("the {kind} job"), || done_counts(&mut conn, queue).len() == expected);
        let ttl = pttl(&mut conn, &done);
        assert!(ttl > 0 && ttl <= thirty_minutes, "after a {kind} job the done hash expires in {ttl} ms");
    }
    assert_eq!(worker.terminate(), Some(0));

    // --retention 0 keeps acknowledged entries, and the done hash with them.
    let _: i64 = redis::cmd("PERSIST").arg(&done).query(&mut conn).unwrap();
    let keeper = Service::spawn(consumer(&redis, &sink, queue, "k", &["--retention", "0"]), logs.path(), "k");
    xadd_job(&mut conn, queue, "noop", "{}", &[]);
    wait_until(SETTLE, "the last job", || done_counts(&mut conn, queue).len() == 5);
    assert_eq!(pttl(&mut conn, &done), -1);
    assert_eq!(keeper.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_tracestate_or_baggage_is_truncated_and_the_trace_continues() {
    let redis = RedisServer::start();
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let queue = "big-headers";
    let mut conn = redis.conn();
    let span_id = "00f067aa0ba902b7";
    let traceparent = |trace: &str| format!("00-{trace}-{span_id}-01");
    // 10 members of 61 characters: 619 characters.
    let tracestate: String = (0..10).map(|i| format!("v{i}={}", "x".repeat(58))).collect::<Vec<_>>().join(",");
    assert_eq!(tracestate.len(), 619);
    // 60 members of 154 bytes: 9,299 bytes.
    let baggage: String = (0..60).map(|i| format!("k{i:02}={}", "y".repeat(150))).collect::<Vec<_>>().join(",");
    assert!(baggage.len() > 8192);
    let jobs = [
        ("4bf92f3577b34da6a3ce929d0e0e4736", vec![("tracestate", tracestate.as_str())], Some("tracestate")),
        ("5bf92f3577b34da6a3ce929d0e0e4736", vec![("baggage", baggage.as_str())], Some("baggage")),
        ("6bf92f3577b34da6a3ce929d0e0e4736", vec![("tracestate", "v=1"), ("baggage", "a=b")], None),
    ];
    for (trace, headers, _) in &jobs {
        let parent = traceparent(trace);
        let mut extra = vec![("traceparent", parent.as_str())];
        extra.extend(headers.iter().copied());
        xadd_job(&mut conn, queue, "noop", "{}", &extra);
    }
    let worker = Service::spawn(consumer(&redis, &sink, queue, "w", &[]), logs.path(), "w");
    wait_until(SETTLE, "the three jobs", || done_counts(&mut conn, queue).len() == 3);
    assert_eq!(worker.terminate(), Some(0));

    let name = format!("process {queue}");
    let spans = sink
        .wait_for(Duration::from_secs(20), |spans| {
            jobs.iter().all(|(trace, _, _)| !named(spans, trace, &name).is_empty())
        })
        .await
        .unwrap_or_else(|partial| panic!("process spans not in the producer's traces: {partial:#?}"));
    for (trace, _, truncated) in &jobs {
        let process = named(&spans, trace, &name)[0];
        assert_eq!(process.parent_span_id.as_deref(), Some(span_id), "a child of the producer's span");
        assert_eq!(process.attr("jobstream.trace.context"), Some("continued"));
        assert_eq!(process.attr("jobstream.trace.context_truncated"), *truncated, "{process:?}");
    }
}
