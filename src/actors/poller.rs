//! QueuePoller: long-polls one queue and hands each batch to its stage as [`Received`], then deletes what the
//! stage answers as [`Settled`] (ack after commit). Works on any `Transport`. On shutdown it drains its queue
//! (receives until one comes back empty) and stops; the grace deadline stops it regardless.

use super::breaker::Gate;
use super::messages::{Capacity, Received, Settled};
use super::{Shared, Slot};
use crate::metrics::metrics;
use crate::supervision::Link;
use crate::transport::{Message as QueueMessage, Queue, MAX_BATCH};
use actix::prelude::*;
use std::time::Duration;

pub struct QueuePoller {
    shared: Shared,
    link: Link,
    queue: Queue,
    stage: Slot<Received>,
    capacity: Slot<Capacity>,
}

impl QueuePoller {
    /// `stage` and `capacity` both reach the stage's current instance.
    pub fn new(shared: Shared, link: Link, queue: Queue, stage: Slot<Received>, capacity: Slot<Capacity>) -> Self {
        Self { shared, link, queue, stage, capacity }
    }
}

impl Actor for QueuePoller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let fut = poll_loop(self.shared.clone(), self.queue, self.stage.clone(), self.capacity.clone());
        ctx.spawn(fut.into_actor(self).map(|_, act, ctx| {
            if !act.shared.phases.signal(act.queue).is_stopped() {
                ctx.stop(); // ended without shutdown: its supervisor restarts it
            }
        }));
    }
}

/// Hands a batch to the stage's current instance and waits for it to settle. A stage that died meanwhile (its
/// supervisor restarts it) gets the same batch again once its new instance is up: redelivering a batch is
/// harmless, and waiting for a visibility timeout would only delay it.
async fn hand_on(shared: &Shared, queue: Queue, stage: &Slot<Received>, messages: Vec<QueueMessage>) -> Settled {
    let hard = &shared.phases.hard;
    loop {
        if let Some(recipient) = stage.get() {
            match recipient.send(Received { queue, messages: messages.clone() }).await {
                Ok(settled) => return settled,
                Err(e) => {
                    tracing::warn!(%queue, error = %e, "stage ended while handling a batch; handing it to its next instance")
                }
            }
        }
        if hard.is_stopped() {
            return Settled::default();
        }
        tokio::select! { _ = tokio::time::sleep(Duration::from_millis(20)) => {}, _ = hard.stopped() => {} }
    }
}

/// How many messages the stage can take now (a worker only as many as it has free handler slots, so nothing waits
/// behind a long task while its visibility runs out); waits while it can take none.
async fn demand(capacity: &Slot<Capacity>) -> usize {
    match capacity.get() {
        Some(r) => r.send(Capacity).await.unwrap_or(MAX_BATCH).clamp(1, MAX_BATCH),
        None => MAX_BATCH, // being restarted: `hand_on` waits for the next instance
    }
}

