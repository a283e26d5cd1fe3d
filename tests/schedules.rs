//! Cron schedules, unknown actions and the transactional enqueue entry point, against the real PostgreSQL (and the
//! local SQS endpoint for the multi-process test): each tick enqueued once by three scheduler processes, missed
//! ticks, the fence between concurrent schedulers, `schedule.*` and its errors, unknown actions refused over HTTP and
//! dead-lettered from the inbound queue, and `scheduler.submit` called from psql in a rolled-back and a committed
//! transaction.

mod common;

use actix_web::test::{self, TestRequest};
use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use common::pipeline::*;
use common::process::{run_roles, Proc};
use common::{exec, TestDb};
use serde_json::{json, Value};
use sqs_scheduler::actors::cron::{declare, run_once, CronSettings};
use sqs_scheduler::configuration::Settings;
use sqs_scheduler::handlers::{HandlerRegistry, KnownActions};
use sqs_scheduler::http::{build_app, HttpApi, HttpState, SCHEDULE_NOT_FOUND};
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::schedules::{Schedule, ScheduleSpec};
use sqs_scheduler::store::{TaskState, TaskStore};
use sqs_scheduler::transport::Queue;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spec(name: &str, cron: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: cron.into(),
        action: "noop".into(),
        payload: Default::default(),
        timezone: "UTC".into(),
        priority: 0,
        max_attempts: None,
    }
}

