//! At-least-once under faults: workers killed with SIGKILL or stopped with SIGTERM under load, slow jobs,
//! always-failing jobs, and Redis killed and restarted. Every job is checked through the `done` hash the shipped
//! job kinds write: a missing id is a lost job, a count above 1 a duplicate.

use std::collections::HashSet;
use std::time::Duration;

use jobstream_tests::*;

/// A stream entry with its fields as raw bytes.
type RawEntry = (String, Vec<(String, Vec<u8>)>);

fn producer(redis: &RedisServer, sink: &OtlpSink) -> std::process::Command {
    traced("producer", redis, sink, "test-producer")
}

fn report(test: &str, jobs: usize, done: &std::collections::HashMap<String, u64>) -> (usize, u64) {
    let duplicated = done.values().filter(|&&n| n > 1).count();
    let extra: u64 = done.values().map(|n| n.saturating_sub(1)).sum();
    let lost = jobs - done.len();
    eprintln!("{test}: {jobs} jobs, {lost} lost, {duplicated} run more than once ({extra} extra runs)");
    (lost, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_with_sigkill_loses_no_job() {
    let fx = Fixture::start().await;
    let queue = "crash";
    let flags = ["--concurrency", "64", "--visibility-timeout", "1s", "--demo-latency-scale", "0.05"];
    let mut workers: Vec<_> =
        (0..3).map(|i| fx.spawn(fx.consumer(queue, &format!("w{i}"), &flags), &format!("w{i}"))).collect();
    let jobs = enqueue(producer(&fx.redis, &fx.sink), queue, "demo", "{}", 3000);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(60), "a third of the jobs to finish", || {
        done_counts(&mut conn, queue).len() >= 1000
    });
    let victim = workers.remove(0);
    victim.kill9();
    let victim_pending = pending_of(&mut conn, queue, "workers", "w0");
    wait_until(Duration::from_secs(60), "every job to finish", || done_counts(&mut conn, queue).len() == jobs.len());
    for worker in workers {
        assert_eq!(worker.terminate(), Some(0));
    }
    let done = done_counts(&mut conn, queue);
    let (lost, extra) = report("kill -9", jobs.len(), &done);
    assert_eq!(lost, 0);
    assert!(jobs.iter().all(|j| done.contains_key(&j.job_id)));
    assert_eq!(pending(&mut conn, queue, "workers"), 0, "nothing left pending");
    assert!(victim_pending > 0, "the victim died with jobs in flight");
    assert!(extra <= 64 * 2, "duplicates are bounded by what the dead worker held: {extra}");
    let spans = fx.sink.spans();
    assert!(
        spans.iter().any(|s| s.attr("jobstream.reclaimed_from") == Some("w0")),
        "reclaimed jobs say whose they were"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_running_jobs_and_loses_none() {
    let fx = Fixture::start().await;
    let queue = "drain";
    let flags = ["--concurrency", "16", "--demo-latency-scale", "0.5"];
    let stopping = fx.spawn(fx.consumer(queue, "stopping", &flags), "stopping");
    let jobs = enqueue(producer(&fx.redis, &fx.sink), queue, "demo", "{}", 400);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(60), "some jobs to finish", || done_counts(&mut conn, queue).len() >= 50);
    assert!(pending(&mut conn, queue, "workers") > 0, "jobs are running when SIGTERM arrives");
    assert_eq!(stopping.terminate(), Some(0), "a drained worker exits 0");
    assert_eq!(pending(&mut conn, queue, "workers"), 0, "the stopped worker finished and acknowledged all it held");

    let other = fx.spawn(fx.consumer(queue, "other", &flags), "other");
    wait_until(Duration::from_secs(60), "every job to finish", || done_counts(&mut conn, queue).len() == jobs.len());
    assert_eq!(other.terminate(), Some(0));
    let done = done_counts(&mut conn, queue);
    let (lost, extra) = report("SIGTERM", jobs.len(), &done);
    assert_eq!((lost, extra), (0, 0), "zero lost, zero run twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_slower_than_the_visibility_timeout_is_not_stolen_from_a_live_worker() {
    let fx = Fixture::start().await;
    let queue = "slow";
    // Each demo job takes about 2.1 s here, four times the visibility timeout.
    let flags = ["--concurrency", "1", "--visibility-timeout", "500ms", "--demo-latency-scale", "15"];
    let a = fx.spawn(fx.consumer(queue, "a", &flags), "a");
    let b = fx.spawn(fx.consumer(queue, "b", &flags), "b");
    let jobs = enqueue(producer(&fx.redis, &fx.sink), queue, "demo", "{}", 3);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(60), "the slow jobs to finish", || done_counts(&mut conn, queue).len() == 3);
    assert_eq!(a.terminate(), Some(0));
    assert_eq!(b.terminate(), Some(0));
    let done = done_counts(&mut conn, queue);
    assert!(jobs.iter().all(|j| done.get(&j.job_id) == Some(&1)), "each slow job ran once: {done:?}");
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(10), |s| s.iter().filter(|s| s.name == "process slow").count() >= 3)
        .await
        .unwrap();
    assert_eq!(spans.iter().filter(|s| s.name == "process slow").count(), 3, "one attempt per job");
    assert!(spans.iter().all(|s| s.attr("jobstream.reclaimed_from").is_none()), "nothing was reclaimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_failing_jobs_back_off_then_go_to_the_dead_stream() {
    let fx = Fixture::start().await;
    let queue = "doomed";
    let flags =
        ["--demo-failure-rate", "1", "--max-attempts", "3", "--retry-base-delay", "200ms", "--retry-max-delay", "10s"];
    let worker = fx.spawn(fx.consumer(queue, "w", &flags), "w");
    let jobs = enqueue(producer(&fx.redis, &fx.sink), queue, "demo", r#"{"n":1}"#, 2);
    let mut conn = fx.conn();
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(30), "both jobs to be dead-lettered", || xlen(&mut conn, &dead_key) == 2);
    assert_eq!(worker.terminate(), Some(0));
    assert!(done_counts(&mut conn, queue).is_empty(), "no attempt succeeded");
    assert_eq!(pending(&mut conn, queue, "workers"), 0);
    let delayed: u64 = redis::cmd("ZCARD").arg(keys(queue).delayed).query(&mut conn).unwrap();
    assert_eq!(delayed, 0, "nothing left scheduled");

    let dead = dead_entries(&mut conn, queue);
    let ids: HashSet<&str> = dead.iter().map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, jobs.iter().map(|j| j.job_id.as_str()).collect());
    for entry in &dead {
        assert_eq!(entry["dead.reason"], "max_attempts");
        assert_eq!(entry["attempt"], "3");
        assert_eq!(entry["payload"], r#"{"n":1}"#);
        assert!(entry["dead.error"].contains("simulated"), "{}", entry["dead.error"]);
        let job = jobs.iter().find(|j| j.job_id == entry["id"]).unwrap();
        assert!(entry["traceparent"].contains(&job.trace_id), "the original trace context is kept");
    }

    let spans = fx
        .sink
        .wait_for(Duration::from_secs(10), |s| s.iter().filter(|s| s.name == "process doomed").count() == 6)
        .await
        .unwrap_or_else(|p| {
            panic!("expected 6 process spans, got {}", p.iter().filter(|s| s.name == "process doomed").count())
        });
    for job in &jobs {
        let mut attempts = named(&spans, &job.trace_id, "process doomed");
        attempts.sort_by_key(|s| s.start_ns);
        let numbers: Vec<&str> = attempts.iter().map(|s| s.attr("jobstream.job.attempt").unwrap()).collect();
        assert_eq!(numbers, ["1", "2", "3"], "three attempts in the job's one trace");
        let send = named(&spans, &job.trace_id, "send doomed")[0];
        for attempt in &attempts {
            assert_eq!(attempt.status, "error");
            assert_eq!(
                attempt.parent_span_id.as_deref(),
                Some(send.span_id.as_str()),
                "each attempt continues the trace"
            );
        }
        // Back-off with equal jitter: [100, 200] ms after attempt 1, [200, 400] ms after attempt 2.
        let gap = |a: &ReceivedSpan, b: &ReceivedSpan| (b.start_ns - a.end_ns) / 1_000_000;
        assert!(gap(attempts[0], attempts[1]) >= 100, "first back-off {} ms", gap(attempts[0], attempts[1]));
        assert!(gap(attempts[1], attempts[2]) >= 200, "second back-off {} ms", gap(attempts[1], attempts[2]));
        let outcomes: Vec<&str> = attempts
            .iter()
            .flat_map(|s| {
                s.events.iter().filter(|(n, _)| n == "settle").map(|(_, a)| a["jobstream.settle.outcome"].as_str())
            })
            .collect();
        assert_eq!(outcomes, ["retry", "retry", "dead"]);
    }

    // Replay both; a worker that no longer fails runs them, and each new trace links to the old one.
    let replay = producer(&fx.redis, &fx.sink).args(["dead", "replay", "--all", "--queue", queue]).output().unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(String::from_utf8_lossy(&replay.stdout).lines().count(), 2);
    assert_eq!(xlen(&mut conn, &dead_key), 0, "replayed entries leave the dead stream");
    let healthy = fx.spawn(fx.consumer(queue, "healthy", &[]), "healthy");
    wait_until(Duration::from_secs(30), "the replayed jobs to run", || done_counts(&mut conn, queue).len() == 2);
    assert_eq!(healthy.terminate(), Some(0));
    let spans = fx
        .sink
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().filter(|s| s.name == "process doomed" && s.status != "error").count() == 2
        })
        .await
        .unwrap_or_else(|p| panic!("replayed runs not exported: {} spans", p.len()));
    for job in &jobs {
        let send = spans
            .iter()
            .find(|s| {
                s.attr("messaging.operation.name") == Some("replay") && s.attr("jobstream.job.id") == Some(&job.job_id)
            })
            .expect("a replay send span");
        assert_ne!(send.trace_id, job.trace_id, "a replay starts a new trace");
        assert!(send.links.iter().any(|(trace, _)| trace == &job.trace_id), "linked to the trace the job died in");
        let run = named(&spans, &send.trace_id, "process doomed");
        assert_eq!(run.len(), 1);
        assert_eq!(run[0].parent_span_id.as_deref(), Some(send.span_id.as_str()));
        assert_eq!(run[0].attr("jobstream.job.attempt"), Some("1"));
        assert_eq!(send.attr("messaging.message.id"), run[0].attr("messaging.message.id"), "the new entry's id");
        assert!(send.attr("jobstream.replay.of").is_some_and(|id| id.contains('-')), "the dead entry's id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_report_length_lag_pending_and_dead() {
    let fx = Fixture::start().await;
    let queue = "counted";
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let mut conn = fx.conn();
    let bad: Vec<(&str, &[u8])> = vec![("v", b"7")];
    xadd_raw(&mut conn, queue, &bad);
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(30), "the bad entry to die", || xlen(&mut conn, &dead_key) == 1);
    assert_eq!(worker.terminate(), Some(0));
    enqueue(producer(&fx.redis, &fx.sink), queue, "noop", "{}", 3);

    let out = producer(&fx.redis, &fx.sink).args(["stats", "--json", "--queue", queue]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["length"], 4, "{stats}");
    assert_eq!(stats["dead"], 1);
    assert_eq!(stats["delayed"], 0);
    assert_eq!(stats["groups"][0]["name"], "workers");
    assert_eq!(stats["groups"][0]["lag"], 3, "three jobs not yet delivered");
    assert_eq!(stats["groups"][0]["pending"], 0);

    let list = producer(&fx.redis, &fx.sink).args(["dead", "list", "--queue", queue]).output().unwrap();
    let line = String::from_utf8(list.stdout).unwrap();
    assert!(line.contains("undecodable"), "{line}");
    let purge = producer(&fx.redis, &fx.sink).args(["dead", "purge", "--queue", queue]).output().unwrap();
    assert!(!purge.status.success(), "purge without --yes refuses");
    assert_eq!(xlen(&mut conn, &dead_key), 1);
    let purge = producer(&fx.redis, &fx.sink).args(["dead", "purge", "--yes", "--queue", queue]).output().unwrap();
    assert!(purge.status.success());
    assert_eq!(xlen(&mut conn, &dead_key), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_entries_are_dead_lettered_or_run_and_never_crash_the_worker() {
    let fx = Fixture::start().await;
    let queue = "garbage";
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let mut conn = fx.conn();
    let with = |changes: &[(&str, &str)], drop: &[&str]| -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> =
            job_fields("noop").into_iter().filter(|(k, _)| !drop.contains(&k.as_str())).collect();
        for (k, v) in changes {
            match fields.iter_mut().find(|(name, _)| name == k) {
                Some(field) => field.1 = v.to_string(),
                None => fields.push((k.to_string(), v.to_string())),
            }
        }
        fields
    };
    let add = |conn: &mut redis::Connection, fields: &[(String, String)]| {
        let raw: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        xadd_raw(conn, queue, &raw)
    };
    let tracestate_10k = format!("k={}", "x".repeat(10_000));
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("missing id", add(&mut conn, &with(&[], &["id"])), Some("undecodable")),
        ("bad json", add(&mut conn, &with(&[("payload", "{not json")], &[])), Some("undecodable")),
        ("wrong version", add(&mut conn, &with(&[("v", "9")], &[])), Some("undecodable")),
        ("attempt zero", add(&mut conn, &with(&[("attempt", "0")], &[])), Some("undecodable")),
        ("unknown kind", add(&mut conn, &with(&[("kind", "no-such-kind")], &[])), Some("unknown_kind")),
        ("not utf-8", xadd_raw(&mut conn, queue, &[("v", b"1"), ("payload", &[0xff, 0xfe])]), Some("undecodable")),
        ("garbage traceparent", add(&mut conn, &with(&[("traceparent", "garbage")], &[])), None),
        (
            "10 kB tracestate",
            add(&mut conn, &with(&[("traceparent", parent), ("tracestate", &tracestate_10k)], &[])),
            None,
        ),
        ("future field", add(&mut conn, &with(&[("x-new", "kept")], &[])), None),
    ];
    let expected_dead = cases.iter().filter(|c| c.2.is_some()).count();
    let expected_done = cases.len() - expected_dead;
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(30), "bad entries dead-lettered and good ones done", || {
        xlen(&mut conn, &dead_key) as usize == expected_dead && done_counts(&mut conn, queue).len() == expected_done
    });
    let good = enqueue(producer(&fx.redis, &fx.sink), queue, "noop", "{}", 1);
    wait_until(Duration::from_secs(30), "a good job after the garbage", || {
        done_counts(&mut conn, queue).contains_key(&good[0].job_id)
    });
    assert_eq!(worker.terminate(), Some(0), "the worker survived all of it and exits cleanly");
    assert_eq!(pending(&mut conn, queue, "workers"), 0);

    let dead = dead_entries(&mut conn, queue);
    for (name, id, reason) in &cases {
        let entry = dead.iter().find(|d| d["dead.source_id"] == *id);
        match reason {
            Some(reason) => {
                let entry = entry.unwrap_or_else(|| panic!("{name}: not dead-lettered"));
                assert_eq!(entry["dead.reason"], *reason, "{name}");
                assert!(!entry["dead.error"].is_empty(), "{name}: the error is recorded");
            }
            None => assert!(entry.is_none(), "{name}: should have run"),
        }
    }
    let missing_id = dead.iter().find(|d| d["dead.source_id"] == cases[0].1).unwrap();
    assert!(missing_id["dead.error"].contains("`id`"), "{}", missing_id["dead.error"]);
    let raw: Vec<RawEntry> = redis::cmd("XRANGE").arg(&dead_key).arg("-").arg("+").query(&mut conn).unwrap();
    let (_, not_utf8) =
        raw.iter().find(|(_, f)| f.iter().any(|(k, v)| k == "dead.source_id" && v == cases[5].1.as_bytes())).unwrap();
    assert!(not_utf8.iter().any(|(k, v)| k == "payload" && v == &[0xff, 0xfe]), "raw bytes kept byte for byte");

    let spans = fx
        .sink
        .wait_for(Duration::from_secs(10), |s| s.iter().filter(|s| s.name == "process garbage").count() >= cases.len())
        .await
        .unwrap();
    let by_message = |id: &str| {
        spans.iter().find(|s| s.name == "process garbage" && s.attr("messaging.message.id") == Some(id)).unwrap()
    };
    // Each entry dead-lettered without running is a failed `process` span with the conventions' exception event;
    // the others are not failed.
    for (name, id, reason) in &cases {
        let span = by_message(id);
        let exception = span.events.iter().find(|(event, _)| event == "messaging.process.exception");
        match reason {
            Some(reason) => {
                assert_eq!((span.status, span.attr("error.type")), ("error", Some(*reason)), "{name}: {span:#?}");
                let (_, exception) = exception.unwrap_or_else(|| panic!("{name}: no exception event: {span:#?}"));
                assert_eq!(exception.get("exception.type").map(String::as_str), Some(*reason), "{name}");
                assert_eq!(exception.get("exception.message"), Some(&span.status_message), "{name}");
            }
            None => assert!(span.status != "error" && exception.is_none(), "{name}: {span:#?}"),
        }
    }
    let garbage = by_message(&cases[6].1);
    assert_eq!(garbage.attr("jobstream.trace.context"), Some("invalid"));
    assert!(garbage.parent_span_id.is_none(), "a new root trace");
    // An oversized tracestate is cut by whole members (docs/delivery.md); the trace goes on.
    let big = by_message(&cases[7].1);
    assert_eq!(big.attr("jobstream.trace.context"), Some("continued"));
    assert_eq!(big.attr("jobstream.trace.context_truncated"), Some("tracestate"));
    assert_eq!(big.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(big.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_with_aof_loses_no_acknowledged_job() {
    let mut redis = RedisServer::start_with(true);
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let queue = "restart";
    let flags = ["--concurrency", "32", "--demo-latency-scale", "0.1", "--visibility-timeout", "2s"];
    let workers: Vec<_> = (0..2)
        .map(|i| {
            Service::spawn(consumer(&redis, &sink, queue, &format!("w{i}"), &flags), logs.path(), &format!("w{i}"))
        })
        .collect();
    let mut jobs = enqueue(producer(&redis, &sink), queue, "demo", "{}", 1000);
    let mut conn = redis.conn();
    wait_until(Duration::from_secs(60), "some jobs to finish", || done_counts(&mut conn, queue).len() >= 200);
    const READ_FAILED: &str = "reading the queue failed";
    let failed_reads = |w: &Service| w.log().matches(READ_FAILED).count();
    let before: Vec<usize> = workers.iter().map(failed_reads).collect();
    redis.kill();
    // Redis stays down until every worker's reader has met this outage (a worker whose slots were all busy would
    // otherwise have nothing to recover from, and log no recovery).
    wait_until(Duration::from_secs(30), "every worker to see a read fail", || {
        workers.iter().zip(&before).all(|(w, before)| failed_reads(w) > *before)
    });

    let refused = producer(&redis, &sink).args(["enqueue", "--queue", queue, "--kind", "demo"]).output().unwrap();
    assert!(!refused.status.success(), "an enqueue while Redis is down fails");
    assert!(refused.stdout.is_empty(), "and claims no job");
    assert!(String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("redis"), "with a clear error");

    redis.restart();
    jobs.extend(enqueue(producer(&redis, &sink), queue, "demo", "{}", 500));
    let mut conn = redis.conn();
    wait_until(Duration::from_secs(90), "every job to finish after the restart", || {
        done_counts(&mut conn, queue).len() == jobs.len()
    });
    for worker in workers {
        let log = worker.log();
        assert_eq!(worker.terminate(), Some(0), "worker log:\n{log}");
        let last_failure = log.rfind(READ_FAILED).expect("a read failed during the outage");
        assert!(log[last_failure..].contains("Redis reachable again"), "the worker recovered after it:\n{log}");
        assert!(log.lines().count() < 200, "no log flood: {} lines", log.lines().count());
    }
    let done = done_counts(&mut conn, queue);
    let (lost, _) = report("redis restart", jobs.len(), &done);
    assert_eq!(lost, 0);
    assert_eq!(pending(&mut conn, queue, "workers"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_without_persistence_recreates_the_group() {
    let mut redis = RedisServer::start();
    let sink = OtlpSink::start().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let queue = "amnesia";
    let worker = Service::spawn(consumer(&redis, &sink, queue, "w", &[]), logs.path(), "w");
    let first = enqueue(producer(&redis, &sink), queue, "noop", "{}", 1);
    let mut conn = redis.conn();
    wait_until(Duration::from_secs(30), "the first job", || {
        done_counts(&mut conn, queue).contains_key(&first[0].job_id)
    });
    redis.restart();
    let second = enqueue(producer(&redis, &sink), queue, "noop", "{}", 1);
    let mut conn = redis.conn();
    wait_until(Duration::from_secs(30), "a job after the group vanished", || {
        done_counts(&mut conn, queue).contains_key(&second[0].job_id)
    });
    assert_eq!(worker.terminate(), Some(0));
}
