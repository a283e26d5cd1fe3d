//! Dead-lettering: malformed messages and entries moved to their queue's DLQ at once, each logged with its
//! message id and counted by reason.

use super::shared::Shared;
use crate::metrics::metrics;
use crate::protocol::RpcError;
use crate::transport::{Message as QueueMessage, Queue};

impl Shared {
    /// Moves malformed messages to the queue's DLQ at once; returns the receipts that may now be deleted.
    pub async fn dead_letter(&self, queue: Queue, bad: Vec<(QueueMessage, RpcError)>) -> Vec<String> {
        let entries: Vec<(&str, &str, &RpcError)> =
            bad.iter().map(|(m, e)| (m.id.as_str(), m.body.as_str(), e)).collect();
        let sent = self.dead_letter_bodies(queue, &entries).await;
        bad.into_iter().zip(sent).filter(|(_, ok)| *ok).map(|((m, _), _)| m.receipt).collect()
    }

    /// Sends bodies (whole messages, or single entries of a JSON-RPC batch) to the queue's DLQ, each logged with
    /// the id of the message it came from and counted by reason; true for each one the DLQ accepted.
    pub async fn dead_letter_bodies(&self, queue: Queue, bad: &[(&str, &str, &RpcError)]) -> Vec<bool> {
        if bad.is_empty() {
            return Vec::new();
        }
        let dlq = self.queue_label(queue.dlq());
        for (id, _, e) in bad {
            tracing::warn!(queue = %self.queue_label(queue), message_id = %id, code = e.code, error = %e.message,
                "malformed message moved to the dead-letter queue");
            metrics().messages_dead_lettered.with_label_values(&[dlq.as_str(), e.reason()]).inc();
        }
        let bodies: Vec<String> = bad.iter().map(|(_, b, _)| b.to_string()).collect();
        match self.transport.send(queue.dlq(), &bodies).await {
            Ok(res) => res.iter().map(|r| r.is_ok()).collect(),
            Err(e) => {
                tracing::error!(error = %e, "dead-letter send failed; the messages will be redelivered");
                vec![false; bad.len()]
            }
        }
    }
}
