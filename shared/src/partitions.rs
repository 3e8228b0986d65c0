//! The partition record: how many partitions a queue has, written to Redis by the first process that uses the
//! queue, so that a producer and a consumer that disagree on `--partitions` are refused with a clear error
//! instead of stranding jobs in partitions nobody reads.
//!
//! The record is the key `<prefix>:{<Q>}:partitions` ([`Keys::partition_record`]), a decimal string, set with
//! `SET … NX` and never expired; it sits under the queue's own hash tag whether or not the queue is partitioned.
//! A process checks it once at start (producers: before their first enqueue), not per job. A check reads first
//! (`GET`, allowed while Redis is at `maxmemory`) and writes only when nothing is recorded yet.
//!
//! Changing a queue's partition count is an operator's act: drain the queue, stop its producers and consumers,
//! `DEL` the record, start them with the new count.

use redis::aio::ConnectionLike;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::connection::Pool;
use crate::keys::{Keys, NameError, QueueName};

/// Why a queue's partition count was refused or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Redis records another partition count for the queue than this process was given.
    #[error(
        "queue {queue} has {recorded} partition(s) recorded in Redis ({key}) but --partitions {given} was given: \
         run every producer and consumer of the queue with --partitions {recorded} (JOBSTREAM_PARTITIONS), or, to \
         change it, drain the queue, stop them all and delete {key}"
    )]
    Mismatch {
        /// The queue.
        queue: QueueName,
        /// The record's key.
        key: String,
        /// The count in Redis.
        recorded: u32,
        /// The count this process was given.
        given: u32,
    },
    /// The record holds something that is not a partition count.
    #[error("{key} holds {value:?}, not a partition count: delete it and start again with the queue's --partitions")]
    Unreadable {
        /// The record's key.
        key: String,
        /// What it holds.
        value: String,
    },
    /// Redis could not be reached or did not answer the check.
    #[error("cannot check the partition count of queue {queue} in Redis: {reason}")]
    Unavailable {
        /// The queue.
        queue: QueueName,
        /// What went wrong.
        reason: String,
    },
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Redis records the same count.
    Agrees,
    /// Nothing was recorded; this check recorded the count.
    Recorded,
    /// Nothing is recorded and Redis refused to record it (at `maxmemory`, or an ACL without the key): the next
    /// check tries again. The process goes on, as it did before there were records.
    NotRecorded,
}

/// One queue's partition count, to check against Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecord {
    queue: QueueName,
    key: String,
    partitions: u32,
}

impl PartitionRecord {
    /// The record of `queue` under `prefix`, for a process given `partitions` (1 for an unpartitioned queue).
    pub fn new(prefix: &str, queue: &QueueName, partitions: u32) -> Result<Self, NameError> {
        Ok(Self { queue: queue.clone(), key: Keys::partition_record(prefix, queue)?, partitions: partitions.max(1) })
    }

    /// The record's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The partition count this process was given.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Compares the count with Redis's record, and records it when nothing is recorded yet.
    pub(crate) async fn check_and_record<C: ConnectionLike>(&self, conn: &mut C) -> Result<Checked, PartitionError> {
        if let Some(recorded) = self.read(conn).await? {
            return self.compare(&recorded).map(|()| Checked::Agrees);
        }
        let earlier: redis::RedisResult<Option<String>> =
            redis::cmd("SET").arg(&self.key).arg(self.partitions).arg("NX").arg("GET").query_async(conn).await;
        match earlier {
            Ok(None) => Ok(Checked::Recorded),
            // Another process recorded it between the GET and the SET.
            Ok(Some(recorded)) => self.compare(&recorded).map(|()| Checked::Agrees),
            Err(e) if matches!(e.code(), Some("OOM") | Some("NOPERM")) => {
                tracing::warn!(key = %self.key, error = %e, "the queue's partition count could not be recorded; will try again");
                Ok(Checked::NotRecorded)
            }
            Err(source) => Err(self.unavailable(source)),
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> PartitionError {
        PartitionError::Unavailable { queue: self.queue.clone(), reason: reason.to_string() }
    }

    /// Compares the count with Redis's record without writing anything (for read-only commands).
    pub async fn check(&self, pool: &Pool) -> Result<(), PartitionError> {
        let mut conn = pool.get().await.map_err(|e| self.unavailable(e))?;
        match self.read(&mut conn).await? {
            Some(recorded) => self.compare(&recorded),
            None => Ok(()),
        }
    }

    /// Compares the count with Redis's record, and records it when nothing is recorded yet, at a process's start:
    /// while Redis does not answer, tries again with back-off (up to 5 s apart, one warning) until it does or
    /// `stop` is cancelled. Only a disagreement (or an unreadable record) is an error.
    pub async fn check_at_start(&self, pool: &Pool, stop: &CancellationToken) -> Result<(), PartitionError> {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let result = match pool.get().await {
                Ok(mut conn) => self.check_and_record(&mut conn).await,
                Err(source) => Err(self.unavailable(source)),
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e @ PartitionError::Unavailable { .. }) => {
                    if !warned {
                        tracing::warn!(error = %e, "cannot check the queue's partition count yet; retrying");
                        warned = true;
                    }
                }
                Err(refused) => return Err(refused),
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn read<C: ConnectionLike>(&self, conn: &mut C) -> Result<Option<String>, PartitionError> {
        match redis::cmd("GET").arg(&self.key).query_async::<Option<String>>(conn).await {
            Ok(value) => Ok(value),
            Err(e) if e.code() == Some("NOPERM") => {
                tracing::warn!(key = %self.key, error = %e, "the queue's partition count cannot be read (ACL); not checked");
                Ok(None)
            }
            Err(source) => Err(self.unavailable(source)),
        }
    }

    fn compare(&self, recorded: &str) -> Result<(), PartitionError> {
        match recorded.trim().parse::<u32>() {
            Ok(n) if n == self.partitions => Ok(()),
            Ok(n) if n >= 1 => Err(PartitionError::Mismatch {
                queue: self.queue.clone(),
                key: self.key.clone(),
                recorded: n,
                given: self.partitions,
            }),
            _ => Err(PartitionError::Unreadable { key: self.key.clone(), value: recorded.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_says_both_counts_and_the_fix_in_one_line() {
        let record = PartitionRecord::new("jobstream", &QueueName::parse("jobs").unwrap(), 1).unwrap();
        assert!(record.compare("1").is_ok());
        let text = record.compare("4").unwrap_err().to_string();
        assert!(text.contains("4 partition(s) recorded") && text.contains("--partitions 1 was given"), "{text}");
        assert!(text.contains("--partitions 4") && !text.contains('\n'), "{text}");
        assert!(matches!(record.compare("zero"), Err(PartitionError::Unreadable { .. })));
        assert!(matches!(record.compare("0"), Err(PartitionError::Unreadable { .. })));
    }
}
