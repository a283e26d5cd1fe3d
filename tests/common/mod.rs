//! Test support: each test gets its own freshly created and migrated database, dropped afterwards.
#![allow(dead_code)]

use sqs_scheduler::configuration::DatabaseSettings;
use sqs_scheduler::db;
use sqs_scheduler::store::{Backoff, TaskStore};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The server tests run against: DATABASE_URL, or the local trust-auth PostgreSQL.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("t_{}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst), rand::random::<u32>());
        let url = db::create_database(&base_url(), &name).await.expect("create test database");
        db::run_migrations(&url).await.expect("migrate test database");
        TestDb { name, url }
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings { url: self.url.clone(), pool_size: 12, min_idle: 0, ..DatabaseSettings::default() }
    }

    pub fn store(&self) -> TaskStore {
        self.store_with(Backoff::default())
    }

    pub fn store_with(&self, backoff: Backoff) -> TaskStore {
        TaskStore::new(db::build_pool(&self.settings()), backoff)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = rt.block_on(db::drop_database(&base_url(), &name));
        })
        .join();
    }
}

/// Runs a SQL statement in the test database (test setup that the store offers no operation for).
pub async fn exec(url: &str, sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

/// Runs `promtool check metrics` on an exposition and returns its report (empty when it found nothing). Panics
/// when promtool cannot run: a check that is silently skipped proves nothing. `scripts/dev-services up` (or
/// `scripts/dev-services promtool`) installs it.
pub fn promtool_report(exposition: &[u8]) -> String {
    promtool_check(exposition).unwrap_or_else(|| {
        panic!(
            "promtool cannot run (not on PATH?): install it with `scripts/dev-services promtool` \
             (Debian package prometheus, /usr/bin/promtool)"
        )
    })
}

/// Runs `promtool check metrics` on an exposition; None when promtool is not installed, else its report
/// (empty when it found nothing). Tests use [`promtool_report`], which fails instead of skipping.
pub fn promtool_check(exposition: &[u8]) -> Option<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(exposition).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() { report } else { format!("exit {:?}: {report}", out.status.code()) })
}

pub mod pipeline;
pub mod proxy;
