//! Load generator (`sqs-scheduler load`): inserts random `t_object` rows and submits an `export` task for each
//! (the original's `make test`), shows progress, and ends with a summary: counts by state, throughput, latency.
//! With `--via local` (or `--with-pipeline`) it also runs the whole pipeline in this process.

use crate::configuration::{Settings, TransportKind};
use crate::db;
use crate::handlers::HandlerRegistry;
use crate::protocol;
use crate::startup::{connect_transport, App};
use crate::store::TaskStore;
use crate::transport::sqs::SqsTransport;
use crate::transport::{Queue, Transport};
use diesel::sql_types::{BigInt, Double, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// The inbound SQS queue (the configured endpoint).
    Sqs,
    /// The in-process transport; the pipeline runs in this process.
    Local,
    /// The inbound RabbitMQ queue (`[rabbitmq]`).
    Rabbitmq,
    /// The HTTP JSON-RPC API (`--url`).
    Http,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub objects: usize,
    /// Submissions per second; None: as fast as possible.
    pub rate: Option<f64>,
    pub via: Via,
    pub with_pipeline: bool,
    pub timeout: Duration,
    pub http_url: Option<String>,
    pub http_token: Option<String>,
    /// Pause submitting while the inbound queue holds more than this many messages (0: never).
    pub max_backlog: u64,
}

/// The summary printed at the end (also returned for tests).
#[derive(Debug, Clone, Default)]
pub struct LoadSummary {
    pub by_state: Vec<(String, i64)>,
    pub finished: i64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub sqs_calls: Option<u64>,
}

/// Runs the load inside an actix System (the caller provides it).
pub async fn run(settings: Settings, opts: LoadOptions) -> anyhow::Result<LoadSummary> {
    let mut settings = settings;
    match opts.via {
        Via::Local => settings.transport.kind = TransportKind::Memory,
        Via::Rabbitmq => settings.transport.kind = TransportKind::RabbitMq,
        Via::Sqs | Via::Http => {}
    }
    let store = TaskStore::new(db::build_pool(&settings.database), settings.retry.backoff());
    let run_pipeline = opts.with_pipeline || opts.via == Via::Local;
    // One transport for the submissions and the in-process pipeline; for SQS its clones share the call counter.
    let (transport, sqs_handle): (Option<Arc<dyn Transport>>, Option<SqsTransport>) =
        if opts.via == Via::Http && !run_pipeline {
            (None, None)
        } else {
            match settings.transport.kind {
                TransportKind::Memory | TransportKind::RabbitMq => (Some(connect_transport(&settings).await?), None),
                TransportKind::Sqs => {
                    let sqs = SqsTransport::connect(&settings.sqs, &settings.transport).await?;
                    (Some(Arc::new(sqs.clone())), Some(sqs))
                }
            }
        };
    let app = match (&transport, run_pipeline) {
        (Some(t), true) => Some(App::start(settings.clone(), &[], t.clone(), HandlerRegistry::builtin())),
        _ => None,
    };

    let base_id = max_task_id(&store).await?;
    let ids = insert_objects(&store, opts.objects).await?;
    println!("inserted {} t_object rows; submitting export tasks via {:?}", ids.len(), opts.via);
    let started = Instant::now();
    let calls_before = sqs_handle.as_ref().map(|s| s.api_calls());

    let submit = submit_all(&settings, &opts, transport.clone(), &ids);
    let watch = watch_progress(&store, base_id, ids.len() as i64, opts.timeout);
    let (submitted, finished) = tokio::join!(submit, watch);
    submitted?;
    let finished = finished?;
    let seconds = started.elapsed().as_secs_f64();

    let mut summary = summarize(&store, base_id).await?;
    summary.finished = finished;
    summary.seconds = seconds;
    summary.sqs_calls = match (calls_before, &sqs_handle) {
        (Some(b), Some(s)) => Some(s.api_calls() - b),
        _ => None,
    };
    print_summary(&summary, ids.len());
    if let Some(app) = app {
        app.shutdown(Duration::from_secs(30)).await;
    }
    Ok(summary)
}

async fn max_task_id(store: &TaskStore) -> anyhow::Result<i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let mut conn = store.pool().get().await?;
    let r: Row = diesel::sql_query("SELECT COALESCE(max(id), 0) AS id FROM tasks").get_result(&mut conn).await?;
    Ok(r.id)
}

/// Inserts `n` random rows in batches; returns their ids.
async fn insert_objects(store: &TaskStore, n: usize) -> anyhow::Result<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let mut ids = Vec::with_capacity(n);
    let mut conn = store.pool().get().await?;
    let mut left = n;
    while left > 0 {
        let b = left.min(10_000);
        let rows: Vec<Row> = diesel::sql_query(
            "INSERT INTO t_object (data) SELECT jsonb_build_object('value', md5(random()::text), 'n', g) \
             FROM generate_series(1, $1) g RETURNING id",
        )
        .bind::<BigInt, _>(b as i64)
        .load(&mut conn)
        .await?;
        ids.extend(rows.into_iter().map(|r| r.id));
        left -= b;
    }
    Ok(ids)
}