/// The tasks enqueued for schedule `name`: their tick times, from their dedup keys, in order.
async fn ticks_of(store: &TaskStore, name: &str) -> Vec<DateTime<Utc>> {
    let prefix = format!("cron:{name}:");
    let mut ticks: Vec<DateTime<Utc>> = store
        .list(&sqs_scheduler::store::ListFilter { limit: Some(1000), ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .filter_map(|t| t.dedup_key.strip_prefix(&prefix).map(|k| k.parse::<DateTime<Utc>>().unwrap()))
        .collect();
    ticks.sort();
    ticks
}

// ---------------------------------------------------------------------------------------------------------------
// The CronScheduler
// ---------------------------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /metrics of a process.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of a counter series in an exposition (0 when absent).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The test: a schedule every second, three scheduler processes for 10 s: each tick enqueued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scheduler_processes_enqueue_each_tick_of_an_every_second_schedule_once() {
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Sqs);
    let _queues = transport(&settings).await;
    let dir = std::env::temp_dir().join(format!("sched-3procs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("scheduler.toml");
    std::fs::write(
        &config,
        "[[schedules]]\nname = \"every-second\"\ncron = \"* * * * * *\"\naction = \"noop\"\npayload = { from = \"config\" }\n",
    )
    .unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Proc> = ports.iter().map(|port| spawn_scheduler(&settings, &config, *port)).collect();

    // Ten seconds of ticks, observed in the database (the first ticks come once a process has started).
    let store = db.store();
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let ticks = ticks_of(&store, "every-second").await;
        if ticks.len() >= 2 && *ticks.last().unwrap() - ticks[0] >= ChronoDuration::seconds(10) {
            break;
        }
        assert!(Instant::now() < until, "no 10 s of ticks within 90 s: {ticks:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop the ticks (a paused schedule fails the fence), then what each process says it did must settle on what the
    // database holds (a tick fired just before the pause is counted right after its statement returns).
    exec(&db.url, "UPDATE schedules SET paused = true").await;
    let ticks = ticks_of(&store, "every-second").await;
    let enqueued_by_all = |texts: &[String]| -> f64 {
        texts
            .iter()
            .map(|t| series(t, "scheduler_cron_ticks_total", &[("schedule", "every-second"), ("outcome", "enqueued")]))
            .sum()
    };
    let mut texts: Vec<String> = Vec::new();
    let want = ticks.len() as f64;
    wait_until(Duration::from_secs(10), "the processes' metrics to count every tick", || {
        texts = ports.iter().map(|p| scrape(*p)).collect();
        let n = enqueued_by_all(&texts);
        async move { n >= want }
    })
    .await;
    assert_eq!(ticks_of(&store, "every-second").await, ticks, "no tick after the pause");
    for p in &procs {
        assert!(Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status().unwrap().success());
    }
    for p in procs.iter_mut() {
        let until = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "a scheduler did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status:?}");
    }

    let sum = |outcome: &str| -> f64 {
        texts
            .iter()
            .map(|t| series(t, "scheduler_cron_ticks_total", &[("schedule", "every-second"), ("outcome", outcome)]))
            .sum()
    };
    let (enqueued, duplicate, skipped) = (sum("enqueued"), sum("duplicate"), sum("skipped"));
    let span = (*ticks.last().unwrap() - ticks[0]).num_seconds() + 1;
    println!(
        "ticks {} over {span} s; processes enqueued {enqueued}, duplicates {duplicate}, skipped {skipped}; \
         per process {:?}",
        ticks.len(),
        texts
            .iter()
            .map(|t| series(t, "scheduler_cron_ticks_total", &[("schedule", "every-second"), ("outcome", "enqueued")]))
            .collect::<Vec<_>>()
    );
    // Whole seconds, each at most once (distinct dedup keys are distinct ticks).
    assert!(ticks.iter().all(|t| t.nanosecond() == 0), "{ticks:?}");
    assert_eq!(ticks.iter().collect::<BTreeSet<_>>().len(), ticks.len());
    // No process fired a tick another had fired: the fence decided, the unique key never had to.
    assert_eq!(duplicate, 0.0);
    // Every tick of the span was enqueued by exactly one process or, had all three been late past the next tick,
    // counted as skipped; never lost silently. (Late by a whole second on this machine: rare.)
    assert_eq!(enqueued, ticks.len() as f64, "each task enqueued by exactly one process");
    assert_eq!(ticks.len() as i64 + skipped as i64, span, "gaps in {ticks:?} not counted as skipped");
    assert!(skipped <= 1.0, "{skipped} ticks skipped while three schedulers ran");
    // The tasks carry the schedule's payload.
    let t = store.list(&Default::default()).await.unwrap().remove(0);
    assert_eq!(t.payload, json!({"from": "config"}));
    assert_eq!(t.action, "noop");
}

fn spawn_scheduler(settings: &Settings, config: &std::path::Path, port: u16) -> Proc {
    let mut cmd = run_roles(settings, &["scheduler"]);
    cmd.env("SCHEDULER_CONFIG", config).env("SCHEDULER_HTTP__BIND", format!("127.0.0.1:{port}"));
    Proc(cmd.spawn().expect("spawn sqs-scheduler"))
}

/// Seconds since the epoch of the last multiple of 10 s at or before `t`.
fn floor10(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() - t.timestamp().rem_euclid(10), 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_missed_while_nothing_ran_runs_once_and_older_ones_are_skipped_and_counted() {
    let db = TestDb::new().await;
    let store = db.store();
    let every10 = Schedule::parse(&spec("every10", "*/10 * * * * *")).unwrap();
    assert_eq!(declare(&store, std::slice::from_ref(&every10), &KnownActions::any()).await.unwrap(), 1);
    // Everything was down for two minutes and more: its next tick is long past.
    let down_since = floor10(store.db_now().await.unwrap()) - ChronoDuration::seconds(120);
    exec(&db.url, &format!("UPDATE schedules SET next_run_at = '{}'", down_since.to_rfc3339())).await;

    let before = store.db_now().await.unwrap();
    let pass = run_once(&store, &CronSettings::default(), 10).await.unwrap();
    let after = store.db_now().await.unwrap();
    assert_eq!((pass.enqueued, pass.duplicates), (1, 0));
    let ticks = ticks_of(&store, "every10").await;
    assert_eq!(ticks.len(), 1, "{ticks:?}");
    let tick = ticks[0];
    assert!(tick == floor10(before) || tick == floor10(after), "the latest tick runs: {tick} ({before}..{after})");
    let skipped = (tick - down_since).num_seconds() / 10;
    assert!(skipped >= 12);
    assert_eq!(pass.skipped, skipped as u64, "every older missed tick is counted");
    let row = store.get_schedule("every10").await.unwrap().unwrap();
    assert_eq!(row.skipped_ticks, skipped);
    assert_eq!(row.last_tick_at, Some(tick));
    assert_eq!(row.next_run_at, tick + ChronoDuration::seconds(10));
    let task = store.list(&Default::default()).await.unwrap().remove(0);
    assert_eq!((task.state, task.run_at, task.max_attempts), (TaskState::Scheduled, tick, 10));

    // A restart declares the configuration again: the next tick is kept (not lost, not repeated).
    assert_eq!(declare(&store, std::slice::from_ref(&every10), &KnownActions::any()).await.unwrap(), 0);
    assert_eq!(store.get_schedule("every10").await.unwrap().unwrap().next_run_at, tick + ChronoDuration::seconds(10));
    // A changed expression takes effect at once.
    let every20 = Schedule::parse(&spec("every10", "*/20 * * * * *")).unwrap();
    assert_eq!(declare(&store, &[every20], &KnownActions::any()).await.unwrap(), 1);
    let row = store.get_schedule("every10").await.unwrap().unwrap();
    assert_eq!((row.cron.as_str(), row.next_run_at.timestamp() % 20), ("*/20 * * * * *", 0));
}

/// End to end in one process: configured schedules declared at start, a tick missed while nothing ran enqueued once
/// at start and run, then the schedule goes on.
#[actix_rt::test]
async fn at_start_the_configured_schedule_is_declared_and_its_missed_tick_runs_once() {
    let _metrics = metrics_turn().await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    settings.schedules = vec![ScheduleSpec { action: "export".into(), ..spec("nightly", "0 3 * * *") }];
    settings.schedules[0].payload.insert("objectID".into(), json!(1));
    insert_objects(&db, 1).await;
    let store = db.store();
    // It ran before, and everything was down for three days since.
    let declared: Vec<Schedule> = settings.schedules.iter().map(|s| Schedule::parse(s).unwrap()).collect();
    declare(&store, &declared, &KnownActions::any()).await.unwrap();
    let last_3am = |t: DateTime<Utc>| {
        let d = t.date_naive().and_hms_opt(3, 0, 0).unwrap().and_utc();
        if d <= t {
            d
        } else {
            d - ChronoDuration::days(1)
        }
    };
    let latest = last_3am(store.db_now().await.unwrap());
    let missed_since = latest - ChronoDuration::days(3);
    exec(&db.url, &format!("UPDATE schedules SET next_run_at = '{}'", missed_since.to_rfc3339())).await;
    let skipped = || metrics().cron_ticks.with_label_values(&["nightly", "skipped"]).get();
    let skipped_before = skipped();

    let transport = transport(&settings).await;
    log_export_runs(&db).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    wait_for_counts(&store, Duration::from_secs(30), |c| c.get(&TaskState::Success) == Some(&1)).await;
    assert_eq!(ticks_of(&store, "nightly").await, vec![latest], "only the latest missed tick runs");
    assert_exports_ran_once(&db, 1).await;
    let row = store.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!((row.skipped_ticks, row.source.as_str()), (3, "config"));
    assert_eq!(row.next_run_at, latest + ChronoDuration::days(1));
    assert_eq!(skipped() - skipped_before, 3);
    app.shutdown(Duration::from_secs(10)).await;
    assert_eq!(count_rows(&db, "tasks").await, 1, "nothing else was enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schedulers_fire_a_due_tick_once() {
    let db = TestDb::new().await;
    let (a, b) = (db.store(), db.store());
    let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    // Yearly: the latest tick stays the same while the test runs.
    let schedules: Vec<Schedule> = names.iter().map(|n| Schedule::parse(&spec(n, "0 0 1 1 *")).unwrap()).collect();
    declare(&a, &schedules, &KnownActions::any()).await.unwrap();
    let cfg = CronSettings { batch_size: 7, ..CronSettings::default() };
    for round in 0..5 {
        // Every schedule due (missed for a while: the latest tick, this year's, runs), both schedulers at once, in
        // batches smaller than the lot.
        exec(&db.url, "DELETE FROM tasks").await;
        exec(
            &db.url,
            &format!("UPDATE schedules SET next_run_at = date_trunc('year', now()) - interval '{round} years'"),
        )
        .await;
        let (pa, pb) = tokio::join!(run_once(&a, &cfg, 10), run_once(&b, &cfg, 10));
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_eq!(pa.enqueued + pb.enqueued, 20, "round {round}: {pa:?} {pb:?}");
        assert_eq!(pa.duplicates + pb.duplicates, 0, "round {round}");
        let total: usize =
            futures::future::join_all(names.iter().map(|n| ticks_of(&a, n))).await.iter().map(Vec::len).sum();
        assert_eq!(total, 20);
    }
    // The same ticks fired again (their schedules set back by hand): the tasks' unique key makes them duplicates.
    exec(&db.url, "UPDATE schedules SET next_run_at = last_tick_at").await;
    let p = run_once(&a, &cfg, 10).await.unwrap();
    assert_eq!((p.enqueued, p.duplicates), (0, 20));
    assert_eq!(count_rows(&db, "tasks").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_expression_that_no_longer_parses_pauses_its_schedule_once() {
    let db = TestDb::new().await;
    let store = db.store();
    declare(&store, &[Schedule::parse(&spec("broken", "* * * * *")).unwrap()], &KnownActions::any()).await.unwrap();
    exec(&db.url, "UPDATE schedules SET cron = 'not a cron', next_run_at = now() - interval '1 minute'").await;
    let invalid = || metrics().cron_ticks.with_label_values(&["broken", "invalid"]).get();
    let before = invalid();
    let pass = run_once(&store, &CronSettings::default(), 10).await.unwrap();
    assert_eq!(pass.enqueued, 0);
    assert!(store.get_schedule("broken").await.unwrap().unwrap().paused);
    run_once(&store, &CronSettings::default(), 10).await.unwrap();
    assert_eq!(invalid() - before, 1, "reported once, not on every pass");
}

// ---------------------------------------------------------------------------------------------------------------
// schedule.* and unknown actions over HTTP
// ---------------------------------------------------------------------------------------------------------------

fn http_api(db: &TestDb, actions: sqs_scheduler::configuration::ActionsSettings) -> HttpApi {
    let mut s = Settings { database: db.settings(), ..Settings::default() };
    s.http.bind = "127.0.0.1:0".into();
    s.actions = actions;
    let known_actions = KnownActions::new(&HandlerRegistry::builtin(), &s.actions);
    HttpApi::new(HttpState {
        settings: Arc::new(s),
        store: db.store(),
        transport: None,
        rpc_enabled: true,
        known_actions,
    })
}

/// One JSON-RPC call from loopback (no token configured): the whole response object.
macro_rules! call {
    ($app:expr, $method:expr, $params:expr) => {{
        let body = json!({"jsonrpc": "2.0", "method": $method, "params": $params, "id": 1}).to_string();
        let req = TestRequest::post().uri("/rpc").peer_addr("127.0.0.1:40000".parse().unwrap()).set_payload(body);
        let res = test::call_service(&$app, req.to_request()).await;
        assert_eq!(res.status(), 200);
        serde_json::from_slice::<Value>(&test::read_body(res).await).unwrap()
    }};
}

#[actix_rt::test]
async fn schedules_over_json_rpc_and_every_bad_input_changes_nothing() {
    let db = TestDb::new().await;
    let app = test::init_service(build_app(http_api(&db, Default::default()))).await;
    let good = json!({"name": "hourly-export", "cron": "0 * * * *", "action": "export", "payload": {"objectID": 1},
                      "timezone": "Europe/Paris", "priority": 5, "max_attempts": 3});
    let r = call!(app, "schedule.create", good.clone());
    assert_eq!(r["result"]["created"], json!(true), "{r}");
    let s = &r["result"]["schedule"];
    assert_eq!(
        (s["source"].as_str(), s["paused"].as_bool(), s["priority"].as_i64()),
        (Some("api"), Some(false), Some(5))
    );
    let next: DateTime<Utc> = s["next_run_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((next.minute(), next.second()), (0, 0));
    // The same call again (a client's retry): no change.
    assert_eq!(call!(app, "schedule.create", good.clone())["result"]["created"], json!(false));

    let bad: Vec<(Value, i64, &str)> = vec![
        (json!({"name": "x", "cron": "every hour", "action": "noop"}), -32602, "cron"),
        (json!({"name": "x", "cron": "61 * * * *", "action": "noop"}), -32602, "cron"),
        (json!({"name": "x", "cron": "0 0 30 2 *", "action": "noop"}), -32602, "cron"),
        (
            json!({"name": "x", "cron": "* * * * *", "action": "noop", "timezone": "Nowhere/Special"}),
            -32602,
            "timezone",
        ),
        (json!({"name": "x", "cron": "* * * * *", "action": "noop", "priority": -101}), -32602, "priority"),
        (json!({"name": "x", "cron": "* * * * *", "action": "noop", "max_attempts": -1}), -32602, "max_attempts"),
        (json!({"name": "x", "cron": "* * * * *", "action": "noop", "payload": [1]}), -32602, "payload"),
        (json!({"name": "x", "cron": "* * * * *", "action": "noop", "payload": {"_meta": 1}}), -32602, "payload"),
        (json!({"name": "x y", "cron": "* * * * *", "action": "noop"}), -32602, "name"),
        (json!({"cron": "* * * * *", "action": "noop"}), -32602, "name"),
        (json!({"name": "x", "cron": "* * * * *", "action": "noop", "every": 1}), -32602, "params"),
        (json!({"name": "hourly-export", "cron": "30 * * * *", "action": "export"}), -32602, "name"),
        (json!({"name": "x", "cron": "* * * * *", "action": "nosuch"}), -32601, "nosuch"),
    ];
    for (params, code, names) in bad {
        let r = call!(app, "schedule.create", params.clone());
        assert_eq!(r["error"]["code"], json!(code), "{params} -> {r}");
        let said = r["error"].to_string();
        assert!(said.contains(names), "{params}: the error names {names}: {said}");
    }
    let r = call!(app, "schedule.create", json!({"name": "x", "cron": "every hour", "action": "noop"}));
    assert!(r["error"]["message"].as_str().unwrap().contains("\"every hour\""), "names the expression: {r}");
    // Nothing of that was stored.
    let list = call!(app, "schedule.list", json!({}));
    let names: Vec<&str> =
        list["result"]["schedules"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hourly-export"]);

    // Pause, resume, delete.
    let r = call!(app, "schedule.pause", json!({"name": "hourly-export"}));
    assert_eq!(r["result"]["schedule"]["paused"], json!(true), "{r}");
    let r = call!(app, "schedule.resume", json!({"name": "hourly-export"}));
    assert_eq!(r["result"]["schedule"]["paused"], json!(false), "{r}");
    let r = call!(app, "schedule.pause", json!({"name": "nope"}));
    assert_eq!(r["error"]["code"], json!(SCHEDULE_NOT_FOUND));
    let r = call!(app, "schedule.delete", json!({"name": "hourly-export"}));
    assert_eq!(r["result"]["deleted"], json!(true));
    let r = call!(app, "schedule.delete", json!({"name": "hourly-export"}));
    assert_eq!(r["error"]["code"], json!(SCHEDULE_NOT_FOUND));
    let r = call!(app, "schedule.frobnicate", json!({}));
    assert_eq!(r["error"]["code"], json!(-32601));
    assert!(db.store().list_schedules().await.unwrap().is_empty());
}

#[actix_rt::test]
async fn an_unknown_action_is_refused_at_submit_unless_declared_or_accepted() {
    let db = TestDb::new().await;
    let store = db.store();
    let rejected = || metrics().unknown_action_rejections.with_label_values(&["http"]).get();
    let app = test::init_service(build_app(http_api(&db, Default::default()))).await;
    let before = rejected();
    let r = call!(app, "submit:nosuch", json!({"a": 1}));
    assert_eq!(r["error"]["code"], json!(-32601), "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"nosuch\"") && msg.contains("[actions] known"), "{msg}");
    assert_eq!(r["error"]["data"]["action"], json!("nosuch"));
    assert!(rejected() > before);
    assert!(store.list(&Default::default()).await.unwrap().is_empty(), "nothing stored");
    // Built-in actions still work.
    assert!(call!(app, "submit:noop", json!({}))["result"]["id"].is_i64());

    // Declared for workers written in other languages.
    let declared =
        sqs_scheduler::configuration::ActionsSettings { known: vec!["py_resize".into()], accept_unknown: false };
    let app = test::init_service(build_app(http_api(&db, declared))).await;
    assert!(call!(app, "submit:py_resize", json!({}))["result"]["id"].is_i64());
    assert_eq!(call!(app, "submit:nosuch", json!({}))["error"]["code"], json!(-32601));
    // Anything goes.
    let open = sqs_scheduler::configuration::ActionsSettings { known: vec![], accept_unknown: true };
    let app = test::init_service(build_app(http_api(&db, open))).await;
    assert!(call!(app, "submit:nosuch", json!({}))["result"]["id"].is_i64());
    let r = call!(app, "schedule.create", json!({"name": "n", "cron": "* * * * *", "action": "nosuch2"}));
    assert_eq!(r["result"]["created"], json!(true), "{r}");
    let actions: BTreeSet<String> =
        store.list(&Default::default()).await.unwrap().into_iter().map(|t| t.action).collect();
    assert_eq!(actions, ["noop", "nosuch", "py_resize"].map(String::from).into());
}

#[actix_rt::test]
async fn an_unknown_action_on_the_inbound_queue_is_dead_lettered_with_its_reason() {
    let _metrics = metrics_turn().await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, Kind::Memory);
    let transport = transport(&settings).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    let inbound = || metrics().unknown_action_rejections.with_label_values(&["inbound"]).get();
    let (dlq_before, inbound_before) = (dead_lettered(&settings, Queue::Inbound, "unknown_action"), inbound());
    let unknown = sqs_scheduler::protocol::submit_message("nosuch", &json!({"n": 1}));
    // A JSON-RPC batch: its valid entry is stored, its unknown one dead-lettered alone.
    let batch = json!([
        {"jsonrpc": "2.0", "method": "submit:noop", "params": {"n": 2}},
        {"jsonrpc": "2.0", "method": "submit:nosuch_either", "params": {"n": 3}},
    ])
    .to_string();
    let noop = sqs_scheduler::protocol::submit_message("noop", &json!({"n": 4}));
    transport.send(Queue::Inbound, &[unknown.clone(), batch, noop]).await.unwrap();
    let store = db.store();
    wait_for_counts(&store, Duration::from_secs(30), |c| c.get(&TaskState::Success) == Some(&2)).await;
    let dead = peek_all(transport.as_ref(), Queue::InboundDlq, 2, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.contains(&unknown), "{dead:?}");
    assert!(dead.iter().any(|b| b.contains("nosuch_either") && !b.contains("submit:noop")), "{dead:?}");
    assert_eq!(dead_lettered(&settings, Queue::Inbound, "unknown_action") - dlq_before, 2);
    assert_eq!(inbound() - inbound_before, 2);
    let actions: BTreeSet<String> =
        store.list(&Default::default()).await.unwrap().into_iter().map(|t| t.action).collect();
    assert_eq!(actions, ["noop".to_string()].into());
    app.shutdown(Duration::from_secs(10)).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Transactional enqueue: scheduler.submit from psql
// ---------------------------------------------------------------------------------------------------------------

fn psql(db: &TestDb) -> Command {
    let mut c = Command::new("psql");
    c.arg(&db.url).args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    c
}

#[actix_rt::test]
async fn scheduler_submit_from_psql_exists_only_if_the_transaction_commits_and_wakes_the_acquirer() {
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, Kind::Memory);
    // The Acquirer's own timer would take a minute: only the NOTIFY delivered at commit can wake it in time.
    settings.acquirer.idle_wakeup_ms = 60_000;
    let transport = transport(&settings).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    let store = db.store();
    wait_until(Duration::from_secs(30), "the DueListener listening", || async {
        count_rows(&db, "pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN tasks_due'").await == 1
    })
    .await;

    // Rolled back: neither the application's row nor the task exists.
    let out = psql(&db)
        .args(["-c", "BEGIN", "-c", "INSERT INTO t_object (id, data) VALUES (1, '{\"k\": 1}')"])
        .args(["-c", "SELECT scheduler.submit('export', '{\"objectID\": 1}')", "-c", "ROLLBACK"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count_rows(&db, "tasks").await, 0);
    assert_eq!(count_rows(&db, "t_object").await, 0);

    // Committed: invisible while the transaction is open, then acquired and run once it commits.
    let mut session = psql(&db)
        .env("PGAPPNAME", "b1-app-txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    writeln!(stdin, "BEGIN;\nINSERT INTO t_object (id, data) VALUES (2, '{{\"k\": 2}}');").unwrap();
    writeln!(stdin, "SELECT scheduler.submit('export', jsonb_build_object('objectID', 2), priority => 3);").unwrap();
    stdin.flush().unwrap();
    wait_until(Duration::from_secs(30), "the application's transaction open with its writes", || async {
        count_rows(
            &db,
            "pg_stat_activity WHERE application_name = 'b1-app-txn' AND state = 'idle in transaction' \
             AND backend_xid IS NOT NULL",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(count_rows(&db, "tasks").await, 0, "not visible before the commit");
    writeln!(stdin, "COMMIT;").unwrap();
    drop(stdin);
    let committed_at = Instant::now();
    let out = session.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for_counts(&store, Duration::from_secs(20), |c| c.get(&TaskState::Success) == Some(&1)).await;
    println!("committed -> SUCCESS in {:?} (Acquirer idle wake-up 60 s)", committed_at.elapsed());
    let task = store.list(&Default::default()).await.unwrap().remove(0);
    assert_eq!((task.action.as_str(), task.priority, task.attempts), ("export", 3, 1));
    assert_eq!(count_rows(&db, "t_exported_object WHERE id = 2").await, 1);

    // Idempotent per (action, dedup_key), and bad input is refused with a message naming it.
    let out = psql(&db)
        .args(["-At", "-c", "SELECT scheduler.submit('noop', dedup_key => 'k1')"])
        .args(["-c", "SELECT scheduler.submit('noop', '{\"other\": 1}', dedup_key => 'k1')"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert!(out.status.success() && ids.len() == 2 && ids[0] == ids[1], "{ids:?}");
    for (call, says) in [
        ("SELECT scheduler.submit('export', '[1]')", "payload must be a JSON object"),
        ("SELECT scheduler.submit('export', priority => 101)", "priority must be between -100 and 100"),
        ("SELECT scheduler.submit('has space')", "action must be"),
        ("SELECT scheduler.submit('noop', max_attempts => 0)", "max_attempts"),
    ] {
        let out = psql(&db).args(["-c", call]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{call}: {err}");
    }
    app.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_command_lists_them() {
    let db = TestDb::new().await;
    let store = db.store();
    let specs = [
        spec("b-every-minute", "* * * * *"),
        ScheduleSpec { timezone: "Asia/Tokyo".into(), ..spec("a-nine", "0 9 * * *") },
    ];
    let schedules: Vec<Schedule> = specs.iter().map(|s| Schedule::parse(s).unwrap()).collect();
    declare(&store, &schedules, &KnownActions::any()).await.unwrap();
    store.pause_schedule("b-every-minute").await.unwrap().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sqs-scheduler"))
        .arg("schedules")
        .env_remove("SCHEDULER_CONFIG")
        .env("SCHEDULER_DATABASE__URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Vec<&str>> =
        text.lines().map(|l| l.split("  ").filter(|c| !c.is_empty()).map(str::trim).collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0][0], "NAME");
    assert_eq!(&lines[1][..5], ["a-nine", "0 9 * * *", "Asia/Tokyo", "noop", "active"], "{text}");
    assert_eq!(&lines[2][..5], ["b-every-minute", "* * * * *", "UTC", "noop", "paused"], "{text}");
    // 09:00 in Tokyo is 00:00 UTC.
    assert!(lines[1][5].ends_with("T00:00:00Z"), "{text}");
}
