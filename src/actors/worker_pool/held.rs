//! What the pool holds: its outbound messages (receipt -> the tasks whose handler started), the running handlers
//! (to drop one when its task is cancelled) and the cancelled tasks not running here; shared by the pool, its
//! handlers and both heartbeats.

use futures::future::AbortHandle;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A cancelled (id, attempt) whose message has not come is remembered this long (it is never started).
const CANCELLED_MEMORY: Duration = Duration::from_secs(15 * 60);

/// The outbound messages this pool holds, for the heartbeats: receipt -> the (task id, attempt) of each of its
/// tasks whose handler started (a message carries several with `transport.tasks_per_message`). A message is held
/// from its receipt until the results of all its tasks were sent (or it was given up).
#[derive(Default)]
struct Held {
    messages: HashMap<String, Vec<(i64, i32)>>,
    /// Handler starts not yet marked in the database.
    started: Vec<(i64, i32)>,
    /// Running handlers, to drop one when its task is cancelled.
    running: HashMap<(i64, i32), AbortHandle>,
    /// Cancelled tasks not running here (yet): if their message comes, they are not started.
    cancelled: HashMap<(i64, i32), Instant>,
}

#[derive(Clone, Default)]
pub(super) struct HeldRef {
    inner: Arc<Mutex<Held>>,
    /// Wakes the database heartbeat when a handler started.
    pub(super) started: Arc<Notify>,
}

impl HeldRef {
    pub(super) fn received(&self, receipts: impl IntoIterator<Item = String>) {
        let mut h = self.inner.lock().unwrap();
        for r in receipts {
            h.messages.entry(r).or_default();
        }
    }

    pub(super) fn handler_started(&self, receipt: &str, task: (i64, i32)) {
        let mut h = self.inner.lock().unwrap();
        h.messages.entry(receipt.to_owned()).or_default().push(task);
        h.started.push(task);
        drop(h);
        self.started.notify_one();
    }

    pub(super) fn release(&self, receipts: impl IntoIterator<Item = String>) {
        let mut h = self.inner.lock().unwrap();
        for r in receipts {
            h.messages.remove(&r);
        }
    }

    pub(super) fn receipts(&self) -> Vec<String> {
        self.inner.lock().unwrap().messages.keys().cloned().collect()
    }

    pub(super) fn running(&self) -> Vec<(i64, i32)> {
        let mut h = self.inner.lock().unwrap();
        h.started.clear();
        h.messages.values().flatten().copied().collect()
    }

    pub(super) fn take_started(&self) -> Vec<(i64, i32)> {
        std::mem::take(&mut self.inner.lock().unwrap().started)
    }

    /// Registers a handler about to start; false if its task was cancelled (it must not start).
    pub(super) fn register(&self, task: (i64, i32), abort: AbortHandle) -> bool {
        let mut h = self.inner.lock().unwrap();
        if h.cancelled.remove(&task).is_some() {
            return false;
        }
        h.running.insert(task, abort);
        true
    }

    pub(super) fn unregister(&self, task: (i64, i32)) {
        self.inner.lock().unwrap().running.remove(&task);
    }

    /// Drops the handlers of `tasks` that run here and remembers the others, so they never start. Returns how many
    /// handlers it dropped.
    pub(super) fn cancel(&self, tasks: &[(i64, i32)]) -> usize {
        let mut h = self.inner.lock().unwrap();
        let now = Instant::now();
        if h.cancelled.len() > 10_000 {
            h.cancelled.retain(|_, at| now.duration_since(*at) < CANCELLED_MEMORY);
        }
        let mut dropped = 0;
        for t in tasks {
            match h.running.remove(t) {
                Some(abort) => {
                    abort.abort();
                    dropped += 1;
                }
                None => {
                    h.cancelled.insert(*t, now);
                }
            }
        }
        dropped
    }
}

/// The (id, attempt) pairs of a `tasks_cancel` payload: "id:attempt,id:attempt,...". Malformed pairs are skipped.
pub(super) fn parse_cancelled(payload: &str) -> Vec<(i64, i32)> {
    payload
        .split(',')
        .filter_map(|pair| {
            let (id, attempt) = pair.split_once(':')?;
            Some((id.trim().parse().ok()?, attempt.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::Abortable;

    #[test]
    fn cancel_payloads_parse_and_skip_malformed_pairs() {
        assert_eq!(parse_cancelled("12:1,13:4"), vec![(12, 1), (13, 4)]);
        assert_eq!(parse_cancelled("12:1,x:2,14,15:3"), vec![(12, 1), (15, 3)]);
        assert!(parse_cancelled("").is_empty());
    }

    #[test]
    fn a_cancel_drops_a_running_handler_and_keeps_a_later_one_from_starting() {
        let held = HeldRef::default();
        let (running, registration) = AbortHandle::new_pair();
        assert!(held.register((1, 1), running));
        let run = Abortable::new(std::future::pending::<()>(), registration);
        assert_eq!(held.cancel(&[(1, 1), (2, 3)]), 1, "one handler ran here");
        assert!(futures::executor::block_on(run).is_err(), "the running handler was dropped");
        // (2, 3) was cancelled before its message came: it never starts; another attempt of task 2 does.
        assert!(!held.register((2, 3), AbortHandle::new_pair().0));
        assert!(held.register((2, 4), AbortHandle::new_pair().0));
    }
}
