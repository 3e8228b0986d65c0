//! The OpenTelemetry messaging conventions (v1.44) as the binaries export them, read from the OTLP bytes they
//! sent: `send`, `receive`, `process` and settle spans with their attributes, links and exception events; the
//! four messaging metrics and log records over OTLP, with both protocols; trace shapes checked by
//! `jobstream_otlp_sink::shape`; and the tables of `docs/wire-format.md` compared with what a run exported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jobstream_otlp_sink::shape::{self, Rules};
use jobstream_otlp_sink::{ReceivedLog, ReceivedPoint};
use jobstream_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// Two jobs that succeed, one that fails once then succeeds, one that fails until it is dead (2 attempts).
const PAYLOADS: [&str; 4] =
    [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3,"fail_until_attempt":1}"#, r#"{"n":4,"fail_until_attempt":9}"#];

/// Runs the four jobs of [`PAYLOADS`] and `noops` `noop` jobs through a consumer with `env` (metrics, logs,
/// protocol) on queue `queue` of `partitions` partitions; returns the four's job ids once every job is done or
/// dead, after the consumer exited.
fn run_jobs(fx: &Fixture, queue: &str, partitions: &str, noops: u32, env: &[(&str, &str)]) -> Vec<String> {
    let flags = ["--max-attempts", "2", "--retry-base-delay", "0s"];
    let mut consumer = fx.consumer(queue, "c0", &flags);
    let env = env.iter().copied().chain([("JOBSTREAM_PARTITIONS", partitions)]);
    for (k, v) in env.clone() {
        consumer.env(k, v);
    }
    let service = fx.spawn(consumer, "c0");
    let mut ids = Vec::new();
    for payload in PAYLOADS {
        let mut producer = fx.producer();
        producer.envs(env.clone());
        ids.push(enqueue(producer, queue, "demo", payload, 1).remove(0).job_id);
    }
    if noops > 0 {
        let mut producer = fx.producer();
        producer.envs(env.clone());
        enqueue(producer, queue, "noop", "{}", noops);
    }
    let mut conn = fx.conn();
    wait_until(WAIT, "every job done but one dead", || {
        let done = (0..partitions.parse::<u32>().unwrap())
            .map(|i| if partitions == "1" { queue.to_owned() } else { format!("{queue}:{i}") })
            .map(|q| done_counts(&mut conn, &q).len() + dead_entries(&mut conn, &q).len())
            .sum::<usize>();
        done == 4 + noops as usize
    });
    assert_eq!(service.terminate(), Some(0));
    ids
}

fn op(span: &ReceivedSpan) -> &str {
    span.attr("messaging.operation.type").unwrap_or("")
}

