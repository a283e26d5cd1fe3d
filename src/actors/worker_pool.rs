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

use super::messages::{Capacity, Received, Settled};
use super::{Shared, TrackGuard};
use crate::handlers::{HandlerContext, HandlerError};
use crate::metrics::metrics;
use crate::protocol::{self, RpcError, TaskRequest};
use crate::store::{Outcome, TaskResult, TaskStore};
use crate::supervision::Link;
use crate::transport::{Message as QueueMessage, Queue, MAX_BATCH};
use actix::prelude::*;
use futures::future::{AbortHandle, Abortable, Aborted};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// Handler starts that arrive within this window are marked in one statement.
pub const START_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Finished tasks waiting for the result sender at most; beyond that, finishing handlers wait.
const DONE_CAPACITY: usize = MAX_BATCH * 10;

/// A cancelled (id, attempt) whose message has not come is remembered this long (it is never started).
const CANCELLED_MEMORY: Duration = Duration::from_secs(15 * 60);

/// The outbound messages this pool holds, for the heartbeats: receipt -> the (task id, attempt) of each of its
/// tasks whose handler started (a message carries several with `transport.tasks_per_message`). A message is held
/// from its receipt until the results of all its tasks were sent (or it was given up).
#[derive(Default)]
struct Held {
    messages: HashMap<String, Vec<(i64, i32)>>,
    /// Handler starts not yet marked in the database.
    started: Vec<(i64, i32)>,
    /// Running handlers, to drop one when its task is cancelled.
    running: HashMap<(i64, i32), AbortHandle>,
    /// Cancelled tasks not running here (yet): if their message comes, they are not started.
    cancelled: HashMap<(i64, i32), Instant>,
}

#[derive(Clone, Default)]
struct HeldRef {
    inner: Arc<Mutex<Held>>,
    /// Wakes the database heartbeat when a handler started.
    started: Arc<Notify>,
}

impl HeldRef {
    fn received(&self, receipts: impl IntoIterator<Item = String>) {
        let mut h = self.inner.lock().unwrap();
        for r in receipts {
            h.messages.entry(r).or_default();
        }
    }

    fn handler_started(&self, receipt: &str, task: (i64, i32)) {
        let mut h = self.inner.lock().unwrap();
        h.messages.entry(receipt.to_owned()).or_default().push(task);
        h.started.push(task);
        drop(h);
        self.started.notify_one();
    }

    fn release(&self, receipts: impl IntoIterator<Item = String>) {
        let mut h = self.inner.lock().unwrap();
        for r in receipts {
            h.messages.remove(&r);
        }
    }

    fn receipts(&self) -> Vec<String> {
        self.inner.lock().unwrap().messages.keys().cloned().collect()
    }

    fn running(&self) -> Vec<(i64, i32)> {
        let mut h = self.inner.lock().unwrap();
        h.started.clear();
        h.messages.values().flatten().copied().collect()
    }

    fn take_started(&self) -> Vec<(i64, i32)> {
        std::mem::take(&mut self.inner.lock().unwrap().started)
    }

    /// Registers a handler about to start; false if its task was cancelled (it must not start).
    fn register(&self, task: (i64, i32), abort: AbortHandle) -> bool {
        let mut h = self.inner.lock().unwrap();
        if h.cancelled.remove(&task).is_some() {
            return false;
        }
        h.running.insert(task, abort);
        true
    }

    fn unregister(&self, task: (i64, i32)) {
        self.inner.lock().unwrap().running.remove(&task);
    }

    /// Drops the handlers of `tasks` that run here and remembers the others, so they never start. Returns how many
    /// handlers it dropped.
    fn cancel(&self, tasks: &[(i64, i32)]) -> usize {
        let mut h = self.inner.lock().unwrap();
        let now = Instant::now();
        if h.cancelled.len() > 10_000 {
            h.cancelled.retain(|_, at| now.duration_since(*at) < CANCELLED_MEMORY);
        }
        let mut dropped = 0;
        for t in tasks {
            match h.running.remove(t) {
                Some(abort) => {
                    abort.abort();
                    dropped += 1;
                }
                None => {
                    h.cancelled.insert(*t, now);
                }
            }
        }
        dropped
    }
}

