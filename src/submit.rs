//! The submission service: what a submission is, and the statements that store them (`submit_many`,
//! `submit_workflows`, and both for a mixed group from the inbound queue), run through the group commit. Not an
//! actor: the Persister (`actors::persister`) and the HTTP API both use it.

use crate::handlers::KnownActions;
use crate::metrics::metrics;
use crate::protocol::{self, Entry, Inbound, RpcError};
use crate::store::{Action, Commit, MaxAttempts, NewTask, StoreError, Submitted, TaskStore};
use crate::workflow::{self, NewWorkflow, WorkflowSubmitted};
use std::sync::Arc;

/// Called after a statement created work (tells this process's Acquirer that tasks may be due).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// `submit_many` as a group-commit statement; wakes this process's Acquirer when it created tasks.
pub struct SubmitCommit {
    pub store: TaskStore,
    /// Told when the statement created tasks (this process's Acquirer); None over HTTP (NOTIFY wakes it).
    pub wake: Option<Wake>,
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
        if let (true, Some(wake)) = (created > 0, &self.wake) {
            wake();
        }
        Ok(submitted)
    }
}

/// `submit_workflows` as a group-commit statement; wakes this process's Acquirer when it created workflows.
pub struct WorkflowCommit {
    pub store: TaskStore,
    /// Told when the statement created tasks (this process's Acquirer); None over HTTP (NOTIFY wakes it).
    pub wake: Option<Wake>,
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
        if let (true, Some(wake)) = (created > 0, &self.wake) {
            wake();
        }
        Ok(submitted)
    }
}

/// One submission: a task (`submit:<action>`) or a workflow (`workflow.submit`).
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

/// An inbound message body -> its submissions, each parsed once (`protocol::parse_inbound`), a workflow's params
/// by `workflow::parse_submit`; an action no handler is registered for is refused (-32601, dead-lettered with
/// reason `unknown_action`). `max_bytes`: `transport.max_message_bytes`.
pub fn parse_inbound(
    body: &str,
    max_bytes: usize,
    default_max_attempts: MaxAttempts,
    known: &KnownActions,
) -> Vec<Entry<Submission>> {
    protocol::parse_inbound(body, max_bytes, default_max_attempts)
        .into_iter()
        .map(|e| {
            let item = e.item.and_then(|inbound| match inbound {
                Inbound::Task(t) => Ok(Submission::Task(t)),
                Inbound::Workflow(params) => {
                    workflow::parse_submit(params, default_max_attempts, max_bytes).map(Submission::Workflow)
                }
            });
            Entry { item: item.and_then(|s| known_actions(known, s)), body: e.body }
        })
        .collect()
}

fn known_actions(known: &KnownActions, s: Submission) -> Result<Submission, RpcError> {
    let check = |a: &Action| known.check(a, "inbound");
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
