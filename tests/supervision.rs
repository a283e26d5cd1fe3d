//! The supervision tree: stages restart with growing backoff, a stage that keeps failing escalates to its role's
//! supervisor and then to the root, which gives up; database connections killed under every stage lose nothing.
//! In-process, on the in-process transport and a fresh database each.

mod common;

use common::pipeline::*;
use common::TestDb;
use sqs_scheduler::handlers::HandlerRegistry;
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::startup::{App, STAGE_NAMES};
use sqs_scheduler::store::TaskState;
use sqs_scheduler::supervision::{ExitReason, SupervisionEvent};
use sqs_scheduler::transport::Queue;
use std::time::Duration;
use tokio::sync::broadcast;

/// The supervisor of each stage's role.
fn role_of(stage: &str) -> &'static str {
    match stage {
        "persister" => "submitter",
        "acquirer" => "scheduler",
        "worker_pool" => "worker",
        "result_sink" => "resulter",
        "stale_reaper" => "supervisor",
        other => panic!("unknown stage {other}"),
    }
}

/// Waits (bounded) for the first event `pick` accepts.
async fn next_event<T>(
    rx: &mut broadcast::Receiver<SupervisionEvent>,
    what: &str,
    mut pick: impl FnMut(&SupervisionEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("events closed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap_or_else(|_| panic!("no event: {what}"))
}

/// Panics `stage` and waits until its next instance is up; returns the restart delay the supervisor chose, or
/// None when the supervisor gave up instead.
async fn panic_and_await_restart(
    app: &App,
    rx: &mut broadcast::Receiver<SupervisionEvent>,
    stage: &str,
) -> Option<Duration> {
    assert!(app.inject_panic(stage), "{stage} is running");
    let role = role_of(stage);
    let outcome = next_event(rx, &format!("{stage} restarting or {role} giving up"), |e| match e {
        SupervisionEvent::Restarting { child, reason, delay, .. } if child == stage => {
            assert_eq!(*reason, ExitReason::Panic);
            Some(Some(*delay))
        }
        SupervisionEvent::GaveUp { supervisor, .. } if supervisor == role => Some(None),
        _ => None,
    })
    .await;
    // Whether the stage alone or its whole role restarts, wait for the stage's next instance.
    next_event(rx, &format!("{stage} started again"), |e| match e {
        SupervisionEvent::Started { child, .. } if child == stage => Some(()),
        _ => None,
    })
    .await;
    outcome
}

fn settings_for(db: &TestDb) -> sqs_scheduler::configuration::Settings {
    let mut s = test_settings(db, Kind::Memory);
    s.supervision.initial_backoff_ms = 20;
    s.supervision.max_backoff_ms = 2_000;
    s.supervision.max_restarts = 5;
    s.supervision.period_secs = 60.0;
    s
}

#[actix_rt::test]
async fn each_stage_restarts_with_growing_backoff_then_escalates_and_nothing_is_lost() {
    let _turn = metrics_turn().await;
    let db = TestDb::new().await;
    let mut settings = settings_for(&db);
    // Every stage escalates once: the root must restart five roles without giving up.
    settings.supervision.root_max_restarts = 10;
    let transport = transport(&settings).await;
    insert_objects(&db, 300).await;
    let (audited, handlers, audit) = ExecAudit::wrap(transport.clone(), HandlerRegistry::builtin());
    let app = start(&settings, &[], audited, handlers);
    let mut events = app.supervision_events();
    submit_exports(transport.as_ref(), 150).await;
    for stage in STAGE_NAMES {
        let restarts = |reason: &str| metrics().actor_restarts.with_label_values(&[stage, reason]).get();
        let role_restarts = || metrics().actor_restarts.with_label_values(&[role_of(stage), "escalated"]).get();
        let (panics_before, escalations_before) = (restarts("panic"), role_restarts());
        let mut delays = Vec::new();
        for _ in 0..5 {
            let delay = panic_and_await_restart(&app, &mut events, stage).await;
            delays.push(delay.unwrap_or_else(|| panic!("{stage}: gave up before the 6th failure")));
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![20, 40, 80, 160, 320], "{stage}: backoff doubles from the initial delay");
        assert_eq!(restarts("panic") - panics_before, 5, "{stage}: its own restart count");
        // The 6th failure within the window is one too many: the role's supervisor gives up, the root restarts
        // the whole role.
        assert_eq!(panic_and_await_restart(&app, &mut events, stage).await, None, "{stage}: 6th escalates");
        assert_eq!(role_restarts() - escalations_before, 1, "{stage}: the root restarted its role once");
        assert_eq!(restarts("panic") - panics_before, 5, "{stage}: the 6th is not a stage restart");
    }
    submit_exports_range(transport.as_ref(), 151, 300).await;
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(120), |c| c.get(&TaskState::Success) == Some(&300)).await;
    assert_eq!(c.values().sum::<i64>(), 300, "nothing lost, nothing left ACQUIRED: {c:?}");
    assert_eq!(count_rows(&db, "t_exported_object").await, 300, "one export row per object");
    // A worker that panics with tasks in hand leaves their messages undeleted: those may run again, nothing else.
    audit.assert_repeats_explained(&store, 1).await;
    app.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_stage_that_keeps_failing_makes_the_root_give_up() {
    let db = TestDb::new().await;
    let mut settings = settings_for(&db);
    settings.supervision.root_max_restarts = 1;
    let transport = transport(&settings).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    let mut events = app.supervision_events();
    next_event(&mut events, "persister started", |e| match e {
        SupervisionEvent::Started { child, .. } if child == "persister" => Some(()),
        _ => None,
    })
    .await;
    // Two escalations of the submitter role: the root allows one restart of a role, not two.
    for round in 0..2 {
        for _ in 0..5 {
            assert!(panic_and_await_restart(&app, &mut events, "persister").await.is_some(), "round {round}");
        }
        assert!(app.inject_panic("persister"));
        next_event(&mut events, "submitter gives up", |e| match e {
            SupervisionEvent::GaveUp { supervisor, .. } if supervisor == "submitter" => Some(()),
            _ => None,
        })
        .await;
        if round == 0 {
            next_event(&mut events, "persister started again", |e| match e {
                SupervisionEvent::Started { child, .. } if child == "persister" => Some(()),
                _ => None,
            })
            .await;
        }
    }
    let reason = tokio::time::timeout(Duration::from_secs(10), app.gave_up()).await.expect("the root gives up");
    assert!(reason.contains("submitter"), "{reason}");
    app.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn database_connections_killed_under_every_stage_lose_nothing() {
    let db = TestDb::new().await;
    let settings = settings_for(&db);
    let transport = transport(&settings).await;
    let n = 1000;
    insert_objects(&db, n).await;
    let (audited, handlers, audit) = ExecAudit::wrap(transport.clone(), HandlerRegistry::builtin());
    let app = start(&settings, &[], audited, handlers);
    let submitting = {
        let t = transport.clone();
        actix_rt::spawn(async move { submit_exports(t.as_ref(), n).await })
    };
    // Every 200 ms for 5 s, every backend of this database but the killer's own is terminated.
    let kill = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    let mut terminated = 0;
    for _ in 0..25 {
        terminated += common::query_i64(&common::base_url(), &kill).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A typo in the query would terminate nothing and the test would pass with no fault at all.
    assert!(terminated > 0, "no backend was terminated");
    submitting.await.unwrap();
    let store = db.store();
    let c =
        wait_for_counts(&store, Duration::from_secs(180), |c| c.get(&TaskState::Success) == Some(&(n as i64))).await;
    assert_eq!(c.values().sum::<i64>(), n as i64, "{c:?}");
    assert_eq!(count_rows(&db, "t_exported_object").await, n as i64, "one export row per object");
    // A terminated connection fails a handler's export (a new attempt) or a stage's statement (a redelivery):
    // any repeat of one attempt must come from a redelivery.
    audit.assert_repeats_explained(&store, 1).await;
    for q in [Queue::InboundDlq, Queue::OutboundDlq, Queue::ResultsDlq] {
        assert_eq!(transport.depth(q).await.unwrap(), 0, "{q}: nothing dead-lettered");
    }
    app.shutdown(Duration::from_secs(5)).await;
}

/// The binary (built with the tests' `test-hooks` feature): a stage that panics again and again takes its role
/// down, then the root, and `run` exits 70 with a log line that says why.
#[test]
fn a_process_whose_stage_keeps_failing_exits_70_and_says_why() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-scheduler"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SCHEDULER_DATABASE__URL", &db.url)
        .env("SCHEDULER_TRANSPORT__KIND", "memory")
        .env("SCHEDULER_HTTP__BIND", "")
        .env("SCHEDULER_SUPERVISION__INITIAL_BACKOFF_MS", "10")
        .env("SCHEDULER_SUPERVISION__MAX_BACKOFF_MS", "50")
        .env("SCHEDULER_SUPERVISION__ROOT_MAX_RESTARTS", "1")
        .env("SQS_SCHEDULER_TEST_PANIC_LOOP", "persister")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{log}");
    assert!(log.contains("the root supervisor gave up"), "{log}");
    assert!(log.contains("submitter"), "the log names the role that kept failing: {log}");
}
