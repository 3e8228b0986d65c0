//! The pause flag as the worker sees it ([`crate::pause`]): one task per process polls the queue's flag and
//! publishes it on a watch channel; each partition's read loop waits on the channel while the queue is paused, and
//! the promoter skips its runs.
//!
//! Cost: polling is one pipelined `EXISTS` and `ZRANGEBYSCORE` (the cancel set, [`super::control`]) every
//! [`POLL_EVERY`] per process, whatever the number of partitions, jobs or
//! reads — against a read loop that sends at least one `XREADGROUP` per `--block` (2 s) when idle and one per batch
//! under load, this adds 4 commands a second and nothing to the job path (the readers read an in-memory value).
//! Checking once per read batch instead would add a round trip to every batch. The price is latency: a pause takes
//! effect within `POLL_EVERY` plus the read that may be blocking at that moment (at most `--block`).
//!
//! Until the first read of the flag has an answer, readers and promoter wait: a consumer restarted on a paused queue
//! never reads a batch first. When that first read fails (Redis away, or in a Cluster the base queue's node down),
//! the queue counts as running until the flag can be read — the partitions whose nodes are up keep running; after
//! a successful read, a failing one keeps the last known state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::control::Control;
use tokio_util::sync::CancellationToken;

use crate::connection::Pool;
use crate::keys::Keys;

/// How often the flag is read.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(250);

/// The queue's pause state: `None` until first read, then whether it is paused.
pub(crate) type PauseState = watch::Receiver<Option<bool>>;

/// A state that is never paused, for a partition worker run without a [`spawn`]ed watch.
pub(super) fn never_paused() -> PauseState {
    watch::channel(Some(false)).1
}

/// Polls the flag of `keys`' queue, and its cancel set (in the same round trip, both under the base queue's
/// tag), every [`POLL_EVERY`] until `stop`; what it reads goes to the returned state and to `control`.
pub(super) fn spawn(
    pool: Pool,
    keys: Keys,
    control: Arc<Control>,
    stop: CancellationToken,
) -> (PauseState, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut failing = false;
        // The first read takes every remembered cancel; later ones what is new, with a margin for clocks.
        let mut cancels_since: Option<u64> = None;
        loop {
            let now = crate::clock::now_ms();
            let read = async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                let since = cancels_since.map_or_else(|| "-inf".to_owned(), |ms| ms.saturating_sub(5_000).to_string());
                let (exists, cancels): (u64, Vec<(String, f64)>) = redis::pipe()
                    .cmd("EXISTS")
                    .arg(&keys.paused)
                    .cmd("ZRANGEBYSCORE")
                    .arg(&keys.cancels)
                    .arg(since)
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((exists > 0, cancels.into_iter().map(|(id, at)| (id, at as u64)).collect()))
            }
            .await;
            match read {
                Ok((paused, cancels)) => {
                    if failing {
                        failing = false;
                        tracing::info!(key = %keys.paused, "reading the queue's pause flag works again");
                    }
                    cancels_since = Some(now);
                    control.observe_pause(paused, now);
                    control
                        .cancel_requested(cancels, now.saturating_sub(crate::jobs::CANCEL_MEMORY.as_millis() as u64));
                    tx.send_if_modified(|state| state.replace(paused) != Some(paused));
                }
                Err(error) => {
                    // Never read yet: run. In a Cluster the flag lives on the base queue's node, and while that
                    // node is down the partitions on the others must keep running (a flag that cannot be read
                    // cannot be enforced); the next successful read applies a pause.
                    let first = tx.send_if_modified(|state| state.is_none() && state.replace(false).is_none());
                    if !failing {
                        failing = true;
                        let kept = if first {
                            "reading as not paused until it can be read"
                        } else {
                            "keeping its last known state"
                        };
                        tracing::warn!(%error, key = %keys.paused, "reading the queue's pause flag failed; {kept}");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    });
    (rx, task)
}

/// One read loop's view: waits while paused, and logs once when it stops reading and once when it reads again.
pub(super) struct Gate {
    state: PauseState,
    stopped: bool,
}

impl Gate {
    pub(super) fn new(state: PauseState) -> Self {
        Self { state, stopped: false }
    }

    /// Returns once the queue is known not to be paused (`true`), or when `shutdown` is cancelled (`false`).
    pub(super) async fn wait_until_running(&mut self, shutdown: &CancellationToken, queue: &str) -> bool {
        loop {
            let state = *self.state.borrow_and_update();
            match state {
                Some(false) => {
                    if self.stopped {
                        self.stopped = false;
                        tracing::info!(queue, "queue resumed: reading again");
                    }
                    return true;
                }
                Some(true) if !self.stopped => {
                    self.stopped = true;
                    tracing::info!(queue, "queue paused: reading nothing new until it is resumed");
                }
                _ => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                changed = self.state.changed() => {
                    if changed.is_err() {
                        // The watch is gone: the worker is stopping.
                        shutdown.cancelled().await;
                        return false;
                    }
                }
            }
        }
    }
}

/// Whether the queue is known to be running (not paused, and the flag read at least once).
pub(super) fn running(state: &PauseState) -> bool {
    *state.borrow() == Some(false)
}
