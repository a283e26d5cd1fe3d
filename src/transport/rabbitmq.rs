//! RabbitMQ transport (AMQP 0-9-1 through lapin), with the same at-least-once contract as SQS:
//!
//! - **Queues**: `<prefix>-inbound`, `-outbound`, `-results`, durable (classic, or quorum with
//!   `rabbitmq.quorum_queues`), each dead-lettering through its own fanout exchange `<name>-dlx` into `<name>-dlq`.
//!   Declared at start with `rabbitmq.create_queues`, else checked (a missing one is an error naming it).
//! - **Sends** are persistent messages published with **publisher confirms**: `send` returns an entry's `Ok` only
//!   once the broker confirmed it (a nack, an unroutable return or no confirm within `confirm_timeout_ms` is that
//!   entry's `Err`).
//! - **Receives** come from one consumer per queue and process, started at the first receive, whose prefetch is what
//!   the stage can take: a worker's is its concurrency, so it never holds more unacked messages than it can start
//!   and nothing waits behind a long task. Deliveries wait in a local buffer until a poller takes them.
//! - **Acks after commit**: `delete` acks. AMQP has no visibility timeout, so this transport keeps one: a receipt not
//!   deleted within `transport.visibility_timeout_secs` (extended by `change_visibility`) is put back, republished
//!   with its receive count and then acked, so its count survives; the workers' visibility heartbeat keeps long
//!   tasks' messages.
//! - **Delivery limit**: a message received more than [`MAX_RECEIVE_COUNT`] times goes to its DLQ at the receive
//!   that finds it over (our count, carried in a header; quorum queues also have `x-delivery-limit`, which counts
//!   the returns our count cannot see: a consumer that dies holding it).
//! - **Connection loss** (broker restart, `rabbitmqctl close_all_connections`): a keeper task reconnects with
//!   exponential backoff, re-declares, restarts the consumers; until then calls fail (or wait a little) and
//!   `connected()` is false (`/readyz` is 503 through `depth`). Unacked messages come back by themselves; fencing
//!   makes the duplicates harmless. Receipts of an old connection are refused by `delete` (their messages are
//!   redelivered anyway).
//!
//! Everything AMQP runs on a small runtime of its own ("amqp" thread), so the transport can be used from any
//! Arbiter. A log-based broker (Kafka) would keep the same trait: a receipt would carry a partition offset, and
//! `delete` would commit offsets up to the lowest one not yet settled (see `transport/mod.rs`).

use super::sqs::MAX_RECEIVE_COUNT;
use super::{Message, Queue, Transport, TransportError, TransportResult, TransportSettings, MAX_BATCH};
use crate::metrics::metrics;
use anyhow::{bail, Context as _};
use async_trait::async_trait;
use futures::future::join_all;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// Header carrying how many times a message was received before it was republished (our own delivery count).
const RECEIVES_HEADER: &str = "x-scheduler-receives";
/// Prefetch of a consumer on a dead-letter queue: only operators and tests read those, and a reader looking at
/// what is there should not be limited to a few messages per visibility timeout.
const DLQ_PREFETCH: u16 = 1000;
/// How often the keeper looks for expired receipts and checks the connection.
const TICK: Duration = Duration::from_millis(100);
/// How long a short poll waits for deliveries when the queue has messages ready (see `receive`).
const SHORT_POLL_WAIT: Duration = Duration::from_secs(1);
/// How long a send waits for a connection before its entries fail.
const SEND_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Unacked messages a consumer may hold, per main queue (the DLQs get [`DLQ_PREFETCH`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    pub inbound: u16,
    pub outbound: u16,
    pub results: u16,
}

impl Default for Prefetch {
    fn default() -> Self {
        Self { inbound: 160, outbound: 64, results: 160 }
    }
}

impl Prefetch {
    fn of(&self, queue: Queue) -> u16 {
        match queue {
            Queue::Inbound => self.inbound,
            Queue::Outbound => self.outbound,
            Queue::Results => self.results,
            _ => DLQ_PREFETCH,
        }
        .max(1)
    }
}

/// A delivery handed out by `receive`, until it is deleted or put back.
struct Held {
    queue: Queue,
    generation: u64,
    acker: Acker,
    visible_at: Instant,
    id: String,
    body: String,
    receive_count: u32,
}

/// The live connection and its channels; replaced as a whole on reconnect.
struct Live {
    generation: u64,
    connection: Arc<Connection>,
    /// Confirm-mode channels for publishing, used round robin.
    publishers: Vec<Channel>,
    /// One consumer channel per queue being received from.
    consumers: HashMap<Queue, Channel>,
}

/// Deliveries pushed by a queue's consumer, waiting for a `receive`.
struct Buffer {
    tx: mpsc::UnboundedSender<(u64, lapin::message::Delivery)>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, lapin::message::Delivery)>>,
}

