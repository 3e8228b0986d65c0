//! One fixture for the tests that run the binaries: a private Redis, an OTLP sink that keeps every span, and a
//! folder for the processes' logs, with the commands of the `producer` and `consumer` binaries pointed at both.

use std::process::Command;

use crate::{consumer, traced, OtlpSink, RedisServer, Service};

/// Redis, the OTLP sink and a log folder of one test; everything stops when it is dropped.
pub struct Fixture {
    /// The test's own `redis-server`.
    pub redis: RedisServer,
    /// The receiver the processes export their spans to.
    pub sink: OtlpSink,
    /// Where [`Fixture::spawn`] writes each process's log.
    pub logs: tempfile::TempDir,
}

impl Fixture {
    /// Starts a plain `redis-server` and the sink.
    pub async fn start() -> Self {
        Self::with_redis(RedisServer::start()).await
    }

    /// Starts the sink next to a Redis the test started itself (with persistence, TLS, extra arguments…).
    pub async fn with_redis(redis: RedisServer) -> Self {
        let sink = OtlpSink::start().await.expect("start the OTLP sink");
        Self { redis, sink, logs: tempfile::tempdir().expect("log dir") }
    }

    /// A consumer command for `queue` named `name` with fast polling and `flags`; see [`consumer`].
    pub fn consumer(&self, queue: &str, name: &str, flags: &[&str]) -> Command {
        consumer(&self.redis, &self.sink, queue, name, flags)
    }

    /// A `producer` command traced to the sink as `test-producer`, with no subcommand yet.
    pub fn producer(&self) -> Command {
        traced("producer", &self.redis, &self.sink, "test-producer")
    }

    /// Spawns `cmd` as a long-running process logging to `<logs>/<name>.log`.
    pub fn spawn(&self, cmd: Command, name: &str) -> Service {
        Service::spawn(cmd, self.logs.path(), name)
    }

    /// A synchronous connection to the test's Redis, for assertions.
    pub fn conn(&self) -> redis::Connection {
        self.redis.conn()
    }
}
