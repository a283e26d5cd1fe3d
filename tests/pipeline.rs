//! The whole pipeline end to end, in this process, on the in-process transport and on the local SQS endpoint.
//! Each scenario is written once and run on both.

mod common;

use common::pipeline::*;
use common::TestDb;
use serde_json::json;
use sqs_scheduler::handlers::{Handler, HandlerContext, HandlerError, HandlerRegistry};
use sqs_scheduler::metrics::metrics;
use sqs_scheduler::startup::Role;
use sqs_scheduler::store::TaskState;
use sqs_scheduler::transport::Queue;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn thousand_exports_reach_success_once(kind: Kind) {
    let _turn = sqs_turn(kind).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, kind);
    let transport = transport(&settings).await;
    insert_objects(&db, 1000).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    submit_exports(transport.as_ref(), 1000).await;
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(300), |c| c.get(&TaskState::Success) == Some(&1000)).await;
    assert_eq!(c.values().sum::<i64>(), 1000, "{c:?}");
    assert_eq!(count_rows(&db, "t_exported_object").await, 1000);
    assert_eq!(count_rows(&db, "t_exported_object e JOIN t_object o USING (id) WHERE e.data = o.data").await, 1000);
    app.shutdown(Duration::from_secs(10)).await;
}

async fn chaos_on_every_stage_keeps_exports_exactly_once(kind: Kind) {
    let _turn = sqs_turn(kind).await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, kind);
    settings.chaos.error_rate = 0.1;
    let n = if kind == Kind::Memory { 1000 } else { 200 };
    let transport = transport(&settings).await;
    insert_objects(&db, n).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    submit_exports(transport.as_ref(), n).await;
    let store = db.store();
    let c = wait_for_counts(&store, Duration::from_secs(180), |c| {
        c.get(&TaskState::Success).unwrap_or(&0) + c.get(&TaskState::CriticalError).unwrap_or(&0) == n as i64
    })
    .await;
    let success = c[&TaskState::Success];
    let exported = count_rows(&db, "t_exported_object").await;
    // Every successful export has exactly one row (the primary key makes a second impossible; a run that failed
    // after exporting and was retried must have counted the existing row as success).
    assert_eq!(
        count_rows(
            &db,
            "tasks t JOIN t_exported_object e ON e.id = (t.payload->>'objectID')::bigint WHERE t.state = 'SUCCESS'"
        )
        .await,
        success
    );
    assert!(exported >= success && exported <= n as i64);
    for stage in ["persister", "acquirer", "worker", "result_sink"] {
        assert!(metrics().chaos_injected.with_label_values(&[stage]).get() > 0, "chaos never hit {stage}");
    }
    app.shutdown(Duration::from_secs(10)).await;
}

/// Fails every time and records when each attempt ran.
struct RecordingFail(Arc<Mutex<Vec<(i32, Instant)>>>);

#[async_trait::async_trait]
impl Handler for RecordingFail {
    async fn handle(&self, ctx: &HandlerContext, _: &serde_json::Value) -> Result<serde_json::Value, HandlerError> {
        self.0.lock().unwrap().push((ctx.attempt, Instant::now()));
        Err(HandlerError::with_code(-1234, "something bad happened"))
    }
}

async fn always_failing_handler_ends_critical_with_backoff(kind: Kind) {
    let _turn = sqs_turn(kind).await;
    let db = TestDb::new().await;
    let mut settings = test_settings(&db, kind);
    settings.retry.base_delay_secs = 0.4;
    settings.retry.max_delay_secs = 10.0;
    settings.retry.jitter = 0.1;
    let transport = transport(&settings).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let handlers = HandlerRegistry::builtin().with("always_fail", RecordingFail(runs.clone()));
    let app = start(&settings, &[], transport.clone(), handlers);
    let body =
        json!({"jsonrpc": "2.0", "method": "submit:always_fail", "params": {"payload": {"x": 1}, "max_attempts": 4}});
    transport.send(Queue::Inbound, &[body.to_string()]).await.unwrap();
    let store = db.store();
    wait_for_counts(&store, Duration::from_secs(60), |c| c.get(&TaskState::CriticalError) == Some(&1)).await;
    let task = store.list(&Default::default()).await.unwrap().remove(0);
    assert_eq!(task.attempts, 4);
    assert_eq!(task.error.as_ref().unwrap()["code"], json!(-1234));
    assert_eq!(task.error.as_ref().unwrap()["attempt"], json!(4));
    let runs = runs.lock().unwrap().clone();
    let attempts: Vec<i32> = runs.iter().map(|r| r.0).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    for i in 1..runs.len() {
        let gap = (runs[i].1 - runs[i - 1].1).as_secs_f64();
        let nominal = 0.4 * 2f64.powi(i as i32 - 1);
        // At least the jittered backoff; at most that plus the acquirer's wake-up and transport latency (the SQS
        // emulator under load can add seconds).
        let slack = if kind == Kind::Memory { 0.5 } else { 6.0 };
        assert!(
            gap >= nominal * 0.9 - 0.01 && gap <= nominal * 1.1 + slack,
            "gap before attempt {}: {gap} s, nominal {nominal} s",
            i + 1
        );
    }
    app.shutdown(Duration::from_secs(5)).await;
}

