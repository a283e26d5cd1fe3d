//! `sqs-scheduler bench processes`: the roles as separate processes over RabbitMQ — one submitter, one scheduler,
//! `--workers` workers, one resulter, one supervisor — each `sqs-scheduler run --role <role>` started from this
//! binary on a scratch database and a fresh queue set. Once every consumer is attached and one warm-up task went
//! through every role (so no start-up falls inside the measurement), the benchmark (as the client) publishes `--tasks` `submit:noop` messages to the inbound queue, as fast as the broker confirms them, and
//! waits until all are SUCCESS. Prints tasks/s (first publish to the last finished_at, on the database clock),
//! end-to-end latency per task (its
//! submission persisted to its SUCCESS, on the database clock: in a drain it includes the wait in the backlog) and
//! the CPU each process used over the same interval (as a share of every core the machine has). The processes are stopped with SIGTERM and the queues deleted at the end.

use crate::configuration::{Settings, TransportKind};
use crate::store::{TaskState, TaskStore};
use crate::transport::rabbitmq::RabbitMqTransport;
use crate::transport::{Queue, Transport};
use anyhow::{bail, Context};
use diesel::sql_types::Double;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ProcessesBenchOptions {
    pub tasks: usize,
    pub workers: usize,
}

/// A role process of the benchmark.
struct RoleProcess {
    name: String,
    child: Child,
}

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Starts `sqs-scheduler run --role <role>` with the benchmark's database and queue set.
fn spawn_role(settings: &Settings, name: &str, role: &str) -> anyhow::Result<RoleProcess> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let child = Command::new(exe)
        .args(["run", "--no-migrate", "--grace-secs", "10", "--role", role])
        .env("SCHEDULER_DATABASE__URL", &settings.database.url)
        .env("SCHEDULER_TRANSPORT__KIND", "rabbitmq")
        .env("SCHEDULER_TRANSPORT__TASKS_PER_MESSAGE", settings.transport.tasks_per_message.to_string())
        .env("SCHEDULER_RABBITMQ__URL", &settings.rabbitmq.url)
        .env("SCHEDULER_RABBITMQ__QUEUE_PREFIX", &settings.rabbitmq.queue_prefix)
        .env("SCHEDULER_RABBITMQ__CREATE_QUEUES", "false")
        .env("SCHEDULER_HTTP__BIND", "")
        .env("SCHEDULER_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting the {name} process"))?;
    Ok(RoleProcess { name: name.to_string(), child })
}

