//! `sqs-scheduler bench store`: tasks/s through submit_many -> acquire_batch -> complete_many at several batch
//! sizes, and acquire_batch(100) latency at several table sizes.
//!
//! Every measurement starts from its own table state (the table is truncated first), and the row counts printed
//! are `count(*)` at measurement time, the due rows included.

use crate::store::{Action, Backoff, NewTask, Outcome, Payload, TaskResult, TaskStore};
use serde_json::json;
use std::time::Instant;

pub struct StoreBenchOptions {
    pub tasks: usize,
    pub batch_sizes: Vec<usize>,
    pub big_table_rows: usize,
}

/// Tasks measured at batch size 1 at most: at a few hundred tasks/s it is the per-task round-trip baseline, and
/// 100,000 of them would take minutes.
pub const BATCH_ONE_MAX_TASKS: usize = 5_000;
/// Due (SCHEDULED) rows in the table while acquire_batch(100) is timed; the rest of the table is finished rows.
pub const DUE_ROWS: usize = 10_000;
/// Rows per acquire_batch call in the latency measurement.
const ACQUIRE_LIMIT: usize = 100;
/// acquire_batch(100) calls timed per table state: enough for a p99 (the 10th-largest of 1,000). Taken in rounds
/// of DUE_ROWS / ACQUIRE_LIMIT calls; each round's rows are deleted after it, so every round sees the same table.
pub const LATENCY_SAMPLES: usize = 1_000;

/// Runs the store benchmark on a fresh database at `db_url` (it must be empty and migrated).
pub async fn run(store: &TaskStore, opts: &StoreBenchOptions) -> anyhow::Result<()> {
    let per_batch = |batch: usize| if batch == 1 { opts.tasks.min(BATCH_ONE_MAX_TASKS) } else { opts.tasks };
    let counts: Vec<String> = opts.batch_sizes.iter().map(|&b| format!("batch {b}: {}", per_batch(b))).collect();
    println!("store benchmark, throughput: tasks per batch size: {}", counts.join(", "));
    println!("(each batch size starts from an empty table; one client, one statement at a time)");
    println!(
        "{:>8} {:>10} {:>14} {:>12} {:>12} {:>12}",
        "batch", "tasks", "tasks/s", "submit s", "acquire s", "complete s"
    );
    let mut seq = 0u64;
    for &batch in &opts.batch_sizes {
        truncate(store).await?;
        let n = per_batch(batch);
        let (mut ts, mut ta, mut tc) = (0.0, 0.0, 0.0);
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let b = batch.min(n - done);
            let tasks = new_tasks(&mut seq, b);
            let t = Instant::now();
            store.submit_many(&tasks).await?;
            ts += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let acquired = store.acquire_batch(b as i64).await?;
            ta += t.elapsed().as_secs_f64();
            let results: Vec<TaskResult> = acquired
                .iter()
                .map(|a| TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Success(json!({"ok": true})) })
                .collect();
            let t = Instant::now();
            store.complete_many(&results).await?;
            tc += t.elapsed().as_secs_f64();
            done += b;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{:>8} {:>10} {:>14.0} {:>12.3} {:>12.3} {:>12.3}", batch, n, n as f64 / secs, ts, ta, tc);
    }

    let mut marks: Vec<usize> =
        [100_000usize, 300_000, opts.big_table_rows].into_iter().filter(|&m| m <= opts.big_table_rows).collect();
    marks.dedup();
    if let Some(&m) = marks.iter().find(|&&m| m < DUE_ROWS) {
        anyhow::bail!("--rows {m} is below the {DUE_ROWS} due rows of the latency measurement");
    }
    println!();
    println!(
        "acquire_batch({ACQUIRE_LIMIT}) latency by table size: each size is filled from an empty table with \
         (rows - {DUE_ROWS}) finished rows, then {DUE_ROWS} due rows; rows = count(*) at measurement time"
    );
    println!(
        "{LATENCY_SAMPLES} calls per line, in rounds of {} calls over {DUE_ROWS} fresh due rows (deleted after each \
         round); p99 = 10th-largest",
        DUE_ROWS / ACQUIRE_LIMIT
    );
    println!("\"as filled\": right after the fill's transitions (autovacuum may or may not have run);");
    println!("\"vacuumed\": after VACUUM (ANALYZE), as autovacuum leaves it in a steady state.");
    println!(
        "{:>12} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "rows", "table", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for mark in marks {
        truncate(store).await?;
        let mut filled = 0;
        while filled < mark - DUE_ROWS {
            let b = 5_000.min(mark - DUE_ROWS - filled);
            fill_finished(store, &mut seq, b).await?;
            filled += b;
        }
        let lat = measure_acquire(store, &mut seq).await?;
        lat.print("as filled");
        vacuum(store).await?;
        let vac = measure_acquire(store, &mut seq).await?;
        vac.print("vacuumed");
    }
    Ok(())
}

