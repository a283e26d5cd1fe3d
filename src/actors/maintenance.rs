//! What every maintenance service (River's word: rescuer, cleaner, stats) shares, so a service file holds only
//! its own logic: one interval loop ([`every`]) and one "batch until short, with a timeout" loop
//! ([`run_batches`]).

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
