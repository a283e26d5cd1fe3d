//! Test support: each test gets its own freshly created and migrated database, dropped afterwards.
#![allow(dead_code)]

use sqs_scheduler::configuration::{DatabaseSettings, RabbitMqSettings, SqsSettings};
use sqs_scheduler::db;
use sqs_scheduler::store::{Backoff, TaskStore};
use sqs_scheduler::transport::rabbitmq::RabbitMqTransport;
use sqs_scheduler::transport::sqs::SqsTransport;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The server tests run against: DATABASE_URL, or the local trust-auth PostgreSQL.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

// Connections: the suite stays well under PostgreSQL's default max_connections = 100.
//
// Cargo runs the test binaries one after another; inside a binary the tests run in parallel on
// RUST_TEST_THREADS threads (default: the number of cores, so unbounded in general). What bounds a binary is
// MAX_LIVE_DBS: at most that many tests hold a TestDb at once, whatever the thread count. Pools open their
// connections lazily and never more than their size. Worst case per test:
// - store.rs: one TestDb::store() pool (STORE_POOL_SIZE = 4) + 1 (create/migrate/drop of the database) = 5.
// - http_api.rs: the API's store (db.settings(): 4) + a db.store() checking the outcome (4) + 1 = 9.
// - pipeline.rs: an App with pipeline::APP_POOL_SIZE = 2 caps every stage pool (Shared::new_store takes the
//   minimum of the stage's wish and database.pool_size): persister 2 + acquirer 2 (+ its LISTEN connection 1)
//   + worker pool 2 + result sink 2 + reaper 2 + stats 1 + cron scheduler 2 = 14; + 2 while a restarted stage
//   opens its new pool before the old one is closed; + db.store() 4; + 2 for exec/count_rows and create/drop = 22.
// So a binary peaks at MAX_LIVE_DBS x 22 = 66 connections (pipeline.rs), 27 (http_api.rs), 15 (store.rs).
// (tests/processes.rs starts the binary as separate processes: they get database.pool_size from their
// environment, not from these settings.)

/// Pool size of TestDb::store() and TestDb::settings().
pub const STORE_POOL_SIZE: u32 = 4;
/// At most this many tests of one binary hold a test database at once (see the arithmetic above). A test must not
/// hold two TestDbs at once; if one does and the permits run out, TestDb::new goes ahead after PERMIT_WAIT.
pub const MAX_LIVE_DBS: usize = 3;
const PERMIT_WAIT: Duration = Duration::from_secs(600);
static LIVE_DBS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LIVE_DBS);

pub struct TestDb {
    pub name: String,
    pub url: String,
    /// SQS queue sets that belong to this test (see `delete_queues_on_drop`), deleted after the database.
    queue_sets: Mutex<Vec<QueueSetCleanup>>,
    /// RabbitMQ queue sets that belong to this test, deleted after the database.
    rabbitmq_sets: Mutex<Vec<RabbitQueueSetCleanup>>,
    _permit: Option<tokio::sync::SemaphorePermit<'static>>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub async fn new() -> TestDb {
        let permit = match tokio::time::timeout(PERMIT_WAIT, LIVE_DBS.acquire()).await {
            Ok(p) => Some(p.expect("the semaphore is never closed")),
            Err(_) => {
                eprintln!("TestDb: no permit after {PERMIT_WAIT:?} (does a test hold two TestDbs?); going ahead");
                None
            }
        };
        let name = format!("t_{}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst), rand::random::<u32>());
        let url = db::create_database(&base_url(), &name).await.expect("create test database");
        db::run_migrations(&url).await.expect("migrate test database");
        TestDb { name, url, queue_sets: Mutex::new(Vec::new()), rabbitmq_sets: Mutex::new(Vec::new()), _permit: permit }
    }

    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.url.clone().into(),
            pool_size: STORE_POOL_SIZE,
            min_idle: 0,
            ..DatabaseSettings::default()
        }
    }

    /// Deletes the SQS queue set of `sqs.queue_prefix` (whichever of its queues exist) when this TestDb is dropped:
    /// at the end of the test, also when it fails.
    pub fn delete_queues_on_drop(&self, sqs: &SqsSettings) {
        self.queue_sets.lock().unwrap().push(QueueSetCleanup::new(sqs));
    }

    /// Deletes the RabbitMQ queues and exchanges of `rabbitmq.queue_prefix` when this TestDb is dropped.
    pub fn delete_rabbitmq_queues_on_drop(&self, r: &RabbitMqSettings) {
        self.rabbitmq_sets.lock().unwrap().push(RabbitQueueSetCleanup::new(r));
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
        // Drop runs inside the test's runtime: use a thread with its own. Failures are reported, not raised: a
        // panic here would abort a test that is already unwinding.
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(db::drop_database(&base_url(), &name))
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("TestDb: could not drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!("TestDb: dropping test database {} panicked", self.name),
        }
    }
}

