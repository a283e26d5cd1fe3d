//! The one commit stage actor: "take a batch, parse, dead-letter what is malformed, group-commit the rest in one
//! statement ([`crate::group_commit`]), return what may be acknowledged". The Persister and the ResultSink are
//! thin users of it; the HTTP submit path uses the group commit without the queue.

use super::messages::{Capacity, Received, Settled};
use super::Shared;
use crate::chaos::{ChaosCommit, Stage};
use crate::group_commit::{GroupCommitter, ItemError};
use crate::metrics::metrics;
use crate::protocol::{Entry, RpcError, INVALID_PARAMS};
use crate::store::Commit;
use crate::supervision::Link;
use crate::transport::{Message as QueueMessage, Queue};
use actix::prelude::*;
/// The queue side of a commit stage: parses each message into its entries, commits every valid entry of every
/// message in one group, and dead-letters — each on its own, with its reason — the malformed entries and the ones
/// the database refuses. A message is settled (its receipt returned for deletion) once every entry is durable or
/// dead-lettered; one whose commit failed transiently is not, and comes back after its visibility timeout.
pub async fn settle<C: Commit>(
    shared: &Shared,
    queue: Queue,
    committer: &GroupCommitter<C>,
    messages: Vec<QueueMessage>,
    parse: impl Fn(&str) -> Vec<Entry<C::Item>>,
) -> Settled {
    let mut items = Vec::with_capacity(messages.len());
    let mut owners = Vec::with_capacity(messages.len()); // (message index, entry body)
    let mut bad: Vec<(usize, Option<String>, RpcError)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        for e in parse(&m.body) {
            match e.item {
                Ok(item) => {
                    items.push(item);
                    owners.push((i, e.body));
                }
                Err(err) => bad.push((i, e.body, err)),
            }
        }
    }
    let outcomes = committer.commit(items).await;
    // The breaker learns whether the database takes commits (refused data says it does).
    match outcomes.iter().find_map(|o| match o {
        Err(ItemError::Unavailable(e)) => Some(e),
        _ => None,
    }) {
        Some(e) => shared.breaker.failure(e),
        None if !outcomes.is_empty() => shared.breaker.success(),
        None => {}
    }
    let mut settled = vec![true; messages.len()];
    for ((i, body), outcome) in owners.into_iter().zip(outcomes) {
        match outcome {
            Ok(_) => {}
            Err(ItemError::Refused(why)) => {
                bad.push((i, body, RpcError::new(INVALID_PARAMS, format!("refused by the database: {why}"))))
            }
            Err(ItemError::Unavailable(_)) => settled[i] = false,
        }
    }
    let entries: Vec<(&str, &str, &RpcError)> = bad
        .iter()
        .map(|(i, body, e)| (messages[*i].id.as_str(), body.as_deref().unwrap_or(&messages[*i].body), e))
        .collect();
    let sent = shared.dead_letter_bodies(queue, &entries).await;
    for ((i, _, _), ok) in bad.iter().zip(sent) {
        settled[*i] &= ok;
    }
    Settled { receipts: messages.into_iter().zip(settled).filter(|(_, s)| *s).map(|(m, _)| m.receipt).collect() }
}

/// What makes a queue-consuming commit stage: its statement (a [`Commit`]) and how it reads a message.
pub trait QueueStage: Commit + Sized {
    /// The actor's name in logs and metrics.
    const NAME: &'static str;
    /// Which chaos setting applies to its statement.
    const CHAOS: Stage;
    /// The statement, built when the stage starts, on its Arbiter (where its pool is opened).
    fn build(shared: &Shared, pool_size: u32) -> Self;
    /// A message body -> its entries.
    fn parse(shared: &Shared, body: &str) -> Vec<Entry<Self::Item>>;
}

/// The actor of a queue-consuming commit stage: the Persister is `CommitStage<InboundCommit>`, the ResultSink
/// `CommitStage<CompleteCommit>`. It answers [`Capacity`] with a full batch (its back-pressure is the wait for
/// [`Settled`]) and [`Received`] with what [`settle`] settled.
pub struct CommitStage<C: QueueStage> {
    shared: Shared,
    link: Link,
    max_batch: usize,
    pool_size: u32,
    committer: Option<GroupCommitter<ChaosCommit<C>>>,
}

impl<C: QueueStage> CommitStage<C> {
    /// `max_batch` items per statement; `pool_size` database connections for them.
    pub fn new(shared: Shared, max_batch: usize, pool_size: u32, link: Link) -> Self {
        Self { shared, link, max_batch, pool_size, committer: None }
    }
}

impl<C: QueueStage> Actor for CommitStage<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let commit = self.shared.chaos.around_commit(C::build(&self.shared, self.pool_size), C::CHAOS);
        let (committer, loops) = GroupCommitter::new(commit, self.max_batch, 1);
        self.committer = Some(committer);
        ctx.spawn(loops.into_actor(self));
    }
}

impl<C: QueueStage> Handler<Capacity> for CommitStage<C> {
    type Result = usize;

    fn handle(&mut self, _: Capacity, _: &mut Self::Context) -> usize {
        crate::transport::MAX_BATCH
    }
}

impl<C: QueueStage> Handler<Received> for CommitStage<C> {
    type Result = ResponseFuture<Settled>;

    fn handle(&mut self, msg: Received, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&[C::NAME, "received"]).inc();
        let shared = self.shared.clone();
        let committer = self.committer.clone().expect("started");
        Box::pin(async move {
            let settled = settle(&shared, msg.queue, &committer, msg.messages, |body| C::parse(&shared, body)).await;
            metrics().actor_in_flight.with_label_values(&[C::NAME]).set(committer.in_flight() as i64);
            settled
        })
    }
}

#[cfg(feature = "test-hooks")]
impl<C: QueueStage> Handler<super::messages::InjectPanic> for CommitStage<C> {
    type Result = ();
    fn handle(&mut self, _: super::messages::InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in {}", C::NAME);
    }
}
