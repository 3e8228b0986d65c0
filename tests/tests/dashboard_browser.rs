//! The dashboard (`producer serve` … `/ui/`) as a person uses it, in a real browser: Debian's Chromium, headless,
//! driven by `tests/browser/dashboard.mjs` (playwright-core, installed by `scripts/setup`) over real data made
//! by the real `producer` and `consumer` binaries against a private `redis-server`, with spans exported to an
//! OTLP sink. The script checks the login, the overview's counts against Redis, a retried job's attempts and trace
//! links, a replay of a dead letter from the UI (this side checks in Redis and the spans that the job ran
//! again), a read-only server, an XSS probe, a phone-sized screen, keyboard focus, and Redis going down. It also
//! takes the docs' screenshots: into `docs/` with `UPDATE_SCREENSHOTS=1`, else into a temp dir.
//!
//! And without a browser: every dashboard route refuses a request without credentials (401), the login's cookie
//! is `HttpOnly; Secure; SameSite=Strict`, and an action a browser says comes from another site is refused (403)
//! whatever credentials it carries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobstream_tests::*;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token";
const TRACE_TEMPLATE: &str = "http://trace.example/trace/{trace_id}";
/// Longest one run of the browser script may take (it has a watchdog of its own just under this).
const BROWSER_DEADLINE: Duration = Duration::from_secs(150);