/// Deletes an SQS queue set when dropped, also when the test fails. It uses a client of its own on a thread of its
/// own: the test's runtime may be blocked in this very drop, and the test's client is bound to that runtime.
pub struct QueueSetCleanup {
    sqs: SqsSettings,
}

impl QueueSetCleanup {
    pub fn new(sqs: &SqsSettings) -> QueueSetCleanup {
        QueueSetCleanup { sqs: sqs.clone() }
    }
}

impl Drop for QueueSetCleanup {
    fn drop(&mut self) {
        let sqs = self.sqs.clone();
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(SqsTransport::delete_queue_set(&sqs))
        })
        .join();
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("could not delete the SQS queues of prefix {}: {e:#}", self.sqs.queue_prefix),
            Err(_) => eprintln!("deleting the SQS queues of prefix {} panicked", self.sqs.queue_prefix),
        }
    }
}

/// Deletes a RabbitMQ queue set (queues and dead-letter exchanges) when dropped, with a connection of its own on a
/// thread of its own.
pub struct RabbitQueueSetCleanup {
    settings: RabbitMqSettings,
}

impl RabbitQueueSetCleanup {
    pub fn new(settings: &RabbitMqSettings) -> RabbitQueueSetCleanup {
        RabbitQueueSetCleanup { settings: settings.clone() }
    }
}

impl Drop for RabbitQueueSetCleanup {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(RabbitMqTransport::delete_queue_set(&settings))
        })
        .join();
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("could not delete the RabbitMQ queues of prefix {}: {e:#}", self.settings.queue_prefix)
            }
            Err(_) => eprintln!("deleting the RabbitMQ queues of prefix {} panicked", self.settings.queue_prefix),
        }
    }
}

/// The broker tests use: SCHEDULER_RABBITMQ__URL, or the local RabbitMQ (guest/guest, vhost /).
pub fn rabbitmq_url() -> String {
    std::env::var("SCHEDULER_RABBITMQ__URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Runs `rabbitmqctl` with `args`; panics with its output if it fails (a broker test that cannot reach the broker's
/// control tool proves nothing).
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?} cannot run: {e} (scripts/dev-services up installs RabbitMQ)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "rabbitmqctl {args:?} failed: {text}");
    text
}

/// A virtual host of its own for a test that disturbs the broker (closes connections): created with full
/// permissions for guest, deleted with everything in it when dropped.
pub struct PrivateVhost {
    pub name: String,
}

impl PrivateVhost {
    pub fn new() -> PrivateVhost {
        let name = format!("t{}", rand::random::<u32>());
        rabbitmqctl(&["add_vhost", &name]);
        let v = PrivateVhost { name };
        rabbitmqctl(&["set_permissions", "-p", &v.name, "guest", ".*", ".*", ".*"]);
        v
    }

    /// The AMQP URL of this vhost on the test broker.
    pub fn url(&self) -> String {
        let base = rabbitmq_url();
        let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r).to_string();
        format!("{root}/{}", self.name)
    }

    /// Closes every client connection to this vhost, as `rabbitmqctl close_all_connections` does to a broker.
    pub fn close_all_connections(&self) {
        rabbitmqctl(&["close_all_connections", "--vhost", &self.name, "test"]);
    }
}

impl Drop for PrivateVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").args(["delete_vhost", &self.name]).output();
    }
}

/// Runs a SQL statement in the test database (test setup that the store offers no operation for).
pub async fn exec(url: &str, sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

/// The single bigint value of a query that returns one row and column (`sql` is used as a scalar subquery).
pub async fn query_i64(url: &str, sql: &str) -> i64 {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    let r: Row = diesel::sql_query(format!("SELECT ({sql})::bigint AS n")).get_result(&mut conn).await.unwrap();
    r.n
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
pub mod process;
pub mod proxy;
