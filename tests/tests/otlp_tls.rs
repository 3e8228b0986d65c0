//! Spans to a collector over TLS, as production collectors take them: a real `producer enqueue` and a real
//! consumer export to a TLS OTLP receiver whose certificate is made here, over `http/protobuf` (HTTPS) and
//! `grpc` (gRPC over TLS), trusting the test CA through `OTEL_EXPORTER_OTLP_CERTIFICATE` and sending an API-key
//! header from `OTEL_EXPORTER_OTLP_HEADERS`. A wrong CA is one clear log line and the jobs still run.
//! And the JSON log lines carry `trace_id` and `span_id` as top-level fields.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jobstream_tests::*;

const SPAN_WAIT: Duration = Duration::from_secs(30);
const PROTOCOLS: [&str; 2] = ["http/protobuf", "grpc"];

/// A CA and a server certificate for 127.0.0.1 signed by it, made by `openssl` in a temp dir.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path());
    dir
}

/// A TLS OTLP receiver presenting the server certificate in `dir`.
async fn tls_sink(dir: &Path) -> OtlpSink {
    let cert = std::fs::read(dir.join("server.pem")).unwrap();
    let key = std::fs::read(dir.join("server.key")).unwrap();
    OtlpSink::start_tls(&cert, &key).await.expect("start the TLS OTLP receiver")
}

/// Points `cmd` (from `traced`) at `sink` over `protocol`, trusting `ca`, with an API-key header.
fn over_tls(cmd: &mut Command, sink: &OtlpSink, protocol: &str, ca: &Path, api_key: &str) {
    let endpoint = if protocol == "grpc" { sink.grpc_endpoint() } else { sink.http_endpoint() };
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)
        .env("OTEL_EXPORTER_OTLP_HEADERS", format!("api-key={api_key}"));
}

