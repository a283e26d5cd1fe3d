//! What PostgreSQL says about a benchmark's database: deadlocks and dead tuples (its cumulative statistics), read
//! after the benchmark's own connections are closed, so their pending counters have been flushed; and the
//! scratch database every benchmark runs in.

use crate::configuration::Settings;
use crate::db;
use std::time::Duration;

/// A scratch database's statistics at the end of a benchmark.
#[derive(Debug, Clone, Default)]
pub struct DbStats {
    /// pg_stat_database.deadlocks of the database (0 when it was created).
    pub deadlocks: i64,
    /// (table, n_dead_tup, n_live_tup) of the tables with dead tuples, most first (pg_stat_user_tables).
    pub dead_tuples: Vec<(String, i64, i64)>,
}

impl DbStats {
    /// "tasks 12,345 dead / 0 live, ..." of the `n` tables with the most dead tuples.
    pub fn dead_tuples_cell(&self, n: usize) -> String {
        if self.dead_tuples.is_empty() {
            return "none".into();
        }
        let cells: Vec<String> =
            self.dead_tuples.iter().take(n).map(|(t, dead, live)| format!("{t} {dead} dead/{live} live")).collect();
        cells.join(", ")
    }
}

/// Runs `f` with the settings pointed at a fresh, migrated database next to the configured one, reads its
/// statistics once `f` has returned (and closed its connections), and drops it.
pub fn scratch_database<T>(
    settings: Settings,
    f: impl FnOnce(Settings) -> anyhow::Result<T>,
) -> anyhow::Result<(T, DbStats)> {
    let name = format!("scheduler_bench_{}", std::process::id());
    let base = settings.database.url.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = rt.block_on(db::create_database(&base, &name))?;
    db::run_migrations_blocking(&url)?;
    let mut s = settings;
    s.database.url = url.into();
    let res = f(s.clone());
    let stats = match &res {
        Ok(_) => rt.block_on(read_stats(&s)),
        Err(_) => Ok(DbStats::default()),
    };
    rt.block_on(db::drop_database(&base, &name))?;
    Ok((res?, stats?))
}

async fn client(settings: &Settings) -> anyhow::Result<tokio_postgres::Client> {
    let connector = db::Connector::new(&settings.database).map_err(anyhow::Error::msg)?;
    let (client, conn) = connector.connect().await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn read_stats(settings: &Settings) -> anyhow::Result<DbStats> {
    // A backend flushes its pending statistics at exit or when idle for a second: give closed pools that second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = client(settings).await?;
    let deadlocks: i64 = c
        .query_one("SELECT coalesce(deadlocks, 0) FROM pg_stat_database WHERE datname = current_database()", &[])
        .await?
        .get(0);
    let dead_tuples = c
        .query(
            "SELECT relname::text, n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE n_dead_tup > 0 \
             ORDER BY n_dead_tup DESC",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(DbStats { deadlocks, dead_tuples })
}

/// The server's version (`SHOW server_version`).
pub async fn server_version(settings: &Settings) -> anyhow::Result<String> {
    Ok(client(settings).await?.query_one("SHOW server_version", &[]).await?.get(0))
}
