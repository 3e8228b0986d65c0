//! `producer serve`: HTTP → queue → worker in one trace, and clear errors for bad requests.

use std::time::Duration;

use jobstream_tests::*;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn server(redis: &RedisServer, sink: &OtlpSink, logs: &std::path::Path) -> Service {
    let mut cmd = traced("producer", redis, sink, "test-api");
    cmd.args(["serve", "--queue", "web", "--listen", "127.0.0.1:0", "--max-payload-bytes", "200"])
        .env("JOBSTREAM_API_TOKEN", "s3cret");
    Service::spawn(cmd, logs, "api")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_traces_through_the_queue_to_the_worker() {
    let fx = Fixture::start().await;
    let api = server(&fx.redis, &fx.sink, fx.logs.path());
    let worker = fx.spawn(fx.consumer("web", "w", &[]), "w");
    let addr = api.listen_addr();
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, body) = http_request(
        addr,
        "POST",
        "/v1/jobs",
        &[("content-type", "application/json"), ("authorization", "Bearer s3cret"), ("traceparent", &traceparent)],
        r#"{"kind":"demo","payload":{"order":7}}"#,
    );
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["trace_id"], CALLER_TRACE, "the job joins the caller's trace");
    let job_id = accepted["id"].as_str().unwrap().to_owned();
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "the job to run", || done_counts(&mut conn, "web").contains_key(&job_id));
    assert_eq!(worker.terminate(), Some(0));
    assert_eq!(api.terminate(), Some(0));

    let spans = fx
        .sink
        .wait_for(Duration::from_secs(20), |s| {
            !named(s, CALLER_TRACE, "save-data").is_empty() && !named(s, CALLER_TRACE, "POST /v1/jobs").is_empty()
        })
        .await
        .unwrap_or_else(|p| panic!("spans missing: {p:?}"));
    let server_span = named(&spans, CALLER_TRACE, "POST /v1/jobs")[0];
    assert_eq!(server_span.kind, "server");
    assert_eq!(server_span.parent_span_id.as_deref(), Some(CALLER_SPAN), "continues the caller's span");
    assert_eq!(server_span.attr("http.response.status_code"), Some("202"));
    let send = named(&spans, CALLER_TRACE, "send web")[0];
    assert_eq!(send.parent_span_id.as_deref(), Some(server_span.span_id.as_str()));
    let process = named(&spans, CALLER_TRACE, "process web")[0];
    assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()));
    assert_eq!(named(&spans, CALLER_TRACE, "save-data")[0].parent_span_id.as_deref(), Some(process.span_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_json_errors() {
    let fx = Fixture::start().await;
    let api = server(&fx.redis, &fx.sink, fx.logs.path());
    let addr = api.listen_addr();
    let post = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let (status, body) = http_request(addr, "POST", "/v1/jobs", &all, body);
        let error =
            serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
        (status, error.unwrap_or(body))
    };
    let auth = ("authorization", "Bearer s3cret");
    let (status, error) = post(&[], r#"{"kind":"noop"}"#);
    assert_eq!((status, error.contains("bearer")), (401, true), "{error}");
    assert_eq!(post(&[("authorization", "Bearer wrong")], r#"{"kind":"noop"}"#).0, 401);
    let (status, error) = post(&[auth], r#"{"kind":"bad kind"}"#);
    assert_eq!((status, error.contains("kind")), (400, true), "{error}");
    let (status, error) = post(&[auth], r#"{"kind":"noop","payload":"#);
    assert!((400..500).contains(&status), "{status} {error}");
    let (status, _) = post(&[auth], r#"{"kind":"noop","surprise":1}"#);
    assert!((400..500).contains(&status), "unknown fields are refused: {status}");
    let big = format!(r#"{{"kind":"noop","payload":{{"x":"{}"}}}}"#, "y".repeat(1000));
    let (status, error) = post(&[auth], &big);
    assert!(status == 400 || status == 413, "{status} {error}");

    let key = ("idempotency-key", "order-9");
    let (first, _) = post(&[auth, key], r#"{"kind":"noop"}"#);
    let (second, _) = post(&[auth, key], r#"{"kind":"noop"}"#);
    assert_eq!((first, second), (202, 200), "the second request with the key is a duplicate");
    assert_eq!(xlen(&mut fx.conn(), &keys("web").stream), 1, "only the accepted job is on the stream");
    let (metrics_status, text) = http_get(addr, "/metrics");
    assert_eq!(metrics_status, 200);
    assert!(text.contains(r#"jobstream_enqueued_total{queue="web",kind="noop"} 1"#), "{text}");
    assert_eq!(http_get(addr, "/readyz").0, 200);
    assert_eq!(api.terminate(), Some(0));
}

/// Secure by default: without a token, `producer serve` listens on loopback; a non-loopback address is refused
/// (exit 2, saying why) unless `--allow-unauthenticated` accepts an open API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_api_on_a_non_loopback_address_needs_an_explicit_flag() {
    let fx = Fixture::start().await;
    let refused = fx
        .producer()
        .args(["serve", "--queue", "web", "--listen", "0.0.0.0:0"])
        .env_remove("JOBSTREAM_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refusing to serve on 0.0.0.0:0 without a token"), "{stderr}");
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");

    let help = fx.producer().args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("[default: 127.0.0.1:8080]"), "loopback by default");

    // Accepted explicitly: it serves (on all interfaces; the test talks to it over loopback).
    let mut cmd = plain("producer", &fx.redis);
    cmd.args(["serve", "--queue", "web", "--listen", "0.0.0.0:0", "--allow-unauthenticated"]);
    let api = fx.spawn(cmd, "open-api");
    let port = api.listen_addr().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(20), "the open API to be ready", || http_get(addr, "/readyz").0 == 200);
    assert_eq!(http_get(addr, "/v1/queues").0, 200, "no token: the API is open, as asked");
    assert_eq!(api.terminate(), Some(0));
}
