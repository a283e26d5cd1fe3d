//! `sqs-scheduler bench store`: tasks/s through submit_many -> acquire_batch -> complete_many at several batch
//! sizes, and acquire_batch(100) latency as the table grows to 1,000,000 rows.

use crate::store::{Action, Backoff, NewTask, Outcome, Payload, TaskResult, TaskStore};
use serde_json::json;
use std::time::Instant;

pub struct StoreBenchOptions {
    pub tasks: usize,
    pub batch_sizes: Vec<usize>,
    pub big_table_rows: usize,
}

/// Runs the store benchmark on a fresh database at `db_url` (it must be empty and migrated).
pub async fn run(store: &TaskStore, opts: &StoreBenchOptions) -> anyhow::Result<()> {
    println!("store benchmark: {} tasks per batch size", opts.tasks);
    println!("{:>8} {:>14} {:>12} {:>12} {:>12}", "batch", "tasks/s", "submit s", "acquire s", "complete s");
    let mut seq = 0u64;
    for &batch in &opts.batch_sizes {
        // Fewer tasks at batch 1: it is the per-task round trip baseline.
        let n = if batch == 1 { opts.tasks.min(5_000) } else { opts.tasks };
        let (mut ts, mut ta, mut tc) = (0.0, 0.0, 0.0);
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let b = batch.min(n - done);
            let tasks: Vec<NewTask> = (0..b)
                .map(|_| {
                    seq += 1;
                    NewTask::new(Action::parse("noop").unwrap(), Payload::parse(json!({"n": seq})).unwrap())
                })
                .collect();
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
        println!("{:>8} {:>14.0} {:>12.3} {:>12.3} {:>12.3}", batch, n as f64 / secs, ts, ta, tc);
    }

    println!();
    println!("acquire_batch(100) latency as the table grows (finished rows + 10,000 due rows):");
    println!("(then again after VACUUM, as autovacuum leaves it in a steady state: dead index entries are what grows)");
    println!(
        "{:>12} {:>10} {:>10} {:>10} {:>16} {:>16}",
        "rows", "p50 ms", "p99 ms", "max ms", "vacuumed p50", "vacuumed p99"
    );
    let mut rows = count_rows(store).await?;
    let marks = [100_000usize, 300_000, opts.big_table_rows];
    for &mark in marks.iter().filter(|&&m| m <= opts.big_table_rows) {
        while rows < mark {
            let b = 5_000.min(mark - rows);
            fill_finished(store, &mut seq, b).await?;
            rows += b;
        }
        let lat = measure_acquire(store, &mut seq).await?;
        vacuum(store).await?;
        let vac = measure_acquire(store, &mut seq).await?;
        println!("{:>12} {:>10.2} {:>10.2} {:>10.2} {:>16.2} {:>16.2}", rows, lat.0, lat.1, lat.2, vac.0, vac.1);
    }
    Ok(())
}

async fn vacuum(store: &TaskStore) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let mut conn = store.pool().get().await?;
    diesel::sql_query("VACUUM (ANALYZE) tasks").execute(&mut conn).await?;
    Ok(())
}

async fn count_rows(store: &TaskStore) -> anyhow::Result<usize> {
    Ok(store.counts_by_state().await?.iter().map(|c| c.1 as usize).sum())
}

/// Inserts `n` tasks and runs them to SUCCESS, so the table grows with finished rows.
async fn fill_finished(store: &TaskStore, seq: &mut u64, n: usize) -> anyhow::Result<()> {
    let tasks: Vec<NewTask> = (0..n)
        .map(|_| {
            *seq += 1;
            NewTask::new(Action::parse("noop").unwrap(), Payload::parse(json!({"n": *seq})).unwrap())
        })
        .collect();
    store.submit_many(&tasks).await?;
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

/// Submits 10,000 due tasks, then times acquire_batch(100) until they are all acquired; completes them after.
async fn measure_acquire(store: &TaskStore, seq: &mut u64) -> anyhow::Result<(f64, f64, f64)> {
    for _ in 0..10 {
        let tasks: Vec<NewTask> = (0..1000)
            .map(|_| {
                *seq += 1;
                NewTask::new(Action::parse("noop").unwrap(), Payload::parse(json!({"n": *seq})).unwrap())
            })
            .collect();
        store.submit_many(&tasks).await?;
    }
    let mut lat = Vec::new();
    let mut all = Vec::new();
    loop {
        let t = Instant::now();
        let a = store.acquire_batch(100).await?;
        if a.is_empty() {
            break;
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        all.extend(a);
    }
    for chunk in all.chunks(1000) {
        let results: Vec<TaskResult> = chunk
            .iter()
            .map(|a| TaskResult { id: a.id, attempt: a.attempt, outcome: Outcome::Success(json!({})) })
            .collect();
        store.complete_many(&results).await?;
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    Ok((q(0.5), q(0.99), *lat.last().unwrap()))
}

pub fn default_backoff() -> Backoff {
    Backoff::default()
}
