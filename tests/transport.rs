//! Transport contract: the same assertions run against the in-process transport and against SQS (a moto server
//! from `scripts/dev-services up`, endpoint in SCHEDULER_SQS__ENDPOINT_URL). Each SQS test creates its own queue
//! set under a random prefix, so tests never see each other's messages, deletes it when it ends (also when it
//! fails), and takes its turn on the single-threaded emulator like the pipeline tests (`sqs_turn`). The RabbitMQ
//! tests (the local broker, SCHEDULER_RABBITMQ__URL) likewise use a queue prefix of their own, deleted at the end;
//! the ones that close connections use a virtual host of their own.

mod common;

use common::pipeline::{sqs_turn, Kind};
use common::{PrivateVhost, QueueSetCleanup, RabbitQueueSetCleanup};
use sqs_scheduler::configuration::{RabbitMqSettings, SqsSettings, TransportSettings};
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::transport::memory::MemoryTransport;
use sqs_scheduler::transport::rabbitmq::{Prefetch, RabbitMqTransport};
use sqs_scheduler::transport::sqs::{SqsTransport, MAX_RECEIVE_COUNT};
use sqs_scheduler::transport::{Message, Queue, Transport};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Short, so redelivery tests take seconds (SQS timeouts are whole seconds).
const VISIBILITY: Duration = Duration::from_secs(2);
/// Long-poll wait of the receive loops.
const POLL: Duration = Duration::from_secs(1);
/// Upper bound for anything that should happen "soon" (a loaded CI machine, a slow emulator).
const PATIENCE: Duration = Duration::from_secs(10);

fn memory() -> MemoryTransport {
    MemoryTransport::new(VISIBILITY)
}

fn sqs_settings(prefix: &str) -> (SqsSettings, TransportSettings) {
    let sqs = SqsSettings {
        endpoint_url: Some(
            std::env::var("SCHEDULER_SQS__ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into()),
        ),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        queue_prefix: prefix.into(),
        create_queues: false,
    };
    let transport = TransportSettings { visibility_timeout_secs: VISIBILITY.as_secs() as u32, ..Default::default() };
    (sqs, transport)
}

fn fresh_prefix() -> String {
    format!("t{}", rand::random::<u32>())
}

/// A test's turn on the emulator and its private queue set, deleted when this is dropped (fields drop in order:
/// the transport, then the queues, then the turn).
struct PrivateQueues {
    transport: SqsTransport,
    _cleanup: QueueSetCleanup,
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl std::ops::Deref for PrivateQueues {
    type Target = SqsTransport;
    fn deref(&self) -> &SqsTransport {
        &self.transport
    }
}

/// Waits for this test's turn on the emulator, then creates a private queue set on it.
async fn sqs() -> PrivateQueues {
    let turn = sqs_turn(Kind::Sqs).await;
    let (sqs, transport_settings) = sqs_settings(&fresh_prefix());
    // Armed before creating, so that a half-created set is deleted too.
    let cleanup = QueueSetCleanup::new(&sqs);
    let transport = SqsTransport::create_queues(&sqs, &transport_settings)
        .await
        .expect("create SQS queues (is moto up? run scripts/dev-services up)");
    PrivateQueues { transport, _cleanup: cleanup, _turn: turn }
}

/// A private RabbitMQ queue set, deleted when this is dropped (after the transport).
struct PrivateRabbit {
    transport: RabbitMqTransport,
    settings: RabbitMqSettings,
    _cleanup: RabbitQueueSetCleanup,
}

impl std::ops::Deref for PrivateRabbit {
    type Target = RabbitMqTransport;
    fn deref(&self) -> &RabbitMqTransport {
        &self.transport
    }
}

fn rabbit_settings(url: String) -> RabbitMqSettings {
    RabbitMqSettings { url: url.into(), queue_prefix: fresh_prefix(), ..Default::default() }
}

async fn rabbit_with(settings: RabbitMqSettings, prefetch: Prefetch) -> PrivateRabbit {
    let cleanup = RabbitQueueSetCleanup::new(&settings);
    let transport_settings =
        TransportSettings { visibility_timeout_secs: VISIBILITY.as_secs() as u32, ..Default::default() };
    let transport = RabbitMqTransport::create_queues(&settings, &transport_settings, prefetch)
        .await
        .expect("declare RabbitMQ queues (is RabbitMQ up? run scripts/dev-services up)");
    PrivateRabbit { transport, settings, _cleanup: cleanup }
}

async fn rabbitmq() -> PrivateRabbit {
    rabbit_with(rabbit_settings(common::rabbitmq_url()), Prefetch::default()).await
}

async fn rabbitmq_quorum() -> PrivateRabbit {
    rabbit_with(
        RabbitMqSettings { quorum_queues: true, ..rabbit_settings(common::rabbitmq_url()) },
        Prefetch::default(),
    )
    .await
}

fn bodies(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"tag":"{tag}","i":{i}}}"#)).collect()
}

