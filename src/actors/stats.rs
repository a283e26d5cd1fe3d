//! StatsCollector: refreshes the gauges that need a query (tasks and workflows by state, paused actions, queue
//! depths) every 5 s.

use super::Shared;
use crate::metrics::metrics;
use crate::store::TaskStore;
use crate::supervision::Link;
use crate::transport::Queue;
use actix::prelude::*;
use std::time::Duration;

pub struct StatsCollector {
    shared: Shared,
    link: Link,
    store: Option<TaskStore>,
    running: bool,
}

impl StatsCollector {
    pub fn new(shared: Shared, link: Link) -> Self {
        Self { shared, link, store: None, running: false }
    }
}

impl Actor for StatsCollector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        self.store = Some(self.shared.store("stats", 1));
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            if act.running {
                return; // the previous refresh is still running
            }
            act.running = true;
            let shared = act.shared.clone();
            let store = act.store.clone().expect("started");
            ctx.spawn(refresh(shared, store).into_actor(act).map(|_, act, _| act.running = false));
        });
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
