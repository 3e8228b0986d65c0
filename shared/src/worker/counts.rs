//! Records the queue's cumulative counters every few seconds, from which `stats` computes last-minute rates.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;

/// Records the queue's counters for the last-minute rates ([`crate::counts`]) now and every
/// [`crate::counts::RECORD_EVERY`], until `stop`; one worker's record serves all. In the same round, advertises
/// the kinds this worker handles ([`crate::kinds`]).
pub(super) async fn record(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let recorded = async {
            let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
            let kinds = shared.handlers.kinds();
            crate::kinds::advertise(&mut conn, &shared.keys, &kinds, &shared.config.consumer)
                .await
                .map_err(|e| e.to_string())?;
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
