//! `sqs-scheduler bench workflows`: diamonds `a -> (b, c) -> d` through one running pipeline (every role in one
//! process). Prints workflows/s (from the first submission to the last workflow SUCCESS) and the stage-to-stage
//! latency p50/p99: from a stage's last parent's SUCCESS to the stage's ACQUIRED, both on the database clock (the
//! stage handler reads its own acquired_at while it runs; the parents' finished_at is read afterwards).

use crate::configuration::Settings;
use crate::handlers::{Handler, HandlerContext, HandlerError, HandlerRegistry};
use crate::startup::App;
use crate::store::{MaxAttempts, TaskStore};
use crate::transport::Transport;
use crate::workflow::{self, WorkflowState};
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct WorkflowBenchOptions {
    pub workflows: usize,
}

type Acquired = Arc<Mutex<HashMap<i64, DateTime<Utc>>>>;

/// A stage: records its own acquired_at, then succeeds.
struct Stage(Acquired);

#[derive(diesel::QueryableByName)]
struct AcquiredAt {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    acquired_at: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
impl Handler for Stage {
    async fn handle(&self, ctx: &HandlerContext, _: &Value) -> Result<Value, HandlerError> {
        let mut conn = ctx.db.get().await.map_err(|e| HandlerError::new(e.to_string()))?;
        let r: AcquiredAt = diesel::sql_query("SELECT acquired_at FROM tasks WHERE id = $1")
            .bind::<BigInt, _>(ctx.task_id)
            .get_result(&mut conn)
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        if let Some(at) = r.acquired_at {
            self.0.lock().unwrap().entry(ctx.task_id).or_insert(at);
        }
        Ok(json!({"parents": ctx.parents.len()}))
    }
}

fn diamond(i: usize) -> Value {
    json!({"name": format!("bench-{i}"), "stages": [
        {"name": "a", "action": "bench_stage", "payload": {"i": i}},
        {"name": "b", "action": "bench_stage", "depends_on": ["a"]},
        {"name": "c", "action": "bench_stage", "depends_on": ["a"]},
        {"name": "d", "action": "bench_stage", "depends_on": ["b", "c"]},
    ]})
}

/// Runs the benchmark on a migrated, empty database configured in `settings` (inside an actix System).
pub async fn run(settings: Settings, opts: WorkflowBenchOptions) -> anyhow::Result<()> {
    let store = TaskStore::new(crate::db::build_pool(&settings.database), settings.retry.backoff());
    let bench = super::BenchTransport::open(&settings).await?;
    let result = measure(&settings, &opts, &store, bench.transport.clone()).await;
    bench.close(&settings, "workflows").await;
    result
}

async fn measure(
    settings: &Settings,
    opts: &WorkflowBenchOptions,
    store: &TaskStore,
    transport: Arc<dyn Transport>,
) -> anyhow::Result<()> {
    let n = opts.workflows;
    let max = settings.transport.max_message_bytes;
    let wfs: Vec<_> = (0..n)
        .map(|i| workflow::parse_submit(Some(diamond(i)), MaxAttempts::default(), max))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    println!("workflows benchmark: transport {}, {n} diamonds a -> (b, c) -> d", transport.kind());
    let acquired = Acquired::default();
    let handlers = HandlerRegistry::builtin().with("bench_stage", Stage(acquired.clone()));
    let app = App::start(settings.clone(), &[], transport, handlers);
    let t0 = Instant::now();
    for chunk in wfs.chunks(100) {
        store.submit_workflows(chunk).await?;
    }
    let submitted = t0.elapsed();
    let deadline = t0 + Duration::from_secs(600);
    loop {
        let c: HashMap<WorkflowState, i64> = store.workflow_counts().await?.into_iter().collect();
        if c.get(&WorkflowState::Success).copied().unwrap_or(0) == n as i64 {
            break;
        }
        if Instant::now() > deadline {
            app.shutdown(Duration::from_secs(10)).await;
            anyhow::bail!("not all workflows succeeded within 600 s: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    app.shutdown(Duration::from_secs(10)).await;

    #[derive(diesel::QueryableByName)]
    struct LastParent {
        #[diesel(sql_type = BigInt)]
        child: i64,
        #[diesel(sql_type = Timestamptz)]
        last_parent_success: DateTime<Utc>,
    }
    let mut conn = store.pool().get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows: Vec<LastParent> = diesel::sql_query(
        "SELECT e.child_id AS child, max(p.finished_at) AS last_parent_success \
         FROM workflow_edges e JOIN tasks p ON p.id = e.parent_id GROUP BY e.child_id",
    )
    .load(&mut conn)
    .await?;
    let acquired = acquired.lock().unwrap();
    let mut ms: Vec<f64> = rows
        .iter()
        .filter_map(|r| acquired.get(&r.child).map(|a| (*a - r.last_parent_success).num_microseconds()))
        .flatten()
        .map(|us| us as f64 / 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    println!();
    println!("  submitted {n} workflows ({} stages) in {:.2} s", 4 * n, submitted.as_secs_f64());
    println!(
        "  all SUCCESS after {wall:.2} s = {:.0} workflows/s ({:.0} stages/s)",
        n as f64 / wall,
        4.0 * n as f64 / wall
    );
    println!(
        "  stage-to-stage latency (last parent SUCCESS -> child ACQUIRED), {} samples: p50 {} ms, p99 {} ms",
        ms.len(),
        super::quantile_cell(&ms, 0.5),
        super::quantile_cell(&ms, 0.99)
    );
    Ok(())
}
