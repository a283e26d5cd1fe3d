//! What every maintenance service (River's word: rescuer, cleaner, stats) shares, so a service file holds only
//! its own logic: one interval loop ([`every`]) and one "batch until short, with a timeout" loop
//! ([`run_batches`]); and the settings of the rescuer and the cleaner (`[reaper]`).

use crate::store::TaskState;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// Runs `pass` every `interval`, one pass at a time (a slow pass delays the next tick, never piles them up).
/// Never returns.
pub async fn every<F, Fut, T>(interval: Duration, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pass().await;
    }
}

/// Calls `batch` until it handles fewer than `batch_size` rows, each call bounded by `timeout`; `what` names the
/// statement in logs. A failure or a timeout ends the pass (the next pass tries again). Returns the rows handled
/// by every batch, in order.
pub async fn run_batches<F, Fut, T, E>(what: &str, batch_size: i64, timeout: Duration, mut batch: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<T>, E>>,
    E: std::fmt::Display,
{
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(timeout, batch()).await {
            Ok(Ok(rows)) => {
                let short = (rows.len() as i64) < batch_size;
                all.extend(rows);
                if short {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "{what} failed");
                break;
            }
            Err(_) => {
                tracing::error!(timeout_secs = timeout.as_secs_f64(), "{what} timed out");
                break;
            }
        }
    }
    all
}

/// [`run_batches`] for statements that return a row count: the total.
pub async fn run_counted_batches<F, Fut, E>(what: &str, batch_size: i64, timeout: Duration, mut batch: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, E>>,
    E: std::fmt::Display,
{
    let counts = run_batches(what, batch_size, timeout, || {
        let call = batch();
        async move { call.await.map(|n| vec![(); n]) }
    })
    .await;
    counts.len()
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
