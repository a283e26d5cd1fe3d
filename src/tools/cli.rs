//! Command-line interface: parses arguments, loads the configuration, dispatches to a command.
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use crate::configuration::{Settings, TransportKind};
use crate::db;
use crate::handlers::HandlerRegistry;
use crate::startup::{connect_transport, App, Role};
use crate::store::TaskStore;
use crate::tools::load::{LoadOptions, Via};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sqs-scheduler",
    version,
    about = "A distributed task scheduler: Postgres keeps every task's state, SQS carries the work.",
    long_about = "A distributed task scheduler: clients submit JSON-RPC 2.0 tasks to the inbound queue (or over HTTP), \
Postgres keeps every task's state, queues (Amazon SQS, or in-process) carry work to workers and results back.\n\n\
Configuration: compiled defaults < TOML file (--config, SCHEDULER_CONFIG or ./scheduler.toml) < environment \
variables SCHEDULER_<SECTION>__<KEY> (e.g. SCHEDULER_DATABASE__URL). See scheduler.example.toml."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "SCHEDULER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// Run the scheduler: every role in this process, or the ones given with --role.
    Run {
        /// Roles to run (repeatable); all of them when none is given.
        #[arg(long = "role", value_enum)]
        roles: Vec<Role>,
        /// Do not apply pending migrations at start.
        #[arg(long)]
        no_migrate: bool,
        /// Seconds to finish in-flight work after SIGINT/SIGTERM.
        #[arg(long, default_value_t = 30.0)]
        grace_secs: f64,
    },
    /// Load generator: insert random t_object rows and submit an export task for each; print a summary.
    Load {
        /// How many objects (and export tasks).
        #[arg(long, default_value_t = 1000)]
        objects: usize,
        /// Submissions per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Where submissions go.
        #[arg(long, value_enum, default_value = "sqs")]
        via: Via,
        /// Also run the whole pipeline in this process (always on with --via local).
        #[arg(long)]
        with_pipeline: bool,
        /// Give up waiting for the tasks after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// API address for --via http (default: http.bind).
        #[arg(long)]
        url: Option<String>,
        /// Bearer token for --via http.
        #[arg(long, env = "SCHEDULER_API_TOKEN")]
        token: Option<String>,
        /// Pause submitting while the inbound queue holds more than this many messages (0: never).
        #[arg(long, default_value_t = 1000)]
        max_backlog: u64,
    },
    /// List the cron schedules in the database: expression, zone, action, state, next and last tick, skipped ticks.
    /// (Create, pause, resume and delete them over JSON-RPC: schedule.*; declare them in [[schedules]].)
    Schedules,
    /// Per-action settings (as the JSON-RPC action.* methods), straight in the database; prints the result as JSON.
    /// A bad value exits 2 naming it.
    Action {
        #[command(subcommand)]
        which: ActionCommand,
    },
    /// Benchmarks; use a release build (`--profile perf` or `--release`).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ActionCommand {
    /// Settings plus tasks by state, of every action or of one.
    List { action: Option<String> },
    /// Sets limits and defaults; "none" removes one.
    Configure {
        action: String,
        /// At most this many tasks of the action ACQUIRED at once, across every process.
        #[arg(long, allow_hyphen_values = true)]
        max_concurrency: Option<String>,
        /// At most this many acquisitions per second, across every process.
        #[arg(long, allow_hyphen_values = true)]
        rate_per_sec: Option<String>,
        /// Timeout of one run of its tasks (seconds), unless a task has its own.
        #[arg(long, allow_hyphen_values = true)]
        timeout_secs: Option<String>,
        /// max_attempts of its tasks submitted without one.
        #[arg(long, allow_hyphen_values = true)]
        max_attempts: Option<String>,
    },
    /// Its queued tasks are not acquired; its running ones finish.
    Pause { action: String },
    /// Acquired again.
    Resume { action: String },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// submit_many -> acquire_batch -> complete_many throughput, and acquire latency against table size.
    Store {
        /// Tasks per batch size (at most 5,000 at batch size 1).
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        batch_sizes: Vec<usize>,
        /// Rows in the table for the last acquire-latency measurement.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
    /// HTTP submit throughput: concurrent clients, one submit:noop per call, against an in-process server.
    Http {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 50_000)]
        total: usize,
    },
    /// Drain pre-inserted noop tasks; the whole path from the inbound queue; idle single-task latency.
    Pipeline {
        /// Transport to measure (sqs, rabbitmq: the configured endpoint or broker; a fresh queue set is created and
        /// deleted at the end).
        #[arg(long, value_enum, default_value = "memory")]
        transport: TransportKind,
        /// Tasks per measurement (drain of pre-inserted tasks, and whole path from the inbound queue).
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Idle single-task latency samples (p99 is printed from 1,000 samples on; 0 skips the measurement).
        #[arg(long, default_value_t = 1_000)]
        latency_samples: usize,
        /// Tasks and results packed per message (transport.tasks_per_message; default: as configured, 1).
        #[arg(long)]
        tasks_per_message: Option<usize>,
    },
    /// Diamond workflows a -> (b, c) -> d: workflows/s and stage-to-stage latency p50/p99.
    Workflows {
        /// Transport to measure (sqs: the configured endpoint; a fresh queue set is created).
        #[arg(long, value_enum, default_value = "memory")]
        transport: TransportKind,
        /// Diamonds to run.
        #[arg(long, default_value_t = 1_000)]
        workflows: usize,
    },
    /// The roles as separate processes over RabbitMQ (submitter, scheduler, N workers, resulter, supervisor):
    /// submissions on the inbound queue -> all SUCCESS; tasks/s, end-to-end p50/p99, CPU per process.
    Processes {
        /// Submissions (noop tasks).
        #[arg(long, default_value_t = 50_000)]
        tasks: usize,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Tasks and results packed per message (transport.tasks_per_message; default: as configured, 1).
        #[arg(long)]
        tasks_per_message: Option<usize>,
    },
}