async fn malformed_messages_end_in_the_dlqs(kind: Kind) {
    let _turn = sqs_turn(kind).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, kind);
    let transport = transport(&settings).await;
    insert_objects(&db, 50).await;
    let app = start(&settings, &[], transport.clone(), HandlerRegistry::builtin());
    let garbage = |i: usize| match i % 5 {
        0 => format!("not json {i}"),
        1 => format!(r#"{{"jsonrpc":"2.0","method":"bogus{i}","params":{{}}}}"#),
        2 => format!(r#"{{"jsonrpc":"2.0","method":"submit:export","params":[{i}]}}"#),
        3 => format!(r#"{{"jsonrpc":"2.0","result":{{"i":{i}}},"id":"x"}}"#),
        _ => {
            format!(r#"{{"jsonrpc":"2.0","method":"export","params":{{"objectID":{i}}},"id":{i}}}"#)
        }
    };
    let bad: Vec<String> = (0..100).map(garbage).collect();
    for q in [Queue::Inbound, Queue::Outbound, Queue::Results] {
        for chunk in bad.chunks(10) {
            transport.send(q, chunk).await.unwrap();
        }
    }
    submit_exports(transport.as_ref(), 50).await;
    let store = db.store();
    wait_for_counts(&store, Duration::from_secs(300), |c| c.get(&TaskState::Success) == Some(&50)).await;
    for q in [Queue::InboundDlq, Queue::OutboundDlq, Queue::ResultsDlq] {
        let got = peek_all(transport.as_ref(), q, 100, Duration::from_secs(180)).await;
        assert_eq!(got.len(), 100, "{q}: {} of 100 malformed messages in the DLQ", got.len());
    }
    assert_eq!(count_rows(&db, "tasks").await, 50, "nothing malformed was stored");
    app.shutdown(Duration::from_secs(5)).await;
}

async fn graceful_shutdown_leaves_nothing_acquired(kind: Kind) {
    let _turn = sqs_turn(kind).await;
    let db = TestDb::new().await;
    let settings = test_settings(&db, kind);
    let transport = transport(&settings).await;
    let app = start(
        &settings,
        &[Role::Submitter, Role::Scheduler, Role::Worker, Role::Resulter],
        transport.clone(),
        HandlerRegistry::builtin(),
    );
    let bodies: Vec<String> =
        (0..100).map(|i| sqs_scheduler::protocol::submit_message("sleep", &json!({"ms": 200, "i": i}))).collect();
    for c in bodies.chunks(10) {
        transport.send(Queue::Inbound, c).await.unwrap();
    }
    let store = db.store();
    wait_for_counts(&store, Duration::from_secs(60), |c| c.get(&TaskState::Acquired).unwrap_or(&0) > &0).await;
    app.shutdown(Duration::from_secs(30)).await;
    let c = counts(&store).await;
    assert_eq!(c.get(&TaskState::Acquired), Some(&0), "nothing left ACQUIRED: {c:?}");
    assert!(c[&TaskState::Success] > 0);
}

macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[actix_rt::test] async fn $name() { super::$name(super::Kind::Memory).await } )*
        }
        mod sqs {
            $( #[actix_rt::test] async fn $name() { super::$name(super::Kind::Sqs).await } )*
        }
    };
}

on_both_transports!(
    thousand_exports_reach_success_once,
    chaos_on_every_stage_keeps_exports_exactly_once,
    always_failing_handler_ends_critical_with_backoff,
    malformed_messages_end_in_the_dlqs,
    graceful_shutdown_leaves_nothing_acquired,
);
