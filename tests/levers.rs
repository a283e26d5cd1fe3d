//! The operator's levers (issue 11): per-action settings over JSON-RPC (and every bad input refused, changing
//! nothing), max_concurrency and pause decided inside the acquire statement, the rate limit, timeouts, cancelling a
//! running task, and bulk cancel/retry. Real PostgreSQL; the pipelines run in this process on the in-process
//! transport, except the max_concurrency test, which runs two scheduler and two worker processes over the local SQS
//! endpoint. Tests of a wake-up path run without the idle wake-up (`without_idle_wakeup`), which would hide it.

mod common;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use common::pipeline::*;
use common::process::{spawn_roles, Proc};
use common::TestDb;
use serde_json::{json, Value};
use sqs_scheduler::configuration::Settings;
use sqs_scheduler::handlers::HandlerRegistry;
use sqs_scheduler::http::{build_app, HttpApi, HttpState};
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::protocol;
use sqs_scheduler::store::{
    Action, ActionChange, MaxAttempts, NewTask, Outcome, Payload, TaskFilter, TaskResult, TaskState, TimeoutSecs,
};
use sqs_scheduler::transport::Queue;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn task(action: &str, payload: Value) -> NewTask {
    NewTask::new(Action::parse(action).unwrap(), Payload::parse(payload).unwrap())
}

fn action(a: &str) -> Action {
    Action::parse(a).unwrap()
}

fn api(db: &TestDb) -> HttpApi {
    let mut s = Settings { database: db.settings(), ..Settings::default() };
    s.http.bind = "127.0.0.1:0".into();
    HttpApi::new(HttpState {
        settings: Arc::new(s),
        store: db.store(),
        transport: None,
        rpc_enabled: true,
        known_actions: sqs_scheduler::handlers::KnownActions::any(),
    })
}