/// Long-polls until something arrives or `until` has passed; empty if nothing came.
async fn receive_until(t: &dyn Transport, queue: Queue, until: Instant) -> Vec<Message> {
    loop {
        let got = t.receive(queue, 10, POLL).await.expect("receive");
        if !got.is_empty() || Instant::now() >= until {
            return got;
        }
    }
}

/// Receives until `n` distinct bodies arrived (a body may be delivered twice: SQS is at-least-once).
/// Returns the messages by body and every receipt seen, duplicates included.
async fn receive_distinct(t: &dyn Transport, queue: Queue, n: usize) -> (HashMap<String, Message>, Vec<String>) {
    let until = Instant::now() + PATIENCE;
    let (mut by_body, mut receipts) = (HashMap::new(), Vec::new());
    while by_body.len() < n {
        assert!(Instant::now() < until, "only {} of {n} bodies arrived within {PATIENCE:?}", by_body.len());
        for m in t.receive(queue, 10, POLL).await.expect("receive") {
            receipts.push(m.receipt.clone());
            by_body.insert(m.body.clone(), m);
        }
    }
    (by_body, receipts)
}

async fn send_all(t: &dyn Transport, queue: Queue, bodies: &[String]) {
    let results = t.send(queue, bodies).await.expect("send");
    assert_eq!(results.len(), bodies.len());
    assert!(results.iter().all(Result::is_ok), "send failures: {results:?}");
}

// ---------------------------------------------------------------- contract, run on both transports

