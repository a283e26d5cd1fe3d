//! `sqs-scheduler bench pipeline`, three measurements on one running pipeline (one process, every role):
//!
//! 1. drain: noop tasks inserted straight into the database before start-up are drained through Acquirer ->
//!    outbound -> WorkerPool -> results -> ResultSink. Printed twice: wall time including start-up, and from the
//!    first acquisition to the last SUCCESS.
//! 2. whole path: every submission sent to the inbound queue -> persisted -> ... -> SUCCESS; tasks/s and, over SQS,
//!    API requests per task for the whole path (the scheduler's and the submitting client's).
//! 3. idle latency: one submission at a time on the inbound queue, timed until that task's own SUCCESS.

use crate::configuration::Settings;
use crate::handlers::HandlerRegistry;
use crate::metrics::metrics;
use crate::startup::App;
use crate::store::{Applied, TaskState, TaskStore};
use crate::transport::sqs::SqsTransport;
use crate::transport::{Queue, Transport, MAX_BATCH};
use anyhow::{bail, Context};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::RecvError};

pub struct PipelineBenchOptions {
    pub tasks: usize,
    pub latency_samples: usize,
}

/// Over SQS the submitting client keeps the inbound queue at most this deep (plus one batch): the local emulator
/// rescans a whole queue for every message it delivers. Its depth polls are reported apart from the figures.
const SQS_MAX_BACKLOG: u64 = 30;

/// CPU time (user + system) of this process so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the benchmark on a migrated, empty database configured in `settings` (inside an actix System). Over SQS a
/// fresh queue set is created under `sqs.queue_prefix`, and deleted at the end whatever the outcome.
pub async fn run(settings: Settings, opts: PipelineBenchOptions) -> anyhow::Result<()> {
    let store = TaskStore::new(crate::db::build_pool(&settings.database), settings.retry.backoff());
    let bench = super::BenchTransport::open(&settings).await?;
    let result = measure(&settings, &opts, &store, bench.transport.clone(), bench.sqs.as_ref()).await;
    bench.close(&settings, "pipeline").await;
    result
}

async fn measure(
    settings: &Settings,
    opts: &PipelineBenchOptions,
    store: &TaskStore,
    transport: Arc<dyn Transport>,
    sqs: Option<&SqsTransport>,
) -> anyhow::Result<()> {
    super::submit_noops(store, opts.tasks, "i").await?;
    println!(
        "pipeline benchmark: transport {}, {} noop tasks per measurement, {} task(s) per message",
        transport.kind(),
        opts.tasks,
        settings.transport.tasks_per_message
    );
    let calls0 = sqs.map(|s| s.api_calls()).unwrap_or(0);
    let (app, drained) = start_and_drain(settings, store, transport.clone(), opts.tasks).await;
    let result = match drained {
        Ok(d) => {
            let n = opts.tasks as f64;
            println!();
            println!("1) drain: {} tasks inserted into the database before start-up -> all SUCCESS", opts.tasks);
            println!("   wall time incl. start-up:         {:>8.2} s = {:>8.0} tasks/s", d.wall_secs, d.per_second());
            match d.from_first_acquisition {
                Some((drain, startup)) => println!(
                    "   from the first acquisition:       {drain:>8.2} s = {:>8.0} tasks/s (start-up took {:.0} ms, \
                     the first acquire statement included)",
                    n / drain,
                    startup * 1000.0
                ),
                None => println!("   from the first acquisition:       n/a (no acquisition seen)"),
            }
            println!(
                "   scheduler process CPU: {:.3} ms per task ({:.1} s CPU over {:.1} s wall, start-up and the \
                 benchmark's 1 ms watcher thread included); peak RSS {:.0} MB",
                d.cpu_secs * 1000.0 / n,
                d.cpu_secs,
                d.wall_secs,
                d.peak_rss_mb
            );
            if let Some(s) = sqs {
                let calls = s.api_calls() - calls0;
                println!(
                    "   SQS API requests by the scheduler: {calls} = {:.2} per task (start-up and idle long polls \
                     included; submissions bypassed SQS here, see 2)",
                    calls as f64 / n
                );
            }
            let whole = whole_path(settings, opts, store, &app, &transport, sqs).await;
            match whole {
                Ok(()) if opts.latency_samples > 0 => {
                    idle_latency(opts.latency_samples, store, &app, &transport).await.map(|lat| print_latency(&lat))
                }
                other => other,
            }
        }
        Err(e) => Err(e),
    };
    app.shutdown(Duration::from_secs(10)).await;
    result
}

/// What one drain measured.
#[derive(Debug, Clone)]
pub struct Drain {
    pub tasks: usize,
    /// App::start -> the last SUCCESS.
    pub wall_secs: f64,
    /// (the first acquisition -> the last SUCCESS, App::start -> the first acquire statement returned).
    pub from_first_acquisition: Option<(f64, f64)>,
    /// CPU of this whole process over `wall_secs`.
    pub cpu_secs: f64,
    /// Largest resident set of this process seen while draining (sampled every ms with the first acquisition).
    pub peak_rss_mb: f64,
}

