//! The worker pool: reads a queue's stream as one consumer of a consumer group and runs each job with its
//! kind's handler, at most `concurrency` at a time.
//!
//! The read loop takes a semaphore permit per job before it reads, so it never holds more entries than it can
//! run; each job runs in its own task and releases its permit when settled. On shutdown the loop stops reading,
//! waits up to the grace period for running jobs, and sends their acknowledgements; what does not finish stays
//! pending in the group, to be claimed by another worker.

mod acker;
mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::Pool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::handler::Handlers;
use crate::keys::{GroupName, Keys};
use crate::limits::Limits;
use crate::queue;

/// How long the acknowledgements of finished jobs may take to send at shutdown.
const ACK_DRAIN: Duration = Duration::from_secs(5);

/// How a worker reads and runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Consumer group.
    pub group: GroupName,
    /// Consumer name: unique per process, stable for its life.
    pub consumer: String,
    /// Most jobs running at once.
    pub concurrency: usize,
    /// Most entries fetched by one XREADGROUP.
    pub batch_size: usize,
    /// How long one XREADGROUP blocks waiting for entries. Bounds how long shutdown waits for the read loop.
    pub block: Duration,
    /// How long running jobs may take to finish after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Limits applied when decoding entries.
    pub limits: Limits,
    /// Cap on the dead stream's length (approximate, `MAXLEN ~`); 0 for none.
    pub dead_maxlen: u64,
}

impl WorkerConfig {
    /// Defaults for a consumer named `consumer`.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            group: GroupName::default(),
            consumer: consumer.into(),
            concurrency: 16,
            batch_size: 64,
            block: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            limits: Limits::default(),
            dead_maxlen: 100_000,
        }
    }
}

/// `<hostname>-<pid>`: the default consumer name.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Counts of what a worker did, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Entries received from Redis.
    pub received: AtomicU64,
    /// Jobs whose handler succeeded.
    pub succeeded: AtomicU64,
    /// Attempts that failed (left pending, retried or dead-lettered).
    pub failed: AtomicU64,
    /// Entries moved to the dead stream.
    pub dead_lettered: AtomicU64,
    /// Jobs running now.
    pub in_flight: AtomicU64,
}

impl WorkerStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker has no handler; register at least one job kind")]
    NoHandlers,
    #[error("concurrency and batch size must be at least 1")]
    ZeroConcurrency,
}

/// State every job task of a worker shares.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) keys: Keys,
    pub(crate) config: WorkerConfig,
    pub(crate) handlers: Handlers,
    pub(crate) stats: Arc<WorkerStats>,
}

/// One consumer of a queue's consumer group.
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker for the queue whose keys are `keys`.
    pub fn new(pool: Pool, keys: Keys, handlers: Handlers, config: WorkerConfig) -> Self {
        Self { shared: Arc::new(Shared { pool, keys, config, handlers, stats: Arc::default() }) }
    }

    /// The counters of this worker.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.shared.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains. Redis being unreachable is not an error: the worker
    /// retries with back-off until Redis returns or shutdown is requested.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let shared = self.shared;
        let config = &shared.config;
        if shared.handlers.kinds().is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        if config.concurrency == 0 || config.batch_size == 0 {
            return Err(WorkerError::ZeroConcurrency);
        }
        let give_up_acks = CancellationToken::new();
        let (acks, acker) =
            acker::spawn(shared.pool.clone(), shared.keys.clone(), config.group.clone(), give_up_acks.clone());
        let permits = Arc::new(Semaphore::new(config.concurrency));
        let tasks = TaskTracker::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut group_ready = false;
        tracing::info!(
            queue = %shared.keys.queue(),
            group = %config.group,
            consumer = %config.consumer,
            concurrency = config.concurrency,
            kinds = ?shared.handlers.kinds(),
            "worker started"
        );

        while !shutdown.is_cancelled() {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut held = vec![first];
            while held.len() < config.batch_size {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => held.push(permit),
                    Err(_) => break,
                }
            }
            let read = async {
                let mut conn = shared.pool.get().await.map_err(|e| e.to_string())?;
                if !group_ready {
                    queue::ensure_group(&mut conn, &shared.keys, &config.group).await.map_err(|e| e.to_string())?;
                }
                queue::read_new(&mut conn, &shared.keys, &config.group, &config.consumer, held.len(), config.block)
                    .await
                    .map_err(|e| {
                        if queue::is_no_group(&e) {
                            "NOGROUP: the consumer group is gone; recreating it".to_owned()
                        } else {
                            e.to_string()
                        }
                    })
            }
            .await;
            let deliveries = match read {
                Ok(deliveries) => {
                    if backoff.failures() > 0 {
                        tracing::info!(after_failures = backoff.failures(), "Redis reachable again");
                    }
                    backoff.reset();
                    group_ready = true;
                    deliveries
                }
                Err(error) => {
                    group_ready = false;
                    let delay = backoff.next_delay();
                    if backoff.failures() == 1 {
                        tracing::warn!(%error, "reading the queue failed; retrying with back-off");
                    } else {
                        tracing::debug!(%error, ?delay, "reading the queue failed again");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            WorkerStats::add(&shared.stats.received, deliveries.len() as u64);
            for (delivery, permit) in deliveries.into_iter().zip(held) {
                let shared = shared.clone();
                let acks = acks.clone();
                tasks.spawn(async move {
                    process::run(&shared, delivery, &acks).await;
                    drop(permit);
                });
            }
        }

        tasks.close();
        let running = tasks.len();
        if running > 0 {
            tracing::info!(running, grace = ?config.shutdown_grace, "draining running jobs");
        }
        if tokio::time::timeout(config.shutdown_grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                unfinished = tasks.len(),
                "grace period over; unfinished jobs stay pending for another worker"
            );
        }
        drop(acks);
        let mut acker = acker;
        let unsent = match tokio::time::timeout(ACK_DRAIN, &mut acker).await {
            Ok(done) => done.unwrap_or(0),
            Err(_) => {
                give_up_acks.cancel();
                acker.await.unwrap_or(0)
            }
        };
        if unsent > 0 {
            tracing::warn!(unsent, "acknowledgements not sent; those jobs will be redelivered");
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}
