//! The Postgres connection pool (bb8 over diesel-async, no libpq) and the embedded migrations.

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn<'a> = PooledConnection<'a, AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Builds the pool. Connections are opened lazily, so this succeeds even while the database is down; the first
/// query then waits up to `connect_timeout_ms`.
pub fn build_pool(settings: &DatabaseSettings) -> DbPool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(settings.url.clone());
    Pool::builder()
        .max_size(settings.pool_size)
        .min_idle(Some(settings.min_idle.min(settings.pool_size)))
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        // A health-check query on every checkout would add a round trip to every operation; a broken connection
        // fails its statement instead and is discarded by the pool.
        .test_on_check_out(false)
        .build_unchecked(manager)
}

/// Can the database be reached now? A fresh connection and `SELECT 1`, bounded by the connect timeout (the circuit
/// breaker's probe: it must not depend on a pool whose connections may all be dead).
pub async fn probe(settings: &DatabaseSettings) -> Result<(), String> {
    let check = async {
        let (client, conn) =
            tokio_postgres::connect(&settings.url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        let driver = actix_rt::spawn(conn);
        let r = client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string());
        driver.abort();
        r
    };
    match tokio::time::timeout(Duration::from_millis(settings.connect_timeout_ms), check).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", settings.connect_timeout_ms)),
    }
}

/// A pool listed for `scheduler_db_pool_connections`, as long as its owner keeps this alive.
pub struct ReportedPool {
    stage: String,
    pool: DbPool,
}

static REPORTED: std::sync::Mutex<Vec<std::sync::Weak<ReportedPool>>> = std::sync::Mutex::new(Vec::new());

/// Lists `pool` under `stage` until the returned handle is dropped (a restarted stage's old pool disappears).
pub fn report_pool(stage: &str, pool: &DbPool) -> std::sync::Arc<ReportedPool> {
    let r = std::sync::Arc::new(ReportedPool { stage: stage.to_owned(), pool: pool.clone() });
    REPORTED.lock().unwrap().push(std::sync::Arc::downgrade(&r));
    r
}

/// (stage, connections in use, idle connections) of every pool this process reports, summed by stage.
pub fn pool_states() -> Vec<(String, u32, u32)> {
    let mut listed = REPORTED.lock().unwrap();
    listed.retain(|w| w.strong_count() > 0);
    let mut out: Vec<(String, u32, u32)> = Vec::new();
    for r in listed.iter().filter_map(|w| w.upgrade()) {
        let s = r.pool.state();
        let (in_use, idle) = (s.connections - s.idle_connections, s.idle_connections);
        match out.iter_mut().find(|o| o.0 == r.stage) {
            Some(o) => {
                o.1 += in_use;
                o.2 += idle;
            }
            None => out.push((r.stage.clone(), in_use, idle)),
        }
    }
    out
}

/// Applies pending migrations; returns the versions applied. Blocking: the async migration harness panics inside an
/// actix System, so call it before the System starts or through `run_migrations`.
pub fn run_migrations_blocking(url: &str) -> anyhow::Result<Vec<String>> {
    use diesel::Connection;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|e| anyhow::anyhow!("cannot connect to the database for migrations: {e}"))?;
    // Several processes may start at once: one migrates, the others wait and then find nothing pending.
    diesel::RunQueryDsl::execute(diesel::sql_query("SELECT pg_advisory_lock(7261737)"), &mut conn)?;
    let applied = conn.run_pending_migrations(MIGRATIONS).map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    Ok(applied.into_iter().map(|v| v.to_string()).collect())
}

/// `run_migrations_blocking` on a blocking thread, for async callers.
pub async fn run_migrations(url: &str) -> anyhow::Result<Vec<String>> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || run_migrations_blocking(&url)).await?
}

/// Creates an empty database `name` next to the one `base_url` points at, and returns its URL. Used by tests (one
/// fresh database each) and benchmarks. `name` must be a plain identifier.
pub async fn create_database(base_url: &str, name: &str) -> anyhow::Result<String> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database name {name:?} must be lowercase letters, digits and '_'"
    );
    let mut conn = AsyncPgConnection::establish(base_url).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let mut url = url::Url::parse(base_url)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops a database made by `create_database`, disconnecting its sessions.
pub async fn drop_database(base_url: &str, name: &str) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    anyhow::ensure!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    let mut conn = AsyncPgConnection::establish(base_url).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Postgres URL, e.g. postgres://user:password@host:5432/db. The password is redacted by `config`.
    pub url: String,
    /// Maximum connections in the pool.
    pub pool_size: u32,
    /// Connections kept open while idle.
    pub min_idle: u32,
    /// How long to wait for a connection before an operation fails.
    pub connect_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/scheduler".into(),
            pool_size: 16,
            min_idle: 2,
            connect_timeout_ms: 5_000,
        }
    }
}
