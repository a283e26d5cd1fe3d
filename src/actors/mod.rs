//! The pipeline's actors (actix actors, each a child of a `supervision::Supervisor` and linked to it by a
//! `supervision::Link`, so a panic or an unasked-for stop is seen at once and the child restarted):
//!
//! ```text
//! inbound queue -> QueuePoller -> Persister -> Postgres (SCHEDULED)
//! Postgres -> Acquirer -> outbound queue -> QueuePoller -> WorkerPool -> results queue
//! results queue -> QueuePoller -> ResultSink -> Postgres (SUCCESS / ERROR / CRITICAL_ERROR)
//! StaleReaper: rescues stale ACQUIRED tasks, deletes old finished ones. StatsCollector: gauges.
//! CronScheduler: enqueues the ticks of cron schedules.
//! ```

pub mod acquirer;
pub mod breaker;
pub mod commit_stage;
pub mod cron;
pub mod due_listener;
pub mod messages;
pub mod persister;
pub mod poller;
pub mod reaper;
pub mod result_sink;
pub mod stats;
pub mod worker_pool;

use crate::chaos::Chaos;
use crate::db::DatabaseSettings;
use crate::handlers::HandlerRegistry;
use crate::metrics::metrics;
use crate::protocol::RpcError;
use crate::store::{Applied, RetrySettings, TaskStore};
use crate::transport::{Message as QueueMessage, Queue, Transport, TransportSettings};
use actix::prelude::*;
use messages::TasksDue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, watch, Notify};

/// The current address of a restartable actor, for the actors that send it messages: its supervisor's start
/// hook publishes every new instance here, so a restarted stage is found by its pollers at once.
pub struct Slot<M: actix::Message + Send>(Arc<RwLock<Option<Recipient<M>>>>)
where
    M::Result: Send;

impl<M: actix::Message + Send> Clone for Slot<M>
where
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<M: actix::Message + Send> Default for Slot<M>
where
    M::Result: Send,
{
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

impl<M: actix::Message + Send> Slot<M>
where
    M::Result: Send,
{
    pub fn set(&self, r: Recipient<M>) {
        *self.0.write().unwrap() = Some(r);
    }

    /// The current instance, if one is running.
    pub fn get(&self) -> Option<Recipient<M>> {
        self.0.read().unwrap().clone().filter(|r| r.connected())
    }
}

/// Counts in-flight work of one shutdown phase; `wait_idle` resolves when none is left.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<(AtomicUsize, Notify)>,
}

pub struct TrackGuard(Arc<(AtomicUsize, Notify)>);

impl Tracker {
    pub fn guard(&self) -> TrackGuard {
        self.inner.0.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.inner.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.inner.0.load(Ordering::SeqCst)
    }

    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.1.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0 .1.notify_waiters();
        }
    }
}

/// A stop signal: `stop` once, `stopped` resolves for every waiter.
#[derive(Clone)]
pub struct StopSignal {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }
}

impl StopSignal {
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The shutdown phases, in order: take no new work, drain each queue's stage, then stop for good.
#[derive(Clone, Default)]
pub struct Phases {
    /// Shutdown has begun: pollers finish their current long poll (never cancelled: its messages would stay
    /// invisible until their visibility timeout) and only short-poll from then on.
    pub begun: StopSignal,
    /// Acquirer stops; inbound pollers drain their queue, then stop.
    pub inbound: StopSignal,
    /// Outbound pollers drain, workers finish in-flight tasks.
    pub outbound: StopSignal,
    /// Results pollers drain.
    pub results: StopSignal,
    /// Grace period over: everything stops now.
    pub hard: StopSignal,
    /// Outbound pollers drain their queue on shutdown (this process's Acquirer sent those tasks); otherwise they
    /// stop receiving at once and leave the tasks to the other workers.
    pub drain_outbound: bool,
    pub inbound_work: Tracker,
    pub outbound_work: Tracker,
    pub results_work: Tracker,
}

impl Phases {
    pub fn signal(&self, queue: Queue) -> &StopSignal {
        match queue {
            Queue::Inbound | Queue::InboundDlq => &self.inbound,
            Queue::Outbound | Queue::OutboundDlq => &self.outbound,
            Queue::Results | Queue::ResultsDlq => &self.results,
        }
    }

    pub fn tracker(&self, queue: Queue) -> &Tracker {
        match queue {
            Queue::Inbound | Queue::InboundDlq => &self.inbound_work,
            Queue::Outbound | Queue::OutboundDlq => &self.outbound_work,
            Queue::Results | Queue::ResultsDlq => &self.results_work,
        }
    }
}

/// The settings every stage reads; each stage's own settings come to it in its constructor.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub database: DatabaseSettings,
    pub transport: TransportSettings,
    pub retry: RetrySettings,
    /// Names the queues in logs and metrics (`<prefix>-inbound`, ...).
    pub queue_prefix: String,
}

/// What every actor shares: common settings, transport, handlers, shutdown phases.
#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<PipelineSettings>,
    /// The transport (wrapped in chaos when chaos is configured).
    pub transport: Arc<dyn Transport>,
    pub handlers: HandlerRegistry,
    /// The actions a submission may name (the handlers' and `[actions] known`, or any).
    pub known_actions: crate::handlers::KnownActions,
    /// Fault injection, applied as decorators (see `chaos`).
    pub chaos: Chaos,
    pub phases: Phases,
    /// Every result the ResultSink applied (for in-process observers: load generator, benchmarks, tests).
    pub completions: broadcast::Sender<Applied>,
    /// The Acquirer of this process, if it runs the scheduler role: told [`TasksDue`] after new work commits.
    pub acquirer: Slot<TasksDue>,
    /// Stops the commit stages' pollers from receiving while the database is unavailable.
    pub breaker: breaker::Breaker,
}

impl Shared {
    /// A task store with its own pool, reported as `stage` in `scheduler_db_pool_connections`. Call it on the
    /// Arbiter that will use it: the pool's connection tasks live on the Arbiter that opens them.
    pub fn store(&self, stage: &str, pool_size: u32) -> TaskStore {
        let mut db = self.settings.database.clone();
        db.pool_size = pool_size.min(db.pool_size).max(1);
        db.min_idle = 0;
        TaskStore::new(crate::db::build_pool(&db), self.settings.retry.backoff()).reporting_as(stage)
    }

    /// Tells this process's Acquirer that tasks may be due (other processes learn it from NOTIFY).
    pub fn tasks_due(&self) {
        if let Some(a) = self.acquirer.get() {
            a.do_send(TasksDue);
        }
    }

    pub fn queue_label(&self, queue: Queue) -> String {
        queue.name(&self.settings.queue_prefix)
    }

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