async fn send_receive_delete(t: &dyn Transport) {
    let sent = bodies(25, "srd");
    send_all(t, Queue::Inbound, &sent).await;

    let (got, receipts) = receive_distinct(t, Queue::Inbound, sent.len()).await;
    let mut got_bodies: Vec<&String> = got.keys().collect();
    got_bodies.sort();
    let mut want: Vec<&String> = sent.iter().collect();
    want.sort();
    assert_eq!(got_bodies, want);
    assert!(got.values().all(|m| m.receive_count >= 1 && !m.id.is_empty()));

    let failed = t.delete(Queue::Inbound, &receipts).await.expect("delete");
    assert!(failed.is_empty(), "delete failures: {failed:?}");

    let until = Instant::now() + PATIENCE;
    while t.depth(Queue::Inbound).await.expect("depth") != 0 {
        assert!(Instant::now() < until, "depth did not reach 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Undeleted messages would come back within one visibility timeout; deleted ones never do.
    let back = receive_until(t, Queue::Inbound, Instant::now() + VISIBILITY + POLL).await;
    assert!(back.is_empty(), "deleted messages came back: {back:?}");
}

async fn undeleted_message_comes_back(t: &dyn Transport) {
    send_all(t, Queue::Outbound, &bodies(1, "redeliver")).await;
    let first = receive_until(t, Queue::Outbound, Instant::now() + PATIENCE).await;
    let received_at = Instant::now();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);

    let again = receive_until(t, Queue::Outbound, received_at + PATIENCE).await;
    assert_eq!(again.len(), 1, "the message did not come back");
    let elapsed = received_at.elapsed();
    assert!(elapsed >= VISIBILITY - Duration::from_millis(200), "came back after {elapsed:?}, before the timeout");
    assert_eq!(again[0].receive_count, 2);
    assert_eq!((&again[0].id, &again[0].body), (&first[0].id, &first[0].body));
    assert_ne!(again[0].receipt, first[0].receipt, "a new delivery has a new receipt");
}

async fn change_visibility_extends(t: &dyn Transport) {
    send_all(t, Queue::Results, &bodies(1, "extend")).await;
    let first = receive_until(t, Queue::Results, Instant::now() + PATIENCE).await;
    let received_at = Instant::now();
    assert_eq!(first.len(), 1);
    let extended = Duration::from_secs(5);
    t.change_visibility(Queue::Results, &[first[0].receipt.clone()], extended).await.expect("change_visibility");

    // Well past the original 2 s timeout (the last poll ends before the extended one runs out).
    let early = receive_until(t, Queue::Results, received_at + VISIBILITY + POLL).await;
    assert!(early.is_empty(), "came back after {:?} despite the extension", received_at.elapsed());

    // It was extended, not lost: it comes back once the extension runs out.
    let late = receive_until(t, Queue::Results, received_at + extended + PATIENCE).await;
    assert_eq!(late.len(), 1, "the message never came back");
    assert!(received_at.elapsed() >= extended - Duration::from_millis(500), "back after {:?}", received_at.elapsed());
    assert_eq!(late[0].receive_count, 2);
}

async fn long_poll_waits_and_wakes(t: &dyn Transport) {
    let start = Instant::now();
    let got = t.receive(Queue::Inbound, 10, POLL).await.expect("receive");
    let elapsed = start.elapsed();
    assert!(got.is_empty());
    assert!(elapsed >= Duration::from_millis(900), "returned after {elapsed:?}, without waiting");
    assert!(elapsed < Duration::from_secs(5), "returned after {elapsed:?}");

    // A send during the wait ends it early. The delay only makes sure the receive is already waiting.
    let wait = Duration::from_secs(3);
    let start = Instant::now();
    let sent = bodies(1, "wake");
    let (got, ()) = tokio::join!(t.receive(Queue::Inbound, 10, wait), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_all(t, Queue::Inbound, &sent).await;
    });
    let elapsed = start.elapsed();
    let got = got.expect("receive");
    assert_eq!(got.iter().map(|m| &m.body).collect::<Vec<_>>(), vec![&sent[0]]);
    assert!(elapsed < wait - Duration::from_millis(500), "returned after {elapsed:?}, not when the message came");
}

async fn send_reports_each_entry_in_order(t: &dyn Transport) {
    let sent = bodies(23, "order");
    let results = t.send(Queue::Outbound, &sent).await.expect("send");
    assert_eq!(results, vec![Ok(()); 23]);
    let (got, _) = receive_distinct(t, Queue::Outbound, sent.len()).await;
    assert!(sent.iter().all(|b| got.contains_key(b)));
}

async fn empty_batches_are_no_ops(t: &dyn Transport) {
    assert!(t.send(Queue::Inbound, &[]).await.expect("send").is_empty());
    assert!(t.delete(Queue::Inbound, &[]).await.expect("delete").is_empty());
    t.change_visibility(Queue::Inbound, &[], VISIBILITY).await.expect("change_visibility");
}

