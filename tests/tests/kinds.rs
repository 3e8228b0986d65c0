//! Kinds and queues: every worker of a group must handle every kind it may read, so a kind routed to a queue
//! whose workers do not all know it is made visible, never lost in silence: workers advertise their kinds, the
//! producer warns about (or refuses) a kind no live worker handles, and a worker that dead-letters an unknown
//! kind names the consumer of its group that does handle it.
//!
//! Real `redis-server`, real `producer` and `consumer` binaries. The other-language worker of the mixed group is
//! its advertisement in `<prefix>:{Q}:kinds`, written as `docs/wire-format.md` tells such a worker to write it.

use std::time::Duration;

use jobstream_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misrouted_kind_is_warned_about_refused_on_request_and_named_in_its_dead_letter() {
    let fx = Fixture::start().await;
    let queue = "mixed";
    let worker = fx.spawn(fx.consumer(queue, "rust-1", &[]), "w");
    let mut conn = fx.conn();
    let kinds_key = format!("{}:kinds", keys(queue).stream);
    wait_until(Duration::from_secs(20), "the worker to advertise its kinds", || {
        let kinds: Vec<String> = redis::cmd("HKEYS").arg(&kinds_key).query(&mut conn).unwrap();
        kinds.contains(&"demo".to_owned()) && kinds.contains(&"noop".to_owned())
    });
    let advertised: String = redis::cmd("HGET").arg(&kinds_key).arg("noop").query(&mut conn).unwrap();
    let advertised: serde_json::Value = serde_json::from_str(&advertised).unwrap();
    assert_eq!((advertised["consumer"].as_str(), advertised["language"].as_str()), (Some("rust-1"), Some("rust")));

    // A Node worker of the same group handles `resize` (its advertisement, as the wire format describes it).
    let node = serde_json::json!({ "consumer": "node-1", "language": "node", "seen_at": jobstream::clock::now_ms() });
    let _: () = redis::cmd("HSET").arg(&kinds_key).arg("resize").arg(node.to_string()).query(&mut conn).unwrap();

    // Nobody handles `nobody`: the producer says so on stderr and still enqueues (the default)…
    let out = fx.producer().args(["enqueue", "--queue", queue, "--kind", "nobody"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: no live worker of this queue handles kind \"nobody\""), "{stderr}");
    assert!(stderr.contains("demo") && stderr.contains("resize"), "it lists the handled kinds: {stderr}");
    // …or refuses it, enqueueing nothing, when asked to.
    let before = xlen(&mut conn, &keys(queue).stream);
    let out = fx
        .producer()
        .args(["enqueue", "--queue", queue, "--kind", "nobody", "--require-handled-kind"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to enqueue"));
    assert_eq!(xlen(&mut conn, &keys(queue).stream), before, "nothing was enqueued");

    // `resize` is handled in the group, so no warning — but the Rust worker that reads it cannot run it: its dead
    // letter says who handles it and what to do.
    let out = fx.producer().args(["enqueue", "--queue", queue, "--kind", "resize"]).output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "a handled kind is not warned about");
    let dead_key = keys(queue).dead;
    wait_until(Duration::from_secs(20), "both jobs dead-lettered", || xlen(&mut conn, &dead_key) == 2);
    assert_eq!(worker.terminate(), Some(0));
    let dead = dead_entries(&mut conn, queue);
    let by_kind = |kind: &str| dead.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("{kind}: {dead:?}"));
    assert_eq!(by_kind("nobody")["dead.error"], "no handler for kind \"nobody\"");
    let resize = &by_kind("resize")["dead.error"];
    assert!(
        resize.starts_with("no handler for kind \"resize\"; consumer node-1 (node) of this queue handles it"),
        "{resize}"
    );
    assert!(resize.contains("give kind \"resize\" its own queue"), "{resize}");
    assert!(by_kind("resize")["dead.reason"] == "unknown_kind");
}
