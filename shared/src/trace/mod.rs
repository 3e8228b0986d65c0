//! Every span jobstream emits, and the propagator that carries their context through a stream entry.
//!
//! The shapes, all following the OpenTelemetry messaging semantic conventions (attribute names in [`semconv`]),
//! are built only in [`spans`], so producer, worker, admin and tests agree on every name:
//!
//! - `send <Q>` (PRODUCER, operation `send`): one per enqueued job, a child of the caller's current span; its
//!   context is injected into the entry's `traceparent`, `tracestate` and `baggage` fields by [`propagation`].
//!   Carries the job's id, kind and attempt, the entry id once written, `error.type` and an error status when
//!   the write failed, and `jobstream.idempotent.duplicate` when an idempotency key matched an earlier job.
//! - `send <Q>` (PRODUCER, operation `replay`): a dead job put back on the queue; it starts a new trace with a
//!   span link to the trace the job died in, and names the dead entry in `jobstream.replay.of`.
//! - `process <Q>` (CONSUMER, operation `process`): one per attempt, a child of the entry's `send` span (or a
//!   new root linked to it, [`crate::TraceMode::Link`]); it records the delivery count, a takeover, the queue
//!   wait and what became of the entry's trace context; a failed attempt sets `error.type` and an error status.
//!   The handler runs inside it, so the handler's own spans are its children.
//! - `settle` (an event on the `process` span): how the attempt was settled, `ack`, `retry` (with the delay and
//!   the next attempt's number) or `dead`; written only once Redis has made the move.

pub(crate) mod endpoint;
pub mod propagation;
pub mod semconv;
pub(crate) mod spans;
