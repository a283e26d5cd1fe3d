//! `sqs-scheduler bench workflows`: diamonds `a -> (b, c) -> d` through one running pipeline (every role in one
//! process), submitted straight into the store (`submit_workflows`, 100 per statement; not through the inbound queue
//! or HTTP) once a warm-up diamond went through, so start-up is not measured. Prints workflows/s (from the first
//! submission to the last stage's SUCCESS, seen on the completion broadcast: no polling of the database) and the
//! stage-to-stage latency p50/p99: from a stage's last parent's SUCCESS applied (broadcast) to the stage's handler
//! starting, both on this process's monotonic clock. The stage handler does nothing else (no database round trip).

use crate::configuration::Settings;
use crate::handlers::{Handler, HandlerContext, HandlerError, HandlerRegistry};
use crate::startup::App;
use crate::store::{MaxAttempts, TaskStore};
use crate::transport::Transport;
use crate::workflow::{self, WorkflowState};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

pub struct WorkflowBenchOptions {
    pub workflows: usize,
}

/// When each stage's handler started, by task id.
type Started = Arc<Mutex<HashMap<i64, Instant>>>;

/// A stage: records when its handler started, then succeeds.
struct Stage(Started);

#[async_trait::async_trait]
impl Handler for Stage {
    async fn handle(&self, ctx: &HandlerContext, _: &Value) -> Result<Value, HandlerError> {
        self.0.lock().unwrap().entry(ctx.task_id).or_insert_with(Instant::now);
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
    let parse = |i: usize| workflow::parse_submit(Some(diamond(i)), MaxAttempts::default(), max);
    let wfs: Vec<_> = (0..n).map(parse).collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("{}", e.message))?;
    println!("workflows benchmark: transport {}, {n} diamonds a -> (b, c) -> d", transport.kind());
    let started = Started::default();
    let handlers = HandlerRegistry::builtin().with("bench_stage", Stage(started.clone()));
    let app = App::start(settings.clone(), &[], transport, handlers);
    let result = run_diamonds(store, &app, &wfs, parse(n).map_err(|e| anyhow::anyhow!("{}", e.message))?).await;
    app.shutdown(Duration::from_secs(10)).await;
    let (submitted, wall, succeeded) = result?;

    #[derive(diesel::QueryableByName)]
    struct Edge {
        #[diesel(sql_type = BigInt)]
        child: i64,
        #[diesel(sql_type = BigInt)]
        parent: i64,
    }
    let mut conn = store.pool().get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let edges: Vec<Edge> =
        diesel::sql_query("SELECT child_id AS child, parent_id AS parent FROM workflow_edges").load(&mut conn).await?;
    let mut last_parent: HashMap<i64, Instant> = HashMap::new();
    for e in &edges {
        if let Some(&done) = succeeded.get(&e.parent) {
            let at = last_parent.entry(e.child).or_insert(done);
            *at = (*at).max(done);
        }
    }
    let started = started.lock().unwrap();
    let mut ms: Vec<f64> = last_parent
        .iter()
        .filter_map(|(child, parent_done)| started.get(child).map(|s| s.saturating_duration_since(*parent_done)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    println!();
    println!("  submitted {n} workflows ({} stages) in {:.2} s", 4 * n, submitted.as_secs_f64());
    println!(
        "  all SUCCESS after {wall:.2} s = {:.0} workflows/s ({:.0} stages/s), start-up excluded",
        n as f64 / wall,
        4.0 * n as f64 / wall
    );
    println!(
        "  stage-to-stage latency (last parent SUCCESS applied -> child's handler started), {} samples: p50 {} ms, \
         p99 {} ms",
        ms.len(),
        super::quantile_cell(&ms, 0.5),
        super::quantile_cell(&ms, 0.99)
    );
    Ok(())
}

/// When each task's SUCCESS was applied (seen on the completion broadcast), by task id.
type Succeeded = HashMap<i64, Instant>;

/// Runs a warm-up diamond, then submits `wfs` and waits for their 4 stages' SUCCESS each; returns the time the
/// submissions took, the seconds from the first submission to the last SUCCESS, and when each task succeeded.
async fn run_diamonds(
    store: &TaskStore,
    app: &App,
    wfs: &[workflow::NewWorkflow],
    warm_up: workflow::NewWorkflow,
) -> anyhow::Result<(Duration, f64, Succeeded)> {
    let mut completions = app.completions();
    let mut succeeded = Succeeded::new();
    store.submit_workflows(std::slice::from_ref(&warm_up)).await?;
    wait_for_stages(&mut completions, 4, &mut succeeded).await?;
    succeeded.clear();
    let t0 = Instant::now();
    let submitting = async {
        for chunk in wfs.chunks(100) {
            store.submit_workflows(chunk).await?;
        }
        anyhow::Ok(t0.elapsed())
    };
    let (submitted, ()) =
        tokio::try_join!(submitting, wait_for_stages(&mut completions, 4 * wfs.len(), &mut succeeded))?;
    let wall = t0.elapsed().as_secs_f64();
    let c: HashMap<WorkflowState, i64> = store.workflow_counts().await?.into_iter().collect();
    let ok = c.get(&WorkflowState::Success).copied().unwrap_or(0);
    anyhow::ensure!(ok == wfs.len() as i64 + 1, "every stage SUCCESS but {ok} workflows SUCCESS: {c:?}");
    Ok((submitted, wall, succeeded))
}

/// Waits for `stages` more SUCCESS completions, recording when each was seen.
async fn wait_for_stages(
    completions: &mut tokio::sync::broadcast::Receiver<crate::store::Applied>,
    stages: usize,
    succeeded: &mut Succeeded,
) -> anyhow::Result<()> {
    let limit = Instant::now() + Duration::from_secs(600);
    let target = succeeded.len() + stages;
    while succeeded.len() < target {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, completions.recv()).await {
            Ok(Ok(a)) if a.state == crate::store::TaskState::Success => {
                succeeded.insert(a.id, Instant::now());
            }
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(k))) => anyhow::bail!("the completion broadcast lagged by {k}"),
            Ok(Err(RecvError::Closed)) => anyhow::bail!("completions closed"),
            Err(_) => anyhow::bail!("{} of {target} stages SUCCESS after 600 s", succeeded.len()),
        }
    }
    Ok(())
}