/// Calls one JSON-RPC method over POST /rpc (from loopback, no token configured); returns the response object.
macro_rules! rpc {
    ($app:expr, $method:expr, $params:expr) => {{
        let body = json!({"jsonrpc": "2.0", "method": $method, "params": $params, "id": 1}).to_string();
        let req = TestRequest::post().uri("/rpc").peer_addr("127.0.0.1:40000".parse().unwrap()).set_payload(body);
        let res = test::call_service(&$app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        serde_json::from_slice::<Value>(&test::read_body(res).await).unwrap()
    }};
}

macro_rules! call_ok {
    ($app:expr, $method:expr, $params:expr) => {{
        let mut r = rpc!($app, $method, $params);
        assert!(r.get("error").is_none(), "{} {} -> {r}", $method, $params);
        r["result"].take()
    }};
}

macro_rules! call_err {
    ($app:expr, $method:expr, $params:expr) => {{
        let mut r = rpc!($app, $method, $params);
        assert!(r.get("result").is_none(), "{} {} -> {r}", $method, $params);
        r["error"].take()
    }};
}

/// Tasks of `action` in `state` now.
async fn count_in(db: &TestDb, action: &str, state: &str) -> i64 {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let r: Row = diesel::sql_query("SELECT count(*) AS n FROM tasks WHERE action = $1 AND state = $2")
        .bind::<Text, _>(action)
        .bind::<Text, _>(state)
        .get_result(&mut conn)
        .await
        .unwrap();
    r.n
}

#[actix_rt::test]
async fn action_settings_over_json_rpc_and_every_bad_input_changes_nothing() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(api(&db))).await;
    call_ok!(app, "submit:export", json!({"objectID": 1}));
    let before = call_ok!(app, "action.list", json!({}));
    assert_eq!(before["actions"].as_array().unwrap().len(), 1, "{before}");
    assert_eq!(before["actions"][0]["action"], "export");
    assert_eq!(before["actions"][0]["paused"], false);
    assert_eq!(before["actions"][0]["counts"]["SCHEDULED"], 1);

    let bad = [
        ("action.configure", json!({"action": "export", "max_concurrency": -1}), "max_concurrency"),
        ("action.configure", json!({"action": "export", "max_concurrency": 0}), "max_concurrency"),
        ("action.configure", json!({"action": "export", "max_concurrency": 2.5}), "max_concurrency"),
        ("action.configure", json!({"action": "export", "max_concurrency": "3"}), "max_concurrency"),
        ("action.configure", json!({"action": "export", "rate_per_sec": -5}), "rate_per_sec"),
        ("action.configure", json!({"action": "export", "rate_per_sec": 0}), "rate_per_sec"),
        ("action.configure", json!({"action": "export", "timeout_secs": 0}), "timeout_secs"),
        ("action.configure", json!({"action": "export", "timeout_secs": -1}), "timeout_secs"),
        ("action.configure", json!({"action": "export", "timeout_secs": 1e9}), "timeout_secs"),
        ("action.configure", json!({"action": "export", "max_attempts": 0}), "max_attempts"),
        ("action.configure", json!({"action": "export", "max_attempts": 1001}), "max_attempts"),
        ("action.configure", json!({"action": "export", "max_concurrency": 2, "bogus": 1}), "params"),
        ("action.configure", json!({"action": "export"}), "params"),
        ("action.configure", json!({"max_concurrency": 2}), "action"),
        ("action.configure", json!({"action": "", "max_concurrency": 2}), "action"),
        ("action.pause", json!({}), "action"),
        ("action.pause", json!({"action": "has space"}), "action"),
        ("action.resume", json!({"action": 5}), "action"),
        ("action.list", json!({"state": "x"}), "params"),
        ("task.cancel", json!({}), "id"),
        ("task.cancel", json!({"id": 1, "action": "export"}), "params"),
        ("task.cancel", json!({"state": "SUCCESS"}), "state"),
        ("task.cancel", json!({"state": "nonsense"}), "state"),
        ("task.retry", json!({"action": "export", "state": "SCHEDULED"}), "state"),
        ("task.retry", json!({"action": "export", "extra_attempts": -2}), "extra_attempts"),
        ("submit:export", json!({"payload": {"objectID": 2}, "timeout_secs": -1}), "timeout_secs"),
        ("submit:export", json!({"payload": {"objectID": 2}, "timeout_secs": "soon"}), "timeout_secs"),
    ];
    for (method, params, field) in bad {
        let e = call_err!(app, method, params.clone());
        assert_eq!(e["code"], protocol::INVALID_PARAMS, "{method} {params} -> {e}");
        assert_eq!(e["data"]["field"], field, "{method} {params} -> {e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{method} {params} -> {e}");
    }
    assert_eq!(call_err!(app, "action.nosuch", json!({}))["code"], protocol::METHOD_NOT_FOUND);
    // Nothing changed: no settings, the task still SCHEDULED, no second task.
    assert_eq!(call_ok!(app, "action.list", json!({})), before);

    // Set, read back, remove one with null, pause and resume.
    let set = call_ok!(
        app,
        "action.configure",
        json!({"action": "export", "max_concurrency": 3, "rate_per_sec": 20.5, "timeout_secs": 30, "max_attempts": 4})
    );
    assert_eq!(
        set,
        json!({"action": "export", "max_concurrency": 3, "rate_per_sec": 20.5, "timeout_secs": 30.0,
               "max_attempts": 4, "paused": false})
    );
    let cleared = call_ok!(app, "action.configure", json!({"action": "export", "rate_per_sec": null}));
    assert_eq!((cleared["rate_per_sec"].clone(), cleared["max_concurrency"].clone()), (Value::Null, json!(3)));
    assert_eq!(call_ok!(app, "action.pause", json!({"action": "export"}))["paused"], true);
    assert_eq!(call_ok!(app, "action.pause", json!({"action": "other"}))["paused"], true);
    let listed = call_ok!(app, "action.list", json!({"action": "export"}));
    assert_eq!(listed["actions"].as_array().unwrap().len(), 1);
    assert_eq!(listed["actions"][0]["paused"], true);
    assert_eq!(listed["actions"][0]["max_attempts"], 4);
    assert_eq!(call_ok!(app, "action.resume", json!({"action": "export"}))["paused"], false);
    let all = call_ok!(app, "action.list", json!({}));
    let names: Vec<&str> = all["actions"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["export", "other"]);
    assert_eq!(db.store().paused_actions().await.unwrap(), 1);
}

