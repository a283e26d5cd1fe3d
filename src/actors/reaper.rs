//! StaleReaper: the actor (stage `stale_reaper`, role `supervisor`) that runs two maintenance services on their
//! own intervals: the rescuer ([`super::rescuer`], every `reaper.interval_secs`) and the cleaner
//! ([`super::cleaner`], every `reaper.clean_interval_secs`). River-style: their settings, defaults and validation
//! live here, each pass returns what it did, and [`RunOnce`] runs both now (tests await it instead of sleeping).

use super::cleaner::clean_once;
use super::maintenance::every;
pub use super::maintenance::ReaperSettings;
use super::messages::{Reaped, RunOnce};
use super::rescuer::rescue_once;
use super::Shared;
use crate::metrics::metrics;
use crate::store::TaskStore;
use crate::supervision::Link;
use actix::prelude::*;
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

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