fn ok(out: Output) -> String {
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `producer enqueue` of one job with extra flags; its `<job id> <trace id>` line.
fn enqueue_one(fx: &Fixture, queue: &str, kind: &str, payload: &str, flags: &[&str]) -> EnqueuedLine {
    let out = fx
        .producer()
        .args(["enqueue", "--queue", queue, "--kind", kind, "--payload", payload])
        .args(flags)
        .output()
        .expect("run producer");
    let text = ok(out);
    let (job_id, trace_id) = text.trim().split_once(' ').expect("<job id> <trace id>");
    EnqueuedLine { job_id: job_id.to_owned(), trace_id: trace_id.to_owned() }
}

/// `producer job show --json`.
fn show(fx: &Fixture, queue: &str, id: &str) -> Value {
    let out = fx.producer().args(["job", "show", "--queue", queue, "--json", id]).output().expect("run producer");
    serde_json::from_str(&ok(out)).expect("JSON status")
}

/// `producer serve` for `queue` with the token and the trace link template; its address is read from its log.
fn serve(fx: &Fixture, queue: &str, name: &str, extra: &[&str]) -> Service {
    let mut cmd = fx.producer();
    cmd.args(["serve", "--queue", queue, "--listen", "127.0.0.1:0", "--trace-url-template", TRACE_TEMPLATE])
        .args(extra)
        .env("JOBSTREAM_API_TOKEN", TOKEN);
    fx.spawn(cmd, name)
}

/// What Redis says of a queue, as the overview shows it: the stream's length, the dead and delayed counts, and
/// the `workers` group's lag, pending count and consumers (no group: lag unknown, nothing pending, no consumer).
fn redis_counts(conn: &mut redis::Connection, queue: &str) -> Value {
    let keys = keys(queue);
    let delayed: u64 = redis::cmd("ZCARD").arg(&keys.delayed).query(conn).expect("ZCARD");
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query(conn).unwrap_or_default();
    let group = groups.iter().find(|g| {
        g.get("name").is_some_and(|n| redis::from_redis_value::<String>(n.clone()).ok().as_deref() == Some("workers"))
    });
    let number = |name: &str| -> Option<u64> {
        group.and_then(|g| g.get(name)).and_then(|v| redis::from_redis_value::<Option<u64>>(v.clone()).ok()).flatten()
    };
    json!({
        "length": xlen(conn, &keys.stream),
        "lag": number("lag"),
        "pending": number("pending").unwrap_or(0),
        "delayed": delayed,
        "dead": xlen(conn, &keys.dead),
        "consumers": number("consumers").unwrap_or(0),
    })
}

/// The stream entries of `queue` whose job id is `job_id`, oldest first.
fn entries_of_job(conn: &mut redis::Connection, queue: &str, job_id: &str) -> Vec<BTreeMap<String, String>> {
    entries_text(conn, &keys(queue).stream)
        .into_iter()
        .filter(|e| e.get("id").map(String::as_str) == Some(job_id))
        .collect()
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails at once, saying how to fix it, when the browser or the script's packages are missing.
fn require_browser() {
    assert!(
        chromium().exists(),
        "{} is missing: run scripts/setup (it installs Debian's chromium)",
        chromium().display()
    );
    assert!(
        browser_dir().join("node_modules/playwright-core/package.json").exists(),
        "tests/browser/node_modules is missing: run scripts/setup (it runs npm ci there)"
    );
}

/// Runs `node tests/browser/dashboard.mjs` with `env` until it exits (at most [`BROWSER_DEADLINE`], then it is
/// stopped); returns whether it succeeded and everything it printed.
fn run_browser(phase: &str, env: &[(&str, String)], logs: &Path) -> (bool, String) {
    let out_path = logs.join(format!("browser-{phase}.log"));
    let out = std::fs::File::create(&out_path).expect("browser log");
    let failures = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-browser-failures");
    std::fs::create_dir_all(&failures).expect("failure dir");
    let mut cmd = Command::new("node");
    cmd.current_dir(browser_dir())
        .arg("dashboard.mjs")
        .env("PHASE", phase)
        .env("CHROMIUM", chromium())
        .env("FAILURE_DIR", &failures)
        .env("DEADLINE_MS", (BROWSER_DEADLINE - Duration::from_secs(10)).as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("node must be installed (scripts/setup-demo and scripts/setup need it)");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > BROWSER_DEADLINE {
            // SIGTERM first: playwright closes its browser on it.
            use nix::sys::signal::{kill, Signal};
            let _ = kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    eprintln!("--- browser phase {phase} ({:.1} s) ---\n{output}", started.elapsed().as_secs_f64());
    (status.is_some_and(|s| s.success()), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_works_in_a_real_browser() {
    require_browser();
    let began = Instant::now();
    let mut fx = Fixture::start().await;
    let (queue, other) = ("shop", "emails");
    let worker = fx.spawn(fx.consumer(queue, "w", &["--retry-base-delay", "50ms", "--max-attempts", "2"]), "w");
    let worker_addr = worker.listen_addr();
    wait_until(Duration::from_secs(20), "the consumer to be ready", || http_get(worker_addr, "/readyz").0 == 200);
    let api = serve(&fx, queue, "serve", &[]);
    let read_only = serve(&fx, queue, "serve-read-only", &["--ui-read-only"]);
    let (addr, ro_addr) = (api.listen_addr(), read_only.listen_addr());

    // Real data: a job that fails its first attempt and succeeds on its retry, one that fails both attempts
    // (dead after --max-attempts 2), plain jobs, a job delayed an hour, and on a queue nobody consumes, waiting
    // jobs among which an XSS probe.
    let retried = enqueue_one(&fx, queue, "demo", r#"{"fail_until_attempt":1}"#, &[]);
    let doomed = enqueue_one(&fx, queue, "demo", r#"{"fail_until_attempt":2}"#, &[]);
    enqueue(fx.producer(), queue, "noop", "{}", 5);
    let delayed = enqueue_one(&fx, queue, "noop", "{}", &["--delay", "1h"]);
    enqueue(fx.producer(), other, "noop", "{}", 2);
    let xss_payload = r#"{"html":"<img src=x onerror=\"window.__xss=1\"><script>window.__xss=1</script>"}"#;
    let xss = enqueue_one(&fx, other, "noop", xss_payload, &[]);

    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "the retried job to be done and the doomed one dead", || {
        show(&fx, queue, &retried.job_id)["state"] == "done" && show(&fx, queue, &doomed.job_id)["state"] == "dead"
    });
    wait_until(Duration::from_secs(20), "the plain jobs to be done", || done_counts(&mut conn, queue).len() == 6);
    wait_until(Duration::from_secs(10), "the group to have nothing pending", || {
        pending(&mut conn, queue, "workers") == 0
    });

    // What the UI is to show, as the CLI and Redis say it.
    let status = show(&fx, queue, &retried.job_id);
    let attempts = status["attempts"].as_array().expect("attempts");
    let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap_or_default()).collect();
    assert_eq!(outcomes, ["failed", "done"], "{status}");
    assert!(
        attempts.iter().all(|a| a["trace_id"] == retried.trace_id.as_str()),
        "both attempts in its trace: {status}"
    );
    let process = format!("process {queue}");
    fx.sink
        .wait_for(Duration::from_secs(20), |s| named(s, &retried.trace_id, &process).len() == 2)
        .await
        .unwrap_or_else(|s| panic!("the sink has not both process spans of {}: {} spans", retried.trace_id, s.len()));
    let dead_status = show(&fx, queue, &doomed.job_id);
    assert_eq!(dead_status["reason"], "max_attempts", "{dead_status}");
    let dead_entry = dead_status["dead_id"].as_str().expect("dead_id").to_owned();
    let first_run: Vec<String> =
        entries_of_job(&mut conn, queue, &doomed.job_id).iter().map(|e| e["attempt"].clone()).collect();
    assert_eq!(first_run, ["1", "2"], "an entry per attempt");
    let expected = json!({ queue: redis_counts(&mut conn, queue), other: redis_counts(&mut conn, other) });
    assert_eq!(expected[queue]["dead"], 1, "{expected}");
    assert_eq!(expected[queue]["delayed"], 1, "{expected}");
    assert_eq!(expected[other]["length"], 3, "{expected}");

    let update = std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1");
    let scratch = tempfile::tempdir().expect("screenshot dir");
    let shots = if update { Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs") } else { scratch.path().to_owned() };
    let base = format!("http://localhost:{}", addr.port());
    let common = [("BASE_URL", base.clone()), ("TOKEN", TOKEN.to_owned()), ("QUEUE", queue.to_owned())];

    let replay_from = jobstream::clock::now_ms();
    let (passed, output) = run_browser(
        "main",
        &[
            &common[..],
            &[
                ("RO_BASE_URL", format!("http://localhost:{}", ro_addr.port())),
                ("EXPECTED", expected.to_string()),
                ("RETRIED_ID", retried.job_id.clone()),
                ("RETRIED_TRACE", retried.trace_id.clone()),
                ("DEAD_ENTRY", dead_entry.clone()),
                ("DEAD_JOB_ID", doomed.job_id.clone()),
                ("DELAYED_ID", delayed.job_id.clone()),
                ("XSS_ID", xss.job_id.clone()),
                ("XSS_QUEUE", other.to_owned()),
                ("SCREENSHOT_DIR", shots.display().to_string()),
            ],
        ]
        .concat(),
        fx.logs.path(),
    );
    assert!(passed, "the browser checks failed:\n{output}");
    for name in ["dashboard-overview.png", "dashboard-job.png"] {
        let png = std::fs::read(shots.join(name)).unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name} is a real picture ({} bytes)", png.len());
    }

    // The replay from the UI: the dead entry left the dead stream, the job went back on the stream as a new
    // entry, and the consumer ran it again in a new trace (two more `process` spans there: it fails both attempts
    // again, as its payload says) until it was dead-lettered again as a new dead entry.
    let gone: Vec<redis::Value> =
        redis::cmd("XRANGE").arg(keys(queue).dead).arg(&dead_entry).arg(&dead_entry).query(&mut conn).unwrap();
    assert!(gone.is_empty(), "the replayed dead entry {dead_entry} is gone from the dead stream");
    wait_until(Duration::from_secs(20), "the replayed job to run and be dead-lettered again", || {
        let status = show(&fx, queue, &doomed.job_id);
        status["state"] == "dead" && status["dead_id"].as_str().is_some_and(|id| id != dead_entry)
    });
    let again = show(&fx, queue, &doomed.job_id);
    let attempts = again["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{again}");
    assert!(
        attempts.iter().all(|a| a["started_at"].as_u64() >= Some(replay_from)),
        "both ran after the replay: {again}"
    );
    let new_trace = attempts[0]["trace_id"].as_str().expect("trace id").to_owned();
    assert_ne!(new_trace, doomed.trace_id, "a replay runs in a new trace");
    fx.sink
        .wait_for(Duration::from_secs(20), |s| named(s, &new_trace, &process).len() == 2)
        .await
        .unwrap_or_else(|_| panic!("the replayed job's two process spans in trace {new_trace}"));
    // Each attempt is an entry of its own (a retry is promoted back onto the stream): the first run's two, then
    // the replayed entry (attempt 1 again) and its retry, both in the new trace.
    let runs = entries_of_job(&mut conn, queue, &doomed.job_id);
    let attempts: Vec<&str> = runs.iter().map(|e| e["attempt"].as_str()).collect();
    assert_eq!(attempts, ["1", "2", "1", "2"], "{runs:?}");
    assert!(runs[2..].iter().all(|e| e["traceparent"].contains(&new_trace)), "{runs:?}");
    let dead_now = dead_entries(&mut conn, queue);
    assert_eq!(dead_now.len(), 1, "only the new dead entry: {dead_now:?}");
    assert_eq!(dead_now[0]["id"], doomed.job_id);

    // Redis goes down last: the UI says so.
    fx.redis.kill();
    let (passed, output) = run_browser("redis-down", &common, fx.logs.path());
    assert!(passed, "the browser checks with Redis down failed:\n{output}");

    drop(read_only);
    drop(api);
    drop(worker);
    eprintln!("the dashboard browser test took {:.1} s", began.elapsed().as_secs_f64());
}

/// The headers of a response, lower-cased names, in order.
fn headers_of(head: &str) -> Vec<(String, String)> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn every_dashboard_route_needs_credentials_and_actions_must_come_from_the_same_site() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let queue = "guarded";
    let job = enqueue(plain("producer", &redis), queue, "noop", "{}", 1).remove(0).job_id;
    let mut cmd = plain("producer", &redis);
    cmd.args(["serve", "--queue", queue, "--listen", "127.0.0.1:0"]).env("JOBSTREAM_API_TOKEN", TOKEN);
    let api = Service::spawn(cmd, logs.path(), "serve");
    let addr = api.listen_addr();
    let bearer = format!("Bearer {TOKEN}");
    let json_body = ("content-type", "application/json");

    let routes: Vec<(&str, String, &str)> = vec![
        ("GET", "/v1/queues".into(), ""),
        ("GET", format!("/v1/queues/{queue}"), ""),
        ("GET", format!("/v1/queues/{queue}/jobs?state=waiting"), ""),
        ("POST", format!("/v1/queues/{queue}/pause"), ""),
        ("POST", format!("/v1/queues/{queue}/resume"), ""),
        ("POST", format!("/v1/queues/{queue}/dead/replay"), r#"{"all":true}"#),
        ("POST", format!("/v1/queues/{queue}/dead/purge"), r#"{"all":true}"#),
        ("GET", format!("/v1/jobs/{job}"), ""),
        ("DELETE", format!("/v1/jobs/{job}"), ""),
        ("GET", format!("/v1/jobs/{job}/result"), ""),
        ("GET", "/ui/config.json".into(), ""),
    ];
    for (method, path, body) in &routes {
        for credentials in [None, Some("Bearer wrong-token"), Some("Basic ZGFzaGJvYXJkOnRlc3Q=")] {
            let mut headers = vec![json_body];
            if let Some(value) = credentials {
                headers.push(("authorization", value));
            }
            let (status, head, answer) = http_exchange(addr, method, path, &headers, body.as_bytes());
            assert_eq!(status, 401, "{method} {path} with {credentials:?}: {answer}");
            let headers = headers_of(&head);
            assert_eq!(header(&headers, "www-authenticate"), Some(r#"Bearer realm="jobstream""#), "{method} {path}");
            let error: Value = serde_json::from_str(&answer).expect("a JSON error");
            assert!(error["error"].is_string(), "{answer}");
        }
        // With the token it passes the gate (and the unauthenticated attempts changed nothing, checked below).
        if *method == "GET" {
            let (status, answer) = http_request(addr, method, path, &[("authorization", &bearer)], "");
            assert_eq!(status, 200, "{method} {path} with the token: {answer}");
        }
    }
    let status: Value = serde_json::from_str(
        &http_request(addr, "GET", &format!("/v1/jobs/{job}"), &[("authorization", &bearer)], "").1,
    )
    .unwrap();
    assert_eq!(status["state"], "waiting", "the refused DELETE cancelled nothing: {status}");
    let paused = |cookie_or_bearer: (&str, &str)| -> bool {
        let (code, body) = http_request(addr, "GET", &format!("/v1/queues/{queue}"), &[cookie_or_bearer], "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["queue"]["paused"].as_bool().expect("paused")
    };
    assert!(!paused(("authorization", &bearer)), "the refused pause paused nothing");

    // The UI's own files are public (they hold no data) and locked down by their CSP.
    let (status, head, _) = http_exchange(addr, "GET", "/ui/", &[], b"");
    assert_eq!(status, 200);
    let csp = header(&headers_of(&head), "content-security-policy").unwrap_or_default().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // Logging in: a wrong token is refused; the right one sets an HttpOnly, Secure, SameSite=Strict cookie.
    let (status, _) = http_request(addr, "POST", "/ui/login", &[json_body], r#"{"token":"nope"}"#);
    assert_eq!(status, 401);
    let login_body = format!(r#"{{"token":"{TOKEN}"}}"#);
    let (status, _, _) = http_exchange(
        addr,
        "POST",
        "/ui/login",
        &[json_body, ("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")],
        login_body.as_bytes(),
    );
    assert_eq!(status, 403, "another site cannot log a browser in");
    let (status, head, _) = http_exchange(addr, "POST", "/ui/login", &[json_body], login_body.as_bytes());
    assert_eq!(status, 204);
    let set_cookie = header(&headers_of(&head), "set-cookie").expect("a Set-Cookie header").to_owned();
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for wanted in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&wanted), "{wanted} in {set_cookie}");
    }
    let session = attributes[0].to_owned();
    assert!(session.starts_with("jobstream_session=") && session.len() == "jobstream_session=".len() + 64, "{session}");
    let cookie = ("cookie", session.as_str());
    assert!(!paused(cookie), "the session cookie reads");

    // An action a browser says comes from another site is refused, with the cookie or the token.
    let pause = format!("/v1/queues/{queue}/pause");
    let host_origin = format!("http://{addr}");
    let auth = ("authorization", bearer.as_str());
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [((&str, &str), Headers); 6] = [
        (cookie, &[("origin", "http://evil.example")][..]),
        (cookie, &[("sec-fetch-site", "cross-site")][..]),
        (cookie, &[("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")][..]),
        (cookie, &[("sec-fetch-site", "same-site")][..]),
        (cookie, &[("origin", "null")][..]),
        (auth, &[("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")][..]),
    ];
    for (credentials, site_headers) in cases {
        let headers = [&[credentials][..], site_headers].concat();
        let (status, body) = http_request(addr, "POST", &pause, &headers, "");
        assert_eq!(status, 403, "{site_headers:?}: {body}");
        assert!(body.contains("refused"), "{body}");
    }
    assert!(!paused(cookie), "no refused request paused the queue");
    // The same action from the dashboard's own page, and from a script with the token, goes through.
    let (status, body) =
        http_request(addr, "POST", &pause, &[cookie, ("origin", &host_origin), ("sec-fetch-site", "same-origin")], "");
    assert_eq!(status, 200, "{body}");
    assert!(paused(cookie));
    let (status, body) = http_request(addr, "POST", &format!("/v1/queues/{queue}/resume"), &[auth], "");
    assert_eq!(status, 200, "{body}");
    assert!(!paused(cookie));

    // Logging out ends the session.
    let (status, _) = http_request(addr, "POST", "/ui/logout", &[cookie], "");
    assert_eq!(status, 204);
    assert_eq!(http_request(addr, "GET", "/v1/queues", &[cookie], "").0, 401, "the session is gone");
    assert_eq!(api.terminate(), Some(0));
}
