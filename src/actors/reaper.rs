//! StaleReaper: every `reaper.interval_secs`, ACQUIRED tasks whose worker went silent become ERROR (retried) or
//! CRITICAL_ERROR: no heartbeat for `reaper.stale_timeout_secs` once their handler started, or not started within
//! `reaper.queue_timeout_secs` of their acquisition (see `TaskStore::rescue_stale`); every `reaper.clean_interval_secs`, finished tasks older than
//! `reaper.retention_secs` are deleted. Both in batches of `reaper.batch_size`, until a batch comes back short,
//! each statement bounded by `reaper.query_timeout_secs`. River-style: its settings, defaults and validation live
//! here, and `rescue_once` / `clean_once` return what they did ([`RunOnce`] runs both now).

use super::messages::{Reaped, RunOnce};
use super::Shared;
use crate::metrics::metrics;
use crate::store::{TaskState, TaskStore};
use crate::supervision::Link;
use crate::workflow::WorkflowState;
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub struct StaleReaper {
    shared: Shared,
    settings: ReaperSettings,
    link: Link,
    store: Option<TaskStore>,
}

impl StaleReaper {
    pub fn new(shared: Shared, settings: ReaperSettings, link: Link) -> Self {
        Self { shared, settings, link, store: None }
    }
}

impl Actor for StaleReaper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let store = self.shared.store("stale_reaper", 2);
        self.store = Some(store.clone());
        let (shared, cfg) = (self.shared.clone(), self.settings.clone());
        ctx.spawn(
            every(cfg.interval_secs, move || rescue_once(shared.clone(), cfg.clone(), store.clone())).into_actor(self),
        );
        let (shared, cfg, store) = (self.shared.clone(), self.settings.clone(), self.store.clone().expect("set"));
        ctx.spawn(
            every(cfg.clean_interval_secs, move || clean_once(shared.clone(), cfg.clone(), store.clone()))
                .into_actor(self),
        );
    }
}

impl Handler<RunOnce> for StaleReaper {
    type Result = ResponseFuture<Reaped>;

    /// One rescue and one clean pass now (tests await this instead of sleeping through an interval).
    fn handle(&mut self, _: RunOnce, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&["stale_reaper", "run_once"]).inc();
        let (shared, cfg, store) = (self.shared.clone(), self.settings.clone(), self.store.clone().expect("started"));
        Box::pin(async move {
            let rescued = rescue_once(shared.clone(), cfg.clone(), store.clone()).await;
            Reaped { rescued, cleaned: clean_once(shared, cfg, store).await }
        })
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<super::messages::InjectPanic> for StaleReaper {
    type Result = ();
    fn handle(&mut self, _: super::messages::InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in StaleReaper");
    }
}

/// Runs `pass` every `secs` seconds, one pass at a time.
async fn every<F, Fut>(secs: f64, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pass().await;
    }
}

/// One rescue pass: batches until one comes back short. Returns how many tasks were rescued.
pub async fn rescue_once(shared: Shared, cfg: ReaperSettings, store: TaskStore) -> usize {
    let mut total = 0;
    loop {
        let call = store.rescue_stale(cfg.stale_timeout_secs, cfg.queue_timeout_secs, cfg.batch_size);
        match tokio::time::timeout(cfg.query_timeout(), call).await {
            Ok(Ok(rescued)) => {
                total += rescued.len();
                metrics().tasks_rescued.inc_by(rescued.len() as u64);
                for (id, state) in &rescued {
                    tracing::warn!(task_id = id, state = %state, "stale task rescued");
                }
                if (rescued.len() as i64) < cfg.batch_size {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "rescue_stale failed");
                break;
            }
            Err(_) => {
                tracing::error!(timeout_secs = cfg.query_timeout_secs, "rescue_stale timed out");
                break;
            }
        }
    }
    if total > 0 {
        shared.tasks_due();
    }
    total
}