fn event<'a>(span: &'a ReceivedSpan, name: &str) -> Option<&'a BTreeMap<String, String>> {
    span.events.iter().find(|(n, _)| n == name).map(|(_, a)| a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_follow_the_messaging_conventions_and_every_trace_has_its_shape() {
    let fx = Fixture::start().await;
    let queue = "conv";
    let ids = run_jobs(&fx, queue, "1", 0, &[]);
    let port = fx.redis.port().to_string();
    let spans = fx
        .sink
        .wait_for(WAIT, |spans| {
            spans.iter().filter(|s| op(s) == "settle").count() >= 3
                && spans.iter().filter(|s| op(s) == "process").count() == 6
        })
        .await
        .unwrap_or_else(|partial| panic!("spans missing: {partial:#?}"));

    // Where: the Redis server and the queue, on every messaging span.
    for span in spans.iter().filter(|s| s.attr("messaging.system").is_some()) {
        assert_eq!(span.attr("messaging.system"), Some("redis"), "{span:?}");
        assert_eq!(span.attr("messaging.destination.name"), Some(queue), "{span:?}");
        assert_eq!(span.attr("server.address"), Some("127.0.0.1"), "{span:?}");
        assert_eq!(span.attr("server.port"), Some(port.as_str()), "{span:?}");
        assert_eq!(span.attr("messaging.destination.partition.id"), None, "unpartitioned: {span:?}");
        let name = span.attr("messaging.operation.name").unwrap();
        assert_eq!(span.name, format!("{name} {queue}"), "span name is `{{operation}} {{queue}}`");
    }

    // send: PRODUCER, the body's size.
    let sends: Vec<&ReceivedSpan> = spans.iter().filter(|s| op(s) == "send").collect();
    assert_eq!(sends.len(), 4);
    for (send, payload) in sends.iter().zip(PAYLOADS) {
        assert_eq!(send.kind, "producer");
        let size = send.attr("messaging.message.body.size").unwrap().parse::<usize>().unwrap();
        assert!(PAYLOADS.iter().any(|p| p.len() == size), "body size {size} is one payload's; {payload}");
    }

    // process: CONSUMER; a failed attempt has error.type, an error status and the exception event.
    let processes: Vec<&ReceivedSpan> = spans.iter().filter(|s| op(s) == "process").collect();
    for process in &processes {
        assert_eq!(process.kind, "consumer");
        assert_eq!(process.attr("messaging.consumer.group.name"), Some("workers"));
        assert_eq!(process.attr("messaging.client.id"), Some("c0"));
        assert!(process.attr("messaging.message.body.size").is_some());
        let failed = process.attr("error.type").is_some();
        assert_eq!(process.status == "error", failed, "{process:?}");
        let exception = event(process, "messaging.process.exception");
        assert_eq!(exception.is_some(), failed, "an exception event exactly on failed attempts: {process:?}");
        if let Some(exception) = exception {
            assert_eq!(exception.get("exception.type").map(String::as_str), Some("simulated_failure"));
            assert!(exception["exception.message"].contains("failed on purpose"), "{exception:?}");
        }
    }
    assert_eq!(processes.iter().filter(|p| p.status == "error").count(), 3, "1 + 2 failed attempts");

    // Settle: `ack` batches link to each acknowledged process span; `retry` and `dead_letter` are children.
    let settles: Vec<&ReceivedSpan> = spans.iter().filter(|s| op(s) == "settle").collect();
    let acked: BTreeSet<&str> = settles
        .iter()
        .filter(|s| s.name == format!("ack {queue}"))
        .flat_map(|s| s.links.iter().map(|l| l.1.as_str()))
        .collect();
    for settle in &settles {
        assert_eq!(settle.kind, "client", "{settle:?}");
        assert_eq!(settle.attr("messaging.consumer.group.name"), Some("workers"));
        assert_eq!(settle.attr("messaging.client.id"), Some("c0"));
        match settle.attr("messaging.operation.name") {
            Some("ack") => {
                assert!(settle.parent_span_id.is_none(), "an ack batch is a root with links");
                let n = settle.links.len();
                let count = settle.attr("messaging.batch.message_count");
                assert_eq!(count.map(|c| c.parse::<usize>().unwrap()), (n > 1).then_some(n), "{settle:?}");
            }
            Some(how @ ("retry" | "dead_letter")) => {
                let parent = processes.iter().find(|p| Some(p.span_id.as_str()) == settle.parent_span_id.as_deref());
                let parent = parent.unwrap_or_else(|| panic!("{how} is a child of a process span: {settle:?}"));
                assert_eq!(parent.status, "error");
                assert_eq!(settle.attr("messaging.message.id"), parent.attr("messaging.message.id"));
            }
            other => panic!("unexpected settle operation {other:?}"),
        }
    }
    let succeeded: BTreeSet<&str> =
        processes.iter().filter(|p| p.status != "error").map(|p| p.span_id.as_str()).collect();
    assert_eq!(acked, succeeded, "every successful attempt is acknowledged by an ack span linking to it");
    assert_eq!(settles.iter().filter(|s| s.attr("messaging.operation.name") == Some("retry")).count(), 2);
    assert_eq!(settles.iter().filter(|s| s.attr("messaging.operation.name") == Some("dead_letter")).count(), 1);

    // receive: CLIENT roots linking to each entry's creation context (its send span).
    let receives: Vec<&ReceivedSpan> = spans.iter().filter(|s| op(s) == "receive").collect();
    let received: BTreeSet<&str> = receives.iter().flat_map(|s| s.links.iter().map(|l| l.1.as_str())).collect();
    for send in &sends {
        assert!(received.contains(send.span_id.as_str()), "a receive span links to send {}", send.span_id);
    }
    assert!(receives.iter().all(|r| r.kind == "client" && r.parent_span_id.is_none()));

    // The shape of every trace.
    let report = shape::check(&spans, &Rules { max_attempts: Some(2), ..Rules::default() });
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.jobs, report.sends, report.processes), (ids.len(), 4, 6), "{report}");

    // The docs' span attribute table names every attribute a run exported, on the spans it exported it on, with
    // the type it was exported as (an integer exported as its decimal text breaks a backend's numeric queries).
    let documented = documented_attributes();
    for span in &spans {
        let Some(kind) = span_class(span) else { continue };
        for (name, exported) in &span.attribute_types {
            let (ty, on) =
                documented.get(name.as_str()).unwrap_or_else(|| panic!("{name} is not in docs/wire-format.md"));
            assert!(on.contains(kind), "docs/wire-format.md lists {name} on {on:?}, but a {kind} span has it");
            assert_eq!(exported, ty, "{name} on a {kind} span is exported as {exported}; docs/wire-format.md: {ty}");
        }
    }
}

