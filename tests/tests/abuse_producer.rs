//! Abuse of the producer side: idempotency keys reused for other jobs or spelled in non-ASCII, producers and
//! consumers that disagree on a queue's partitions, hostile HTTP clients, a load run whose Redis fails, and a
//! lag Redis itself gets wrong. Real `redis-server`, real binaries.

use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use jobstream_tests::*;

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("run binary")
}

/// `producer serve` on a free port for `queue`, with a token and a 200-byte payload limit.
fn serve(redis: &RedisServer, logs: &std::path::Path, queue: &str, extra: &[&str], env: &[(&str, &str)]) -> Service {
    let mut cmd = plain("producer", redis);
    cmd.args(["serve", "--queue", queue, "--listen", "127.0.0.1:0", "--max-payload-bytes", "200"])
        .args(extra)
        .env("JOBSTREAM_API_TOKEN", "s3cret");
    for (name, value) in env {
        cmd.env(name, value);
    }
    Service::spawn(cmd, logs, "api")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

const AUTH: (&str, &str) = ("authorization", "Bearer s3cret");
const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn an_idempotency_key_reused_for_another_job_is_a_409_conflict_over_http() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = serve(&redis, logs.path(), "idem", &[], &[]);
    let addr = api.listen_addr();
    let post = |key: &str, body: &str| {
        let (status, _, body) =
            http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH, ("idempotency-key", key)], body.as_bytes());
        (status, json(&body))
    };
    let (status, first) = post("order-1", r#"{"kind":"noop","payload":{"amount":10}}"#);
    assert_eq!(status, 202, "{first}");
    let (status, again) = post("order-1", r#"{"kind":"noop","payload":{"amount":10}}"#);
    assert_eq!((status, &again["id"], &again["duplicate"]), (200, &first["id"], &serde_json::json!(true)), "{again}");

    let (status, other_payload) = post("order-1", r#"{"kind":"noop","payload":{"amount":99}}"#);
    assert_eq!(status, 409, "{other_payload}");
    assert_eq!(other_payload["id"], first["id"], "the conflict names the earlier job: {other_payload}");
    assert!(other_payload["error"].as_str().unwrap().contains("idempotency key"), "{other_payload}");
    let (status, other_kind) = post("order-1", r#"{"kind":"demo","payload":{"amount":10}}"#);
    assert_eq!((status, &other_kind["id"]), (409, &first["id"]), "{other_kind}");

    assert_eq!(xlen(&mut redis.conn(), "jobstream:{idem}"), 1, "only the first job is on the stream");
    assert_eq!(api.terminate(), Some(0));
}

#[test]
fn an_idempotency_key_reused_for_another_job_fails_the_cli_in_one_line() {
    let redis = RedisServer::start();
    let enqueue = |payload: &str| {
        run(
            plain("producer", &redis),
            &["enqueue", "--queue", "idem", "--kind", "noop", "--payload", payload, "--idempotency-key", "invoice-7"],
        )
    };
    let first = enqueue(r#"{"n":1}"#);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first_id = String::from_utf8(first.stdout).unwrap().split(' ').next().unwrap().to_owned();
    let same = enqueue(r#"{"n":1}"#);
    assert!(same.status.success(), "the same job again is the idempotent answer");
    assert!(String::from_utf8(same.stdout).unwrap().starts_with(&first_id));

    let other = enqueue(r#"{"n":2}"#);
    assert_eq!(other.status.code(), Some(1), "a conflict exits 1: {}", String::from_utf8_lossy(&other.stderr));
    assert!(other.stdout.is_empty(), "no job line for a refused job");
    let lines = stderr_lines(&other);
    assert_eq!(lines.len(), 1, "one line, no backtrace: {lines:?}");
    assert!(lines[0].contains("invoice-7") && lines[0].contains(&first_id), "{lines:?}");
    assert_eq!(xlen(&mut redis.conn(), "jobstream:{idem}"), 1);
}

#[test]
fn a_non_ascii_idempotency_key_is_refused_alike_on_every_path() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = serve(&redis, logs.path(), "idem", &[], &[]);
    let addr = api.listen_addr();
    let key = "clé-42";
    // The same key twice in the header: it must not be ignored (which enqueued two jobs).
    for _ in 0..2 {
        let (status, _, body) =
            http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH, ("idempotency-key", key)], br#"{"kind":"noop"}"#);
        assert_eq!(status, 400, "{body}");
        assert!(json(&body)["error"].as_str().unwrap().contains("idempotency key"), "{body}");
    }
    // Not even valid UTF-8 in the header.
    let mut raw = b"key-".to_vec();
    raw.push(0xff);
    let (status, _, _) = raw_post(addr, &[b"idempotency-key: ".as_slice(), &raw].concat(), br#"{"kind":"noop"}"#);
    assert_eq!(status, 400);
    // In the body.
    let body = format!(r#"{{"kind":"noop","idempotency_key":"{key}"}}"#);
    let (status, _, text) = http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH], body.as_bytes());
    assert_eq!(status, 400, "{text}");
    // On the command line.
    let out =
        run(plain("producer", &redis), &["enqueue", "--queue", "idem", "--kind", "noop", "--idempotency-key", key]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("idempotency key"));
    assert_eq!(xlen(&mut redis.conn(), "jobstream:{idem}"), 0, "no path enqueued a job under a refused key");
    assert_eq!(api.terminate(), Some(0));
}

/// A POST with one raw header line (bytes as given); returns status, head and body.
fn raw_post(addr: std::net::SocketAddr, header_line: &[u8], body: &[u8]) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\ncontent-type: application/json\r\n\
         authorization: Bearer s3cret\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(header_line);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn producers_and_consumers_refuse_a_partition_count_other_than_the_recorded_one() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let enqueue = |partitions: &str| {
        run(plain("producer", &redis), &["enqueue", "--queue", "parts", "--kind", "noop", "--partitions", partitions])
    };
    assert!(enqueue("4").status.success(), "the first use records 4 partitions");
    let recorded: Option<String> =
        redis::cmd("GET").arg("jobstream:{parts}:partitions").query(&mut redis.conn()).unwrap();
    assert_eq!(recorded.as_deref(), Some("4"));
    assert!(enqueue("4").status.success());

    let refused = enqueue("1");
    assert_eq!(refused.status.code(), Some(1));
    let lines = stderr_lines(&refused);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains('4') && lines[0].contains("--partitions"),
        "says recorded vs given and the fix: {lines:?}"
    );

    let load = run(plain("producer", &redis), &["load", "--queue", "parts", "--jobs", "10", "--no-progress"]);
    assert_eq!(load.status.code(), Some(1), "{}", String::from_utf8_lossy(&load.stderr));
    let stats = run(plain("producer", &redis), &["stats", "--queue", "parts", "--partitions", "2"]);
    assert_eq!(stats.status.code(), Some(1), "{}", String::from_utf8_lossy(&stats.stdout));

    let mut api = serve(&redis, logs.path(), "parts", &["--partitions", "8"], &[]);
    assert_eq!(api.wait_exit(Duration::from_secs(20)), Some(Some(1)), "serve refuses to start: {}", api.log());
    assert!(api.log().contains("partitions"), "{}", api.log());

    let mut cmd = plain("consumer", &redis);
    cmd.args(["--queue", "parts", "--partitions", "2", "--listen", "127.0.0.1:0", "--block", "200ms"]);
    let mut worker = Service::spawn(cmd, logs.path(), "worker");
    let code = worker.wait_exit(Duration::from_secs(20));
    assert!(matches!(code, Some(Some(c)) if c != 0), "the consumer refuses to start: {code:?} {}", worker.log());
    assert!(worker.log().contains("partitions"), "{}", worker.log());
    // The stranded-looking layout is untouched: the four partitions still hold the two jobs, nothing else.
    let mut conn = redis.conn();
    let total: u64 = (0..4).map(|i| xlen(&mut conn, &format!("jobstream:{{parts:{i}}}"))).sum();
    assert_eq!(total, 2);
    assert_eq!(xlen(&mut conn, "jobstream:{parts}"), 0);
}

#[test]
fn serve_answers_every_error_in_json_with_its_standard_status() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = serve(&redis, logs.path(), "web", &[], &[]);
    let addr = api.listen_addr();

    let (status, _, body) = http_exchange(addr, "GET", "/nowhere", &[], b"");
    assert_eq!(status, 404);
    assert!(json(&body)["error"].is_string(), "{body}");
    let (status, head, body) = http_exchange(addr, "GET", "/v1/jobs", &[], b"");
    assert_eq!(status, 405);
    assert!(json(&body)["error"].is_string(), "{body}");
    assert!(head.to_ascii_lowercase().contains("allow: post"), "{head}");

    let (status, head, body) = http_exchange(addr, "POST", "/v1/jobs", &[JSON], br#"{"kind":"noop"}"#);
    assert_eq!(status, 401);
    assert!(json(&body)["error"].is_string());
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    let (status, head, _) =
        http_exchange(addr, "POST", "/v1/jobs", &[JSON, ("authorization", "Bearer nope")], br#"{"kind":"noop"}"#);
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} s3cret");
        let (status, _, body) =
            http_exchange(addr, "POST", "/v1/jobs", &[JSON, ("authorization", &auth)], br#"{"kind":"noop"}"#);
        assert_eq!(status, 202, "scheme {scheme}: {body}");
    }

    // Too large is 413, whether the payload limit (200 bytes) or the body limit trips.
    let over_payload = format!(r#"{{"kind":"noop","payload":{{"x":"{}"}}}}"#, "y".repeat(1000));
    let (status, _, body) = http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH], over_payload.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(json(&body)["error"].is_string());
    let over_body = format!(r#"{{"kind":"noop","payload":{{"x":"{}"}}}}"#, "y".repeat(5_000));
    let (status, _, body) = http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH], over_body.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");
    assert_eq!(api.terminate(), Some(0));
}

#[test]
fn serve_cuts_off_a_client_that_stalls_after_its_headers() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = serve(&redis, logs.path(), "web", &[], &[("JOBSTREAM_REQUEST_TIMEOUT", "1s")]);
    let addr = api.listen_addr();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    stream
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nauthorization: Bearer s3cret\r\n\
              content-type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":",
        )
        .unwrap();
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    let waited = start.elapsed();
    assert!(read.is_ok(), "the server never cut the stalled request off: {read:?} after {waited:?}");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(waited < Duration::from_secs(5), "cut off after the 1 s bound, not {waited:?}");
    assert_eq!(http_get(addr, "/healthz").0, 200, "the server still serves others");
    assert_eq!(api.terminate(), Some(0));
}

