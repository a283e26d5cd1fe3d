//! `sqs-scheduler bench pipeline`: drains pre-submitted noop tasks through Acquirer -> outbound -> WorkerPool ->
//! results -> ResultSink and prints tasks/s, this process's CPU ms per task and, over SQS, API requests per task;
//! then measures idle single-task latency (submit on the inbound queue -> SUCCESS applied).

use crate::configuration::{Settings, TransportKind};
use crate::handlers::HandlerRegistry;
use crate::startup::App;
use crate::store::{Action, NewTask, Payload, TaskState, TaskStore};
use crate::transport::memory::MemoryTransport;
use crate::transport::sqs::SqsTransport;
use crate::transport::{Queue, Transport};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

pub struct PipelineBenchOptions {
    pub tasks: usize,
    pub latency_samples: usize,
}

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

/// Runs the benchmark on a migrated, empty database configured in `settings` (inside an actix System).
pub async fn run(settings: Settings, opts: PipelineBenchOptions) -> anyhow::Result<()> {
    let store = TaskStore::new(crate::db::build_pool(&settings.database), settings.retry.backoff());
    let (transport, sqs): (Arc<dyn Transport>, Option<SqsTransport>) = match settings.transport.kind {
        TransportKind::Memory => (
            Arc::new(MemoryTransport::new(Duration::from_secs(settings.transport.visibility_timeout_secs as u64))),
            None,
        ),
        TransportKind::Sqs => {
            let s = SqsTransport::create_queues(&settings.sqs, &settings.transport).await?;
            (Arc::new(s.clone()), Some(s))
        }
    };
    let noop = Action::parse("noop")?;
    let mut done = 0;
    while done < opts.tasks {
        let n = (opts.tasks - done).min(1000);
        let batch: Vec<NewTask> =
            (done..done + n).map(|i| NewTask::new(noop.clone(), Payload::parse(json!({"i": i})).unwrap())).collect();
        store.submit_many(&batch).await?;
        done += n;
    }
    println!("pipeline benchmark: transport {}, {} noop tasks pre-submitted", transport.kind(), opts.tasks);

    let calls0 = sqs.as_ref().map(|s| s.api_calls()).unwrap_or(0);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let app = App::start(settings.clone(), &[], transport.clone(), HandlerRegistry::builtin());
    let mut completions = app.completions();
    let mut finished = 0usize;
    while finished < opts.tasks {
        match tokio::time::timeout(Duration::from_secs(60), completions.recv()).await {
            Ok(Ok(a)) if a.state == TaskState::Success => finished += 1,
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) | Err(_) => {
                // Fell behind the broadcast (or quiet for a minute): ask the database.
                finished = store
                    .counts_by_state()
                    .await?
                    .iter()
                    .find(|c| c.0 == TaskState::Success)
                    .map_or(0, |c| c.1 as usize);
                if t0.elapsed() > Duration::from_secs(3600) {
                    anyhow::bail!("gave up after an hour with {finished} finished");
                }
            }
            Ok(Err(RecvError::Closed)) => anyhow::bail!("completions closed"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!("drain: {} tasks in {:.2} s = {:.0} tasks/s", opts.tasks, secs, opts.tasks as f64 / secs);
    println!(
        "scheduler process CPU: {:.3} ms per task ({:.1} s CPU over {:.1} s)",
        cpu * 1000.0 / opts.tasks as f64,
        cpu,
        secs
    );
    if let Some(s) = &sqs {
        let calls = s.api_calls() - calls0;
        println!(
            "SQS API requests: {calls} = {:.2} per task (idle long polls included)",
            calls as f64 / opts.tasks as f64
        );
        for (op, n) in s.api_calls_by_op() {
            if n > 0 {
                println!("  {op:<32} {n}");
            }
        }
    }

    if opts.latency_samples > 0 {
        // Idle, one task at a time: submit on the inbound queue, wait for its SUCCESS to be applied.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut lat = Vec::with_capacity(opts.latency_samples);
        for i in 0..opts.latency_samples {
            let mut rx = app.completions();
            let body = crate::protocol::submit_message("noop", &json!({"latency": i}));
            let t = Instant::now();
            transport.send(Queue::Inbound, &[body]).await?;
            loop {
                let a = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await??;
                if a.state == TaskState::Success {
                    break;
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        println!(
            "idle latency submit -> SUCCESS over {} samples: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            q(0.5),
            q(0.95),
            q(0.99)
        );
    }
    app.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
