//! jobstream: a job queue on Redis Streams in which every job carries its distributed trace.
//!
//! A [`Producer`] puts jobs on a [`Queue`] with the W3C trace context of a `send` span in the entry's fields; a
//! [`Worker`] reads every partition of the queue in a consumer group and runs each job with its kind's handler
//! ([`Handlers`]) inside a `process` span that continues that trace, then settles it: acknowledged, retried
//! later, or dead-lettered with the reason. Every call that talks to Redis returns [`Error`]. The contract the
//! modules keep (keys, fields, span names, delivery semantics) is in `docs/design.md`; `docs/delivery.md`
//! states the guarantees and the tests that prove them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use jobstream::{Handlers, Producer, Queue, Worker, WorkerConfig};
//! let pool = jobstream::connection::pool("redis://127.0.0.1:6379", &Default::default())?;
//! let queue = Queue::new("emails")?;
//! Producer::new(pool.clone(), &queue).enqueue("send-email", &serde_json::json!({"to": "a@example.com"})).await?;
//! let handlers = Handlers::new().register_fn("send-email".parse()?, |job| async move {
//!     let email: serde_json::Value = job.payload()?;
//!     tracing::info!(%email, "sending");
//!     Ok(())
//! });
//! Worker::new(pool, &queue, handlers, WorkerConfig::default())?.run(jobstream::shutdown::on_signals()?).await?;
//! # Ok(()) }
//! ```
//!
//! # Module map
//! - What a user meets: [`queue`] (the [`Queue`] handle), [`enqueue`] ([`Producer`]), [`handler`] ([`Handlers`],
//!   [`JobFailure`]), [`job`] (the envelope and its codec), [`worker`] ([`Worker`], its configuration and duties:
//!   reading, one attempt, settling, promotion of due retries, claim renewal, trimming), [`error`], [`limits`],
//!   [`shutdown`] (SIGTERM/SIGINT as a cancellation token), [`cron`] (periodic schedules, enqueued by the
//!   workers one job per tick).
//! - Operating a queue: [`admin`] (stats, dead letters: list, show, replay, purge; trimming), [`counts`] (last-
//!   minute rates), [`consumers`] (removing dead consumers), [`partitions`] (the recorded partition count),
//!   [`metrics`] (the Prometheus registry), [`results`] (the shipped kinds' records), [`loadprobe`] (latency
//!   histograms of load runs).
//! - Tracing: [`propagation`] (W3C fields on the entry), [`semconv`] (attribute names).
//! - Redis: [`connection`] (an opaque [`connection::Pool`], TLS, Cluster); the stream commands and Lua scripts
//!   live in a crate-private module, so no Redis type appears in a public signature.
//! - Optional features, on for the binaries: `http` (`health`: `/healthz`, `/readyz`, `/metrics`, a router a
//!   user can mount), `telemetry` (OTLP export and logs from the `OTEL_*` variables), `cli` (`config`: the
//!   binaries' clap argument groups).

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod admin;
pub mod backoff;
pub mod bounds;
pub mod clock;
#[cfg(feature = "cli")]
pub mod config;
pub mod connection;
pub mod consumers;
pub mod counts;
pub mod cron;
#[cfg(feature = "http")]
pub mod dashboard;
pub mod enqueue;
pub mod error;
pub mod handler;
#[cfg(feature = "http")]
pub mod health;
pub mod job;
pub mod jobs;
pub mod keys;
pub mod kinds;
pub mod limits;
pub mod loadprobe;
pub(crate) mod messaging_metrics;
pub mod metrics;
pub mod partitions;
pub mod pause;
pub mod queue;
pub mod results;
pub mod retry;
pub mod shutdown;
pub(crate) mod stream;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub(crate) mod trace;
pub mod worker;

pub use enqueue::{Enqueued, Producer};
pub use error::{Error, Result};
pub use handler::{HandlerFn, Handlers, JobFailure, JobHandler};
pub use job::{Job, JobId, JobKind, Payload};
pub use keys::{GroupName, IdempotencyKey, Keys, QueueName};
pub use limits::Limits;
pub use queue::Queue;
pub use trace::{propagation, semconv};
pub use worker::{TraceMode, Worker, WorkerConfig, WorkerStats};