/// SIGTERM, then SIGKILL after the grace period.
fn stop(mut p: RoleProcess) {
    let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// Runs the benchmark on a migrated, empty database configured in `settings` (a fresh `rabbitmq.queue_prefix`).
pub async fn run(settings: Settings, opts: ProcessesBenchOptions) -> anyhow::Result<()> {
    if settings.transport.kind != TransportKind::RabbitMq {
        bail!("bench processes runs over RabbitMQ only");
    }
    let client =
        RabbitMqTransport::create_queues(&settings.rabbitmq, &settings.transport, settings.rabbitmq_prefetch()).await?;
    let mut procs = Vec::new();
    let result = async {
        procs.push(spawn_role(&settings, "submitter", "submitter")?);
        procs.push(spawn_role(&settings, "scheduler", "scheduler")?);
        for i in 0..opts.workers.max(1) {
            procs.push(spawn_role(&settings, &format!("worker {}", i + 1), "worker")?);
        }
        procs.push(spawn_role(&settings, "resulter", "resulter")?);
        procs.push(spawn_role(&settings, "supervisor", "supervisor")?);
        measure(&settings, &opts, &client, &mut procs).await
    }
    .await;
    for p in procs {
        stop(p);
    }
    drop(client);
    if let Err(e) = RabbitMqTransport::delete_queue_set(&settings.rabbitmq).await {
        eprintln!("bench processes: could not delete the queues of prefix {}: {e:#}", settings.rabbitmq.queue_prefix);
    }
    let (secs, cpu) = result?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("   CPU per process from the first publish to the last SUCCESS, ms per task:");
    let mut total = 0.0;
    for (name, c) in &cpu {
        total += c;
        println!("     {name:<12} {c:>7.1} s = {:.3} ms/task", c * 1000.0 / opts.tasks as f64);
    }
    println!(
        "     all roles    {total:>7.1} s = {:.3} ms/task ({:.0}% of {secs:.1} s x {cores} cores)",
        total * 1000.0 / opts.tasks as f64,
        total * 100.0 / (secs * cores as f64)
    );
    Ok(())
}

/// CPU seconds of each role process since `before` (name, seconds).
fn cpu_since(procs: &[RoleProcess], before: &[f64]) -> Vec<(String, f64)> {
    procs.iter().zip(before).map(|(p, b)| (p.name.clone(), cpu_seconds_of(p.child.id()) - b)).collect()
}

/// Waits until the role processes are consuming and one warm-up task went through every role, publishes the
/// submissions, waits for all SUCCESS; returns the seconds from the first publish to the last SUCCESS (both on the
/// database clock) and the CPU each process used meanwhile.
async fn measure(
    settings: &Settings,
    opts: &ProcessesBenchOptions,
    client: &RabbitMqTransport,
    procs: &mut [RoleProcess],
) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let store = TaskStore::new(crate::db::build_pool(&settings.database), settings.retry.backoff());
    let want = [(Queue::Inbound, 1), (Queue::Outbound, opts.workers.max(1) as u32), (Queue::Results, 1)];
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("the {} process exited at start ({status})", p.name);
            }
        }
        let mut ready = true;
        for (q, n) in want {
            ready &= client.consumers(q).await? >= n;
        }
        if ready {
            break;
        }
        if Instant::now() > until {
            bail!("the role processes did not all start consuming within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The scheduler has no consumer to wait for: one task through every role shows it (and the rest) started.
    client.send(Queue::Inbound, &[crate::protocol::submit_message("noop", &json!({"warm_up": true}))]).await?;
    wait_for_success(&store, 1, Duration::from_secs(60)).await.context("the warm-up task")?;
    println!(
        "processes benchmark: transport rabbitmq, roles as {} processes (submitter, scheduler, {} workers, resulter, \
         supervisor), {} submit:noop on the inbound queue, {} per message",
        procs.len(),
        opts.workers.max(1),
        opts.tasks,
        settings.transport.tasks_per_message
    );
    let submissions: Vec<String> =
        (0..opts.tasks).map(|i| crate::protocol::submit_message("noop", &json!({"i": i}))).collect();
    // Packed as the scheduler packs tasks (transport.tasks_per_message): a JSON-RPC batch per message.
    let t = &settings.transport;
    let bodies: Vec<String> = crate::protocol::pack(&submissions, t.tasks_per_message, t.max_message_bytes)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let cpu0: Vec<f64> = procs.iter().map(|p| cpu_seconds_of(p.child.id())).collect();
    let t0_db = store.db_now().await?;
    let t0 = Instant::now();
    let sending = async {
        for chunk in bodies.chunks(500) {
            let res = client.send(Queue::Inbound, chunk).await?;
            if let Some(Err(e)) = res.iter().find(|r| r.is_err()) {
                bail!("sending a submission failed: {e}");
            }
        }
        anyhow::Ok(t0.elapsed())
    };
    // Polled twice a second (a GROUP BY over the table): the end is the last finished_at, not the poll's instant.
    let waiting = wait_for_success(&store, opts.tasks as i64 + 1, Duration::from_secs(1800));
    let (sent, ()) = tokio::try_join!(sending, waiting)?;
    let cpu = cpu_since(procs, &cpu0);
    #[derive(QueryableByName)]
    struct Lat {
        #[diesel(sql_type = Double)]
        p50: f64,
        #[diesel(sql_type = Double)]
        p99: f64,
        #[diesel(sql_type = Double)]
        max: f64,
        #[diesel(sql_type = Double)]
        secs: f64,
    }
    let mut conn = store.pool().get().await?;
    let lat: Lat = diesel::sql_query(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY s) * 1000 AS p50, \
                percentile_disc(0.99) WITHIN GROUP (ORDER BY s) * 1000 AS p99, max(s) * 1000 AS max, \
                EXTRACT(EPOCH FROM max(finished_at) - $1)::float8 AS secs \
         FROM (SELECT EXTRACT(EPOCH FROM finished_at - created_at)::float8 AS s, finished_at FROM tasks \
               WHERE state = 'SUCCESS' AND NOT payload ? 'warm_up') x",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(t0_db)
    .get_result(&mut conn)
    .await?;
    let (n, secs) = (opts.tasks as f64, lat.secs);
    println!();
    println!(
        "   all {} SUCCESS {secs:.2} s after the first publish = {:.0} tasks/s (database clock: the last \
         finished_at)",
        opts.tasks,
        n / secs
    );
    println!(
        "   the client published (confirmed) all in {:.2} s = {:.0} submissions/s",
        sent.as_secs_f64(),
        n / sent.as_secs_f64()
    );
    println!(
        "   end to end per task (persisted -> SUCCESS, database clock; backlog wait included): p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms over {} tasks",
        lat.p50, lat.p99, lat.max, opts.tasks
    );
    Ok((secs, cpu))
}

/// Waits until `n` tasks are SUCCESS, polling twice a second.
async fn wait_for_success(store: &TaskStore, n: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done = store.counts_by_state().await?.iter().find(|c| c.0 == TaskState::Success).map_or(0, |c| c.1);
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gave up after {limit:?} with {done} of {n} SUCCESS");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
