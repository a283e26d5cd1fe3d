//! WorkerPool: runs the action's handler for each task from the outbound queue, with bounded concurrency, and
//! sends a JSON-RPC result or error to the results queue. The outbound message is deleted only after its result
//! was sent (ack after the effect is downstream). Results are batched: up to 10 per send, 10 deletes per call.
//!
//! Heartbeats, both batched, for every message this pool holds:
//! - visibility: from the moment a message is received (waiting for a handler slot or running) until its result
//!   was sent, every third of the visibility timeout its visibility is extended by a full timeout, all held
//!   messages in one `change_visibility` (the transport makes one call per 10 receipts);
//! - database: a handler's start is marked in `heartbeat_at` (starts within [`START_BATCH_WINDOW`] share one
//!   statement), and every `worker.heartbeat_interval_secs` all running tasks are refreshed in one statement, so the
//!   StaleReaper never rescues a task whose handler still runs.
//!
//! Timeouts and cancels: a task with `_meta.timeout_secs` has its handler future dropped that long after it started
//! and fails with a `timeout` error ([`protocol::TIMEOUT_ERROR`]), retried like any failure. The pool LISTENs on
//! `tasks_cancel` (sent by `task.cancel` of a running task, after its commit): a handler of a cancelled (id,
//! attempt) is dropped at once and its slot freed; one whose message has not arrived yet is never started. The
//! database heartbeat is the fallback for a missed notification: a running task it finds no longer ACQUIRED with
//! its attempt is dropped too. Either way no result is sent (it would be stale) and the message is deleted.
//!
//! Finished tasks go through a bounded channel to the result sender: when it cannot keep up, handlers wait to hand
//! their results on (and keep their slot), so no unbounded pile of results builds up.

mod heartbeat;
mod held;
mod results;
mod run;

use super::messages::{Capacity, Received, Settled};
use super::Shared;
use crate::metrics::metrics;
use crate::protocol::{RpcError, TaskRequest};
use crate::store::TaskStore;
use crate::supervision::Link;
use crate::transport::Queue;
use actix::prelude::*;
use heartbeat::{database_heartbeat, visibility_heartbeat};
use held::{parse_cancelled, HeldRef};
use results::{send_results, Carrier, Done, DONE_CAPACITY};
use run::{run_task, HandlerSlot};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};

pub use heartbeat::START_BATCH_WINDOW;

pub struct WorkerPool {
    shared: Shared,
    settings: WorkerSettings,
    link: Link,
    permits: Arc<Semaphore>,
    /// Messages handed in but still waiting for a handler slot (capacity already promised to them).
    waiting: Arc<AtomicUsize>,
    /// Notified whenever a handler slot is released.
    freed: Arc<Notify>,
    done_tx: Option<mpsc::Sender<Done>>,
    held: HeldRef,
    /// The handlers' database pool (reported as `worker_pool`).
    store: Option<TaskStore>,
}

