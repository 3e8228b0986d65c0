//! Applies the retention policy (acknowledged entries and old dead entries trimmed) and removes the group's
//! consumers that are gone (idle past the bound, holding nothing).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::{consumers, stream};

/// Trims acknowledged entries past the retention and old dead entries, and removes the group's consumers idle
/// past `remove_idle_consumers_after` that hold nothing, every `every`, until `stop`.
pub(super) async fn trim(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
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
