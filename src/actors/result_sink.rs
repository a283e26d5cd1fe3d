//! ResultSink: records results from the results queue through the commit stage (`complete_many`, one statement
//! per group). Fenced: a result applies only to its (task id, attempt) while still ACQUIRED; stale results are
//! counted and acknowledged, never applied. Malformed and refused results go to the results DLQ at once.

use super::commit_stage::{CommitStage, QueueStage};
use super::Shared;
use crate::chaos::Stage;
use crate::metrics::metrics;
use crate::protocol::{self, Entry};
use crate::store::{Applied, Commit, Outcome, StoreError, TaskResult, TaskState, TaskStore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What became of one result.
#[derive(Debug, Clone)]
pub enum Recorded {
    Applied(Applied),
    /// Its (id, attempt) is no longer ACQUIRED: a duplicate, or a late result after a rescue.
    Stale,
}

/// `complete_many` as a commit stage.
pub struct CompleteCommit {
    pub store: TaskStore,
    pub shared: Shared,
}

#[async_trait::async_trait(?Send)]
impl Commit for CompleteCommit {
    type Item = TaskResult;
    type Output = Recorded;

    fn name(&self) -> &'static str {
        "result_sink"
    }

    async fn commit(&self, items: &[TaskResult]) -> Result<Vec<Recorded>, StoreError> {
        let c = self.store.complete_many(items).await?;
        let m = metrics();
        let mut retry_due = false;
        let mut applied: HashMap<(i64, i32), Applied> = HashMap::with_capacity(c.applied.len());
        for a in c.applied {
            let outcome = match a.state {
                TaskState::Success => "success",
                TaskState::CriticalError => "critical_error",
                TaskState::Cancelled => "cancelled",
                _ => "error",
            };
            m.results_applied.with_label_values(&[outcome]).inc();
            if a.state.is_finished() {
                m.end_to_end.observe(a.age_seconds);
            }
            retry_due |= a.state == TaskState::Error;
            let _ = self.shared.completions.send(a.clone());
            applied.insert((a.id, a.attempt), a);
        }
        if !c.stale.is_empty() {
            m.results_stale.inc_by(c.stale.len() as u64);
            tracing::debug!(stale = c.stale.len(), "stale results dropped");
        }
        if retry_due {
            self.shared.tasks_due();
        }
        // One output per input, in order; a duplicate of an applied result in the same group is stale.
        Ok(items
            .iter()
            .map(|r| applied.remove(&(r.id, r.attempt)).map(Recorded::Applied).unwrap_or(Recorded::Stale))
            .collect())
    }
}

impl QueueStage for CompleteCommit {
    const NAME: &'static str = "result_sink";
    const CHAOS: Stage = Stage::ResultSink;

    fn build(shared: &Shared, pool_size: u32) -> Self {
        CompleteCommit { store: shared.store("result_sink", pool_size), shared: shared.clone() }
    }

    fn parse(shared: &Shared, body: &str) -> Vec<Entry<TaskResult>> {
        let max = shared.settings.transport.max_message_bytes;
        let default_max = shared.settings.retry.default_max_attempts;
        // One result, or several packed as a JSON-RPC batch (`transport.tasks_per_message`).
        protocol::parse_results(body, max)
            .into_iter()
            .map(|(entry, r)| Entry { item: r.map(|r| refuse_bad_spawn(r, max, default_max)), body: entry })
            .collect()
    }
}

/// A success that spawns stages the database could not store becomes the task's failure (retried, and visible in
/// its error), instead of a result that fails its whole group commit.
/// Spawned stages without `max_attempts` get the configured default (`retry.default_max_attempts`).
fn refuse_bad_spawn(mut r: TaskResult, max_message_bytes: usize, default_max_attempts: i64) -> TaskResult {
    let Outcome::Success(v) = &mut r.outcome else { return r };
    match crate::workflow::check_spawn(v, max_message_bytes) {
        Ok(()) => {
            crate::workflow::spawn_defaults(v, default_max_attempts);
            r
        }
        Err(e) => {
            tracing::warn!(task_id = r.id, attempt = r.attempt, error = %e.message, "result spawns invalid stages");
            metrics().items_refused.with_label_values(&["result_sink_spawn"]).inc();
            TaskResult { outcome: Outcome::Failure(e.to_value()), ..r }
        }
    }
}

/// The ResultSink: the commit stage over `complete_many`.
pub type ResultSink = CommitStage<CompleteCommit>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResultSinkSettings {
    /// Receivers on the results queue.
    pub pollers: usize,
    /// Results per complete_many statement at most.
    pub max_batch: usize,
    /// Database connections of its statements (at most `database.pool_size`).
    pub pool_size: u32,
}

impl Default for ResultSinkSettings {
    fn default() -> Self {
        Self { pollers: 2, max_batch: 500, pool_size: 8 }
    }
}
