//! Persister: stores submissions from the inbound queue as SCHEDULED tasks, through the commit stage (one
//! `submit_many` statement per group). Duplicates are harmless. Malformed and refused submissions go to the inbound
//! DLQ at once (an unknown action with reason `unknown_action`); a submission is acknowledged only after its
//! commit.

use super::commit_stage::{CommitStage, Entry, QueueStage};
use super::Shared;
use crate::chaos::Stage;
use crate::metrics::metrics;
use crate::protocol;
use crate::store::{Commit, MaxAttempts, NewTask, StoreError, Submitted, TaskStore};
use serde::{Deserialize, Serialize};

/// `submit_many` as a commit stage; wakes this process's Acquirer when it created tasks.
pub struct SubmitCommit {
    pub store: TaskStore,
    pub shared: Option<Shared>,
    pub name: &'static str,
}

#[async_trait::async_trait(?Send)]
impl Commit for SubmitCommit {
    type Item = NewTask;
    type Output = Submitted;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn commit(&self, items: &[NewTask]) -> Result<Vec<Submitted>, StoreError> {
        let submitted = self.store.submit_many(items).await?;
        let created = submitted.iter().filter(|s| s.created).count() as u64;
        metrics().tasks_persisted.inc_by(created);
        metrics().tasks_duplicate.inc_by(submitted.len() as u64 - created);
        if let (true, Some(shared)) = (created > 0, &self.shared) {
            shared.tasks_due();
        }
        Ok(submitted)
    }
}

impl QueueStage for SubmitCommit {
    const NAME: &'static str = "persister";
    const CHAOS: Stage = Stage::Persister;

    fn build(shared: &Shared) -> Self {
        SubmitCommit { store: shared.store("persister", 8), shared: Some(shared.clone()), name: "persister" }
    }

    fn parse(shared: &Shared, body: &str) -> Vec<Entry<NewTask>> {
        let s = &shared.settings;
        let default_max = MaxAttempts::parse(s.retry.default_max_attempts).unwrap_or_default();
        protocol::parse_submissions(body, s.transport.max_message_bytes, default_max)
            .into_iter()
            .map(|(entry, item)| Entry {
                item: item.and_then(|t| shared.known_actions.check(&t.action, "inbound").map(|()| t)),
                body: entry,
            })
            .collect()
    }
}

/// The Persister: the commit stage over `submit_many`.
pub type Persister = CommitStage<SubmitCommit>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PersisterSettings {
    /// Receivers (SqsPoller actors) on the inbound queue.
    pub pollers: usize,
    /// Submissions per submit_many transaction at most.
    pub max_batch: usize,
}

impl Default for PersisterSettings {
    fn default() -> Self {
        Self { pollers: 2, max_batch: 500 }
    }
}