struct Inner {
    settings: RabbitMqSettings,
    visibility: Duration,
    prefetch: Prefetch,
    runtime: Option<tokio::runtime::Runtime>,
    live: Mutex<Option<Arc<Live>>>,
    connected: watch::Sender<bool>,
    /// Queues some `receive` asked for: their consumers are (re)started by the keeper.
    wanted: Mutex<HashSet<Queue>>,
    signals: Arc<Signals>,
    buffers: HashMap<Queue, Buffer>,
    held: Mutex<HashMap<String, Held>>,
    seq: AtomicU64,
    generations: AtomicU64,
    next_publisher: AtomicUsize,
}

/// Wake-ups for the keeper, which holds only these (and a weak reference to the transport) while it waits.
#[derive(Default)]
struct Signals {
    wanted_changed: Notify,
    /// Something failed on the connection (a consumer ended, a confirm failed): the keeper checks it at once.
    failure: Notify,
    /// The transport was dropped.
    stop: Notify,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.signals.stop.notify_one();
        let live = self.live.get_mut().unwrap().take();
        if let Some(rt) = self.runtime.take() {
            // A runtime cannot be dropped inside another one's context: close and drop it on a thread of its own.
            std::thread::spawn(move || {
                if let Some(live) = live {
                    let _ = rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(2), live.connection.close(200, "bye".into())).await
                    });
                }
                rt.shutdown_background();
            });
        }
    }
}

/// The RabbitMQ transport; clones share the connection.
#[derive(Clone)]
pub struct RabbitMqTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitMqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqTransport")
            .field("queue_prefix", &self.inner.settings.queue_prefix)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

fn amqp_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("amqp")
        .enable_all()
        .build()
        .context("starting the AMQP runtime")
}

impl RabbitMqTransport {
    /// Connects, declares (with `create_queues`) or checks the queues, and starts the keeper that reconnects.
    pub async fn connect(
        settings: &RabbitMqSettings,
        transport: &TransportSettings,
        prefetch: Prefetch,
    ) -> anyhow::Result<RabbitMqTransport> {
        let runtime = amqp_runtime()?;
        let handle = runtime.handle().clone();
        let first = {
            let settings = settings.clone();
            handle.spawn(async move { open(&settings, 1).await }).await.context("AMQP runtime").and_then(|r| r)
        };
        let first = match first {
            Ok(live) => live,
            Err(e) => {
                // A runtime must not be dropped inside another one's context.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let buffers = Queue::ALL
            .into_iter()
            .map(|q| {
                let (tx, rx) = mpsc::unbounded_channel();
                (q, Buffer { tx, rx: tokio::sync::Mutex::new(rx) })
            })
            .collect();
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            visibility: Duration::from_secs(transport.visibility_timeout_secs as u64),
            prefetch,
            runtime: Some(runtime),
            live: Mutex::new(Some(Arc::new(first))),
            connected: watch::channel(true).0,
            wanted: Mutex::default(),
            signals: Arc::default(),
            buffers,
            held: Mutex::default(),
            seq: AtomicU64::new(0),
            generations: AtomicU64::new(1),
            next_publisher: AtomicUsize::new(0),
        });
        metrics().amqp_connected.set(1);
        handle.spawn(keeper(Arc::downgrade(&inner), inner.signals.clone()));
        Ok(RabbitMqTransport { inner })
    }

    /// Declares whatever of `rabbitmq.queue_prefix`'s queues is missing, whatever `create_queues` says, and connects.
    /// Tests use it with a fresh prefix to get a private queue set.
    pub async fn create_queues(
        settings: &RabbitMqSettings,
        transport: &TransportSettings,
        prefetch: Prefetch,
    ) -> anyhow::Result<RabbitMqTransport> {
        let settings = RabbitMqSettings { create_queues: true, ..settings.clone() };
        Self::connect(&settings, transport, prefetch).await
    }

