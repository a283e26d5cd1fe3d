//! CronScheduler (scheduler role): enqueues the ticks of cron schedules. At start it declares the configured
//! schedules (`[[schedules]]`, one upsert); then each pass reads the due schedules in batches of `cron.batch_size`,
//! plans each one's tick with the cron crate (the most recent tick not after the database's now runs once, older
//! missed ones are skipped and counted), and fires the batch in ONE statement that inserts the ticks' tasks (dedup
//! key `cron:<schedule>:<tick>`) and moves each schedule's next_run_at on, fenced on its old value. However many
//! processes run it, each tick is enqueued once: one statement wins the fence, and the task's unique key is the
//! backstop. It sleeps until the soonest next tick, at most `cron.interval_secs` (so a schedule created elsewhere
//! is seen within that). River-style: settings, defaults and validation here; [`run_once`] returns what it did.

use super::Shared;
use crate::handlers::KnownActions;
use crate::metrics::metrics;
use crate::schedules::{tick_dedup_key, CronExpr, Schedule};
use crate::store::{Fire, StoreError, TaskStore};
use crate::supervision::Link;
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct CronScheduler {
    shared: Shared,
    settings: CronSettings,
    /// The configured schedules (validated at start).
    declared: Arc<Vec<Schedule>>,
    link: Link,
}

impl CronScheduler {
    pub fn new(shared: Shared, settings: CronSettings, declared: Arc<Vec<Schedule>>, link: Link) -> Self {
        Self { shared, settings, declared, link }
    }
}

impl Actor for CronScheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.attach(ctx);
        let store = self.shared.store("cron_scheduler", self.settings.pool_size);
        let run = run(self.shared.clone(), self.settings.clone(), self.declared.clone(), store);
        ctx.spawn(run.into_actor(self));
    }
}

