//! The one commit stage: "take a batch, parse, dead-letter what is malformed, group-commit the rest in one
//! statement, isolate an item the database refuses, classify errors, return what may be acknowledged". The
//! Persister, the ResultSink and the HTTP submit path are thin users of it.
//!
//! Group commit: batches handed in by several callers at once go into one statement, so a stage's rate is not
//! bound by one transaction per message batch. No artificial delay: what arrives while one statement runs goes
//! into the next. Error classification (`StoreError::class`) decides the fate of a failed item: refused data is
//! poison (dead-lettered, or -32602 over HTTP); everything else is retried and never dead-lettered.

use super::messages::{Capacity, Received, Settled};
use super::Shared;
use crate::chaos::{ChaosCommit, Stage};
use crate::metrics::metrics;
use crate::protocol::{RpcError, INVALID_PARAMS};
use crate::store::{Commit, ErrorClass, StoreError};
use crate::supervision::Link;
use crate::transport::{Message as QueueMessage, Queue};
use actix::prelude::*;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Why an item was not committed.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemError {
    /// The database refuses this item: poison.
    Refused(String),
    /// The database is unavailable: try again later (never dead-letter).
    Unavailable(String),
}

type Outcome<C> = Result<<C as Commit>::Output, ItemError>;

struct Request<C: Commit> {
    items: Vec<C::Item>,
    reply: oneshot::Sender<Vec<Outcome<C>>>,
}

#[derive(Default)]
struct Counters {
    statements: AtomicU64,
    items: AtomicU64,
    waiting: AtomicUsize,
}

/// The handle callers use; cheap to clone. The loops it needs come from [`GroupCommitter::new`], for the owning
/// actor to spawn in its own context (so they die, and restart, with it).
pub struct GroupCommitter<C: Commit> {
    tx: mpsc::Sender<Request<C>>,
    counters: Arc<Counters>,
}

impl<C: Commit> Clone for GroupCommitter<C> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), counters: self.counters.clone() }
    }
}

/// Requests waiting at most; beyond that callers wait (back-pressure).
const QUEUE_CAPACITY: usize = 16_384;

