//! The pool's two heartbeats, both batched over every message it holds: the queue's visibility, and the
//! database's `heartbeat_at` (handler starts, then every `worker.heartbeat_interval_secs`).

use super::held::HeldRef;
use crate::actors::Shared;
use crate::metrics::metrics;
use crate::store::TaskStore;
use crate::transport::Queue;
use std::time::Duration;

/// Handler starts that arrive within this window are marked in one statement.
pub const START_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Every third of the visibility timeout, extends the visibility of every message this pool holds (waiting for a
/// slot or running) by a full timeout, in one call (the transport batches it by 10). Never returns.
pub(super) async fn visibility_heartbeat(shared: Shared, held: HeldRef) {
    let vis = Duration::from_secs(shared.settings.transport.visibility_timeout_secs as u64);
    let period = vis / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let receipts = held.receipts();
        if receipts.is_empty() {
            continue;
        }
        if let Err(e) = shared.transport.change_visibility(Queue::Outbound, &receipts, vis).await {
            tracing::warn!(error = %e, messages = receipts.len(), "visibility heartbeat failed");
        }
    }
}

/// Marks handler starts (batched over [`START_BATCH_WINDOW`]) and, every `every`, refreshes `heartbeat_at` of
/// all running tasks, each in one statement. Never returns.
pub(super) async fn database_heartbeat(store: TaskStore, held: HeldRef, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tasks = tokio::select! {
            _ = tick.tick() => held.running(),
            _ = held.started.notified() => {
                tokio::time::sleep(START_BATCH_WINDOW).await;
                held.take_started()
            }
        };
        if tasks.is_empty() {
            continue;
        }
        match store.heartbeat_lost(&tasks).await {
            Ok(lost) if !lost.is_empty() => {
                // Cancelled (a missed notification), rescued or released: their results would be stale.
                let dropped = held.cancel(&lost);
                metrics().handlers_cancelled.inc_by(dropped as u64);
                tracing::debug!(
                    sent = tasks.len(),
                    lost = lost.len(),
                    dropped,
                    "heartbeat: some tasks are no longer ours"
                )
            }
            Ok(_) => {}
            // The next tick tries again; the stale timeout is at least two intervals.
            Err(e) => tracing::warn!(error = %e, tasks = tasks.len(), "database heartbeat failed"),
        }
    }
}