    /// Whether the transport holds a live connection now.
    pub fn connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Deletes the queues and exchanges of `rabbitmq.queue_prefix` with a connection of its own; returns how many
    /// queues existed. For test and benchmark cleanup, which may run on any thread and runtime.
    pub async fn delete_queue_set(settings: &RabbitMqSettings) -> anyhow::Result<usize> {
        let rt = amqp_runtime()?;
        let settings = settings.clone();
        let out = rt.spawn(async move {
            let connection = connect(&settings, ConnectionProperties::default()).await?;
            let mut deleted = 0;
            for q in Queue::ALL {
                // A failed delete (not found) closes the channel: one channel per call.
                let ch = connection.create_channel().await?;
                if ch.queue_delete(q.name(&settings.queue_prefix).into(), QueueDeleteOptions::default()).await.is_ok() {
                    deleted += 1;
                }
                if !q.is_dlq() {
                    let ch = connection.create_channel().await?;
                    let _ = ch
                        .exchange_delete(dlx_name(q, &settings.queue_prefix).into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = connection.close(200, "bye".into()).await;
            anyhow::Ok(deleted)
        });
        let res = out.await.context("AMQP runtime");
        rt.shutdown_background();
        res?
    }

    /// Consumers attached to `queue` (of any process), from a passive declare.
    pub async fn consumers(&self, queue: Queue) -> TransportResult<u32> {
        Ok(self.passive_declare(queue).await?.consumer_count())
    }

    async fn passive_declare(&self, queue: Queue) -> TransportResult<lapin::Queue> {
        let live = self.current().ok_or_else(|| self.not_connected(queue))?;
        let name = self.queue_name(queue);
        let err = |e: lapin::Error| TransportError::new(queue, format!("queue.declare passive {name}: {e}"));
        // A failed passive declare closes its channel, so each check uses a channel of its own.
        let ch = live.connection.create_channel().await.map_err(err)?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let q = ch.queue_declare(name.as_str().into(), passive, FieldTable::default()).await.map_err(err)?;
        let _ = ch.close(200, "checked".into()).await;
        Ok(q)
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.inner.live.lock().unwrap().clone()
    }

    /// The live connection, waiting up to `wait` for one.
    async fn live_within(&self, wait: Duration) -> Option<Arc<Live>> {
        if let Some(l) = self.current() {
            return Some(l);
        }
        let mut rx = self.inner.connected.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|c| *c)).await;
        self.current()
    }

    fn not_connected(&self, queue: Queue) -> TransportError {
        TransportError::new(queue, "not connected to RabbitMQ (reconnecting)")
    }

    fn queue_name(&self, queue: Queue) -> String {
        queue.name(&self.inner.settings.queue_prefix)
    }

    /// Publishes `bodies` (with their ids and receive counts) to `queue` and waits for the broker's confirms.
    async fn publish(&self, queue: Queue, entries: &[(String, &str, u32)]) -> Vec<Result<(), String>> {
        if entries.is_empty() {
            return Vec::new();
        }
        let Some(live) = self.live_within(SEND_CONNECT_WAIT).await else {
            return vec![Err("not connected to RabbitMQ".into()); entries.len()];
        };
        let i = self.inner.next_publisher.fetch_add(1, Ordering::Relaxed) % live.publishers.len();
        let channel = &live.publishers[i];
        let routing_key: ShortString = self.queue_name(queue).into();
        let mut pending = Vec::with_capacity(entries.len());
        for (id, body, receives) in entries {
            let mut props = BasicProperties::default().with_delivery_mode(2).with_message_id(id.as_str().into());
            if *receives > 0 {
                let mut headers = FieldTable::default();
                headers.insert(RECEIVES_HEADER.into(), AMQPValue::LongUInt(*receives));
                props = props.with_headers(headers);
            }
            // Mandatory: a message no queue takes comes back as a return, reported as that entry's failure.
            let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
            pending.push(channel.basic_publish("".into(), routing_key.clone(), opts, body.as_bytes(), props).await);
        }
        let timeout = Duration::from_millis(self.inner.settings.confirm_timeout_ms);
        let confirms = join_all(pending.into_iter().map(|p| async move {
            let confirm = match p {
                Ok(c) => c,
                Err(e) => return Err(format!("publish: {e}")),
            };
            match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(ret)))) => {
                    Err(format!("returned by the broker: {} {}", ret.reply_code, ret.reply_text))
                }
                Ok(Ok(Confirmation::Nack(_))) => Err("nacked by the broker".into()),
                Ok(Ok(Confirmation::NotRequested)) => Err("publisher confirms are off".into()),
                Ok(Err(e)) => Err(format!("confirm: {e}")),
                Err(_) => Err(format!("no confirm within {timeout:?}")),
            }
        }))
        .await;
        let m = metrics();
        let (mut acks, mut failed) = (0u64, 0u64);
        for c in &confirms {
            if c.is_ok() {
                acks += 1;
            } else {
                failed += 1;
            }
        }
        m.amqp_confirms.with_label_values(&["ack"]).inc_by(acks);
        if failed > 0 {
            m.amqp_confirms.with_label_values(&["failed"]).inc_by(failed);
            self.inner.signals.failure.notify_one();
        }
        confirms
    }

    /// Puts deliveries back: republished with their receive count (so it survives), then acked. One whose
    /// republish fails is nacked with requeue instead (its count is then not carried).
    async fn put_back(&self, held: Vec<Held>) {
        let current = self.current().map(|l| l.generation);
        let mut by_queue: HashMap<Queue, Vec<Held>> = HashMap::new();
        for h in held {
            // From an older connection: the broker has already put it back.
            if Some(h.generation) == current {
                by_queue.entry(h.queue).or_default().push(h);
            }
        }
        for (queue, held) in by_queue {
            let entries: Vec<(String, &str, u32)> =
                held.iter().map(|h| (h.id.clone(), h.body.as_str(), h.receive_count)).collect();
            let sent = self.publish(queue, &entries).await;
            let settle = held.iter().zip(sent).map(|(h, ok)| async move {
                let r = match ok {
                    Ok(()) => h.acker.ack(BasicAckOptions::default()).await,
                    Err(_) => h.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
                };
                if let Err(e) = r {
                    tracing::debug!(%queue, error = %e, "putting a message back failed; the broker redelivers it");
                }
            });
            join_all(settle).await;
        }
    }

    /// Takes the receipts whose visibility ran out.
    fn take_expired(&self) -> Vec<Held> {
        let now = Instant::now();
        let mut held = self.inner.held.lock().unwrap();
        let expired: Vec<String> = held.iter().filter(|(_, h)| h.visible_at <= now).map(|(r, _)| r.clone()).collect();
        expired.into_iter().filter_map(|r| held.remove(&r)).collect()
    }

    fn receipt(&self, generation: u64) -> String {
        format!("{generation}.{}", self.inner.seq.fetch_add(1, Ordering::Relaxed))
    }
}