async fn redrive_after_max_receives(t: &dyn Transport) {
    let sent = bodies(1, "poison");
    send_all(t, Queue::Inbound, &sent).await;
    // Receive it MAX_RECEIVE_COUNT times, making it visible again at once instead of waiting out the timeout.
    for n in 1..=MAX_RECEIVE_COUNT {
        let got = receive_until(t, Queue::Inbound, Instant::now() + PATIENCE).await;
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].receive_count, n);
        t.change_visibility(Queue::Inbound, &[got[0].receipt.clone()], Duration::ZERO).await.expect("release");
    }
    // The move happens when a receive on the main queue finds the message over the limit (SQS and memory alike),
    // so poll both; the main queue must never deliver it a sixth time.
    let until = Instant::now() + PATIENCE;
    let dead = loop {
        let main = t.receive(Queue::Inbound, 10, Duration::ZERO).await.expect("receive");
        assert!(main.is_empty(), "delivered again after {MAX_RECEIVE_COUNT} receives: {main:?}");
        let dead = t.receive(Queue::InboundDlq, 10, POLL).await.expect("receive dlq");
        if !dead.is_empty() || Instant::now() >= until {
            break dead;
        }
    };
    assert_eq!(dead.iter().map(|m| &m.body).collect::<Vec<_>>(), vec![&sent[0]]);
}

/// One test per transport for each contract function: `memory::<name>`, `sqs::<name>`, `rabbitmq::<name>` (classic
/// queues) and `rabbitmq_quorum::<name>`. SQS tests take turns
/// and delete their queues when they end, passed or failed.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&super::memory()).await;
            })*
        }
        mod sqs {
            $(#[tokio::test]
            async fn $name() {
                let t = super::sqs().await;
                super::$name(&*t).await;
            })*
        }
        mod rabbitmq {
            $(#[tokio::test]
            async fn $name() {
                let t = super::rabbitmq().await;
                super::$name(&*t).await;
            })*
        }
        mod rabbitmq_quorum {
            $(#[tokio::test]
            async fn $name() {
                let t = super::rabbitmq_quorum().await;
                super::$name(&*t).await;
            })*
        }
    };
}

contract_tests!(
    send_receive_delete,
    undeleted_message_comes_back,
    change_visibility_extends,
    long_poll_waits_and_wakes,
    send_reports_each_entry_in_order,
    empty_batches_are_no_ops,
    redrive_after_max_receives,
);

// ---------------------------------------------------------------- SQS only

fn calls_of(t: &SqsTransport, op: &str) -> u64 {
    t.api_calls_by_op().into_iter().find(|(name, _)| *name == op).map_or(0, |(_, n)| n)
}

#[tokio::test]
async fn sqs_send_of_23_bodies_is_3_calls() {
    let t = sqs().await;
    let (before, batches_before) = (t.api_calls(), calls_of(&t, "SendMessageBatch"));
    send_all(&*t, Queue::Outbound, &bodies(23, "calls")).await;
    assert_eq!(t.api_calls() - before, 3);
    assert_eq!(calls_of(&t, "SendMessageBatch") - batches_before, 3);
    // Clones share the counter.
    let clone = t.clone();
    clone.depth(Queue::Outbound).await.expect("depth");
    assert_eq!(t.api_calls() - before, 4);
}

#[tokio::test]
async fn sqs_empty_batches_make_no_calls() {
    let t = sqs().await;
    let before = t.api_calls();
    empty_batches_are_no_ops(&*t).await;
    assert_eq!(t.api_calls(), before);
}

#[tokio::test]
async fn sqs_oversized_body_fails_alone_in_its_position() {
    let t = sqs().await;
    let mut sent = bodies(23, "big");
    // Over the 1 MiB message limit: its batch (of one) is rejected, the others go through.
    sent[12] = "x".repeat(1024 * 1024 + 1);
    let results = t.send(Queue::Outbound, &sent).await.expect("send");
    assert_eq!(results.len(), 23);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 12, "entry {i}: {r:?}");
    }
    assert!(results[12].as_ref().unwrap_err().contains("SendMessageBatch"), "{:?}", results[12]);
}

