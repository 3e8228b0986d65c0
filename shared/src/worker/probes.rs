//! Publishes the load-test latency histograms this worker recorded, so that `producer load` can merge them.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::loadprobe;

/// Publishes the load-test probe histograms that changed, every [`loadprobe::PUBLISH_EVERY`] and once more
/// when `stop` is cancelled (after the last acknowledgements).
pub(super) async fn publish(shared: Arc<Shared>, stop: CancellationToken) {
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
