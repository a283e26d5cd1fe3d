//! Group commit for submissions arriving over HTTP: every `submit:*` call, from any worker thread and any request,
//! goes through one channel to one task that takes everything waiting (up to `max_batch`) and runs one
//! `submit_many`. No artificial delay: what arrives while a statement runs goes into the next one.

use crate::metrics::metrics;
use crate::protocol::{RpcError, INTERNAL_ERROR};
use crate::store::{NewTask, StoreError, Submitted, TaskStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Group-commit statements running at once.
const STATEMENTS_IN_FLIGHT: usize = 4;

/// Submissions waiting for the batcher at most; beyond that callers wait (backpressure).
const QUEUE_CAPACITY: usize = 16_384;

struct Pending {
    task: NewTask,
    reply: oneshot::Sender<Result<Submitted, RpcError>>,
}

#[derive(Default)]
struct Counters {
    statements: AtomicU64,
    tasks: AtomicU64,
}

/// Handle to the batcher task. Cheap to clone; the task ends when every handle is dropped.
#[derive(Clone)]
pub struct SubmitBatcher {
    tx: mpsc::Sender<Pending>,
    counters: Arc<Counters>,
}

impl SubmitBatcher {
    /// Spawns the batcher on the current thread's local task set (an actix System or Arbiter).
    pub fn spawn(store: TaskStore, max_batch: usize) -> SubmitBatcher {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        // A few statements in flight at once: while one commits, the next group forms, and both cores work.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..STATEMENTS_IN_FLIGHT {
            actix_rt::spawn(run(store.clone(), max_batch.max(1), rx.clone(), counters.clone()));
        }
        SubmitBatcher { tx, counters }
    }

    /// Queues one submission and waits for the statement that stores it.
    pub async fn submit(&self, task: NewTask) -> Result<Submitted, RpcError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || RpcError::new(INTERNAL_ERROR, "internal error: the submit batcher stopped");
        self.tx.send(Pending { task, reply }).await.map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// `submit_many` statements run so far (each one a group commit).
    pub fn statements(&self) -> u64 {
        self.counters.statements.load(Ordering::Relaxed)
    }

    /// Submissions handled so far.
    pub fn tasks(&self) -> u64 {
        self.counters.tasks.load(Ordering::Relaxed)
    }
}

async fn run(
    store: TaskStore,
    max_batch: usize,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>,
    counters: Arc<Counters>,
) {
    let mut group: Vec<Pending> = Vec::with_capacity(max_batch);
    loop {
        group.clear();
        if rx.lock().await.recv_many(&mut group, max_batch).await == 0 {
            return; // every sender is gone
        }
        // Callers that gave up (client disconnected) need no statement.
        group.retain(|p| !p.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let tasks: Vec<NewTask> = group.iter().map(|p| p.task.clone()).collect();
        counters.statements.fetch_add(1, Ordering::Relaxed);
        counters.tasks.fetch_add(tasks.len() as u64, Ordering::Relaxed);
        let results = match store.submit_many(&tasks).await {
            Ok(s) => s.into_iter().map(Ok).collect(),
            Err(e) if tasks.len() > 1 && is_statement_error(&e) => {
                // The database refused the statement (not the connection): one submission may be at fault.
                // Run them one by one so that only the offending one fails, not everyone committed with it.
                tracing::warn!(error = %e, tasks = tasks.len(), "group submit failed; retrying one by one");
                one_by_one(&store, &tasks, &counters).await
            }
            Err(e) => {
                let err = internal(&e);
                tasks.iter().map(|_| Err(err.clone())).collect()
            }
        };
        let created = results.iter().filter(|r| matches!(r, Ok(s) if s.created)).count() as u64;
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        metrics().tasks_persisted.inc_by(created);
        metrics().tasks_duplicate.inc_by(ok - created);
        for (p, r) in group.drain(..).zip(results) {
            let _ = p.reply.send(r);
        }
    }
}

async fn one_by_one(store: &TaskStore, tasks: &[NewTask], counters: &Counters) -> Vec<Result<Submitted, RpcError>> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut down: Option<RpcError> = None;
    for t in tasks {
        if let Some(e) = &down {
            out.push(Err(e.clone()));
            continue;
        }
        counters.statements.fetch_add(1, Ordering::Relaxed);
        match store.submit_many(std::slice::from_ref(t)).await {
            Ok(mut s) if s.len() == 1 => out.push(Ok(s.remove(0))),
            Ok(_) => out.push(Err(RpcError::new(INTERNAL_ERROR, "internal error: unexpected submit result"))),
            Err(e) => {
                let err = internal(&e);
                if !is_statement_error(&e) {
                    // The database itself is unreachable: do not try the rest one at a time.
                    down = Some(err.clone());
                }
                out.push(Err(err));
            }
        }
    }
    out
}

/// An error raised by the database for this statement (bad data, constraint), as opposed to a lost connection
/// or an exhausted pool.
fn is_statement_error(e: &StoreError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, StoreError::Database(Error::DatabaseError(kind, _)) if !matches!(kind, DatabaseErrorKind::ClosedConnection))
}

fn internal(e: &StoreError) -> RpcError {
    match e {
        StoreError::Invalid(v) => RpcError::invalid_params(v.clone()),
        other => {
            tracing::error!(error = %other, "submit_many failed");
            RpcError::new(INTERNAL_ERROR, "internal error: the task store is unavailable")
        }
    }
}
