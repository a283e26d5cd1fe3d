//! The result sender: finished tasks' results sent in batches (packed to `transport.tasks_per_message`), then
//! their outbound messages deleted (or given back when a result did not go out).

use super::held::HeldRef;
use crate::actors::{Shared, TrackGuard};
use crate::protocol;
use crate::transport::{Message as QueueMessage, Queue, MAX_BATCH};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Finished tasks waiting for the result sender at most; beyond that, finishing handlers wait.
pub(super) const DONE_CAPACITY: usize = MAX_BATCH * 10;

/// An outbound message being worked on: deleted once each of its tasks is done and every result went out, given
/// back for a retry if one did not.
pub(super) struct Carrier {
    pub(super) receipt: String,
    receive_count: u32,
    /// Its tasks not yet done.
    pub(super) remaining: AtomicUsize,
    /// A result (or a dead-lettered entry) did not go out: the message must come back.
    pub(super) failed: AtomicBool,
}

impl Carrier {
    pub(super) fn new(m: &QueueMessage, tasks: usize) -> Arc<Carrier> {
        Arc::new(Carrier {
            receipt: m.receipt.clone(),
            receive_count: m.receive_count,
            remaining: AtomicUsize::new(tasks),
            failed: AtomicBool::new(false),
        })
    }

    /// One of its tasks is done (`sent`: its result, if any, went out). True when it was the last one.
    pub(super) fn task_done(&self, sent: bool) -> bool {
        if !sent {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.remaining.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

/// A finished task waiting for its result to be sent and its outbound message deleted.
pub(super) struct Done {
    /// None: no result to send (its task was cancelled or is no longer this attempt's).
    pub(super) body: Option<String>,
    pub(super) carrier: Arc<Carrier>,
    pub(super) _guard: TrackGuard,
}

/// Sends results in batches (packed `transport.tasks_per_message` to a message), then deletes the outbound
/// messages all of whose tasks' results went out; a message one of whose results did not go out is given back to
/// come again soon (its tasks run again; their duplicate results are stale).
pub(super) async fn send_results(shared: Shared, mut rx: mpsc::Receiver<Done>, held: HeldRef) {
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