async fn run(shared: Shared, cfg: CronSettings, declared: Arc<Vec<Schedule>>, store: TaskStore) {
    let default_max_attempts = shared.settings.retry.default_max_attempts.clamp(1, i32::MAX as i64) as i32;
    let mut is_declared = declared.is_empty();
    loop {
        if shared.phases.inbound.is_stopped() {
            // Shutting down: enqueue nothing more (the ticks are picked up by whichever process runs next).
            return;
        }
        if !is_declared {
            match tokio::time::timeout(cfg.query_timeout(), declare(&store, &declared, &shared.known_actions)).await {
                Ok(Ok(n)) => {
                    tracing::info!(schedules = declared.len(), changed = n, "configured schedules declared");
                    is_declared = true;
                }
                Ok(Err(e)) => tracing::error!(error = %e, "declaring the configured schedules failed; will retry"),
                Err(_) => tracing::error!("declaring the configured schedules timed out; will retry"),
            }
        }
        let wait = match tokio::time::timeout(cfg.query_timeout(), run_once(&store, &cfg, default_max_attempts)).await {
            Ok(Ok(pass)) => pass.wait,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cron pass failed; will retry");
                cfg.interval()
            }
            Err(_) => {
                tracing::error!(timeout_secs = cfg.query_timeout_secs, "cron pass timed out; will retry");
                cfg.interval()
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Upserts the configured schedules whose action is known (the others are logged and counted: `run` refuses them
/// at start, so only a library caller can get here with one).
pub async fn declare(store: &TaskStore, declared: &[Schedule], known: &KnownActions) -> Result<usize, StoreError> {
    let now = store.db_now().await?;
    let mut schedules = Vec::with_capacity(declared.len());
    let mut nexts = Vec::with_capacity(declared.len());
    for s in declared {
        if let Err(e) = known.check(&s.action, "schedule") {
            tracing::error!(schedule = %s.name, error = %e.message, "configured schedule not declared");
            continue;
        }
        if let Some(next) = s.cron.next_after(now) {
            schedules.push(s.clone());
            nexts.push(next);
        }
    }
    metrics().init_schedule_labels(schedules.iter().map(|s| s.name.as_str()));
    store.upsert_config_schedules(&schedules, &nexts).await
}

/// What one pass did, and how long to wait before the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CronPass {
    /// Ticks whose task this pass inserted.
    pub enqueued: usize,
    /// Ticks this pass fired whose task existed already.
    pub duplicates: usize,
    /// Missed ticks skipped (not enqueued).
    pub skipped: u64,
    pub wait: Duration,
}

/// One pass: fire every due schedule, in batches until one comes back short; then the time until the soonest tick.
pub async fn run_once(
    store: &TaskStore,
    cfg: &CronSettings,
    default_max_attempts: i32,
) -> Result<CronPass, StoreError> {
    let m = metrics();
    let mut pass = CronPass::default();
    loop {
        let due = store.due_schedules(cfg.batch_size).await?;
        if due.is_empty() {
            break;
        }
        let now = store.db_now().await?;
        let mut fires = Vec::with_capacity(due.len());
        let mut invalid = Vec::new();
        for d in &due {
            match CronExpr::parse(&d.cron, &d.timezone) {
                Ok(cron) => {
                    let plan = cron.plan(d.next_run_at, now);
                    if plan.skipped >= crate::schedules::MAX_COUNTED_SKIPS {
                        tracing::warn!(schedule = %d.name, counted = plan.skipped, "more missed ticks than counted");
                    }
                    fires.push(Fire {
                        name: d.name.clone(),
                        expected: d.next_run_at,
                        tick: plan.tick,
                        next: plan.next,
                        skipped: plan.skipped,
                        dedup_key: tick_dedup_key(&d.name, plan.tick),
                    });
                }
                Err(e) => {
                    // Never loops: the schedule is paused, reported once, and can be fixed and resumed.
                    tracing::error!(schedule = %d.name, error = %e, "stored cron schedule is invalid; pausing it");
                    m.cron_ticks.with_label_values(&[d.name.as_str(), "invalid"]).inc();
                    invalid.push(d.name.clone());
                }
            }
        }
        store.pause_schedules(&invalid).await?;
        let skipped_by_name: HashMap<&str, u64> = fires.iter().map(|f| (f.name.as_str(), f.skipped)).collect();
        let fired = store.fire_schedules(&fires, default_max_attempts).await?;
        for f in &fired {
            let outcome = if f.created { "enqueued" } else { "duplicate" };
            m.init_schedule_labels([f.name.as_str()]);
            m.cron_ticks.with_label_values(&[f.name.as_str(), outcome]).inc();
            let skipped = skipped_by_name.get(f.name.as_str()).copied().unwrap_or(0);
            m.cron_ticks.with_label_values(&[f.name.as_str(), "skipped"]).inc_by(skipped);
            pass.skipped += skipped;
            if f.created {
                pass.enqueued += 1;
            } else {
                pass.duplicates += 1;
            }
            tracing::debug!(schedule = %f.name, tick = %f.tick_at, task_id = ?f.task_id, created = f.created, skipped, "cron tick fired");
            if skipped > 0 {
                tracing::warn!(schedule = %f.name, tick = %f.tick_at, skipped, "missed cron ticks skipped; the latest was enqueued");
            }
        }
        if (due.len() as i64) < cfg.batch_size {
            break;
        }
    }
    let o = store.schedule_overview().await?;
    m.cron_schedules.with_label_values(&["active"]).set(o.active);
    m.cron_schedules.with_label_values(&["paused"]).set(o.paused);
    // Wake just after the soonest tick on the database's clock (a few ms late, so it is due there), at most every
    // interval (schedules created by other processes, clocks that drift).
    pass.wait = match o.soonest {
        Some(t) => (t - o.now + chrono::Duration::milliseconds(5))
            .to_std()
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_millis(10), cfg.interval()),
        None => cfg.interval(),
    };
    Ok(pass)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CronSettings {
    /// Longest sleep between two looks at the schedules (seconds): a schedule created or resumed by another
    /// process is seen within this. Otherwise the scheduler sleeps until the soonest tick.
    pub interval_secs: f64,
    /// Due schedules fired per statement.
    pub batch_size: i64,
    /// A pass is abandoned after this long (seconds), so a hung connection cannot stall the schedules.
    pub query_timeout_secs: f64,
    /// Database connections of its passes (at most `database.pool_size`).
    pub pool_size: u32,
}

impl Default for CronSettings {
    fn default() -> Self {
        Self { interval_secs: 1.0, batch_size: 100, query_timeout_secs: 30.0, pool_size: 2 }
    }
}

impl CronSettings {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs)
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.query_timeout_secs)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.interval_secs >= 0.01 && self.interval_secs <= 3600.0) {
            return Err("cron.interval_secs: must be between 0.01 and 3600".into());
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err("cron.batch_size: must be between 1 and 10000".into());
        }
        if !(self.query_timeout_secs > 0.0 && self.query_timeout_secs.is_finite()) {
            return Err("cron.query_timeout_secs: must be greater than 0".into());
        }
        if self.pool_size < 1 {
            return Err("cron.pool_size: must be at least 1".into());
        }
        Ok(())
    }
}
