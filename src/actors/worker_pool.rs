//! WorkerPool: runs the action's handler for each task from the outbound queue, with bounded concurrency, and
//! sends a JSON-RPC result or error to the results queue. The outbound message is deleted only after its result
//! was sent (ack after the effect is downstream). Results are batched: up to 10 per send, 10 deletes per call.
//! A handler running longer than half the visibility timeout gets its message's visibility extended.

use super::messages::{Capacity, Received, Settled};
use super::{Shared, TrackGuard};
use crate::handlers::{HandlerContext, HandlerError};
use crate::metrics::metrics;
use crate::protocol::{self, TaskRequest};
use crate::store::{Outcome, TaskResult, TaskStore};
use crate::supervision::Link;
use crate::transport::{Message as QueueMessage, Queue, MAX_BATCH};
use actix::prelude::*;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A finished task waiting for its result to be sent and its outbound message deleted.
struct Done {
    body: String,
    receipt: String,
    _guard: TrackGuard,
}

pub struct WorkerPool {
    shared: Shared,
    settings: WorkerSettings,
    link: Link,
    permits: Arc<Semaphore>,
    /// Messages handed in but still waiting for a handler slot (promised capacity).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    done_tx: Option<mpsc::UnboundedSender<Done>>,
    /// The handlers' database pool (reported as `worker_pool`).
    store: Option<TaskStore>,
}

