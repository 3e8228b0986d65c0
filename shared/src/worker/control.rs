//! What a worker process learns from the queue's control keys, beside the pause flag ([`super::pause`]): the
//! jobs asked to stop (`<prefix>:{Q}:cancels`, [`crate::jobs::cancel`]) and when the queue was last paused.
//!
//! The pause watch reads the cancel set in the same round trip as the flag, every 250 ms: a running job whose id
//! appears there has its attempt cancelled ([`crate::job::AttemptContext::request_cancel`]), and a job taken
//! over later is settled as cancelled without running. Each job costs one insert and one remove in
//! [`Control::running`]; the cancel check is one atomic load while no cancel is known.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::job::AttemptContext;

/// Shared by every partition's worker in one process and the pause watch.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Ids of jobs asked to stop, with when (unix ms).
    requested: Mutex<HashMap<String, u64>>,
    /// True once `requested` holds anything: the job path checks it without taking the lock.
    any: AtomicBool,
    /// The attempts running in this process, by job id.
    running: Mutex<HashMap<String, Arc<AttemptContext>>>,
    /// When the queue was last seen paused, and when it was last seen resumed after that (unix ms; 0 = never).
    paused_at: AtomicU64,
    resumed_at: AtomicU64,
}

impl Control {
    /// True when job `id` was asked to stop.
    pub(crate) fn is_cancelled(&self, id: &str) -> bool {
        self.any.load(Ordering::Relaxed) && self.requested.lock().expect("cancel set poisoned").contains_key(id)
    }

    /// Registers a running attempt so that a cancel reaches it.
    pub(crate) fn started(&self, id: &str, context: &Arc<AttemptContext>) {
        self.running.lock().expect("running map poisoned").insert(id.to_owned(), context.clone());
    }

    /// Forgets a finished attempt.
    pub(crate) fn finished(&self, id: &str) {
        self.running.lock().expect("running map poisoned").remove(id);
    }

    /// Takes in the cancel requests read from Redis (`id`, unix ms), stops the running attempts among them,
    /// and forgets requests older than `forget_before` (unix ms).
    pub(crate) fn cancel_requested(&self, ids: Vec<(String, u64)>, forget_before: u64) {
        let mut requested = self.requested.lock().expect("cancel set poisoned");
        let fresh: Vec<String> =
            ids.into_iter().filter_map(|(id, at)| requested.insert(id.clone(), at).is_none().then_some(id)).collect();
        requested.retain(|_, at| *at >= forget_before);
        self.any.store(!requested.is_empty(), Ordering::Relaxed);
        drop(requested);
        if fresh.is_empty() {
            return;
        }
        let running = self.running.lock().expect("running map poisoned");
        for id in fresh {
            if let Some(context) = running.get(&id) {
                tracing::info!(job_id = %id, "job cancelled while running; stopping its attempt");
                context.request_cancel();
            }
        }
    }

    /// Records a pause state read at `now_ms`.
    pub(crate) fn observe_pause(&self, paused: bool, now_ms: u64) {
        let was_paused = self.paused_at.load(Ordering::Relaxed) > self.resumed_at.load(Ordering::Relaxed);
        match (was_paused, paused) {
            (false, true) => self.paused_at.store(now_ms, Ordering::Relaxed),
            (true, false) => self.resumed_at.store(now_ms, Ordering::Relaxed),
            _ => {}
        }
    }

    /// How long a job ready since `ready_ms` (unix ms) waited while the queue was paused, going by the last
    /// pause this process saw end; `None` when it did not.
    pub(crate) fn paused_while_waiting(&self, ready_ms: u64) -> Option<u64> {
        let (paused, resumed) = (self.paused_at.load(Ordering::Relaxed), self.resumed_at.load(Ordering::Relaxed));
        (resumed > paused && resumed > ready_ms).then(|| resumed - paused.max(ready_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_the_running_attempt_once_and_is_forgotten_later() {
        let control = Control::default();
        let context = Arc::new(AttemptContext::default());
        control.started("a", &context);
        assert!(!control.is_cancelled("a"));
        control.cancel_requested(vec![("a".into(), 100), ("b".into(), 100)], 0);
        assert!(context.is_cancel_requested() && context.token.is_cancelled());
        assert!(control.is_cancelled("b"));
        control.finished("a");
        control.cancel_requested(Vec::new(), 101);
        assert!(!control.is_cancelled("a") && !control.is_cancelled("b"));
    }

    #[test]
    fn a_wait_overlapping_the_last_pause_is_measured() {
        let control = Control::default();
        assert_eq!(control.paused_while_waiting(5), None);
        control.observe_pause(true, 1_000);
        control.observe_pause(true, 1_250);
        control.observe_pause(false, 3_000);
        assert_eq!(control.paused_while_waiting(500), Some(2_000));
        assert_eq!(control.paused_while_waiting(2_000), Some(1_000));
        assert_eq!(control.paused_while_waiting(3_500), None);
    }
}