#[tokio::test]
async fn an_action_max_attempts_and_timeout_are_the_defaults_of_its_tasks() {
    let db = TestDb::new().await;
    let store = db.store();
    let change = ActionChange {
        max_attempts: Some(Some(MaxAttempts::parse(3).unwrap())),
        timeout_secs: Some(Some(TimeoutSecs::parse("timeout_secs", 7.0).unwrap())),
        ..ActionChange::default()
    };
    store.configure_action(&action("slow"), &change).await.unwrap();
    let mut own = task("slow", json!({"n": 2})).with_max_attempts(MaxAttempts::parse(5).unwrap());
    own.timeout = Some(TimeoutSecs::parse("timeout_secs", 1.5).unwrap());
    let ids = store.submit_many(&[task("slow", json!({"n": 1})), own, task("other", json!({}))]).await.unwrap();
    let got: HashMap<i64, i32> = store
        .get_many(&ids.iter().map(|s| s.id).collect::<Vec<_>>())
        .await
        .unwrap()
        .iter()
        .map(|t| (t.id, t.max_attempts))
        .collect();
    assert_eq!((got[&ids[0].id], got[&ids[1].id], got[&ids[2].id]), (3, 5, 10));
    let now = store.db_now().await.unwrap();
    let acquired = store.acquire(10).await.unwrap().tasks;
    let by_id: HashMap<i64, _> = acquired.iter().map(|t| (t.id, t)).collect();
    assert_eq!(by_id[&ids[0].id].timeout_secs, Some(7.0));
    assert_eq!(by_id[&ids[1].id].timeout_secs, Some(1.5));
    assert_eq!(by_id[&ids[2].id].timeout_secs, None);
    let deadline = by_id[&ids[0].id].deadline.unwrap();
    let ahead = (deadline - now).as_seconds_f64();
    assert!((6.9..8.0).contains(&ahead), "deadline {ahead} s ahead of the database clock");
    assert_eq!(by_id[&ids[2].id].deadline, None);
}

/// Eight acquirers at once, each in a tight loop, while results free slots: never more than max_concurrency
/// ACQUIRED, and the limit is used in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_under_concurrent_acquirers() {
    let db = TestDb::new().await;
    let store = db.store();
    let change = ActionChange { max_concurrency: Some(Some(3)), ..ActionChange::default() };
    store.configure_action(&action("limited"), &change).await.unwrap();
    let mut batch: Vec<NewTask> = (0..40).map(|i| task("limited", json!({"i": i}))).collect();
    batch.extend((0..20).map(|i| task("free", json!({"i": i}))));
    store.submit_many(&batch).await.unwrap();
    let free_taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let limited_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let (store, free_taken, limited_done) = (db.store(), free_taken.clone(), limited_done.clone());
        loops.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(60);
            while limited_done.load(std::sync::atomic::Ordering::SeqCst) < 40 && Instant::now() < until {
                let got = store.acquire(50).await.unwrap();
                let mut results = Vec::new();
                for t in got.tasks {
                    if t.action == "free" {
                        free_taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        results.push(TaskResult { id: t.id, attempt: t.attempt, outcome: Outcome::Success(json!({})) });
                    }
                }
                // Hold the slots a moment, so the acquirers meet at the limit.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let n = store.complete_many(&results).await.unwrap().applied.len();
                limited_done.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while limited_done.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        assert!(Instant::now() < until, "the limited tasks did not finish");
        let n = count_in(&db, "limited", "ACQUIRED").await;
        assert!(n <= 3, "{n} tasks of a max_concurrency = 3 action ACQUIRED at once");
        most = most.max(n);
    }
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(count_in(&db, "limited", "SUCCESS").await, 40);
    assert_eq!(free_taken.load(std::sync::atomic::Ordering::SeqCst), 20, "unlimited actions are acquired alongside");
    assert!(most >= 2, "the limit was never approached (most {most} at once)");
}

