//! `sqs-scheduler bench compare`: every figure issue 18 sets a target for, in one table with the machine's figures
//! and the checkout's commit, so every change is judged against the same table. Each measurement runs in a fresh
//! scratch database (see compare_rows); `--only` and `--quick` make it usable while iterating.

use super::compare_rows as rows;
use super::{peers, quantile, DbStats};
use crate::configuration::{Settings, TransportKind};
use std::time::Duration;

/// The measurements, in the order they run (`--only` takes these names).
pub const MEASUREMENTS: &[&str] =
    &["w1", "w1-1m", "latency", "http", "http-batch", "sql", "store", "rabbitmq", "acquire", "snapshot"];

#[derive(clap::Args, Debug, Clone)]
pub struct CompareOptions {
    /// Only these measurements (comma-separated): w1, w1-1m, latency, http, http-batch, sql, store, rabbitmq,
    /// acquire, snapshot.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Smaller scales (1M -> 100k tasks, 200 latency samples, a 10 s snapshot hold, ...): for iterating, not for
    /// figures.
    #[arg(long)]
    pub quick: bool,
    /// Runs of each short measurement; the best is kept (the machine is shared: the best run is the least
    /// disturbed one).
    #[arg(long, default_value_t = 2)]
    pub best_of: usize,
    /// Also measure Graphile Worker 0.18 (scripts/bench-graphile, npm) and print its figures beside ours.
    #[arg(long)]
    pub with_peers: bool,
}

/// The scale of each measurement.
struct Scale {
    w1_big: usize,
    latency_samples: usize,
    http_total: usize,
    http_batch_total: usize,
    sql_total: usize,
    store_tasks: usize,
    rabbitmq_tasks: usize,
    acquire_big: usize,
    snapshot_window: Duration,
    snapshot_hold: Duration,
}

impl Scale {
    fn new(quick: bool) -> Scale {
        if quick {
            Scale {
                w1_big: 100_000,
                latency_samples: 200,
                http_total: 10_000,
                http_batch_total: 50_000,
                sql_total: 10_000,
                store_tasks: 20_000,
                rabbitmq_tasks: 5_000,
                acquire_big: 100_000,
                snapshot_window: Duration::from_secs(5),
                snapshot_hold: Duration::from_secs(10),
            }
        } else {
            Scale {
                w1_big: 1_000_000,
                latency_samples: 1_000,
                http_total: 20_000,
                http_batch_total: 200_000,
                sql_total: 20_000,
                store_tasks: 100_000,
                rabbitmq_tasks: 20_000,
                acquire_big: 1_000_000,
                snapshot_window: Duration::from_secs(20),
                snapshot_hold: Duration::from_secs(60),
            }
        }
    }
}

/// W1's small size, as in the issue (and the peer's).
const W1_SMALL: usize = 20_000;
/// Due tasks for acquire_batch's small-backlog figure.
const ACQUIRE_SMALL: usize = 10_000;
/// Transitions (acquire + complete) right before acquire_batch is timed.
const ACQUIRE_BURST: usize = 10_000;
const HTTP_CLIENTS: usize = 16;
const HTTP_BATCH_CLIENTS: usize = 4;
const HTTP_BATCH: usize = 1_000;
const SQL_CONNECTIONS: usize = 8;
const SNAPSHOT_BACKLOG: u64 = 50_000;

/// One line of the table.
struct Row {
    name: String,
    ours: String,
    target: String,
    met: Option<bool>,
    peer: String,
}

impl Row {
    fn new(name: impl Into<String>, ours: impl Into<String>, target: impl Into<String>, met: Option<bool>) -> Row {
        Row { name: name.into(), ours: ours.into(), target: target.into(), met, peer: String::new() }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2} ms"))
}

fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out + "/s"
}

