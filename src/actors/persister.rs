//! Persister: stores submissions from the inbound queue as SCHEDULED tasks (TaskStore::submit_many, one statement
//! per group). Duplicates are harmless. Malformed submissions go to the inbound DLQ at once. Messages are deleted
//! only after the commit.

use super::group_commit::GroupCommit;
use super::{Deliver, InjectPanic, Shared};
use crate::chaos::Stage;
use crate::metrics::metrics;
use crate::protocol;
use crate::protocol::{RpcError, INVALID_PARAMS};
use crate::store::{MaxAttempts, StoreError, Submitted, TaskStore};
use crate::transport::Queue;
use actix::prelude::*;
use std::collections::HashSet;

pub struct Persister {
    shared: Shared,
    commit: Option<GroupCommit>,
}

impl Persister {
    pub fn new(shared: Shared) -> Self {
        Self { shared, commit: None }
    }
}

impl Actor for Persister {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = self.shared.clone();
        let store = shared.new_store(8);
        let (commit, fut) = GroupCommit::new(shared.settings.persister.max_batch, move |msgs| {
            persist(shared.clone(), store.clone(), msgs)
        });
        self.commit = Some(commit);
        ctx.spawn(fut.into_actor(self));
    }
}

impl Supervised for Persister {}

impl Handler<Deliver> for Persister {
    type Result = ResponseFuture<Vec<String>>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        let commit = self.commit.clone().expect("started");
        Box::pin(async move { commit.submit(msg.messages).await })
    }
}

impl Handler<InjectPanic> for Persister {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in Persister");
    }
}

async fn persist(shared: Shared, store: TaskStore, msgs: Vec<crate::transport::Message>) -> HashSet<String> {
    let settings = &shared.settings;
    let default_max = MaxAttempts::parse(settings.retry.default_max_attempts).unwrap_or_default();
    let mut tasks = Vec::with_capacity(msgs.len());
    let mut receipts = Vec::with_capacity(msgs.len());
    let mut bad = Vec::new();
    let mut originals = Vec::with_capacity(msgs.len());
    for m in msgs {
        match protocol::parse_submit(&m.body, settings.transport.max_message_bytes, default_max) {
            Ok(t) => {
                tasks.push(t);
                receipts.push(m.receipt.clone());
                originals.push(m);
            }
            Err(e) => bad.push((m, e)),
        }
    }
    let mut done: HashSet<String> = shared.dead_letter(Queue::Inbound, bad).await.into_iter().collect();
    if tasks.is_empty() {
        return done;
    }
    match store.submit_many(&tasks).await {
        Ok(submitted) => {
            record_submitted(&shared, &submitted);
            // Chaos: for some messages act as if the process died between commit and delete; their redelivery
            // must be a harmless duplicate.
            done.extend(receipts.into_iter().filter(|_| !shared.chaos.strike(Stage::Persister)));
        }
        Err(StoreError::Database(e)) if tasks.len() > 1 => {
            // The database refused the group: find the offending submissions one by one, so one bad message can
            // never hold back the others (it is dead-lettered; the rest are stored).
            tracing::warn!(error = %e, tasks = tasks.len(), "group submit refused; retrying one by one");
            let mut refused = Vec::new();
            for ((task, receipt), msg) in tasks.iter().zip(receipts).zip(originals) {
                match store.submit_many(std::slice::from_ref(task)).await {
                    Ok(s) => {
                        record_submitted(&shared, &s);
                        done.insert(receipt);
                    }
                    Err(StoreError::Database(e)) => {
                        refused.push((msg, RpcError::new(INVALID_PARAMS, format!("refused by the database: {e}"))))
                    }
                    Err(e) => tracing::error!(error = %e, "submit failed; the message will be redelivered"),
                }
            }
            done.extend(shared.dead_letter(Queue::Inbound, refused).await);
        }
        Err(e) => {
            tracing::error!(error = %e, tasks = tasks.len(), "submit_many failed; the messages will be redelivered")
        }
    }
    done
}

fn record_submitted(shared: &Shared, submitted: &[Submitted]) {
    let created = submitted.iter().filter(|s| s.created).count() as u64;
    metrics().tasks_persisted.inc_by(created);
    metrics().tasks_duplicate.inc_by(submitted.len() as u64 - created);
    if created > 0 {
        shared.acquirer_wake.notify_one();
    }
}