#[tokio::test]
async fn pause_stops_acquisition_of_that_action_only_and_resume_restarts_it() {
    let db = TestDb::new().await;
    let store = db.store();
    let running = store.submit_many(&[task("paused", json!({"n": 0}))]).await.unwrap()[0].id;
    let r = store.acquire(10).await.unwrap().tasks.remove(0);
    assert_eq!(r.id, running);
    store.set_action_paused(&action("paused"), true).await.unwrap();
    let mut batch: Vec<NewTask> = (1..=5).map(|i| task("paused", json!({"n": i}))).collect();
    batch.extend((1..=5).map(|i| task("other", json!({"n": i}))));
    store.submit_many(&batch).await.unwrap();
    let got = store.acquire(100).await.unwrap();
    assert_eq!(got.tasks.len(), 5);
    assert!(got.tasks.iter().all(|t| t.action == "other"), "{got:?}");
    assert_eq!(got.throttled.len(), 1);
    assert_eq!(got.throttled[0].action, "paused");
    assert!(store.acquire(100).await.unwrap().tasks.is_empty());
    // Its running task finishes.
    let done = TaskResult { id: r.id, attempt: r.attempt, outcome: Outcome::Success(json!({})) };
    assert_eq!(store.complete_many(&[done]).await.unwrap().applied[0].state, TaskState::Success);
    assert_eq!(count_in(&db, "paused", "SCHEDULED").await, 5);
    store.set_action_paused(&action("paused"), false).await.unwrap();
    let got = store.acquire(100).await.unwrap();
    assert_eq!((got.tasks.len(), got.throttled.len()), (5, 0));
    assert!(got.tasks.iter().all(|t| t.action == "paused"));
}

