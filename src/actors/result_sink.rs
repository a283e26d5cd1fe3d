//! ResultSink: records results from the results queue (TaskStore::complete_many, one statement per group).
//! Fenced: a result applies only to its (task id, attempt) while still ACQUIRED; stale results are counted and
//! deleted, never applied. Malformed results go to the results DLQ at once.

use super::group_commit::GroupCommit;
use super::{Deliver, InjectPanic, Shared};
use crate::chaos::Stage;
use crate::metrics::metrics;
use crate::protocol;
use crate::store::{TaskState, TaskStore};
use crate::transport::Queue;
use actix::prelude::*;
use std::collections::HashSet;

pub struct ResultSink {
    shared: Shared,
    commit: Option<GroupCommit>,
}

impl ResultSink {
    pub fn new(shared: Shared) -> Self {
        Self { shared, commit: None }
    }
}

impl Actor for ResultSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = self.shared.clone();
        let store = shared.new_store(8);
        let (commit, fut) = GroupCommit::new(shared.settings.persister.max_batch, move |msgs| {
            record(shared.clone(), store.clone(), msgs)
        });
        self.commit = Some(commit);
        ctx.spawn(fut.into_actor(self));
    }
}

impl Supervised for ResultSink {}

impl Handler<Deliver> for ResultSink {
    type Result = ResponseFuture<Vec<String>>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        let commit = self.commit.clone().expect("started");
        Box::pin(async move { commit.submit(msg.messages).await })
    }
}

impl Handler<InjectPanic> for ResultSink {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in ResultSink");
    }
}

async fn record(shared: Shared, store: TaskStore, msgs: Vec<crate::transport::Message>) -> HashSet<String> {
    let max = shared.settings.transport.max_message_bytes;
    let mut results = Vec::with_capacity(msgs.len());
    let mut receipts = Vec::with_capacity(msgs.len());
    let mut bad = Vec::new();
    for m in msgs {
        match protocol::parse_result(&m.body, max) {
            Ok(r) => {
                results.push(r);
                receipts.push(m.receipt);
            }
            Err(e) => bad.push((m, e)),
        }
    }
    let mut done: HashSet<String> = shared.dead_letter(Queue::Results, bad).await.into_iter().collect();
    if results.is_empty() {
        return done;
    }
    match store.complete_many(&results).await {
        Ok(c) => {
            let m = metrics();
            for a in &c.applied {
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
                let _ = shared.completions.send(a.clone());
            }
            if !c.stale.is_empty() {
                m.results_stale.inc_by(c.stale.len() as u64);
                tracing::debug!(stale = c.stale.len(), "stale results dropped");
            }
            if c.applied.iter().any(|a| a.state == TaskState::Error) {
                shared.acquirer_wake.notify_one();
            }
            // Chaos: for some messages act as if the process died between commit and delete; the redelivered
            // result must be stale.
            done.extend(receipts.into_iter().filter(|_| !shared.chaos.strike(Stage::ResultSink)));
        }
        Err(e) => {
            tracing::error!(error = %e, results = results.len(), "complete_many failed; results will be redelivered")
        }
    }
    done
}