impl WorkerPool {
    pub fn new(shared: Shared, settings: WorkerSettings, link: Link) -> Self {
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let waiting = Arc::default();
        let freed = Arc::default();
        Self { shared, settings, link, permits, waiting, freed, done_tx: None, held: HeldRef::default(), store: None }
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let (tx, rx) = mpsc::channel(DONE_CAPACITY);
        self.done_tx = Some(tx);
        let pool_size = self.settings.db_pool_size.min(self.settings.concurrency as u32);
        self.store = Some(self.shared.store("worker_pool", pool_size));
        ctx.spawn(send_results(self.shared.clone(), rx, self.held.clone()).into_actor(self));
        ctx.spawn(visibility_heartbeat(self.shared.clone(), self.held.clone()).into_actor(self));
        // Its own connection: handlers holding the pool's connections cannot delay the heartbeat.
        let heartbeat_store = self.shared.store("worker_pool", 1);
        let every = Duration::from_secs_f64(self.settings.heartbeat_interval_secs);
        ctx.spawn(database_heartbeat(heartbeat_store, self.held.clone(), every).into_actor(self));
        let held = self.held.clone();
        let cancels = crate::db::listen(self.shared.settings.database.clone(), "tasks_cancel", move |p| {
            let tasks = parse_cancelled(p);
            let dropped = held.cancel(&tasks);
            metrics().handlers_cancelled.inc_by(dropped as u64);
            tracing::info!(tasks = ?tasks, dropped, "tasks cancelled");
        });
        ctx.spawn(cancels.into_actor(self));
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
        let (permits, waiting, freed) = (self.permits.clone(), self.waiting.clone(), self.freed.clone());
        let per_message = self.shared.settings.transport.tasks_per_message.max(1);
        Box::pin(async move {
            loop {
                let notified = freed.notified();
                let free = permits.available_permits().saturating_sub(waiting.load(Ordering::SeqCst));
                if free > 0 {
                    // In messages: a packed one carries up to tasks_per_message tasks (the last may wait a little
                    // for a slot, its visibility extended).
                    return free.div_ceil(per_message);
                }
                // Never by taking a permit (askers would hand it to each other forever): wait for a release; the
                // timeout only covers a promise that is given up without a release.
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        })
    }
}

/// One message's claim on capacity, released when it started (or was given up).
struct Promise<'a>(&'a AtomicUsize);

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
        let concurrency = self.settings.concurrency;
        let done_tx = self.done_tx.clone().expect("started");
        let db = self.store.as_ref().expect("started").pool().clone();
        let held = self.held.clone();
        let waiting = self.waiting.clone();
        let freed = self.freed.clone();
        Box::pin(async move {
            let max = shared.settings.transport.max_message_bytes;
            // Whole messages that are malformed, and bad entries of packed ones (each dead-lettered on its own).
            let mut bad = Vec::new();
            let mut bad_entries: Vec<(String, String, RpcError, Arc<Carrier>)> = Vec::new();
            let mut tasks = Vec::new();
            for m in msg.messages {
                let mut parsed = TaskRequest::parse_many(&m.body, max);
                if let [(None, Err(_))] = parsed.as_slice() {
                    let Some((_, Err(e))) = parsed.pop() else { unreachable!() };
                    bad.push((m, e));
                    continue;
                }
                let good = parsed.iter().filter(|(_, r)| r.is_ok()).count();
                let carrier = Carrier::new(&m, good);
                for (entry, r) in parsed {
                    match r {
                        Ok(req) => tasks.push((req, carrier.clone())),
                        Err(e) => bad_entries.push((m.id.clone(), entry.unwrap_or_default(), e, carrier.clone())),
                    }
                }
            }
            waiting.fetch_add(tasks.len(), Ordering::SeqCst);
            // Held from now on: their visibility is extended while they wait for a slot, not only once they run.
            held.received(tasks.iter().map(|(_, c)| c.receipt.clone()));
            let settled_now = settle_bad_entries(&shared, &bad_entries).await;
            for (req, carrier) in tasks {
                // This message no longer waits for a slot once it has one.
                let _promised = Promise(&waiting);
                // One slot at a time, so a batch larger than the pool (concurrency below 10) still runs.
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let permit = HandlerSlot { permit: Some(permit), freed: freed.clone() };
                let guard = shared.phases.outbound_work.guard();
                let run =
                    run_task(shared.clone(), db.clone(), req, carrier, permit, guard, done_tx.clone(), held.clone());
                // spawn_local: handlers run on this arbiter, outside the actor, so a handler's panic is
                // contained (caught in run_task) and never takes the pool down.
                actix_rt::spawn(run);
            }
            let running = concurrency - permits.available_permits();
            metrics().actor_in_flight.with_label_values(&["worker_pool"]).set(running as i64);
            // Dead-lettered messages may be deleted now; the others once their results are sent.
            let mut receipts = shared.dead_letter(Queue::Outbound, bad).await;
            receipts.extend(settled_now);
            Settled { receipts }
        })
    }
}

/// Dead-letters the bad entries of packed messages, each on its own. A message with tasks to run is marked failed
/// (it comes back) when one of its entries could not be dead-lettered; a message with none is returned for
/// deletion once all of its entries are in the DLQ.
async fn settle_bad_entries(shared: &Shared, bad: &[(String, String, RpcError, Arc<Carrier>)]) -> Vec<String> {
    let entries: Vec<(&str, &str, &RpcError)> = bad.iter().map(|(id, b, e, _)| (id.as_str(), b.as_str(), e)).collect();
    let sent = shared.dead_letter_bodies(Queue::Outbound, &entries).await;
    let mut whole: HashMap<&str, (bool, &Carrier)> = HashMap::new();
    for ((_, _, _, c), ok) in bad.iter().zip(sent) {
        if !ok {
            c.failed.store(true, Ordering::SeqCst);
        }
        let e = whole.entry(c.receipt.as_str()).or_insert((true, c));
        e.0 &= ok;
    }
    whole
        .into_values()
        .filter(|(ok, c)| *ok && c.remaining.load(Ordering::SeqCst) == 0)
        .map(|(_, c)| c.receipt.clone())
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Receivers on the outbound queue.
    pub pollers: usize,
    /// How often `heartbeat_at` of all running tasks is refreshed, in one statement (seconds).
    /// `reaper.stale_timeout_secs` must be at least twice this.
    pub heartbeat_interval_secs: f64,
    /// Database connections the handlers share (at most `concurrency` and `database.pool_size`); the heartbeat
    /// has its own.
    pub db_pool_size: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { concurrency: 64, pollers: 2, heartbeat_interval_secs: 30.0, db_pool_size: 16 }
    }
}
