//! Test helpers shared by the end-to-end tests: a private `redis-server` per test, the built `producer` and
//! `consumer` binaries run as real processes, and polling helpers that wait on a condition with a deadline.
//! [`Fixture`] starts what most tests need at once: Redis, an OTLP sink and a folder for the processes' logs.
//!
//! The binaries are found next to the test executable's `deps/` folder; `scripts/test` builds them first.
//! Test files `use jobstream_tests::*;`: every helper is re-exported here, whichever module holds it.

mod fixture;
mod http;
mod process;
mod queue_state;
mod redis_server;
mod spans;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use fixture::Fixture;
pub use http::{http_exchange, http_get, http_request};
pub use process::{bin, consumer, enqueue, enqueue_with, plain, stderr_lines, traced, EnqueuedLine, Service};
pub use queue_state::{dead_entries, done_counts, entries_text, job_fields, keys, pending, pending_of, xadd_raw, xlen};
pub use redis_server::{make_certificates, on_node, RedisCluster, RedisServer};
pub use spans::{named, OtlpSink, ReceivedSpan};

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Polls `done` every 10 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