/// Exit code of `run` when the root supervisor gave up (EX_SOFTWARE).
pub const EXIT_GAVE_UP: u8 = 70;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.log);
    match run(cli.command, settings) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config => {
            print!("{}", settings.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let applied = db::run_migrations_blocking(&settings.database.url)?;
            tracing::info!(applied = applied.len(), versions = ?applied, "migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { roles, no_migrate, grace_secs } => {
            // A configured schedule must name an action this deployment knows (the handlers built in, or
            // `[actions] known`), like any submission: refused at start, naming the entry.
            let known = crate::handlers::KnownActions::new(&HandlerRegistry::builtin(), &settings.actions);
            if let Some((i, s)) = settings.schedules.iter().enumerate().find(|(_, s)| !known.is_known(&s.action)) {
                eprintln!(
                    "configuration error: schedules[{i}] ({:?}): action: unknown action {:?} (declare it in [actions] \
                     known, or set [actions] accept_unknown = true)",
                    s.name, s.action
                );
                return Ok(ExitCode::from(2));
            }
            if !no_migrate {
                db::run_migrations_blocking(&settings.database.url)?;
            }
            if settings.transport.kind == TransportKind::Memory && !roles.is_empty() && roles.len() < Role::ALL.len() {
                eprintln!("configuration error: transport.kind: memory needs every role in one process (drop --role)");
                return Ok(ExitCode::from(2));
            }
            actix_rt::System::new().block_on(async move {
                let transport = connect_transport(&settings).await?;
                // Caught from here on, before the roles and the HTTP server start: a signal while they start still
                // means a graceful shutdown (it used to kill the process before the SIGINT handler existed), and
                // "HTTP server listening" is logged only once signals are handled. Ctrl-C while the transport
                // connects (which may hang) still ends the process at once.
                let signals = ShutdownSignals::install()?;
                let http = http_state(&settings, &roles, transport.clone())?;
                let app = App::start_with_http(settings.clone(), &roles, transport, HandlerRegistry::builtin(), http);
                #[cfg(feature = "test-hooks")]
                if let Ok(stage) = std::env::var("SQS_SCHEDULER_TEST_PANIC_LOOP") {
                    app.keep_panicking(&stage);
                }
                let gave_up = tokio::select! {
                    _ = signals.wait() => None,
                    reason = app.gave_up() => Some(reason),
                };
                if let Some(reason) = gave_up {
                    // Past the root's restart intensity: leave it to the orchestrator (compose, systemd,
                    // Kubernetes) to start a fresh process. Unfinished work is redelivered or rescued.
                    tracing::error!(%reason, exit_code = EXIT_GAVE_UP, "the root supervisor gave up; exiting");
                    return Ok::<_, anyhow::Error>(ExitCode::from(EXIT_GAVE_UP));
                }
                app.shutdown(Duration::from_secs_f64(grace_secs)).await;
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Schedules => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let rows = rt.block_on(async {
                TaskStore::new(db::build_pool(&settings.database), settings.retry.backoff()).list_schedules().await
            })?;
            print!("{}", schedules_table(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Load { objects, rate, via, with_pipeline, timeout_secs, url, token, max_backlog } => {
            db::run_migrations_blocking(&settings.database.url)?;
            let opts = LoadOptions {
                objects,
                rate,
                via,
                with_pipeline,
                timeout: Duration::from_secs(timeout_secs),
                http_url: url,
                http_token: token,
                max_backlog,
            };
            let summary = actix_rt::System::new().block_on(crate::tools::load::run(settings, opts))?;
            let unfinished = objects as i64 - summary.finished;
            Ok(if unfinished > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Action { which } => {
            let (method, params) = action_call(which);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let answer = rt.block_on(async {
                let store = TaskStore::new(db::build_pool(&settings.database), settings.retry.backoff());
                crate::http::levers::call_action(&store, method, Some(params)).await
            });
            match answer {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) if e.code == crate::protocol::INVALID_PARAMS => {
                    eprintln!("{}", e.message);
                    Ok(ExitCode::from(2))
                }
                Err(e) => Err(anyhow::anyhow!(e.message)),
            }
        }
        Command::Bench { which: BenchCommand::Http { clients, total } } => {
            with_scratch_database(settings, |mut s| {
                s.http.bind = "127.0.0.1:0".into();
                s.http.api_tokens = vec!["bench".into()];
                actix_rt::System::new().block_on(async move {
                    let state = crate::http::HttpState {
                        store: TaskStore::new(db::build_pool(&s.database), s.retry.backoff()),
                        transport: None,
                        rpc_enabled: true,
                        known_actions: crate::handlers::KnownActions::new(&HandlerRegistry::builtin(), &s.actions),
                        settings: std::sync::Arc::new(s),
                    };
                    let (handle, addr) = crate::http::start_server(state).await?;
                    let r =
                        crate::tools::bench::http::run(&format!("http://{addr}/rpc"), Some("bench"), clients, total)
                            .await;
                    handle.stop(true).await;
                    r
                })
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which: BenchCommand::Pipeline { transport, tasks, latency_samples, tasks_per_message } } => {
            with_scratch_database(settings, |mut s| {
                s.transport.kind = transport;
                s.transport.tasks_per_message = tasks_per_message.unwrap_or(s.transport.tasks_per_message);
                s.validate()?;
                s.sqs.queue_prefix = format!("bench{}", std::process::id());
                s.rabbitmq.queue_prefix = format!("bench{}", std::process::id());
                s.http.bind = String::new();
                actix_rt::System::new().block_on(crate::tools::bench::pipeline::run(
                    s,
                    crate::tools::bench::pipeline::PipelineBenchOptions { tasks, latency_samples },
                ))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which: BenchCommand::Workflows { transport, workflows } } => {
            with_scratch_database(settings, |mut s| {
                s.transport.kind = transport;
                s.sqs.queue_prefix = format!("bench{}", std::process::id());
                s.rabbitmq.queue_prefix = format!("bench{}", std::process::id());
                s.http.bind = String::new();
                actix_rt::System::new().block_on(crate::tools::bench::workflows::run(
                    s,
                    crate::tools::bench::workflows::WorkflowBenchOptions { workflows },
                ))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which: BenchCommand::Processes { tasks, workers, tasks_per_message } } => {
            with_scratch_database(settings, |mut s| {
                s.transport.kind = TransportKind::RabbitMq;
                s.transport.tasks_per_message = tasks_per_message.unwrap_or(s.transport.tasks_per_message);
                s.validate()?;
                s.rabbitmq.queue_prefix = format!("bench{}", std::process::id());
                actix_rt::System::new().block_on(crate::tools::bench::processes::run(
                    s,
                    crate::tools::bench::processes::ProcessesBenchOptions { tasks, workers },
                ))
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which: BenchCommand::Store { tasks, batch_sizes, rows } } => {
            with_scratch_database(settings, |s| {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                rt.block_on(async move {
                    let store = TaskStore::new(db::build_pool(&s.database), s.retry.backoff());
                    let opts =
                        crate::tools::bench::store::StoreBenchOptions { tasks, batch_sizes, big_table_rows: rows };
                    crate::tools::bench::store::run(&store, &opts).await
                })
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The JSON-RPC method and params an `action` subcommand stands for (validated by the same code as over HTTP).
fn action_call(which: ActionCommand) -> (&'static str, serde_json::Value) {
    use serde_json::{json, Value};
    // "none" removes a setting (null); a number is a number; anything else is passed on for the validator to name.
    let value = |v: String| match v.as_str() {
        "none" => Value::Null,
        _ => serde_json::from_str::<serde_json::Number>(&v).map(Value::Number).unwrap_or(Value::String(v)),
    };
    match which {
        ActionCommand::List { action } => ("action.list", json!({"action": action})),
        ActionCommand::Pause { action } => ("action.pause", json!({"action": action})),
        ActionCommand::Resume { action } => ("action.resume", json!({"action": action})),
        ActionCommand::Configure { action, max_concurrency, rate_per_sec, timeout_secs, max_attempts } => {
            let mut p = json!({"action": action});
            for (k, v) in [
                ("max_concurrency", max_concurrency),
                ("rate_per_sec", rate_per_sec),
                ("timeout_secs", timeout_secs),
                ("max_attempts", max_attempts),
            ] {
                if let Some(v) = v {
                    p[k] = value(v);
                }
            }
            ("action.configure", p)
        }
    }
}

/// SIGINT and SIGTERM, caught from `install` on (a signal before `wait` is not lost).
struct ShutdownSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// Resolves on SIGINT or SIGTERM.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => tracing::info!("SIGINT received"),
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
        }
    }
}

/// Starts the HTTP server (API on /rpc when this process persists submissions; /metrics, /healthz, /readyz always)
/// unless `http.bind` is empty.
/// What the HTTP server of `run` serves (API on /rpc when this process persists submissions; /metrics, /healthz,
/// /readyz always), or None when `http.bind` is empty. The address is tried here, so a port already taken is an
/// error at start rather than a server that its supervisor restarts in vain.
fn http_state(
    settings: &Settings,
    roles: &[Role],
    transport: std::sync::Arc<dyn crate::transport::Transport>,
) -> anyhow::Result<Option<crate::http::HttpState>> {
    let bind = settings.http.bind.trim();
    if bind.is_empty() {
        return Ok(None);
    }
    drop(std::net::TcpListener::bind(bind).map_err(|e| anyhow::anyhow!("cannot bind the HTTP server to {bind}: {e}"))?);
    Ok(Some(crate::http::HttpState {
        settings: std::sync::Arc::new(settings.clone()),
        store: TaskStore::new(db::build_pool(&settings.database), settings.retry.backoff()).reporting_as("http"),
        transport: Some(transport),
        rpc_enabled: roles.is_empty() || roles.contains(&Role::Submitter),
        known_actions: crate::handlers::KnownActions::new(&HandlerRegistry::builtin(), &settings.actions),
    }))
}

/// Runs `f` with the settings pointed at a fresh, migrated database next to the configured one; drops it after.
fn with_scratch_database(settings: Settings, f: impl FnOnce(Settings) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let name = format!("scheduler_bench_{}", std::process::id());
    let base = settings.database.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = rt.block_on(db::create_database(&base, &name))?;
    db::run_migrations_blocking(&url)?;
    let mut s = settings;
    s.database.url = url.into();
    let res = f(s);
    rt.block_on(db::drop_database(&base, &name))?;
    res
}

/// The schedules as an aligned text table (times in UTC, RFC 3339).
fn schedules_table(rows: &[crate::store::StoredSchedule]) -> String {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut lines =
        vec![["NAME", "CRON", "TIMEZONE", "ACTION", "STATE", "NEXT TICK", "LAST TICK", "SKIPPED", "SOURCE"]
            .map(String::from)];
    for r in rows {
        lines.push([
            r.name.clone(),
            r.cron.clone(),
            r.timezone.clone(),
            r.action.clone(),
            if r.paused { "paused" } else { "active" }.into(),
            time(&r.next_run_at),
            r.last_tick_at.as_ref().map(time).unwrap_or_else(|| "-".into()),
            r.skipped_ticks.to_string(),
            r.source.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..9).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
