//! The cleaner (River's `JobCleaner`, Oban's `Pruner`): finished tasks older than `reaper.retention_secs` in
//! `reaper.clean_states` are deleted, then finished workflows with all their stages. In batches of
//! `reaper.batch_size` until one comes back short, each statement bounded by `reaper.query_timeout_secs`.

use super::maintenance::{run_counted_batches, ReaperSettings};
use crate::metrics::metrics;
use crate::store::{TaskState, TaskStore};
use crate::workflow::WorkflowState;

/// One clean pass. Returns how many finished tasks (outside workflows) and finished workflows were deleted.
pub async fn clean_once(cfg: ReaperSettings, store: TaskStore) -> usize {
    let timeout = cfg.query_timeout();
    let tasks = run_counted_batches("clean_finished", cfg.batch_size, timeout, || {
        store.clean_finished(cfg.retention_secs, &cfg.clean_states, cfg.batch_size)
    })
    .await;
    metrics().tasks_cleaned.inc_by(tasks as u64);
    // Workflows (with all their stages) once the whole workflow finished: SUCCESS ones where SUCCESS tasks are
    // cleaned, FAILED ones where CRITICAL_ERROR tasks are, CANCELLED ones where CANCELLED tasks are.
    let workflow_states: Vec<WorkflowState> = cfg
        .clean_states
        .iter()
        .filter_map(|s| match s {
            TaskState::Success => Some(WorkflowState::Success),
            TaskState::CriticalError => Some(WorkflowState::Failed),
            TaskState::Cancelled => Some(WorkflowState::Cancelled),
            _ => None,
        })
        .collect();
    let workflows = run_counted_batches("clean_workflows", cfg.batch_size, timeout, || {
        store.clean_workflows(cfg.retention_secs, &workflow_states, cfg.batch_size)
    })
    .await;
    let total = tasks + workflows;
    if total > 0 {
        tracing::info!(deleted = total, "old finished tasks and workflows cleaned");
    }
    total
}
