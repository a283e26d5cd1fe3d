//! StaleReaper: the actor (stage `stale_reaper`, role `supervisor`) that runs two maintenance services on their
//! own intervals: the rescuer ([`super::rescuer`], every `reaper.interval_secs`) and the cleaner
//! ([`super::cleaner`], every `reaper.clean_interval_secs`). River-style: their settings, defaults and validation
//! live here, each pass returns what it did, and [`RunOnce`] runs both now (tests await it instead of sleeping).

use super::cleaner::clean_once;
use super::maintenance::every;
use super::messages::{Reaped, RunOnce};
use super::rescuer::rescue_once;
use super::Shared;
use crate::metrics::metrics;
use crate::store::{TaskState, TaskStore};
use crate::supervision::Link;
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
        let store = self.shared.store("stale_reaper", self.settings.pool_size);
        self.store = Some(store.clone());
        let (shared, cfg, rescue_store) = (self.shared.clone(), self.settings.clone(), store.clone());
        let rescue =
            every(secs(cfg.interval_secs), move || rescue_once(shared.clone(), cfg.clone(), rescue_store.clone()));
        ctx.spawn(rescue.into_actor(self));
        let cfg = self.settings.clone();
        let clean = every(secs(cfg.clean_interval_secs), move || clean_once(cfg.clone(), store.clone()));
        ctx.spawn(clean.into_actor(self));
    }
}

impl Handler<RunOnce> for StaleReaper {
    type Result = ResponseFuture<Reaped>;

    /// One rescue and one clean pass now (tests await this instead of sleeping through an interval).
    fn handle(&mut self, _: RunOnce, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&["stale_reaper", "run_once"]).inc();
        let (shared, cfg, store) = (self.shared.clone(), self.settings.clone(), self.store.clone().expect("started"));
        Box::pin(async move {
            let rescued = rescue_once(shared, cfg.clone(), store.clone()).await;
            Reaped { rescued, cleaned: clean_once(cfg, store).await }
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
    /// Database connections of the rescuer and the cleaner (at most `database.pool_size`).
    pub pool_size: u32,
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
            pool_size: 2,
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
        if self.pool_size < 1 {
            return Err("reaper.pool_size: must be at least 1".into());
        }
        if let Some(s) = self.clean_states.iter().find(|s| !s.is_finished()) {
            return Err(format!("reaper.clean_states: {s} is not a finished state"));
        }
        Ok(())
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
