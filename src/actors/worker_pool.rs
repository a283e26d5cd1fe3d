//! WorkerPool: runs the action's handler for each task from the outbound queue, with bounded concurrency, and
//! sends a JSON-RPC result or error to the results queue. The outbound message is deleted only after its result
//! was sent (ack after the effect is downstream). Results are batched: up to 10 per send, 10 deletes per call.
//! A handler running longer than half the visibility timeout gets its message's visibility extended.

use super::{Deliver, InjectPanic, Shared, TrackGuard};
use crate::chaos::Stage;
use crate::handlers::{HandlerContext, HandlerError};
use crate::metrics::metrics;
use crate::protocol::{self, TaskRequest};
use crate::store::{Outcome, TaskResult};
use crate::transport::{Message as QueueMessage, Queue, MAX_BATCH};
use actix::prelude::*;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
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
    permits: Arc<Semaphore>,
    done_tx: Option<mpsc::UnboundedSender<Done>>,
    db: Option<crate::db::DbPool>,
}

impl WorkerPool {
    pub fn new(shared: Shared) -> Self {
        let permits = Arc::new(Semaphore::new(shared.settings.worker.concurrency));
        Self { shared, permits, done_tx: None, db: None }
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.done_tx = Some(tx);
        let pool_size = self.shared.settings.worker.concurrency.min(16) as u32;
        self.db = Some(self.shared.new_store(pool_size).pool().clone());
        ctx.spawn(send_results(self.shared.clone(), rx).into_actor(self));
    }
}

impl Supervised for WorkerPool {}

impl Handler<InjectPanic> for WorkerPool {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in WorkerPool");
    }
}

impl Handler<Deliver> for WorkerPool {
    type Result = ResponseFuture<Vec<String>>;

    /// Accepts the batch once there is room for all of it (back-pressure on the pollers); deletes come later.
    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        let shared = self.shared.clone();
        let permits = self.permits.clone();
        let done_tx = self.done_tx.clone().expect("started");
        let db = self.db.clone().expect("started");
        Box::pin(async move {
            let n = msg.messages.len() as u32;
            let Ok(mut batch_permit) = permits.acquire_many_owned(n).await else {
                return Vec::new();
            };
            let mut bad = Vec::new();
            for m in msg.messages {
                let max = shared.settings.transport.max_message_bytes;
                match TaskRequest::parse(&m.body, max) {
                    Ok(req) => {
                        let permit = batch_permit.split(1).expect("one permit per message");
                        let guard = shared.phases.outbound_work.guard();
                        let run = run_task(shared.clone(), db.clone(), req, m, permit, guard, done_tx.clone());
                        // spawn_local: handlers run on this arbiter, outside the actor, so a handler's panic is
                        // contained (caught in run_task) and never takes the pool down.
                        actix_rt::spawn(run);
                    }
                    Err(e) => bad.push((m, e)),
                }
            }
            shared.dead_letter(Queue::Outbound, bad).await
        })
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
    let mut outcome = match outcome {
        Ok(v) => Outcome::Success(v),
        Err(e) => {
            tracing::info!(task_id = req.id, attempt = req.attempt, action = %req.action, error = %e, "handler failed");
            Outcome::Failure(e.to_value())
        }
    };
    // Chaos: report a failure after the handler ran, so the retry must be idempotent.
    if shared.chaos.strike(Stage::Worker) {
        outcome = Outcome::Failure(HandlerError::new("chaos: injected failure").to_value());
    }
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
