//! Command-line interface: parses arguments, loads the configuration, dispatches to a command.
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use crate::configuration::Settings;
use crate::db;
use crate::store::TaskStore;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Benchmarks; use a release build (`--profile perf` or `--release`).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// submit_many -> acquire_batch -> complete_many throughput, and acquire latency against table size.
    Store {
        /// Tasks per batch size.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        batch_sizes: Vec<usize>,
        /// Rows in the table for the last acquire-latency measurement.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
}

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
        Command::Bench {
            which:
                BenchCommand::Store {
                    tasks,
                    batch_sizes,
                    rows,
                },
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let name = format!("scheduler_bench_{}", std::process::id());
                let url = db::create_database(&settings.database.url, &name).await?;
                db::run_migrations(&url).await?;
                let mut dbs = settings.database.clone();
                dbs.url = url;
                let store = TaskStore::new(db::build_pool(&dbs), settings.retry.backoff());
                let res = crate::bench::store::run(
                    &store,
                    &crate::bench::store::StoreBenchOptions {
                        tasks,
                        batch_sizes,
                        big_table_rows: rows,
                    },
                )
                .await;
                drop(store);
                db::drop_database(&settings.database.url, &name).await?;
                res
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
