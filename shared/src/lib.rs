//! jobstream: a job queue on Redis Streams in which every job carries its distributed trace.
//!
//! A [`Producer`] puts jobs on a Redis stream with the W3C trace context of a `send` span in the entry's fields;
//! a [`Worker`] reads them in a consumer group and runs each inside a `process` span that continues that trace,
//! then acknowledges it. The contract the modules keep (keys, fields, span names, delivery semantics) is in
//! `docs/design.md`.

pub mod admin;
pub mod backoff;
pub mod clock;
#[cfg(feature = "cli")]
pub mod config;
pub mod connection;
pub mod consumers;
pub mod counts;
pub mod enqueue;
pub mod error;
pub mod handler;
#[cfg(feature = "http")]
pub mod health;
pub mod job;
pub mod keys;
pub mod limits;
pub mod loadprobe;
pub mod metrics;
pub mod partitions;
pub mod propagation;
pub mod queue;
pub mod results;
pub mod retry;
pub mod semconv;
pub mod shutdown;
pub(crate) mod stream;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod worker;

pub use enqueue::{Enqueued, Producer};
pub use error::{Error, Result};
pub use handler::{HandlerFn, Handlers, JobFailure, JobHandler};
pub use job::{Job, JobId, JobKind, Payload};
pub use keys::{GroupName, IdempotencyKey, Keys, QueueName};
pub use limits::Limits;
pub use queue::Queue;
pub use worker::{TraceMode, Worker, WorkerConfig, WorkerStats};
