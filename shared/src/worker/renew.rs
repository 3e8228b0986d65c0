//! Renews the claim on the jobs running here, so that no other consumer takes them over while they run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::stream;

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

/// Renews the claim on every running job every `every`, until `stop`.
pub(super) async fn renew(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
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