fn dlx_name(queue: Queue, prefix: &str) -> String {
    format!("{}-dlx", queue.name(prefix))
}

/// Opens a connection with its publisher channels and declares (or checks) the queues.
/// A connection with the configured TLS settings (used by `amqps://` URLs).
async fn connect(settings: &RabbitMqSettings, props: ConnectionProperties) -> anyhow::Result<Connection> {
    lapin::DefaultConnectionBuilder::new()?
        .with_uri_str(settings.url.expose().to_owned())
        .with_properties(props)
        .with_tls_config(settings.tls_config()?)
        .connect()
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", redact_url(&settings.url)))
}

async fn open(settings: &RabbitMqSettings, generation: u64) -> anyhow::Result<Live> {
    let props =
        ConnectionProperties::default().with_connection_name(format!("sqs-scheduler-{}", std::process::id()).into());
    let connection = connect(settings, props).await?;
    if settings.create_queues {
        declare(&connection, settings).await?;
    } else {
        check(&connection, &settings.queue_prefix).await?;
    }
    let mut publishers = Vec::new();
    for _ in 0..settings.publish_channels.max(1) {
        let ch = connection.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        publishers.push(ch);
    }
    Ok(Live { generation, connection: Arc::new(connection), publishers, consumers: HashMap::new() })
}

