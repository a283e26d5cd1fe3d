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

pub mod pipeline;
