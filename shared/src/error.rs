//! The one error of every library call that talks to Redis: what a caller branches on (Redis unavailable, a
//! command refused, something undecodable, a conflict), with the cause's text. Redis's and the pool's own error
//! types stay inside the crate.

use crate::enqueue::Enqueued;
use crate::job::{JobError, JobId};
use crate::keys::{IdempotencyKey, NameError};
use crate::partitions::PartitionError;
use crate::propagation::ContextError;

/// Why a library call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached: no connection within the time-out, or the connection broke.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error: out of memory (`maxmemory`), a key of the wrong type, a command the ACL
    /// user may not run…
    #[error("Redis refused the command: {0}")]
    Refused(String),
    /// A reply or a stored value could not be decoded.
    #[error("cannot decode {0}")]
    Decode(String),
    /// A setting is out of range or two settings contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A name (queue, group, prefix, idempotency key) is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A job could not be built: bad kind, payload not JSON, payload over the limit.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The trace context could not be written into the entry.
    #[error("cannot propagate the trace context: {0}")]
    Context(#[from] ContextError),
    /// The idempotency key was used, within its time to live, for a job of another kind or payload. Nothing
    /// was enqueued; `job_id` is the earlier job.
    #[error(
        "idempotency key {} was already used for job {job_id} with another kind or payload: nothing enqueued; \
         a new job needs a new key",
        key.as_str()
    )]
    IdempotencyConflict {
        /// The key.
        key: IdempotencyKey,
        /// The job enqueued with it before.
        job_id: JobId,
    },
    /// This process's partition count disagrees with the queue's record in Redis.
    #[error(transparent)]
    Partitions(#[from] PartitionError),
    /// Redis took some jobs of a batch and refused the others.
    #[error("{failed} jobs of the batch were not enqueued ({} were): {source}", enqueued.len())]
    Partial {
        /// The jobs written (not in the batch's order).
        enqueued: Vec<Enqueued>,
        /// How many were not.
        failed: usize,
        /// Why.
        source: Box<Error>,
    },
    /// A periodic schedule is invalid: its name, cadence (every, cron expression, time zone) or stored spec.
    #[error(transparent)]
    Schedule(#[from] crate::cron::ScheduleError),
    /// No such entry (a dead letter, a job).
    #[error("{0} not found")]
    NotFound(String),
    /// A dead entry that is not a job and cannot run again.
    #[error("dead entry {id} cannot run again: {reason}")]
    NotAJob {
        /// Its id in the dead stream.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The jobs that were enqueued although the call failed (only [`Error::Partial`] has any).
    pub fn enqueued(&self) -> &[Enqueued] {
        match self {
            Error::Partial { enqueued, .. } => enqueued,
            _ => &[],
        }
    }

    /// True when Redis refused the command for want of memory (`maxmemory` reached).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::Refused(message) if message.contains("OOM"))
    }
}

impl From<crate::connection::ConnectError> for Error {
    fn from(e: crate::connection::ConnectError) -> Self {
        Error::Config(e.to_string())
    }
}

#[doc(hidden)]
impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            Error::Unavailable(e.to_string())
        } else if e.kind() == redis::ErrorKind::Parse || e.kind() == redis::ErrorKind::UnexpectedReturnType {
            Error::Decode(e.to_string())
        } else {
            Error::Refused(e.to_string())
        }
    }
}

#[doc(hidden)]
impl From<deadpool_redis::PoolError> for Error {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

/// Results of library calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