#[test]
fn unknown_kinds_share_one_metric_label() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let api = serve(&redis, logs.path(), "web", &[], &[]);
    let addr = api.listen_addr();
    for i in 0..20 {
        let body = format!(r#"{{"kind":"attacker-{i}"}}"#);
        assert_eq!(http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH], body.as_bytes()).0, 202);
    }
    assert_eq!(http_exchange(addr, "POST", "/v1/jobs", &[JSON, AUTH], br#"{"kind":"noop"}"#).0, 202);
    let (_, text) = http_get(addr, "/metrics");
    assert!(!text.contains("attacker"), "a caller's kind strings make no series: {text}");
    assert!(text.contains(r#"jobstream_enqueued_total{queue="web",kind="other"} 20"#), "{text}");
    assert!(text.contains(r#"jobstream_enqueued_total{queue="web",kind="noop"} 1"#), "{text}");
    assert_eq!(api.terminate(), Some(0));
}

#[test]
fn load_reports_what_it_sent_when_redis_dies_mid_run() {
    let mut redis = RedisServer::start_with(true);
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = plain("producer", &redis);
    cmd.args(["load", "--queue", "dies", "--rate", "500", "--duration", "60s", "--json", "--no-progress"]);
    let out_path = logs.path().join("report.json");
    cmd.stdout(std::fs::File::create(&out_path).unwrap());
    let mut load = {
        let log = std::fs::File::create(logs.path().join("load.log")).unwrap();
        cmd.stderr(log).spawn().unwrap()
    };
    let mut conn = redis.conn();
    wait_until(Duration::from_secs(20), "some jobs to be sent", || xlen(&mut conn, "jobstream:{dies}") >= 100);
    drop(conn);
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = load.kill();
            panic!("load did not stop after Redis died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&out_path).unwrap();
    let report = json(text.lines().next().unwrap_or_else(|| {
        panic!(
            "no report on stdout; stderr: {}",
            std::fs::read_to_string(logs.path().join("load.log")).unwrap_or_default()
        )
    }));
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 100, "{report}");
    assert!(report["first_error"].is_string(), "{report}");
    redis.restart();
    let written = xlen(&mut redis.conn(), "jobstream:{dies}");
    assert!(sent <= written, "every job reported sent is in Redis: {sent} reported, {written} written");
}

#[test]
fn load_counts_the_jobs_a_partly_refused_pipeline_wrote() {
    let redis = RedisServer::start_args(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let out = run(
        plain("producer", &redis),
        &[
            "load",
            "--queue",
            "full",
            "--jobs",
            "400",
            "--batch",
            "400",
            "--concurrency",
            "1",
            "--payload-bytes",
            "20000",
            "--json",
            "--no-progress",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(String::from_utf8_lossy(&out.stdout).lines().next().expect("a report"));
    let written = xlen(&mut redis.conn(), "jobstream:{full}");
    assert!(written > 0 && written < 400, "the pipeline was refused part way: {written} written");
    assert_eq!(report["sent"].as_u64(), Some(written), "{report}");
    assert_eq!(report["enqueue_errors"].as_u64(), Some(400 - written), "{report}");
    assert!(report["first_error"].as_str().unwrap().contains("OOM"), "{report}");
}

#[test]
fn a_lag_redis_contradicts_is_reported_unknown() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let mut conn = redis.conn();
    for _ in 0..5 {
        let fields = job_fields("noop");
        let fields: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        xadd_raw(&mut conn, "lag", &fields);
    }
    let stream = "jobstream:{lag}";
    redis::cmd("XGROUP").arg("CREATE").arg(stream).arg("workers").arg("0").query::<()>(&mut conn).unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("c")
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    // Everything is delivered; this is the state Redis 7.0 can come back with after an AOF rewrite and a
    // restart: the read counter behind the last delivered id, so XINFO reports a lag with nothing unread.
    redis::cmd("XGROUP")
        .arg("SETID")
        .arg(stream)
        .arg("workers")
        .arg("$")
        .arg("ENTRIESREAD")
        .arg(0)
        .query::<()>(&mut conn)
        .unwrap();
    let info: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query(&mut conn).unwrap();
    assert_eq!(info[0]["lag"], redis::Value::Int(5), "the false lag is set up");

    let out = run(plain("producer", &redis), &["stats", "--queue", "lag", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = json(String::from_utf8_lossy(&out.stdout).lines().next().unwrap());
    assert_eq!(stats["groups"][0]["lag"], serde_json::Value::Null, "unknown, not 5: {stats}");
    let text = run(plain("producer", &redis), &["stats", "--queue", "lag"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("lag ?"), "{}", String::from_utf8_lossy(&text.stdout));

    let api = serve(&redis, logs.path(), "lag", &[], &[]);
    let (_, metrics) = http_get(api.listen_addr(), "/metrics");
    assert!(metrics.contains(r#"jobstream_group_pending{queue="lag",group="workers"} 5"#), "{metrics}");
    assert!(!metrics.contains("jobstream_group_lag{"), "no false backlog in the lag gauge: {metrics}");

    // A real backlog is still reported as it is.
    let fields = job_fields("noop");
    let fields: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
    xadd_raw(&mut conn, "lag", &fields);
    redis::cmd("XGROUP").arg("SETID").arg(stream).arg("workers").arg("0").query::<()>(&mut conn).unwrap();
    let out = run(plain("producer", &redis), &["stats", "--queue", "lag", "--json"]);
    let stats = json(String::from_utf8_lossy(&out.stdout).lines().next().unwrap());
    assert_eq!(stats["groups"][0]["lag"], 6, "{stats}");
    assert_eq!(api.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_reports_an_idempotency_conflict_as_a_typed_error() {
    let redis = RedisServer::start();
    let pool = jobstream::connection::pool(&redis.url(), &Default::default()).unwrap();
    let producer = jobstream::Producer::new(pool, &jobstream::Queue::new("lib").unwrap());
    let key = jobstream::IdempotencyKey::parse("payment-1").unwrap();
    let ttl = Duration::from_secs(60);
    let first = producer.enqueue_job_once(producer.job_json("noop", r#"{"a":1}"#).unwrap(), &key, ttl).await.unwrap();
    let again = producer.enqueue_job_once(producer.job_json("noop", r#"{"a":1}"#).unwrap(), &key, ttl).await.unwrap();
    assert!(again.duplicate && again.job_id == first.job_id);
    let refused =
        producer.enqueue_job_once(producer.job_json("noop", r#"{"a":2}"#).unwrap(), &key, ttl).await.unwrap_err();
    match refused {
        jobstream::Error::IdempotencyConflict { key: k, job_id } => {
            assert_eq!((k, job_id), (key, first.job_id));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    // The record names the fingerprint beside the job, so any producer compares alike.
    let record: String = redis::cmd("GET").arg("jobstream:{lib}:idem:payment-1").query(&mut redis.conn()).unwrap();
    assert_eq!(record.split(' ').count(), 4, "{record}");
}

#[test]
fn an_idempotent_enqueue_at_maxmemory_is_refused_whole() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    redis::cmd("SET").arg("ballast").arg(vec![b'x'; 3 << 20]).query::<()>(&mut conn).unwrap();
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1mb").query::<()>(&mut conn).unwrap();
    let out =
        run(plain("producer", &redis), &["enqueue", "--queue", "full", "--kind", "noop", "--idempotency-key", "k-1"]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert!(lines.len() == 1 && lines[0].contains("OOM"), "{lines:?}");
    let keys: Vec<String> = redis::cmd("KEYS").arg("jobstream:*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "nothing written, not even the partition record: {keys:?}");
}
