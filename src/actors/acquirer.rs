//! Acquirer: claims due tasks in batches (TaskStore::acquire_batch) and sends them to the outbound queue; tasks
//! whose send failed are released. When idle it neither spins nor sleeps long: [`TasksDue`] wakes it (from the
//! DueListener on NOTIFY, or from this process's Persister and ResultSink), and it looks at least every
//! `acquirer.idle_wakeup_ms` for retries that became due. When an action's limits held back due tasks, it looks again
//! when that action's next rate token comes, or after `acquirer.throttle_poll_ms` for a concurrency slot (a slot
//! freed by this process's ResultSink wakes it at once).

use super::messages::TasksDue;
use super::{Shared, StopSignal};
use crate::metrics::metrics;
use crate::protocol::{self, TaskRequest};
use crate::store::{AcquiredTask, Applied, Claim, Outcome, TaskResult, TaskStore, LEASE_RENEW_SECS};
use crate::supervision::Link;
use crate::transport::Queue;
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

pub struct Acquirer {
    shared: Shared,
    settings: AcquirerSettings,
    link: Link,
    /// Wakes an idle acquire loop; set by [`TasksDue`].
    due: Arc<Notify>,
}

impl Acquirer {
    pub fn new(shared: Shared, settings: AcquirerSettings, link: Link) -> Self {
        Self { shared, settings, link, due: Arc::new(Notify::new()) }
    }
}

impl Actor for Acquirer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let loops = self.settings.concurrency.max(1);
        // Each loop and its lease keeper.
        let store = self.shared.store("acquirer", 2 * loops as u32 + 1);
        // Several loops: each acquire is a commit, and concurrent commits share the WAL flush.
        for _ in 0..loops {
            let run = acquire_loop(self.shared.clone(), self.settings.clone(), store.clone(), self.due.clone());
            ctx.spawn(run.into_actor(self).map(|_, act, ctx| {
                if !act.shared.phases.inbound.is_stopped() {
                    ctx.stop();
                }
            }));
        }
    }
}

impl Handler<TasksDue> for Acquirer {
    type Result = ();

