//! Periodic jobs (`producer cron`): one job per tick however many consumers run and whichever die; pause,
//! resume and remove take effect; bad names, cron expressions and time zones are refused as usage errors.
//!
//! Real `redis-server`, real `producer` and `consumer` binaries. The jobs' ticks are read from their entries'
//! `cron_tick` field, their runs from the `done` hash the shipped `noop` kind writes, and their traces from the
//! spans the consumers export.

use std::collections::{BTreeMap, HashSet};
use std::process::Output;
use std::time::{Duration, Instant};

use jobstream_tests::*;

fn cron(fx: &Fixture, args: &[&str]) -> Output {
    fx.producer().arg("cron").args(args).output().expect("run producer cron")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "producer cron failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The entries a schedule made, in stream order.
fn cron_entries(conn: &mut redis::Connection, queue: &str) -> Vec<BTreeMap<String, String>> {
    entries_text(conn, &keys(queue).stream).into_iter().filter(|e| e.contains_key("cron_tick")).collect()
}

fn ticks(entries: &[BTreeMap<String, String>]) -> Vec<u64> {
    entries.iter().map(|e| e["cron_tick"].parse().expect("tick is ms")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tick_makes_one_job_across_three_consumers_one_killed() {
    let fx = Fixture::start().await;
    let queue = "cron";
    let mut workers: Vec<_> =
        (0..3).map(|i| fx.spawn(fx.consumer(queue, &format!("w{i}"), &[]), &format!("w{i}"))).collect();
    let added = ok(cron(&fx, &["add", "heartbeat", "--queue", queue, "--every", "1s", "--kind", "noop"]));
    assert!(added.contains("schedule heartbeat added"), "{added}");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    workers.remove(0).kill9();
    std::thread::sleep(Duration::from_millis(3000));
    ok(cron(&fx, &["pause", "--queue", queue, "heartbeat"]));
    let ran_for = started.elapsed();
    // A tick being enqueued as the pause landed finishes within a round.
    std::thread::sleep(Duration::from_millis(400));

    let mut conn = fx.conn();
    let entries = cron_entries(&mut conn, queue);
    let ticks = ticks(&entries);
    eprintln!("{} jobs over {ran_for:?}, ticks {ticks:?}", ticks.len());
    let unique: HashSet<u64> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick made two jobs: {ticks:?}");
    let mut sorted = ticks.clone();
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[1] - w[0] == 1000), "a tick is missing: {sorted:?}");
    assert!(sorted.len() >= 4, "about 5 ticks expected in {ran_for:?}: {sorted:?}");
    assert!(sorted.iter().all(|t| t % 1000 == 0), "every-1s ticks sit on whole seconds: {sorted:?}");

    // Each job ran once, with a fresh id, and started its own trace at a `send` span naming its tick.
    let ids: HashSet<&str> = entries.iter().map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), entries.len(), "job ids are fresh per tick");
    wait_until(Duration::from_secs(10), "every tick's job to run", || {
        let done = done_counts(&mut conn, queue);
        ids.iter().all(|id| done.contains_key(*id))
    });
    let done = done_counts(&mut conn, queue);
    assert!(ids.iter().all(|id| done[*id] == 1), "a tick's job ran twice: {done:?}");
    // The SIGKILLed consumer may take the span of the tick it enqueued last with it, unexported.
    let mut sends = Vec::new();
    wait_until(Duration::from_secs(10), "the ticks' send spans", || {
        sends = fx.sink.spans().into_iter().filter(|s| s.attr("jobstream.cron.name") == Some("heartbeat")).collect();
        sends.len() + 1 >= ticks.len()
    });
    let trace_of_tick: BTreeMap<u64, String> = entries
        .iter()
        .map(|e| (e["cron_tick"].parse().unwrap(), e["traceparent"].split('-').nth(1).unwrap().to_owned()))
        .collect();
    let mut span_ticks = HashSet::new();
    for span in &sends {
        assert!(span.name.starts_with("send "), "{}", span.name);
        assert_eq!(span.parent_span_id, None, "a tick's send span is a trace root");
        let tick: u64 = span.attr("jobstream.cron.tick").unwrap().parse().unwrap();
        assert!(span_ticks.insert(tick), "two send spans for tick {tick}");
        assert_eq!(trace_of_tick.get(&tick), Some(&span.trace_id), "the job of tick {tick} carries its span's trace");
    }
    let traces: HashSet<&str> = sends.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), sends.len(), "each tick starts its own trace");

    for worker in workers {
        assert_eq!(worker.terminate(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_remove_take_effect_and_bad_input_is_refused() {
    let fx = Fixture::start().await;
    let queue = "cron-control";
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let mut conn = fx.conn();
    let count = |conn: &mut redis::Connection| cron_entries(conn, queue).len();
    ok(cron(&fx, &["add", "tick", "--queue", queue, "--every", "1s", "--kind", "noop", "--payload", r#"{"n":1}"#]));
    wait_until(Duration::from_secs(5), "a first job", || count(&mut conn) >= 1);

    ok(cron(&fx, &["pause", "--queue", queue, "tick"]));
    std::thread::sleep(Duration::from_millis(400));
    let paused_at = count(&mut conn);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(cron(&fx, &["list", "--queue", queue, "--json"]))).unwrap();
    assert_eq!(listed[0]["name"], "tick");
    assert_eq!(listed[0]["paused"], true);
    assert_eq!(listed[0]["payload"], serde_json::json!({"n": 1}));
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(count(&mut conn), paused_at, "a paused schedule made a job");

    ok(cron(&fx, &["resume", "--queue", queue, "tick"]));
    wait_until(Duration::from_secs(5), "a job after resume", || count(&mut conn) > paused_at);
    let text = ok(cron(&fx, &["list", "--queue", queue]));
    assert!(text.starts_with("tick every 1s kind=noop running"), "{text}");

    ok(cron(&fx, &["remove", "--queue", queue, "tick"]));
    std::thread::sleep(Duration::from_millis(400));
    let removed_at = count(&mut conn);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(count(&mut conn), removed_at, "a removed schedule made a job");
    assert_eq!(ok(cron(&fx, &["list", "--queue", queue, "--json"])).trim(), "[]");
    let gone = cron(&fx, &["remove", "--queue", queue, "tick"]);
    assert_eq!(gone.status.code(), Some(1), "removing an unknown schedule fails");
    assert!(stderr_lines(&gone).concat().contains("not found"), "{:?}", stderr_lines(&gone));

    let add = |extra: &[&str]| {
        let mut args = vec!["add", "--queue", queue, "--kind", "noop"];
        args.extend_from_slice(extra);
        cron(&fx, &args)
    };
    for (bad, says) in [
        (&["bad name", "--every", "1s"][..], "schedule name"),
        (&["x", "--cron", "61 * * * *"][..], "cron expression"),
        (&["x", "--cron", "* * *"][..], "cron expression"),
        (&["x", "--cron", "*/5 * * * *", "--tz", "Mars/Olympus"][..], "time zone"),
        (&["x", "--every", "500ms"][..], "every"),
        (&["x", "--every", "1s", "--cron", "* * * * *"][..], "cannot be used with"),
        (&["x", "--every", "1s", "--payload", "{not json"][..], "JSON"),
    ] {
        let out = add(bad);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {lines:?}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(says), "{bad:?}: {lines:?}");
        // Ours are one line; clap's own (conflicting flags) add its usage hint.
        assert!(lines.len() == 1 || says == "cannot be used with", "{bad:?}: one line: {lines:?}");
    }
    assert_eq!(ok(cron(&fx, &["list", "--queue", queue, "--json"])).trim(), "[]", "nothing refused was added");
    assert_eq!(worker.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticks_missed_while_no_consumer_ran_make_one_job_on_recovery() {
    let fx = Fixture::start().await;
    let queue = "cron-missed";
    ok(cron(&fx, &["add", "tick", "--queue", queue, "--every", "1s", "--kind", "noop"]));
    let added_ms = jobstream::clock::now_ms();
    // About three ticks pass with no consumer at all.
    std::thread::sleep(Duration::from_millis(3300));
    let worker = fx.spawn(fx.consumer(queue, "w", &[]), "w");
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(5), "the recovery job", || !cron_entries(&mut conn, queue).is_empty());
    let recovered = ticks(&cron_entries(&mut conn, queue))[0];
    let started_ms = jobstream::clock::now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    let ticks = ticks(&cron_entries(&mut conn, queue));
    eprintln!("added at {added_ms}, ticks {ticks:?}");
    assert!(recovered >= added_ms + 2000, "the recovery job is the latest missed tick, not the first: {ticks:?}");
    assert_eq!(ticks.iter().filter(|t| **t <= started_ms).count(), 1, "missed ticks ran as a burst: {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 1000), "after recovery every tick runs: {ticks:?}");
    assert!(ticks.len() >= 2, "the schedule keeps ticking after recovery: {ticks:?}");
    assert_eq!(worker.terminate(), Some(0));
}