/// One clean pass: batches until one comes back short. Returns how many finished tasks (outside workflows) and
/// finished workflows were deleted.
pub async fn clean_once(_shared: Shared, cfg: ReaperSettings, store: TaskStore) -> usize {
    let mut total = 0;
    loop {
        let call = store.clean_finished(cfg.retention_secs, &cfg.clean_states, cfg.batch_size);
        match tokio::time::timeout(cfg.query_timeout(), call).await {
            Ok(Ok(n)) => {
                total += n;
                metrics().tasks_cleaned.inc_by(n as u64);
                if (n as i64) < cfg.batch_size {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "clean_finished failed");
                break;
            }
            Err(_) => {
                tracing::error!(timeout_secs = cfg.query_timeout_secs, "clean_finished timed out");
                break;
            }
        }
    }
    // Workflows (with all their stages) once the whole workflow finished: SUCCESS ones where SUCCESS tasks are
    // cleaned, FAILED ones where CRITICAL_ERROR tasks are, CANCELLED ones where CANCELLED tasks are.
    let workflow_states: Vec<WorkflowState> = cfg
        .clean_states
        .iter()
        .filter_map(|s| match s {
            TaskState::Success => Some(WorkflowState::Success),
            TaskState::CriticalError => Some(WorkflowState::Failed),
            TaskState::Cancelled => Some(WorkflowState::Cancelled),
            _ => None,
        })
        .collect();
    loop {
        let call = store.clean_workflows(cfg.retention_secs, &workflow_states, cfg.batch_size);
        match tokio::time::timeout(cfg.query_timeout(), call).await {
            Ok(Ok(n)) => {
                total += n;
                if (n as i64) < cfg.batch_size {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "clean_workflows failed");
                break;
            }
            Err(_) => {
                tracing::error!(timeout_secs = cfg.query_timeout_secs, "clean_workflows timed out");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, "old finished tasks and workflows cleaned");
    }
    total
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReaperSettings {
    /// How often stale rescue runs (seconds).
    pub interval_secs: f64,
    /// A running task whose worker sent no heartbeat for this long is rescued (seconds). Workers refresh it every
    /// `worker.heartbeat_interval_secs`, so a long handler is not rescued while it runs.
    pub stale_timeout_secs: f64,
    /// A task acquired this long ago whose handler never started (it waits in the outbound queue, or its worker died
    /// first) is rescued (seconds): longer than the stale timeout, so a backlog is not rescued and sent again.
    pub queue_timeout_secs: f64,
    /// Rows per rescue or clean statement.
    pub batch_size: i64,
    /// How often the cleaner runs (seconds).
    pub clean_interval_secs: f64,
    /// Finished tasks older than this are deleted (seconds).
    pub retention_secs: f64,
    /// Which finished states the cleaner deletes.
    pub clean_states: Vec<TaskState>,
    /// Each rescue or clean statement is abandoned after this long (seconds), so a hung connection cannot stall
    /// the reaper.
    pub query_timeout_secs: f64,
}

impl Default for ReaperSettings {
    fn default() -> Self {
        Self {
            interval_secs: 5.0,
            stale_timeout_secs: 120.0,
            queue_timeout_secs: 600.0,
            batch_size: 1_000,
            clean_interval_secs: 60.0,
            retention_secs: 3_600.0,
            clean_states: vec![TaskState::Success],
            query_timeout_secs: 30.0,
        }
    }
}

impl ReaperSettings {
    pub fn query_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.query_timeout_secs)
    }

    /// Ranges and relations the types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("interval_secs", self.interval_secs),
            ("stale_timeout_secs", self.stale_timeout_secs),
            ("queue_timeout_secs", self.queue_timeout_secs),
            ("clean_interval_secs", self.clean_interval_secs),
            ("query_timeout_secs", self.query_timeout_secs),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("reaper.{key}: must be greater than 0"));
            }
        }
        if self.queue_timeout_secs < self.stale_timeout_secs {
            return Err("reaper.queue_timeout_secs: must be at least reaper.stale_timeout_secs".into());
        }
        if self.retention_secs.is_nan() || self.retention_secs < 0.0 {
            return Err("reaper.retention_secs: must not be negative".into());
        }
        if self.batch_size < 1 {
            return Err("reaper.batch_size: must be at least 1".into());
        }
        if let Some(s) = self.clean_states.iter().find(|s| !s.is_finished()) {
            return Err(format!("reaper.clean_states: {s} is not a finished state"));
        }
        Ok(())
    }
}