#[tokio::test]
async fn sqs_delete_returns_rejected_receipts() {
    let t = sqs().await;
    send_all(&*t, Queue::Inbound, &bodies(1, "reject")).await;
    let got = receive_until(&*t, Queue::Inbound, Instant::now() + PATIENCE).await;
    assert_eq!(got.len(), 1);
    let receipts = vec!["not-a-receipt".to_string(), got[0].receipt.clone(), got[0].receipt.clone()];
    let failed = t.delete(Queue::Inbound, &receipts).await.expect("delete");
    assert_eq!(failed, vec!["not-a-receipt".to_string()]);
}

#[tokio::test]
async fn sqs_connect_to_missing_queues_names_them() {
    let _turn = sqs_turn(Kind::Sqs).await;
    let prefix = fresh_prefix();
    let (sqs, transport) = sqs_settings(&prefix);
    let err = SqsTransport::connect(&sqs, &transport).await.expect_err("no queues exist under a fresh prefix");
    let msg = format!("{err:#}");
    for q in Queue::ALL {
        assert!(msg.contains(&q.name(&prefix)), "error does not name {}: {msg}", q.name(&prefix));
    }
    assert!(msg.contains("create_queues"), "error does not say how to fix it: {msg}");
}

#[tokio::test]
async fn sqs_connect_finds_created_queues() {
    let _turn = sqs_turn(Kind::Sqs).await;
    let prefix = fresh_prefix();
    let (sqs, transport) = sqs_settings(&prefix);
    // In case the test fails before its own delete_queues (a no-op after it).
    let _cleanup = QueueSetCleanup::new(&sqs);
    let created = SqsTransport::create_queues(&sqs, &transport).await.expect("create");
    assert_eq!(calls_of(&created, "CreateQueue"), 6);
    // Creating again is a no-op, and plain connect now finds them.
    let again = SqsTransport::create_queues(&sqs, &transport).await.expect("create again");
    assert_eq!(calls_of(&again, "CreateQueue"), 0);
    let connected = SqsTransport::connect(&sqs, &transport).await.expect("connect");
    assert_eq!(connected.api_calls(), 6, "one GetQueueUrl per queue: {:?}", connected.api_calls_by_op());
    for q in Queue::ALL {
        assert_eq!(connected.queue_url(q), created.queue_url(q));
    }
    assert_eq!(connected.kind(), "sqs");
    connected.delete_queues().await.expect("delete queues");
    // Immediate on moto and ElasticMQ (AWS may resolve a deleted queue for up to 60 s).
    let gone = SqsTransport::connect(&sqs, &transport).await;
    assert!(gone.is_err(), "queues still there after delete_queues");
}

// ---------------------------------------------------------------- RabbitMQ only

#[tokio::test]
async fn rabbitmq_prefetch_bounds_what_a_consumer_holds() {
    let prefetch = Prefetch { inbound: 160, outbound: 3, results: 160 };
    let t = rabbit_with(rabbit_settings(common::rabbitmq_url()), prefetch).await;
    send_all(&*t, Queue::Outbound, &bodies(10, "prefetch")).await;
    let first = receive_until(&*t, Queue::Outbound, Instant::now() + PATIENCE).await;
    // Give the broker time to push more than it may: it must not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let more = t.receive(Queue::Outbound, 10, Duration::ZERO).await.expect("receive");
    let held: Vec<Message> = first.into_iter().chain(more).collect();
    assert_eq!(held.len(), 3, "a consumer with prefetch 3 got {} messages", held.len());
    // The others are still ready in the queue (not in this process's buffer), for other workers.
    assert_eq!(t.depth(Queue::Outbound).await.expect("depth"), 7);
    // Acking frees room for exactly as many.
    let receipts: Vec<String> = held.iter().map(|m| m.receipt.clone()).collect();
    assert!(t.delete(Queue::Outbound, &receipts).await.expect("delete").is_empty());
    let (next, _) = receive_distinct(&*t, Queue::Outbound, 3).await;
    assert_eq!(next.len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.receive(Queue::Outbound, 10, Duration::ZERO).await.expect("receive").is_empty());
    assert_eq!(t.depth(Queue::Outbound).await.expect("depth"), 4);
}