impl WorkerPool {
    pub fn new(shared: Shared, settings: WorkerSettings, link: Link) -> Self {
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        Self { shared, settings, link, permits, waiting: Default::default(), done_tx: None, store: None }
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let (tx, rx) = mpsc::unbounded_channel();
        self.done_tx = Some(tx);
        let pool_size = self.settings.concurrency.min(16) as u32;
        self.store = Some(self.shared.store("worker_pool", pool_size));
        ctx.spawn(send_results(self.shared.clone(), rx).into_actor(self));
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<super::messages::InjectPanic> for WorkerPool {
    type Result = ();
    fn handle(&mut self, _: super::messages::InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in WorkerPool");
    }
}

impl Handler<Capacity> for WorkerPool {
    type Result = ResponseFuture<usize>;

    /// Free handler slots not yet promised to a batch; waits until there is one.
    fn handle(&mut self, _: Capacity, _: &mut Self::Context) -> Self::Result {
        let (permits, waiting) = (self.permits.clone(), self.waiting.clone());
        Box::pin(async move {
            loop {
                let free = permits.available_permits().saturating_sub(waiting.load(Ordering::SeqCst));
                if free > 0 {
                    return free;
                }
                // A slot frees when a handler ends: wait for one, then look again.
                match permits.acquire().await {
                    Ok(p) => drop(p),
                    Err(_) => return 0,
                }
                if waiting.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    }
}

impl Handler<Received> for WorkerPool {
    type Result = ResponseFuture<Settled>;

    /// Starts each task as soon as a handler slot is free and answers once all of the batch started
    /// (back-pressure on the pollers); the messages are deleted later, after their results were sent.
    fn handle(&mut self, msg: Received, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&["worker_pool", "received"]).inc();
        let shared = self.shared.clone();
        let permits = self.permits.clone();
        let waiting = self.waiting.clone();
        let concurrency = self.settings.concurrency;
        let done_tx = self.done_tx.clone().expect("started");
        let db = self.store.as_ref().expect("started").pool().clone();
        waiting.fetch_add(msg.messages.len(), Ordering::SeqCst);
        Box::pin(async move {
            let mut bad = Vec::new();
            for m in msg.messages {
                // This message no longer waits for a slot once it has one (or is dead-lettered).
                let _promised = Promise(&waiting);
                let max = shared.settings.transport.max_message_bytes;
                match TaskRequest::parse(&m.body, max) {
                    Ok(req) => {
                        // One slot at a time, so a batch larger than the pool (concurrency below 10) still runs.
                        let Ok(permit) = permits.clone().acquire_owned().await else { break };
                        let guard = shared.phases.outbound_work.guard();
                        let run = run_task(shared.clone(), db.clone(), req, m, permit, guard, done_tx.clone());
                        // spawn_local: handlers run on this arbiter, outside the actor, so a handler's panic is
                        // contained (caught in run_task) and never takes the pool down.
                        actix_rt::spawn(run);
                    }
                    Err(e) => bad.push((m, e)),
                }
            }
            let running = concurrency - permits.available_permits();
            metrics().actor_in_flight.with_label_values(&["worker_pool"]).set(running as i64);
            // Dead-lettered messages may be deleted now; the others once their results are sent.
            Settled { receipts: shared.dead_letter(Queue::Outbound, bad).await }
        })
    }
}

/// One message's claim on capacity, released when it started (or was dead-lettered).
struct Promise<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_task(
    shared: Shared,
    db: crate::db::DbPool,
    req: TaskRequest,
    msg: QueueMessage,
    permit: OwnedSemaphorePermit,
    guard: TrackGuard,
    done_tx: mpsc::UnboundedSender<Done>,
) {
    let ctx = HandlerContext { task_id: req.id, attempt: req.attempt, db };
    let started = Instant::now();
    let outcome = match shared.handlers.get(&req.action) {
        None => {
            Err(HandlerError::with_code(protocol::METHOD_NOT_FOUND, format!("no handler for action {:?}", req.action)))
        }
        Some(handler) => {
            let run = AssertUnwindSafe(handler.handle(&ctx, &req.payload)).catch_unwind();
            let heartbeat = extend_visibility(&shared, &msg.receipt);
            tokio::select! {
                r = run => r.unwrap_or_else(|p| {
                    let what = p.downcast_ref::<&str>().map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
                    Err(HandlerError::new(format!("handler panicked: {what}")))
                }),
                _ = heartbeat => unreachable!("heartbeat never ends"),
            }
        }
    };
    metrics().handler_duration.with_label_values(&[req.action.as_str()]).observe(started.elapsed().as_secs_f64());
    let outcome = match outcome {
        Ok(v) => Outcome::Success(v),
        Err(e) => {
            tracing::info!(task_id = req.id, attempt = req.attempt, action = %req.action, error = %e, "handler failed");
            Outcome::Failure(e.to_value())
        }
    };
    drop(permit);
    let body = protocol::result_body(&TaskResult { id: req.id, attempt: req.attempt, outcome });
    let _ = done_tx.send(Done { body, receipt: msg.receipt, _guard: guard });
}

/// Every half visibility timeout, extends the message's visibility by a full timeout. Never returns.
async fn extend_visibility(shared: &Shared, receipt: &str) {
    let vis = Duration::from_secs(shared.settings.transport.visibility_timeout_secs as u64);
    let receipts = [receipt.to_owned()];
    loop {
        tokio::time::sleep(vis / 2).await;
        if let Err(e) = shared.transport.change_visibility(Queue::Outbound, &receipts, vis).await {
            tracing::warn!(error = %e, "visibility heartbeat failed");
        }
    }
}

/// Sends results in batches of up to 10, then deletes the outbound messages whose results went out.
async fn send_results(shared: Shared, mut rx: mpsc::UnboundedReceiver<Done>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH * 10 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let bodies: Vec<String> = batch.iter().map(|d| d.body.clone()).collect();
        let sent = match shared.transport.send(Queue::Results, &bodies).await {
            Ok(r) => r,
            Err(e) => bodies.iter().map(|_| Err(e.to_string())).collect(),
        };
        let receipts: Vec<String> =
            batch.iter().zip(&sent).filter(|(_, r)| r.is_ok()).map(|(d, _)| d.receipt.clone()).collect();
        if receipts.len() < batch.len() {
            tracing::warn!(failed = batch.len() - receipts.len(), "result send failed; those tasks will run again");
        }
        if let Err(e) = shared.transport.delete(Queue::Outbound, &receipts).await {
            tracing::warn!(error = %e, "outbound delete failed; the tasks' results will be stale duplicates");
        }
        drop(batch); // releases the shutdown guards after the delete
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Receivers on the outbound queue.
    pub pollers: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { concurrency: 64, pollers: 2 }
    }
}
