//! Lock order (issue 18): complete, heartbeat, rescue, cancel, release and retry run concurrently over the same
//! tasks, each in the order its caller happens to give, and PostgreSQL detects no deadlock (its own count for the
//! test database, `pg_stat_database.deadlocks`: the store retries a deadlocked completion, so only the database sees
//! them).

mod common;

use common::TestDb;
use diesel::sql_types::{Array, BigInt, Bool, Double, Integer, Jsonb};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::seq::SliceRandom;
use serde_json::{json, Value};
use sqs_scheduler::store::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(diesel::QueryableByName)]
struct Pair {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn running(conn: &mut AsyncPgConnection) -> Vec<(i64, i32)> {
    let rows: Vec<Pair> =
        diesel::sql_query("SELECT id, attempts FROM tasks WHERE state = 'ACQUIRED'").load(conn).await.unwrap();
    rows.into_iter().map(|r| (r.id, r.attempts)).collect()
}

/// Deadlocks PostgreSQL detected in database `name`, once every backend connected to it has exited (a backend
/// reports its counters at exit at the latest).
async fn deadlocks_after_disconnect(name: &str) -> i64 {
    let mut conn = AsyncPgConnection::establish(&common::base_url()).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let c: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .get_result(&mut conn)
        .await
        .unwrap();
        if c.n == 0 {
            break;
        }
        assert!(Instant::now() < until, "{} backends still connected to {name}", c.n);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    diesel::sql_query("SELECT pg_stat_clear_snapshot()").execute(&mut conn).await.unwrap();
    let c: Count = diesel::sql_query(format!("SELECT deadlocks AS n FROM pg_stat_database WHERE datname = '{name}'"))
        .get_result(&mut conn)
        .await
        .unwrap();
    c.n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transitions_over_the_same_tasks_never_deadlock() {
    let db = TestDb::new().await;
    let before = deadlocks_after_disconnect(&db.name).await;
    // No backoff: a failed or rescued task is due again at once, so the same rows keep coming back.
    let store = db.store_with(Backoff { base_seconds: 0.0, max_seconds: 0.0, jitter: 0.0 });
    let actions = ["a0", "a1", "a2", "a3"];
    let tasks: Vec<NewTask> = (0..2000)
        .map(|i| {
            NewTask::new(Action::parse(actions[i % actions.len()]).unwrap(), Payload::parse(json!({"i": i})).unwrap())
        })
        .collect();
    store.submit_many(&tasks).await.unwrap();

    const ROUNDS: usize = 60;
    let completed = Arc::new(AtomicUsize::new(0));
    let heartbeats = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    // Acquirers keep tasks ACQUIRED.
    for _ in 0..2 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..ROUNDS * 2 {
                store.acquire_batch(200).await.unwrap();
            }
        }));
    }
    // Completers call the SQL function directly, in a shuffled order (as any client of the SQL API may).
    for _ in 0..3 {
        let (url, completed) = (db.url.clone(), completed.clone());
        handles.push(tokio::spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            for _ in 0..ROUNDS {
                let mut pairs = running(&mut conn).await;
                pairs.shuffle(&mut rand::rng());
                pairs.truncate(300);
                let ids: Vec<i64> = pairs.iter().map(|p| p.0).collect();
                let attempts: Vec<i32> = pairs.iter().map(|p| p.1).collect();
                let oks: Vec<bool> = pairs.iter().map(|_| rand::random_bool(0.3)).collect();
                let bodies: Vec<Value> = pairs.iter().map(|_| json!({"code": 1, "message": "x"})).collect();
                let n = diesel::sql_query("SELECT * FROM tasks_complete($1, $2, $3, $4, $5, $5, $5)")
                    .bind::<Array<BigInt>, _>(&ids)
                    .bind::<Array<Integer>, _>(&attempts)
                    .bind::<Array<Bool>, _>(&oks)
                    .bind::<Array<Jsonb>, _>(&bodies)
                    .bind::<Double, _>(0.0)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                completed.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    // Heartbeats and releases through the store, over shuffled running tasks.
    for release in [false, false, true] {
        let (url, store, heartbeats) = (db.url.clone(), store.clone(), heartbeats.clone());
        handles.push(tokio::spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            for _ in 0..ROUNDS {
                let mut pairs = running(&mut conn).await;
                pairs.shuffle(&mut rand::rng());
                pairs.truncate(500);
                if release {
                    store.release(&pairs[..pairs.len().min(50)]).await.unwrap();
                } else {
                    heartbeats.fetch_add(store.heartbeat(&pairs).await.unwrap(), Ordering::Relaxed);
                }
            }
        }));
    }
    // Rescue of everything running, and cancel and retry of whole actions.
    {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                store.rescue_stale(0.0, 0.0, 300).await.unwrap();
                let filter = TaskFilter {
                    action: Some(Action::parse(actions[i % actions.len()]).unwrap()),
                    ..TaskFilter::default()
                };
                store.cancel_matching(&filter).await.unwrap();
                let retry = TaskFilter { state: Some(TaskState::Cancelled), ..filter };
                store.retry_matching(&retry, MaxAttempts::parse(1000).unwrap()).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    // The load was real: rows were completed and refreshed while the others ran.
    let (completed, heartbeats) =
        (AtomicUsize::load(&completed, Ordering::Relaxed), AtomicUsize::load(&heartbeats, Ordering::Relaxed));
    assert!(completed > 200, "completed {completed}");
    assert!(heartbeats > 100, "heartbeats {heartbeats}");
    drop(store);
    let after = deadlocks_after_disconnect(&db.name).await;
    assert_eq!(after - before, 0, "PostgreSQL detected deadlocks in the test database");
}

/// A claim made under a lease that stops being renewed (its scheduler died) and that its loop never recorded as
/// sent is released by the next rescue within seconds, with no setting; a sent claim, a started one and a live
/// lease's claims are left to their workers.
#[tokio::test]
async fn claims_a_dead_scheduler_never_sent_come_back_within_seconds() {
    let db = TestDb::new().await;
    let store = db.store();
    let tasks: Vec<NewTask> = (0..40)
        .map(|i| NewTask::new(Action::parse("noop").unwrap(), Payload::parse(json!({"i": i})).unwrap()))
        .collect();
    store.submit_many(&tasks).await.unwrap();
    let lease = || async { store.open_lease(false).await.unwrap() };
    let (dead, sent, live) = (lease().await, lease().await, lease().await);
    let claim = |lease, batch, sent_through| Some(Claim { lease, batch, sent_through });
    // The dead loop: batch 1 sent (recorded by batch 2's statement), batch 2 not, one of batch 2 started.
    let dead_sent = store.acquire_claimed(5, claim(dead, 1, 0)).await.unwrap().tasks;
    let dead_unsent = store.acquire_claimed(10, claim(dead, 2, 1)).await.unwrap().tasks;
    let started = (dead_unsent[0].id, dead_unsent[0].attempt);
    assert_eq!(store.heartbeat(&[started]).await.unwrap(), 1);
    // A loop that recorded its one batch as sent with its last renewal, then died too.
    let sent_tasks = store.acquire_claimed(5, claim(sent, 1, 0)).await.unwrap().tasks;
    store.renew_leases(&[(sent, 1)]).await.unwrap();
    // A live loop that has not sent yet.
    let live_tasks = store.acquire_claimed(5, claim(live, 1, 0)).await.unwrap().tasks;
    assert_eq!(dead_sent.len() + dead_unsent.len() + sent_tasks.len() + live_tasks.len(), 25);

    let t0 = Instant::now();
    let mut rescued = Vec::new();
    while rescued.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "nothing released");
        store.renew_leases(&[(live, 0)]).await.unwrap();
        rescued = store.rescue_stale(120.0, 600.0, 1000).await.unwrap();
        if rescued.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(t0.elapsed() >= Duration::from_secs_f64(LEASE_EXPIRY_SECS - 1.0), "released before the lease expired");
    let mut got: Vec<i64> = rescued.iter().map(|r| r.0).collect();
    got.sort_unstable();
    let mut expected: Vec<i64> = dead_unsent[1..].iter().map(|t| t.id).collect();
    expected.sort_unstable();
    assert_eq!(got, expected, "exactly the dead loop's unsent, unstarted claims");
    for id in &expected {
        let t = store.get(*id).await.unwrap().unwrap();
        assert_eq!(t.state, TaskState::Error);
        assert_eq!(t.error.as_ref().unwrap()["code"], json!(RELEASED_ERROR_CODE));
        assert_eq!(t.attempts, 1);
    }
    // The others are still running: the queue timeout (or their workers) decides.
    for t in dead_sent.iter().chain(&sent_tasks).chain(&live_tasks).chain(&dead_unsent[..1]) {
        assert_eq!(store.get(t.id).await.unwrap().unwrap().state, TaskState::Acquired, "task {}", t.id);
    }
    assert!(store.rescue_stale(120.0, 600.0, 1000).await.unwrap().is_empty());
}

