//! The worker's background duties besides reading: moving due retries from the delayed set back to the stream,
//! renewing the claim on jobs still running so no other worker reclaims them, trimming old entries and removing
//! consumers that are gone from the group, and publishing load-test latency probes. All stop on shutdown.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::backoff::Backoff;
use crate::{consumers, loadprobe, stream};

/// Jobs moved by one run of the promotion script.
const PROMOTE_BATCH: usize = 256;

/// Entry ids this worker is running now.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    pub(crate) fn insert(&self, id: &str) {
        self.0.lock().expect("in-flight set poisoned").insert(id.to_owned());
    }

    pub(crate) fn remove(&self, id: &str) {
        self.0.lock().expect("in-flight set poisoned").remove(id);
    }

    fn snapshot(&self) -> Vec<String> {
        self.0.lock().expect("in-flight set poisoned").iter().cloned().collect()
    }
}

/// Moves due jobs from the delayed set to the stream every `every`, until `stop`.
pub(crate) async fn promote(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut backoff = Backoff::new(every, Duration::from_secs(10));
    loop {
        let moved = async {
            let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
            let mut total = stream::Promoted::default();
            loop {
                let config = &shared.config;
                let now = crate::clock::now_ms();
                let run = stream::promote_due(
                    &mut conn,
                    &shared.keys,
                    now,
                    PROMOTE_BATCH,
                    config.dead_maxlen,
                    &config.consumer,
                )
                .await
                .map_err(|e| e.to_string())?;
                total.moved += run.moved;
                total.dead_lettered += run.dead_lettered;
                total.stuck += run.stuck;
                if run.total() < PROMOTE_BATCH || run.moved + run.dead_lettered == 0 {
                    return Ok::<_, String>(total);
                }
            }
        }
        .await;
        let pause = match moved {
            Ok(promoted) => {
                if promoted.moved > 0 {
                    tracing::debug!(moved = promoted.moved, "due retries moved to the stream");
                }
                if promoted.stuck > 0 {
                    tracing::error!(
                        stuck = promoted.stuck,
                        dead = %shared.keys.dead,
                        "delayed members that cannot become an entry stay in the delayed set: the dead stream's key holds another type"
                    );
                }
                if promoted.dead_lettered > 0 {
                    tracing::warn!(
                        dead_lettered = promoted.dead_lettered,
                        "delayed members that cannot become an entry were moved to the dead stream (reason undecodable)"
                    );
                }
                backoff.reset();
                every
            }
            Err(error) => {
                if backoff.failures() == 0 {
                    tracing::warn!(%error, "moving due retries failed; retrying with back-off");
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Renews the claim on every running job every `every`, until `stop`.
pub(crate) async fn renew(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ids = shared.in_flight.snapshot();
        if ids.is_empty() {
            continue;
        }
        let renewed = async {
            let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
            stream::renew_claims(&mut conn, &shared.keys, &shared.config.group, &shared.config.consumer, &ids)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match renewed {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(
                    ?lost,
                    "jobs still running here were taken over by another consumer; they may run twice"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, jobs = ids.len(), "renewing claims failed; will try again"),
        }
    }
}

/// Trims acknowledged entries past the retention and old dead entries, and removes the group's consumers idle
/// past `remove_idle_consumers_after` that hold nothing, every `every`, until `stop`.
pub(crate) async fn trim(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let config = &shared.config;
    let trims = config.retention.is_some() || config.dead_retention.is_some();
    if !trims && config.remove_idle_consumers_after.is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Some(min_idle) = config.remove_idle_consumers_after {
            remove_idle_consumers(&shared, min_idle).await;
        }
        if !trims {
            continue;
        }
        let trimmed = async {
            let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
            stream::trim(&mut conn, &shared.keys, config.retention, config.dead_retention)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match trimmed {
            Ok((0, 0)) => {}
            Ok((stream, dead)) => tracing::debug!(stream, dead, "trimmed old entries"),
            Err(error) => tracing::debug!(%error, "trimming failed; will try again"),
        }
    }
}

/// Removes the group's consumers idle for `min_idle` that hold no pending entry (never this worker), saying
/// which at info level.
async fn remove_idle_consumers(shared: &Shared, min_idle: Duration) {
    let config = &shared.config;
    let removed = async {
        consumers::remove_idle(&shared.pool, &shared.keys, &config.group, min_idle, &config.consumer)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match removed {
        Ok(names) => {
            for name in names {
                tracing::info!(
                    consumer = %name,
                    group = %config.group,
                    idle_at_least = ?min_idle,
                    "removed a consumer from the group: idle past the bound and holding no pending entry"
                );
            }
        }
        Err(error) => tracing::debug!(%error, "removing idle consumers failed; will try again"),
    }
}

/// Records the queue's counters for the last-minute rates ([`crate::counts`]) now and every
/// [`crate::counts::RECORD_EVERY`], until `stop`; one worker's record serves all.
pub(crate) async fn record_counts(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let recorded = async {
            let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
            crate::counts::record(&mut conn, &shared.keys).await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = recorded {
            tracing::debug!(%error, "recording the queue's counters failed; will try again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::counts::RECORD_EVERY) => {}
        }
    }
}

/// Publishes the load-test probe histograms that changed, every [`loadprobe::PUBLISH_EVERY`] and once more
/// when `stop` is cancelled (after the last acknowledgements).
pub(crate) async fn publish_probes(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(loadprobe::PUBLISH_EVERY) => false,
        };
        let snapshots = shared.probes.changed();
        if !snapshots.is_empty() {
            let published = async {
                let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
                loadprobe::publish(&mut conn, &shared.keys, &shared.config.consumer, &snapshots)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match published {
                Ok(()) => shared.probes.published(&snapshots),
                Err(error) => tracing::debug!(%error, "publishing load-test latencies failed; will try again"),
            }
        }
        if last {
            return;
        }
    }
}