/// Runs the selected measurements and prints the table.
pub fn run(settings: Settings, opts: CompareOptions) -> anyhow::Result<()> {
    for m in &opts.only {
        anyhow::ensure!(MEASUREMENTS.contains(&m.as_str()), "--only {m}: not one of {}", MEASUREMENTS.join(", "));
    }
    let on = |m: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == m);
    let scale = Scale::new(opts.quick);
    let best_of = opts.best_of.max(1);
    let started = chrono::Utc::now();
    let load_before = load_average();
    let mut table: Vec<Row> = Vec::new();
    let mut deadlocks = 0i64;
    let mut dead_tuples: Vec<(String, DbStats)> = Vec::new();
    // The best of `best_of` runs by `key` (larger is better), every run's statistics noted.
    fn best<T>(
        runs: usize,
        mut f: impl FnMut() -> anyhow::Result<(T, DbStats)>,
        key: impl Fn(&T) -> f64,
        stats: &mut Vec<DbStats>,
    ) -> anyhow::Result<T> {
        let mut kept: Option<T> = None;
        for _ in 0..runs {
            let (t, s) = f()?;
            stats.push(s);
            if kept.as_ref().is_none_or(|k| key(&t) > key(k)) {
                kept = Some(t);
            }
        }
        Ok(kept.expect("at least one run"))
    }
    let mut stats: Vec<DbStats> = Vec::new();
    // Every scratch database's deadlocks and dead tuples, by measurement.
    let mut flush = |name: &str, stats: &mut Vec<DbStats>| {
        for s in stats.drain(..) {
            deadlocks += s.deadlocks;
            dead_tuples.push((name.to_string(), s));
        }
    };
    let label = |name: &str| if best_of > 1 { format!("{name} (best of {best_of})") } else { name.to_string() };

    let graphile = if opts.with_peers {
        println!("measuring the peer: Graphile Worker 0.18 (scripts/bench-graphile), {W1_SMALL} jobs");
        let mut kept: Option<peers::GraphileFigures> = None;
        for _ in 0..best_of {
            let g = peers::graphile(&settings.database.url, W1_SMALL, scale.latency_samples)?;
            kept = Some(match kept {
                None => g,
                Some(k) => peers::GraphileFigures {
                    drain_per_second: k.drain_per_second.max(g.drain_per_second),
                    latency_p50_ms: min_opt(k.latency_p50_ms, g.latency_p50_ms),
                    latency_p99_ms: min_opt(k.latency_p99_ms, g.latency_p99_ms),
                },
            });
        }
        kept
    } else {
        None
    };
    let w1_target = match &graphile {
        Some(g) => (format!(">= 2x Graphile = {}", rate(2.0 * g.drain_per_second)), 2.0 * g.drain_per_second),
        None => (">= 2x Graphile batched (~40,000/s)".to_string(), 40_000.0),
    };

    if on("w1") {
        println!("measuring w1: drain of {W1_SMALL} pre-enqueued noop tasks, in-process transport");
        let d =
            best(best_of, || rows::drain(&settings, TransportKind::Memory, W1_SMALL), |d| d.per_second(), &mut stats)?;
        flush("w1", &mut stats);
        let mut row = Row::new(
            label(&format!("W1 drain {W1_SMALL}, in-process, incl. start-up")),
            rate(d.per_second()),
            w1_target.0.clone(),
            Some(d.per_second() >= w1_target.1),
        );
        row.peer =
            graphile.as_ref().map_or(String::new(), |g| format!("Graphile batched {}", rate(g.drain_per_second)));
        table.push(row);
        if let Some((secs, _)) = d.from_first_acquisition {
            table.push(Row::new("  the same, from the first acquisition", rate(W1_SMALL as f64 / secs), "", None));
        }
    }
    if on("w1-1m") {
        let n = scale.w1_big;
        println!("measuring w1-1m: drain of {n} pre-enqueued noop tasks, in-process transport");
        let (d, s) = rows::drain(&settings, TransportKind::Memory, n)?;
        stats.push(s.clone());
        flush("w1-1m", &mut stats);
        table.push(Row::new(
            format!("W1 drain {n}, in-process, incl. start-up"),
            rate(d.per_second()),
            w1_target.0.clone(),
            Some(d.per_second() >= w1_target.1),
        ));
        table.push(Row::new(
            format!("  peak RSS while draining {n}"),
            format!("{:.0} MB", d.peak_rss_mb),
            "<= 100 MB",
            Some(d.peak_rss_mb <= 100.0),
        ));
        table.push(Row::new(format!("  dead tuples after draining {n}"), s.dead_tuples_cell(3), "bounded", None));
    }
    if on("latency") {
        let n = scale.latency_samples;
        println!("measuring latency: {n} idle submit -> SUCCESS samples, in-process transport");
        let l = best(
            best_of,
            || rows::idle_latency(&settings, n),
            |l| -quantile(&l.sorted_ms, 0.99).or(quantile(&l.sorted_ms, 0.5)).unwrap_or(f64::MAX),
            &mut stats,
        )?;
        flush("latency", &mut stats);
        let (p50, p99) = (quantile(&l.sorted_ms, 0.5), quantile(&l.sorted_ms, 0.99));
        let mut row = Row::new(
            label(&format!("idle latency submit -> SUCCESS, {n} samples, p50 / p99")),
            format!("{} / {}", ms(p50), ms(p99)),
            "<= 1.5 ms / <= 5 ms",
            p50.zip(p99).map(|(a, b)| a <= 1.5 && b <= 5.0),
        );
        row.peer = graphile
            .as_ref()
            .map_or(String::new(), |g| format!("Graphile default {} / {}", ms(g.latency_p50_ms), ms(g.latency_p99_ms)));
        table.push(row);
    }
    if on("http") {
        let n = scale.http_total;
        println!("measuring http: {n} submits, {HTTP_CLIENTS} clients, one task per call");
        let r = best(best_of, || rows::http(&settings, HTTP_CLIENTS, n, 1), |r| r.tasks_per_second(), &mut stats)?;
        flush("http", &mut stats);
        let (per_s, p99) = (r.tasks_per_second(), r.p99_ms());
        table.push(Row::new(
            label(&format!("HTTP submit, {HTTP_CLIENTS} clients, 1 per call, rate / p99")),
            format!("{} / {}", rate(per_s), ms(p99)),
            ">= 10,000/s / <= 10 ms",
            Some(per_s >= 10_000.0 && p99.is_some_and(|p| p <= 10.0)),
        ));
    }
    if on("http-batch") {
        let n = scale.http_batch_total;
        println!("measuring http-batch: {n} submits, {HTTP_BATCH_CLIENTS} clients, {HTTP_BATCH} per call");
        let r = best(
            best_of,
            || rows::http(&settings, HTTP_BATCH_CLIENTS, n, HTTP_BATCH),
            |r| r.tasks_per_second(),
            &mut stats,
        )?;
        flush("http-batch", &mut stats);
        table.push(Row::new(
            label(&format!("HTTP batch submit, {HTTP_BATCH_CLIENTS} clients, {HTTP_BATCH} per call")),
            rate(r.tasks_per_second()),
            ">= 50,000/s",
            Some(r.tasks_per_second() >= 50_000.0),
        ));
    }
    if on("sql") {
        let n = scale.sql_total;
        println!("measuring sql: {n} scheduler.submit calls from {SQL_CONNECTIONS} connections, a transaction each");
        let r = best(best_of, || rows::sql_submit(&settings, SQL_CONNECTIONS, n), |r| r.per_second, &mut stats)?;
        flush("sql", &mut stats);
        table.push(Row::new(
            label(&format!("SQL scheduler.submit, {SQL_CONNECTIONS} conns, own txn each, rate / p99")),
            format!("{} / {}", rate(r.per_second), ms(quantile(&r.sorted_ms, 0.99))),
            ">= 20,000/s",
            Some(r.per_second >= 20_000.0),
        ));
    }
    if on("store") {
        let n = scale.store_tasks;
        for clients in [1, 4] {
            println!("measuring store: {n} tasks, batch 100, {clients} client(s)");
            let t =
                best(best_of, || rows::store_throughput(&settings, 100, clients, n), |t| t.per_second(), &mut stats)?;
            flush("store", &mut stats);
            let (target, met) = if clients == 4 {
                (">= 30,000/s", Some(t.per_second() >= 30_000.0))
            } else {
                ("(issue: 11,200/s before)", None)
            };
            table.push(Row::new(
                label(&format!("bench store, batch 100, {clients} client(s)")),
                rate(t.per_second()),
                target,
                met,
            ));
        }
    }
    if on("rabbitmq") {
        let n = scale.rabbitmq_tasks;
        println!("measuring rabbitmq: drain of {n} pre-enqueued noop tasks, one task per message, one process");
        let d = best(best_of, || rows::drain(&settings, TransportKind::RabbitMq, n), |d| d.per_second(), &mut stats)?;
        flush("rabbitmq", &mut stats);
        table.push(Row::new(
            label(&format!("RabbitMQ drain {n}, 1 task/message, all roles, incl. start-up")),
            rate(d.per_second()),
            ">= 10,000/s",
            Some(d.per_second() >= 10_000.0),
        ));
    }
    if on("acquire") {
        let samples = if opts.quick { 200 } else { super::store::LATENCY_SAMPLES };
        let mut p99s = Vec::new();
        for queued in [ACQUIRE_SMALL, scale.acquire_big] {
            println!("measuring acquire: acquire_batch(100) x {samples} at {queued} queued, after {ACQUIRE_BURST} transitions");
            let (l, s) = rows::acquire_after_burst(&settings, queued, ACQUIRE_BURST, samples)?;
            stats.push(s.clone());
            flush("acquire", &mut stats);
            p99s.push(l.p99().or(quantile(&l.sorted_ms, 0.9)));
            let label = if l.p99().is_some() { "p99" } else { "p90 (too few samples for p99)" };
            table.push(Row::new(
                format!("acquire_batch(100) {label} at {queued} queued"),
                ms(*p99s.last().unwrap()),
                "",
                None,
            ));
        }
        if let [Some(small), Some(big)] = p99s[..] {
            table.push(Row::new(
                format!("  ratio {} / {ACQUIRE_SMALL} queued", scale.acquire_big),
                format!("{:.2}x", big / small),
                "<= 2x",
                Some(big <= 2.0 * small),
            ));
        }
    }
    if on("snapshot") {
        let (w, h) = (scale.snapshot_window, scale.snapshot_hold);
        println!(
            "measuring snapshot: steady drain ({SNAPSHOT_BACKLOG} queued), {} s clean, {} s under a held REPEATABLE \
             READ snapshot, {} s after",
            w.as_secs(),
            h.as_secs(),
            w.as_secs()
        );
        let (d, s) = rows::held_snapshot(&settings, SNAPSHOT_BACKLOG, w, h)?;
        stats.push(s.clone());
        flush("snapshot", &mut stats);
        table.push(Row::new("drain, clean", rate(d.clean), "", None));
        table.push(Row::new(
            format!("  while a snapshot is held {} s (its last quarter)", d.hold_secs),
            format!(
                "{} = {:.0} % ({} = {:.0} %)",
                rate(d.held),
                100.0 * d.held / d.clean,
                rate(d.held_last_quarter),
                100.0 * d.held_last_quarter / d.clean
            ),
            ">= 50 % of clean",
            Some(d.held >= 0.5 * d.clean),
        ));
        table.push(Row::new(
            "  after it committed",
            format!("{} = {:.0} %", rate(d.after), 100.0 * d.after / d.clean),
            "recovers (>= 90 % of clean)",
            Some(d.after >= 0.9 * d.clean),
        ));
    }
    table.push(Row::new(
        "deadlocks (pg_stat_database, every scratch database)",
        deadlocks.to_string(),
        "0",
        Some(deadlocks == 0),
    ));

    let version = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(super::pg_stats::server_version(&settings))
        .unwrap_or_else(|e| format!("unknown ({e:#})"));
    println!();
    println!(
        "bench compare{}: commit {}, {} cores, {} memory, PostgreSQL {version}",
        if opts.quick { " --quick (smaller scales: not figures)" } else { "" },
        git_commit(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_total()
    );
    println!(
        "started {} UTC, {:.0} s; load average at start {load_before}, at end {} (a shared machine: other \
         processes ran alongside)",
        started.format("%Y-%m-%d %H:%M"),
        (chrono::Utc::now() - started).num_seconds(),
        load_average()
    );
    print_table(&table, graphile.is_some());
    if dead_tuples.iter().any(|(_, s)| !s.dead_tuples.is_empty()) {
        println!();
        println!("dead tuples at the end of each measurement (pg_stat_user_tables, the 3 tables with most):");
        for (name, s) in &dead_tuples {
            println!("  {name:<12} {}", s.dead_tuples_cell(3));
        }
    }
    Ok(())
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn print_table(table: &[Row], peers: bool) {
    let w0 = table.iter().map(|r| r.name.chars().count()).max().unwrap_or(0);
    let w1 = table.iter().map(|r| r.ours.chars().count()).max().unwrap_or(0).max(4);
    let w2 = table.iter().map(|r| r.target.chars().count()).max().unwrap_or(0).max(6);
    let peer_head = if peers { "  peer" } else { "" };
    println!("{:<w0$}  {:>w1$}  {:<w2$}  {:<6}{peer_head}", "measurement", "ours", "target", "met");
    for r in table {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        let line = format!("{:<w0$}  {:>w1$}  {:<w2$}  {:<6}  {}", r.name, r.ours, r.target, met, r.peer);
        println!("{}", line.trim_end());
    }
}

/// The commit of the checkout the command runs in (`git describe --always --dirty`), or "unknown".
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=10"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn memory_total() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
