//! What every stage is given: the common settings, the transport, the handlers, the shutdown phases, the
//! Acquirer's slot and the database breaker (`Shared`), and the task store each stage opens for itself.

use super::breaker;
use super::messages::TasksDue;
use super::shutdown::Phases;
use super::slot::Slot;
use crate::chaos::Chaos;
use crate::db::DatabaseSettings;
use crate::handlers::HandlerRegistry;
use crate::store::{Applied, RetrySettings, TaskStore};
use crate::transport::{Queue, Transport, TransportSettings};
use std::sync::Arc;
use tokio::sync::broadcast;

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
}
