//! The library as a Rust team uses it: `Producer` and `Worker` driven in-process through the public API only,
//! against a private Redis; and the README's quick start (`shared/examples/quickstart.rs`) run as built.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobstream::{admin, Error, Handlers, JobFailure, Producer, Queue, Worker, WorkerConfig};
use jobstream_tests::{wait_until, RedisServer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Email {
    to: String,
    n: u32,
}

fn pool(redis: &RedisServer) -> jobstream::connection::Pool {
    jobstream::connection::pool(&redis.url(), &Default::default()).unwrap()
}

fn fast() -> WorkerConfig {
    let mut config = WorkerConfig { block: Duration::from_millis(100), ..Default::default() };
    config.retry.base_delay = Duration::from_millis(10);
    config
}

/// Runs `worker` in the background; the returned token stops it.
fn start(worker: Worker) -> (CancellationToken, tokio::task::JoinHandle<jobstream::Result<()>>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_jobs_go_through_a_partitioned_queue_and_each_runs_once() {
    let redis = RedisServer::start();
    let queue = Queue::new("emails").unwrap().with_partitions(3).unwrap();
    let producer = Producer::new(pool(&redis), &queue);
    let mut sent = Vec::new();
    for n in 0..30 {
        sent.push(producer.enqueue("send-email", &Email { to: format!("u{n}@example.com"), n }).await.unwrap());
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handlers = Handlers::new().register_fn("send-email".parse().unwrap(), {
        let seen = seen.clone();
        move |job| {
            let seen = seen.clone();
            async move {
                let email: Email = job.payload()?;
                assert!(job.queue().is_some_and(|q| q.as_str().starts_with("emails:")), "read from a partition");
                seen.lock().unwrap().push((job.id, email));
                Ok(())
            }
        }
    });
    let worker = Worker::new(pool(&redis), &queue, handlers, fast()).unwrap();
    let stats = worker.stats();
    let (stop, task) = start(worker);
    wait_until(Duration::from_secs(20), "30 jobs run", || seen.lock().unwrap().len() >= 30);
    stop.cancel();
    task.await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 30, "each job ran once");
    for (i, enqueued) in sent.iter().enumerate() {
        let (_, email) = seen.iter().find(|(id, _)| *id == enqueued.job_id).expect("every job ran");
        assert_eq!(email.n as usize, i, "the payload arrived typed and whole");
    }
    assert_eq!(stats.succeeded.load(std::sync::atomic::Ordering::Relaxed), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_the_handler_cannot_read_is_dead_at_once_not_retried() {
    let redis = RedisServer::start();
    let queue = Queue::new("typed").unwrap();
    let producer = Producer::new(pool(&redis), &queue);
    let bad = producer.enqueue("send-email", &serde_json::json!({"to": 42})).await.unwrap();
    let attempts = Arc::new(Mutex::new(0));
    let handlers = Handlers::new().register_fn("send-email".parse().unwrap(), {
        let attempts = attempts.clone();
        move |job| {
            let attempts = attempts.clone();
            async move {
                *attempts.lock().unwrap() += 1;
                let _email: Email = job.payload()?;
                Ok::<_, JobFailure>(())
            }
        }
    });
    let p = pool(&redis);
    let keys = jobstream::Keys::new(queue.prefix(), queue.name()).unwrap();
    let (stop, task) = start(Worker::new(pool(&redis), &queue, handlers, fast()).unwrap());
    let mut dead = Vec::new();
    for _ in 0..2000 {
        dead = admin::dead_list(&p, &keys, "-", 10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(dead.len(), 1, "the job is dead");
    assert_eq!(dead[0].fields["id"], bad.job_id.to_string());
    assert_eq!(dead[0].fields["dead.reason"], "permanent_failure");
    assert!(dead[0].fields["dead.error"].contains("bad_payload"), "{:?}", dead[0].fields);
    assert_eq!(*attempts.lock().unwrap(), 1, "a bad payload is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_worker_configuration_is_refused_at_construction() {
    let redis = RedisServer::start();
    let queue = Queue::new("config").unwrap();
    let handlers = || Handlers::new().register_fn("k".parse().unwrap(), |_job| async { Ok(()) });
    type Breaks = Box<dyn Fn(&mut WorkerConfig)>;
    let cases: Vec<(&str, Breaks)> = vec![
        ("concurrency", Box::new(|c| c.concurrency = 0)),
        ("block time", Box::new(|c| c.block = Duration::ZERO)),
        ("shorter than the visibility timeout", Box::new(|c| c.visibility_timeout = Duration::from_secs(1))),
        ("consumer name", Box::new(|c| c.consumer = String::new())),
        ("retry base delay", Box::new(|c| c.retry.base_delay = Duration::from_secs(3600))),
    ];
    for (what, break_it) in cases {
        let mut config = WorkerConfig { block: Duration::from_secs(2), ..Default::default() };
        break_it(&mut config);
        match Worker::new(pool(&redis), &queue, handlers(), config) {
            Err(Error::Config(message)) => assert!(message.contains(what), "{what}: {message}"),
            other => panic!("{what}: expected a configuration error, got {other:?}"),
        }
    }
    let empty = Worker::new(pool(&redis), &queue, Handlers::new(), WorkerConfig::default());
    assert!(matches!(empty, Err(Error::Config(m)) if m.contains("no handler")));
    assert!(Queue::new("q").unwrap().with_partitions(0).is_err());
    assert!(matches!(Queue::new("bad{name}"), Err(Error::Name(_))));
    let names: Vec<String> = (0..2).map(|_| WorkerConfig::default().consumer).collect();
    assert_eq!(names[0], names[1], "one process, one default name");
    assert!(names[0].ends_with(&format!("-{}", std::process::id())), "the default name is <host>-<pid>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_an_unavailable_error() {
    let mut redis = RedisServer::start();
    let producer = Producer::new(pool(&redis), &Queue::new("gone").unwrap());
    producer.enqueue("k", &1).await.unwrap();
    redis.kill();
    let error = producer.enqueue("k", &2).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
}

#[test]
fn the_quickstart_example_enqueues_and_runs_a_job() {
    let redis = RedisServer::start();
    let example = jobstream_tests::bin("examples/quickstart");
    let out = std::process::Command::new(example).env("REDIS_URL", redis.url()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let id = stdout.lines().find_map(|l| l.strip_prefix("enqueued job ")).expect("the job id").to_owned();
    assert!(stdout.contains(&format!("sent to a@example.com (job {id}, attempt 1)")), "{stdout}");
}