#[tokio::test]
async fn rabbitmq_send_fails_entry_by_entry_when_the_broker_cannot_take_it() {
    let t = rabbitmq().await;
    let confirmed = metrics().amqp_confirms.with_label_values(&["ack"]).get();
    send_all(&*t, Queue::Results, &bodies(3, "confirmed")).await;
    assert!(metrics().amqp_confirms.with_label_values(&["ack"]).get() >= confirmed + 3);
    // The queues are gone: the broker returns what it cannot route, and every entry must fail, not succeed unseen.
    RabbitMqTransport::delete_queue_set(&t.settings).await.expect("delete queues");
    let results = t.send(Queue::Results, &bodies(3, "unroutable")).await.expect("send");
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|e| e.contains("NO_ROUTE"))), "{results:?}");
}

#[tokio::test]
async fn rabbitmq_connect_to_missing_queues_names_them() {
    let prefix = fresh_prefix();
    let settings =
        RabbitMqSettings { queue_prefix: prefix.clone(), url: common::rabbitmq_url().into(), ..Default::default() };
    let err = RabbitMqTransport::connect(&settings, &TransportSettings::default(), Prefetch::default())
        .await
        .expect_err("no queues exist under a fresh prefix");
    let msg = format!("{err:#}");
    for q in Queue::ALL {
        assert!(msg.contains(&q.name(&prefix)), "error does not name {}: {msg}", q.name(&prefix));
    }
    assert!(msg.contains("create_queues"), "error does not say how to fix it: {msg}");
}

#[tokio::test]
async fn rabbitmq_malformed_by_the_broker_too_reach_the_dlq_through_the_dead_letter_exchange() {
    // Redrive on a quorum queue: the broker's own x-delivery-limit (counting returns our count cannot see) and ours
    // agree that a message over the limit ends in the DLQ, not lost.
    let t = rabbitmq_quorum().await;
    redrive_after_max_receives(&*t).await;
}

#[tokio::test]
async fn rabbitmq_closed_connections_reconnect_and_unacked_messages_come_back() {
    let vhost = PrivateVhost::new();
    let t = rabbit_with(rabbit_settings(vhost.url()), Prefetch::default()).await;
    send_all(&*t, Queue::Inbound, &bodies(5, "held")).await;
    let (held, _) = receive_distinct(&*t, Queue::Inbound, 5).await;
    let reconnects = metrics().amqp_reconnects.get();

    vhost.close_all_connections();
    common::pipeline::wait_until(PATIENCE, "the transport to notice the lost connection", || async {
        !t.connected() || metrics().amqp_reconnects.get() > reconnects
    })
    .await;
    // Receipts of the lost connection cannot be acked: their messages come back instead.
    let receipts: Vec<String> = held.values().map(|m| m.receipt.clone()).collect();
    let failed = t.delete(Queue::Inbound, &receipts).await.expect("delete");
    assert_eq!(failed.len(), 5, "receipts of a closed connection were acked");
    common::pipeline::wait_until(PATIENCE, "a reconnect", || async {
        t.connected() && metrics().amqp_reconnects.get() > reconnects
    })
    .await;
    assert!(t.depth(Queue::Inbound).await.is_ok(), "depth works again after the reconnect");

    // The unacked messages come back, marked as received before; the consumer was restarted on its own.
    let (again, receipts) = receive_distinct(&*t, Queue::Inbound, 5).await;
    for (body, m) in &again {
        assert_eq!(m.id, held[body].id, "same message id after redelivery");
        assert!(m.receive_count >= 2, "redelivery counted: {m:?}");
    }
    assert!(t.delete(Queue::Inbound, &receipts).await.expect("delete").is_empty());
    // And sends go through again, confirmed.
    send_all(&*t, Queue::Inbound, &bodies(1, "after")).await;
    drop(t);
}
