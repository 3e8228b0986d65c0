//! The real thing: `producer` and `consumer` binaries as separate processes, a private Redis, and the spans
//! they exported, decoded from the OTLP requests they sent.

use std::collections::HashSet;
use std::time::Duration;

use jobstream_tests::*;

const SPAN_WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_once_and_each_forms_one_trace_across_processes() {
    let fx = Fixture::start().await;
    let queue = "e2e";
    let consumers: Vec<_> = (0..2)
        .map(|i| fx.spawn(fx.consumer(queue, &format!("c{i}"), &["--concurrency", "8"]), &format!("c{i}")))
        .collect();

    let jobs = enqueue(fx.producer(), queue, "demo", r#"{"x":1}"#, 20);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "all 20 jobs to complete", || done_counts(&mut conn, queue).len() == 20);
    for consumer in consumers {
        assert_eq!(consumer.terminate(), Some(0), "consumers exit 0 on SIGTERM");
    }

    let done = done_counts(&mut conn, queue);
    for job in &jobs {
        assert_eq!(done.get(&job.job_id), Some(&1), "job {} ran exactly once", job.job_id);
    }
    assert_eq!(pending(&mut conn, queue, "workers"), 0, "nothing left pending");

    let trace_ids: HashSet<&str> = jobs.iter().map(|j| j.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), jobs.len(), "every job has its own trace");
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |spans| jobs.iter().all(|j| !named(spans, &j.trace_id, "save-data").is_empty()))
        .await
        .unwrap_or_else(|partial| panic!("spans missing; got {} spans", partial.len()));

    for job in &jobs {
        let sends = named(&spans, &job.trace_id, "send e2e");
        assert_eq!(sends.len(), 1, "one send span in trace {}", job.trace_id);
        let send = sends[0];
        assert_eq!(send.service_name, "test-producer");
        assert_eq!(send.kind, "producer");
        assert_eq!(send.attr("jobstream.job.id"), Some(job.job_id.as_str()));
        assert_eq!(send.attr("messaging.system"), Some("redis"));
        assert_eq!(send.attr("messaging.destination.name"), Some(queue));

        let processes = named(&spans, &job.trace_id, "process e2e");
        assert_eq!(processes.len(), 1, "one process span in trace {}", job.trace_id);
        let process = processes[0];
        assert_eq!(process.service_name, "test-consumer");
        assert_eq!(process.kind, "consumer");
        assert_eq!(process.parent_span_id.as_deref(), Some(send.span_id.as_str()), "process is a child of send");
        assert_eq!(process.attr("messaging.message.id"), send.attr("messaging.message.id"));
        assert_eq!(process.attr("messaging.consumer.group.name"), Some("workers"));
        assert!(matches!(process.attr("messaging.client.id"), Some("c0" | "c1")));
        assert_eq!(process.attr("jobstream.job.attempt"), Some("1"));
        assert_eq!(process.attr("jobstream.trace.context"), Some("continued"));
        assert!(process.attr("jobstream.queue.wait_ms").is_some());
        assert!(process.events.iter().any(|(name, attrs)| name == "settle"
            && attrs.get("jobstream.settle.outcome").map(String::as_str) == Some("ack")));

        for step in ["http-request", "load-data", "process-data", "save-data"] {
            let found = named(&spans, &job.trace_id, step);
            assert_eq!(found.len(), 1, "{step} in trace {}", job.trace_id);
            assert_eq!(
                found[0].parent_span_id.as_deref(),
                Some(process.span_id.as_str()),
                "{step} is a child of process"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fanout_job_makes_one_trace_over_three_hops() {
    let fx = Fixture::start().await;
    let queue = "fan";
    let consumer = fx.spawn(fx.consumer(queue, "c0", &["--concurrency", "8"]), "c0");
    let job = enqueue(fx.producer(), queue, "fanout", r#"{"children":2,"depth":2,"leaf":"demo"}"#, 1).remove(0);
    let mut conn = fx.conn();
    // 1 fanout of depth 2, 2 of depth 1, 4 demo leaves.
    wait_until(Duration::from_secs(30), "7 jobs to complete", || done_counts(&mut conn, queue).len() == 7);
    assert_eq!(consumer.terminate(), Some(0));

    // The shape of the whole run: seven sends, seven process spans each under its send, each acknowledged.
    let rules = jobstream_otlp_sink::shape::Rules { max_spans_per_trace: 100, max_attempts: Some(1) };
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |spans| {
            named(spans, &job.trace_id, "save-data").len() == 4
                && jobstream_otlp_sink::shape::check(spans, &rules).is_clean()
        })
        .await
        .unwrap_or_else(|partial| panic!("{}", jobstream_otlp_sink::shape::check(&partial, &rules)));
    let report = jobstream_otlp_sink::shape::check(&spans, &rules);
    assert_eq!((report.jobs, report.sends, report.processes), (7, 7, 7), "{report}");
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == job.trace_id).collect();
    assert_eq!(named(&spans, &job.trace_id, "process fan").len(), 7, "every job's process span is in the one trace");
    assert_eq!(named(&spans, &job.trace_id, "send fan").len(), 7, "every enqueue's send span too");

    // Walk from each leaf's save-data span up to the root: process, send, process, send, process, send.
    let by_id = |id: &str| *in_trace.iter().find(|s| s.span_id == id).unwrap_or_else(|| panic!("span {id} missing"));
    for leaf in named(&spans, &job.trace_id, "save-data") {
        let mut chain = Vec::new();
        let mut current = by_id(leaf.parent_span_id.as_deref().unwrap());
        loop {
            chain.push(current.name.as_str());
            match current.parent_span_id.as_deref() {
                Some(parent) => current = by_id(parent),
                None => break,
            }
        }
        assert_eq!(chain, ["process fan", "send fan", "process fan", "send fan", "process fan", "send fan"]);
    }
    let root = in_trace.iter().find(|s| s.parent_span_id.is_none()).unwrap();
    assert_eq!(root.service_name, "test-producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_also_go_out_over_grpc() {
    let fx = Fixture::start().await;
    let mut cmd = fx.consumer("grpc", "c0", &["--concurrency", "8"]);
    cmd.env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").env("OTEL_EXPORTER_OTLP_ENDPOINT", fx.sink.grpc_endpoint());
    let consumer = fx.spawn(cmd, "c0");
    let mut producer = fx.producer();
    producer.env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").env("OTEL_EXPORTER_OTLP_ENDPOINT", fx.sink.grpc_endpoint());
    let job = enqueue(producer, "grpc", "noop", "{}", 1).remove(0);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "the job to complete", || done_counts(&mut conn, "grpc").len() == 1);
    assert_eq!(consumer.terminate(), Some(0));
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |spans| !named(spans, &job.trace_id, "process grpc").is_empty())
        .await
        .unwrap_or_else(|partial| panic!("no process span over gRPC; got {partial:?}"));
    let send = named(&spans, &job.trace_id, "send grpc")[0];
    assert_eq!(named(&spans, &job.trace_id, "process grpc")[0].parent_span_id.as_deref(), Some(send.span_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_enqueues_once() {
    let fx = Fixture::start().await;
    let run = || {
        let out = fx
            .producer()
            .args(["enqueue", "--queue", "once", "--kind", "noop", "--idempotency-key", "order-42"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (first, _) = run();
    let (second, note) = run();
    assert_eq!(first, second, "the second call reports the first job, trace id included");
    assert!(note.contains("nothing enqueued"), "{note}");
    assert_eq!(xlen(&mut fx.conn(), &keys("once").stream), 1, "one entry on the stream");
    let many = fx
        .producer()
        .args(["enqueue", "--queue", "once", "--kind", "noop", "--idempotency-key", "k", "--count", "2"])
        .output()
        .unwrap();
    assert!(!many.status.success(), "a key names one job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_mode_starts_a_new_trace_linked_to_the_producer() {
    let fx = Fixture::start().await;
    let mut cmd = fx.consumer("linked", "c0", &["--concurrency", "8"]);
    cmd.args(["--trace-mode", "link"]);
    let worker = fx.spawn(cmd, "c0");
    let job = enqueue(fx.producer(), "linked", "demo", "{}", 1).remove(0);
    let mut conn = fx.conn();
    wait_until(Duration::from_secs(30), "the job", || done_counts(&mut conn, "linked").len() == 1);
    assert_eq!(worker.terminate(), Some(0));
    let spans = fx
        .sink
        .wait_for(SPAN_WAIT, |s| {
            s.iter().any(|s| s.name == "process linked") && s.iter().any(|s| s.name == "send linked")
        })
        .await
        .unwrap();
    let send = named(&spans, &job.trace_id, "send linked")[0];
    let process = spans.iter().find(|s| s.name == "process linked").unwrap();
    assert_ne!(process.trace_id, job.trace_id, "a new trace");
    assert!(process.parent_span_id.is_none(), "rooted in the consumer");
    assert_eq!(process.links, vec![(job.trace_id.clone(), send.span_id.clone())], "linked to the send span");
    assert_eq!(named(&spans, &process.trace_id, "save-data").len(), 1, "the handler's spans follow the new trace");
}

/// How many of a process's threads run Tokio tasks (Tokio names them `tokio-rt-worker`).
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the consumer's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_threads_sets_how_many_threads_run_jobs() {
    let fx = Fixture::start().await;
    let queue = "threads";
    let mut conn = fx.conn();
    let mut expected_done = 0;
    for threads in [1, 3] {
        let flags = ["--concurrency", "8", "--worker-threads", &threads.to_string()];
        let consumer = fx.spawn(fx.consumer(queue, &format!("t{threads}"), &flags), &format!("t{threads}"));
        enqueue(fx.producer(), queue, "demo", r#"{"x":1}"#, 5);
        expected_done += 5;
        wait_until(Duration::from_secs(30), "the jobs to complete", || {
            done_counts(&mut conn, queue).len() == expected_done
        });
        assert_eq!(runtime_workers(consumer.pid()), threads, "--worker-threads {threads}");
        assert_eq!(consumer.terminate(), Some(0));
    }
}
