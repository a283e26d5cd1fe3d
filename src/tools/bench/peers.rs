//! The peers `bench compare --with-peers` prints beside our figures: Graphile Worker 0.18, measured by
//! `scripts/bench-graphile` (npm-installed on first use) on the same PostgreSQL cluster, in its own database.

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::process::Command;

/// Graphile Worker's figures.
#[derive(Debug, Clone)]
pub struct GraphileFigures {
    /// W1 drain in batched mode (local queue 200, batched completion), start-up included.
    pub drain_per_second: f64,
    /// Idle latency in its default mode, addJob -> the job's row deleted.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Runs `scripts/bench-graphile TASKS SAMPLES` (from the current directory: the repository's root) against the
/// cluster of `database_url`; its last line carries the figures.
pub fn graphile(database_url: &str, tasks: usize, latency_samples: usize) -> anyhow::Result<GraphileFigures> {
    let script = std::path::Path::new("scripts/bench-graphile");
    if !script.exists() {
        bail!("{} not found: run bench compare --with-peers from the repository's root", script.display());
    }
    let mut url = url::Url::parse(database_url)?;
    url.set_path("/postgres");
    let out = Command::new(script)
        .arg(tasks.to_string())
        .arg(latency_samples.to_string())
        .env("DATABASE_URL", url.as_str())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} failed ({}): {}{}", script.display(), out.status, stdout, String::from_utf8_lossy(&out.stderr));
    }
    for line in stdout.lines().filter(|l| !l.starts_with("graphile:")) {
        println!("  {line}");
    }
    let figures: HashMap<&str, &str> = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("graphile:"))
        .with_context(|| format!("no `graphile:` line in the output of {}: {stdout}", script.display()))?
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let number = |k: &str| figures.get(k).and_then(|v| v.parse::<f64>().ok());
    Ok(GraphileFigures {
        drain_per_second: number("drain_per_s").context("no drain_per_s")?,
        latency_p50_ms: number("latency_p50_ms"),
        latency_p99_ms: number("latency_p99_ms"),
    })
}
