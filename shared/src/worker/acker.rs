//! Batched acknowledgement: job tasks hand over the ids of jobs that succeeded, and one task sends them with one
//! XACK per batch. Acknowledging after success is unchanged; only the round trips are shared. If Redis is
//! unreachable the ids are kept and sent again with back-off; ids still unsent when the worker gives up stay
//! pending and are redelivered (at-least-once).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::SpanContext;

use crate::connection::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::keys::{GroupName, Keys};
use crate::loadprobe::{Mark, Probes};
use crate::messaging_metrics::{MessagingMetrics, Settlement};
use crate::stream;
use crate::trace::spans::{BatchOperation, BatchSpans};

use super::Shared;
use crate::connection::Held;

/// Most ids in one XACK.
const MAX_BATCH: usize = 1024;

/// A finished job's final record: field `job_id` of the hourly hash `key`, which expires at `expire_at_ms`
/// (unix ms: the job retention after its hour ends; [`crate::jobs`]).
#[derive(Debug)]
pub(crate) struct RecordUpdate {
    pub(crate) key: String,
    pub(crate) job_id: String,
    pub(crate) json: String,
    pub(crate) expire_at_ms: u64,
}

/// How often an hourly hash's expiry is sent again (it is the same absolute time each time: only a hash deleted
/// and made again in between needs it).
const EXPIRE_AGAIN: Duration = Duration::from_secs(60);

/// One acknowledgement.
#[derive(Debug)]
pub(crate) struct Ack {
    /// The entry id.
    pub(crate) id: String,
    /// The job's load-test mark.
    pub(crate) mark: Option<Mark>,
    /// Its final record, sent in the same round trip as the XACK.
    pub(crate) record: Option<RecordUpdate>,
    /// The attempt's `process` span, which the `ack` span links to.
    pub(crate) process: SpanContext,
}

/// Sends ids of successful jobs to the acknowledging task.
#[derive(Clone)]
pub(crate) struct AckSender(mpsc::UnboundedSender<Ack>);

impl AckSender {
    /// Queues one entry for acknowledgement. Fails only after the acker stopped.
    pub(crate) fn send(&self, ack: Ack) -> bool {
        self.0.send(ack).is_ok()
    }
}

/// Starts the acknowledging task. It ends when every [`AckSender`] is dropped and all ids are sent, or when
/// `give_up` is cancelled while Redis is unreachable.
pub(crate) fn spawn(shared: &Shared, give_up: CancellationToken) -> (AckSender, tokio::task::JoinHandle<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let acker = Acker {
        pool: shared.pool.clone(),
        keys: shared.keys.clone(),
        group: shared.config.group.clone(),
        probes: shared.probes.clone(),
        spans: shared.batch_spans.clone(),
        metrics: shared.messaging.clone(),
    };
    let task = tokio::spawn(run(acker, rx, give_up));
    (AckSender(tx), task)
}

/// What the acknowledging task needs of its partition's worker.
struct Acker {
    pool: Pool,
    keys: Keys,
    group: GroupName,
    probes: Arc<Probes>,
    spans: Arc<BatchSpans>,
    metrics: MessagingMetrics,
}

impl Acker {
    /// Records one XACK round trip: its `ack` span (linking to each job's `process` span) and its duration.
    fn record(&self, batch: &[Ack], start: SystemTime, took: std::time::Duration, error: Option<&str>) {
        let messages = batch.iter().map(|ack| (&ack.process, ack.id.as_str()));
        let error = error.map(|message| ("redis_error", message));
        self.spans.ack(messages, BatchOperation { start, end: start + took, error });
        self.metrics.settled(Settlement::Ack, took, error.map(|(t, _)| t));
    }
}

async fn run(acker: Acker, mut rx: mpsc::UnboundedReceiver<Ack>, give_up: CancellationToken) -> u64 {
    let Acker { pool, keys, group, probes, .. } = &acker;
    let mut batch: Vec<Ack> = Vec::with_capacity(MAX_BATCH);
    // The hourly hash whose expiry was last sent, and when.
    let mut expired: Option<(String, std::time::Instant)> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut unsent = 0;
    // The connection of the last XACK, kept while acknowledgements keep coming ([`Held`]); given back after
    // `Held::IDLE` without one.
    let mut held = Held::default();
    loop {
        let received = match tokio::time::timeout(Held::IDLE, rx.recv_many(&mut batch, MAX_BATCH)).await {
            Ok(received) => received,
            Err(_) => {
                held.release();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if received == 0 {
            break;
        }
        loop {
            let ids: Vec<&str> = batch.iter().map(|ack| ack.id.as_str()).collect();
            let (start, started) = (SystemTime::now(), std::time::Instant::now());
            let sent = async {
                let mut conn = held.take(pool).await.map_err(|e| e.to_string())?;
                let mut pipe = redis::pipe();
                pipe.add_command(stream::ack_cmd(keys, group, &ids));
                // The final records follow the XACK in the same round trip, one HSET per hourly hash (almost
                // always one per batch); one refused (Redis full) never holds the acknowledgement back: a lookup
                // then finds the entry acknowledged and says done.
                let mut hashes: Vec<(&str, u64, redis::Cmd)> = Vec::new();
                for record in batch.iter().filter_map(|ack| ack.record.as_ref()) {
                    let at = match hashes.iter().position(|(key, ..)| *key == record.key) {
                        Some(at) => at,
                        None => {
                            let mut hset = redis::cmd("HSET");
                            hset.arg(&record.key);
                            hashes.push((&record.key, record.expire_at_ms, hset));
                            hashes.len() - 1
                        }
                    };
                    hashes[at].2.arg(&record.job_id).arg(&record.json);
                }
                for (key, expire_at_ms, hset) in hashes {
                    pipe.add_command(hset).ignore();
                    let fresh = expired.as_ref().is_some_and(|(last, at)| last == key && at.elapsed() < EXPIRE_AGAIN);
                    if !fresh {
                        pipe.cmd("PEXPIREAT").arg(key).arg(expire_at_ms).ignore();
                        expired = Some((key.to_owned(), std::time::Instant::now()));
                    }
                }
                pipe.ignore_errors();
                let mut replies: Vec<redis::RedisResult<u64>> =
                    pipe.query_async(&mut conn).await.map_err(|e| e.to_string())?;
                held.keep(pool, conn);
                replies.truncate(1);
                replies.pop().unwrap_or(Ok(0)).map_err(|e| e.to_string())
            }
            .await;
            acker.record(&batch, start, started.elapsed(), sent.as_ref().err().map(String::as_str));
            match sent {
                Ok(acked) => {
                    if acked < batch.len() as u64 {
                        // Taken over while this consumer was paused, and settled by their new owner: the new
                        // owner's record of them (a dead letter, a retry) is the later one and wins at lookup.
                        tracing::warn!(
                            acknowledged = acked,
                            sent = batch.len(),
                            "some entries were no longer pending for this consumer: their new owners settle them"
                        );
                    }
                    backoff.reset();
                    probes.acked(batch.iter().filter_map(|ack| ack.mark.as_ref()));
                    batch.clear();
                    break;
                }
                Err(error) => {
                    // The expiry may not have landed: send it again with the retry.
                    expired = None;
                    if backoff.failures() == 0 {
                        tracing::warn!(%error, ids = batch.len(), "XACK failed; retrying with back-off");
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.cancelled() => {
                            unsent += batch.len() as u64;
                            tracing::error!(ids = batch.len(), "gave up acknowledging; these jobs stay pending and will be redelivered");
                            batch.clear();
                            break;
                        }
                    }
                }
            }
        }
    }
    unsent
}