/// The migrations of this change carry a deployment's tasks forward: rows in every state written under the schema
/// before them keep their state, attempts and outcome, and every transition still applies to them (a claim made
/// before leases existed is rescued by the queue timeout as before). The down migrations run too.
#[tokio::test]
async fn tasks_in_every_state_survive_the_lock_order_and_lease_migrations() {
    let db = TestDb::new().await;
    let down = [
        include_str!("../migrations/2026-12-04-210000_acquire_guard/down.sql"),
        include_str!("../migrations/2026-12-04-000002_claim_leases/down.sql"),
        include_str!("../migrations/2026-12-04-000001_lock_order/down.sql"),
    ];
    use diesel_async::SimpleAsyncConnection;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    for sql in down {
        conn.batch_execute(sql).await.unwrap();
    }
    conn.batch_execute("DELETE FROM __diesel_schema_migrations WHERE version >= '20261204000000'").await.unwrap();
    conn.batch_execute(
        "INSERT INTO workflows (id, name, stages_total) VALUES (1, 'wf', 2);
         INSERT INTO tasks (action, payload, dedup_key, state, attempts, max_attempts, acquired_at, result, error,
                            finished_at, workflow_id, stage, pending_parents)
         VALUES ('a', '{}', 's', 'SCHEDULED', 0, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                ('a', '{}', 'q', 'ACQUIRED', 1, 3, now() - interval '1 hour', NULL, NULL, NULL, NULL, NULL, NULL),
                ('a', '{}', 'r', 'ACQUIRED', 2, 3, now(), NULL, NULL, NULL, NULL, NULL, NULL),
                ('a', '{}', 'o', 'SUCCESS', 1, 3, NULL, '{\"ok\": 1}', NULL, now(), NULL, NULL, NULL),
                ('a', '{}', 'e', 'ERROR', 1, 3, NULL, NULL, '{\"code\": 1}', NULL, NULL, NULL, NULL),
                ('a', '{}', 'c', 'CRITICAL_ERROR', 3, 3, NULL, NULL, '{\"code\": 2}', now(), NULL, NULL, NULL),
                ('a', '{}', 'x', 'CANCELLED', 0, 3, NULL, NULL, NULL, now(), NULL, NULL, NULL),
                ('a', '{}', 'p', 'SCHEDULED', 0, 3, NULL, NULL, NULL, NULL, 1, 'p', 0),
                ('a', '{}', 'w', 'WAITING', 0, 3, NULL, NULL, NULL, NULL, 1, 'w', 1);
         INSERT INTO workflow_edges (parent_id, child_id, workflow_id) SELECT p.id, w.id, 1
         FROM tasks p, tasks w WHERE p.dedup_key = 'p' AND w.dedup_key = 'w';",
    )
    .await
    .unwrap();
    drop(conn);
    let store = db.store();
    let before = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(before.len(), 9);
    sqs_scheduler::db::run_migrations(&db.url).await.unwrap();
    let after = store.list(&ListFilter::default()).await.unwrap();
    let key = |t: &Task| (t.id, t.state, t.attempts, t.max_attempts, t.result.clone(), t.error.clone());
    assert_eq!(after.iter().map(key).collect::<Vec<_>>(), before.iter().map(key).collect::<Vec<_>>());

    let by_key = |k: &str| after.iter().find(|t| t.dedup_key == k).unwrap().id;
    // The running attempt completes (fenced), the old claim is rescued by the queue timeout (no lease).
    let done = store
        .complete_many(&[TaskResult { id: by_key("r"), attempt: 2, outcome: Outcome::Success(json!({"r": 1})) }])
        .await
        .unwrap();
    assert_eq!(done.applied.len(), 1);
    let rescued = store.rescue_stale(60.0, 60.0, 100).await.unwrap();
    assert_eq!(rescued, vec![(by_key("q"), TaskState::Error)]);
    // Due work is acquired under a lease; the workflow's promotion still runs.
    let lease = store.open_lease(false).await.unwrap();
    let got = store.acquire_claimed(10, Some(Claim { lease, batch: 1, sent_through: 0 })).await.unwrap().tasks;
    let mut ids: Vec<i64> = got.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![by_key("s"), by_key("e"), by_key("p")]);
    let p = got.iter().find(|t| t.id == by_key("p")).unwrap();
    store
        .complete_many(&[TaskResult { id: p.id, attempt: p.attempt, outcome: Outcome::Success(json!({})) }])
        .await
        .unwrap();
    assert_eq!(store.get(by_key("w")).await.unwrap().unwrap().state, TaskState::Scheduled);
    assert!(store.retry(by_key("c"), MaxAttempts::parse(1).unwrap()).await.unwrap());
}