/// The documentation's class of a span: `send`, `receive`, `process` or the settle spans' names.
fn span_class(span: &ReceivedSpan) -> Option<&'static str> {
    match (op(span), span.attr("messaging.operation.name")) {
        ("send", _) => Some("send"),
        ("receive", _) => Some("receive"),
        ("process", _) => Some("process"),
        ("settle", Some("ack")) => Some("ack"),
        ("settle", Some("retry")) => Some("retry"),
        ("settle", Some("dead_letter")) => Some("dead_letter"),
        _ => None,
    }
}

/// The rows of the first table after `marker` in `docs/wire-format.md`, each as its trimmed cells (the header
/// and separator rows included).
fn wire_format_table(marker: &str) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-format.md")).unwrap();
    let section = doc.split(marker).nth(1).unwrap_or_else(|| panic!("{marker} in docs/wire-format.md"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|line| line.trim_matches('|').split('|').map(|cell| cell.trim().to_owned()).collect())
        .collect()
}

/// `docs/wire-format.md`'s attribute table: attribute → its type and the spans its "on" column names.
fn documented_attributes() -> BTreeMap<String, (String, String)> {
    let mut documented = BTreeMap::new();
    for cells in wire_format_table("**Attributes**").into_iter().filter(|cells| cells.len() > 2) {
        // A row may name several attributes, with as many types.
        for (name, ty) in cells[0].split(", ").zip(cells[1].split(", ")) {
            documented.insert(name.trim_matches('`').to_owned(), (ty.to_owned(), cells[2].clone()));
        }
    }
    documented
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_queue_keeps_one_destination_name_and_names_the_partition() {
    let fx = Fixture::start().await;
    // 20 jobs: all on one partition by chance once in 2^19 runs.
    run_jobs(&fx, "parts", "2", 16, &[]);
    let spans = fx
        .sink
        .wait_for(WAIT, |spans| spans.iter().filter(|s| op(s) == "process").count() == 22)
        .await
        .unwrap_or_else(|partial| panic!("spans missing: {partial:#?}"));
    let mut partitions = BTreeSet::new();
    for span in spans.iter().filter(|s| s.attr("messaging.system").is_some()) {
        let name = span.attr("messaging.operation.name").unwrap();
        assert_eq!(span.name, format!("{name} parts"), "low-cardinality name: {span:?}");
        assert_eq!(span.attr("messaging.destination.name"), Some("parts"));
        partitions.insert(span.attr("messaging.destination.partition.id").expect("the partition").to_owned());
    }
    assert_eq!(partitions, BTreeSet::from(["0".to_owned(), "1".to_owned()]));
    let report = shape::check(&spans, &Rules::default());
    assert!(report.is_clean(), "{report}");
}

/// The last point (cumulative) of `name` whose attributes include `with`.
fn last<'a>(points: &'a [ReceivedPoint], name: &str, with: &[(&str, &str)]) -> Option<&'a ReceivedPoint> {
    points.iter().rev().find(|p| p.name == name && with.iter().all(|(k, v)| p.attr(k) == Some(*v)))
}