/// Stops a service with SIGTERM, expecting exit 0; returns its log (`<name>.log` in `dir`).
fn terminate(service: Service, dir: &Path, name: &str) -> String {
    assert_eq!(service.terminate(), Some(0), "exit 0 on SIGTERM");
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// The JSON log lines of a process's stderr.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// The log lines reporting that span export failed.
fn export_failures(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("cannot export spans") || line.contains("ExportError"))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_reach_a_tls_collector_over_both_protocols_with_the_api_key_header() {
    let certs = certificates();
    let ca = certs.path().join("ca.pem");
    for protocol in PROTOCOLS {
        let redis = RedisServer::start();
        let sink = tls_sink(certs.path()).await;
        let logs = tempfile::tempdir().unwrap();
        let queue = format!("tls-{}", protocol.replace('/', "-"));
        let api_key = format!("secret-{}", protocol.replace('/', "-"));

        let mut consumer_cmd = consumer(&redis, &sink, &queue, "c1", &[]);
        over_tls(&mut consumer_cmd, &sink, protocol, &ca, &api_key);
        let consumer = Service::spawn(consumer_cmd, logs.path(), "consumer");

        let mut producer = traced("producer", &redis, &sink, "tls-producer");
        over_tls(&mut producer, &sink, protocol, &ca, &api_key);
        let job = enqueue(producer, &queue, "noop", "{}", 1).remove(0);

        let send = format!("send {queue}");
        let process = format!("process {queue}");
        let spans = sink
            .wait_for(SPAN_WAIT, |spans| {
                !named(spans, &job.trace_id, &send).is_empty() && !named(spans, &job.trace_id, &process).is_empty()
            })
            .await
            .unwrap_or_else(|spans| {
                panic!("{protocol}: send and process spans over TLS; got {spans:?}\nconsumer log:\n{}", consumer.log())
            });
        assert_eq!(named(&spans, &job.trace_id, &send)[0].service_name, "tls-producer");
        assert_eq!(named(&spans, &job.trace_id, &process)[0].service_name, "test-consumer");

        let headers = sink.request_headers();
        assert!(!headers.is_empty(), "{protocol}: export requests arrived");
        assert!(
            headers.iter().all(|h| h.get("api-key") == Some(&api_key)),
            "{protocol}: every export request carries the header from OTEL_EXPORTER_OTLP_HEADERS: {headers:?}"
        );
        assert_eq!(sink.tls_failures(), 0, "{protocol}: no failed handshake");
        let log = terminate(consumer, logs.path(), "consumer");
        assert!(export_failures(&log).is_empty(), "{protocol}: no export failure logged:\n{log}");
        assert!(!log.contains(&api_key), "{protocol}: the API key is never logged:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_ca_is_one_clear_log_line_and_the_jobs_still_run() {
    let collector_certs = certificates();
    let other_certs = certificates();
    let wrong_ca = other_certs.path().join("ca.pem");
    for protocol in PROTOCOLS {
        let redis = RedisServer::start();
        let sink = tls_sink(collector_certs.path()).await;
        let logs = tempfile::tempdir().unwrap();
        let queue = format!("wrong-ca-{}", protocol.replace('/', "-"));
        let producer = || {
            let mut cmd = traced("producer", &redis, &sink, "tls-producer");
            over_tls(&mut cmd, &sink, protocol, &wrong_ca, "secret");
            cmd.env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000");
            cmd
        };

        // The producer enqueues, prints its job and exits 0; its one failed export is one line.
        let out = producer()
            .args(["enqueue", "--queue", &queue, "--kind", "noop", "--payload", "{}"])
            .output()
            .expect("run producer");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{protocol}: the job is enqueued despite the wrong CA:\n{stderr}");
        let first_job = String::from_utf8(out.stdout).unwrap().split_whitespace().next().expect("job line").to_owned();
        let failures = export_failures(&stderr);
        assert_eq!(failures.len(), 1, "{protocol}: one line for the failed export:\n{stderr}");
        let line: serde_json::Value = serde_json::from_str(&failures[0]).expect("a JSON log line");
        let message = line["message"].as_str().unwrap_or_default();
        assert_eq!(line["level"], "ERROR", "{line}");
        assert!(message.contains("https://127.0.0.1:"), "{protocol}: the line names the endpoint: {message}");
        assert!(
            message.to_ascii_lowercase().contains("certificate") || message.contains("UnknownIssuer"),
            "{protocol}: the line says the certificate is not trusted: {message}"
        );
        assert!(!stderr.contains("secret"), "{protocol}: the API key is never logged:\n{stderr}");

        // A consumer runs jobs over several export batches (and a flush at exit): still one line.
        let mut consumer_cmd = consumer(&redis, &sink, &queue, "c1", &[]);
        over_tls(&mut consumer_cmd, &sink, protocol, &wrong_ca, "secret");
        consumer_cmd.env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000");
        let consumer = Service::spawn(consumer_cmd, logs.path(), "consumer");
        let mut conn = redis.conn();
        wait_until(SPAN_WAIT, "the first job to run", || done_counts(&mut conn, &queue).contains_key(&first_job));
        // The line comes once the first failed export gave up (its retries included): any handshake that fails
        // after it is a later batch's. The second job's producer exports nothing, so those are the consumer's.
        wait_until(SPAN_WAIT, "the consumer's export to fail", || !export_failures(&consumer.log()).is_empty());
        let failed_before = sink.tls_failures();
        let mut quiet_producer = producer();
        quiet_producer.env("OTEL_TRACES_EXPORTER", "none");
        let second = enqueue(quiet_producer, &queue, "noop", "{}", 1).remove(0);
        wait_until(SPAN_WAIT, "the second job to run", || done_counts(&mut conn, &queue).contains_key(&second.job_id));
        wait_until(SPAN_WAIT, "a later batch's export to fail too", || sink.tls_failures() > failed_before);

        let log = terminate(consumer, logs.path(), "consumer");
        let failures = export_failures(&log);
        assert_eq!(failures.len(), 1, "{protocol}: one line however many batches failed:\n{log}");
        assert!(sink.spans().is_empty(), "{protocol}: nothing got through an untrusted connection");
        assert!(!log.contains("secret"), "{protocol}: the API key is never logged:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_log_lines_carry_trace_id_and_span_id_at_top_level() {
    let fx = Fixture::start().await;
    let queue = "json-ids";
    let consumer = fx.spawn(fx.consumer(queue, "c1", &[]), "consumer");
    let job = enqueue(fx.producer(), queue, "no-such-kind", "{}", 1).remove(0);

    let mut line = None;
    wait_until(SPAN_WAIT, "the consumer's dead-letter warning", || {
        line = json_lines(&consumer.log()).into_iter().find(|l| l["message"] == "job dead-lettered");
        line.is_some()
    });
    let line = line.unwrap();
    assert_eq!(line["trace_id"], job.trace_id.as_str(), "top-level trace_id is the job's: {line}");
    let span_id = line["span_id"].as_str().unwrap_or_else(|| panic!("top-level span_id: {line}"));
    assert!(span_id.len() == 16 && span_id.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
    assert!(line.get("openTelemetry").is_none(), "no nested ids: {line}");

    // The span id is the `process` span's, the one the warning was logged in.
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |spans| !named(spans, &job.trace_id, &format!("process {queue}")).is_empty())
        .await
        .expect("the process span");
    assert_eq!(named(&spans, &job.trace_id, &format!("process {queue}"))[0].span_id, span_id);

    // Lines outside any span have neither field.
    let log = terminate(consumer, fx.logs.path(), "consumer");
    let outside = json_lines(&log).into_iter().find(|l| l["message"].as_str().is_some_and(|m| m.contains("serving")));
    if let Some(outside) = outside {
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }
}