async fn poll_loop(shared: Shared, queue: Queue, stage: Slot<Received>, capacity: Slot<Capacity>) {
    let label = shared.queue_label(queue);
    let stop = shared.phases.signal(queue).clone();
    let hard = shared.phases.hard.clone();
    let wait = Duration::from_secs(shared.settings.transport.wait_time_secs as u64);
    let mut error_delay = Duration::from_millis(100);
    let in_flight_max = shared.settings.transport.in_flight_batches.max(1);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight_max));
    let begun = shared.phases.begun.clone();
    // On shutdown, new work is left for other processes at once: submissions always, tasks unless this process's
    // own Acquirer sent them (then it finishes them, so none is left ACQUIRED). Results are always drained.
    let drains = match queue {
        Queue::Inbound | Queue::InboundDlq => false,
        Queue::Outbound | Queue::OutboundDlq => shared.phases.drain_outbound,
        Queue::Results | Queue::ResultsDlq => true,
    };
    let gated = matches!(queue, Queue::Inbound | Queue::Results);
    let cancel_safe = shared.transport.cancel_safe_receive();
    // A draining poller is counted in its phase for as long as it runs, so shutdown moves on only once its queue is
    // drained; one that stops taking work is not waited for (a long poll in flight ends at the hard stop at the
    // latest), only the batches it handed on are.
    let _alive = drains.then(|| shared.phases.tracker(queue).guard());
    loop {
        if hard.is_stopped() || (!drains && stop.is_stopped()) {
            break;
        }
        // While the database takes no commits, receiving would only count towards the queue's maxReceiveCount.
        if gated {
            match shared.breaker.gate() {
                Gate::Receive => {}
                Gate::Wait(w) => {
                    tokio::select! { _ = tokio::time::sleep(w.min(Duration::from_secs(1))) => {}, _ = hard.stopped() => break }
                    continue;
                }
                Gate::Probe => {
                    match crate::db::probe(&shared.settings.database).await {
                        Ok(()) => shared.breaker.success(),
                        Err(e) => shared.breaker.probe_failed(&e),
                    }
                    continue;
                }
            }
        }
        // Sampled before the receive: an empty answer after our phase's stop means the queue is drained.
        let drained_if_empty = stop.is_stopped();
        let shutting_down = begun.is_stopped();
        let max = demand(&capacity).await;
        // A receive in flight is never cancelled on shutdown (its messages would stay invisible until their
        // visibility timeout); once shutdown has begun, receives are short polls.
        let res = tokio::select! {
            r = shared.transport.receive(queue, max, if shutting_down { Duration::ZERO } else { wait }) => r,
            // Where that is safe, shutdown ends a long poll at once (then short polls follow).
            _ = begun.stopped(), if !shutting_down && cancel_safe => continue,
            _ = hard.stopped() => break,
        };
        let messages = match res {
            Ok(m) => {
                error_delay = Duration::from_millis(100);
                m
            }
            Err(e) => {
                tracing::warn!(queue = %label, error = %e, "receive failed; retrying");
                tokio::select! { _ = tokio::time::sleep(error_delay) => {}, _ = hard.stopped() => break }
                error_delay = (error_delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if messages.is_empty() {
            if drained_if_empty {
                break;
            }
            if shutting_down || wait < Duration::from_secs(1) {
                // Waiting for our phase, or short polls configured: poll gently instead of spinning.
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(50)) => {}, _ = hard.stopped() => break }
            }
            continue;
        }
        // Pipelined: up to `in_flight_batches` batches are handed on before the poller waits for their commits, so
        // a stage's group commit sees many batches at once.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let guard = shared.phases.tracker(queue).guard();
        metrics().messages_received.with_label_values(&[label.as_str()]).inc_by(messages.len() as u64);
        let (shared, label, stage) = (shared.clone(), label.clone(), stage.clone());
        // A commit stage answers for every message at once: what it did not settle failed transiently.
        let handed: Vec<(String, u32)> =
            if gated { messages.iter().map(|m| (m.receipt.clone(), m.receive_count)).collect() } else { Vec::new() };
        actix_rt::spawn(async move {
            let settled = hand_on(&shared, queue, &stage, messages).await;
            let unsettled: Vec<(String, u32)> =
                handed.into_iter().filter(|(r, _)| !settled.receipts.contains(r)).collect();
            if !unsettled.is_empty() {
                let visibility = Duration::from_secs(shared.settings.transport.visibility_timeout_secs as u64);
                crate::transport::give_back(shared.transport.as_ref(), queue, &unsettled, visibility).await;
            }
            if !settled.receipts.is_empty() {
                match shared.transport.delete(queue, &settled.receipts).await {
                    Ok(failed) if failed.is_empty() => {}
                    Ok(failed) => {
                        tracing::warn!(queue = %label, failed = failed.len(), "some deletes failed; redelivery is harmless")
                    }
                    Err(e) => tracing::warn!(queue = %label, error = %e, "delete failed; redelivery is harmless"),
                }
            }
            drop((permit, guard));
        });
    }
    // Wait for the batches still being committed before reporting the poller stopped.
    let _ = in_flight.acquire_many(in_flight_max as u32).await;
    tracing::debug!(queue = %label, "poller stopped");
}