async fn metrics_over(protocol: &str) {
    let fx = Fixture::start().await;
    let queue = "meters";
    let env = [
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
    ];
    let endpoint = if protocol == "grpc" { fx.sink.grpc_endpoint() } else { fx.sink.http_endpoint() };
    let mut env = env.to_vec();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
    run_jobs(&fx, queue, "1", 0, &env);
    let points = fx.sink.points();
    let port = fx.redis.port().to_string();
    let common =
        [("messaging.system", "redis"), ("messaging.destination.name", queue), ("server.address", "127.0.0.1")];

    let sent = last(&points, "messaging.client.sent.messages", &common).expect("sent.messages");
    assert_eq!((sent.kind, sent.monotonic, sent.unit.as_str()), ("sum", true, "{message}"));
    assert_eq!(sent.attr("messaging.operation.name"), Some("send"));
    assert_eq!(sent.attr("server.port"), Some(port.as_str()));
    assert_eq!(sent.service_name, "test-producer");
    // Each `producer enqueue` is its own process: one job each.
    assert_eq!(sent.value, 1.0);

    let consumed = last(&points, "messaging.client.consumed.messages", &common).expect("consumed.messages");
    assert_eq!(consumed.attr("messaging.consumer.group.name"), Some("workers"));
    assert_eq!(consumed.value, 6.0, "4 first deliveries and 2 retries");

    let buckets = vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
    let ok = last(&points, "messaging.process.duration", &common).filter(|p| p.attr("error.type").is_none());
    let ok = ok.or_else(|| {
        points.iter().rev().find(|p| p.name == "messaging.process.duration" && p.attr("error.type").is_none())
    });
    let ok = ok.expect("process.duration");
    assert_eq!((ok.kind, ok.unit.as_str(), &ok.bounds), ("histogram", "s", &buckets));
    assert_eq!(ok.count, 3, "three attempts succeeded");
    let failed = last(&points, "messaging.process.duration", &[("error.type", "simulated_failure")]).unwrap();
    assert_eq!(failed.count, 3, "three attempts failed");

    for (name, kind) in [("receive", "receive"), ("ack", "settle"), ("retry", "settle"), ("dead_letter", "settle")] {
        let with = [("messaging.operation.name", name), ("messaging.operation.type", kind)];
        let point = last(&points, "messaging.client.operation.duration", &with)
            .unwrap_or_else(|| panic!("operation.duration of {name}: {points:#?}"));
        assert_eq!(point.attr("messaging.consumer.group.name"), Some("workers"));
        assert_eq!(point.bounds, buckets);
    }
    let retried = last(&points, "messaging.client.operation.duration", &[("messaging.operation.name", "retry")]);
    assert_eq!(retried.unwrap().count, 2);
    let send = [("messaging.operation.name", "send"), ("messaging.operation.type", "send")];
    assert!(last(&points, "messaging.client.operation.duration", &send).is_some());

    // The docs' metric table lists each metric with its instrument and unit, and the attributes it carries; each
    // metric it lists was exported.
    let documented = documented_metrics();
    let exported: BTreeSet<&str> =
        points.iter().filter(|p| p.name.starts_with("messaging.")).map(|p| p.name.as_str()).collect();
    assert_eq!(exported, documented.keys().map(String::as_str).collect::<BTreeSet<_>>());
    for point in points.iter().filter(|p| p.name.starts_with("messaging.")) {
        let (instrument, unit, attributes) =
            documented.get(&point.name).unwrap_or_else(|| panic!("{} is not in docs/wire-format.md", point.name));
        assert_eq!((instrument.as_str(), unit.as_str()), (point.kind, point.unit.as_str()), "{}", point.name);
        for name in point.attributes.keys() {
            assert!(attributes.contains(name), "docs list no {name} on {}", point.name);
        }
    }
}

