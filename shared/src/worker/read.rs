//! Reads the entries a partition's worker runs: new ones with XREADGROUP and, when a pass is due, those other
//! consumers left idle past the visibility timeout (taken over page by page); creates the group on NOGROUP.

use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::SpanContext;

use super::{Shared, WorkerStats};
use crate::backoff::Backoff;
use crate::connection::Held;
use crate::job::field;
use crate::metrics::QueueLabels;
use crate::stream::{self, Delivery};
use crate::trace::propagation;
use crate::trace::spans::BatchOperation;

/// Where the next entries come from: stale entries of dead consumers when a reclaim pass is due, else new ones.
/// Keeps the group existing (recreating it after NOGROUP) and backs off while Redis is unreachable.
pub(super) struct Reader<'a> {
    shared: &'a Shared,
    /// Whether a read has succeeded: a group missing after that was lost (Redis restarted without persistence).
    has_read: bool,
    backoff: Backoff,
    reclaim_cursor: String,
    next_reclaim: Instant,
    /// The connection of the last read, kept while reads deliver entries back to back ([`Held`]).
    conn: Held,
}

impl<'a> Reader<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            has_read: false,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            reclaim_cursor: "0-0".to_owned(),
            next_reclaim: Instant::now(),
            conn: Held::default(),
        }
    }

    /// Gives the kept connection back, before the worker waits (for free slots, while paused, to stop).
    pub(super) fn release(&mut self) {
        self.conn.release();
    }

    /// Up to `count` deliveries, or how long to wait before trying again.
    pub(super) async fn next(&mut self, count: usize) -> Result<Vec<Delivery>, Duration> {
        let (start, started) = (SystemTime::now(), Instant::now());
        let read = self.read(count).await;
        self.record(&read, start, started.elapsed());
        match read {
            Ok(deliveries) => {
                if self.backoff.failures() > 0 {
                    tracing::info!(after_failures = self.backoff.failures(), "Redis reachable again");
                }
                self.backoff.reset();
                Ok(deliveries)
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                if self.backoff.failures() == 1 {
                    tracing::warn!(error = %e, "reading the queue failed; retrying with back-off");
                } else {
                    tracing::debug!(error = %e, ?delay, "reading the queue failed again");
                }
                Err(delay)
            }
        }
    }

    /// Records one read: its `receive` span, linking to each entry's creation context, and its metrics.
    fn record(&self, read: &redis::RedisResult<Vec<Delivery>>, start: SystemTime, took: Duration) {
        let shared = self.shared;
        let operation = |error| BatchOperation { start, end: start + took, error };
        match read {
            Ok(deliveries) => {
                shared.messaging.received(deliveries.len() as u64, took, None);
                // No `receive` span unless an entry's trace is sampled: tell from the flags before parsing any.
                let sampled = |d: &Delivery| d.field(field::TRACEPARENT).is_some_and(propagation::says_sampled);
                if !deliveries.iter().any(sampled) {
                    return;
                }
                let contexts: Vec<(SpanContext, &str)> = deliveries
                    .iter()
                    .map(|d| {
                        let cx = d.field(field::TRACEPARENT).and_then(propagation::span_context_of);
                        (cx.unwrap_or(SpanContext::NONE), d.message_id.as_str())
                    })
                    .collect();
                shared.batch_spans.receive(contexts.iter().map(|(cx, id)| (cx, *id)), operation(None));
            }
            Err(e) => {
                let message = e.to_string();
                shared.messaging.received(0, took, Some("redis_error"));
                shared.batch_spans.receive(std::iter::empty(), operation(Some(("redis_error", &message))));
            }
        }
    }

    async fn read(&mut self, count: usize) -> redis::RedisResult<Vec<Delivery>> {
        let shared = self.shared;
        let mut conn = self
            .conn
            .take(&shared.pool)
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let read = match self.read_from(&mut conn, count).await {
            // The group is created only when Redis says it is missing, by a script allowed under OOM, so a
            // consumer starts and keeps reading while Redis is at maxmemory.
            Err(e) if stream::is_no_group(&e) => {
                stream::ensure_group(&mut conn, &shared.keys, &shared.config.group).await?;
                if self.has_read {
                    tracing::warn!("the consumer group was gone (Redis restarted without persistence?); recreated it");
                } else {
                    tracing::info!(group = %shared.config.group, "created the consumer group");
                }
                self.read_from(&mut conn, count).await
            }
            other => other,
        };
        self.has_read |= read.is_ok();
        if read.as_ref().is_ok_and(|deliveries| !deliveries.is_empty()) {
            self.conn.keep(&shared.pool, conn);
        }
        read
    }

    async fn read_from(
        &mut self,
        conn: &mut crate::connection::Connection,
        count: usize,
    ) -> redis::RedisResult<Vec<Delivery>> {
        let shared = self.shared;
        let config = &shared.config;
        if Instant::now() >= self.next_reclaim {
            let claimed = stream::claim_stale(
                conn,
                &shared.keys,
                &config.group,
                &config.consumer,
                config.visibility_timeout,
                &self.reclaim_cursor,
                count,
            )
            .await?;
            if !claimed.deleted.is_empty() {
                tracing::warn!(ids = ?claimed.deleted, "pending entries no longer in the stream were dropped from the group");
            }
            if claimed.next_cursor == "0-0" {
                self.next_reclaim = Instant::now() + config.reclaim_every();
            }
            self.reclaim_cursor = claimed.next_cursor;
            if !claimed.deliveries.is_empty() {
                WorkerStats::add(&shared.stats.reclaimed, claimed.deliveries.len() as u64);
                shared
                    .metrics
                    .reclaims
                    .get_or_create(&QueueLabels { queue: shared.keys.queue().to_string() })
                    .inc_by(claimed.deliveries.len() as u64);
                tracing::info!(count = claimed.deliveries.len(), "took over jobs idle past the visibility timeout");
                return Ok(claimed.deliveries);
            }
        }
        stream::read_new(conn, &shared.keys, &config.group, &config.consumer, count, config.block).await
    }
}
