//! The measurements of `bench compare`, one function per kind, each in its own scratch database (whose deadlocks
//! and dead tuples come back with the figures). They reuse the benchmark modules: pipeline's drain and idle
//! latency, http's client and server, store's throughput and acquire timing.

use super::pipeline::{self, Drain, IdleLatency};
use super::store::{self, Latency, Throughput};
use super::{http::HttpBenchReport, scratch_database, BenchTransport, DbStats};
use crate::configuration::{Settings, TransportKind};
use crate::store::{TaskState, TaskStore};
use diesel_async::SimpleAsyncConnection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

fn store_of(s: &Settings) -> TaskStore {
    TaskStore::new(crate::db::build_pool(&s.database), s.retry.backoff())
}

fn with_transport(mut s: Settings, kind: TransportKind) -> Settings {
    s.transport.kind = kind;
    s.transport.tasks_per_message = 1;
    s.sqs.queue_prefix = format!("bench{}", std::process::id());
    s.rabbitmq.queue_prefix = format!("bench{}", std::process::id());
    s.http.bind = String::new();
    s
}

fn multi_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// W1: `tasks` noop tasks submitted through the store's API, then every role started on `kind` -> all SUCCESS.
pub fn drain(settings: &Settings, kind: TransportKind, tasks: usize) -> anyhow::Result<(Drain, DbStats)> {
    scratch_database(with_transport(settings.clone(), kind), |s| {
        actix_rt::System::new().block_on(async move {
            let store = store_of(&s);
            super::submit_noops(&store, tasks, "w1").await?;
            let bench = BenchTransport::open(&s).await?;
            let (app, drained) = pipeline::start_and_drain(&s, &store, bench.transport.clone(), tasks).await;
            app.shutdown(Duration::from_secs(10)).await;
            bench.close(&s, "compare").await;
            drained
        })
    })
}

/// Idle latency submit (inbound queue) -> SUCCESS, on the in-process transport.
pub fn idle_latency(settings: &Settings, samples: usize) -> anyhow::Result<(IdleLatency, DbStats)> {
    scratch_database(with_transport(settings.clone(), TransportKind::Memory), |s| {
        actix_rt::System::new().block_on(async move {
            let store = store_of(&s);
            let bench = BenchTransport::open(&s).await?;
            let (app, started) = pipeline::start_and_drain(&s, &store, bench.transport.clone(), 0).await;
            let lat = match started {
                Ok(_) => pipeline::idle_latency(samples, &store, &app, &bench.transport).await,
                Err(e) => Err(e),
            };
            app.shutdown(Duration::from_secs(10)).await;
            lat
        })
    })
}

/// `clients` HTTP clients, `per_call` submits per call, against an in-process server.
pub fn http(
    settings: &Settings,
    clients: usize,
    total: usize,
    per_call: usize,
) -> anyhow::Result<(HttpBenchReport, DbStats)> {
    scratch_database(settings.clone(), |s| {
        actix_rt::System::new().block_on(super::http::with_in_process_server(s, |url| async move {
            let r = super::http::measure(&url, Some("bench"), clients, total, per_call).await?;
            anyhow::ensure!(r.errors == 0, "{} of {} HTTP calls failed", r.errors, r.calls);
            Ok(r)
        }))
    })
}

/// What `scheduler.submit` from several connections measured.
pub struct SqlSubmit {
    pub per_second: f64,
    /// Per transaction (BEGIN, SELECT scheduler.submit, COMMIT), ms, ascending.
    pub sorted_ms: Vec<f64>,
}