impl Drain {
    /// Tasks/s with start-up included.
    pub fn per_second(&self) -> f64 {
        self.tasks as f64 / self.wall_secs
    }
}

/// Resident set of this process in MB (VmRSS of /proc/self/status).
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Starts every role on `transport` and waits until `tasks` tasks (already in the database) are SUCCESS. Returns
/// the running App (shut it down) and the figures.
pub async fn start_and_drain(
    settings: &Settings,
    store: &TaskStore,
    transport: Arc<dyn Transport>,
    tasks: usize,
) -> (App, anyhow::Result<Drain>) {
    // The Acquirer counts what it claims; a thread watching the counter timestamps the first acquisition (±1 ms),
    // then samples the resident set every 10 ms until the drain ends.
    let acquired0 = metrics().tasks_acquired.get();
    let first_acquisition = Arc::new(OnceLock::<Instant>::new());
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (first, stop) = (first_acquisition.clone(), stop_watch.clone());
        std::thread::spawn(move || {
            let mut peak = rss_mb();
            while !stop.load(Ordering::Relaxed) {
                if first.get().is_none() {
                    if metrics().tasks_acquired.get() > acquired0 {
                        let _ = first.set(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    peak = peak.max(rss_mb());
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            peak.max(rss_mb())
        })
    };
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let app = App::start(settings.clone(), &[], transport, HandlerRegistry::builtin());
    let mut completions = app.completions();
    let drained = wait_for_successes(&mut completions, store, tasks, 0, t0).await;
    let t_end = Instant::now();
    stop_watch.store(true, Ordering::Relaxed);
    let peak_rss_mb = watcher.join().unwrap_or(0.0);
    let result = drained.map(|()| Drain {
        tasks,
        wall_secs: (t_end - t0).as_secs_f64(),
        from_first_acquisition: first_acquisition
            .get()
            .map(|&first| ((t_end - first).as_secs_f64(), (first - t0).as_secs_f64())),
        cpu_secs: cpu_seconds() - cpu0,
        peak_rss_mb,
    });
    (app, result)
}

/// Sends `opts.tasks` submissions to the inbound queue and waits until they are all SUCCESS.
async fn whole_path(
    settings: &Settings,
    opts: &PipelineBenchOptions,
    store: &TaskStore,
    app: &App,
    transport: &Arc<dyn Transport>,
    sqs: Option<&SqsTransport>,
) -> anyhow::Result<()> {
    // Over SQS the client gets its own connection, so its requests are counted apart from the scheduler's.
    let client_sqs = match sqs {
        Some(_) => Some(SqsTransport::create_queues(&settings.sqs, &settings.transport).await?),
        None => None,
    };
    let client: Arc<dyn Transport> = match &client_sqs {
        Some(c) => Arc::new(c.clone()),
        None => transport.clone(),
    };
    let (backlog, chunk) = if sqs.is_some() { (Some(SQS_MAX_BACKLOG), MAX_BATCH) } else { (None, 100) };
    let already = success_count(store).await?;
    let submissions: Vec<String> =
        (0..opts.tasks).map(|i| crate::protocol::submit_message("noop", &json!({"whole": i}))).collect();
    // The client packs its submissions as the scheduler packs tasks (a JSON-RPC batch per message).
    let per_message = settings.transport.tasks_per_message;
    let bodies: Vec<String> = crate::protocol::pack(&submissions, per_message, settings.transport.max_message_bytes)
        .into_iter()
        .map(|(m, _)| m)
        .collect();

    let mut completions = app.completions();
    let scheduler0 = sqs.map(|s| s.api_calls()).unwrap_or(0);
    let by_op0 = sqs.map(|s| s.api_calls_by_op()).unwrap_or_default();
    let client0 = client_sqs.as_ref().map(|c| (sends(c), c.api_calls()));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let sending = async {
        for chunk in bodies.chunks(chunk) {
            if let Some(limit) = backlog {
                let until = Instant::now() + Duration::from_secs(600);
                while client.depth(Queue::Inbound).await? > limit {
                    if Instant::now() > until {
                        bail!("the inbound queue stayed above {limit} messages for 10 minutes");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let res = client.send(Queue::Inbound, chunk).await?;
            if let Some(Err(e)) = res.iter().find(|r| r.is_err()) {
                bail!("sending a submission failed: {e}");
            }
        }
        anyhow::Ok(())
    };
    // try_join: a failed send ends the measurement at once instead of waiting for tasks that were never sent.
    tokio::try_join!(sending, wait_for_successes(&mut completions, store, opts.tasks, already, t0))?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let n = opts.tasks as f64;
    println!();
    println!("2) whole path: {} submissions sent to the inbound queue -> all SUCCESS", opts.tasks);
    println!(
        "   from the first send to the last SUCCESS: {secs:.2} s = {:.0} tasks/s ({} submission(s) per message)",
        n / secs,
        per_message
    );
    println!("   process CPU (scheduler and submitting client): {:.3} ms per task ({cpu:.1} s CPU)", cpu * 1000.0 / n);
    if let (Some(s), Some(c), Some((sends0, all0))) = (sqs, &client_sqs, client0) {
        let scheduler = s.api_calls() - scheduler0;
        let client_sends = sends(c) - sends0;
        let client_other = c.api_calls() - all0 - client_sends;
        println!(
            "   SQS API requests per task, whole path: {:.2} = scheduler {:.2} ({scheduler}, idle long polls \
             included) + submitting client {:.2} ({client_sends} SendMessageBatch)",
            (scheduler + client_sends) as f64 / n,
            scheduler as f64 / n,
            client_sends as f64 / n
        );
        println!(
            "   not counted: {client_other} depth polls by the benchmark's client (back-pressure for the emulator, at \
             most {SQS_MAX_BACKLOG} queued)"
        );
        println!("   scheduler requests by operation in this measurement:");
        for ((op, count), (_, before)) in s.api_calls_by_op().into_iter().zip(by_op0) {
            if count > before {
                println!("     {op:<32} {}", count - before);
            }
        }
    }
    Ok(())
}

fn sends(s: &SqsTransport) -> u64 {
    s.api_calls_by_op().into_iter().find(|(op, _)| *op == "SendMessageBatch").map_or(0, |(_, n)| n)
}

/// Idle, one task at a time: submit on the inbound queue, time until that task's own SUCCESS is applied.
pub async fn idle_latency(
    samples: usize,
    store: &TaskStore,
    app: &App,
    transport: &Arc<dyn Transport>,
) -> anyhow::Result<IdleLatency> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lat = Vec::with_capacity(samples);
    let mut others = 0usize;
    for i in 0..samples {
        let mut rx = app.completions();
        let payload = json!({"latency": i});
        let body = crate::protocol::submit_message("noop", &payload);
        let t = Instant::now();
        transport.send(Queue::Inbound, &[body]).await?;
        loop {
            let a = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .with_context(|| format!("latency sample {i}: no SUCCESS within 30 s"))??;
            let elapsed = t.elapsed();
            if a.state != TaskState::Success {
                continue;
            }
            // The task id is assigned when the submission is persisted: recognise ours by its payload.
            let task = store.get(a.id).await?;
            if task.is_some_and(|task| task.payload == payload) {
                lat.push(elapsed.as_secs_f64() * 1000.0);
                break;
            }
            others += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat.sort_by(f64::total_cmp);
    Ok(IdleLatency { sorted_ms: lat, others })
}

/// Idle latency samples (ms, ascending), and how many other tasks' completions were seen meanwhile.
pub struct IdleLatency {
    pub sorted_ms: Vec<f64>,
    pub others: usize,
}

fn print_latency(l: &IdleLatency) {
    let lat = &l.sorted_ms;
    println!();
    println!(
        "3) idle latency, submit on the inbound queue -> that task's SUCCESS applied, {} samples (one at a time):",
        lat.len()
    );
    let ms = |q: Option<f64>| q.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2} ms"));
    let p99 = super::quantile(lat, 0.99);
    println!(
        "   p50 {}, p90 {}, p99 {}, max {}{}",
        ms(super::quantile(lat, 0.5)),
        ms(super::quantile(lat, 0.9)),
        ms(p99),
        ms(lat.last().copied()),
        if p99.is_none() { "  (n/a: too few samples; p90 needs 100, p99 1,000)" } else { "" }
    );
    if l.others > 0 {
        println!("   ({} other tasks' completions were seen and skipped)", l.others);
    }
}

async fn success_count(store: &TaskStore) -> anyhow::Result<usize> {
    Ok(store.counts_by_state().await?.iter().find(|c| c.0 == TaskState::Success).map_or(0, |c| c.1 as usize))
}

/// Waits until `n` more SUCCESS completions arrived (beyond `already` SUCCESS rows in the table); falls back to
/// the database's count when the broadcast lagged or was quiet for a minute.
async fn wait_for_successes(
    completions: &mut broadcast::Receiver<Applied>,
    store: &TaskStore,
    n: usize,
    already: usize,
    t0: Instant,
) -> anyhow::Result<()> {
    let mut finished = 0usize;
    while finished < n {
        match tokio::time::timeout(Duration::from_secs(60), completions.recv()).await {
            Ok(Ok(a)) if a.state == TaskState::Success => finished += 1,
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) | Err(_) => {
                finished = success_count(store).await?.saturating_sub(already);
                if t0.elapsed() > Duration::from_secs(3600) {
                    bail!("gave up after an hour with {finished} of {n} finished");
                }
            }
            Ok(Err(RecvError::Closed)) => bail!("completions closed"),
        }
    }
    Ok(())
}
