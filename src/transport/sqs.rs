//! Amazon SQS transport (also works against local emulators such as moto or ElasticMQ through
//! `sqs.endpoint_url`). Every method maps onto one batch API where SQS has one, and every API call is counted so
//! benchmarks can report SQS requests per task.

use super::TransportSettings;
use super::{Message, Queue, Transport, TransportError, TransportResult, MAX_BATCH};
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::RequestId;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Receives after which SQS moves a message to the DLQ (same as the memory transport's default). The scheduler
/// dead-letters malformed messages itself at first receive, so the queue's redrive is only the last resort for a
/// message that keeps killing its consumer. It must be high: every receive while the database is unreachable counts
/// (until the circuit breaker stops the pollers), and a valid message must never reach a DLQ because of an outage.
/// With visibility V, a message can be received at most MAX_RECEIVE_COUNT times in MAX_RECEIVE_COUNT × V
/// (50 × 30 s = 25 min) before redrive; the breaker stops receiving after 3 failed commits, so what an outage costs
/// is those few receives, whatever its length.
pub const MAX_RECEIVE_COUNT: u32 = 50;
/// Longest long poll SQS accepts.
pub const MAX_WAIT_SECS: u64 = 20;
/// Longest visibility timeout SQS accepts (12 hours).
const MAX_VISIBILITY_SECS: f64 = 43_200.0;
/// Total body bytes per SendMessageBatch. SQS now allows 1 MiB, but 256 KiB is the long-standing limit that every
/// emulator and older region accepts.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// DLQs keep messages for the SQS maximum (14 days) so there is time to look at them.
const DLQ_RETENTION_SECS: &str = "1209600";
/// Fallback when neither the settings nor the AWS chain name a region.
const DEFAULT_REGION: &str = "us-east-1";

/// The SQS operations we call, for per-operation request counts.
#[derive(Debug, Clone, Copy)]
enum Op {
    GetQueueUrl,
    CreateQueue,
    DeleteQueue,
    GetQueueAttributes,
    ReceiveMessage,
    SendMessageBatch,
    DeleteMessageBatch,
    ChangeMessageVisibilityBatch,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::GetQueueUrl,
        Op::CreateQueue,
        Op::DeleteQueue,
        Op::GetQueueAttributes,
        Op::ReceiveMessage,
        Op::SendMessageBatch,
        Op::DeleteMessageBatch,
        Op::ChangeMessageVisibilityBatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::GetQueueUrl => "GetQueueUrl",
            Op::CreateQueue => "CreateQueue",
            Op::DeleteQueue => "DeleteQueue",
            Op::GetQueueAttributes => "GetQueueAttributes",
            Op::ReceiveMessage => "ReceiveMessage",
            Op::SendMessageBatch => "SendMessageBatch",
            Op::DeleteMessageBatch => "DeleteMessageBatch",
            Op::ChangeMessageVisibilityBatch => "ChangeMessageVisibilityBatch",
        }
    }
}

/// API calls per operation. Counts logical calls; the SDK's own retries of a call are not counted.
#[derive(Debug, Default)]
struct CallCounts([AtomicU64; Op::ALL.len()]);

impl CallCounts {
    fn hit(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// SQS client plus the resolved URLs of the six queues; clones share the client and the call counters.
#[derive(Clone)]
pub struct SqsTransport {
    client: Client,
    urls: Arc<HashMap<Queue, String>>,
    visibility_timeout_secs: i32,
    calls: Arc<CallCounts>,
}

impl std::fmt::Debug for SqsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsTransport")
            .field("urls", &self.urls)
            .field("visibility_timeout_secs", &self.visibility_timeout_secs)
            .finish_non_exhaustive()
    }
}