/// The (id, attempt) pairs of a `tasks_cancel` payload: "id:attempt,id:attempt,...". Malformed pairs are skipped.
fn parse_cancelled(payload: &str) -> Vec<(i64, i32)> {
    payload
        .split(',')
        .filter_map(|pair| {
            let (id, attempt) = pair.split_once(':')?;
            Some((id.trim().parse().ok()?, attempt.trim().parse().ok()?))
        })
        .collect()
}

/// An outbound message being worked on: deleted once each of its tasks is done and every result went out, given
/// back for a retry if one did not.
struct Carrier {
    receipt: String,
    receive_count: u32,
    /// Its tasks not yet done.
    remaining: AtomicUsize,
    /// A result (or a dead-lettered entry) did not go out: the message must come back.
    failed: AtomicBool,
}

impl Carrier {
    fn new(m: &QueueMessage, tasks: usize) -> Arc<Carrier> {
        Arc::new(Carrier {
            receipt: m.receipt.clone(),
            receive_count: m.receive_count,
            remaining: AtomicUsize::new(tasks),
            failed: AtomicBool::new(false),
        })
    }

    /// One of its tasks is done (`sent`: its result, if any, went out). True when it was the last one.
    fn task_done(&self, sent: bool) -> bool {
        if !sent {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.remaining.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

/// A finished task waiting for its result to be sent and its outbound message deleted.
struct Done {
    /// None: no result to send (its task was cancelled or is no longer this attempt's).
    body: Option<String>,
    carrier: Arc<Carrier>,
    _guard: TrackGuard,
}

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
        let pool_size = self.settings.concurrency.min(16) as u32;
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

/// A handler slot: its semaphore permit, and on release a wake-up for [`Capacity`] askers.
struct HandlerSlot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for HandlerSlot {
    fn drop(&mut self) {
        drop(self.permit.take()); // released first, so a woken asker sees it free
        self.freed.notify_waiters();
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

#[allow(clippy::too_many_arguments)]
async fn run_task(
    shared: Shared,
    db: crate::db::DbPool,
    mut req: TaskRequest,
    carrier: Arc<Carrier>,
    permit: HandlerSlot,
    guard: TrackGuard,
    done_tx: mpsc::Sender<Done>,
    held: HeldRef,
) {
    let mut ctx = HandlerContext::new(req.id, req.attempt, db);
    ctx.take_meta(&mut req.payload);
    let started = Instant::now();
    let key = (req.id, req.attempt);
    let outcome = match shared.handlers.get(&req.action) {
        None => Some(Err(HandlerError::with_code(
            protocol::METHOD_NOT_FOUND,
            format!("no handler for action {:?}", req.action),
        ))),
        Some(handler) => {
            let (abort, registration) = AbortHandle::new_pair();
            if held.register(key, abort) {
                held.handler_started(&carrier.receipt, key);
                let run =
                    Abortable::new(AssertUnwindSafe(handler.handle(&ctx, &req.payload)).catch_unwind(), registration);
                let ended = match req.timeout_secs {
                    None => Ok(run.await),
                    Some(t) => tokio::time::timeout(Duration::from_secs_f64(t), run).await.map_err(|_| t),
                };
                held.unregister(key);
                match ended {
                    Err(t) => {
                        metrics().tasks_timed_out.with_label_values(&[req.action.as_str()]).inc();
                        Some(Err(HandlerError::with_code(
                            protocol::TIMEOUT_ERROR,
                            format!("timeout: the handler ran longer than {t} s (timeout_secs)"),
                        )))
                    }
                    // Cancelled: dropped by a tasks_cancel notification or a lost heartbeat.
                    Ok(Err(Aborted)) => None,
                    Ok(Ok(r)) => Some(r.unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(HandlerError::new(format!("handler panicked: {what}")))
                    })),
                }
            } else {
                // Cancelled before its message came: never started.
                metrics().handlers_cancelled.inc();
                None
            }
        }
    };
    let body = outcome.map(|outcome| {
        metrics().handler_duration.with_label_values(&[req.action.as_str()]).observe(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            Ok(v) => Outcome::Success(v),
            Err(e) => {
                tracing::info!(task_id = req.id, attempt = req.attempt, action = %req.action, error = %e, "handler failed");
                Outcome::Failure(e.to_value())
            }
        };
        let body = protocol::result_body(&TaskResult { id: req.id, attempt: req.attempt, outcome });
        let max = shared.settings.transport.max_message_bytes;
        if body.len() <= max {
            return body;
        }
        // The results queue would refuse it (or the ResultSink dead-letter it): the attempt fails visibly instead.
        tracing::warn!(task_id = req.id, attempt = req.attempt, action = %req.action, size = body.len(), "result too large");
        metrics().items_refused.with_label_values(&["worker_result_too_large"]).inc();
        let outcome = Outcome::Failure(protocol::too_large("result", body.len(), max));
        protocol::result_body(&TaskResult { id: req.id, attempt: req.attempt, outcome })
    });
    if body.is_none() {
        tracing::info!(task_id = req.id, attempt = req.attempt, action = %req.action, "handler dropped: task cancelled");
    }
    // Bounded: when the result sender is behind, this handler keeps its slot until its result is queued.
    if let Err(e) = done_tx.send(Done { body, carrier, _guard: guard }).await {
        // The pool stopped: its message comes back after its visibility timeout.
        held.release([e.0.carrier.receipt.clone()]);
    }
    drop(permit);
}

/// Every third of the visibility timeout, extends the visibility of every message this pool holds (waiting for a
/// slot or running) by a full timeout, in one call (the transport batches it by 10). Never returns.
async fn visibility_heartbeat(shared: Shared, held: HeldRef) {
    let vis = Duration::from_secs(shared.settings.transport.visibility_timeout_secs as u64);
    let period = vis / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let receipts = held.receipts();
        if receipts.is_empty() {
            continue;
        }
        if let Err(e) = shared.transport.change_visibility(Queue::Outbound, &receipts, vis).await {
            tracing::warn!(error = %e, messages = receipts.len(), "visibility heartbeat failed");
        }
    }
}

/// Marks handler starts (batched over [`START_BATCH_WINDOW`]) and, every `every`, refreshes `heartbeat_at` of
/// all running tasks, each in one statement. Never returns.
async fn database_heartbeat(store: TaskStore, held: HeldRef, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tasks = tokio::select! {
            _ = tick.tick() => held.running(),
            _ = held.started.notified() => {
                tokio::time::sleep(START_BATCH_WINDOW).await;
                held.take_started()
            }
        };
        if tasks.is_empty() {
            continue;
        }
        match store.heartbeat_lost(&tasks).await {
            Ok(lost) if !lost.is_empty() => {
                // Cancelled (a missed notification), rescued or released: their results would be stale.
                let dropped = held.cancel(&lost);
                metrics().handlers_cancelled.inc_by(dropped as u64);
                tracing::debug!(
                    sent = tasks.len(),
                    lost = lost.len(),
                    dropped,
                    "heartbeat: some tasks are no longer ours"
                )
            }
            Ok(_) => {}
            // The next tick tries again; the stale timeout is at least two intervals.
            Err(e) => tracing::warn!(error = %e, tasks = tasks.len(), "database heartbeat failed"),
        }
    }
}

/// Sends results in batches (packed `transport.tasks_per_message` to a message), then deletes the outbound
/// messages all of whose tasks' results went out; a message one of whose results did not go out is given back to
/// come again soon (its tasks run again; their duplicate results are stale).
async fn send_results(shared: Shared, mut rx: mpsc::Receiver<Done>, held: HeldRef) {
    let vis = Duration::from_secs(shared.settings.transport.visibility_timeout_secs as u64);
    let per_message = shared.settings.transport.tasks_per_message.max(1);
    let max_bytes = shared.settings.transport.max_message_bytes;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH * 10 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let with_result: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].body.is_some()).collect();
        let bodies: Vec<String> = with_result.iter().filter_map(|&i| batch[i].body.clone()).collect();
        let packed = protocol::pack(&bodies, per_message, max_bytes);
        let messages: Vec<String> = packed.iter().map(|(m, _)| m.clone()).collect();
        let sent = if messages.is_empty() {
            Vec::new()
        } else {
            match shared.transport.send(Queue::Results, &messages).await {
                Ok(r) => r,
                Err(e) => messages.iter().map(|_| Err(e.to_string())).collect(),
            }
        };
        let mut ok = vec![true; batch.len()];
        for ((_, ix), r) in packed.iter().zip(&sent) {
            if r.is_err() {
                for &b in ix {
                    ok[with_result[b]] = false;
                }
            }
        }
        let failed = ok.iter().filter(|o| !**o).count();
        if failed > 0 {
            tracing::warn!(failed, "result send failed; those tasks will run again");
        }
        // Cancelled tasks have nothing to send: they are done with.
        let (mut delete, mut give_back) = (Vec::new(), Vec::new());
        for (d, ok) in batch.iter().zip(&ok) {
            let c = &d.carrier;
            if c.task_done(*ok) {
                if c.failed.load(Ordering::SeqCst) {
                    give_back.push((c.receipt.clone(), c.receive_count));
                } else {
                    delete.push(c.receipt.clone());
                }
            }
        }
        if !give_back.is_empty() {
            // Soon, not after a whole visibility timeout (on RabbitMQ they would hold the prefetch window).
            crate::transport::give_back(shared.transport.as_ref(), Queue::Outbound, &give_back, vis).await;
        }
        if !delete.is_empty() {
            if let Err(e) = shared.transport.delete(Queue::Outbound, &delete).await {
                tracing::warn!(error = %e, "outbound delete failed; the tasks' results will be stale duplicates");
            }
        }
        // No longer held: deleted, or given back to come again soon.
        held.release(delete.into_iter().chain(give_back.into_iter().map(|(r, _)| r)));
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
    /// How often `heartbeat_at` of all running tasks is refreshed, in one statement (seconds).
    /// `reaper.stale_timeout_secs` must be at least twice this.
    pub heartbeat_interval_secs: f64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { concurrency: 64, pollers: 2, heartbeat_interval_secs: 30.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_payloads_parse_and_skip_malformed_pairs() {
        assert_eq!(parse_cancelled("12:1,13:4"), vec![(12, 1), (13, 4)]);
        assert_eq!(parse_cancelled("12:1,x:2,14,15:3"), vec![(12, 1), (15, 3)]);
        assert!(parse_cancelled("").is_empty());
    }

    #[test]
    fn a_cancel_drops_a_running_handler_and_keeps_a_later_one_from_starting() {
        let held = HeldRef::default();
        let (running, registration) = AbortHandle::new_pair();
        assert!(held.register((1, 1), running));
        let run = Abortable::new(std::future::pending::<()>(), registration);
        assert_eq!(held.cancel(&[(1, 1), (2, 3)]), 1, "one handler ran here");
        assert!(futures::executor::block_on(run).is_err(), "the running handler was dropped");
        // (2, 3) was cancelled before its message came: it never starts; another attempt of task 2 does.
        assert!(!held.register((2, 3), AbortHandle::new_pair().0));
        assert!(held.register((2, 4), AbortHandle::new_pair().0));
    }
}