impl<C: Commit> GroupCommitter<C> {
    /// `max_items` per statement; `in_flight` statements at once (while one commits, the next group forms).
    pub fn new(commit: C, max_items: usize, in_flight: usize) -> (Self, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::channel::<Request<C>>(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let rx = Arc::new(Mutex::new(rx));
        let commit = Arc::new(commit);
        let loops: Vec<_> = (0..in_flight.max(1))
            .map(|_| run(commit.clone(), max_items.max(1), rx.clone(), counters.clone()))
            .collect();
        let fut = async move {
            futures::future::join_all(loops).await;
        };
        (GroupCommitter { tx, counters }, fut)
    }

    /// Commits `items` with whatever else is waiting; one outcome per item, in order.
    pub async fn commit(&self, items: Vec<C::Item>) -> Vec<Outcome<C>> {
        let n = items.len();
        if n == 0 {
            return Vec::new();
        }
        let (reply, rx) = oneshot::channel();
        let stopped = || (0..n).map(|_| Err(ItemError::Unavailable("the commit stage stopped".into()))).collect();
        if self.tx.send(Request { items, reply }).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Statements run so far (each one a group commit, or one item while isolating a refused one).
    pub fn statements(&self) -> u64 {
        self.counters.statements.load(Ordering::Relaxed)
    }

    /// Items handled so far.
    pub fn items(&self) -> u64 {
        self.counters.items.load(Ordering::Relaxed)
    }

    /// Items waiting for or inside a statement now.
    pub fn in_flight(&self) -> usize {
        self.counters.waiting.load(Ordering::Relaxed)
    }
}

async fn run<C: Commit>(
    commit: Arc<C>,
    max_items: usize,
    rx: Arc<Mutex<mpsc::Receiver<Request<C>>>>,
    counters: Arc<Counters>,
) {
    let mut group: Vec<Request<C>> = Vec::new();
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut n = first.items.len();
            group.push(first);
            while n < max_items {
                match rx.try_recv() {
                    Ok(r) => {
                        n += r.items.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
        }
        // Callers that gave up (an HTTP client that disconnected) need no statement.
        group.retain(|r| !r.reply.is_closed());
        let items: Vec<C::Item> = group.iter().flat_map(|r| r.items.iter().cloned()).collect();
        counters.items.fetch_add(items.len() as u64, Ordering::Relaxed);
        counters.waiting.fetch_add(items.len(), Ordering::Relaxed);
        let mut outcomes = commit_group(commit.as_ref(), &items, &counters).await.into_iter();
        counters.waiting.fetch_sub(items.len(), Ordering::Relaxed);
        for r in group.drain(..) {
            let mine: Vec<Outcome<C>> = outcomes.by_ref().take(r.items.len()).collect();
            let _ = r.reply.send(mine);
        }
    }
}

/// One statement for the group; when the database refuses it, the items one by one, so that one bad item can
/// never hold back the others.
async fn commit_group<C: Commit>(commit: &C, items: &[C::Item], counters: &Counters) -> Vec<Outcome<C>> {
    if items.is_empty() {
        return Vec::new();
    }
    let err = match attempt(commit, items, counters).await {
        Ok(out) => return out.into_iter().map(Ok).collect(),
        Err(e) => e,
    };
    if err.class() == ErrorClass::Transient {
        tracing::warn!(stage = commit.name(), error = %err, items = items.len(), "commit failed (transient); will be retried");
        return unavailable(items.len(), &err);
    }
    tracing::warn!(stage = commit.name(), error = %err, items = items.len(), "group refused; isolating item by item");
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let one = std::slice::from_ref(item);
        let mut res = attempt(commit, one, counters).await;
        if matches!(&res, Err(e) if e.class() == ErrorClass::Unclear) {
            // Unclear is a data error only if it happens again alone on a fresh connection.
            res = attempt(commit, one, counters).await;
        }
        match res {
            Ok(mut o) if o.len() == 1 => out.push(Ok(o.remove(0))),
            Ok(_) => out.push(Err(ItemError::Unavailable("unexpected statement result".into()))),
            Err(e) if e.class() == ErrorClass::Transient => {
                // The database went away meanwhile: do not try the rest one at a time.
                out.extend(unavailable(items.len() - i, &e));
                break;
            }
            Err(e) => {
                metrics().items_refused.with_label_values(&[commit.name()]).inc();
                out.push(Err(ItemError::Refused(e.to_string())));
            }
        }
    }
    out
}

/// Runs the statement; a transient failure is tried once more at once (a dead pooled connection is discarded by
/// the pool, and the second try gets a fresh one), so a database restart costs no message a redelivery.
async fn attempt<C: Commit>(commit: &C, items: &[C::Item], counters: &Counters) -> Result<Vec<C::Output>, StoreError> {
    let statement = || {
        counters.statements.fetch_add(1, Ordering::Relaxed);
        metrics().commit_batch_size.with_label_values(&[commit.name()]).observe(items.len() as f64);
    };
    statement();
    match commit.commit(items).await {
        // A dead pooled connection, not a pool that timed out waiting for a connection (the database is down).
        Err(e @ StoreError::Database(_)) if e.class() == ErrorClass::Transient => {
            tracing::debug!(error = %e, "transient failure; trying once more on a fresh connection");
            statement();
            commit.commit(items).await
        }
        other => other,
    }
}

fn unavailable<T>(n: usize, e: &StoreError) -> Vec<Result<T, ItemError>> {
    (0..n).map(|_| Err(ItemError::Unavailable(e.to_string()))).collect()
}

/// One entry of a received message: a message holds one, or several when it is a JSON-RPC batch.
pub struct Entry<T> {
    pub item: Result<T, RpcError>,
    /// The entry's own JSON, for a batch entry (dead-lettered on its own); None for a whole message.
    pub body: Option<String>,
}

impl<T> Entry<T> {
    /// The message is the entry.
    pub fn whole(item: Result<T, RpcError>) -> Vec<Entry<T>> {
        vec![Entry { item, body: None }]
    }
}

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
    fn build(shared: &Shared) -> Self;
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
    committer: Option<GroupCommitter<ChaosCommit<C>>>,
}

impl<C: QueueStage> CommitStage<C> {
    pub fn new(shared: Shared, max_batch: usize, link: Link) -> Self {
        Self { shared, link, max_batch, committer: None }
    }
}

impl<C: QueueStage> Actor for CommitStage<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let commit = self.shared.chaos.around_commit(C::build(&self.shared), C::CHAOS);
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