impl SqsTransport {
    /// Builds the client and resolves the queue URLs of `sqs.queue_prefix`. With `sqs.create_queues`, missing
    /// queues are created first (DLQs, then main queues with a redrive policy); without it a missing queue is an
    /// error naming it.
    pub async fn connect(sqs: &SqsSettings, transport: &TransportSettings) -> anyhow::Result<SqsTransport> {
        let client = build_client(sqs).await?;
        let calls = Arc::new(CallCounts::default());
        let prefix = &sqs.queue_prefix;
        let urls = if sqs.create_queues {
            ensure_queues(&client, &calls, prefix, transport.visibility_timeout_secs).await?
        } else {
            resolve_queues(&client, &calls, prefix).await?
        };
        Ok(SqsTransport {
            client,
            urls: Arc::new(urls),
            visibility_timeout_secs: transport.visibility_timeout_secs.min(MAX_VISIBILITY_SECS as u32) as i32,
            calls,
        })
    }

    /// Creates whatever queues of `sqs.queue_prefix` are missing, whatever `sqs.create_queues` says, and connects to
    /// them. Tests use it with a fresh prefix to get a private queue set.
    pub async fn create_queues(sqs: &SqsSettings, transport: &TransportSettings) -> anyhow::Result<SqsTransport> {
        let sqs = SqsSettings { create_queues: true, ..sqs.clone() };
        Self::connect(&sqs, transport).await
    }

    /// SQS API calls made through this transport and its clones (including the ones made by `connect`).
    pub fn api_calls(&self) -> u64 {
        self.calls.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// API calls by operation name, e.g. `("SendMessageBatch", 3)`; every operation is listed, zeros included.
    pub fn api_calls_by_op(&self) -> Vec<(&'static str, u64)> {
        Op::ALL.iter().map(|&op| (op.name(), self.calls.0[op as usize].load(Ordering::Relaxed))).collect()
    }

    /// Deletes the six queues and their messages. For tests, which create a queue set per test: left behind, they
    /// pile up in the emulator and slow it down.
    pub async fn delete_queues(&self) -> anyhow::Result<()> {
        let deleted = join_all(Queue::ALL.map(|q| async move {
            self.calls.hit(Op::DeleteQueue);
            let url = self.queue_url(q);
            let out = self.client.delete_queue().queue_url(url).send().await;
            out.map_err(|e| anyhow!("DeleteQueue {url}: {}", describe(&e)))
        }))
        .await;
        deleted.into_iter().try_for_each(|r| r.map(drop))
    }

    /// Deletes whichever of the six queues of `sqs.queue_prefix` exist, with a client of its own; returns how many
    /// it deleted (0 when none exist). For test and benchmark cleanup that runs where no transport is at hand, e.g.
    /// in a `Drop` on another thread and runtime than the one that created the queues.
    pub async fn delete_queue_set(sqs: &SqsSettings) -> anyhow::Result<usize> {
        let client = build_client(sqs).await?;
        let calls = CallCounts::default();
        let found = lookup_all(&client, &calls, &sqs.queue_prefix).await?;
        let deleted = join_all(found.into_iter().filter_map(|(_, url)| url).map(|url| {
            let client = &client;
            async move {
                let out = client.delete_queue().queue_url(&url).send().await;
                out.map_err(|e| anyhow!("DeleteQueue {url}: {}", describe(&e)))
            }
        }))
        .await;
        deleted.into_iter().try_fold(0, |n, r| r.map(|_| n + 1))
    }

    /// The URL of a queue (for logs and operators).
    pub fn queue_url(&self, queue: Queue) -> &str {
        &self.urls[&queue]
    }
}

async fn build_client(sqs: &SqsSettings) -> anyhow::Result<Client> {
    let region = RegionProviderChain::first_try(sqs.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::from_static(DEFAULT_REGION));
    // Without an attempt timeout a receive can hang forever on a half-dead connection (aws-sdk-rust#1094); the
    // longest legitimate call is a 20 s long poll.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(MAX_WAIT_SECS + 10))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region).timeout_config(timeouts);
    match (&sqs.access_key_id, &sqs.secret_access_key) {
        (Some(id), Some(secret)) => {
            loader =
                loader.credentials_provider(Credentials::new(id, secret.expose(), None, None, "scheduler-settings"));
        }
        (None, None) => {}
        _ => bail!("sqs.access_key_id and sqs.secret_access_key must be set together"),
    }
    if let Some(url) = &sqs.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    Ok(Client::new(&loader.load().await))
}

/// `Some(url)`, or `None` when the queue does not exist.
async fn lookup_queue(client: &Client, calls: &CallCounts, name: &str) -> anyhow::Result<Option<String>> {
    calls.hit(Op::GetQueueUrl);
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => {
            Ok(Some(out.queue_url().ok_or_else(|| anyhow!("GetQueueUrl {name}: no URL in the response"))?.to_string()))
        }
        Err(e) => {
            // The JSON protocol reports "QueueDoesNotExist"; older servers (and moto) the query-protocol code.
            let missing = e.as_service_error().is_some_and(|se| {
                se.is_queue_does_not_exist() || se.code() == Some("AWS.SimpleQueueService.NonExistentQueue")
            });
            if missing {
                Ok(None)
            } else {
                Err(anyhow!("GetQueueUrl {name}: {}", describe(&e)))
            }
        }
    }
}

