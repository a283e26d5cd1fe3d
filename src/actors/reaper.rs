//! StaleReaper: every `reaper.interval_secs`, tasks ACQUIRED for longer than `reaper.stale_timeout_secs` become
//! ERROR (retried) or CRITICAL_ERROR; every `reaper.clean_interval_secs`, finished tasks older than
//! `reaper.retention_secs` are deleted. Both in batches of `reaper.batch_size`, until a batch comes back short.

use super::messages::{Reaped, RunOnce};
use super::Shared;
use crate::metrics::metrics;
use crate::store::TaskStore;
use crate::supervision::Link;
use actix::prelude::*;
use std::time::Duration;

pub struct StaleReaper {
    shared: Shared,
    link: Link,
    store: Option<TaskStore>,
}

impl StaleReaper {
    pub fn new(shared: Shared, link: Link) -> Self {
        Self { shared, link, store: None }
    }
}

impl Actor for StaleReaper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let store = self.shared.store("stale_reaper", 2);
        self.store = Some(store.clone());
        ctx.spawn(rescue_loop(self.shared.clone(), store.clone()).into_actor(self));
        ctx.spawn(clean_loop(self.shared.clone(), store).into_actor(self));
    }
}

impl Handler<RunOnce> for StaleReaper {
    type Result = ResponseFuture<Reaped>;

    /// One rescue and one clean pass now (tests await this instead of sleeping through an interval).
    fn handle(&mut self, _: RunOnce, _: &mut Self::Context) -> Self::Result {
        metrics().actor_messages.with_label_values(&["stale_reaper", "run_once"]).inc();
        let (shared, store) = (self.shared.clone(), self.store.clone().expect("started"));
        Box::pin(async move {
            Reaped { rescued: rescue_once(&shared, &store).await, cleaned: clean_once(&shared, &store).await }
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

/// One rescue pass: batches until one comes back short. Returns how many tasks were rescued.
pub async fn rescue_once(shared: &Shared, store: &TaskStore) -> usize {
    let cfg = &shared.settings.reaper;
    let mut total = 0;
    loop {
        match store.rescue_stale(cfg.stale_timeout_secs, cfg.batch_size).await {
            Ok(rescued) => {
                total += rescued.len();
                metrics().tasks_rescued.inc_by(rescued.len() as u64);
                for (id, state) in &rescued {
                    tracing::warn!(task_id = id, state = %state, "stale task rescued");
                }
                if (rescued.len() as i64) < cfg.batch_size {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "rescue_stale failed");
                break;
            }
        }
    }
    if total > 0 {
        shared.tasks_due();
    }
    total
}

/// One clean pass. Returns how many tasks were deleted.
pub async fn clean_once(shared: &Shared, store: &TaskStore) -> usize {
    let cfg = &shared.settings.reaper;
    let mut total = 0;
    loop {
        match store.clean_finished(cfg.retention_secs, &cfg.clean_states, cfg.batch_size).await {
            Ok(n) => {
                total += n;
                metrics().tasks_cleaned.inc_by(n as u64);
                if (n as i64) < cfg.batch_size {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "clean_finished failed");
                break;
            }
        }
    }
    total
}

async fn rescue_loop(shared: Shared, store: TaskStore) {
    let every = Duration::from_secs_f64(shared.settings.reaper.interval_secs);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        rescue_once(&shared, &store).await;
    }
}

async fn clean_loop(shared: Shared, store: TaskStore) {
    let every = Duration::from_secs_f64(shared.settings.reaper.clean_interval_secs);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let n = clean_once(&shared, &store).await;
        if n > 0 {
            tracing::info!(deleted = n, "old finished tasks cleaned");
        }
    }
}
