//! Persister: stores submissions from the inbound queue as SCHEDULED tasks, through the commit stage (one
//! `submit_many` statement per group; `workflow.submit` requests in one `submit_workflows` statement next to it).
//! Duplicates are harmless. Malformed and refused submissions go to the inbound DLQ at once (an unknown action with
//! reason `unknown_action`); a submission is acknowledged only after its commit.

use super::commit_stage::{CommitStage, Entry, QueueStage};
use super::Shared;
use crate::chaos::Stage;
use crate::metrics::metrics;
use crate::protocol::{self, RpcError, WORKFLOW_SUBMIT};
use crate::store::{Action, Commit, MaxAttempts, NewTask, StoreError, Submitted, TaskStore};
use crate::workflow::{self, NewWorkflow, WorkflowSubmitted};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// `submit_workflows` as a commit stage (the HTTP `workflow.submit` path); wakes this process's Acquirer when it
/// created workflows.
pub struct WorkflowCommit {
    pub store: TaskStore,
    pub shared: Option<Shared>,
    pub name: &'static str,
}

#[async_trait::async_trait(?Send)]
impl Commit for WorkflowCommit {
    type Item = NewWorkflow;
    type Output = WorkflowSubmitted;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn commit(&self, items: &[NewWorkflow]) -> Result<Vec<WorkflowSubmitted>, StoreError> {
        let submitted = self.store.submit_workflows(items).await?;
        let created = submitted.iter().filter(|s| s.created).count() as u64;
        metrics().workflows_submitted.with_label_values(&["created"]).inc_by(created);
        metrics().workflows_submitted.with_label_values(&["duplicate"]).inc_by(submitted.len() as u64 - created);
        if let (true, Some(shared)) = (created > 0, &self.shared) {
            shared.tasks_due();
        }
        Ok(submitted)
    }
}

/// One submission from the inbound queue: a task (`submit:<action>`) or a workflow (`workflow.submit`).
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    Task(NewTask),
    Workflow(NewWorkflow),
}

/// The Persister's statement: the group's tasks through [`SubmitCommit`], its workflows through
/// [`WorkflowCommit`]. Outputs are the task's or the workflow's id.
pub struct InboundCommit {
    pub tasks: SubmitCommit,
    pub workflows: WorkflowCommit,
}

#[async_trait::async_trait(?Send)]
impl Commit for InboundCommit {
    type Item = Submission;
    type Output = Submitted;

    fn name(&self) -> &'static str {
        "persister"
    }

    async fn commit(&self, items: &[Submission]) -> Result<Vec<Submitted>, StoreError> {
        let (mut tasks, mut workflows) = (Vec::new(), Vec::new());
        for s in items {
            match s {
                Submission::Task(t) => tasks.push(t.clone()),
                Submission::Workflow(w) => workflows.push(w.clone()),
            }
        }
        // Each part is idempotent: if the second fails, the redelivered message finds the first stored.
        let mut tasks = if tasks.is_empty() { Vec::new() } else { self.tasks.commit(&tasks).await? }.into_iter();
        let mut workflows =
            if workflows.is_empty() { Vec::new() } else { self.workflows.commit(&workflows).await? }.into_iter();
        items
            .iter()
            .map(|s| {
                let out = match s {
                    Submission::Task(_) => tasks.next(),
                    Submission::Workflow(_) => {
                        workflows.next().map(|w| Submitted { id: w.workflow_id, created: w.created })
                    }
                };
                out.ok_or_else(|| StoreError::Pool("a submission statement returned too few rows".into()))
            })
            .collect()
    }
}

impl QueueStage for InboundCommit {
    const NAME: &'static str = "persister";
    const CHAOS: Stage = Stage::Persister;

    fn build(shared: &Shared) -> Self {
        let store = shared.store("persister", 8);
        InboundCommit {
            tasks: SubmitCommit { store: store.clone(), shared: Some(shared.clone()), name: "persister" },
            workflows: WorkflowCommit { store, shared: Some(shared.clone()), name: "persister" },
        }
    }

    fn parse(shared: &Shared, body: &str) -> Vec<Entry<Submission>> {
        let known = |e: Entry<Submission>| Entry { item: e.item.and_then(|s| known_actions(shared, s)), ..e };
        Self::parse_unchecked(shared, body).into_iter().map(known).collect()
    }
}

/// An action no handler is registered for is refused (-32601, dead-lettered with reason `unknown_action`).
fn known_actions(shared: &Shared, s: Submission) -> Result<Submission, RpcError> {
    let check = |a: &Action| shared.known_actions.check(a, "inbound");
    match &s {
        Submission::Task(t) => check(&t.action)?,
        Submission::Workflow(w) => {
            for stage in w.stages.iter().chain(&w.on_failure) {
                check(&stage.task.action)?;
            }
        }
    }
    Ok(s)
}

impl InboundCommit {
    fn parse_unchecked(shared: &Shared, body: &str) -> Vec<Entry<Submission>> {
        let s = &shared.settings;
        let default_max = MaxAttempts::parse(s.retry.default_max_attempts).unwrap_or_default();
        let max = s.transport.max_message_bytes;
        // Only a body that names the method is looked at twice; task submissions take the usual path.
        if !body.contains(WORKFLOW_SUBMIT) {
            return protocol::parse_submissions(body, max, default_max)
                .into_iter()
                .map(|(entry, item)| Entry { item: item.map(Submission::Task), body: entry })
                .collect();
        }
        let one = |v: Value| -> Vec<Entry<Submission>> {
            let text = v.to_string();
            match protocol::parse_request(v) {
                Ok(req) if req.method == WORKFLOW_SUBMIT => {
                    let item = workflow::parse_submit(req.params, default_max, max).map(Submission::Workflow);
                    vec![Entry { item, body: Some(text) }]
                }
                _ => protocol::parse_submissions(&text, max, default_max)
                    .into_iter()
                    .map(|(_, item)| Entry { item: item.map(Submission::Task), body: Some(text.clone()) })
                    .collect(),
            }
        };
        match protocol::parse_body(body, max) {
            Ok(Value::Array(entries)) if !entries.is_empty() => entries.into_iter().flat_map(one).collect(),
            Ok(v @ Value::Object(_)) => one(v).into_iter().map(|e| Entry { body: None, ..e }).collect(),
            _ => protocol::parse_submissions(body, max, default_max)
                .into_iter()
                .map(|(entry, item)| Entry { item: item.map(Submission::Task), body: entry })
                .collect(),
        }
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
}

impl Default for PersisterSettings {
    fn default() -> Self {
        Self { pollers: 2, max_batch: 500 }
    }
}