/// Declares the exchanges and queues (idempotent for equal arguments).
async fn declare(connection: &Connection, settings: &RabbitMqSettings) -> anyhow::Result<()> {
    let ch = connection.create_channel().await?;
    let prefix = &settings.queue_prefix;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    for main in [Queue::Inbound, Queue::Outbound, Queue::Results] {
        let (name, dlq, dlx) = (main.name(prefix), main.dlq().name(prefix), dlx_name(main, prefix));
        let mut dlq_args = FieldTable::default();
        let mut args = FieldTable::default();
        if settings.quorum_queues {
            dlq_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(MAX_RECEIVE_COUNT as i32));
        }
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.as_str().into()));
        let exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(dlx.as_str().into(), ExchangeKind::Fanout, exchange, FieldTable::default())
            .await
            .with_context(|| format!("declaring exchange {dlx}"))?;
        ch.queue_declare(dlq.as_str().into(), durable, dlq_args).await.with_context(|| format!("declaring {dlq}"))?;
        ch.queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding {dlq} to {dlx}"))?;
        ch.queue_declare(name.as_str().into(), durable, args).await.with_context(|| {
            format!("declaring {name} (a queue declared before with other arguments, e.g. classic vs quorum, must be deleted first)")
        })?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Checks that all six queues exist; the error names the missing ones.
async fn check(connection: &Connection, prefix: &str) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for q in Queue::ALL {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let ch = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ch.queue_declare(q.name(prefix).into(), passive, FieldTable::default()).await {
            Ok(_) => {
                let _ = ch.close(200, "checked".into()).await;
            }
            Err(_) => missing.push(q.name(prefix)),
        }
    }
    if !missing.is_empty() {
        bail!(
            "RabbitMQ queue(s) {} do not exist; set rabbitmq.create_queues = true for one process (it declares \
             them, with their dead-letter exchanges and queues) or declare them as README.md describes",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Starts the consumer of `queue` on `live`: its own channel with the queue's prefetch, pushing into its buffer.
async fn start_consumer(inner: &Arc<Inner>, live: &Live, queue: Queue) -> anyhow::Result<Channel> {
    let ch = live.connection.create_channel().await?;
    ch.basic_qos(inner.prefetch.of(queue), BasicQosOptions::default()).await?;
    let name = queue.name(&inner.settings.queue_prefix);
    let tag = format!("{name}-{}-{}", std::process::id(), live.generation);
    let mut consumer = ch
        .basic_consume(name.as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .with_context(|| format!("consuming {name}"))?;
    let tx = inner.buffers[&queue].tx.clone();
    let generation = live.generation;
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        while let Some(d) = consumer.next().await {
            match d {
                Ok(d) => {
                    if tx.send((generation, d)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %name, error = %e, "RabbitMQ consumer failed");
                    break;
                }
            }
        }
        // The consumer ended (channel or connection closed, queue deleted): the keeper finds out why.
        if let Some(inner) = weak.upgrade() {
            inner.signals.failure.notify_one();
        }
    });
    Ok(ch)
}

/// Keeps the connection: starts wanted consumers, puts expired receipts back, and on a lost connection reconnects
/// with exponential backoff (`reconnect_initial_ms` doubling to `reconnect_max_ms`). Ends with the transport.
async fn keeper(weak: std::sync::Weak<Inner>, signals: Arc<Signals>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let transport = RabbitMqTransport { inner };
        let live = transport.current();
        let healthy = match &live {
            Some(l) => l.connection.status().connected() && l.publishers.iter().all(|c| c.status().connected()),
            None => false,
        };
        if !healthy {
            reconnect(&transport).await;
            continue;
        }
        let live = live.expect("healthy");
        // Consumers asked for but not running on this connection.
        let wanted: Vec<Queue> = transport.inner.wanted.lock().unwrap().iter().copied().collect();
        let missing: Vec<Queue> = wanted.into_iter().filter(|q| !live.consumers.contains_key(q)).collect();
        let consumers_ok = live.consumers.values().all(|c| c.status().connected());
        if !consumers_ok {
            tracing::warn!("a RabbitMQ consumer channel closed; reconnecting");
            transport.drop_connection();
            continue;
        }
        if !missing.is_empty() {
            let mut started = live.consumers.clone();
            let mut failed = false;
            for q in missing {
                match start_consumer(&transport.inner, &live, q).await {
                    Ok(ch) => {
                        started.insert(q, ch);
                    }
                    Err(e) => {
                        tracing::warn!(queue = %q, error = %format!("{e:#}"), "starting a RabbitMQ consumer failed");
                        failed = true;
                        break;
                    }
                }
            }
            let next = Live {
                generation: live.generation,
                connection: live.connection.clone(),
                publishers: live.publishers.clone(),
                consumers: started,
            };
            *transport.inner.live.lock().unwrap() = Some(Arc::new(next));
            if failed {
                transport.drop_connection();
            }
            continue;
        }
        let expired = transport.take_expired();
        if !expired.is_empty() {
            transport.put_back(expired).await;
        }
        drop(transport);
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.wanted_changed.notified() => {}
            _ = signals.failure.notified() => {}
            _ = signals.stop.notified() => return,
        }
    }
}

