//! Persister: stores submissions from the inbound queue as SCHEDULED tasks, through the commit stage and the
//! submission service ([`crate::submit`]: one `submit_many` statement per group; `workflow.submit` requests in one
//! `submit_workflows` statement next to it). Duplicates are harmless. Malformed and refused submissions go to the
//! inbound DLQ at once (an unknown action with reason `unknown_action`); a submission is acknowledged only after its
//! commit.

use super::commit_stage::{CommitStage, QueueStage};
use super::messages::TasksDue;
use super::Shared;
use crate::chaos::Stage;
use crate::protocol::Entry;
use crate::store::MaxAttempts;
use crate::submit::{self, InboundCommit, Submission, SubmitCommit, Wake, WorkflowCommit};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

impl QueueStage for InboundCommit {
    const NAME: &'static str = "persister";
    const CHAOS: Stage = Stage::Persister;

    fn build(shared: &Shared, pool_size: u32) -> Self {
        let store = shared.store("persister", pool_size);
        let acquirer = shared.acquirer.clone();
        let wake: Wake = Arc::new(move || {
            if let Some(a) = acquirer.get() {
                a.do_send(TasksDue);
            }
        });
        InboundCommit {
            tasks: SubmitCommit { store: store.clone(), wake: Some(wake.clone()), name: "persister" },
            workflows: WorkflowCommit { store, wake: Some(wake), name: "persister" },
        }
    }

    fn parse(shared: &Shared, body: &str) -> Vec<Entry<Submission>> {
        let s = &shared.settings;
        let default_max = MaxAttempts::parse(s.retry.default_max_attempts).unwrap_or_default();
        submit::parse_inbound(body, s.transport.max_message_bytes, default_max, &shared.known_actions)
    }
}

/// The Persister: the commit stage over `submit_many` and `submit_workflows`.
pub type Persister = CommitStage<InboundCommit>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PersisterSettings {
    /// Receivers (QueuePoller actors) on the inbound queue.
    pub pollers: usize,
    /// Submissions per submit_many transaction at most.
    pub max_batch: usize,
    /// Database connections of its statements (at most `database.pool_size`).
    pub pool_size: u32,
}

impl Default for PersisterSettings {
    fn default() -> Self {
        Self { pollers: 2, max_batch: 500, pool_size: 8 }
    }
}
