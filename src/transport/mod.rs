//! Transports: the queues that carry JSON-RPC messages between stages. Queues are transport only: any message may
//! be lost, duplicated or redelivered, and Postgres stays the source of truth.
//!
//! Semantics every implementation keeps (at-least-once, like SQS):
//! - a received message is invisible for the visibility timeout, then comes back unless deleted;
//! - `delete` and `change_visibility` take receipt handles from `receive`;
//! - batch calls report failures entry by entry.
//!
//! Kept ready for a log-based broker (Kafka): nothing above needs per-message acks from the broker. Such a
//! transport would hand out receipts carrying (partition, offset), keep settled offsets per partition, and make
//! `delete` commit each partition's offset up to the lowest one not yet settled; `change_visibility` would only
//! move its own redelivery timer (as the RabbitMQ transport does) and `receive_count` would come from a header.

pub mod memory;
pub mod rabbitmq;
pub mod sqs;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The scheduler's queues. Each main queue has a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    /// Submissions from clients (`submit:<action>` notifications).
    Inbound,
    /// Acquired tasks to workers (requests with task id and attempt).
    Outbound,
    /// Results and errors from workers.
    Results,
    InboundDlq,
    OutboundDlq,
    ResultsDlq,
}

impl Queue {
    pub const ALL: [Queue; 6] =
        [Queue::Inbound, Queue::Outbound, Queue::Results, Queue::InboundDlq, Queue::OutboundDlq, Queue::ResultsDlq];

    /// The dead-letter queue of a main queue (a DLQ is its own).
    pub fn dlq(self) -> Queue {
        match self {
            Queue::Inbound | Queue::InboundDlq => Queue::InboundDlq,
            Queue::Outbound | Queue::OutboundDlq => Queue::OutboundDlq,
            Queue::Results | Queue::ResultsDlq => Queue::ResultsDlq,
        }
    }

    /// Suffix of the queue name after the configured prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Queue::Inbound => "inbound",
            Queue::Outbound => "outbound",
            Queue::Results => "results",
            Queue::InboundDlq => "inbound-dlq",
            Queue::OutboundDlq => "outbound-dlq",
            Queue::ResultsDlq => "results-dlq",
        }
    }

    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.suffix())
    }

    pub fn is_dlq(self) -> bool {
        self.dlq() == self
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The transport's message id (stable across redeliveries), for logs.
    pub id: String,
    /// Handle for delete / change_visibility of this delivery.
    pub receipt: String,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{queue} transport: {message}")]
pub struct TransportError {
    pub queue: Queue,
    pub message: String,
}

impl TransportError {
    pub fn new(queue: Queue, message: impl Into<String>) -> Self {
        Self { queue, message: message.into() }
    }
}

pub type TransportResult<T> = Result<T, TransportError>;

/// One transport; every stage uses it through this trait.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Up to `max` (1..=10) messages, waiting up to `wait` for the first one (long poll).
    async fn receive(&self, queue: Queue, max: usize, wait: Duration) -> TransportResult<Vec<Message>>;

    /// Sends bodies, in batches of up to 10 per call. One result per body, in order: Err is that entry's failure.
    async fn send(&self, queue: Queue, bodies: &[String]) -> TransportResult<Vec<Result<(), String>>>;

    /// Deletes by receipt, in batches of up to 10. Returns the receipts that could not be deleted.
    async fn delete(&self, queue: Queue, receipts: &[String]) -> TransportResult<Vec<String>>;

    /// Makes the messages invisible for `timeout` from now (heartbeat for long handlers).
    async fn change_visibility(&self, queue: Queue, receipts: &[String], timeout: Duration) -> TransportResult<()>;

    /// Approximate number of visible messages.
    async fn depth(&self, queue: Queue) -> TransportResult<u64>;

    /// A short name for logs and metrics ("sqs", "rabbitmq", "memory").
    fn kind(&self) -> &'static str;

    /// Whether a `receive` may be dropped while it waits without hiding messages: true for the in-process queues;
    /// false for SQS, where a cancelled request may already have made messages invisible until their visibility
    /// timeout. Shutdown cancels only cancel-safe long polls.
    fn cancel_safe_receive(&self) -> bool {
        false
    }
}

/// How long a message whose effect could not be made durable (a transient failure) stays away before it is
/// received again: 1 s after its first receive, doubling with each receive, at most the visibility timeout.
pub fn retry_after(receive_count: u32, visibility: Duration) -> Duration {
    let doublings = receive_count.clamp(1, 16) - 1;
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(visibility)
}

/// Gives messages back for a retry after [`retry_after`] instead of the whole visibility timeout: received
/// messages hold the consumer's window on a broker with prefetch (RabbitMQ) until they are settled, so leaving
/// them to time out would stall the queue behind them. `(receipt, receive_count)` pairs. Best effort: one that
/// cannot be changed still comes back after its visibility timeout.
pub async fn give_back(transport: &dyn Transport, queue: Queue, messages: &[(String, u32)], visibility: Duration) {
    let mut by_delay: std::collections::BTreeMap<Duration, Vec<String>> = Default::default();
    for (receipt, count) in messages {
        by_delay.entry(retry_after(*count, visibility)).or_default().push(receipt.clone());
    }
    for (delay, receipts) in by_delay {
        if let Err(e) = transport.change_visibility(queue, &receipts, delay).await {
            tracing::debug!(%queue, error = %e, "giving messages back early failed; they come back after their visibility timeout");
        }
    }
}

/// Maximum entries per batch call (the SQS limit, kept by every transport).
pub const MAX_BATCH: usize = 10;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Amazon SQS (or a local emulator through `sqs.endpoint_url`).
    Sqs,
    /// In-process queues: single-binary mode and fast tests. All roles must run in one process.
    Memory,
    /// RabbitMQ (AMQP 0-9-1), settings in `[rabbitmq]`.
    #[serde(rename = "rabbitmq")]
    #[value(name = "rabbitmq")]
    RabbitMq,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    /// `sqs`, `rabbitmq` or `memory`.
    pub kind: TransportKind,
    /// A message body larger than this is dead-lettered unprocessed.
    pub max_message_bytes: usize,
    /// Visibility timeout for received messages (seconds); an undeleted message comes back after it.
    pub visibility_timeout_secs: u32,
    /// Long-poll wait for receives (seconds, at most 20).
    pub wait_time_secs: u32,
    /// Received batches a poller hands on before it waits for their commit (pipelining).
    pub in_flight_batches: usize,
    /// Tasks (on the outbound queue) and results (on the results queue) packed into one message, as a JSON-RPC
    /// batch. 1 (the default): one per message, for workers that do not read batches. More cuts the broker's work
    /// per task (SQS: requests, and so cost): `bench pipeline --tasks-per-message`.
    pub tasks_per_message: usize,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            kind: TransportKind::Sqs,
            max_message_bytes: 256 * 1024,
            visibility_timeout_secs: 30,
            wait_time_secs: 20,
            in_flight_batches: 8,
            tasks_per_message: 1,
        }
    }
}
