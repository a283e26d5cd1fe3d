//! The rescuer (River's `JobRescuer`, Oban's `Lifeline`): ACQUIRED tasks whose worker went silent become ERROR
//! (retried) or CRITICAL_ERROR: no heartbeat for `reaper.stale_timeout_secs` once their handler started, or not
//! started within `reaper.queue_timeout_secs` of their acquisition (see `TaskStore::rescue_stale`). In batches of
//! `reaper.batch_size` until one comes back short, each statement bounded by `reaper.query_timeout_secs`.

use super::maintenance::{run_batches, ReaperSettings};
use super::Shared;
use crate::metrics::metrics;
use crate::store::TaskStore;

/// One rescue pass. Returns how many tasks were rescued; wakes this process's Acquirer when there were some.
pub async fn rescue_once(shared: Shared, cfg: ReaperSettings, store: TaskStore) -> usize {
    let rescued = run_batches("rescue_stale", cfg.batch_size, cfg.query_timeout(), || {
        store.rescue_stale(cfg.stale_timeout_secs, cfg.queue_timeout_secs, cfg.batch_size)
    })
    .await;
    metrics().tasks_rescued.inc_by(rescued.len() as u64);
    for (id, state) in &rescued {
        tracing::warn!(task_id = id, state = %state, "stale task rescued");
    }
    if !rescued.is_empty() {
        shared.tasks_due();
    }
    rescued.len()
}
