//! The binary as separate role processes in tests: `sqs-scheduler run` over a test's database and SQS queue set.

use sqs_scheduler::configuration::Settings;
use std::process::{Child, Command, Stdio};

/// A child process, killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sqs-scheduler run --no-migrate --grace-secs 20 --role <roles>` over `settings`' database (its pool size) and SQS
/// queue set, with short queues (the emulator rescans a whole queue per delivered message), no HTTP server and
/// warn-level logs, environment cleared. Callers add their own `env` and spawn it.
pub fn run_roles(settings: &Settings, roles: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqs-scheduler"));
    cmd.args(["run", "--no-migrate", "--grace-secs", "20"]);
    for r in roles {
        cmd.arg("--role").arg(r);
    }
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SCHEDULER_DATABASE__URL", &settings.database.url)
        // Each child process opens a pool per stage: keep them as small as the in-process test pipelines.
        .env("SCHEDULER_DATABASE__POOL_SIZE", settings.database.pool_size.to_string())
        .env("SCHEDULER_TRANSPORT__KIND", "sqs")
        .env("SCHEDULER_TRANSPORT__WAIT_TIME_SECS", "1")
        .env("SCHEDULER_SQS__ENDPOINT_URL", settings.sqs.endpoint_url.clone().unwrap_or_default())
        .env("SCHEDULER_SQS__REGION", "us-east-1")
        .env("SCHEDULER_SQS__ACCESS_KEY_ID", "test")
        .env("SCHEDULER_SQS__SECRET_ACCESS_KEY", "test")
        .env("SCHEDULER_SQS__QUEUE_PREFIX", &settings.sqs.queue_prefix)
        .env("SCHEDULER_ACQUIRER__IDLE_WAKEUP_MS", "100")
        .env("SCHEDULER_ACQUIRER__MAX_OUTBOUND_DEPTH", "30")
        .env("SCHEDULER_ACQUIRER__BATCH_SIZE", "30")
        .env("SCHEDULER_HTTP__BIND", "")
        .env("SCHEDULER_LOG__LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// [`run_roles`], spawned.
pub fn spawn_roles(settings: &Settings, roles: &[&str], extra_env: &[(&str, String)]) -> Proc {
    let mut cmd = run_roles(settings, roles);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("spawn sqs-scheduler"))
}