async fn submit_all(
    settings: &Settings,
    opts: &LoadOptions,
    transport: Option<Arc<dyn Transport>>,
    ids: &[i64],
) -> anyhow::Result<()> {
    let bodies: Vec<String> =
        ids.iter().map(|id| protocol::submit_message("export", &json!({"objectID": id}))).collect();
    let started = Instant::now();
    let mut sent = 0usize;
    // Chunks of 100: the transport splits them into batches of 10 and sends those concurrently.
    let chunk = if opts.rate.is_some_and(|r| r < 100.0) { 10 } else { 100 };
    match opts.via {
        Via::Http => {
            let url = opts.http_url.clone().unwrap_or_else(|| format!("http://{}/rpc", settings.http.bind));
            let (addr, path) = crate::tools::bench::http::resolve(&url).await?;
            let mut client =
                crate::tools::bench::http::RpcHttpClient::connect(addr, opts.http_token.clone()).await?.with_path(path);
            for c in ids.chunks(chunk) {
                // One JSON-RPC batch request per chunk.
                let batch: Vec<serde_json::Value> = c
                    .iter()
                    .map(
                        |id| json!({"jsonrpc": "2.0", "method": "submit:export", "params": {"objectID": id}, "id": id}),
                    )
                    .collect();
                let (status, body) = client.call(&serde_json::to_string(&batch)?).await?;
                anyhow::ensure!(status == 200, "HTTP {status}: {body}");
                sent += c.len();
                pace(opts.rate, sent, started).await;
            }
        }
        _ => {
            let transport = transport.expect("queue transport");
            for c in bodies.chunks(chunk) {
                // Back-pressure: a flooded queue helps nobody (and slows an emulator badly).
                while opts.max_backlog > 0 && transport.depth(Queue::Inbound).await.unwrap_or(0) > opts.max_backlog {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let res = transport.send(Queue::Inbound, c).await?;
                if let Some(e) = res.iter().find_map(|r| r.as_ref().err()) {
                    anyhow::bail!("submit failed: {e}");
                }
                sent += c.len();
                pace(opts.rate, sent, started).await;
            }
        }
    }
    tracing::info!(submitted = sent, seconds = started.elapsed().as_secs_f64(), "all submitted");
    Ok(())
}

async fn pace(rate: Option<f64>, sent: usize, started: Instant) {
    if let Some(r) = rate.filter(|r| *r > 0.0) {
        let due = Duration::from_secs_f64(sent as f64 / r);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Polls the database until `total` tasks after `base_id` are finished, with a progress bar on a terminal.
async fn watch_progress(store: &TaskStore, base_id: i64, total: i64, timeout: Duration) -> anyhow::Result<i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        finished: i64,
        #[diesel(sql_type = BigInt)]
        all: i64,
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} finished ({per_sec}) {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    let until = Instant::now() + timeout;
    let mut last_print = Instant::now();
    loop {
        let mut conn = store.pool().get().await?;
        let r: Row = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE state IN ('SUCCESS', 'CRITICAL_ERROR', 'CANCELLED')) AS finished, \
             count(*) AS all FROM tasks WHERE id > $1",
        )
        .bind::<BigInt, _>(base_id)
        .get_result(&mut conn)
        .await?;
        drop(conn);
        bar.set_position(r.finished as u64);
        bar.set_message(format!("{} persisted", r.all));
        if bar.is_hidden() && last_print.elapsed() >= Duration::from_secs(5) {
            println!("progress: {}/{} finished, {} persisted", r.finished, total, r.all);
            last_print = Instant::now();
        }
        if r.finished >= total {
            bar.finish();
            return Ok(r.finished);
        }
        if Instant::now() >= until {
            bar.abandon_with_message("timed out");
            return Ok(r.finished);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn summarize(store: &TaskStore, base_id: i64) -> anyhow::Result<LoadSummary> {
    #[derive(QueryableByName)]
    struct StateRow {
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    #[derive(QueryableByName)]
    struct Lat {
        #[diesel(sql_type = Double)]
        p50: f64,
        #[diesel(sql_type = Double)]
        p95: f64,
        #[diesel(sql_type = Double)]
        p99: f64,
    }
    let mut conn = store.pool().get().await?;
    let states: Vec<StateRow> =
        diesel::sql_query("SELECT state, count(*) AS n FROM tasks WHERE id > $1 GROUP BY state ORDER BY state")
            .bind::<BigInt, _>(base_id)
            .load(&mut conn)
            .await?;
    let lat: Lat = diesel::sql_query(
        "SELECT COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY s), 0) * 1000 AS p50, \
                COALESCE(percentile_cont(0.95) WITHIN GROUP (ORDER BY s), 0) * 1000 AS p95, \
                COALESCE(percentile_cont(0.99) WITHIN GROUP (ORDER BY s), 0) * 1000 AS p99 \
         FROM (SELECT EXTRACT(EPOCH FROM finished_at - created_at)::float8 AS s FROM tasks \
               WHERE id > $1 AND state = 'SUCCESS') x",
    )
    .bind::<BigInt, _>(base_id)
    .get_result(&mut conn)
    .await?;
    Ok(LoadSummary {
        by_state: states.into_iter().map(|r| (r.state, r.n)).collect(),
        p50_ms: lat.p50,
        p95_ms: lat.p95,
        p99_ms: lat.p99,
        ..Default::default()
    })
}

fn print_summary(s: &LoadSummary, submitted: usize) {
    println!();
    println!("== load summary ==");
    println!("submitted:   {submitted}");
    for (state, n) in &s.by_state {
        println!("  {state:<15} {n}");
    }
    println!(
        "finished:    {} in {:.2} s ({:.0} tasks/s)",
        s.finished,
        s.seconds,
        s.finished as f64 / s.seconds.max(1e-9)
    );
    println!(
        "latency:     p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms (persisted -> SUCCESS, database clock)",
        s.p50_ms, s.p95_ms, s.p99_ms
    );
    if let Some(calls) = s.sqs_calls {
        println!("SQS calls:   {calls} ({:.2} per task, submissions included)", calls as f64 / submitted.max(1) as f64);
    }
}
