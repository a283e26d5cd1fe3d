//! Group commit: batches handed in by several callers at once go into one statement, so a stage's rate is not
//! bound by one transaction per message batch. No artificial delay: what arrives while one statement runs goes
//! into the next. When the database refuses a group, its items are tried one by one, so one bad item never holds
//! back the others; error classification (`StoreError::class`) decides the fate of a failed item: refused data is
//! poison (dead-lettered, or -32602 over HTTP); everything else is retried and never dead-lettered. Not an actor:
//! the queue stages (`actors::commit_stage`) and the HTTP submit path both run it.

use crate::metrics::metrics;
use crate::store::{Commit, ErrorClass, StoreError};
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
