//! In-process transport with SQS semantics (visibility timeout, redelivery, redrive to the DLQ after
//! `max_receive_count` receives). For the single-binary mode and fast tests.

use super::{Message, Queue, Transport, TransportResult, MAX_BATCH};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Clone)]
struct Stored {
    id: String,
    body: String,
    receive_count: u32,
}

#[derive(Default)]
struct QueueState {
    visible: VecDeque<Stored>,
    /// receipt -> (message, visible again at)
    in_flight: HashMap<String, (Stored, Instant)>,
}

struct MemQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

/// In-process queues; clones share the same queues.
#[derive(Clone)]
pub struct MemoryTransport {
    queues: Arc<HashMap<Queue, MemQueue>>,
    visibility: Duration,
    max_receive_count: u32,
    seq: Arc<AtomicU64>,
}

impl MemoryTransport {
    pub fn new(visibility: Duration) -> Self {
        Self::with_redrive(visibility, crate::transport::sqs::MAX_RECEIVE_COUNT)
    }

    pub fn with_redrive(visibility: Duration, max_receive_count: u32) -> Self {
        let queues = Queue::ALL
            .into_iter()
            .map(|q| (q, MemQueue { state: Mutex::new(QueueState::default()), notify: Notify::new() }))
            .collect();
        Self { queues: Arc::new(queues), visibility, max_receive_count, seq: Arc::new(AtomicU64::new(0)) }
    }

    fn q(&self, queue: Queue) -> &MemQueue {
        &self.queues[&queue]
    }

    fn next_id(&self) -> String {
        self.seq.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Moves messages whose visibility expired back to the queue (or to the DLQ once received too often).
    fn requeue_expired(&self, queue: Queue, st: &mut QueueState) {
        let now = Instant::now();
        let expired: Vec<String> =
            st.in_flight.iter().filter(|(_, (_, at))| *at <= now).map(|(r, _)| r.clone()).collect();
        for r in expired {
            let (m, _) = st.in_flight.remove(&r).expect("present");
            if !queue.is_dlq() && m.receive_count >= self.max_receive_count {
                let dlq = self.q(queue.dlq());
                dlq.state.lock().unwrap().visible.push_back(Stored { receive_count: 0, ..m });
                dlq.notify.notify_waiters();
            } else {
                st.visible.push_back(m);
            }
        }
    }

    fn try_take(&self, queue: Queue, max: usize) -> (Vec<Message>, Option<Instant>) {
        let mq = self.q(queue);
        let mut st = mq.state.lock().unwrap();
        self.requeue_expired(queue, &mut st);
        let mut out = Vec::new();
        let deadline = Instant::now() + self.visibility;
        while out.len() < max {
            let Some(mut m) = st.visible.pop_front() else {
                break;
            };
            m.receive_count += 1;
            let receipt = format!("{}#{}", m.id, self.next_id());
            out.push(Message {
                id: m.id.clone(),
                receipt: receipt.clone(),
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
            st.in_flight.insert(receipt, (m, deadline));
        }
        let next_expiry = st.in_flight.values().map(|(_, at)| *at).min();
        (out, next_expiry)
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn receive(&self, queue: Queue, max: usize, wait: Duration) -> TransportResult<Vec<Message>> {
        let max = max.clamp(1, MAX_BATCH);
        let until = Instant::now() + wait;
        let mq = self.q(queue);
        loop {
            let notified = mq.notify.notified();
            let (got, next_expiry) = self.try_take(queue, max);
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Vec::new());
            }
            let wake = next_expiry.map_or(until, |e| e.min(until));
            let _ = tokio::time::timeout(wake.saturating_duration_since(now), notified).await;
        }
    }

    async fn send(&self, queue: Queue, bodies: &[String]) -> TransportResult<Vec<Result<(), String>>> {
        let mq = self.q(queue);
        {
            let mut st = mq.state.lock().unwrap();
            for b in bodies {
                st.visible.push_back(Stored { id: self.next_id(), body: b.clone(), receive_count: 0 });
            }
        }
        mq.notify.notify_waiters();
        Ok(bodies.iter().map(|_| Ok(())).collect())
    }

    async fn delete(&self, queue: Queue, receipts: &[String]) -> TransportResult<Vec<String>> {
        let mut st = self.q(queue).state.lock().unwrap();
        // Like SQS, deleting with a stale receipt is not an error: the message is simply not removed.
        for r in receipts {
            st.in_flight.remove(r);
        }
        Ok(Vec::new())
    }

    async fn change_visibility(&self, queue: Queue, receipts: &[String], timeout: Duration) -> TransportResult<()> {
        let mut st = self.q(queue).state.lock().unwrap();
        let at = Instant::now() + timeout;
        for r in receipts {
            if let Some(e) = st.in_flight.get_mut(r) {
                e.1 = at;
            }
        }
        Ok(())
    }

    async fn depth(&self, queue: Queue) -> TransportResult<u64> {
        let mq = self.q(queue);
        let mut st = mq.state.lock().unwrap();
        self.requeue_expired(queue, &mut st);
        Ok(st.visible.len() as u64)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    /// Messages are taken in the same poll that returns them: a waiting receive can be dropped safely.
    fn cancel_safe_receive(&self) -> bool {
        true
    }
}
