//! `sqs-scheduler bench store`: tasks/s through submit_many -> acquire_batch -> complete_many at several batch
//! sizes and client counts, and acquire_batch(100) latency at several table sizes.
//!
//! Everything goes through the store's public API (no table is named here), so the benchmark measures any store
//! design. Every throughput line starts from an empty store (the finished tasks of the line before are removed by
//! `clean_finished`); table sizes printed are the tasks counted by `counts_by_state`.

use crate::store::{AcquiredTask, Outcome, TaskResult, TaskState, TaskStore};
use serde_json::json;
use std::time::Instant;

pub struct StoreBenchOptions {
    pub tasks: usize,
    pub batch_sizes: Vec<usize>,
    /// Concurrent clients, each running its own submit -> acquire -> complete loop.
    pub clients: Vec<usize>,
    pub big_table_rows: usize,
}

/// Tasks measured at batch size 1 at most: at a few hundred tasks/s it is the per-task round-trip baseline, and
/// 100,000 of them would take minutes.
pub const BATCH_ONE_MAX_TASKS: usize = 5_000;
/// Due (SCHEDULED) tasks in the store while acquire_batch(100) is timed; the rest of the table is finished tasks.
pub const DUE_ROWS: usize = 10_000;
/// Tasks per acquire_batch call in the latency measurement.
pub const ACQUIRE_LIMIT: usize = 100;
/// acquire_batch(100) calls timed per table state: enough for a p99 (nearest rank 990 of 1,000, the 11th-largest).
pub const LATENCY_SAMPLES: usize = 1_000;

/// What one throughput line measured.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub tasks: usize,
    pub secs: f64,
    /// Seconds spent in each statement kind, summed over the clients.
    pub submit_secs: f64,
    pub acquire_secs: f64,
    pub complete_secs: f64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.tasks as f64 / self.secs
    }
}

/// Runs the store benchmark on a fresh, migrated database behind `store` (its pool must hold max(clients)).
pub async fn run(store: &TaskStore, opts: &StoreBenchOptions) -> anyhow::Result<()> {
    let per_batch = |batch: usize| if batch == 1 { opts.tasks.min(BATCH_ONE_MAX_TASKS) } else { opts.tasks };
    let counts: Vec<String> = opts.batch_sizes.iter().map(|&b| format!("batch {b}: {}", per_batch(b))).collect();
    println!("store benchmark, throughput: tasks per batch size: {}", counts.join(", "));
    println!("(each line starts from an empty store; each client runs one statement at a time)");
    println!(
        "{:>8} {:>8} {:>10} {:>14} {:>12} {:>12} {:>12}",
        "batch", "clients", "tasks", "tasks/s", "submit s", "acquire s", "complete s"
    );
    for &clients in &opts.clients {
        for &batch in &opts.batch_sizes {
            let t = throughput(store, batch, clients, per_batch(batch)).await?;
            println!(
                "{:>8} {:>8} {:>10} {:>14.0} {:>12.3} {:>12.3} {:>12.3}",
                batch,
                clients,
                t.tasks,
                t.per_second(),
                t.submit_secs,
                t.acquire_secs,
                t.complete_secs
            );
        }
    }

    let mut marks: Vec<usize> =
        [100_000usize, 300_000, opts.big_table_rows].into_iter().filter(|&m| m <= opts.big_table_rows).collect();
    marks.dedup();
    if let Some(&m) = marks.iter().find(|&&m| m < DUE_ROWS) {
        anyhow::bail!("--rows {m} is below the {DUE_ROWS} due rows of the latency measurement");
    }
    println!();
    println!(
        "acquire_batch({ACQUIRE_LIMIT}) latency by table size: each size is filled from an empty store with \
         (rows - {DUE_ROWS}) finished tasks, then {DUE_ROWS} due tasks"
    );
    println!(
        "{LATENCY_SAMPLES} timed calls per line; before each call {ACQUIRE_LIMIT} tasks are submitted and after it \
         the acquired ones completed (untimed), so every call sees {DUE_ROWS} due tasks while finished ones pile up; \
         rows = tasks in the store at the first..last call; p99 = nearest rank 990 (the 11th-largest)"
    );
    println!("\"as filled\": right after the fill's transitions (autovacuum may or may not have run);");
    println!("\"vacuumed\": VACUUM (ANALYZE) once right before the line's calls (which churn the table again).");
    println!(
        "{:>16} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "rows", "table", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let mut seq = 0u64;
    for mark in marks {
        remove_finished(store).await?;
        let mut filled = 0;
        while filled < mark - DUE_ROWS {
            let b = 5_000.min(mark - DUE_ROWS - filled);
            fill_finished(store, &mut seq, b).await?;
            filled += b;
        }
        for chunk in super::noop_tasks(&mut seq, "n", DUE_ROWS).chunks(1000) {
            store.submit_many(chunk).await?;
        }
        let lat = steady_acquire(store, &mut seq, LATENCY_SAMPLES).await?;
        lat.print("as filled");
        vacuum(store).await?;
        let vac = steady_acquire(store, &mut seq, LATENCY_SAMPLES).await?;
        vac.print("vacuumed");
        // Leaves nothing due for the next size.
        drain_due(store).await?;
    }
    Ok(())
}

/// `clients` concurrent loops of submit_many(batch) -> acquire_batch(batch) -> complete_many, `tasks` in all, from
/// an empty store; the clock stops when every task is SUCCESS (a client may acquire another's tasks: what is left
/// at the end is drained before the clock stops).
pub async fn throughput(store: &TaskStore, batch: usize, clients: usize, tasks: usize) -> anyhow::Result<Throughput> {
    remove_finished(store).await?;
    let clients = clients.max(1);
    let start = Instant::now();
    let per_client = futures::future::try_join_all((0..clients).map(|c| {
        let n = (tasks + clients - 1 - c) / clients;
        async move {
            let mut seq = (c * tasks) as u64;
            let (mut ts, mut ta, mut tc) = (0.0, 0.0, 0.0);
            let mut done = 0;
            while done < n {
                let b = batch.min(n - done);
                let new = super::noop_tasks(&mut seq, "n", b);
                let t = Instant::now();
                store.submit_many(&new).await?;
                ts += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let acquired = store.acquire_batch(b as i64).await?;
                ta += t.elapsed().as_secs_f64();
                let t = Instant::now();
                complete(store, &acquired).await?;
                tc += t.elapsed().as_secs_f64();
                done += b;
            }
            anyhow::Ok((ts, ta, tc))
        }
    }))
    .await?;
    drain_due(store).await?;
    let secs = start.elapsed().as_secs_f64();
    let sum = |f: fn(&(f64, f64, f64)) -> f64| per_client.iter().map(f).sum::<f64>();
    Ok(Throughput { tasks, secs, submit_secs: sum(|x| x.0), acquire_secs: sum(|x| x.1), complete_secs: sum(|x| x.2) })
}

/// One latency line: the tasks in the store at the first and the last call, and the sorted samples in ms.
pub struct Latency {
    pub rows: (i64, i64),
    pub sorted_ms: Vec<f64>,
}

impl Latency {
    pub fn p99(&self) -> Option<f64> {
        super::quantile(&self.sorted_ms, 0.99)
    }

    fn print(&self, table: &str) {
        let rows = format!("{}..{}", self.rows.0, self.rows.1);
        let q = |p: f64| super::quantile_cell(&self.sorted_ms, p);
        let max = self.sorted_ms.last().map_or("n/a".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:>16} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
            rows,
            table,
            self.sorted_ms.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            max
        );
    }
}

