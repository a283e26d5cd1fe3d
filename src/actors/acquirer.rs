//! Acquirer: claims due tasks in batches (TaskStore::acquire_batch) and sends them to the outbound queue; tasks
//! whose send failed are released. When idle it neither spins nor sleeps long: it wakes on LISTEN/NOTIFY
//! (`tasks_due`, raised by inserts) or an in-process signal, and at least every `acquirer.idle_wakeup_ms` for
//! retries that became due.

use super::{InjectPanic, Shared};
use crate::chaos::Stage;
use crate::metrics::metrics;
use crate::protocol::TaskRequest;
use crate::store::TaskStore;
use crate::transport::Queue;
use actix::prelude::*;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct Acquirer {
    shared: Shared,
}

impl Acquirer {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl Actor for Acquirer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let loops = self.shared.settings.acquirer.concurrency.max(1);
        let store = self.shared.new_store(loops as u32 + 1);
        ctx.spawn(
            listen(self.shared.settings.database.url.clone(), self.shared.acquirer_wake.clone()).into_actor(self),
        );
        // Several loops: each acquire is a commit, and concurrent commits share the WAL flush.
        for _ in 0..loops {
            ctx.spawn(acquire_loop(self.shared.clone(), store.clone()).into_actor(self).map(|_, act, ctx| {
                if !act.shared.phases.inbound.is_stopped() {
                    ctx.stop();
                }
            }));
        }
    }
}

impl Supervised for Acquirer {}

impl Handler<InjectPanic> for Acquirer {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected panic in Acquirer");
    }
}

async fn acquire_loop(shared: Shared, store: TaskStore) {
    let cfg = shared.settings.acquirer.clone();
    let stop = shared.phases.inbound.clone();
    let idle = Duration::from_millis(cfg.idle_wakeup_ms);
    let mut depth_checked = Instant::now() - Duration::from_secs(10);
    let mut error_delay = Duration::from_millis(100);
    // Counted in the inbound phase while it runs: shutdown waits until no acquire or send is in flight.
    let _alive = shared.phases.inbound_work.guard();
    while !stop.is_stopped() {
        // Back-pressure: stop filling the outbound queue when workers are far behind (checked at most once a second).
        if cfg.max_outbound_depth > 0 && depth_checked.elapsed() >= Duration::from_secs(1) {
            depth_checked = Instant::now();
            if let Ok(depth) = shared.transport.depth(Queue::Outbound).await {
                if depth > cfg.max_outbound_depth {
                    tokio::select! { _ = tokio::time::sleep(Duration::from_millis(200)) => {}, _ = stop.stopped() => {} }
                    continue;
                }
            }
        }
        let tasks = match store.acquire_batch(cfg.batch_size).await {
            Ok(t) => {
                error_delay = Duration::from_millis(100);
                t
            }
            Err(e) => {
                tracing::error!(error = %e, "acquire_batch failed");
                tokio::select! { _ = tokio::time::sleep(error_delay) => {}, _ = stop.stopped() => {} }
                error_delay = (error_delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let full = tasks.len() as i64 == cfg.batch_size;
        if !tasks.is_empty() {
            metrics().tasks_acquired.inc_by(tasks.len() as u64);
            for t in &tasks {
                metrics().submit_to_acquire.observe(t.wait_seconds);
            }
            let bodies: Vec<String> = tasks
                .iter()
                .map(|t| {
                    TaskRequest { id: t.id, attempt: t.attempt, action: t.action.clone(), payload: t.payload.clone() }
                        .to_body()
                })
                .collect();
            let mut sent = match shared.transport.send(Queue::Outbound, &bodies).await {
                Ok(r) => r,
                Err(e) => bodies.iter().map(|_| Err(e.to_string())).collect(),
            };
            // Chaos: some sends "fail" (the message went out, but we believe it did not), so those tasks are
            // released and sent again: the duplicate delivery must be harmless.
            for r in sent.iter_mut() {
                if r.is_ok() && shared.chaos.strike(Stage::Acquirer) {
                    *r = Err("chaos: injected send failure".to_string());
                }
            }
            let failed: Vec<(i64, i32)> =
                tasks.iter().zip(&sent).filter(|(_, r)| r.is_err()).map(|(t, _)| (t.id, t.attempt)).collect();
            metrics().tasks_sent.inc_by((tasks.len() - failed.len()) as u64);
            if !failed.is_empty() {
                tracing::warn!(failed = failed.len(), error = ?sent.iter().find_map(|r| r.as_ref().err()), "outbound send failed; releasing");
                match store.release(&failed).await {
                    Ok(n) => metrics().tasks_released.inc_by(n as u64),
                    // Left ACQUIRED: the StaleReaper rescues them after the stale timeout.
                    Err(e) => {
                        tracing::error!(error = %e, "release failed; the StaleReaper will rescue these tasks")
                    }
                }
            }
        }
        if !full {
            tokio::select! {
                _ = shared.acquirer_wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.stopped() => {}
            }
        }
    }
    tracing::debug!("acquirer stopped");
}

/// LISTEN tasks_due on a dedicated connection and wake the Acquirer on every notification; reconnects forever.
async fn listen(url: String, wake: Arc<Notify>) {
    loop {
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = futures::channel::mpsc::unbounded();
                let stream =
                    futures::stream::poll_fn(move |cx| conn.poll_message(cx)).map(|r| r.map_err(|e| e.to_string()));
                let driver = stream.forward(futures::SinkExt::sink_map_err(tx, |e| e.to_string()));
                let listen = async {
                    client.batch_execute("LISTEN tasks_due").await?;
                    while let Some(msg) = rx.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(_) = msg {
                            wake.notify_one();
                        }
                    }
                    Ok::<_, tokio_postgres::Error>(())
                };
                tokio::select! {
                    r = driver => if let Err(e) = r { tracing::warn!(error = %e, "notification connection lost") },
                    r = listen => if let Err(e) = r { tracing::warn!(error = %e, "LISTEN failed") },
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the notification connection"),
        }
        // Polling every idle_wakeup_ms still finds work meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
