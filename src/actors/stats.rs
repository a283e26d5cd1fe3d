//! StatsCollector: every `stats.interval_secs`, refreshes the gauges that need a query (tasks and workflows by
//! state, paused actions, queue depths). River-style like the other maintenance services: its settings, defaults
//! and validation live here, and [`refresh`] is one pass.

use super::maintenance::every;
use super::Shared;
use crate::metrics::metrics;
use crate::store::TaskStore;
use crate::supervision::Link;
use crate::transport::Queue;
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub struct StatsCollector {
    shared: Shared,
    settings: StatsSettings,
    link: Link,
}

impl StatsCollector {
    pub fn new(shared: Shared, settings: StatsSettings, link: Link) -> Self {
        Self { shared, settings, link }
    }
}

impl Actor for StatsCollector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let store = self.shared.store("stats", self.settings.pool_size);
        let shared = self.shared.clone();
        let interval = Duration::from_secs_f64(self.settings.interval_secs);
        ctx.spawn(every(interval, move || refresh(shared.clone(), store.clone())).into_actor(self));
    }
}

pub async fn refresh(shared: Shared, store: TaskStore) {
    let m = metrics();
    match store.counts_by_state().await {
        Ok(counts) => {
            for (state, n) in counts {
                m.tasks.with_label_values(&[state.as_str()]).set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "counting tasks failed"),
    }
    match store.workflow_counts().await {
        Ok(counts) => {
            for (state, n) in counts {
                m.workflows.with_label_values(&[state.as_str()]).set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "counting workflows failed"),
    }
    match store.paused_actions().await {
        Ok(n) => m.actions_paused.set(n),
        Err(e) => tracing::warn!(error = %e, "counting paused actions failed"),
    }
    for q in Queue::ALL {
        if let Ok(depth) = shared.transport.depth(q).await {
            m.queue_depth.with_label_values(&[shared.queue_label(q).as_str()]).set(depth as i64);
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatsSettings {
    /// How often the gauges that need a query are refreshed (seconds).
    pub interval_secs: f64,
    /// Database connections of its queries (at most `database.pool_size`).
    pub pool_size: u32,
}

impl Default for StatsSettings {
    fn default() -> Self {
        Self { interval_secs: 5.0, pool_size: 1 }
    }
}

impl StatsSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.interval_secs >= 0.1 && self.interval_secs <= 3600.0) {
            return Err("stats.interval_secs: must be between 0.1 and 3600".into());
        }
        if self.pool_size < 1 {
            return Err("stats.pool_size: must be at least 1".into());
        }
        Ok(())
    }
}
