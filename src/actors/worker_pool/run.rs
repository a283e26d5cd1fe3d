//! One task run: its handler in a slot of the pool, with its timeout and cancellation, its panic caught, its
//! result (or failure) made into the result message, handed on to the result sender.

use super::held::HeldRef;
use super::results::{Carrier, Done};
use crate::actors::{Shared, TrackGuard};
use crate::handlers::{HandlerContext, HandlerError};
use crate::metrics::metrics;
use crate::protocol::{self, TaskRequest};
use crate::store::{Outcome, TaskResult};
use futures::future::{AbortHandle, Abortable, Aborted};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

/// A handler slot: its semaphore permit, and on release a wake-up for [`Capacity`] askers.
pub(super) struct HandlerSlot {
    pub(super) permit: Option<OwnedSemaphorePermit>,
    pub(super) freed: Arc<Notify>,
}

impl Drop for HandlerSlot {
    fn drop(&mut self) {
        drop(self.permit.take()); // released first, so a woken asker sees it free
        self.freed.notify_waiters();
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_task(
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