/// Times `samples` acquire_batch(100) calls with the due count held where it is: before each call 100 tasks are
/// submitted, after it the acquired tasks are completed (both untimed).
pub async fn steady_acquire(store: &TaskStore, seq: &mut u64, samples: usize) -> anyhow::Result<Latency> {
    let first = task_count(store).await?;
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        store.submit_many(&super::noop_tasks(seq, "n", ACQUIRE_LIMIT)).await?;
        let t = Instant::now();
        let a = store.acquire_batch(ACQUIRE_LIMIT as i64).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        if a.is_empty() {
            anyhow::bail!("acquire_batch({ACQUIRE_LIMIT}) found nothing due");
        }
        complete(store, &a).await?;
    }
    let last = task_count(store).await?;
    lat.sort_by(f64::total_cmp);
    Ok(Latency { rows: (first, last), sorted_ms: lat })
}

async fn complete(store: &TaskStore, acquired: &[AcquiredTask]) -> anyhow::Result<()> {
    for chunk in acquired.chunks(1000) {
        let results: Vec<TaskResult> = chunk
            .iter()
            .map(|a| TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Success(json!({"ok": true})) })
            .collect();
        store.complete_many(&results).await?;
    }
    Ok(())
}

/// Acquires and completes whatever is due, until nothing is.
pub async fn drain_due(store: &TaskStore) -> anyhow::Result<usize> {
    let mut n = 0;
    loop {
        let acquired = store.acquire_batch(1000).await?;
        if acquired.is_empty() {
            return Ok(n);
        }
        n += acquired.len();
        complete(store, &acquired).await?;
    }
}

/// Removes every finished task (the cleaner's statement with no retention).
async fn remove_finished(store: &TaskStore) -> anyhow::Result<()> {
    let finished = [TaskState::Success, TaskState::Error, TaskState::CriticalError, TaskState::Cancelled];
    while store.clean_finished(0.0, &finished, 50_000).await? > 0 {}
    Ok(())
}

/// VACUUM (ANALYZE) of the whole database: every table of whatever store design.
pub async fn vacuum(store: &TaskStore) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let mut conn = store.pool().get().await?;
    diesel::sql_query("VACUUM (ANALYZE)").execute(&mut conn).await?;
    Ok(())
}

/// Tasks in the store, whatever their state.
async fn task_count(store: &TaskStore) -> anyhow::Result<i64> {
    Ok(store.counts_by_state().await?.iter().map(|c| c.1).sum())
}

/// Inserts `n` tasks and runs them to SUCCESS, so the table grows with finished rows.
async fn fill_finished(store: &TaskStore, seq: &mut u64, n: usize) -> anyhow::Result<()> {
    store.submit_many(&super::noop_tasks(seq, "n", n)).await?;
    drain_due(store).await?;
    Ok(())
}
