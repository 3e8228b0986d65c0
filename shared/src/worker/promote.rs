//! Moves due jobs (retries and scheduled jobs) from the delayed set back to the stream, a batch per script run.
//! Not while the queue is paused: its delayed jobs stay delayed, and those that came due run after the resume.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::backoff::Backoff;
use crate::stream;

/// Jobs moved by one run of the promotion script.
const PROMOTE_BATCH: usize = 256;

/// Moves due jobs from the delayed set to the stream every `every`, until `stop`.
pub(super) async fn promote(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut backoff = Backoff::new(every, Duration::from_secs(10));
    loop {
        if !super::pause::running(&shared.pause) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => continue,
            }
        }
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
                    config.job_records,
                )
                .await
                .map_err(|e| e.to_string())?;
                total.moved += run.moved;
                total.dead_lettered += run.dead_lettered;
                total.stuck += run.stuck;
                total.cancelled += run.cancelled;
                if run.total() < PROMOTE_BATCH || run.moved + run.dead_lettered + run.cancelled == 0 {
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
                if promoted.cancelled > 0 {
                    tracing::info!(cancelled = promoted.cancelled, "due jobs that were cancelled dropped, not run");
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
