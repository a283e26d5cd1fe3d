//! Group commit: batches handed in by several pollers at once are processed together (one SQL statement), so the
//! stage's rate is not bound by one transaction per message batch. No artificial delay: whatever arrived while
//! the previous commit ran goes into the next one.

use crate::transport::Message as QueueMessage;
use std::collections::HashSet;
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

struct Pending {
    messages: Vec<QueueMessage>,
    reply: oneshot::Sender<Vec<String>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// Returns the handle and the loop to spawn. `process` gets the messages of one group and returns the
    /// receipts that may be deleted.
    pub fn new<F, Fut>(max_messages: usize, process: F) -> (GroupCommit, impl Future<Output = ()>)
    where
        F: Fn(Vec<QueueMessage>) -> Fut + 'static,
        Fut: Future<Output = HashSet<String>> + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let fut = async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                let mut n = group[0].messages.len();
                while n < max_messages {
                    match rx.try_recv() {
                        Ok(p) => {
                            n += p.messages.len();
                            group.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let all: Vec<QueueMessage> = group.iter().flat_map(|p| p.messages.iter().cloned()).collect();
                let done = process(all).await;
                for p in group {
                    let mine =
                        p.messages.iter().filter(|m| done.contains(&m.receipt)).map(|m| m.receipt.clone()).collect();
                    let _ = p.reply.send(mine);
                }
            }
        };
        (GroupCommit { tx }, fut)
    }

    /// Submits a batch and waits for its commit; the receipts that may be deleted come back.
    pub async fn submit(&self, messages: Vec<QueueMessage>) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { messages, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}