    fn handle(&mut self, _: TasksDue, _: &mut Self::Context) {
        metrics().actor_messages.with_label_values(&["acquirer", "tasks_due"]).inc();
        self.due.notify_one();
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<super::messages::InjectPanic> for Acquirer {
    type Result = ();
    fn handle(&mut self, _: super::messages::InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in Acquirer");
    }
}

async fn acquire_loop(shared: Shared, cfg: AcquirerSettings, store: TaskStore, due: Arc<Notify>) {
    let stop = shared.phases.inbound.clone();
    let idle = Duration::from_millis(cfg.idle_wakeup_ms);
    // Back-pressure state: the outbound depth last measured, when, and the estimate since (plus what this loop
    // sent, minus the results that landed in this process: each frees a worker slot that takes the next message).
    let mut depth_checked = Instant::now() - Duration::from_secs(10);
    let mut depth_known: u64 = 0;
    let mut landed = shared.completions.subscribe();
    let mut error_delay = Duration::from_millis(100);
    // Counted in the inbound phase while it runs: shutdown waits until no acquire or send is in flight.
    let _alive = shared.phases.inbound_work.guard();
    let durable = shared.transport.kind() != "memory";
    let Some(lease) = open_lease(&store, &stop, !durable).await else { return };
    // The last batch that reached the outbound queue (or was released), renewed with the lease. On the in-process
    // transport the queue dies with this process: no batch ever counts as sent, so a dead process's unstarted
    // claims all come back.
    let sent = Arc::new(AtomicI64::new(0));
    let keeper = actix_rt::spawn(renew_lease(store.clone(), lease, sent.clone()));
    let mut batch_no: i64 = 0;
    // Claim only what the workers can start soon: a batch when the queue has room for it, refilled as results land.
    let want =
        if cfg.max_outbound_depth > 0 { cfg.batch_size.min(cfg.max_outbound_depth as i64) } else { cfg.batch_size };
    while !stop.is_stopped() {
        depth_known = depth_known.saturating_sub(drain_landed(&mut landed));
        if cfg.max_outbound_depth > 0 {
            if depth_checked.elapsed() >= Duration::from_secs(1) {
                depth_checked = Instant::now();
                match shared.transport.depth(Queue::Outbound).await {
                    Ok(depth) => depth_known = depth,
                    Err(e) => {
                        // Unknown: acquire on (the depth is a brake, not a fence), measure again in a second.
                        tracing::debug!(error = %e, "outbound depth unavailable");
                        depth_known = 0;
                    }
                }
            }
            if depth_known + want as u64 > cfg.max_outbound_depth {
                // No room for a batch: wait for results to land (or measure again in a second).
                let wait = Duration::from_secs(1).saturating_sub(depth_checked.elapsed());
                tokio::select! {
                    r = landed.recv() => depth_known = depth_known.saturating_sub(landed_count(r)),
                    _ = tokio::time::sleep(wait) => {},
                    _ = stop.stopped() => {}
                }
                continue;
            }
        }
        batch_no += 1;
        let claim = Claim { lease, batch: batch_no, sent_through: sent.load(Ordering::SeqCst) };
        let (tasks, throttled) = match store.acquire_claimed(want, Some(claim)).await {
            Ok(a) => {
                error_delay = Duration::from_millis(100);
                crate::guard::faults::report(&a.faults);
                (a.tasks, a.throttled)
            }
            Err(e) => {
                tracing::error!(error = %e, "acquire_batch failed");
                tokio::select! { _ = tokio::time::sleep(error_delay) => {}, _ = stop.stopped() => {} }
                error_delay = (error_delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let full = tasks.len() as i64 == want;
        if !tasks.is_empty() {
            metrics().tasks_acquired.inc_by(tasks.len() as u64);
            for t in &tasks {
                metrics().submit_to_acquire.observe(t.wait_seconds);
            }
            let bodies: Vec<String> = tasks
                .iter()
                .map(|t| {
                    TaskRequest {
                        id: t.id,
                        attempt: t.attempt,
                        action: t.action.clone(),
                        payload: t.payload.clone(),
                        timeout_secs: t.timeout_secs,
                        deadline: t.deadline,
                    }
                    .to_body()
                })
                .collect();
            let too_large = fail_too_large(&shared, &store, &tasks, &bodies).await;
            let sent = send_packed(&shared, &bodies, &too_large).await;
            let failed: Vec<(i64, i32)> =
                tasks.iter().zip(&sent).filter(|(_, r)| r.is_err()).map(|(t, _)| (t.id, t.attempt)).collect();
            metrics().tasks_sent.inc_by((tasks.len() - failed.len()) as u64);
            depth_known += (tasks.len() - failed.len()) as u64;
            if !failed.is_empty() {
                tracing::warn!(failed = failed.len(), error = ?sent.iter().find_map(|r| r.as_ref().err()), "outbound send failed; releasing");
                match store.release(&failed).await {
                    Ok(n) => metrics().tasks_released.inc_by(n as u64),
                    // Left ACQUIRED: the StaleReaper rescues them after the stale timeout.
                    Err(e) => {
                        tracing::error!(error = %e, "release failed; the StaleReaper will rescue these tasks")
                    }
                }
            }
        }
        if durable {
            sent.store(batch_no, Ordering::SeqCst);
        }
        // Held back by an action's limits: look again when its next token comes, or soon for a free slot.
        let mut wait = idle;
        for t in &throttled {
            metrics().acquire_throttled.with_label_values(&[t.action.as_str()]).inc();
            let next = if t.retry_after_secs > 0.0 {
                Duration::from_secs_f64(t.retry_after_secs.min(3600.0))
            } else {
                Duration::from_millis(cfg.throttle_poll_ms)
            };
            wait = wait.min(next.max(Duration::from_millis(5)));
        }
        if !full {
            tokio::select! {
                _ = due.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.stopped() => {}
            }
        }
    }
    keeper.abort();
    tracing::debug!("acquirer stopped");
}

/// Opens this loop's lease, trying again (with backoff) while the database is unavailable. None: stopping.
async fn open_lease(store: &TaskStore, stop: &StopSignal, in_process: bool) -> Option<i64> {
    let mut delay = Duration::from_millis(100);
    while !stop.is_stopped() {
        match store.open_lease(in_process).await {
            Ok(id) => return Some(id),
            Err(e) => tracing::error!(error = %e, "opening the acquirer lease failed"),
        }
        tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = stop.stopped() => {} }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    None
}

/// Renews the lease every [`LEASE_RENEW_SECS`] with the last batch sent, until aborted.
async fn renew_lease(store: TaskStore, lease: i64, sent: Arc<AtomicI64>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(LEASE_RENEW_SECS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store.renew_leases(&[(lease, sent.load(Ordering::SeqCst))]).await {
            tracing::warn!(error = %e, lease, "renewing the acquirer lease failed");
        }
    }
}

/// How many results landed in this process since the last call (a lagging receiver counts what it missed).
fn drain_landed(landed: &mut broadcast::Receiver<Applied>) -> u64 {
    let mut n = 0;
    loop {
        match landed.try_recv() {
            Ok(_) => n += 1,
            Err(broadcast::error::TryRecvError::Lagged(k)) => n += k,
            Err(_) => return n,
        }
    }
}

fn landed_count(r: Result<Applied, broadcast::error::RecvError>) -> u64 {
    match r {
        Ok(_) => 1,
        Err(broadcast::error::RecvError::Lagged(k)) => k,
        Err(broadcast::error::RecvError::Closed) => 0,
    }
}

/// Tasks whose message would exceed `transport.max_message_bytes` (a workflow stage whose parents' results pile up
/// in its payload) are not sent: their attempt fails with [`protocol::TOO_LARGE_ERROR`] in one statement, so they
/// retry with backoff and end CRITICAL_ERROR instead of looping through the transport. Returns their indexes.
async fn fail_too_large(shared: &Shared, store: &TaskStore, tasks: &[AcquiredTask], bodies: &[String]) -> Vec<usize> {
    let max = shared.settings.transport.max_message_bytes;
    let over: Vec<usize> = (0..bodies.len()).filter(|&i| bodies[i].len() > max).collect();
    if over.is_empty() {
        return over;
    }
    let results: Vec<TaskResult> = over
        .iter()
        .map(|&i| TaskResult {
            id: tasks[i].id,
            attempt: tasks[i].attempt,
            outcome: Outcome::Failure(protocol::too_large("task message", bodies[i].len(), max)),
        })
        .collect();
    tracing::warn!(tasks = ?results.iter().map(|r| r.id).collect::<Vec<_>>(), limit = max, "task messages too large; their attempts fail");
    metrics().items_refused.with_label_values(&["acquirer_too_large"]).inc_by(over.len() as u64);
    match store.complete_many(&results).await {
        Ok(_) => shared.tasks_due(),
        // Left ACQUIRED: the StaleReaper rescues them, and the next attempt fails here again.
        Err(e) => tracing::error!(error = %e, "recording too-large task messages failed"),
    }
    over
}

/// Sends the bodies not in `skip`, packed `transport.tasks_per_message` to a message; one result per body (a
/// body shares its message's fate). The skipped ones count as handled (never released).
async fn send_packed(shared: &Shared, bodies: &[String], skip: &[usize]) -> Vec<Result<(), String>> {
    let fitting: Vec<usize> = (0..bodies.len()).filter(|i| !skip.contains(i)).collect();
    let to_send: Vec<String> = fitting.iter().map(|&i| bodies[i].clone()).collect();
    let t = &shared.settings.transport;
    let packed = protocol::pack(&to_send, t.tasks_per_message, t.max_message_bytes);
    let messages: Vec<String> = packed.iter().map(|(m, _)| m.clone()).collect();
    if messages.is_empty() {
        return vec![Ok(()); bodies.len()];
    }
    let sent = match shared.transport.send(Queue::Outbound, &messages).await {
        Ok(r) => r,
        Err(e) => messages.iter().map(|_| Err(e.to_string())).collect(),
    };
    let mut out: Vec<Result<(), String>> = vec![Ok(()); bodies.len()];
    for ((_, ix), r) in packed.iter().zip(sent) {
        for &j in ix {
            out[fitting[j]] = r.clone();
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AcquirerSettings {
    /// Tasks claimed per acquire_batch.
    pub batch_size: i64,
    /// acquire_batch calls in flight at once (each is a commit; concurrent ones do not wait for each other).
    pub concurrency: usize,
    /// Wake-up when no notification came (ms): retries that became due are found at least this often.
    pub idle_wakeup_ms: u64,
    /// Claim ahead at most this many messages in the outbound queue, not yet received by a worker (0: no limit):
    /// the next batch is claimed when it fits, as results land.
    pub max_outbound_depth: u64,
    /// Look again this soon (ms) when an action at its max_concurrency holds back due tasks (a slot frees when one
    /// of its running tasks ends, possibly in another process).
    pub throttle_poll_ms: u64,
}

impl Default for AcquirerSettings {
    fn default() -> Self {
        Self { batch_size: 200, concurrency: 2, idle_wakeup_ms: 1_000, max_outbound_depth: 400, throttle_poll_ms: 100 }
    }
}