/// `docs/wire-format.md`'s metric table: metric → (kind as exported, unit, attribute names).
fn documented_metrics() -> BTreeMap<String, (String, String, String)> {
    wire_format_table("## Metrics over OTLP")
        .into_iter()
        .filter(|cells| cells.len() > 3 && cells[0].starts_with("`messaging."))
        .map(|cells| {
            let kind = if cells[1].starts_with("counter") { "sum" } else { "histogram" };
            let unit = cells[2].trim_matches('`').to_owned();
            (cells[0].trim_matches('`').to_owned(), (kind.to_owned(), unit, cells[3].clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_messaging_metrics_go_out_over_otlp_http() {
    metrics_over("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_messaging_metrics_go_out_over_otlp_grpc() {
    metrics_over("grpc").await;
}

async fn logs_over(protocol: &str) {
    let fx = Fixture::start().await;
    let queue = "logged";
    let endpoint = if protocol == "grpc" { fx.sink.grpc_endpoint() } else { fx.sink.http_endpoint() };
    let env = [
        ("OTEL_LOGS_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    run_jobs(&fx, queue, "1", 0, &env);
    let spans = fx.sink.wait_for(WAIT, |s| s.iter().filter(|s| op(s) == "process").count() == 6).await.unwrap();
    let logs: Vec<ReceivedLog> = fx.sink.logs();
    let consumer_logs: Vec<&ReceivedLog> = logs.iter().filter(|l| l.service_name == "test-consumer").collect();
    assert!(consumer_logs.iter().any(|l| l.body == "worker started" && l.severity_text == "INFO"), "{logs:#?}");

    // Each failed attempt: a `messaging.process.exception` record (ERROR) in its process span's context.
    let exceptions: Vec<&&ReceivedLog> =
        consumer_logs.iter().filter(|l| l.event_name == "messaging.process.exception").collect();
    assert_eq!(exceptions.len(), 3, "{consumer_logs:#?}");
    for record in &exceptions {
        assert_eq!(record.severity_number, 17, "ERROR");
        assert_eq!(record.attr("exception.type"), Some("simulated_failure"));
        let span = spans.iter().find(|s| Some(s.span_id.as_str()) == record.span_id.as_deref()).expect("its span");
        assert_eq!(span.name, format!("process {queue}"));
        assert_eq!(Some(span.trace_id.as_str()), record.trace_id.as_deref());
        assert_eq!(span.status, "error");
    }
    // A line logged with an explicit parent outside its scope (the retry's) carries that span's ids too.
    let retry = consumer_logs.iter().find(|l| l.body == "job failed; retry scheduled").expect("the retry line");
    let span = spans.iter().find(|s| Some(s.span_id.as_str()) == retry.span_id.as_deref()).expect("its span");
    assert_eq!(span.name, format!("process {queue}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_records_go_out_over_otlp_http_in_their_spans() {
    logs_over("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_records_go_out_over_otlp_grpc_in_their_spans() {
    logs_over("grpc").await;
}

/// Sampling is parent-based (DESIGN §4): a job whose producer did not sample its trace is processed unsampled,
/// exports nothing (no `process`, `receive` or `ack` span, no child span), and still carries its trace id on to
/// the jobs it enqueues, flags `00`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsampled_trace_stays_unsampled_and_still_propagates() {
    let fx = Fixture::start().await;
    let queue = "unsampled";
    let consumer = fx.spawn(fx.consumer(queue, "c0", &[]), "c0");
    let mut producer = fx.producer();
    producer.env("OTEL_TRACES_SAMPLER", "always_off");
    let job = enqueue(producer, queue, "fanout", r#"{"children":2,"depth":1,"leaf":"demo"}"#, 1).remove(0);
    // A sampled job beside it: the same consumer exports its spans, so the receiver is listening.
    let sampled = enqueue(fx.producer(), queue, "noop", "{}", 1).remove(0);
    let mut conn = fx.conn();
    wait_until(WAIT, "the fanout job, its two children and the sampled job done", || {
        done_counts(&mut conn, queue).len() == 4
    });
    assert_eq!(consumer.terminate(), Some(0), "exits 0, its spans flushed");

    let entries: Vec<_> = entries_text(&mut conn, &keys(queue).stream)
        .into_iter()
        .filter(|e| e["traceparent"].split('-').nth(1) != Some(sampled.trace_id.as_str()))
        .collect();
    assert_eq!(entries.len(), 3, "{entries:#?}");
    for entry in &entries {
        let traceparent = &entry["traceparent"];
        assert_eq!(traceparent.split('-').nth(1), Some(job.trace_id.as_str()), "one trace: {entries:#?}");
        assert!(traceparent.ends_with("-00"), "unsampled all the way: {traceparent}");
    }
    let spans = fx.sink.spans();
    let process = format!("process {queue}");
    assert!(spans.iter().any(|s| s.trace_id == sampled.trace_id && s.name == process), "{spans:#?}");
    for span in &spans {
        assert_ne!(span.trace_id, job.trace_id, "nothing exported in the unsampled trace: {span:#?}");
        assert!(span.links.iter().all(|(trace, _)| *trace != job.trace_id), "no link into it either: {span:#?}");
    }
}

/// The exporter variables of metrics and logs take any of the specification's values: a process told
/// `OTEL_METRICS_EXPORTER=prometheus` or `OTEL_LOGS_EXPORTER=console` runs (metrics stay on `/metrics`, logs on
/// stderr), and a signal that is not exported does not read its settings (a CA file that is not there, a
/// time-out that is not a number, are no reason to refuse to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_exporters_and_settings_of_signals_that_are_off_do_not_stop_a_process() {
    let fx = Fixture::start().await;
    for env in [
        vec![("OTEL_METRICS_EXPORTER", "prometheus"), ("OTEL_LOGS_EXPORTER", "console")],
        vec![("OTEL_TRACES_EXPORTER", "none"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")],
        vec![("OTEL_METRICS_EXPORTER", "none"), ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon")],
    ] {
        let mut producer = fx.producer();
        producer.envs(env.iter().copied());
        enqueue(producer, "lists", "noop", "{}", 1);
    }
}

/// The integer attributes of a scheduled job with a timeout (`jobstream.job.scheduled_for` on its `send`,
/// `jobstream.job.timeout_ms` on its `process`) are exported as integers, as the docs' table types them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn integer_attributes_are_exported_as_integers() {
    let fx = Fixture::start().await;
    let queue = "ints";
    let service = fx.spawn(fx.consumer(queue, "c0", &[]), "c0");
    let flags = ["--payload", r#"{"n":1}"#, "--delay", "1s", "--timeout", "30s"];
    let trace_id = enqueue_with(fx.producer(), queue, "demo", &flags).trace_id;
    let spans = fx
        .sink
        .wait_for(WAIT, |spans| !named(spans, &trace_id, &format!("process {queue}")).is_empty())
        .await
        .unwrap_or_else(|partial| panic!("spans missing: {partial:#?}"));
    assert_eq!(service.terminate(), Some(0));
    let send = named(&spans, &trace_id, &format!("send {queue}"))[0];
    let process = named(&spans, &trace_id, &format!("process {queue}"))[0];
    let documented = documented_attributes();
    for (span, names) in [
        (send, &["jobstream.job.scheduled_for", "jobstream.job.attempt", "messaging.message.body.size"][..]),
        (process, &["jobstream.job.timeout_ms", "jobstream.delivery.count", "jobstream.queue.wait_ms"][..]),
    ] {
        for name in names {
            assert_eq!(documented[*name].0, "int", "docs/wire-format.md types {name} as int");
            assert_eq!(span.attribute_types.get(*name).copied(), Some("int"), "{name} on {}: {span:?}", span.name);
        }
    }
}