impl RabbitMqTransport {
    /// Forgets the current connection: its deliveries come back from the broker, its receipts are void.
    fn drop_connection(&self) {
        let old = self.inner.live.lock().unwrap().take();
        if let Some(old) = old {
            let generation = old.generation;
            self.inner.held.lock().unwrap().retain(|_, h| h.generation != generation);
            self.inner.connected.send_replace(false);
            metrics().amqp_connected.set(0);
            tracing::warn!(generation, "RabbitMQ connection lost; reconnecting");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), old.connection.close(320, "reconnecting".into()))
                    .await;
            });
        }
    }
}

async fn reconnect(t: &RabbitMqTransport) {
    t.drop_connection();
    let s = &t.inner.settings;
    let mut delay = Duration::from_millis(s.reconnect_initial_ms);
    let max = Duration::from_millis(s.reconnect_max_ms.max(s.reconnect_initial_ms));
    let generation = t.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
    loop {
        match open(s, generation).await {
            Ok(live) => {
                *t.inner.live.lock().unwrap() = Some(Arc::new(live));
                t.inner.connected.send_replace(true);
                metrics().amqp_connected.set(1);
                metrics().amqp_reconnects.inc();
                tracing::info!(generation, "RabbitMQ reconnected");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "RabbitMQ reconnect failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = t.inner.signals.stop.notified() => return,
                }
                delay = (delay * 2).min(max);
            }
        }
    }
}

/// The delivery's receive count: ours from the header, plus this receive, plus what the broker saw since the last
/// republish (quorum: `x-delivery-count` returns; classic: 1 if it is marked redelivered, a lower bound).
fn receive_count(d: &lapin::message::Delivery) -> u32 {
    let header = |name: &str| -> Option<u32> {
        let headers = d.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongUInt(v) => Some(*v),
            AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
            AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
            AMQPValue::ShortUInt(v) => Some(*v as u32),
            AMQPValue::ShortInt(v) => u32::try_from(*v).ok(),
            _ => None,
        }
    };
    let ours = header(RECEIVES_HEADER).unwrap_or(0);
    let broker = header("x-delivery-count").unwrap_or(u32::from(d.redelivered));
    ours + broker + 1
}

#[async_trait]
impl Transport for RabbitMqTransport {
    async fn receive(&self, queue: Queue, max: usize, wait: Duration) -> TransportResult<Vec<Message>> {
        let max = max.clamp(1, MAX_BATCH);
        let newly_wanted = self.inner.wanted.lock().unwrap().insert(queue);
        if newly_wanted {
            self.inner.signals.wanted_changed.notify_one();
        }
        let until = tokio::time::Instant::now() + wait;
        let mut rx = match tokio::time::timeout_at(until, self.inner.buffers[&queue].rx.lock()).await {
            Ok(rx) => rx,
            Err(_) => return Ok(Vec::new()),
        };
        // A short poll (shutdown drains with them) must not answer "empty" while the broker still has messages
        // ready that it has not pushed yet (this consumer's prefetch window is full until its acks): then it
        // waits a little for them, as a short poll on SQS would find them.
        let until = if wait.is_zero() && rx.is_empty() && self.depth(queue).await.unwrap_or(0) > 0 {
            tokio::time::Instant::now() + SHORT_POLL_WAIT
        } else {
            until
        };
        let mut out = Vec::new();
        // No await between taking a delivery and holding it, so a receive can be dropped while it waits.
        while out.len() < max {
            let next = if out.is_empty() {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(d)) => d,
                    Ok(None) | Err(_) => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            let (generation, d) = next;
            if self.current().map(|l| l.generation) != Some(generation) {
                continue; // from a lost connection: the broker redelivers it
            }
            let count = receive_count(&d);
            if count > MAX_RECEIVE_COUNT && !queue.is_dlq() {
                // Over the delivery limit: through the queue's dead-letter exchange into its DLQ.
                let dlq = self.queue_name(queue.dlq());
                tracing::warn!(queue = %self.queue_name(queue), receives = count, "message over the delivery limit moved to the dead-letter queue");
                metrics().messages_dead_lettered.with_label_values(&[dlq.as_str(), "delivery_limit"]).inc();
                let acker = d.acker.clone();
                if let Some(rt) = &self.inner.runtime {
                    rt.spawn(async move { acker.reject(BasicRejectOptions { requeue: false }).await });
                }
                continue;
            }
            let id = d.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
            let body = String::from_utf8_lossy(&d.data).into_owned();
            let receipt = self.receipt(generation);
            let held = Held {
                queue,
                generation,
                acker: d.acker,
                visible_at: Instant::now() + self.inner.visibility,
                id: id.clone(),
                body: body.clone(),
                receive_count: count,
            };
            self.inner.held.lock().unwrap().insert(receipt.clone(), held);
            out.push(Message { id, receipt, body, receive_count: count });
        }
        if out.is_empty() && !self.connected() {
            return Err(self.not_connected(queue));
        }
        Ok(out)
    }