/// Looks up all six queues concurrently: `(queue, url or None)`.
async fn lookup_all(client: &Client, calls: &CallCounts, prefix: &str) -> anyhow::Result<Vec<(Queue, Option<String>)>> {
    let found =
        join_all(Queue::ALL.map(|q| async move { (q, lookup_queue(client, calls, &q.name(prefix)).await) })).await;
    found.into_iter().map(|(q, r)| r.map(|url| (q, url))).collect()
}

async fn resolve_queues(client: &Client, calls: &CallCounts, prefix: &str) -> anyhow::Result<HashMap<Queue, String>> {
    let found = lookup_all(client, calls, prefix).await?;
    let missing: Vec<String> = found.iter().filter(|(_, url)| url.is_none()).map(|(q, _)| q.name(prefix)).collect();
    if !missing.is_empty() {
        bail!(
            "SQS queue(s) {} do not exist; create them (terraform, or \
             `scripts/dev-services create-queues {prefix}`) or set sqs.create_queues = true",
            missing.join(", ")
        );
    }
    Ok(found.into_iter().map(|(q, url)| (q, url.expect("checked above"))).collect())
}

async fn create_queue(
    client: &Client,
    calls: &CallCounts,
    name: &str,
    attributes: Vec<(QueueAttributeName, String)>,
) -> anyhow::Result<String> {
    calls.hit(Op::CreateQueue);
    let mut req = client.create_queue().queue_name(name);
    for (k, v) in attributes {
        req = req.attributes(k, v);
    }
    // CreateQueue is idempotent for equal attributes, so two processes racing to create a queue both succeed.
    let out = req.send().await.map_err(|e| anyhow!("CreateQueue {name}: {}", describe(&e)))?;
    out.queue_url().map(str::to_string).ok_or_else(|| anyhow!("CreateQueue {name}: no URL in the response"))
}

async fn queue_arn(client: &Client, calls: &CallCounts, url: &str) -> anyhow::Result<String> {
    calls.hit(Op::GetQueueAttributes);
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow!("GetQueueAttributes QueueArn of {url}: {}", describe(&e)))?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .with_context(|| format!("GetQueueAttributes {url}: no QueueArn in the response"))
}

