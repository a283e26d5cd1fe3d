//! ResultSink: records results from the results queue through the commit stage (`complete_many`, one statement
//! per group). Fenced: a result applies only to its (task id, attempt) while still ACQUIRED; stale results are
//! counted and acknowledged, never applied. Malformed and refused results go to the results DLQ at once.

use super::commit_stage::{self, GroupCommitter};
use super::messages::{Capacity, Received, Settled};
use super::Shared;
use crate::chaos::ChaosCommit;
use crate::metrics::metrics;
use crate::protocol;
use crate::store::{Applied, Commit, StoreError, TaskResult, TaskState, TaskStore};
use crate::supervision::Link;
use actix::prelude::*;
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

pub struct ResultSink {
    shared: Shared,
    settings: ResultSinkSettings,
    link: Link,
    committer: Option<GroupCommitter<ChaosCommit<CompleteCommit>>>,
}

impl ResultSink {
    pub fn new(shared: Shared, settings: ResultSinkSettings, link: Link) -> Self {
        Self { shared, settings, link, committer: None }
    }
}

impl Actor for ResultSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let commit = CompleteCommit { store: self.shared.store("result_sink", 8), shared: self.shared.clone() };
        let commit = self.shared.chaos.around_commit(commit, crate::chaos::Stage::ResultSink);
        let (committer, loops) = GroupCommitter::new(commit, self.settings.max_batch, 1);
        self.committer = Some(committer);
        ctx.spawn(loops.into_actor(self));
    }
}

impl Handler<Capacity> for ResultSink {
    type Result = usize;

    /// A commit stage takes a full batch: its back-pressure is the wait for `Settled`.
    fn handle(&mut self, _: Capacity, _: &mut Self::Context) -> usize {
        crate::transport::MAX_BATCH
    }
}

impl Handler<Received> for ResultSink {
    type Result = ResponseFuture<Settled>;

    fn handle(&mut self, msg: Received, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&["result_sink", "received"]).inc();
        let shared = self.shared.clone();
        let committer = self.committer.clone().expect("started");
        Box::pin(async move {
            let max = shared.settings.transport.max_message_bytes;
            let settled = commit_stage::settle(&shared, msg.queue, &committer, msg.messages, |body| {
                commit_stage::Entry::whole(protocol::parse_result(body, max))
            })
            .await;
            metrics().actor_in_flight.with_label_values(&["result_sink"]).set(committer.in_flight() as i64);
            settled
        })
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<super::messages::InjectPanic> for ResultSink {
    type Result = ();
    fn handle(&mut self, _: super::messages::InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in ResultSink");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResultSinkSettings {
    /// Receivers on the results queue.
    pub pollers: usize,
    /// Results per complete_many statement at most.
    pub max_batch: usize,
}

impl Default for ResultSinkSettings {
    fn default() -> Self {
        Self { pollers: 2, max_batch: 500 }
    }
}