    async fn send(&self, queue: Queue, bodies: &[String]) -> TransportResult<Vec<Result<(), String>>> {
        let entries: Vec<(String, &str, u32)> =
            bodies.iter().map(|b| (format!("{:032x}", rand::random::<u128>()), b.as_str(), 0)).collect();
        Ok(self.publish(queue, &entries).await)
    }

    /// Acks. A receipt that is unknown, already deleted, put back, or from a lost connection is returned.
    async fn delete(&self, queue: Queue, receipts: &[String]) -> TransportResult<Vec<String>> {
        let mut seen = HashSet::new();
        let mut taken = Vec::new();
        let mut failed = Vec::new();
        {
            let mut held = self.inner.held.lock().unwrap();
            for r in receipts {
                if !seen.insert(r.as_str()) {
                    continue;
                }
                match held.remove(r) {
                    Some(h) if h.queue == queue => taken.push((r.clone(), h)),
                    Some(h) => {
                        held.insert(r.clone(), h);
                        failed.push(r.clone());
                    }
                    None => failed.push(r.clone()),
                }
            }
        }
        let acks = join_all(taken.into_iter().map(|(r, h)| async move {
            match h.acker.ack(BasicAckOptions::default()).await {
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(%queue, error = %e, "ack failed; the broker redelivers the message");
                    Some(r)
                }
            }
        }))
        .await;
        failed.extend(acks.into_iter().flatten());
        Ok(failed)
    }

    /// Moves the receipts' put-back time to `timeout` from now; zero puts them back at once.
    async fn change_visibility(&self, queue: Queue, receipts: &[String], timeout: Duration) -> TransportResult<()> {
        let at = Instant::now() + timeout;
        let mut missing = 0;
        let mut now_due = Vec::new();
        {
            let mut held = self.inner.held.lock().unwrap();
            for r in receipts {
                if timeout.is_zero() {
                    match held.remove(r) {
                        Some(h) => now_due.push(h),
                        None => missing += 1,
                    }
                } else {
                    match held.get_mut(r) {
                        Some(h) => h.visible_at = at,
                        None => missing += 1,
                    }
                }
            }
        }
        if !now_due.is_empty() {
            self.put_back(now_due).await;
        }
        if missing > 0 {
            return Err(TransportError::new(
                queue,
                format!("change_visibility: {missing} of {} receipts are not held (deleted, expired or from a lost connection)", receipts.len()),
            ));
        }
        Ok(())
    }

    /// Messages ready in the queue (not those delivered and unacked). Fails while disconnected (`/readyz`).
    async fn depth(&self, queue: Queue) -> TransportResult<u64> {
        Ok(self.passive_declare(queue).await?.message_count() as u64)
    }

    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    /// Deliveries are taken from the local buffer with no await before they are held: dropping a waiting receive
    /// loses nothing.
    fn cancel_safe_receive(&self) -> bool {
        true
    }
}

