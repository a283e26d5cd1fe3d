//! End-to-end support: a pipeline running in this test process on a fresh database, over either transport.
#![allow(dead_code)]

use super::{exec, TestDb};
use serde_json::json;
use sqs_scheduler::configuration::{Settings, TransportKind};
use sqs_scheduler::handlers::HandlerRegistry;
use sqs_scheduler::startup::{App, Role};
use sqs_scheduler::store::{TaskState, TaskStore};
use sqs_scheduler::transport::memory::MemoryTransport;
use sqs_scheduler::transport::sqs::SqsTransport;
use sqs_scheduler::transport::{Queue, Transport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Memory,
    Sqs,
}

/// database.pool_size of test Apps: caps every stage's pool (see the connection arithmetic in common/mod.rs).
pub const APP_POOL_SIZE: u32 = 2;

/// Settings for tests: quick wake-ups, short backoff, short long-polls. For SQS, a fresh queue prefix whose queues
/// are deleted when `db` is dropped (at the end of the test, also when it fails).
pub fn test_settings(db: &TestDb, kind: Kind) -> Settings {
    let mut s = Settings::default();
    s.database.url = db.url.clone();
    s.database.pool_size = APP_POOL_SIZE;
    s.transport.kind = if kind == Kind::Memory { TransportKind::Memory } else { TransportKind::Sqs };
    s.transport.wait_time_secs = 1;
    s.transport.visibility_timeout_secs = 10;
    s.acquirer.idle_wakeup_ms = 50;
    s.retry.base_delay_secs = 0.05;
    s.retry.max_delay_secs = 0.2;
    s.reaper.interval_secs = 0.5;
    s.reaper.stale_timeout_secs = 30.0;
    s.http.bind = String::new();
    s.sqs.endpoint_url =
        Some(std::env::var("SCHEDULER_SQS__ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into()));
    s.sqs.region = Some("us-east-1".into());
    s.sqs.access_key_id = Some("test".into());
    s.sqs.secret_access_key = Some("test".into());
    s.sqs.queue_prefix = format!("t{}", rand::random::<u32>());
    if kind == Kind::Sqs {
        // The emulator rescans a whole queue for every message it delivers (quadratic): keep its queues short, and
        // give it time (a few hundred messages/s at best).
        s.acquirer.max_outbound_depth = 30;
        s.acquirer.batch_size = 30;
        s.reaper.stale_timeout_secs = 300.0;
        db.delete_queues_on_drop(&s.sqs);
    }
    s
}

/// The transport for `settings`: a fresh in-process one, or a fresh queue set on the local SQS endpoint (deleted
/// with the TestDb of `test_settings`).
pub async fn transport(settings: &Settings) -> Arc<dyn Transport> {
    match settings.transport.kind {
        TransportKind::Memory => {
            Arc::new(MemoryTransport::new(Duration::from_secs(settings.transport.visibility_timeout_secs as u64)))
        }
        TransportKind::Sqs => Arc::new(
            SqsTransport::create_queues(&settings.sqs, &settings.transport)
                .await
                .expect("local SQS endpoint (scripts/dev-services up)"),
        ),
    }
}

pub fn start(settings: &Settings, roles: &[Role], transport: Arc<dyn Transport>, handlers: HandlerRegistry) -> App {
    App::start(settings.clone(), roles, transport, handlers)
}

/// Inserts `n` t_object rows with ids 1..=n.
pub async fn insert_objects(db: &TestDb, n: usize) {
    exec(
        &db.url,
        &format!("INSERT INTO t_object (id, data) SELECT g, jsonb_build_object('n', g) FROM generate_series(1, {n}) g"),
    )
    .await;
}

/// Sends `submit:export` for objects 1..=n to the inbound queue.
pub async fn submit_exports(transport: &dyn Transport, n: usize) {
    let bodies: Vec<String> =
        (1..=n).map(|i| sqs_scheduler::protocol::submit_message("export", &json!({"objectID": i}))).collect();
    for chunk in bodies.chunks(100) {
        // Back-pressure on the inbound queue, as the load generator does (the emulator slows down on long queues).
        let until = Instant::now() + Duration::from_secs(120);
        while transport.depth(Queue::Inbound).await.unwrap() > 30 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let res = transport.send(Queue::Inbound, chunk).await.unwrap();
        assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    }
}

pub async fn counts(store: &TaskStore) -> HashMap<TaskState, i64> {
    store.counts_by_state().await.unwrap().into_iter().collect()
}

/// One SQS scenario at a time: the emulator is single-threaded, and parallel scenarios only slow each other down.
pub async fn sqs_turn(kind: Kind) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if kind == Kind::Sqs {
        Some(TURN.lock().await)
    } else {
        None
    }
}

/// Waits (bounded) until `done` holds for the counts by state; panics with the last counts otherwise.
pub async fn wait_for_counts(
    store: &TaskStore,
    timeout: Duration,
    done: impl Fn(&HashMap<TaskState, i64>) -> bool,
) -> HashMap<TaskState, i64> {
    let until = Instant::now() + timeout;
    loop {
        let c = counts(store).await;
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < until, "timed out; counts by state: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count_rows(db: &TestDb, table: &str) -> i64 {
    use diesel::sql_types::BigInt;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let r: Row = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}")).get_result(&mut conn).await.unwrap();
    r.n
}

/// Receives everything currently in a queue (bounded), deleting nothing.
pub async fn peek_all(transport: &dyn Transport, queue: Queue, expect: usize, timeout: Duration) -> Vec<String> {
    let until = Instant::now() + timeout;
    let mut bodies = std::collections::HashSet::new();
    while bodies.len() < expect && Instant::now() < until {
        for m in transport.receive(queue, 10, Duration::from_secs(1)).await.unwrap() {
            bodies.insert(m.body);
        }
    }
    bodies.into_iter().collect()
}
