//! SqsPoller: long-polls one queue and hands each batch to its stage, then deletes what the stage says is
//! durable (ack after commit). Works on any `Transport`. On shutdown it drains its queue (receives until one
//! comes back empty) and stops; the grace deadline stops it regardless.

use super::{Deliver, InjectPanic, Shared, Slot};
use crate::metrics::metrics;
use crate::transport::{Queue, MAX_BATCH};
use actix::prelude::*;
use std::time::Duration;

pub struct SqsPoller {
    shared: Shared,
    queue: Queue,
    downstream: Slot<Deliver>,
}

impl SqsPoller {
    pub fn new(shared: Shared, queue: Queue, downstream: Slot<Deliver>) -> Self {
        Self { shared, queue, downstream }
    }
}

impl Actor for SqsPoller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let fut = poll_loop(self.shared.clone(), self.queue, self.downstream.clone());
        ctx.spawn(fut.into_actor(self).map(|_, act, ctx| {
            if !act.shared.phases.signal(act.queue).is_stopped() {
                ctx.stop(); // ended without shutdown: the Supervisor restarts it
            }
        }));
    }
}

impl Supervised for SqsPoller {}

impl Handler<InjectPanic> for SqsPoller {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in SqsPoller({})", self.queue);
    }
}

async fn poll_loop(shared: Shared, queue: Queue, downstream: Slot<Deliver>) {
    let label = shared.queue_label(queue);
    let stop = shared.phases.signal(queue).clone();
    let hard = shared.phases.hard.clone();
    let wait = Duration::from_secs(shared.settings.transport.wait_time_secs as u64);
    let mut error_delay = Duration::from_millis(100);
    let in_flight_max = shared.settings.transport.in_flight_batches.max(1);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight_max));
    let begun = shared.phases.begun.clone();
    // Counted in its phase for as long as it runs, so shutdown moves on only once this queue is drained.
    let _alive = shared.phases.tracker(queue).guard();
    loop {
        if hard.is_stopped() {
            break;
        }
        // Sampled before the receive: an empty answer after our phase's stop means the queue is drained.
        let drained_if_empty = stop.is_stopped();
        let shutting_down = begun.is_stopped();
        // A receive in flight is never cancelled on shutdown (its messages would stay invisible until their
        // visibility timeout); once shutdown has begun, receives are short polls.
        let res = tokio::select! {
            r = shared.transport.receive(queue, MAX_BATCH, if shutting_down { Duration::ZERO } else { wait }) => r,
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
            if shutting_down {
                // Waiting for our phase: poll gently.
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(50)) => {}, _ = hard.stopped() => break }
            }
            continue;
        }
        // Pipelined: up to `in_flight_batches` batches are handed on before the poller waits for their commits, so
        // a stage's group commit sees many batches at once.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let guard = shared.phases.tracker(queue).guard();
        metrics().messages_received.with_label_values(&[label.as_str()]).inc_by(messages.len() as u64);
        let recipient = downstream.read().unwrap().clone();
        let Some(recipient) = recipient else {
            // Stage not up (being restarted): the messages come back after their visibility timeout.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (shared, label) = (shared.clone(), label.clone());
        actix_rt::spawn(async move {
            match recipient.send(Deliver { queue, messages }).await {
                Ok(receipts) if !receipts.is_empty() => match shared.transport.delete(queue, &receipts).await {
                    Ok(failed) if failed.is_empty() => {}
                    Ok(failed) => {
                        tracing::warn!(queue = %label, failed = failed.len(), "some deletes failed; redelivery is harmless")
                    }
                    Err(e) => tracing::warn!(queue = %label, error = %e, "delete failed; redelivery is harmless"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(queue = %label, error = %e, "stage unavailable; messages will be redelivered"),
            }
            drop((permit, guard));
        });
    }
    // Wait for the batches still being committed before reporting the poller stopped.
    let _ = in_flight.acquire_many(in_flight_max as u32).await;
    tracing::debug!(queue = %label, "poller stopped");
}