/// The URL with its password replaced, for logs and `config`.
pub use crate::secret::redact_url;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqSettings {
    /// AMQP URL (`amqps://` for TLS); the vhost is the path (`%2f` is `/`). The password is redacted by `config`.
    pub url: crate::secret::SecretUrl,
    /// Queues are `<prefix>-inbound`, `<prefix>-outbound`, `<prefix>-results`, each with `<name>-dlq` (fed by the
    /// fanout exchange `<name>-dlx`).
    pub queue_prefix: String,
    /// Declare missing queues and exchanges at start (and after every reconnect); else they must exist.
    pub create_queues: bool,
    /// Quorum queues (replicated; `x-delivery-limit` enforced by the broker) instead of classic durable queues.
    /// Changing it for existing queues needs them deleted first (RabbitMQ refuses a re-declare with other arguments).
    pub quorum_queues: bool,
    /// Publisher channels (confirm mode) used round robin.
    pub publish_channels: usize,
    /// A publish not confirmed by the broker within this (milliseconds) has failed.
    pub confirm_timeout_ms: u64,
    /// First delay before reconnecting after a lost connection (milliseconds), doubling per failed attempt ...
    pub reconnect_initial_ms: u64,
    /// ... up to this (milliseconds).
    pub reconnect_max_ms: u64,
    /// amqps: PEM file of certificate authorities trusted besides the system's (a private CA, a self-signed broker).
    pub tls_ca_file: Option<String>,
    /// amqps with client certificates (RabbitMQ's `verify_peer`, or x509 authentication): PEM certificate chain ...
    pub tls_client_cert_file: Option<String>,
    /// ... and its PKCS#8 PEM private key (unencrypted).
    pub tls_client_key_file: Option<String>,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_prefix: "scheduler".into(),
            create_queues: false,
            quorum_queues: false,
            publish_channels: 4,
            confirm_timeout_ms: 10_000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 10_000,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

impl RabbitMqSettings {
    /// The TLS settings for `amqps://` (read from the PEM files named; the system's roots are always trusted).
    pub fn tls_config(&self) -> anyhow::Result<lapin::tcp::OwnedTLSConfig> {
        let read = |key: &str, path: &Option<String>| -> anyhow::Result<Option<String>> {
            let Some(path) = path else { return Ok(None) };
            let pem = std::fs::read_to_string(path).with_context(|| format!("rabbitmq.{key}: reading {path}"))?;
            if !pem.contains("-----BEGIN ") {
                bail!("rabbitmq.{key}: {path} holds no PEM block");
            }
            Ok(Some(pem))
        };
        let cert_chain = read("tls_ca_file", &self.tls_ca_file)?;
        let identity = match (
            read("tls_client_cert_file", &self.tls_client_cert_file)?,
            read("tls_client_key_file", &self.tls_client_key_file)?,
        ) {
            (Some(pem), Some(key)) => {
                Some(lapin::tcp::OwnedIdentity::PKCS8 { pem: pem.into_bytes(), key: key.into_bytes() })
            }
            _ => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig { identity, cert_chain })
    }

    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "amqp" | "amqps") => {}
            _ => return Err("rabbitmq.url: must be an amqp:// or amqps:// URL".into()),
        }
        if self.queue_prefix.is_empty()
            || !self.queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(
                "rabbitmq.queue_prefix: must be non-empty and use only letters, digits, '-', '_' and '.'".into()
            );
        }
        if !(1..=64).contains(&self.publish_channels) {
            return Err("rabbitmq.publish_channels: must be between 1 and 64".into());
        }
        if !(100..=600_000).contains(&self.confirm_timeout_ms) {
            return Err("rabbitmq.confirm_timeout_ms: must be between 100 and 600000".into());
        }
        if self.tls_client_cert_file.is_some() != self.tls_client_key_file.is_some() {
            return Err("rabbitmq.tls_client_cert_file: set it together with rabbitmq.tls_client_key_file".into());
        }
        if let Err(e) = self.tls_config() {
            return Err(format!("{e:#}"));
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err(
                "rabbitmq.reconnect_max_ms: must be at least rabbitmq.reconnect_initial_ms, which must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_urls_redacted() {
        RabbitMqSettings::default().validate().unwrap();
        // The url crate percent-encodes the brackets, as in the redacted database URL.
        let redacted = redact_url("amqp://u:secret@h:5672/%2f");
        assert!(!redacted.contains("secret") && redacted.contains("redacted"), "{redacted}");
        assert!(redacted.ends_with("@h:5672/%2f"), "{redacted}");
        let bad = RabbitMqSettings { url: "http://x".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().starts_with("rabbitmq.url"));
    }

    #[test]
    fn prefetch_per_queue() {
        let p = Prefetch { inbound: 5, outbound: 0, results: 7 };
        assert_eq!((p.of(Queue::Inbound), p.of(Queue::Outbound), p.of(Queue::Results)), (5, 1, 7));
        assert_eq!(p.of(Queue::InboundDlq), DLQ_PREFETCH);
    }
}