/// `total` calls of the SQL function `scheduler.submit('noop', payload)` from `connections` connections, each in
/// a transaction of its own as a client would write it (BEGIN; SELECT scheduler.submit(...); COMMIT: three round
/// trips). Every task is checked to be in the store afterwards.
pub fn sql_submit(settings: &Settings, connections: usize, total: usize) -> anyhow::Result<(SqlSubmit, DbStats)> {
    scratch_database(settings.clone(), |s| {
        multi_thread()?.block_on(async move {
            use diesel_async::RunQueryDsl;
            let connector = crate::db::Connector::new(&s.database).map_err(anyhow::Error::msg)?;
            let mut conns = Vec::with_capacity(connections);
            for _ in 0..connections {
                conns.push(connector.establish().await?);
            }
            let start = Instant::now();
            let per_conn = futures::future::try_join_all(conns.into_iter().enumerate().map(|(c, mut conn)| {
                let n = (total + connections - 1 - c) / connections;
                tokio::spawn(async move {
                    let mut ms = Vec::with_capacity(n);
                    for k in 0..n {
                        let payload = serde_json::json!({"sql": c + k * connections});
                        let t = Instant::now();
                        conn.batch_execute("BEGIN").await?;
                        diesel::sql_query("SELECT scheduler.submit($1, $2)")
                            .bind::<diesel::sql_types::Text, _>("noop")
                            .bind::<diesel::sql_types::Jsonb, _>(payload)
                            .execute(&mut conn)
                            .await?;
                        conn.batch_execute("COMMIT").await?;
                        ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    anyhow::Ok(ms)
                })
            }))
            .await?;
            let secs = start.elapsed().as_secs_f64();
            let mut sorted_ms = Vec::with_capacity(total);
            for ms in per_conn {
                sorted_ms.extend(ms?);
            }
            sorted_ms.sort_by(f64::total_cmp);
            let stored: i64 = store_of(&s).counts_by_state().await?.iter().map(|c| c.1).sum();
            anyhow::ensure!(stored == total as i64, "{stored} tasks in the store after {total} scheduler.submit calls");
            Ok(SqlSubmit { per_second: total as f64 / secs, sorted_ms })
        })
    })
}

/// `bench store`'s throughput line: submit_many -> acquire_batch -> complete_many at `batch`, `clients` clients.
pub fn store_throughput(
    settings: &Settings,
    batch: usize,
    clients: usize,
    tasks: usize,
) -> anyhow::Result<(Throughput, DbStats)> {
    let mut s = settings.clone();
    s.database.pool_size = s.database.pool_size.max(clients as u32);
    scratch_database(s, |s| {
        multi_thread()?.block_on(async move { store::throughput(&store_of(&s), batch, clients, tasks).await })
    })
}

/// acquire_batch(100) timed `samples` times (the due count held at `queued`), right after a burst of `burst`
/// transitions (acquired and completed, their tasks replaced by new due ones), before any VACUUM.
pub fn acquire_after_burst(
    settings: &Settings,
    queued: usize,
    burst: usize,
    samples: usize,
) -> anyhow::Result<(Latency, DbStats)> {
    scratch_database(settings.clone(), |s| {
        multi_thread()?.block_on(async move {
            let store = store_of(&s);
            super::submit_noops(&store, queued, "queued").await?;
            let mut seq = 0u64;
            let mut done = 0;
            while done < burst {
                let a = store.acquire_batch(1000.min(burst - done) as i64).await?;
                anyhow::ensure!(!a.is_empty(), "nothing due during the burst");
                let results: Vec<_> = a
                    .iter()
                    .map(|t| crate::store::TaskResult {
                        id: t.id,
                        attempt: t.attempt,
                        outcome: crate::store::Outcome::Success(serde_json::json!({})),
                    })
                    .collect();
                store.complete_many(&results).await?;
                store.submit_many(&super::noop_tasks(&mut seq, "burst", a.len())).await?;
                done += a.len();
            }
            store::steady_acquire(&store, &mut seq, samples).await
        })
    })
}

/// What a drain under a held snapshot measured (tasks/s in each window).
pub struct SnapshotDrain {
    pub clean: f64,
    pub held: f64,
    /// The last quarter of the hold: where the dead tuples the snapshot keeps have piled up most.
    pub held_last_quarter: f64,
    pub after: f64,
    pub hold_secs: u64,
}

/// A steady drain on the in-process transport (a feeder keeps `backlog` tasks queued through submit_many): after
/// `window` of warm-up, tasks/s over `window` clean, then while another connection holds a REPEATABLE READ snapshot for `hold`, then over
/// `window` after it committed.
pub fn held_snapshot(
    settings: &Settings,
    backlog: u64,
    window: Duration,
    hold: Duration,
) -> anyhow::Result<(SnapshotDrain, DbStats)> {
    scratch_database(with_transport(settings.clone(), TransportKind::Memory), |s| {
        actix_rt::System::new().block_on(async move {
            let store = store_of(&s);
            super::submit_noops(&store, backlog as usize, "prefill").await?;
            let bench = BenchTransport::open(&s).await?;
            let (app, started) = pipeline::start_and_drain(&s, &store, bench.transport.clone(), 0).await;
            started?;
            let done = Arc::new(AtomicU64::new(0));
            let mut rx = app.completions();
            let counter = {
                let done = done.clone();
                actix_rt::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(a) if a.state == TaskState::Success => drop(done.fetch_add(1, Ordering::Relaxed)),
                            Ok(_) => {}
                            Err(RecvError::Lagged(n)) => drop(done.fetch_add(n, Ordering::Relaxed)),
                            Err(RecvError::Closed) => return,
                        }
                    }
                })
            };
            let stop = Arc::new(AtomicBool::new(false));
            let feeder = {
                let (done, stop, store) = (done.clone(), stop.clone(), store.clone());
                actix_rt::spawn(async move {
                    let (mut seq, mut submitted) = (0u64, backlog);
                    while !stop.load(Ordering::Relaxed) {
                        if submitted.saturating_sub(done.load(Ordering::Relaxed)) < backlog {
                            store.submit_many(&super::noop_tasks(&mut seq, "fed", 1000)).await?;
                            submitted += 1000;
                        } else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    anyhow::Ok(())
                })
            };
            let rate = |d: Duration| {
                let done = done.clone();
                async move {
                    let n0 = done.load(Ordering::Relaxed);
                    tokio::time::sleep(d).await;
                    (done.load(Ordering::Relaxed) - n0) as f64 / d.as_secs_f64()
                }
            };
            // Start-up out of the way, and the feeder in step with the drain.
            tokio::time::sleep(window).await;
            let clean = rate(window).await;
            let connector = crate::db::Connector::new(&s.database).map_err(anyhow::Error::msg)?;
            let mut holder = connector.establish().await?;
            // The snapshot is taken by the first statement of the transaction and kept until COMMIT.
            holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class").await?;
            let first = rate(hold * 3 / 4).await;
            let held_last_quarter = rate(hold / 4).await;
            holder.batch_execute("COMMIT").await?;
            let after = rate(window).await;
            stop.store(true, Ordering::Relaxed);
            let fed = feeder.await;
            app.shutdown(Duration::from_secs(10)).await;
            counter.abort();
            fed.map_err(|e| anyhow::anyhow!("the feeder panicked: {e}"))??;
            Ok(SnapshotDrain {
                clean,
                held: (first * 3.0 + held_last_quarter) / 4.0,
                held_last_quarter,
                after,
                hold_secs: hold.as_secs(),
            })
        })
    })
}