/// Creates the missing queues of `prefix`; existing queues are left as they are (Terraform may own them).
async fn ensure_queues(
    client: &Client,
    calls: &CallCounts,
    prefix: &str,
    visibility_timeout_secs: u32,
) -> anyhow::Result<HashMap<Queue, String>> {
    let found: HashMap<Queue, Option<String>> = lookup_all(client, calls, prefix).await?.into_iter().collect();
    let visibility = visibility_timeout_secs.to_string();
    // Each main queue needs its DLQ's ARN, so per pair: DLQ first, then the main queue; the three pairs run at once.
    let pairs = [Queue::Inbound, Queue::Outbound, Queue::Results].map(|main| {
        let (found, visibility) = (&found, &visibility);
        async move {
            let dlq = main.dlq();
            let dlq_url = match &found[&dlq] {
                Some(url) => url.clone(),
                None => {
                    let attrs = vec![
                        (QueueAttributeName::VisibilityTimeout, visibility.clone()),
                        (QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.into()),
                    ];
                    create_queue(client, calls, &dlq.name(prefix), attrs).await?
                }
            };
            let main_url = match &found[&main] {
                Some(url) => url.clone(),
                None => {
                    let arn = queue_arn(client, calls, &dlq_url).await?;
                    // maxReceiveCount is a string in the documented examples; SQS accepts both.
                    let redrive = serde_json::json!({
                        "deadLetterTargetArn": arn,
                        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
                    })
                    .to_string();
                    let attrs = vec![
                        (QueueAttributeName::VisibilityTimeout, visibility.clone()),
                        (QueueAttributeName::RedrivePolicy, redrive),
                    ];
                    create_queue(client, calls, &main.name(prefix), attrs).await?
                }
            };
            anyhow::Ok([(main, main_url), (dlq, dlq_url)])
        }
    });
    let mut urls = HashMap::new();
    for pair in join_all(pairs).await {
        urls.extend(pair?);
    }
    Ok(urls)
}

/// Consecutive index ranges of at most `MAX_BATCH` entries and `MAX_BATCH_BYTES` of body each. A body larger than
/// the byte limit gets a batch of its own, which SQS then rejects (that entry fails, the others do not).
fn batch_ranges(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start == MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        ranges.push(start..sizes.len());
    }
    ranges
}

/// Plain chunks of `MAX_BATCH` for delete and change_visibility (receipts are small).
fn count_ranges(n: usize) -> Vec<Range<usize>> {
    (0..n).step_by(MAX_BATCH).map(|s| s..(s + MAX_BATCH).min(n)).collect()
}

/// The receipts without repeats, first occurrence kept: moto rejects a whole batch that repeats a receipt.
fn distinct(receipts: &[String]) -> Vec<&str> {
    let mut seen = HashSet::new();
    receipts.iter().map(String::as_str).filter(|r| seen.insert(*r)).collect()
}

/// Batch entry ids are the entry's index in the caller's slice, so failures map back to positions.
fn entry_index(id: &str, range: &Range<usize>) -> Option<usize> {
    id.parse().ok().filter(|i| range.contains(i))
}

fn entry_error(e: &BatchResultErrorEntry) -> String {
    format!("{}: {}", e.code(), e.message().unwrap_or("(no message)"))
}

/// A one-line description of a failed call. A service error is its code and message (DisplayErrorContext would
/// append the whole raw HTTP response); anything else (connect, timeout, TLS) is the full DisplayErrorContext,
/// whose debug part names the address and the cause.
fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + RequestId + std::error::Error + 'static,
{
    match err.as_service_error() {
        Some(se) if se.code().is_some() => format!(
            "{}: {} (request id {})",
            se.code().unwrap_or_default(),
            se.message().unwrap_or("(no message)"),
            se.request_id().unwrap_or("none")
        ),
        _ => DisplayErrorContext(err).to_string(),
    }
}

fn call_error<E>(queue: Queue, op: Op, err: SdkError<E, HttpResponse>) -> TransportError
where
    E: ProvideErrorMetadata + RequestId + std::error::Error + 'static,
{
    TransportError::new(queue, format!("{}: {}", op.name(), describe(&err)))
}

