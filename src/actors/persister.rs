//! Persister: stores submissions from the inbound queue as SCHEDULED tasks, through the commit stage (one
//! `submit_many` statement per group). Duplicates are harmless. Malformed and refused submissions go to the inbound
//! DLQ at once; a submission is acknowledged only after its commit.

use super::commit_stage::{self, GroupCommitter};
use super::messages::{Capacity, Received, Settled};
use super::Shared;
use crate::chaos::ChaosCommit;
use crate::metrics::metrics;
use crate::protocol;
use crate::store::{Commit, MaxAttempts, NewTask, StoreError, Submitted, TaskStore};
use crate::supervision::Link;
use actix::prelude::*;
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

pub struct Persister {
    shared: Shared,
    settings: PersisterSettings,
    link: Link,
    committer: Option<GroupCommitter<ChaosCommit<SubmitCommit>>>,
}

impl Persister {
    pub fn new(shared: Shared, settings: PersisterSettings, link: Link) -> Self {
        Self { shared, settings, link, committer: None }
    }
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let store = self.shared.store("persister", 8);
        let commit = SubmitCommit { store, shared: Some(self.shared.clone()), name: "persister" };
        let commit = self.shared.chaos.around_commit(commit, crate::chaos::Stage::Persister);
        let (committer, loops) = GroupCommitter::new(commit, self.settings.max_batch, 1);
        self.committer = Some(committer);
        ctx.spawn(loops.into_actor(self));
    }
}

impl Handler<Capacity> for Persister {
    type Result = usize;

    /// A commit stage takes a full batch: its back-pressure is the wait for `Settled`.
    fn handle(&mut self, _: Capacity, _: &mut Self::Context) -> usize {
        crate::transport::MAX_BATCH
    }
}

impl Handler<Received> for Persister {
    type Result = ResponseFuture<Settled>;

    fn handle(&mut self, msg: Received, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&["persister", "received"]).inc();
        let shared = self.shared.clone();
        let committer = self.committer.clone().expect("started");
        Box::pin(async move {
            let s = &shared.settings;
            let (max, default_max) = (s.transport.max_message_bytes, default_max_attempts(&shared));
            let settled = commit_stage::settle(&shared, msg.queue, &committer, msg.messages, |body| {
                protocol::parse_submissions(body, max, default_max)
                    .into_iter()
                    .map(|(entry, item)| commit_stage::Entry { item, body: entry })
                    .collect()
            })
            .await;
            metrics().actor_in_flight.with_label_values(&["persister"]).set(committer.in_flight() as i64);
            settled
        })
    }
}

fn default_max_attempts(shared: &Shared) -> MaxAttempts {
    MaxAttempts::parse(shared.settings.retry.default_max_attempts).unwrap_or_default()
}

#[cfg(feature = "test-hooks")]
impl Handler<super::messages::InjectPanic> for Persister {
    type Result = ();
    fn handle(&mut self, _: super::messages::InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in Persister");
    }
}

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
