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
pub mod cleaner;
pub mod commit_stage;
pub mod cron;
mod dead_letter;
pub mod due_listener;
pub mod maintenance;
pub mod messages;
pub mod persister;
pub mod poller;
pub mod reaper;
pub mod rescuer;
pub mod result_sink;
mod shared;
mod shutdown;
mod slot;
pub mod stats;
pub mod worker_pool;

pub use shared::{PipelineSettings, Shared};
pub use shutdown::{Phases, StopSignal, TrackGuard, Tracker};
pub use slot::Slot;