#[async_trait]
impl Transport for SqsTransport {
    async fn receive(&self, queue: Queue, max: usize, wait: Duration) -> TransportResult<Vec<Message>> {
        let wait_secs = wait.as_secs_f64().round().min(MAX_WAIT_SECS as f64) as i32;
        self.calls.hit(Op::ReceiveMessage);
        let out = self
            .client
            .receive_message()
            .queue_url(self.queue_url(queue))
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait_secs)
            .visibility_timeout(self.visibility_timeout_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| call_error(queue, Op::ReceiveMessage, e))?;
        let messages = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                // Without a receipt the message cannot be acknowledged; it will simply come back.
                let Some(receipt) = m.receipt_handle else {
                    tracing::warn!(%queue, id = ?m.message_id, "message without receipt; skipped");
                    return None;
                };
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some(Message {
                    id: m.message_id.unwrap_or_default(),
                    receipt,
                    body: m.body.unwrap_or_default(),
                    receive_count,
                })
            })
            .collect();
        Ok(messages)
    }

    async fn send(&self, queue: Queue, bodies: &[String]) -> TransportResult<Vec<Result<(), String>>> {
        let url = self.queue_url(queue);
        let sizes: Vec<usize> = bodies.iter().map(String::len).collect();
        let chunks = batch_ranges(&sizes).into_iter().map(|range| async move {
            let entries = range
                .clone()
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&bodies[i])
                        .build()
                        .expect("id and message_body are set")
                })
                .collect();
            self.calls.hit(Op::SendMessageBatch);
            let out = self.client.send_message_batch().queue_url(url).set_entries(Some(entries)).send().await;
            (range, out)
        });
        // An entry SQS neither confirms nor rejects counts as failed: the caller retries, and duplicates are fine.
        let mut results: Vec<Result<(), String>> =
            vec![Err("SendMessageBatch: no result for this entry".into()); bodies.len()];
        for (range, out) in join_all(chunks).await {
            match out {
                Ok(out) => {
                    for ok in out.successful() {
                        if let Some(i) = entry_index(ok.id(), &range) {
                            results[i] = Ok(());
                        }
                    }
                    for failed in out.failed() {
                        if let Some(i) = entry_index(failed.id(), &range) {
                            results[i] = Err(entry_error(failed));
                        }
                    }
                }
                Err(e) => {
                    let msg = call_error(queue, Op::SendMessageBatch, e).message;
                    results[range].fill(Err(msg));
                }
            }
        }
        Ok(results)
    }

    /// A receipt listed twice is deleted (and reported) once.
    async fn delete(&self, queue: Queue, receipts: &[String]) -> TransportResult<Vec<String>> {
        let receipts = &distinct(receipts);
        let url = self.queue_url(queue);
        let chunks = count_ranges(receipts.len()).into_iter().map(|range| async move {
            let entries = range
                .clone()
                .map(|i| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipts[i])
                        .build()
                        .expect("id and receipt_handle are set")
                })
                .collect();
            self.calls.hit(Op::DeleteMessageBatch);
            let out = self.client.delete_message_batch().queue_url(url).set_entries(Some(entries)).send().await;
            (range, out)
        });
        let mut failed = vec![false; receipts.len()];
        for (range, out) in join_all(chunks).await {
            match out {
                Ok(out) => {
                    for f in out.failed() {
                        if let Some(i) = entry_index(f.id(), &range) {
                            let error = entry_error(f);
                            tracing::debug!(%queue, %error, "SQS delete entry failed");
                            failed[i] = true;
                        }
                    }
                }
                Err(e) => {
                    // The caller only gets the receipts back, so the reason is logged here.
                    let error = call_error(queue, Op::DeleteMessageBatch, e);
                    tracing::warn!(%queue, %error, "SQS delete failed");
                    failed[range].fill(true);
                }
            }
        }
        Ok(receipts.iter().zip(failed).filter(|(_, f)| *f).map(|(r, _)| r.to_string()).collect())
    }

    /// Runs every chunk; if any entry or call failed, returns one error counting the failures and quoting the first.
    async fn change_visibility(&self, queue: Queue, receipts: &[String], timeout: Duration) -> TransportResult<()> {
        let receipts = &distinct(receipts);
        let url = self.queue_url(queue);
        // Rounded up: a heartbeat must never make the message visible earlier than asked.
        let secs = timeout.as_secs_f64().ceil().min(MAX_VISIBILITY_SECS) as i32;
        let chunks = count_ranges(receipts.len()).into_iter().map(|range| async move {
            let entries = range
                .clone()
                .map(|i| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipts[i])
                        .visibility_timeout(secs)
                        .build()
                        .expect("id and receipt_handle are set")
                })
                .collect();
            self.calls.hit(Op::ChangeMessageVisibilityBatch);
            let out =
                self.client.change_message_visibility_batch().queue_url(url).set_entries(Some(entries)).send().await;
            (range, out)
        });
        let mut errors: Vec<String> = Vec::new();
        let mut failed_entries = 0;
        for (range, out) in join_all(chunks).await {
            match out {
                Ok(out) => {
                    failed_entries += out.failed().len();
                    errors.extend(out.failed().iter().map(entry_error));
                }
                Err(e) => {
                    failed_entries += range.len();
                    errors.push(call_error(queue, Op::ChangeMessageVisibilityBatch, e).message);
                }
            }
        }
        match errors.first() {
            None => Ok(()),
            Some(first) => Err(TransportError::new(
                queue,
                format!("ChangeMessageVisibilityBatch: {failed_entries} of {} failed; first: {first}", receipts.len()),
            )),
        }
    }

    async fn depth(&self, queue: Queue) -> TransportResult<u64> {
        self.calls.hit(Op::GetQueueAttributes);
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(self.queue_url(queue))
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| call_error(queue, Op::GetQueueAttributes, e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                TransportError::new(queue, "GetQueueAttributes: no ApproximateNumberOfMessages in the response")
            })
    }

    fn kind(&self) -> &'static str {
        "sqs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_at_ten_entries() {
        assert_eq!(batch_ranges(&[1; 23]), vec![0..10, 10..20, 20..23]);
        assert_eq!(batch_ranges(&[]), Vec::<Range<usize>>::new());
        assert_eq!(count_ranges(20), vec![0..10, 10..20]);
        assert_eq!(count_ranges(0), Vec::<Range<usize>>::new());
    }

    #[test]
    fn batches_split_at_the_byte_limit() {
        let k100 = 100 * 1024;
        // 100 + 100 fits, a third would exceed 256 KiB.
        assert_eq!(batch_ranges(&[k100, k100, k100, 1]), vec![0..2, 2..4]);
        // Exactly at the limit still fits.
        assert_eq!(batch_ranges(&[MAX_BATCH_BYTES, 1]), vec![0..1, 1..2]);
        // An oversized body goes alone, so only it fails.
        assert_eq!(batch_ranges(&[1, MAX_BATCH_BYTES + 1, 1]), vec![0..1, 1..2, 2..3]);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SqsSettings {
    /// Endpoint override for local emulators (moto, ElasticMQ); unset means AWS.
    pub endpoint_url: Option<String>,
    /// AWS region; unset means the standard AWS chain (AWS_REGION, profile).
    pub region: Option<String>,
    /// Static credentials; unset means the standard AWS chain. The secret is redacted by `config`.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<crate::secret::Secret>,
    /// Queues are `<prefix>-inbound`, `<prefix>-outbound`, `<prefix>-results`, each with `<name>-dlq`.
    pub queue_prefix: String,
    /// Create missing queues (with DLQs and redrive) at start; for local emulators. Terraform owns them in AWS.
    pub create_queues: bool,
}

impl Default for SqsSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            queue_prefix: "scheduler".into(),
            create_queues: false,
        }
    }
}