/// Bulk cancel by filter, with the cancel notification its running tasks' workers listen for, then bulk retry.
#[tokio::test]
async fn bulk_cancel_and_retry_by_filter() {
    let db = TestDb::new().await;
    let store = db.store();
    let (client, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client.batch_execute("LISTEN tasks_cancel").await.unwrap();
    let mut batch: Vec<NewTask> = (0..10).map(|i| task("x", json!({"i": i}))).collect();
    batch.extend((0..5).map(|i| task("y", json!({"i": i}))));
    store.submit_many(&batch).await.unwrap();
    let running = store.acquire(3).await.unwrap().tasks;
    assert!(running.iter().all(|t| t.action == "x"));
    let filter = TaskFilter { action: Some(action("x")), state: None };
    let counts: HashMap<TaskState, i64> = store.cancel_matching(&filter).await.unwrap().into_iter().collect();
    assert_eq!(counts, HashMap::from([(TaskState::Scheduled, 7), (TaskState::Acquired, 3)]));
    let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let mut expect: Vec<String> = running.iter().map(|t| format!("{}:{}", t.id, t.attempt)).collect();
    let mut got: Vec<String> = payload.split(',').map(String::from).collect();
    expect.sort();
    got.sort();
    assert_eq!(got, expect, "the notification names each running task's (id, attempt)");
    // Their late results are stale; y is untouched.
    let late: Vec<TaskResult> = running
        .iter()
        .map(|t| TaskResult { id: t.id, attempt: t.attempt, outcome: Outcome::Success(json!({})) })
        .collect();
    assert_eq!(store.complete_many(&late).await.unwrap().stale.len(), 3);
    assert_eq!(count_in(&db, "x", "CANCELLED").await, 10);
    assert_eq!(count_in(&db, "y", "SCHEDULED").await, 5);
    // Retry: only CRITICAL_ERROR unless told otherwise; then the cancelled ones.
    assert_eq!(store.retry_matching(&filter, MaxAttempts::default()).await.unwrap(), 0);
    let cancelled = TaskFilter { action: Some(action("x")), state: Some(TaskState::Cancelled) };
    assert_eq!(store.retry_matching(&cancelled, MaxAttempts::default()).await.unwrap(), 10);
    assert_eq!(count_in(&db, "x", "SCHEDULED").await, 10);
    // Filters by state alone work too.
    let scheduled = TaskFilter { action: None, state: Some(TaskState::Scheduled) };
    let counts = store.cancel_matching(&scheduled).await.unwrap();
    assert_eq!(counts, vec![(TaskState::Scheduled, 15)]);
}

/// Settings whose Acquirer never wakes on its idle timer within a test (issue 17): only the wake-up under test
/// (a rate token's timer, throttle_poll, NOTIFY, the ResultSink) can make it look again.
fn without_idle_wakeup(mut s: Settings) -> Settings {
    s.acquirer.idle_wakeup_ms = 600_000;
    s
}

/// rate_per_sec = 20 over 5 s, across both acquire loops of the pipeline, with no idle wake-up: the Acquirer looks
/// again when the next token is due. Never more than the bucket allows over the window (20/s plus its capacity
/// of 2, bracketing each count by the instants around its query, so a slow machine cannot break it); at least half
/// the rate (without the token timer nothing would be acquired past the first tokens).
#[actix_rt::test]
async fn rate_per_sec_holds_over_five_seconds() {
    let db = TestDb::new().await;
    let settings = without_idle_wakeup(test_settings(&db, Kind::Memory));
    let store = db.store();
    let change = ActionChange { rate_per_sec: Some(Some(20.0)), ..ActionChange::default() };
    store.configure_action(&action("noop"), &change).await.unwrap();
    store.submit_many(&(0..300).map(|i| task("noop", json!({"i": i}))).collect::<Vec<_>>()).await.unwrap();
    let app = start(&settings, &[], transport(&settings).await, HandlerRegistry::builtin());
    let acquired = || async { 300 - count_in(&db, "noop", "SCHEDULED").await };
    wait_until(Duration::from_secs(10), "a first acquisition", || async { acquired().await > 0 }).await;
    let (before0, n0, after0) = (Instant::now(), acquired().await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (before1, n1, after1) = (Instant::now(), acquired().await, Instant::now());
    let (most, least) = ((after1 - before0).as_secs_f64(), (before1 - after0).as_secs_f64());
    assert!(n1 - n0 <= (20.0 * most).floor() as i64 + 2, "{} acquired in at most {most:.2} s, limit 20/s", n1 - n0);
    assert!(n1 - n0 >= (10.0 * least) as i64, "{} acquired in {least:.2} s: the token timer is not waking", n1 - n0);
    app.shutdown(Duration::from_secs(5)).await;
}

/// The bucket's capacity is max(1, rate/10): after idling, one acquire statement takes 2 tasks of a 20/s action, not
/// a second's worth. Idling longer only fills the bucket to its capacity, so a slow machine cannot break this.
#[tokio::test]
async fn after_idling_the_rate_bucket_releases_a_tenth_of_a_second_not_a_burst() {
    let db = TestDb::new().await;
    let store = db.store();
    let change = ActionChange { rate_per_sec: Some(Some(20.0)), ..ActionChange::default() };
    store.configure_action(&action("capped"), &change).await.unwrap();
    store.submit_many(&(0..100).map(|i| task("capped", json!({"i": i}))).collect::<Vec<_>>()).await.unwrap();
    // Drain the first tokens, then idle for 2 s (40 tokens' worth at 20/s).
    store.acquire(100).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = store.acquire(100).await.unwrap();
    assert_eq!(got.tasks.len(), 2, "tasks of a 20/s action in one statement after 2 s idle (capacity 2)");
    assert_eq!(got.throttled.len(), 1, "the rest held back: {:?}", got.throttled);
    assert!(got.throttled[0].retry_after_secs > 0.0, "the next token's time is reported: {:?}", got.throttled);
}

/// Resume wakes the Acquirers through NOTIFY tasks_due: with no idle wake-up and no throttle poll, the paused
/// action's queued tasks run as soon as it is resumed.
#[actix_rt::test]
async fn resume_wakes_an_idle_acquirer_through_notify() {
    let db = TestDb::new().await;
    let mut settings = without_idle_wakeup(test_settings(&db, Kind::Memory));
    settings.acquirer.throttle_poll_ms = 60_000;
    let store = db.store();
    // An action of its own: the throttle counter is process-wide.
    let paused = "resume_wakes";
    store.set_action_paused(&action(paused), true).await.unwrap();
    let handlers = HandlerRegistry::builtin().with(paused, sqs_scheduler::handlers::Noop);
    let app = start(&settings, &[], transport(&settings).await, handlers);
    store.submit_many(&(0..5).map(|i| task(paused, json!({"i": i}))).collect::<Vec<_>>()).await.unwrap();
    // The submission's own NOTIFY woke the Acquirer, which found the action paused; it now sleeps 60 s.
    wait_until(Duration::from_secs(20), "the paused action to be throttled", || async {
        metrics().acquire_throttled.with_label_values(&[paused]).get() > 0
    })
    .await;
    let resumed = Instant::now();
    store.set_action_paused(&action(paused), false).await.unwrap();
    wait_for_counts(&store, Duration::from_secs(30), |c| c.get(&TaskState::Success) == Some(&5)).await;
    eprintln!("resume to 5 SUCCESS: {:?}", resumed.elapsed());
    app.shutdown(Duration::from_secs(5)).await;
}

/// A retry without delay is acquired on the ResultSink's wake-up: with no idle wake-up, three attempts of a
/// failing task follow each other (retry delay 0) and it ends CRITICAL_ERROR.
#[actix_rt::test]
async fn a_retry_without_delay_is_acquired_on_the_result_sinks_wakeup() {
    let db = TestDb::new().await;
    let mut settings = without_idle_wakeup(test_settings(&db, Kind::Memory));
    settings.retry.base_delay_secs = 0.0;
    settings.retry.max_delay_secs = 0.0;
    settings.retry.jitter = 0.0;
    let store = db.store();
    let app = start(&settings, &[], transport(&settings).await, HandlerRegistry::builtin());
    let body = json!({"jsonrpc": "2.0", "method": "submit:fail", "params": {"payload": {}, "max_attempts": 3}});
    app.shared.transport.send(Queue::Inbound, &[body.to_string()]).await.unwrap();
    let c = wait_for_counts(&store, Duration::from_secs(60), |c| c.get(&TaskState::CriticalError) == Some(&1)).await;
    assert_eq!(c.values().sum::<i64>(), 1, "{c:?}");
    assert_eq!(all_tasks(&store).await[0].attempts, 3);
    app.shutdown(Duration::from_secs(5)).await;
}

/// A `sleep {"ms": 60000}` with timeout_secs = 1 fails with a timeout error and is retried; so does one whose
/// action has the timeout.
#[actix_rt::test]
async fn a_task_past_its_timeout_fails_with_a_timeout_error_and_is_retried() {
    let _turn = metrics_turn().await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    // One slot: a timed-out handler left sleeping its 60 s would keep the noop below from running.
    settings.worker.concurrency = 1;
    let store = db.store();
    let change = ActionChange {
        timeout_secs: Some(Some(TimeoutSecs::parse("timeout_secs", 1.0).unwrap())),
        ..ActionChange::default()
    };
    store.configure_action(&action("slow"), &change).await.unwrap();
    let timed_out = || metrics().tasks_timed_out.with_label_values(&["sleep"]).get();
    let before = timed_out();
    let app = start(
        &settings,
        &[],
        transport(&settings).await,
        HandlerRegistry::builtin().with("slow", sqs_scheduler::handlers::Sleep),
    );
    let body = |action: &str, timeout: Value| {
        let mut params = json!({"payload": {"ms": 60000}, "max_attempts": 2});
        if !timeout.is_null() {
            params["timeout_secs"] = timeout;
        }
        json!({"jsonrpc": "2.0", "method": format!("submit:{action}"), "params": params}).to_string()
    };
    let started = Instant::now();
    app.shared.transport.send(Queue::Inbound, &[body("sleep", json!(1)), body("slow", Value::Null)]).await.unwrap();
    // Four 1 s attempts, one at a time: done long before any 60 s handler could have ended by itself.
    wait_for_counts(&store, Duration::from_secs(50), |c| c.get(&TaskState::CriticalError) == Some(&2)).await;
    eprintln!("two tasks of two 1 s attempts each, one slot: {:?}", started.elapsed());
    for t in store.list(&Default::default()).await.unwrap() {
        assert_eq!(t.attempts, 2, "retried after the timeout: {t:?}");
        let e = t.error.unwrap();
        assert_eq!(e["code"], protocol::TIMEOUT_ERROR, "{e}");
        assert!(e["message"].as_str().unwrap().starts_with("timeout"), "{e}");
    }
    assert_eq!(timed_out() - before, 2, "both attempts of the `sleep` task timed out");
    // The slot is free: a noop runs now.
    let noop = store.submit_many(&[task("noop", json!({}))]).await.unwrap()[0].id;
    wait_until(Duration::from_secs(30), "a noop to run in the freed slot", || async {
        store.get(noop).await.unwrap().unwrap().state == TaskState::Success
    })
    .await;
    app.shutdown(Duration::from_secs(5)).await;
}

/// Cancelled while running, a task ends CANCELLED at once, its handler is dropped through NOTIFY tasks_cancel alone
/// (the heartbeat, which also drops lost tasks, is 10 minutes away; the time taken is printed, the README says
/// about a second) and the slot is free again (one slot: the next task runs), and its handler's end does not
/// revive it.
#[actix_rt::test]
async fn a_running_task_cancelled_ends_cancelled_and_frees_its_slot() {
    let _turn = metrics_turn().await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    settings.worker.concurrency = 1;
    settings.worker.heartbeat_interval_secs = 600.0;
    let store = db.store();
    let dropped = || metrics().handlers_cancelled.get();
    let before = dropped();
    let app = start(&settings, &[], transport(&settings).await, HandlerRegistry::builtin());
    let long = store.submit_many(&[task("sleep", json!({"ms": 60000}))]).await.unwrap()[0].id;
    wait_until(Duration::from_secs(10), "the handler to start", || async {
        store.heartbeat_at(long).await.unwrap().is_some()
    })
    .await;
    let next = store.submit_many(&[task("noop", json!({}))]).await.unwrap()[0].id;
    let cancelled_at = Instant::now();
    assert_eq!(store.cancel(long).await.unwrap(), sqs_scheduler::store::CancelOutcome::CancelledRunning);
    assert_eq!(store.get(long).await.unwrap().unwrap().state, TaskState::Cancelled);
    wait_until(Duration::from_secs(30), "the handler to be dropped", || async { dropped() > before }).await;
    eprintln!("cancel to handler dropped: {:?}", cancelled_at.elapsed());
    // The one slot is free: the next task runs.
    wait_until(Duration::from_secs(5), "the next task to succeed", || async {
        store.get(next).await.unwrap().unwrap().state == TaskState::Success
    })
    .await;
    let t = store.get(long).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts, t.result.clone()), (TaskState::Cancelled, 1, None), "{t:?}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// A worker process of the binary; killed if the test ends early.
fn spawn_worker(settings: &Settings, concurrency: usize) -> Proc {
    spawn_roles(settings, &["worker"], &[("SCHEDULER_WORKER__CONCURRENCY", concurrency.to_string())])
}

/// max_concurrency = 3 with two scheduler processes competing for the last slot, two worker processes of
/// concurrency 64 and 100 tasks of 200 ms: never more than 3 ACQUIRED at once (sampled every few ms), the limit
/// used in full, all SUCCESS. The schedulers have no idle wake-up and the ResultSink runs in this process, so a
/// slot freed here is seen by them only through `throttle_poll_ms`.
#[actix_rt::test]
async fn max_concurrency_holds_across_two_scheduler_and_two_worker_processes() {
    let _sqs = sqs_turn(Kind::Sqs).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Sqs);
    let store = db.store();
    let change = ActionChange { max_concurrency: Some(Some(3)), ..ActionChange::default() };
    store.configure_action(&action("sleep"), &change).await.unwrap();
    let transport = transport(&settings).await;
    let _workers = [spawn_worker(&settings, 64), spawn_worker(&settings, 64)];
    let no_idle = [("SCHEDULER_ACQUIRER__IDLE_WAKEUP_MS", "600000".to_string())];
    let _schedulers =
        [spawn_roles(&settings, &["scheduler"], &no_idle), spawn_roles(&settings, &["scheduler"], &no_idle)];
    let core = [sqs_scheduler::startup::Role::Submitter, sqs_scheduler::startup::Role::Resulter];
    let app = start(&settings, &core, transport.clone(), HandlerRegistry::builtin());
    let bodies: Vec<String> =
        (0..100).map(|i| protocol::submit_message("sleep", &json!({"ms": 200, "i": i}))).collect();
    for chunk in bodies.chunks(10) {
        transport.send(Queue::Inbound, chunk).await.unwrap();
    }
    let (mut most, mut samples) = (0, 0);
    let until = Instant::now() + Duration::from_secs(180);
    while count_in(&db, "sleep", "SUCCESS").await < 100 {
        assert!(Instant::now() < until, "not all SUCCESS: {:?}", counts(&store).await);
        let n = count_in(&db, "sleep", "ACQUIRED").await;
        assert!(n <= 3, "{n} tasks ACQUIRED at once with max_concurrency = 3");
        most = most.max(n);
        samples += 1;
    }
    assert_eq!(counts(&store).await.get(&TaskState::Success), Some(&100));
    assert_eq!(most, 3, "the limit was used in full ({samples} samples)");
    app.shutdown(Duration::from_secs(5)).await;
}

/// The `action` subcommand: the same validation as over JSON-RPC (exit 2 naming the value), JSON on success.
#[tokio::test]
async fn the_action_subcommand_configures_pauses_and_lists() {
    let db = TestDb::new().await;
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sqs-scheduler"))
            .arg("action")
            .args(args)
            .env_clear()
            .env("SCHEDULER_DATABASE__URL", &db.url)
            .env("SCHEDULER_LOG__LEVEL", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = cli(&["configure", "export", "--max-concurrency", "-1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_concurrency"), "{err}");
    let (code, _, err) = cli(&["configure", "export", "--rate-per-sec", "fast"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("rate_per_sec"), "{err}");
    let (code, out, err) = cli(&["configure", "export", "--max-concurrency", "4", "--timeout-secs", "2.5"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["max_concurrency"].clone(), v["timeout_secs"].clone()), (json!(4), json!(2.5)));
    let (code, out, _) = cli(&["pause", "export"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["paused"], true);
    let (_, out, _) = cli(&["configure", "export", "--max-concurrency", "none"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["max_concurrency"], Value::Null);
    let (code, out, _) = cli(&["list"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["actions"][0]["action"], "export");
    assert_eq!(listed["actions"][0]["paused"], true);
    assert_eq!(listed["actions"][0]["timeout_secs"], 2.5);
}
