//! End-to-end support: a pipeline running in this test process on a fresh database, over either transport.
#![allow(dead_code)]

use super::{exec, TestDb};
use serde_json::json;
use sqs_scheduler::configuration::{Settings, TransportKind};
use sqs_scheduler::handlers::HandlerRegistry;
use sqs_scheduler::startup::{App, Role};
use sqs_scheduler::store::{TaskState, TaskStore};
use sqs_scheduler::transport::memory::MemoryTransport;
use sqs_scheduler::transport::rabbitmq::RabbitMqTransport;
use sqs_scheduler::transport::sqs::SqsTransport;
use sqs_scheduler::transport::{Queue, Transport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Memory,
    Sqs,
    RabbitMq,
}

/// database.pool_size of test Apps: caps every stage's pool (see the connection arithmetic in common/mod.rs).
pub const APP_POOL_SIZE: u32 = 2;

/// Settings for tests: quick wake-ups, short backoff, short long-polls. For SQS, a fresh queue prefix whose queues
/// are deleted when `db` is dropped (at the end of the test, also when it fails).
pub fn test_settings(db: &TestDb, kind: Kind) -> Settings {
    let mut s = Settings::default();
    s.database.url = db.url.clone().into();
    s.database.pool_size = APP_POOL_SIZE;
    s.transport.kind = match kind {
        Kind::Memory => TransportKind::Memory,
        Kind::Sqs => TransportKind::Sqs,
        Kind::RabbitMq => TransportKind::RabbitMq,
    };
    s.transport.wait_time_secs = 1;
    s.transport.visibility_timeout_secs = 10;
    s.acquirer.idle_wakeup_ms = 50;
    s.retry.base_delay_secs = 0.05;
    s.retry.max_delay_secs = 0.2;
    s.reaper.interval_secs = 0.5;
    s.reaper.stale_timeout_secs = 30.0;
    s.worker.heartbeat_interval_secs = 2.0;
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
    s.rabbitmq.url = super::rabbitmq_url().into();
    s.rabbitmq.queue_prefix = s.sqs.queue_prefix.clone();
    if kind == Kind::RabbitMq {
        db.delete_rabbitmq_queues_on_drop(&s.rabbitmq);
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
        TransportKind::RabbitMq => Arc::new(
            RabbitMqTransport::create_queues(&settings.rabbitmq, &settings.transport, settings.rabbitmq_prefetch())
                .await
                .expect("local RabbitMQ (scripts/dev-services up)"),
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
        while transport.depth(Queue::Inbound).await.unwrap() > 30 {
            // A pipeline that stopped taking submissions is a failure to report, not to paper over by sending on.
            assert!(Instant::now() < until, "the inbound queue stayed above 30 messages for 120 s");
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

// ---------------------------------------------------------------------------------------------------------------
// Assertion helpers for tests that must fail when the behaviour breaks (issue #7): process-wide metrics taken in
// turn, a handler wrapper that records every execution, bounded waits on any condition.
// ---------------------------------------------------------------------------------------------------------------

/// Serialises the tests that compare process-wide metrics (chaos injections, stale results) before and after: every
/// test that reads such a delta, or causes chaos or stale results on purpose, holds it, so the delta is its own.
/// Take it after `sqs_turn` (always in that order: no deadlock).
pub async fn metrics_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Every execution of a handler: (task id, attempt), in the order they started.
pub type ExecLog = Arc<std::sync::Mutex<Vec<(i64, i32)>>>;

/// Wraps a handler and records each of its executions in an `ExecLog` before running it.
pub struct Counting<H>(pub H, pub ExecLog);

#[async_trait::async_trait]
impl<H: sqs_scheduler::handlers::Handler> sqs_scheduler::handlers::Handler for Counting<H> {
    async fn handle(
        &self,
        ctx: &sqs_scheduler::handlers::HandlerContext,
        payload: &serde_json::Value,
    ) -> Result<serde_json::Value, sqs_scheduler::handlers::HandlerError> {
        self.1.lock().unwrap().push((ctx.task_id, ctx.attempt));
        self.0.handle(ctx, payload).await
    }
}

/// Waits (bounded) until the async condition holds; panics naming `what` otherwise.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < until, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `scheduler_messages_dead_lettered_total` for `queue`'s DLQ and `reason` (labelled with this test's own queue
/// prefix, so no other test moves it).
pub fn dead_lettered(settings: &Settings, queue: Queue, reason: &str) -> u64 {
    let dlq = queue.dlq().name(settings.queue_prefix());
    sqs_scheduler::metrics::metrics().messages_dead_lettered.with_label_values(&[dlq.as_str(), reason]).get()
}

/// Every reason label `RpcError::reason()` can give.
pub const DEAD_LETTER_REASONS: [&str; 7] = [
    "parse_error",
    "invalid_request",
    "method_not_found",
    "invalid_params",
    "internal_error",
    "other",
    "unknown_action",
];

/// Every delivery a transport handed out: (queue, message id).
pub type DeliveryLog = Arc<std::sync::Mutex<Vec<(Queue, String)>>>;

/// Wraps a transport and records every message it delivers, to tell the transport's own redeliveries and duplicates
/// (which SQS may make at any time) from the scheduler's.
pub struct RecordDeliveries {
    inner: Arc<dyn Transport>,
    log: DeliveryLog,
}

impl RecordDeliveries {
    pub fn wrap(inner: Arc<dyn Transport>) -> (Arc<dyn Transport>, DeliveryLog) {
        let log = DeliveryLog::default();
        (Arc::new(RecordDeliveries { inner, log: log.clone() }), log)
    }
}

/// (deliveries, distinct messages) of `queue` so far.
pub fn deliveries(log: &DeliveryLog, queue: Queue) -> (usize, usize) {
    let log = log.lock().unwrap();
    let of_queue: Vec<&String> = log.iter().filter(|(q, _)| *q == queue).map(|(_, id)| id).collect();
    let distinct: std::collections::HashSet<&String> = of_queue.iter().copied().collect();
    (of_queue.len(), distinct.len())
}

#[async_trait::async_trait]
impl Transport for RecordDeliveries {
    async fn receive(
        &self,
        queue: Queue,
        max: usize,
        wait: Duration,
    ) -> sqs_scheduler::transport::TransportResult<Vec<sqs_scheduler::transport::Message>> {
        let got = self.inner.receive(queue, max, wait).await?;
        self.log.lock().unwrap().extend(got.iter().map(|m| (queue, m.id.clone())));
        Ok(got)
    }
    async fn send(
        &self,
        queue: Queue,
        bodies: &[String],
    ) -> sqs_scheduler::transport::TransportResult<Vec<Result<(), String>>> {
        self.inner.send(queue, bodies).await
    }
    async fn delete(
        &self,
        queue: Queue,
        receipts: &[String],
    ) -> sqs_scheduler::transport::TransportResult<Vec<String>> {
        self.inner.delete(queue, receipts).await
    }
    async fn change_visibility(
        &self,
        queue: Queue,
        receipts: &[String],
        timeout: Duration,
    ) -> sqs_scheduler::transport::TransportResult<()> {
        self.inner.change_visibility(queue, receipts, timeout).await
    }
    async fn depth(&self, queue: Queue) -> sqs_scheduler::transport::TransportResult<u64> {
        self.inner.depth(queue).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn cancel_safe_receive(&self) -> bool {
        self.inner.cancel_safe_receive()
    }
}

/// Sends `submit:export` for objects `from..=to` to the inbound queue.
pub async fn submit_exports_range(transport: &dyn Transport, from: usize, to: usize) {
    let bodies: Vec<String> =
        (from..=to).map(|i| sqs_scheduler::protocol::submit_message("export", &json!({"objectID": i}))).collect();
    for chunk in bodies.chunks(10) {
        let res = transport.send(Queue::Inbound, chunk).await.unwrap();
        assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Counting executions (issue 17). t_exported_object.id is a primary key and `export` inserts ON CONFLICT DO
// NOTHING, so its rows can only show a *missing* export, never a task that ran twice. These count the runs.
// ---------------------------------------------------------------------------------------------------------------

/// Logs every execution of the export handler whose statement committed, in the database itself, so it also counts
/// the runs of separate processes: a row-level BEFORE INSERT trigger fires for every row the export proposes,
/// including the ones ON CONFLICT DO NOTHING then skips. The log has no unique key. Call before starting work.
pub async fn log_export_runs(db: &TestDb) {
    exec(
        &db.url,
        "CREATE TABLE test_export_run (object_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .await;
    exec(
        &db.url,
        "CREATE FUNCTION test_log_export_run() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO test_export_run (object_id) VALUES (NEW.id); RETURN NEW; END $$",
    )
    .await;
    exec(
        &db.url,
        "CREATE TRIGGER test_export_run BEFORE INSERT ON t_exported_object FOR EACH ROW EXECUTE FUNCTION test_log_export_run()",
    )
    .await;
}

/// Exactly one committed export run per object 1..=n, and one exported row equal to its source (needs
/// `log_export_runs`).
pub async fn assert_exports_ran_once(db: &TestDb, n: usize) {
    assert_eq!(count_rows(db, "t_exported_object").await, n as i64, "exported rows");
    let equal = "t_object o JOIN t_exported_object e USING (id) WHERE e.data = o.data";
    assert_eq!(count_rows(db, equal).await, n as i64, "exported rows equal to their source");
    let twice =
        count_rows(db, "(SELECT object_id FROM test_export_run GROUP BY object_id HAVING count(*) > 1) x").await;
    assert_eq!(twice, 0, "objects whose export ran (and committed) more than once");
    assert_eq!(count_rows(db, "test_export_run").await, n as i64, "committed export runs");
}

/// Every task of the store, in pages of the API's largest limit.
pub async fn all_tasks(store: &TaskStore) -> Vec<sqs_scheduler::store::Task> {
    let mut all: Vec<sqs_scheduler::store::Task> = Vec::new();
    loop {
        let filter = sqs_scheduler::store::ListFilter {
            limit: Some(1000),
            after_id: all.last().map(|t| t.id),
            ..Default::default()
        };
        let page = store.list(&filter).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// The handler runs and the deliveries behind them, in this process: `wrap` puts `Counting` around the export
/// handler and `RecordDeliveries` around the transport.
pub struct ExecAudit {
    pub runs: ExecLog,
    pub delivered: DeliveryLog,
}

impl ExecAudit {
    pub fn wrap(
        transport: Arc<dyn Transport>,
        handlers: HandlerRegistry,
    ) -> (Arc<dyn Transport>, HandlerRegistry, ExecAudit) {
        let runs = ExecLog::default();
        let handlers = handlers.with("export", Counting(sqs_scheduler::handlers::ExportHandler, runs.clone()));
        let (transport, delivered) = RecordDeliveries::wrap(transport);
        (transport, handlers, ExecAudit { runs, delivered })
    }

    /// Runs per (task id, attempt).
    fn by_attempt(&self) -> HashMap<(i64, i32), usize> {
        let mut m = HashMap::new();
        for key in self.runs.lock().unwrap().iter() {
            *m.entry(*key).or_insert(0) += 1;
        }
        m
    }

    /// Exactly once, for runs without faults: every task of the store ran once, as attempt 1, from one outbound
    /// delivery. `transport_may_duplicate` (SQS: the emulator sometimes hands one message to two receives):
    /// a task may run twice, but only from a second delivery of its message.
    pub async fn assert_ran_once(&self, store: &TaskStore, transport_may_duplicate: bool) {
        let tasks = all_tasks(store).await;
        assert!(tasks.iter().all(|t| t.attempts == 1), "a task took more than one attempt");
        let runs = self.by_attempt();
        let missing: Vec<i64> = tasks.iter().filter(|t| !runs.contains_key(&(t.id, 1))).map(|t| t.id).take(5).collect();
        assert!(missing.is_empty(), "tasks that never ran as attempt 1: {missing:?}");
        assert_eq!(runs.len(), tasks.len(), "runs of (task, attempt) pairs that are not the store's tasks");
        let repeats: usize = runs.values().map(|n| n - 1).sum();
        let (deliveries, messages) = deliveries(&self.delivered, Queue::Outbound);
        if transport_may_duplicate {
            assert!(
                repeats <= deliveries - messages,
                "{repeats} repeated runs, {} redeliveries",
                deliveries - messages
            );
        } else {
            assert_eq!(repeats, 0, "tasks run more than once");
            assert_eq!(deliveries, messages, "outbound messages delivered more than once");
        }
    }

    /// At least once, effect once, for runs with faults: every task's final attempt ran; no run of an attempt the
    /// store never handed out; and each repeated run of one (task, attempt) is explained by a redelivery of an
    /// outbound message (`per_message` tasks each: transport.tasks_per_message). Returns (runs, repeats,
    /// redeliveries, attempts beyond the first) for the test's log.
    pub async fn assert_repeats_explained(&self, store: &TaskStore, per_message: usize) -> (usize, usize, usize, i64) {
        let tasks = all_tasks(store).await;
        let attempts: HashMap<i64, i32> = tasks.iter().map(|t| (t.id, t.attempts)).collect();
        let runs = self.by_attempt();
        let (deliveries, messages) = deliveries(&self.delivered, Queue::Outbound);
        let not_run: Vec<_> = tasks
            .iter()
            .filter(|t| !runs.contains_key(&(t.id, t.attempts)))
            .map(|t| (t.id, t.attempts))
            .take(5)
            .collect();
        assert!(not_run.is_empty(), "tasks whose final attempt never ran (id, attempt): {not_run:?}");
        let foreign: Vec<_> =
            runs.keys().filter(|(id, a)| attempts.get(id).map_or(true, |max| a > max || *a < 1)).take(5).collect();
        assert!(foreign.is_empty(), "runs of attempts the store never handed out: {foreign:?}");
        let repeats: usize = runs.values().map(|n| n - 1).sum();
        let redeliveries = deliveries - messages;
        assert!(
            repeats <= redeliveries * per_message,
            "{repeats} repeated runs of one (task, attempt), only {redeliveries} outbound redeliveries to explain them"
        );
        let retries: i64 = tasks.iter().map(|t| t.attempts as i64 - 1).sum();
        let total = self.runs.lock().unwrap().len();
        eprintln!(
            "runs {total} for {} tasks: {retries} later attempts, {repeats} repeats ({redeliveries} redeliveries)",
            tasks.len()
        );
        (total, repeats, redeliveries, retries)
    }
}