/// One latency line: the `count(*)` seen at the start of each round, and the sorted samples in ms.
struct Latency {
    rows: Vec<i64>,
    sorted_ms: Vec<f64>,
}

impl Latency {
    fn print(&self, table: &str) {
        let (lo, hi) = (self.rows.iter().min().copied().unwrap_or(0), self.rows.iter().max().copied().unwrap_or(0));
        let rows = if lo == hi { lo.to_string() } else { format!("{lo}..{hi}") };
        let q = |p: f64| super::quantile_cell(&self.sorted_ms, p);
        let max = self.sorted_ms.last().map_or("n/a".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:>12} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
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

fn new_tasks(seq: &mut u64, n: usize) -> Vec<NewTask> {
    (0..n)
        .map(|_| {
            *seq += 1;
            NewTask::new(Action::parse("noop").unwrap(), Payload::parse(json!({"n": *seq})).unwrap())
        })
        .collect()
}

async fn sql(store: &TaskStore, statement: &str) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let mut conn = store.pool().get().await?;
    diesel::sql_query(statement).execute(&mut conn).await?;
    Ok(())
}

async fn truncate(store: &TaskStore) -> anyhow::Result<()> {
    sql(store, "TRUNCATE tasks RESTART IDENTITY").await
}

async fn vacuum(store: &TaskStore) -> anyhow::Result<()> {
    sql(store, "VACUUM (ANALYZE) tasks").await
}

/// `count(*)` of the tasks table: every row, whatever its state.
async fn count_rows(store: &TaskStore) -> anyhow::Result<i64> {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = store.pool().get().await?;
    let c: Count = diesel::sql_query("SELECT count(*) AS n FROM tasks").get_result(&mut conn).await?;
    Ok(c.n)
}

async fn delete_ids(store: &TaskStore, ids: &[i64]) -> anyhow::Result<()> {
    use diesel::sql_types::{Array, BigInt};
    use diesel_async::RunQueryDsl;
    let mut conn = store.pool().get().await?;
    diesel::sql_query("DELETE FROM tasks WHERE id = ANY($1)").bind::<Array<BigInt>, _>(ids).execute(&mut conn).await?;
    Ok(())
}

/// Inserts `n` tasks and runs them to SUCCESS, so the table grows with finished rows.
async fn fill_finished(store: &TaskStore, seq: &mut u64, n: usize) -> anyhow::Result<()> {
    store.submit_many(&new_tasks(seq, n)).await?;
    loop {
        let acquired = store.acquire_batch(1000).await?;
        if acquired.is_empty() {
            break;
        }
        let results: Vec<TaskResult> = acquired
            .iter()
            .map(|a| TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Success(json!({})) })
            .collect();
        store.complete_many(&results).await?;
    }
    Ok(())
}

/// Times LATENCY_SAMPLES acquire_batch(100) calls. Per round: submits DUE_ROWS due tasks, counts the table, times
/// acquire_batch(100) until they are all acquired, then completes and deletes them, so every round starts from
/// the same row count.
async fn measure_acquire(store: &TaskStore, seq: &mut u64) -> anyhow::Result<Latency> {
    let mut lat = Vec::with_capacity(LATENCY_SAMPLES);
    let mut rows = Vec::new();
    while lat.len() < LATENCY_SAMPLES {
        for chunk in new_tasks(seq, DUE_ROWS).chunks(1000) {
            store.submit_many(chunk).await?;
        }
        rows.push(count_rows(store).await?);
        let mut all = Vec::with_capacity(DUE_ROWS);
        while lat.len() < LATENCY_SAMPLES {
            let t = Instant::now();
            let a = store.acquire_batch(ACQUIRE_LIMIT as i64).await?;
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            if a.is_empty() {
                break;
            }
            lat.push(elapsed);
            all.extend(a);
        }
        // Whatever the last round did not time is acquired untimed, so nothing due is left behind.
        loop {
            let a = store.acquire_batch(1000).await?;
            if a.is_empty() {
                break;
            }
            all.extend(a);
        }
        for chunk in all.chunks(1000) {
            let results: Vec<TaskResult> = chunk
                .iter()
                .map(|a| TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Success(json!({})) })
                .collect();
            store.complete_many(&results).await?;
        }
        let ids: Vec<i64> = all.iter().map(|a| a.id).collect();
        for chunk in ids.chunks(10_000) {
            delete_ids(store, chunk).await?;
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(Latency { rows, sorted_ms: lat })
}

pub fn default_backoff() -> Backoff {
    Backoff::default()
}
